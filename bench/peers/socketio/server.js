// The Socket.IO broadcaster emosation's WebSocket benchmarks compare with:
// the chat server people know (Socket.IO 4 on Node.js, rooms in memory, no
// log), driven by the same load generator as emosation on the same core.
//
// It speaks the subset of emosation's contract the generator uses, wrapped
// in Socket.IO's framing: the HTTP set-up (signup, login, create a room,
// join, post a message: 202) and, over `/socket.io/` (WebSocket transport only), one event `f`
// whose payload is emosation's frame (`hello`, `subscribe` -> `subscribed`,
// `send` -> `ack` + `message`, and with `--emotions` an `emotion` frame per
// message). A broadcast is encoded once and written to every socket of the
// room (Socket.IO's adapter does that). No durability: an ack means "in this
// process's memory".
//
//   node server.js --listen 127.0.0.1:PORT [--emotions]
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const args = process.argv.slice(2);
const listen = args[args.indexOf("--listen") + 1] || "127.0.0.1:8091";
const emotions = args.includes("--emotions");
const [host, port] = [listen.slice(0, listen.lastIndexOf(":")), Number(listen.slice(listen.lastIndexOf(":") + 1))];

const users = new Set();
const rooms = new Map(); // room id -> { members: Set, nextId }
let nextRoom = 0;

// A few words per label: a stand-in for a classifier (the Rust peer runs
// emosation's own offline classifier), so that the frame is sent and its
// cost of encoding and writing is paid.
const LEXICON = [
  ["joy", /\b(happy|glad|great|love|thanks)\b/i],
  ["sadness", /\b(sad|sorry|miss|cry)\b/i],
  ["anger", /\b(angry|hate|furious)\b/i],
  ["fear", /\b(afraid|scared|worried)\b/i],
  ["surprise", /\b(wow|surprised|unexpected)\b/i],
];
function classify(text) {
  for (const [label, re] of LEXICON) if (re.test(text)) return { label, confidence: 0.8 };
  return { label: "neutral", confidence: 0.6 };
}

function pad(n) {
  return String(n).padStart(20, "0");
}

function reply(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

function readJson(req) {
  return new Promise((resolve) => {
    let data = "";
    req.on("data", (c) => (data += c));
    req.on("end", () => {
      try {
        resolve(data ? JSON.parse(data) : {});
      } catch {
        resolve(null);
      }
    });
  });
}

function bearer(req) {
  const h = req.headers.authorization || "";
  return h.startsWith("Bearer ") ? h.slice(7) : null;
}

const server = http.createServer(async (req, res) => {
  const url = req.url.split("?")[0];
  if (req.method === "GET" && url === "/healthz") return reply(res, 200, { status: "ok" });
  if (req.method !== "POST") return reply(res, 404, { error: { code: "not_found", message: "no such route" } });
  const body = await readJson(req);
  if (body === null) return reply(res, 400, { error: { code: "invalid_json", message: "not JSON" } });
  if (url === "/v1/auth/signup") {
    if (typeof body.username !== "string") return reply(res, 400, { error: { code: "invalid_request", message: "username" } });
    if (users.has(body.username)) return reply(res, 409, { error: { code: "username_taken", message: "taken" } });
    users.add(body.username);
    return reply(res, 201, { user_id: body.username, username: body.username });
  }
  if (url === "/v1/auth/login") {
    if (!users.has(body.username)) return reply(res, 401, { error: { code: "invalid_credentials", message: "unknown user" } });
    return reply(res, 200, { user_id: body.username, access_token: body.username, refresh_token: body.username });
  }
  const user = bearer(req);
  if (!user) return reply(res, 401, { error: { code: "unauthorized", message: "a bearer token is required" } });
  if (url === "/v1/rooms") {
    const id = pad(++nextRoom);
    rooms.set(id, { members: new Set([user]), nextId: 0 });
    return reply(res, 201, { room_id: id });
  }
  const post = url.match(/^\/v1\/rooms\/([^/]+)\/messages$/);
  if (post) {
    const room = rooms.get(post[1]);
    if (!room || !room.members.has(user)) return reply(res, 403, { error: { code: "not_member", message: "not a member" } });
    const id = publish(post[1], room, user, body.text, body.client_msg_id);
    return reply(res, 202, { message_id: id, cursor: id });
  }
  const m = url.match(/^\/v1\/rooms\/([^/]+)\/join$/);
  if (m) {
    const room = rooms.get(m[1]);
    if (!room) return reply(res, 404, { error: { code: "room_not_found", message: "no such room" } });
    room.members.add(user);
    return reply(res, 200, { room_id: m[1], member_count: room.members.size });
  }
  return reply(res, 404, { error: { code: "not_found", message: "no such route" } });
});

// A message to the room's subscribers (and its emotion to those of that
// stream): each broadcast encoded once by Socket.IO's adapter. Its id.
function publish(roomId, room, user, text, clientMsgId) {
  const id = pad(++room.nextId);
  io.to(roomId).emit("f", {
    type: "message", room_id: roomId, message_id: id, cursor: id,
    user_id: user, username: user, text, client_msg_id: clientMsgId,
  });
  if (emotions) {
    const e = classify(text || "");
    io.to(roomId + "#emotion").emit("f", {
      type: "emotion", room_id: roomId, message_id: id, cursor: id, label: e.label, confidence: e.confidence,
    });
  }
  return id;
}

const io = new Server(server, {
  transports: ["websocket"],
  // The raw load generator answers no pings; a run lasts minutes.
  pingInterval: 600000,
  pingTimeout: 600000,
  perMessageDeflate: false,
});

io.on("connection", (socket) => {
  const user = socket.handshake.query.token || (socket.handshake.auth && socket.handshake.auth.token);
  if (!user) return socket.disconnect(true);
  socket.emit("f", { type: "hello", user_id: user, username: user });
  socket.on("f", (frame) => {
    if (!frame || typeof frame !== "object") return socket.emit("f", { type: "error", code: "invalid_request" });
    const room = rooms.get(frame.room_id);
    if (frame.type === "subscribe") {
      if (!room || !room.members.has(user)) return socket.emit("f", { type: "error", code: "not_member", room_id: frame.room_id });
      const streams = Array.isArray(frame.streams) ? frame.streams : ["chat", "emotion"];
      if (streams.includes("chat")) socket.join(frame.room_id);
      if (streams.includes("emotion")) socket.join(frame.room_id + "#emotion");
      return socket.emit("f", { type: "subscribed", room_id: frame.room_id, member_count: room.members.size });
    }
    if (frame.type === "send") {
      if (!room || !room.members.has(user)) {
        return socket.emit("f", { type: "error", code: "not_member", room_id: frame.room_id, client_msg_id: frame.client_msg_id });
      }
      const id = publish(frame.room_id, room, user, frame.text, frame.client_msg_id);
      return socket.emit("f", { type: "ack", room_id: frame.room_id, client_msg_id: frame.client_msg_id, message_id: id, cursor: id });
    }
    socket.emit("f", { type: "error", code: "unknown_type", message: "unknown frame type" });
  });
});

server.listen(port, host);
