// The admin console (#/admin): the last seven days (sign-ups and messages
// per day as charts, the emotion mix, totals, who is online now) and the
// audit of admin actions, from GET /v1/admin/stats and /audit; accounts by
// username prefix, paged, with their status, role and whether each is
// online now; delete and restore an account, make or unmake an admin. For
// accounts with the admin role.

import { h, clear } from './dom.js';
import { t, tr, setTr, trAttrs, fmtDate, fmtTime } from './i18n.js';
import { api } from './api.js';
import { hue, LABELS, fill } from './chat.js';
import { dailyChart } from './chart.js';

/** The stats card's content from GET /v1/admin/stats. */
function statsBody(s) {
  const tile = (key, n, cls) => h('div', { class: `tile ${cls}` }, h('span', { class: 'tile-n' }, n === null ? '–' : String(n)), tr(key, null, 'span'));
  const tiles = h('div', { class: 'tiles' },
    tile('total_users', s.totals.users, 'users'),
    tile('total_rooms', s.totals.rooms, 'rooms'),
    tile('total_messages', s.totals.messages, 'messages'),
    tile('online_users', s.online_now, 'online'));
  const figure = (key, chart) => h('figure', { class: 'admin-chart', dataset: { chart: key } }, tr(key, null, 'figcaption'), chart);
  const total = LABELS.reduce((n, l) => n + (s.week.emotions[l] || 0), 0);
  const mix = h('ul', { class: 'mood-list emotion-mix' });
  for (const l of LABELS) {
    const n = s.week.emotions[l] || 0;
    const pct = total ? Math.round((100 * n) / total) : 0;
    mix.append(h('li', { class: `emo-${l}`, dataset: { label: l, count: n } },
      h('span', { class: 'mood-label' }, h('span', { class: 'dot', 'aria-hidden': 'true' }), tr(l)),
      h('span', { class: 'mood-bar', 'aria-hidden': 'true' }, fill(pct)),
      h('span', { class: 'mood-n' }, String(n))));
  }
  return [tiles,
    h('div', { class: 'admin-charts' },
      figure('signups_per_day', dailyChart(s.days, 'signups', t('signups_per_day'))),
      figure('messages_per_day', dailyChart(s.days, 'messages', t('messages_per_day'))),
      h('figure', { class: 'admin-chart', dataset: { chart: 'emotion_mix' } }, tr('emotion_mix', null, 'figcaption'), mix))];
}

/** One audit entry as a sentence. */
function auditRow(e) {
  const by = e.by_name || (['token', 'cli'].includes(e.by) ? t(`by_${e.by}`) : t('by_unknown'));
  return h('li', { dataset: { action: e.action, position: e.position } },
    h('time', { datetime: e.at }, `${fmtDate(e.at)} ${fmtTime(e.at)}`),
    h('span', {}, t(`a_${e.action}`, { by, user: e.username })));
}

