// One chat room: history on scroll, live messages, sends with pending →
// delivered → failed/retry, typing, members, read markers, emotions, mood
// and activity, and attachments (a file picker and drag-and-drop, upload
// progress, images inline in a box of their own size, other files as
// download links).
//
// The timeline is keyed by log position (message ids and cursors are
// 16-hex-digit strings in log order), so a message reaches the screen once
// however it arrives — history page, live frame, replay after a reconnect,
// or our own ack — and always in log order.

import { h, clear, debounce } from './dom.js';
import { t, tr, setTr, trAttrs, fmtTime, onLangChange } from './i18n.js';
import { api, currentUser, ApiError, uploadFile, fetchFile } from './api.js';
import { activityChart } from './chart.js';

export const LABELS = ['joy', 'sadness', 'anger', 'fear', 'surprise', 'disgust', 'neutral'];
const PAGE = 50;
const SEND_TIMEOUT_MS = 15000;

function newClientMsgId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return 'web-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export function emotionsOn() {
  return localStorage.getItem('emosation.emotions') !== 'off';
}

export function badge(e) {
  const pct = Math.round((e.score || 0) * 100);
  const el = h('span', { class: `badge emo-${e.label}`, dataset: { label: e.label } },
    h('span', { class: 'dot', 'aria-hidden': 'true' }), tr(e.label), h('span', { class: 'pct' }, ` ${pct}%`));
  el.title = LABELS.map((l) => `${t(l)} ${Math.round(((e.scores || {})[l] || 0) * 100)}%`).join(' · ');
  el.setAttribute('aria-label', t('emotion_of', { label: t(e.label), pct }));
  return el;
}

export class ChatRoom {
  constructor(ctx, roomId, mount) {
    this.ctx = ctx;
    this.live = ctx.live;
    this.roomId = roomId;
    this.mount = mount;
    this.me = currentUser() || {};
    this.msgs = new Map(); // message_id -> li
    this.emotions = new Map(); // message_id -> emotion
    this.changes = new Map(); // message_id -> newest message_edited/_deleted frame
    this.notices = new Set(); // cursors of member events shown
    this.pending = new Map(); // client_msg_id -> {text, li, state, timer}
    this.uploads = []; // files being uploaded or ready to send: {file, li, state, att, xhr}
    this.members = new Map(); // user_id -> username
    this.typers = new Map(); // user_id -> expiry ms
    this.here = new Set(); // user_ids with the room open now (presence)
    this.nextBefore = undefined; // undefined: not loaded; null: start reached
    this.loadingOlder = false;
    this.lastTypingSent = 0;
    this.lastRead = '';
    this.destroyed = false;
    this.onFrame = (ev) => this.frame(ev.detail);
    this.onOpen = () => {
      this.resendPending();
      // Presence frames missed while disconnected: ask for the whole picture.
      this.loadPresence();
    };
    this.onReset = () => this.reloadHistory();
    this.onVisible = () => this.markRead();
    this.refreshMood = debounce(() => this.loadMood(), 700);
    this.refreshActivity = debounce(() => this.loadActivity(), 1200);
    this.markReadSoon = debounce(() => this.markRead(), 300);
    this.typingTimer = setInterval(() => this.renderTyping(), 1000);
    this.render();
    this.init();
  }

  destroy() {
    this.destroyed = true;
    this.live.removeEventListener('frame', this.onFrame);
    this.live.removeEventListener('open', this.onOpen);
    this.live.removeEventListener('reset', this.onReset);
    document.removeEventListener('visibilitychange', this.onVisible);
    clearInterval(this.typingTimer);
    // The room is closed: the sidebar follows it on for its unread count
    // without `presence` (its setActive subscribes it again); a room the
    // sidebar does not list is not followed any more.
    if (!this.ctx.sidebar?.rooms?.has(this.roomId)) this.live.unwatch(this.roomId);
    if (this.langOff) this.langOff();
    for (const p of this.pending.values()) clearTimeout(p.timer);
    for (const u of this.uploads) u.xhr?.abort();
  }

