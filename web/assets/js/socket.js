// The live connection: one WebSocket to /v1/ws, rooms subscribed with the
// newest cursor seen, so every (re)connect resumes exactly where the last
// frame left off: no gap, and (with the views' dedupe by id) no duplicate.
//
// The server takes at most 10 subscribe frames a second (burst 20) and 4
// subscriptions catching up at once per connection, and its refusals name no
// room: subscriptions are queued and paced below that (8/s, burst 16), the
// room on screen first, and only the room on screen resumes with `since`
// (the rooms of the sidebar only count unread messages, which the sidebar
// reloads after a reconnect).
//
// Events (CustomEvent, detail = the frame or a state):
//   'frame'  every server frame
//   'state'  {state, attempt?, delay?, resumed?}: connecting | resuming | live |
//            reconnecting (waiting `delay` ms) | offline (waiting for the
//            network) | kicked | ended | stopped
//
// A socket can outlive the network under it (a laptop's Wi-Fi gone: no
// close until TCP gives up), so the browser's `offline` event drops it at
// once, and `online` reconnects at once.
//   'open'   after hello and the resubscriptions (pending sends go out again)

import { accessToken, refresh } from './api.js';

const TERMINAL = new Set(['kicked', 'ended', 'stopped']);
const CURSOR_FRAMES = new Set(['message', 'member_joined', 'member_left', 'emotion', 'subscribed', 'message_edited', 'message_deleted']);
const SUB_BURST = 16;
const SUB_RATE = 8; // per second

export class Live extends EventTarget {
  constructor() {
    super();
    this.rooms = new Map(); // room_id -> {streams, cursor, resume}
    this.queue = new Set(); // room_ids whose subscribe frame waits for its turn
    this.tokens = SUB_BURST;
    this.tokensAt = 0;
    this.pumpTimer = null;
    this.ws = null;
    this.state = 'stopped';
    this.attempt = 0;
    this.timer = null;
    this.helloed = false;
    this.wasLive = false;
    window.addEventListener('offline', () => this.onOffline());
    window.addEventListener('online', () => this.onOnline());
  }