export function adminView(ctx, mount) {
  const search = h('input', { type: 'search', id: 'user-search', maxlength: 32, autocomplete: 'off' });
  trAttrs(search, { placeholder: 'search_users', 'aria-label': 'search_users' });
  const list = h('ul', { class: 'people admin-users' });
  const more = h('button', { type: 'button', class: 'ghost', hidden: true }, tr('load_more'));
  const msg = h('p', { class: 'error', role: 'alert' });
  const none = tr('no_users', null, 'p');
  none.className = 'muted';
  none.hidden = true;
  let after = null;
  let query = '';
  let seq = 0;
  let timer = null;

  const statsCard = h('div', { class: 'card admin-stats', 'aria-busy': 'true' });
  const auditList = h('ol', { class: 'audit' });
  const auditNone = tr('no_audit', null, 'p');
  auditNone.className = 'muted';
  auditNone.hidden = true;
  const auditMore = h('button', { type: 'button', class: 'ghost', hidden: true }, tr('load_more'));
  let auditBefore = null;
  let polls = null;

  async function loadStats() {
    let s;
    try {
      s = await api('GET', '/v1/admin/stats');
    } catch {
      return;
    }
    clear(statsCard).append(tr('stats', null, 'h2'), ...statsBody(s));
    statsCard.setAttribute('aria-busy', 'false');
  }
  async function loadAudit(fresh) {
    const q = new URLSearchParams({ limit: '20' });
    if (!fresh && auditBefore) q.set('before', auditBefore);
    let res;
    try {
      res = await api('GET', `/v1/admin/audit?${q}`);
    } catch {
      return;
    }
    if (fresh) clear(auditList);
    for (const e of res.entries) auditList.append(auditRow(e));
    auditBefore = res.next_before;
    auditMore.hidden = !auditBefore;
    auditNone.hidden = auditList.children.length > 0;
  }
  auditMore.addEventListener('click', () => loadAudit(false));

  const act = async (method, path) => {
    clear(msg);
    try {
      await api(method, path);
    } catch (e) {
      setTr(msg, 'err_generic', { message: e.message });
    }
    await load(true);
    // The audit and figures are folded a moment after the action.
    setTimeout(() => { loadAudit(true); loadStats(); }, 600);
  };
  const row = (u) => {
    const id = encodeURIComponent(u.user_id);
    const status = h('span', { class: `tag status-${u.status}` }, tr(`st_${u.status}`));
    const buttons = [
      u.status === 'deleted'
        ? h('button', { type: 'button', class: 'ghost small', onclick: () => act('POST', `/v1/admin/users/${id}/restore`) }, tr('restore_user'))
        : h('button', { type: 'button', class: 'ghost small danger-text', onclick: () => act('DELETE', `/v1/admin/users/${id}`) }, tr('delete_user')),
      u.admin
        ? h('button', { type: 'button', class: 'ghost small', onclick: () => act('DELETE', `/v1/admin/users/${id}/admin`) }, tr('remove_admin'))
        : h('button', { type: 'button', class: 'ghost small', onclick: () => act('PUT', `/v1/admin/users/${id}/admin`) }, tr('make_admin')),
    ];
    return h('li', { dataset: { userId: u.user_id, username: u.username } },
      h('span', { class: 'avatar', 'aria-hidden': 'true', dataset: { hue: hue(u.username) } }, u.username.slice(0, 1).toUpperCase()),
      h('span', { class: 'person' }, h('span', { class: 'name' }, u.username),
        h('span', { class: 'tags' }, status, u.admin ? h('span', { class: 'tag admin' }, tr('is_admin')) : null,
          u.online ? h('span', { class: 'online' }, h('span', { class: 'dot', 'aria-hidden': 'true' }), tr('online_now')) : null)),
      h('span', { class: 'person-actions' }, ...buttons));
  };

  async function load(fresh) {
    const mine = fresh ? ++seq : seq;
    const q = new URLSearchParams({ limit: '50' });
    if (query) q.set('q', query);
    if (!fresh && after) q.set('after', after);
    let res;
    try {
      res = await api('GET', `/v1/admin/users?${q}`);
    } catch (e) {
      if (mine !== seq) return;
      setTr(msg, e.code === 'forbidden' ? 'not_admin' : 'err_generic', { message: e.message });
      return;
    }
    if (mine !== seq) return;
    if (fresh && mine === 1) {
      // An admin: the figures and the audit too, refreshed every 10 s.
      loadStats();
      loadAudit(true);
      polls = setInterval(() => { loadStats(); }, 10000);
    }
    if (fresh) clear(list);
    for (const u of res.users) list.append(row(u));
    after = res.next_after;
    more.hidden = !after;
    none.hidden = list.children.length > 0;
  }

  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      query = search.value.trim().toLowerCase();
      load(true);
    }, 200);
  });
  more.addEventListener('click', () => load(false));
  const h1 = tr('admin_console', null, 'h1');
  h1.tabIndex = -1;
  statsCard.hidden = true;
  const auditCard = h('div', { class: 'card admin-audit', hidden: true }, tr('audit', null, 'h2'), auditList, auditNone, auditMore);
  clear(mount).append(h('section', { class: 'page admin-page' },
    h1,
    statsCard,
    h('div', { class: 'card' }, tr('users', null, 'h2'), search, msg, list, none, more),
    auditCard));
  document.title = 'emosation';
  load(true).then(() => {
    if (polls !== null) {
      statsCard.hidden = false;
      auditCard.hidden = false;
    }
  });
  return { destroy() { clearTimeout(timer); clearInterval(polls); seq++; } };
}