  render() {
    const toggle = h('input', { type: 'checkbox', id: 'emo-toggle', checked: emotionsOn() });
    toggle.addEventListener('change', () => {
      localStorage.setItem('emosation.emotions', toggle.checked ? 'on' : 'off');
      document.body.classList.toggle('no-emotions', !toggle.checked);
    });
    this.title = h('h1', { class: 'room-title', tabindex: '-1' }, '…');
    this.count = h('span', { class: 'room-count' });
    this.online = h('span', { class: 'room-online', hidden: true });
    // A list (of messages and notices) inside a live log: the log announces
    // what is added, the list keeps its list semantics.
    this.timeline = h('ol', { class: 'timeline' });
    this.olderBtn = h('button', { type: 'button', class: 'older link', hidden: true, onclick: () => this.loadOlder() });
    setTr(this.olderBtn, 'load_older');
    this.startMarker = tr('start_of_room', null, 'p');
    this.startMarker.className = 'start-marker';
    this.startMarker.hidden = true;
    this.scroller = h('div', { class: 'scroller', tabindex: '0' }, h('div', { class: 'spacer' }), this.startMarker, this.olderBtn,
      h('div', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions' }, this.timeline));
    this.scroller.addEventListener('scroll', () => this.onScroll());
    this.newPill = h('button', { type: 'button', class: 'new-pill', hidden: true, onclick: () => this.scrollToEnd() });
    setTr(this.newPill, 'new_messages');
    this.typingLine = h('p', { class: 'typing', 'aria-live': 'polite' });
    this.input = h('textarea', { id: 'composer', rows: 1, maxlength: 4000, autocomplete: 'off' });
    trAttrs(this.input, { placeholder: 'message_placeholder', 'aria-label': 'message_label' });
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    this.input.addEventListener('input', () => {
      this.autosize();
      this.sendTyping();
    });
    const sendBtn = h('button', { type: 'submit', class: 'primary send' }, tr('send'));
    // The picker: a real file input (keyboard and screen readers know it),
    // shown as a paper-clip button.
    this.fileInput = h('input', { type: 'file', multiple: true, id: 'attach-input', class: 'visually-hidden', tabindex: '-1', 'aria-hidden': 'true' });
    this.fileInput.addEventListener('change', () => {
      this.addFiles(this.fileInput.files);
      this.fileInput.value = '';
    });
    const attachBtn = h('button', { type: 'button', class: 'attach', onclick: () => this.fileInput.click() },
      icon(CLIP), h('span', { class: 'visually-hidden' }, tr('attach')));
    trAttrs(attachBtn, { title: 'attach' });
    this.tray = h('ul', { class: 'tray', hidden: true });
    trAttrs(this.tray, { 'aria-label': 'attachments_label' });
    this.trayNote = h('p', { class: 'tray-note error', role: 'status' });
    this.dropHint = tr('drop_files', null, 'div');
    this.dropHint.className = 'drop-hint';
    this.dropHint.setAttribute('aria-hidden', 'true');
    this.form = h('form', { class: 'composer', onsubmit: (e) => (e.preventDefault(), this.submit()) },
      this.fileInput, attachBtn, this.input, sendBtn);
    this.memberList = h('ul', { class: 'members' });
    this.mood = h('div', { class: 'mood' });
    this.activity = h('div', { class: 'activity' });
    this.notice = h('div', { class: 'room-notice', hidden: true });

    const leave = h('button', { type: 'button', class: 'ghost small', onclick: () => this.leave() }, tr('leave_room'));
    const back = h('a', { href: '#/rooms', class: 'back', 'aria-label': t('back') }, '‹');
    trAttrs(back, { 'aria-label': 'back' });
    this.aside = h('aside', { class: 'room-aside', 'aria-label': t('details') },
      h('details', { open: true, class: 'panel' }, h('summary', {}, tr('members'), ' ', h('span', { class: 'muted member-n' })), this.memberList),
      h('details', { open: true, class: 'panel emo-only' }, h('summary', {}, tr('mood')), this.mood),
      h('details', { open: true, class: 'panel' }, h('summary', {}, tr('activity')), this.activity));
    trAttrs(this.aside, { 'aria-label': 'details' });
    const detailsBtn = h('button', { type: 'button', class: 'ghost small details-toggle', 'aria-expanded': 'false' }, tr('details'));
    detailsBtn.addEventListener('click', () => {
      const open = this.root.classList.toggle('show-aside');
      detailsBtn.setAttribute('aria-expanded', String(open));
    });
    this.root = h('section', { class: 'room', 'aria-labelledby': 'room-title' },
      h('header', { class: 'room-head' }, back,
        h('div', { class: 'room-name' }, this.title, this.count, this.online),
        h('div', { class: 'room-tools' },
          h('label', { class: 'switch' }, toggle, h('span', { class: 'track', 'aria-hidden': 'true' }), tr('show_emotions')),
          detailsBtn, leave)),
      h('div', { class: 'room-body' },
        h('div', { class: 'room-main' }, this.notice, this.scroller, this.newPill, this.typingLine, this.tray, this.trayNote, this.form,
          this.dropHint),
        this.aside));
    this.title.id = 'room-title';
    // Files dropped anywhere on the room are attached.
    const main = this.root.querySelector('.room-main');
    const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes('Files');
    main.addEventListener('dragover', (e) => {
      if (!hasFiles(e) || this.form.hidden) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
      main.classList.add('dropping');
    });
    main.addEventListener('dragleave', (e) => {
      if (!main.contains(e.relatedTarget)) main.classList.remove('dropping');
    });
    main.addEventListener('drop', (e) => {
      main.classList.remove('dropping');
      if (!hasFiles(e) || this.form.hidden) return;
      e.preventDefault();
      this.addFiles(e.dataTransfer.files);
    });
    document.body.classList.toggle('no-emotions', !emotionsOn());
    clear(this.mount).append(this.root);
    this.langOff = onLangChange(() => this.renderTyping());
  }

  async init() {
    let room;
    try {
      room = await api('GET', `/v1/rooms/${encodeURIComponent(this.roomId)}`);
    } catch (e) {
      return this.fail(e);
    }
    if (this.destroyed) return;
    this.room = room;
    this.title.textContent = room.name;
    document.title = `${room.name} · emosation`;
    this.setCount(room.member_count);
    try {
      await this.loadMembers();
    } catch (e) {
      if (e.code === 'not_member') return this.offerJoin();
      return this.fail(e);
    }
    this.start();
  }

  start() {
    // A view left while a request was in flight stays down.
    if (this.destroyed) return;
    this.live.addEventListener('frame', this.onFrame);
    this.live.addEventListener('open', this.onOpen);
    this.live.addEventListener('reset', this.onReset);
    document.addEventListener('visibilitychange', this.onVisible);
    // Subscribe, and read history at once for a quick first paint; it is
    // read again when `subscribed` confirms the subscription
    // (reconcileHistory), which closes any gap between the two. Anything
    // that comes both ways is shown once (by id).
    // `presence`: this is the room shown, so this user has it open.
    this.live.watch(this.roomId, ['chat', 'emotion', 'presence']);
    this.ctx.sidebar?.setActive(this.roomId);
    this.reloadHistory();
    this.loadPresence();
    this.loadMood();
    this.loadActivity();
    this.input.focus({ preventScroll: true });
  }

  fail(e) {
    this.notice.hidden = false;
    clear(this.notice).append(e.code === 'room_not_found' ? e.message : t('err_generic', { message: e.message }));
    this.form.hidden = true;
  }

  offerJoin() {
    this.form.hidden = true;
    this.notice.hidden = false;
    const msg = h('p', { class: 'error', role: 'alert' });
    const btn = h('button', { type: 'button', class: 'primary' }, tr('join'));
    btn.addEventListener('click', async () => {
      btn.disabled = true;
      try {
        await api('POST', `/v1/rooms/${encodeURIComponent(this.roomId)}/join`);
        this.notice.hidden = true;
        this.form.hidden = false;
        this.ctx.sidebar?.load();
        await this.loadMembers();
        this.start();
      } catch (e) {
        btn.disabled = false;
        setTr(msg, e.code === 'room_full' ? 'room_full' : 'err_generic', { message: e.message });
      }
    });
    clear(this.notice).append(tr('not_member', null, 'p'), btn, msg);
  }

  setCount(n) {
    if (n === undefined) return;
    this.memberCount = n;
    setTr(this.count, 'members_of', { n, cap: this.room ? this.room.capacity : '?' });
    const el = this.root.querySelector('.member-n');
    if (el) el.textContent = String(n);
  }

  async loadMembers() {
    const { members } = await api('GET', `/v1/rooms/${encodeURIComponent(this.roomId)}/members`);
    this.members = new Map(members.map((m) => [m.user_id, m.username]));
    this.renderMembers();
  }

  renderMembers() {
    clear(this.memberList);
    // Who has the room open first, then by name.
    const sorted = [...this.members].sort((a, b) =>
      (this.here.has(b[0]) - this.here.has(a[0])) || a[1].localeCompare(b[1]));
    for (const [id, name] of sorted) {
      const here = this.here.has(id);
      const cls = [id === this.me.user_id ? 'me' : '', here ? 'here' : ''].filter(Boolean).join(' ');
      this.memberList.append(h('li', { class: cls },
        h('span', { class: 'avatar', 'aria-hidden': 'true', dataset: { hue: hue(name) } }, name.slice(0, 1).toUpperCase()), name,
        here ? h('span', { class: 'here-dot', title: t('online') }, h('span', { class: 'visually-hidden' }, t('online'))) : ''));
    }
  }

  /**
   * Who has the room open now (presence frames keep it current). Frames
   * that arrive while the snapshot is in flight may be newer than it: they
   * are applied again on top of it.
   */
  async loadPresence() {
    this.presenceMeanwhile = this.presenceMeanwhile || [];
    let p;
    try {
      p = await api('GET', `/v1/rooms/${encodeURIComponent(this.roomId)}/presence`);
    } catch {
      this.presenceMeanwhile = null;
      return; // a nicety: the room works without it
    }
    const meanwhile = this.presenceMeanwhile || [];
    this.presenceMeanwhile = null;
    if (this.destroyed) return;
    this.here = new Set(p.users.map((u) => u.user_id));
    for (const u of p.users) if (!this.members.has(u.user_id)) this.members.set(u.user_id, u.username);
    this.setOnline(p.online_count);
    for (const f of meanwhile) this.applyPresence(f);
    this.renderMembers();
  }

  applyPresence(f) {
    if (f.state === 'arrived') this.here.add(f.user_id);
    else this.here.delete(f.user_id);
    this.setOnline(f.online_count);
  }

  setOnline(n) {
    this.online.hidden = false;
    setTr(this.online, 'online_n', { n });
  }

  /** "… is here" / "… stepped away": after the newest entry, no cursor of its own. */
  addPresenceNotice(f) {
    const last = [...this.timeline.children].reverse().find((li) => !li.classList.contains('pending'));
    const key = `${last ? last.dataset.key : ''}~`;
    const name = this.members.get(f.user_id) || '…';
    const li = h('li', { class: 'presence-note', dataset: { key } },
      tr(f.state === 'arrived' ? 'entered' : 'went_away', { user: name }));
    const stick = this.nearEnd();
    this.insert(li);
    if (stick) this.scrollToEnd();
  }

  // ---- history ----

  async reloadHistory() {
    const page = await this.fetchPage(null);
    if (!page || this.destroyed) return;
    const stick = true;
    for (const m of page.messages) this.addMessage(m, false);
    if (this.nextBefore === undefined) this.setNextBefore(page.next_before);
    if (stick) this.scrollToEnd();
    this.markReadSoon();
    this.fillViewport();
  }

  /**
   * The newest page of history read again once a subscription of this room
   * that started live (without `since`) is confirmed, merged by id. It delivers
   * live from its `subscribed` cursor, and the server sends `subscribed`
   * once the views hold everything up to that cursor: history read now has
   * all of it, where the read made when the subscribe went out may have
   * come too early (HTTP can overtake the socket's subscribe). It also
   * brings what a subscription on other streams (the sidebar's, chat only)
   * passed over before this one took its place: an emotion, say.
   */
  async reconcileHistory() {
    const page = await this.fetchPage(null);
    if (!page || this.destroyed) return;
    const stick = this.nearEnd();
    for (const m of page.messages) this.addMessage(m, false);
    if (stick) this.scrollToEnd();
  }

  async fetchPage(before) {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (before) q.set('before', before);
    try {
      return await api('GET', `/v1/rooms/${encodeURIComponent(this.roomId)}/messages?${q}`);
    } catch (e) {
      if (e.code === 'not_member') this.offerJoin();
      return null;
    }
  }

  setNextBefore(nb) {
    this.nextBefore = nb;
    this.startMarker.hidden = nb !== null;
    this.olderBtn.hidden = nb === null;
  }

  // Until the timeline overflows, there is no scroll to trigger loading.
  fillViewport() {
    if (this.nextBefore && this.scroller.scrollHeight <= this.scroller.clientHeight + 10) this.loadOlder();
  }

  async loadOlder() {
    if (this.loadingOlder || !this.nextBefore) return;
    this.loadingOlder = true;
    const page = await this.fetchPage(this.nextBefore);
    this.loadingOlder = false;
    if (!page || this.destroyed) return;
    const prev = this.scroller.scrollHeight;
    for (const m of page.messages) this.addMessage(m, false);
    this.setNextBefore(page.next_before);
    this.scroller.scrollTop += this.scroller.scrollHeight - prev;
    this.fillViewport();
  }

  onScroll() {
    if (this.scroller.scrollTop < 150) this.loadOlder();
    if (this.nearEnd()) {
      this.newPill.hidden = true;
      this.markReadSoon();
    }
  }

  nearEnd() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  scrollToEnd() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.newPill.hidden = true;
  }

  // ---- timeline ----

  insert(li) {
    const key = li.dataset.key;
    let before = this.timeline.querySelector('.pending') || null;
    let node = before ? before.previousElementSibling : this.timeline.lastElementChild;
    while (node && node.dataset.key > key) {
      before = node;
      node = node.previousElementSibling;
    }
    this.timeline.insertBefore(li, before);
  }

  addMessage(m, live) {
    const known = this.msgs.get(m.message_id);
    if (known) return this.refresh(known, m);
    const mine = m.author_id === this.me.user_id;
    const foot = h('div', { class: 'foot' });
    const li = h('li', { class: `msg${mine ? ' mine' : ''}`, dataset: { key: m.message_id, id: m.message_id } },
      h('div', { class: 'meta' },
        h('span', { class: 'avatar', 'aria-hidden': 'true', dataset: { hue: hue(m.author) } }, m.author.slice(0, 1).toUpperCase()),
        h('span', { class: 'author' }, m.author),
        h('time', { datetime: m.created_at }, fmtTime(m.created_at))),
      h('div', { class: 'bubble' }, h('p', { class: 'text' }, m.text), attachmentsOf(m.attachments)),
      foot);
    if (mine) foot.append(h('span', { class: 'delivery ok' }, '✓ ', tr('delivered')));
    li.dataset.author = m.author_id;
    this.msgs.set(m.message_id, li);
    const stick = this.nearEnd();
    this.insert(li);
    const e = m.emotion || this.emotions.get(m.message_id);
    // A change seen live before the message itself (replay after a reconnect
    // delivers in log order, history may lag a frame) is applied on arrival.
    const change = this.changes.get(m.message_id);
    if (m.deleted || change?.type === 'message_deleted') this.showDeleted(li);
    else {
      if (e) this.setEmotion(e, false);
      if (change) this.showEdited(li, change.text, change.edited_at);
      else if (m.edited_at) this.showEdited(li, m.text, m.edited_at);
      this.addActions(li);
    }
    this.typers.delete(m.author_id);
    if (live) {
      this.renderTyping();
      if (stick || mine) this.scrollToEnd();
      else this.newPill.hidden = false;
      this.markReadSoon();
      this.refreshActivity();
    }
  }

  /**
   * A message already on screen, as a later read of history has it: what a
   * frame may not have brought (see reconcileHistory). A live change already
   * applied is newer than the history's and stays.
   */
  refresh(li, m) {
    if (li.classList.contains('deleted')) return;
    if (m.deleted) {
      this.showDeleted(li);
      this.emotions.delete(m.message_id);
      return;
    }
    if (m.edited_at && !this.changes.has(m.message_id) && !li.querySelector('.edited')) this.showEdited(li, m.text, m.edited_at);
    const had = this.emotions.get(m.message_id);
    if (m.emotion && (!had || had.cursor < m.emotion.cursor)) this.setEmotion(m.emotion, false);
  }

  // ---- edits and deletes ----

  /** Edit (own messages) and Delete (own, or any in a room one owns). */
  addActions(li) {
    const mine = li.dataset.author === this.me.user_id;
    const owner = this.room && this.room.owner_id === this.me.user_id;
    if (!mine && !owner) return;
    li.querySelector('.actions')?.remove();
    const bar = h('span', { class: 'actions', role: 'group' });
    trAttrs(bar, { 'aria-label': 'msg_actions' });
    if (mine) bar.append(h('button', { type: 'button', class: 'link edit', onclick: () => this.startEdit(li) }, tr('edit')));
    bar.append(h('button', { type: 'button', class: 'link delete', onclick: () => this.confirmDelete(li) }, tr('delete')));
    li.querySelector('.foot').append(bar);
  }

  showEdited(li, text, editedAt) {
    li.querySelector('.bubble .text').textContent = text;
    let mark = li.querySelector('.edited');
    if (!mark) {
      mark = tr('edited', null, 'span');
      mark.className = 'edited';
      li.querySelector('.meta').append(mark);
    }
    if (editedAt) mark.title = fmtTime(editedAt);
  }

  showDeleted(li) {
    li.classList.add('deleted');
    li.querySelector('.edit-form')?.remove();
    const bubble = li.querySelector('.bubble');
    bubble.hidden = false;
    clear(bubble).append(tr('deleted_msg', null, 'p'));
    bubble.firstChild.className = 'text tombstone';
    li.querySelector('.edited')?.remove();
    li.querySelector('.badge')?.remove();
    li.querySelector('.actions')?.remove();
  }

  applyChange(f) {
    const prev = this.changes.get(f.message_id);
    if (prev && prev.cursor >= f.cursor) return;
    this.changes.set(f.message_id, f);
    const li = this.msgs.get(f.message_id);
    if (!li) return;
    if (f.type === 'message_deleted') {
      this.showDeleted(li);
      this.emotions.delete(f.message_id);
      this.refreshMood();
    } else if (!li.classList.contains('deleted')) {
      this.showEdited(li, f.text, f.edited_at);
    }
  }

  startEdit(li) {
    if (li.querySelector('.edit-form') || li.classList.contains('deleted')) return;
    const bubble = li.querySelector('.bubble');
    const old = bubble.querySelector('.text').textContent;
    const area = h('textarea', { class: 'edit-text', rows: 2, maxlength: 4000 });
    area.value = old;
    trAttrs(area, { 'aria-label': 'edit_label' });
    const err = h('p', { class: 'error', role: 'alert' });
    const done = () => {
      form.remove();
      bubble.hidden = false;
      li.querySelector('.actions .edit')?.focus();
    };
    const form = h('form', { class: 'edit-form' }, area,
      h('div', { class: 'edit-buttons' },
        h('button', { type: 'submit', class: 'primary small' }, tr('save')),
        h('button', { type: 'button', class: 'ghost small', onclick: done }, tr('cancel'))),
      err);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const text = area.value.trim();
      if (!text || text === old) return done();
      try {
        const res = await api('PATCH', `/v1/rooms/${encodeURIComponent(this.roomId)}/messages/${encodeURIComponent(li.dataset.id)}`, { text });
        this.applyChange({ type: 'message_edited', message_id: res.message_id, text, edited_at: res.edited_at, cursor: res.cursor });
        done();
      } catch (x) {
        setTr(err, x.code === 'not_author' ? 'err_not_author' : 'err_generic', { message: x.message });
      }
    });
    area.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') done();
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    bubble.hidden = true;
    bubble.after(form);
    area.focus();
  }

  confirmDelete(li) {
    if (li.querySelector('.delete-confirm')) return;
    const err = h('span', { class: 'error', role: 'alert' });
    const box = h('span', { class: 'delete-confirm', role: 'group' }, tr('delete_confirm_msg'), ' ');
    const yes = h('button', { type: 'button', class: 'danger small' }, tr('delete'));
    const no = h('button', { type: 'button', class: 'ghost small', onclick: () => box.remove() }, tr('cancel'));
    yes.addEventListener('click', async () => {
      yes.disabled = true;
      try {
        const res = await api('DELETE', `/v1/rooms/${encodeURIComponent(this.roomId)}/messages/${encodeURIComponent(li.dataset.id)}`);
        box.remove();
        this.applyChange({ type: 'message_deleted', message_id: res.message_id, deleted_at: res.deleted_at, cursor: res.cursor });
      } catch (x) {
        yes.disabled = false;
        setTr(err, x.code === 'not_author' ? 'err_not_author' : 'err_generic', { message: x.message });
      }
    });
    box.append(yes, ' ', no, err);
    li.querySelector('.foot').append(box);
    no.focus();
  }

  setEmotion(e, live) {
    this.emotions.set(e.message_id, e);
    const li = this.msgs.get(e.message_id);
    if (li && li.classList.contains('deleted')) return;
    if (li) {
      const foot = li.querySelector('.foot');
      foot.querySelector('.badge')?.remove();
      foot.prepend(badge(e));
    }
    if (live) this.refreshMood();
  }

  addNotice(f) {
    if (this.notices.has(f.cursor)) return;
    this.notices.add(f.cursor);
    const key = f.type === 'member_joined' ? 'joined' : 'left';
    const li = h('li', { class: 'notice', dataset: { key: f.cursor } }, tr(key, { user: f.username }));
    const stick = this.nearEnd();
    this.insert(li);
    if (stick) this.scrollToEnd();
  }

  // ---- live frames ----

  frame(f) {
    if (f.room_id && f.room_id !== this.roomId) return;
    switch (f.type) {
      case 'message':
        this.addMessage(f, true);
        break;
      case 'emotion':
        this.setEmotion(f, true);
        break;
      case 'message_edited':
      case 'message_deleted':
        this.applyChange(f);
        break;
      case 'member_joined':
      case 'member_left':
        this.addNotice(f);
        if (f.type === 'member_joined') this.members.set(f.user_id, f.username);
        else this.members.delete(f.user_id);
        this.setCount(f.member_count);
        this.renderMembers();
        break;
      case 'presence':
        if (this.presenceMeanwhile) this.presenceMeanwhile.push(f);
        this.applyPresence(f);
        this.renderMembers();
        if (f.user_id !== this.me.user_id) this.addPresenceNotice(f);
        break;
      case 'typing':
        if (f.user_id !== this.me.user_id) {
          this.typers.set(f.user_id, Date.now() + 4000);
          this.renderTyping();
        }
        break;
      case 'ack':
        this.onAck(f);
        break;
      case 'error':
        if (f.client_msg_id && this.pending.has(f.client_msg_id)) this.markFailed(this.pending.get(f.client_msg_id));
        break;
      case 'subscribed':
        // A resumed subscription replays what came after its cursor; one
        // that started live leaves history to show what came before.
        if (f.fresh) this.reconcileHistory();
        break;
      case 'unsubscribed':
        // We left the room (here or in another tab).
        if (!this.leaving) location.hash = '#/rooms';
        break;
    }
  }

  renderTyping() {
    const now = Date.now();
    for (const [id, until] of this.typers) if (until < now) this.typers.delete(id);
    const names = [...this.typers.keys()].map((id) => this.members.get(id) || '…');
    if (!names.length) return clear(this.typingLine);
    const key = names.length === 1 ? 'typing_one' : names.length === 2 ? 'typing_two' : 'typing_many';
    const text = t(key, { a: names[0], b: names[1] });
    if (this.typingLine.textContent !== text) {
      clear(this.typingLine).append(h('span', { class: 'dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')), text);
    }
  }

  sendTyping() {
    const now = Date.now();
    if (this.input.value && now - this.lastTypingSent > 2500) {
      this.lastTypingSent = now;
      this.live.send({ type: 'typing', room_id: this.roomId });
    }
  }

  // ---- sending ----

  autosize() {
    this.input.style.height = 'auto';
    this.input.style.height = Math.min(this.input.scrollHeight, 160) + 'px';
  }

  submit() {
    const text = this.input.value.trim();
    if (this.uploads.some((u) => u.state === 'uploading')) {
      setTr(this.trayNote, 'wait_uploads');
      return;
    }
    const ready = this.uploads.filter((u) => u.state === 'ready');
    if (!text && !ready.length) return;
    const atts = ready.map((u) => u.att);
    for (const u of ready) this.removeUpload(u);
    clear(this.trayNote);
    this.input.value = '';
    this.autosize();
    // Others drop our typing mark when this message arrives: typing again
    // right away is news.
    this.lastTypingSent = 0;
    const id = newClientMsgId();
    const status = h('span', { class: 'delivery' });
    const li = h('li', { class: 'msg mine pending', dataset: { cmid: id } },
      h('div', { class: 'meta' }, h('span', { class: 'author' }, this.me.username || '')),
      h('div', { class: 'bubble' }, h('p', { class: 'text' }, text), attachmentsOf(atts)),
      h('div', { class: 'foot' }, status));
    const p = { id, text, atts, li, status, state: 'pending', timer: null };
    this.pending.set(id, p);
    this.timeline.append(li);
    this.scrollToEnd();
    this.trySend(p);
  }

  trySend(p) {
    p.state = 'pending';
    p.li.classList.remove('failed');
    clear(p.status).append(h('span', { class: 'spinner', 'aria-hidden': 'true' }), tr('pending'));
    clearTimeout(p.timer);
    // Offline: it goes out (same client_msg_id) when the socket is back.
    const frame = { type: 'send', room_id: this.roomId, client_msg_id: p.id, text: p.text };
    if (p.atts.length) frame.attachments = p.atts.map((a) => a.attachment_id);
    if (this.live.send(frame)) {
      p.timer = setTimeout(() => p.state === 'pending' && this.live.isLive() && this.markFailed(p), SEND_TIMEOUT_MS);
    }
  }

  resendPending() {
    for (const p of this.pending.values()) if (p.state === 'pending') this.trySend(p);
  }

  markFailed(p) {
    p.state = 'failed';
    clearTimeout(p.timer);
    p.li.classList.add('failed');
    const retry = h('button', { type: 'button', class: 'link retry', onclick: () => this.trySend(p) }, tr('retry'));
    clear(p.status).append('⚠ ', tr('failed'), ' · ', retry);
  }

  onAck(f) {
    const p = this.pending.get(f.client_msg_id);
    if (!p) return;
    this.pending.delete(f.client_msg_id);
    clearTimeout(p.timer);
    p.li.remove();
    // The message frame may come before or after the ack; whichever is
    // first puts it on screen, keyed by its id.
    this.addMessage({
      message_id: f.message_id, room_id: this.roomId, author_id: this.me.user_id, author: this.me.username,
      text: p.text, created_at: new Date().toISOString(), cursor: f.cursor, attachments: p.atts,
    }, true);
  }

  // ---- attachments ----

  /** Starts uploading each file; they are sent with the next message. */
  addFiles(files) {
    clear(this.trayNote);
    for (const file of files) {
      const bar = h('progress', { max: '100', value: '0' });
      const state = h('span', { class: 'tray-state' }, tr('uploading', { pct: 0 }));
      const remove = h('button', { type: 'button', class: 'link remove-file' }, '×');
      remove.setAttribute('aria-label', t('remove_file', { name: file.name }));
      const li = h('li', { class: 'tray-item uploading' },
        h('span', { class: 'tray-name' }, file.name), h('span', { class: 'muted' }, ` ${fmtSize(file.size)}`), bar, state, remove);
      const u = { file, li, state: 'uploading', att: null, xhr: null };
      remove.addEventListener('click', () => {
        u.xhr?.abort();
        this.removeUpload(u);
      });
      this.uploads.push(u);
      this.tray.append(li);
      this.tray.hidden = false;
      const path = `/v1/rooms/${encodeURIComponent(this.roomId)}/attachments?name=${encodeURIComponent(file.name)}`;
      uploadFile(path, file, (f) => {
        const pct = Math.round(f * 100);
        bar.value = pct;
        setTr(state, 'uploading', { pct });
      }, (x) => (u.xhr = x))
        .then((att) => {
          u.state = 'ready';
          u.att = att;
          u.xhr = null;
          bar.value = 100;
          li.classList.replace('uploading', 'ready');
          li.dataset.attachmentId = att.attachment_id;
          setTr(state, 'upload_ready');
        })
        .catch((e) => {
          if (e.code === 'aborted') return;
          u.state = 'failed';
          li.classList.replace('uploading', 'failed');
          setTr(state, e.code === 'payload_too_large' ? 'too_large' : 'upload_failed', { message: e.message });
        });
    }
  }

  removeUpload(u) {
    this.uploads = this.uploads.filter((x) => x !== u);
    u.li.remove();
    this.tray.hidden = !this.uploads.length;
  }

  // ---- read markers, mood, activity ----

  async markRead() {
    if (this.destroyed || document.visibilityState !== 'visible' || !this.nearEnd()) return;
    const newest = [...this.timeline.querySelectorAll('.msg[data-id]')].pop();
    const id = newest && newest.dataset.id;
    if (!id || id <= this.lastRead) return;
    this.lastRead = id;
    try {
      await api('POST', `/v1/rooms/${encodeURIComponent(this.roomId)}/read`, { message_id: id });
      this.ctx.sidebar?.markRead(this.roomId);
    } catch {
      this.lastRead = '';
    }
  }

  async loadMood() {
    let res;
    try {
      res = await api('GET', `/v1/rooms/${encodeURIComponent(this.roomId)}/emotions?limit=1`);
    } catch {
      return;
    }
    if (this.destroyed) return;
    const summary = res.summary || {};
    const total = LABELS.reduce((n, l) => n + (summary[l] || 0), 0);
    clear(this.mood);
    if (!total) return this.mood.append(tr('mood_empty', null, 'p'));
    const rows = LABELS.map((l) => [l, summary[l] || 0]).sort((a, b) => b[1] - a[1]);
    const list = h('ul', { class: 'mood-list' });
    for (const [l, n] of rows) {
      const pct = Math.round((100 * n) / total);
      list.append(h('li', { class: `emo-${l}`, dataset: { label: l, count: n } },
        h('span', { class: 'mood-label' }, h('span', { class: 'dot', 'aria-hidden': 'true' }), tr(l)),
        h('span', { class: 'mood-bar', 'aria-hidden': 'true' }, fill(pct)),
        h('span', { class: 'mood-n' }, `${pct}%`)));
    }
    this.mood.append(list);
  }

  async loadActivity() {
    let res;
    try {
      res = await api('GET', `/v1/rooms/${encodeURIComponent(this.roomId)}/activity`);
    } catch {
      return;
    }
    if (this.destroyed) return;
    clear(this.activity).append(activityChart(res.hours || []));
  }

  async leave() {
    this.leaving = true;
    try {
      await api('POST', `/v1/rooms/${encodeURIComponent(this.roomId)}/quit`);
    } catch (e) {
      if (!(e instanceof ApiError) || e.code !== 'not_member') throw e;
    }
    this.live.unwatch(this.roomId);
    this.ctx.sidebar?.load();
    location.hash = '#/rooms';
  }
}

