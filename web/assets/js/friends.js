// Friends (#/friends): ask someone by username, answer requests, open a
// direct-message room with a friend, remove or block, unblock. The lists
// come from `GET /v1/friends`, read again at once when the socket brings a
// `notification` (a request, an acceptance), after each action, and every
// few seconds while the page is open (notices are best effort).

import { h, clear } from './dom.js';
import { tr, setTr, trAttrs } from './i18n.js';
import { api } from './api.js';
import { hue } from './chat.js';

const POLL_MS = 10000;

const ERRORS = {
  user_not_found: 'err_user_not_found',
  blocked: 'err_blocked',
  invalid_request: 'err_friend_self',
  not_friends: 'err_not_friends',
};

export function friendsView(ctx, mount) {
  const name = h('input', { id: 'friend-name', required: true, maxlength: 32, autocomplete: 'off' });
  const msg = h('p', { class: 'error', role: 'alert' });
  const ok = h('p', { class: 'ok-note', role: 'status' });
  const form = h('form', { class: 'add-friend' },
    h('div', { class: 'field grow' }, h('label', { for: 'friend-name' }, tr('username')), name),
    h('button', { type: 'submit', class: 'primary' }, tr('add_friend')), msg, ok);
  const lists = {
    incoming: h('ul', { class: 'people incoming' }),
    friends: h('ul', { class: 'people friends' }),
    outgoing: h('ul', { class: 'people outgoing' }),
    blocked: h('ul', { class: 'people blocked' }),
  };
  const empty = {};
  const section = (key, title) => {
    empty[key] = tr(`none_${key}`, null, 'p');
    empty[key].className = 'muted small-note';
    return h('div', { class: `card people-card ${key}-card` }, tr(title, null, 'h2'), lists[key], empty[key]);
  };
  let destroyed = false;
  let timer = null;
  const onFrame = (ev) => {
    if (ev.detail.type === 'notification') load();
  };
  ctx.live.addEventListener('frame', onFrame);

  const fail = (e) => setTr(msg, ERRORS[e.code] || 'err_generic', { message: e.message });
  const act = async (method, path, body, then) => {
    clear(msg);
    try {
      const res = await api(method, path, body);
      if (then) await then(res);
    } catch (e) {
      fail(e);
    }
    await load();
  };
  const person = (p, ...buttons) => h('li', { dataset: { userId: p.user_id } },
    h('span', { class: 'avatar', 'aria-hidden': 'true', dataset: { hue: hue(p.username) } }, p.username.slice(0, 1).toUpperCase()),
    h('span', { class: 'person' }, h('span', { class: 'name' }, p.username),
      p.online === undefined ? null : p.online
        ? h('span', { class: 'online' }, h('span', { class: 'dot', 'aria-hidden': 'true' }), tr('online_now'))
        : h('span', { class: 'muted offline' }, tr('offline_now'))),
    h('span', { class: 'person-actions' }, ...buttons));
  const button = (label, cls, onclick) => h('button', { type: 'button', class: `${cls} small`, onclick }, tr(label));
  const id = (p) => encodeURIComponent(p.user_id);

  const render = (data) => {
    for (const key of Object.keys(lists)) {
      clear(lists[key]);
      empty[key].hidden = (data[key] || []).length > 0;
    }
    for (const p of data.incoming || []) {
      lists.incoming.append(person(p,
        button('accept', 'primary', () => act('POST', `/v1/friends/requests/${id(p)}/accept`)),
        button('decline', 'ghost', () => act('POST', `/v1/friends/requests/${id(p)}/decline`))));
    }
    for (const p of data.friends || []) {
      lists.friends.append(person(p,
        button('message_friend', 'primary', () => act('POST', `/v1/dms/${id(p)}`, undefined, async (r) => {
          await ctx.sidebar?.load();
          location.hash = `#/room/${r.room_id}`;
        })),
        button('remove_friend', 'ghost', () => act('DELETE', `/v1/friends/${id(p)}`)),
        button('block', 'ghost', () => act('PUT', `/v1/blocks/${id(p)}`, undefined, () => ctx.sidebar?.load()))));
    }
    for (const p of data.outgoing || []) {
      lists.outgoing.append(person(p, button('cancel_request', 'ghost', () => act('DELETE', `/v1/friends/requests/${id(p)}`))));
    }
    for (const p of data.blocked || []) {
      lists.blocked.append(person(p, button('unblock', 'ghost', () => act('DELETE', `/v1/blocks/${id(p)}`))));
    }
  };

  async function load() {
    clearTimeout(timer);
    if (destroyed) return;
    try {
      render(await api('GET', '/v1/friends'));
    } catch {
      /* the next poll tries again */
    }
    if (!destroyed) timer = setTimeout(load, POLL_MS);
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clear(ok);
    const username = name.value.trim().toLowerCase();
    if (!username) return;
    await act('POST', '/v1/friends/requests', { username }, (r) => {
      name.value = '';
      setTr(ok, r.status === 'friends' ? 'now_friends' : 'request_sent', { user: r.username });
    });
  });

  const h1 = tr('friends', null, 'h1');
  h1.tabIndex = -1;
  clear(mount).append(h('section', { class: 'page friends-page' },
    h1,
    h('div', { class: 'card' }, tr('add_friend', null, 'h2'), form),
    section('incoming', 'requests_in'),
    section('friends', 'friends'),
    section('outgoing', 'requests_out'),
    section('blocked', 'blocked_users')));
  trAttrs(name, { placeholder: 'friend_placeholder' });
  document.title = 'emosation';
  load();
  return {
    destroy() {
      destroyed = true;
      clearTimeout(timer);
      ctx.live.removeEventListener('frame', onFrame);
    },
  };
}
