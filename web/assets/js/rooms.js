// My rooms (the sidebar, live unread counts), the room directory, and the
// account page.

import { h, clear, go } from './dom.js';
import { t, tr, setTr, trAttrs, fmtDate } from './i18n.js';
import { api, logout, deleteAccount, currentUser } from './api.js';
import { hue } from './chat.js';

// A link to the page one is on reloads its list (a hash link alone would not).
function refreshIfHere(e) {
  if (location.hash === '#/rooms') {
    e.preventDefault();
    go('#/rooms');
  }
}

function muted(el) {
  el.className = 'muted';
  return el;
}

// Rooms per page of `GET /v1/me/rooms` (the API's default and our choice).
const MY_ROOMS_PAGE = 100;

export class Sidebar {
  constructor(live, mount) {
    this.live = live;
    this.rooms = new Map(); // room_id -> {room_id, name, member_count, unread_count, last_at}
    this.active = null;
    this.list = h('ul', { class: 'my-rooms' });
    this.empty = tr('no_rooms', null, 'p');
    this.empty.className = 'muted small-note';
    this.el = h('nav', { class: 'sidebar', 'aria-labelledby': 'my-rooms-h' },
      h('div', { class: 'side-head' }, tr('my_rooms', null, 'h2'),
        h('span', { class: 'side-links' },
          h('a', { href: '#/friends', class: 'ghost small friends-link' }, tr('friends')),
          h('a', { href: '#/rooms', class: 'ghost small', onclick: refreshIfHere }, tr('find_rooms')))),
      this.list, this.empty);
    this.el.querySelector('h2').id = 'my-rooms-h';
    mount.append(this.el);
    live.addEventListener('frame', (ev) => this.frame(ev.detail));
    // After a reconnect the sidebar's rooms are followed from then on:
    // what came in between is in the server's unread counts.
    live.addEventListener('state', (ev) => ev.detail.state === 'live' && ev.detail.resumed && this.load());
    this.load();
  }

  /** Reads every page of `GET /v1/me/rooms` (following `next_after`). */
  load() {
    // One load at a time; those asked for during one share the next.
    if (this.loading) {
      this.next ||= this.loading.then(() => {
        this.next = null;
        return this.load();
      });
      return this.next;
    }
    this.loading = this.loadAll().finally(() => (this.loading = null));
    return this.loading;
  }

  async loadAll() {
    const all = [];
    let after = null;
    try {
      do {
        const q = new URLSearchParams({ limit: String(MY_ROOMS_PAGE) });
        if (after) q.set('after', after);
        const res = await api('GET', `/v1/me/rooms?${q}`);
        all.push(...res.rooms);
        after = res.next_after;
      } while (after);
    } catch {
      return;
    }
    const seen = new Set();
    for (const r of all) {
      seen.add(r.room_id);
      const old = this.rooms.get(r.room_id);
      this.rooms.set(r.room_id, { ...r, last_at: old ? old.last_at : '', dated: old ? old.dated : false });
      if (!old && r.room_id !== this.active) this.live.watch(r.room_id, ['chat'], null, false);
    }
    for (const id of [...this.rooms.keys()]) {
      if (!seen.has(id)) {
        this.rooms.delete(id);
        if (id !== this.active) this.live.unwatch(id);
      }
    }
    this.render();
    // Newest activity first: the time of each room's newest message (asked
    // once per room, a few at a time; live messages keep it current).
    const undated = all.filter((r) => !this.rooms.get(r.room_id).dated);
    const next = async () => {
      for (let r = undated.shift(); r; r = undated.shift()) {
        const cur = this.rooms.get(r.room_id);
        if (!cur) continue;
        cur.dated = true;
        try {
          const page = await api('GET', `/v1/rooms/${encodeURIComponent(r.room_id)}/messages?limit=1`);
          const m = page.messages[0];
          const now = this.rooms.get(r.room_id); // a reload may have replaced it
          if (now && m && m.created_at > now.last_at) now.last_at = m.created_at;
        } catch {
          /* not a member any more */
        }
      }
    };
    Promise.all([next(), next(), next(), next()]).then(() => this.render());
  }