// Icons as SVG paths (no emoji font is needed to see them).
const CLIP = ['M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5'];
const FILE = ['M13 2H6a2 2 0 0 0-2 2v16a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V9z', 'M13 2v7h7'];

function icon(paths) {
  return h('svg:svg', { class: 'icon', viewBox: '0 0 24 24', width: '18', height: '18', 'aria-hidden': 'true', focusable: 'false',
    fill: 'none', stroke: 'currentColor', 'stroke-width': '2', 'stroke-linecap': 'round', 'stroke-linejoin': 'round' },
  paths.map((d) => h('svg:path', { d })));
}

/** `1.2 MB`, `340 KB`, `12 B`. */
export function fmtSize(n) {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KB`;
  return `${n} B`;
}

// Shown inline: the image types the server serves inline (never run).
const INLINE = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp', 'image/avif']);

/**
 * A message's files: images inline, their box reserved by width and height
 * before the bytes arrive (no jump in the timeline), other files as download
 * links. An <img> cannot send the access token, so the bytes are fetched
 * with it and shown from a blob: URL.
 */
function attachmentsOf(list) {
  if (!list || !list.length) return null;
  const box = h('div', { class: 'attachments' });
  for (const a of list) {
    const url = a.url || `/v1/attachments/${encodeURIComponent(a.attachment_id)}`;
    if (INLINE.has(a.content_type) && a.width && a.height) {
      const img = h('img', { class: 'att-img', width: a.width, height: a.height, alt: a.file_name, dataset: { attachmentId: a.attachment_id } });
      box.append(img);
      fetchFile(url)
        .then((blob) => (img.src = URL.createObjectURL(blob)))
        .catch(() => img.classList.add('gone'));
    } else {
      const link = h('a', { class: 'att-file', href: url, download: a.file_name, dataset: { attachmentId: a.attachment_id } },
        icon(FILE), h('span', { class: 'att-name' }, a.file_name), h('span', { class: 'muted att-size' }, fmtSize(a.size)));
      link.setAttribute('aria-label', t('download_file', { name: a.file_name, size: fmtSize(a.size) }));
      link.addEventListener('click', async (e) => {
        e.preventDefault();
        try {
          const blob = await fetchFile(url);
          const tmp = h('a', { href: URL.createObjectURL(blob), download: a.file_name });
          document.body.append(tmp);
          tmp.click();
          tmp.remove();
          setTimeout(() => URL.revokeObjectURL(tmp.href), 60_000);
        } catch {
          link.title = t('file_gone');
          link.classList.add('gone');
        }
      });
      box.append(link);
    }
  }
  return box;
}

// Widths through the CSSOM: the CSP allows no inline style attributes.
export function fill(pct) {
  const el = h('span', { class: 'fill' });
  el.style.width = `${pct}%`;
  return el;
}

/** A stable hue bucket (0–11) for a name's avatar colour. */
export function hue(name) {
  let x = 0;
  for (const c of String(name)) x = (x * 31 + c.codePointAt(0)) >>> 0;
  return String(x % 12);
}
