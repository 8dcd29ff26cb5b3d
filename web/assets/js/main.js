// The page: routes (#/login, #/signup, #/rooms, #/room/<id>, #/friends, #/admin, #/account),
// the app shell, the connection status line and the session banners.

import { h, clear, $, go } from './dom.js';
import { t, tr, setTr, setLang, lang } from './i18n.js';
import * as api from './api.js';
import { Live } from './socket.js';
import { authView } from './auth.js';
import { Sidebar, directoryView, accountView } from './rooms.js';
import { ChatRoom } from './chat.js';
import { friendsView } from './friends.js';
import { adminView } from './admin.js';

const live = new Live();
const app = $('#app');
const status = $('#status');
const banner = $('#banner');
const ctx = { live, sidebar: null };
let shell = null;
let view = null;
let resumedTimer = null;

function showBanner(key, action) {
  clear(banner).append(tr(key, null, 'p'));
  if (action) banner.append(action);
  banner.hidden = false;
  banner.className = 'banner';
}

function hideBanner() {
  banner.hidden = true;
  clear(banner);
}

function ensureShell() {
  if (shell) return shell;
  const content = h('main', { id: 'main', class: 'content', tabindex: '-1' });
  const side = h('div', { class: 'side-wrap' });
  const root = h('div', { class: 'shell' }, side, content);
  clear(app).append(root);
  ctx.sidebar = new Sidebar(live, side);
  shell = { root, content };
  const who = $('#account-link');
  who.hidden = false;
  clear(who).append(h('span', { class: 'avatar', 'aria-hidden': 'true' }, (api.currentUser()?.username || '?').slice(0, 1).toUpperCase()),
    h('span', { class: 'who' }, api.currentUser()?.username || ''));
  who.setAttribute('aria-label', t('account'));
  return shell;
}

function dropShell() {
  shell = null;
  ctx.sidebar = null;
  $('#account-link').hidden = true;
  setStatus(null);
}

function route() {
  const [, name = '', arg = ''] = (location.hash || '').split('/');
  if (view) view.destroy();
  view = null;
  if (!api.hasSession()) {
    if (shell) dropShell();
    if (name === 'room') sessionStorage.setItem('emosation.next', location.hash);
    view = authView(app, name === 'signup' ? 'signup' : 'login');
    return;
  }
  if (name === 'login' || name === 'signup') {
    location.hash = '#/rooms';
    return;
  }
  ensureShell();
  if (live.state === 'stopped') live.start();
  const content = shell.content;
  shell.root.dataset.view = name === 'room' ? 'room' : 'page';
  if (name === 'room' && arg) {
    view = new ChatRoom(ctx, decodeURIComponent(arg), content);
  } else {
    ctx.sidebar.setActive(null);
    view = name === 'account' ? accountView(ctx, content) : name === 'friends' ? friendsView(ctx, content)
      : name === 'admin' ? adminView(ctx, content) : directoryView(ctx, content);
    content.querySelector('h1')?.focus({ preventScroll: true });
  }
}

function setStatus(key, vars, cls) {
  if (!key) {
    status.textContent = '';
    status.className = 'status';
    return;
  }
  setTr(status, key, vars);
  status.className = `status ${cls || ''}`;
}

live.addEventListener('state', (ev) => {
  const { state, delay, resumed } = ev.detail;
  clearTimeout(resumedTimer);
  if (state === 'connecting') setStatus('st_connecting', null, 'wait');
  else if (state === 'resuming') setStatus('st_resuming', null, 'warn');
  else if (state === 'reconnecting') setStatus('st_reconnecting', { s: Math.ceil((delay || 0) / 1000) }, 'warn');
  else if (state === 'offline') setStatus('st_no_network', null, 'warn');
  else if (state === 'live') {
    if (resumed) {
      setStatus('st_resumed', null, 'ok');
      resumedTimer = setTimeout(() => setStatus('st_live', null, 'ok'), 5000);
    } else setStatus('st_live', null, 'ok');
  } else if (state === 'kicked') {
    setStatus('st_offline', null, 'bad');
    const again = h('button', { type: 'button', class: 'ghost small' }, tr('use_here'));
    again.addEventListener('click', () => {
      hideBanner();
      live.start();
    });
    showBanner('kicked', again);
    banner.classList.add('kicked');
  } else if (state === 'ended' || state === 'stopped') {
    setStatus(shell ? 'st_offline' : null, null, 'bad');
  }
});

live.addEventListener('frame', (ev) => {
  const f = ev.detail;
  if (f.type === 'session_ended') api.endSession(f.reason || 'revoked');
});

api.onSession((kind, reason) => {
  if (kind === 'refreshed') live.renew();
  if (kind === 'login') {
    hideBanner();
    live.wasLive = false;
  }
  if (kind === 'ended') {
    live.stop('ended');
    if (reason) {
      showBanner(`ended_${reason}`);
      banner.classList.add('ended');
    }
    dropShell();
    go('#/login');
  }
});

const langSelect = $('#lang');
langSelect.value = lang;
document.documentElement.lang = lang;
langSelect.addEventListener('change', () => setLang(langSelect.value));
setLang(lang);

// The skip link targets the content, not a route.
$('.skip').addEventListener('click', (e) => {
  e.preventDefault();
  $('#main')?.focus();
});

window.addEventListener('hashchange', route);
route();
