// Log in and sign up, with the contract's rules checked as one types.

import { h, clear, go } from './dom.js';
import { t, tr, setTr, trAttrs } from './i18n.js';
import { login, signup } from './api.js';

const USERNAME = /^[a-z0-9_]{3,32}$/;

function field(id, key, type, hintKey) {
  const input = h('input', { id, name: id, type, required: true, autocomplete: type === 'password' ? (id === 'password' ? 'current-password' : 'new-password') : 'username', 'aria-describedby': `${id}-msg` });
  const msg = h('p', { class: 'field-msg', id: `${id}-msg` });
  if (hintKey) setTr(msg, hintKey);
  const wrap = h('div', { class: 'field' }, h('label', { for: id }, tr(key)), input, msg);
  return { input, msg, wrap, hintKey };
}

function check(f, ok, errKey, show) {
  f.input.setAttribute('aria-invalid', String(!ok && show));
  f.wrap.classList.toggle('invalid', !ok && show);
  if (!ok && show) setTr(f.msg, errKey);
  else if (f.hintKey) setTr(f.msg, f.hintKey);
  else f.msg.textContent = '';
  return ok;
}

export function authView(mount, mode) {
  const isSignup = mode === 'signup';
  const user = field('username', 'username', 'text', isSignup ? 'username_hint' : null);
  const pass = field('password', 'password', 'password', isSignup ? 'password_hint' : null);
  if (isSignup) pass.input.setAttribute('autocomplete', 'new-password');
  const conf = isSignup ? field('confirm', 'confirm_password', 'password', null) : null;
  user.input.setAttribute('autocapitalize', 'none');
  user.input.setAttribute('spellcheck', 'false');
  const formMsg = h('p', { class: 'form-msg error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary wide' }, tr(isSignup ? 'signup' : 'login'));
  const touched = new Set();

  const validate = (all) => {
    if (!isSignup) return user.input.value !== '' && pass.input.value !== '';
    const show = (f) => all || touched.has(f);
    const a = check(user, USERNAME.test(user.input.value), 'err_username', show(user));
    const b = check(pass, pass.input.value.length >= 8 && pass.input.value.length <= 128, 'err_password', show(pass));
    const c = check(conf, conf.input.value === pass.input.value && conf.input.value !== '', 'err_confirm', show(conf));
    return a && b && c;
  };
  for (const f of [user, pass, conf].filter(Boolean)) {
    f.input.addEventListener('input', () => {
      if (f.input.value) touched.add(f);
      validate(false);
    });
    f.input.addEventListener('blur', () => {
      if (f.input.value) touched.add(f);
      validate(false);
    });
  }

  const form = h('form', { class: 'auth-form', novalidate: true }, user.wrap, pass.wrap, conf && conf.wrap, formMsg, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    formMsg.textContent = '';
    if (!validate(true)) {
      form.querySelector('[aria-invalid=true]')?.focus();
      return;
    }
    submit.disabled = true;
    const username = user.input.value;
    try {
      if (isSignup) await signup(username, pass.input.value);
      await login(username, pass.input.value);
      const next = sessionStorage.getItem('emosation.next');
      sessionStorage.removeItem('emosation.next');
      go(next || '#/rooms');
    } catch (err) {
      submit.disabled = false;
      if (err.code === 'username_taken') {
        check(user, false, 'err_taken', true);
        user.input.focus();
      } else {
        const key = {
          invalid_credentials: 'err_credentials', network: 'err_network', rate_limited: 'err_rate',
          invalid_request: isSignup ? 'err_username' : 'err_credentials',
        }[err.code] || 'err_generic';
        setTr(formMsg, key, { message: err.message });
      }
    }
  });

  const other = isSignup
    ? h('p', { class: 'switch-mode' }, tr('have_account'), ' ', h('a', { href: '#/login' }, tr('login')))
    : h('p', { class: 'switch-mode' }, tr('no_account'), ' ', h('a', { href: '#/signup' }, tr('signup')));
  const card = h('main', { id: 'main', class: 'auth', tabindex: '-1' },
    h('div', { class: 'auth-card' },
      h('div', { class: 'auth-brand' }, h('img', { src: '/assets/icon.svg', alt: '', width: 48, height: 48 }),
        h('h1', {}, tr(isSignup ? 'signup' : 'login')), tr('tagline', null, 'p')),
      form, other));
  clear(mount).append(card);
  user.input.focus();
  return { destroy() {} };
}

export { t, trAttrs };
