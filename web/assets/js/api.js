// The HTTP side of the public API, and the session.
//
// The access token lives in memory only. The refresh token is never seen
// by a script: login and refresh send `X-Refresh-Cookie: 1`, and the server
// keeps it in an httpOnly, SameSite=Strict cookie limited to /v1/auth (an API
// extension, docs/api.md), which a reload or a second tab shares. localStorage
// holds only who is logged in (user id and name: the session marker). Each tab
// refreshes for its own access token, one tab at a time (Web Locks), so the
// rotating cookie is never presented twice. Access tokens are renewed before
// they expire.

const USER = 'emosation.user';
// Where the refresh token was kept before the cookie: moved into the cookie
// at the first refresh, then removed.
const LEGACY_RT = 'emosation.refresh';
const COOKIE = { 'x-refresh-cookie': '1' };

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

let access = null;
let renewTimer = null;
const sessionListeners = new Set();

/** f(event): 'login' | 'refreshed' | 'ended' (with reason) */
export const onSession = (f) => sessionListeners.add(f);
const emit = (kind, detail) => sessionListeners.forEach((f) => f(kind, detail));

export function currentUser() {
  try {
    return JSON.parse(localStorage.getItem(USER) || 'null');
  } catch {
    return null;
  }
}

export const hasSession = () => !!localStorage.getItem(USER);
export const accessToken = () => access;

async function raw(method, path, body, token, extra) {
  const headers = { ...extra };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, 'network', 'network error');
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const e = data && data.error;
    throw new ApiError(res.status, e ? e.code : 'http_' + res.status, e ? e.message : text);
  }
  return data;
}

function store(tokens, user) {
  access = tokens.access_token;
  localStorage.removeItem(LEGACY_RT);
  if (user) localStorage.setItem(USER, JSON.stringify(user));
  clearTimeout(renewTimer);
  const ttl = tokens.expires_in || 900;
  const ms = Math.max(ttl * 0.8, ttl - 60) * 1000; // before it expires, at most a minute early
  renewTimer = setTimeout(() => refresh().catch(() => {}), ms);
}

export async function signup(username, password) {
  return raw('POST', '/v1/auth/signup', { username, password });
}

export async function login(username, password) {
  const tokens = await raw('POST', '/v1/auth/login', { username, password }, null, COOKIE);
  store(tokens, { user_id: tokens.user_id, username });
  emit('login');
  return tokens;
}

let refreshing = null;

/** Gets a new access token with the refresh cookie; ends the session on 401. */
export function refresh() {
  if (refreshing) return refreshing;
  const run = async () => {
    if (!hasSession()) throw new ApiError(401, 'invalid_token', 'no session');
    const legacy = localStorage.getItem(LEGACY_RT);
    try {
      const tokens = await raw('POST', '/v1/auth/refresh', legacy ? { refresh_token: legacy } : undefined, null, COOKIE);
      store(tokens);
      emit('refreshed');
      return tokens.access_token;
    } catch (e) {
      if (e.status === 401) endSession('revoked');
      throw e;
    }
  };
  const locked = navigator.locks ? () => navigator.locks.request('emosation-refresh', run) : run;
  refreshing = locked().finally(() => (refreshing = null));
  return refreshing;
}

/** Forgets the session locally; `reason` says why (shown to the person). */
export function endSession(reason) {
  const had = hasSession() || access;
  access = null;
  clearTimeout(renewTimer);
  localStorage.removeItem(LEGACY_RT);
  localStorage.removeItem(USER);
  if (had) emit('ended', reason);
}

/** An authenticated call; renews the access token once on 401. */
export async function api(method, path, body) {
  if (!access && hasSession()) await refresh();
  try {
    return await raw(method, path, body, access);
  } catch (e) {
    if (e.status === 401 && hasSession()) {
      await refresh();
      return raw(method, path, body, access);
    }
    throw e;
  }
}

export async function logout() {
  try {
    // By the access token if there is one, else by the cookie; the server
    // removes the cookie either way.
    await raw('POST', '/v1/auth/logout', undefined, access, COOKIE);
  } catch {
    /* already ended on the server: it ends here too */
  } finally {
    endSession(null);
  }
}

export async function deleteAccount() {
  await api('DELETE', '/v1/me');
  endSession(null);
}

// Another tab logged out: this one follows.
window.addEventListener('storage', (e) => {
  if (e.key === USER && e.newValue === null && access) {
    access = null;
    clearTimeout(renewTimer);
    emit('ended', 'logout');
  }
});

/**
 * Uploads `file` to `path` (the request body is the file), reporting
 * progress (0–1) through `onProgress`; `onStart(xhr)` gets the request, to
 * abort it. fetch() cannot report upload progress, XMLHttpRequest can.
 * Renews the access token once on 401, like api().
 */
export async function uploadFile(path, file, onProgress, onStart) {
  const attempt = (token) =>
    new Promise((resolve, reject) => {
      const x = new XMLHttpRequest();
      x.open('POST', path);
      if (token) x.setRequestHeader('authorization', `Bearer ${token}`);
      x.setRequestHeader('content-type', file.type || 'application/octet-stream');
      x.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
      x.onload = () => {
        let data = null;
        try {
          data = x.responseText ? JSON.parse(x.responseText) : null;
        } catch {
          data = null;
        }
        if (x.status >= 200 && x.status < 300) return resolve(data);
        const e = data && data.error;
        reject(new ApiError(x.status, e ? e.code : 'http_' + x.status, e ? e.message : x.statusText));
      };
      x.onerror = () => reject(new ApiError(0, 'network', 'network error'));
      x.onabort = () => reject(new ApiError(0, 'aborted', 'upload cancelled'));
      if (onStart) onStart(x);
      x.send(file);
    });
  if (!access && hasSession()) await refresh();
  try {
    return await attempt(access);
  } catch (e) {
    if (e.status === 401 && hasSession()) {
      await refresh();
      return attempt(access);
    }
    throw e;
  }
}

/** A file the API serves (an attachment), as a Blob, with the access token. */
export async function fetchFile(path) {
  const get = () => fetch(path, { headers: access ? { authorization: `Bearer ${access}` } : {} });
  if (!access && hasSession()) await refresh();
  let res = await get();
  if (res.status === 401 && hasSession()) {
    await refresh();
    res = await get();
  }
  if (!res.ok) throw new ApiError(res.status, 'http_' + res.status, res.statusText);
  return res.blob();
}