  frame(f) {
    const r = f.room_id && this.rooms.get(f.room_id);
    if (!r) return;
    if (f.type === 'message') {
      if (f.created_at > r.last_at) r.last_at = f.created_at;
      const seen = f.room_id === this.active && document.visibilityState === 'visible';
      if (!seen && f.author_id !== (currentUser() || {}).user_id) r.unread_count += 1;
      this.render();
    } else if (f.type === 'member_joined' || f.type === 'member_left') {
      r.member_count = f.member_count;
      this.render();
    }
  }

  setActive(id) {
    const prev = this.active;
    this.active = id;
    if (prev && prev !== id && this.rooms.has(prev)) this.live.watch(prev, ['chat'], null, false);
    this.render();
  }

  markRead(id) {
    const r = this.rooms.get(id);
    if (r && r.unread_count) {
      r.unread_count = 0;
      this.render();
    }
  }

  render() {
    const rooms = [...this.rooms.values()].sort((a, b) =>
      b.last_at.localeCompare(a.last_at) || a.name.localeCompare(b.name));
    clear(this.list);
    this.empty.hidden = rooms.length > 0;
    for (const r of rooms) {
      const unread = r.unread_count > 0
        ? h('span', { class: 'unread' }, String(r.unread_count > 99 ? '99+' : r.unread_count))
        : null;
      if (unread) unread.setAttribute('aria-label', t('unread_n', { n: r.unread_count }));
      this.list.append(h('li', { dataset: { roomId: r.room_id } },
        h('a', { href: `#/room/${r.room_id}`, class: r.room_id === this.active ? 'active' : '', 'aria-current': r.room_id === this.active ? 'page' : null },
          h('span', { class: 'avatar room-av', 'aria-hidden': 'true', dataset: { hue: hue(r.name) } }, r.name.slice(0, 1).toUpperCase()),
          h('span', { class: 'room-line' }, h('span', { class: 'name' }, r.name),
            muted(tr('members_n', { n: r.member_count }))),
          unread)));
    }
  }
}

