// The admin console (#/admin): accounts by username prefix, paged, with
// their status, role and whether each is online now; delete and restore
// an account, make or unmake an admin. For accounts with the admin role.

import { h, clear } from './dom.js';
import { tr, setTr, trAttrs } from './i18n.js';
import { api } from './api.js';
import { hue } from './chat.js';

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

  const act = async (method, path) => {
    clear(msg);
    try {
      await api(method, path);
    } catch (e) {
      setTr(msg, 'err_generic', { message: e.message });
    }
    await load(true);
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
  clear(mount).append(h('section', { class: 'page admin-page' },
    h1,
    h('div', { class: 'card' }, tr('users', null, 'h2'), search, msg, list, none, more)));
  document.title = 'emosation';
  load(true);
  return { destroy() { clearTimeout(timer); seq++; } };
}