  /** The network is gone: drop the socket now (its close would come late). */
  onOffline() {
    if (TERMINAL.has(this.state)) return;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      ws.close(4000, 'offline');
    }
    this.emitState('offline');
  }

  onOnline() {
    if (this.state !== 'offline') return;
    this.attempt = 0;
    this.connect();
  }

  emitState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...extra } }));
  }

  start() {
    if (this.ws || this.state === 'connecting') return;
    this.connect();
  }

  /** Ends the connection for good (logout, kicked, session ended). */
  stop(state = 'stopped') {
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.emitState(state);
  }

  connect() {
    clearTimeout(this.timer);
    const token = accessToken();
    if (!token) {
      refresh().then(() => this.connect(), (e) => (e.status === 401 ? this.stop('ended') : this.retry()));
      return;
    }
    this.emitState(this.wasLive ? 'resuming' : 'connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${location.host}/v1/ws?access_token=${encodeURIComponent(token)}`);
    this.ws = ws;
    this.helloed = false;
    ws.onmessage = (ev) => this.onFrame(ws, ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev);
  }

  onClose(ws, ev) {
    if (ws !== this.ws) return;
    this.ws = null;
    if (TERMINAL.has(this.state)) return;
    // Closed before hello: the token may have been refused (401 before the
    // upgrade looks like 1006 to a page). Renew it before trying again.
    if (!this.helloed) {
      refresh().then(
        () => this.retry(),
        (e) => (e.status === 401 ? this.stop('ended') : this.retry()),
      );
    } else {
      this.retry(ev.code);
    }
  }

  retry() {
    if (TERMINAL.has(this.state)) return;
    if (!navigator.onLine) {
      this.onOffline(); // `online` reconnects
      return;
    }
    this.attempt += 1;
    const base = Math.min(15000, 500 * 2 ** Math.min(this.attempt - 1, 5));
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.emitState('reconnecting', { delay, attempt: this.attempt });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  onFrame(ws, data) {
    if (ws !== this.ws) return;
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (f.room_id && f.cursor && CURSOR_FRAMES.has(f.type)) {
      const r = this.rooms.get(f.room_id);
      // `fresh`: the subscription started live, without `since` (nothing
      // replayed): what came before its cursor is for history to show.
      if (r && f.type === 'subscribed') f.fresh = !!r.fresh;
      if (r && (!r.cursor || f.cursor > r.cursor)) r.cursor = f.cursor;
    }
    switch (f.type) {
      case 'hello': {
        this.helloed = true;
        const resumed = this.wasLive;
        this.wasLive = true;
        this.attempt = 0;
        // A new connection: a new allowance, and every room again.
        this.queue.clear();
        this.tokens = SUB_BURST;
        this.tokensAt = performance.now();
        for (const [room_id, r] of this.rooms) {
          r.sent = false;
          this.queue.add(room_id);
        }
        this.pump();
        this.emitState('live', { resumed });
        this.dispatchEvent(new CustomEvent('open'));
        break;
      }
      case 'kicked':
        this.stop('kicked');
        break;
      case 'session_ended':
        // This socket outlived its access token (the renewed one came too
        // late: a busy machine, a laptop waking up), which does not end the
        // session. The server closes the socket; the next one opens with a
        // fresh token (a refresh that fails does end the session) and
        // resumes from the cursors.
        if (f.reason === 'token_expired') {
          this.helloed = false; // onClose renews the token before reconnecting
          return;
        }
        this.dispatchEvent(new CustomEvent('frame', { detail: f }));
        this.stop('ended');
        return;
      case 'error':
        // A cursor the server no longer knows: start over from live.
        if (f.code === 'invalid_cursor') {
          for (const r of this.rooms.values()) r.cursor = null;
          for (const room_id of this.rooms.keys()) this.subscribe(room_id);
          this.dispatchEvent(new CustomEvent('reset'));
        }
        break;
    }
    this.dispatchEvent(new CustomEvent('frame', { detail: f }));
  }

  /** Queues a (re)subscription of a room; it goes out at its turn. */
  subscribe(room_id) {
    if (!this.isLive()) return; // hello subscribes every room
    this.queue.add(room_id);
    this.pump();
  }

  /** Sends queued subscribe frames as the allowance permits, resuming rooms first. */
  pump() {
    clearTimeout(this.pumpTimer);
    if (!this.isLive()) return;
    const now = performance.now();
    this.tokens = Math.min(SUB_BURST, this.tokens + ((now - this.tokensAt) / 1000) * SUB_RATE);
    this.tokensAt = now;
    while (this.queue.size && this.tokens >= 1) {
      const ids = [...this.queue];
      const room_id = ids.find((id) => this.rooms.get(id)?.resume) || ids[0];
      this.queue.delete(room_id);
      const r = this.rooms.get(room_id);
      if (!r) continue;
      const frame = { type: 'subscribe', room_id, streams: r.streams };
      if (r.cursor && r.resume) frame.since = r.cursor;
      this.send(frame);
      r.sent = true;
      // Its `subscribed` says whether it resumed (see onFrame).
      r.fresh = !frame.since;
      this.tokens -= 1;
    }
    if (this.queue.size) this.pumpTimer = setTimeout(() => this.pump(), 1000 / SUB_RATE);
  }

  /**
   * Follows a room on these streams. With `resume` (the default) every
   * (re)subscription asks for what came after the newest cursor seen
   * (`cursor`, if given, or a newer one); without it, from now.
   */
  watch(room_id, streams, cursor, resume = true) {
    const r = this.rooms.get(room_id) || { cursor: null };
    r.streams = streams;
    r.resume = resume;
    if (cursor && (!r.cursor || cursor > r.cursor)) r.cursor = cursor;
    this.rooms.set(room_id, r);
    this.subscribe(room_id);
  }

  unwatch(room_id) {
    const r = this.rooms.get(room_id);
    if (!r) return;
    this.rooms.delete(room_id);
    // Still in the queue: it was never (re)subscribed on this connection.
    if (this.queue.delete(room_id) && !r.sent) return;
    if (this.isLive()) this.send({ type: 'unsubscribe', room_id });
  }

  isLive() {
    return !!this.ws && this.helloed && this.ws.readyState === WebSocket.OPEN;
  }

  /** Sends a frame if the socket is live; false otherwise. */
  send(frame) {
    if (!this.isLive()) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Gives a live socket the renewed access token (contract v1.1 `auth`). */
  renew() {
    const token = accessToken();
    if (token) this.send({ type: 'auth', access_token: token });
  }
}