export function directoryView(ctx, mount) {
  let after = null;
  let all = [];
  const filter = h('input', { type: 'search', id: 'room-filter' });
  trAttrs(filter, { placeholder: 'filter', 'aria-label': 'filter' });
  const list = h('ul', { class: 'directory' });
  const more = h('button', { type: 'button', class: 'ghost', hidden: true }, tr('load_more'));
  const noMatch = tr('no_match', null, 'p');
  noMatch.className = 'muted';
  noMatch.hidden = true;
  const mine = () => new Set(ctx.sidebar ? ctx.sidebar.rooms.keys() : []);

  const row = (r, mineSet) => {
    const msg = h('span', { class: 'row-msg error', role: 'status' });
    const btn = mineSet.has(r.room_id)
      ? h('a', { href: `#/room/${r.room_id}`, class: 'button ghost small' }, tr('open'))
      : h('button', { type: 'button', class: 'primary small' }, tr('join'));
    if (btn.tagName === 'BUTTON') {
      btn.addEventListener('click', async () => {
        btn.disabled = true;
        try {
          await api('POST', `/v1/rooms/${encodeURIComponent(r.room_id)}/join`);
          await ctx.sidebar.load();
          location.hash = `#/room/${r.room_id}`;
        } catch (e) {
          btn.disabled = false;
          setTr(msg, e.code === 'room_full' ? 'room_full' : 'err_generic', { message: e.message });
        }
      });
    }
    return h('li', { dataset: { roomId: r.room_id } },
      h('span', { class: 'avatar room-av', 'aria-hidden': 'true', dataset: { hue: hue(r.name) } }, r.name.slice(0, 1).toUpperCase()),
      h('span', { class: 'room-line' }, h('span', { class: 'name' }, r.name),
        muted(tr('members_of', { n: r.member_count, cap: r.capacity }))),
      msg, btn);
  };
  const render = () => {
    const mineSet = mine();
    clear(list);
    for (const r of all) list.append(row(r, mineSet));
    noMatch.hidden = all.length > 0 || !!after || !query;
  };
  // The name filter is the server's (`GET /v1/rooms?q=`, docs/api.md): it
  // finds rooms in pages not loaded yet. Each new filter starts a new list;
  // an answer to an older one is dropped.
  let query = '';
  let seq = 0;
  const load = async (fresh) => {
    const mySeq = fresh ? ++seq : seq;
    if (fresh) after = null;
    let got = [];
    let next = after;
    more.disabled = true;
    try {
      // A filtered page may come back short, or empty, with more to scan.
      for (let steps = 0; steps < 5 && got.length < 1; steps++) {
        const q = new URLSearchParams({ limit: '50' });
        if (next) q.set('after', next);
        if (query) q.set('q', query);
        const res = await api('GET', `/v1/rooms?${q}`);
        if (mySeq !== seq) return;
        got = got.concat(res.rooms);
        next = res.next_after;
        if (!next) break;
      }
    } catch {
      if (mySeq === seq && fresh) all = [];
      /* shown as empty */
    }
    if (mySeq !== seq) return;
    more.disabled = false;
    all = fresh ? got : all.concat(got);
    after = next;
    more.hidden = !after;
    render();
  };
  let typing = null;
  filter.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      const q = filter.value.trim().normalize('NFC');
      if (q === query) return;
      query = q;
      load(true);
    }, 200);
  });
  more.addEventListener('click', () => load(false));

  const name = h('input', { id: 'new-room-name', required: true, maxlength: 100 });
  const cap = h('input', { id: 'new-room-cap', type: 'number', min: 1, max: 100000, value: 10, required: true });
  const createMsg = h('p', { class: 'error', role: 'alert' });
  const create = h('form', { class: 'create-room' },
    h('div', { class: 'field grow' }, h('label', { for: 'new-room-name' }, tr('room_name')), name),
    h('div', { class: 'field cap' }, h('label', { for: 'new-room-cap' }, tr('capacity')), cap),
    h('button', { type: 'submit', class: 'primary' }, tr('create')), createMsg);
  create.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const r = await api('POST', '/v1/rooms', { name: name.value, capacity: Number(cap.value) });
      await ctx.sidebar.load();
      location.hash = `#/room/${r.room_id}`;
    } catch (err) {
      setTr(createMsg, 'err_generic', { message: err.message });
    }
  });

  const h1 = tr('directory', null, 'h1');
  h1.tabIndex = -1;
  clear(mount).append(h('section', { class: 'page directory-page' },
    h1,
    h('div', { class: 'card' }, tr('create_room', null, 'h2'), create),
    h('div', { class: 'card' }, filter, list, noMatch, more)));
  document.title = 'emosation';
  load(true);
  return { destroy() { clearTimeout(typing); } };
}

export function accountView(ctx, mount) {
  const me = currentUser() || {};
  const since = h('p', { class: 'muted' });
  const adminLink = h('a', { href: '#/admin', class: 'button ghost admin-link', hidden: true }, tr('admin_console'));
  api('GET', '/v1/me').then((u) => {
    setTr(since, 'member_since', { date: fmtDate(u.created_at) });
    adminLink.hidden = !u.admin;
  }, () => {});
  const out = h('button', { type: 'button', class: 'primary', id: 'logout' }, tr('logout'));
  out.addEventListener('click', async () => {
    ctx.live.stop('stopped');
    await logout(); // the session's end takes the page to #/login
  });
  const confirmBox = h('div', { class: 'confirm', hidden: true },
    tr('delete_confirm', null, 'p'),
    h('button', { type: 'button', class: 'danger', onclick: async () => {
      ctx.live.stop('stopped');
      await deleteAccount();
      go('#/signup');
    } }, tr('delete_yes')),
    h('button', { type: 'button', class: 'ghost', onclick: () => (confirmBox.hidden = true) }, tr('cancel')));
  const del = h('button', { type: 'button', class: 'ghost danger-text', onclick: () => {
    confirmBox.hidden = false;
    confirmBox.querySelector('button').focus();
  } }, tr('delete_account'));
  clear(mount).append(h('section', { class: 'page' },
    tr('account', null, 'h1'),
    h('div', { class: 'card' }, tr('signed_in_as', { user: me.username }, 'p'), since, h('div', { class: 'row' }, out, del, adminLink), confirmBox)));
  return { destroy() {} };
}
