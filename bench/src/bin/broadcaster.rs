//! The in-memory broadcaster the WebSocket scenarios compare emosation with:
//! the ceiling a chat server with no log can reach on the same core.
//!
//! It speaks the subset of emosation's public contract the load generators
//! use — `POST /v1/auth/signup`, `/v1/auth/login`, `/v1/rooms`,
//! `/v1/rooms/{id}/join`, `/v1/rooms/{id}/messages` (answered `202`), and `GET /v1/ws` with the `hello`, `subscribe` →
//! `subscribed`, `send` → `ack` + `message` frames (same JSON shapes) — so
//! the very same clients drive it. What it leaves out is everything that
//! makes emosation's promises: no log, no fsync (an `ack` means "in this
//! process's memory"), no views, no replay, no resume, no passwords hashed,
//! no sessions to end. Membership is checked on `subscribe` and `send`, as a
//! real broadcaster would.
//!
//! It is built the way a well-made Rust broadcaster is (axum's WebSocket,
//! as in its chat example, made faster): rooms in one map behind a mutex;
//! each socket's frames go through its own unbounded channel to a writer
//! task that writes every frame waiting and then flushes once (one write
//! per burst); a frame is serialised once and shared by every subscriber
//! (`Utf8Bytes` is reference counted). With `--emotions` each message is
//! also classified inline by emosation's offline classifier and an
//! `emotion` frame goes to the room's subscribers of that stream, so that
//! `small_rooms` (which expects both frames) runs on it too.
//!
//! `broadcaster --listen 127.0.0.1:PORT [--emotions]`; the bench starts it
//! (`BENCH_PEERS=broadcaster`), pinned to the server's core.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use emosation_analyzer::offline::LexiconClassifier;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One subscribed socket of a room.
struct Subscriber {
    conn: u64,
    tx: mpsc::UnboundedSender<Utf8Bytes>,
    chat: bool,
    emotion: bool,
}

#[derive(Default)]
struct Room {
    members: HashSet<String>,
    subscribers: Vec<Subscriber>,
    next_id: u64,
}

#[derive(Default)]
struct Rooms {
    users: HashSet<String>,
    rooms: HashMap<String, Room>,
}

struct App {
    rooms: Mutex<Rooms>,
    next_room: AtomicU64,
    next_conn: AtomicU64,
    classifier: Option<LexiconClassifier>,
}

type Shared = Arc<App>;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// The token is the username (no signature: nothing to protect here).
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    Some(v.strip_prefix("Bearer ")?.to_owned())
}

async fn signup(State(app): State<Shared>, Json(body): Json<Value>) -> Response {
    let Some(name) = body["username"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "username is required");
    };
    if !app.rooms.lock().unwrap().users.insert(name.to_owned()) {
        return error(StatusCode::CONFLICT, "username_taken", "that username is taken");
    }
    (StatusCode::CREATED, Json(json!({"user_id": name, "username": name}))).into_response()
}

async fn login(State(app): State<Shared>, Json(body): Json<Value>) -> Response {
    let name = body["username"].as_str().unwrap_or_default();
    if !app.rooms.lock().unwrap().users.contains(name) {
        return error(StatusCode::UNAUTHORIZED, "invalid_credentials", "unknown user");
    }
    Json(json!({"user_id": name, "access_token": name, "refresh_token": name, "token_type": "Bearer"})).into_response()
}

async fn create_room(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let Some(user) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required");
    };
    let id = format!("{:020}", app.next_room.fetch_add(1, Ordering::Relaxed) + 1);
    let mut room = Room::default();
    room.members.insert(user);
    app.rooms.lock().unwrap().rooms.insert(id.clone(), room);
    (StatusCode::CREATED, Json(json!({"room_id": id}))).into_response()
}

async fn join(State(app): State<Shared>, Path(room): Path<String>, headers: HeaderMap) -> Response {
    let Some(user) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required");
    };
    match app.rooms.lock().unwrap().rooms.get_mut(&room) {
        Some(r) => {
            r.members.insert(user);
            Json(json!({"room_id": room, "member_count": r.members.len()})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "room_not_found", "no such room"),
    }
}

async fn ws(
    State(app): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(user) = q.get("access_token").cloned() else {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "access_token is required");
    };
    upgrade.on_upgrade(move |socket| session(app, user, socket))
}

/// One socket: a writer task drains its channel (every frame waiting, then
/// one flush); this task reads and handles the client's frames.
async fn session(app: Shared, user: String, socket: WebSocket) {
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(Message::Text(more)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let _ = tx.send(Utf8Bytes::from(
        json!({"type": "hello", "user_id": user, "username": user}).to_string(),
    ));
    let mut subscribed: Vec<String> = Vec::new();
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            let _ = tx.send(Utf8Bytes::from(
                json!({"type": "error", "code": "invalid_json", "message": "not JSON"}).to_string(),
            ));
            continue;
        };
        let room_id = frame["room_id"].as_str().unwrap_or_default();
        match frame["type"].as_str().unwrap_or_default() {
            "subscribe" => {
                let streams = frame["streams"].as_array();
                let has = |s: &str| streams.is_none_or(|v| v.iter().any(|x| x == s));
                let answer = {
                    let mut rooms = app.rooms.lock().unwrap();
                    match rooms.rooms.get_mut(room_id) {
                        Some(r) if r.members.contains(&user) => {
                            r.subscribers.push(Subscriber {
                                conn,
                                tx: tx.clone(),
                                chat: has("chat"),
                                emotion: has("emotion"),
                            });
                            subscribed.push(room_id.to_owned());
                            json!({"type": "subscribed", "room_id": room_id, "member_count": r.members.len()})
                        }
                        _ => json!({"type": "error", "code": "not_member", "room_id": room_id}),
                    }
                };
                let _ = tx.send(Utf8Bytes::from(answer.to_string()));
            }
            "send" => {
                let client_msg_id = frame["client_msg_id"].as_str().unwrap_or_default();
                let body = frame["text"].as_str().unwrap_or_default();
                let answer = match publish(&app, &user, room_id, client_msg_id, body) {
                    Some(id) => {
                        json!({"type": "ack", "room_id": room_id, "client_msg_id": client_msg_id, "message_id": id, "cursor": id})
                    }
                    None => {
                        json!({"type": "error", "code": "not_member", "room_id": room_id, "client_msg_id": client_msg_id})
                    }
                };
                let _ = tx.send(Utf8Bytes::from(answer.to_string()));
            }
            "unsubscribe" => {}
            other => {
                let _ = tx.send(Utf8Bytes::from(
                    json!({"type": "error", "code": "unknown_type", "message": format!("unknown frame type {other:?}")})
                        .to_string(),
                ));
            }
        }
    }
    let mut rooms = app.rooms.lock().unwrap();
    for id in subscribed {
        if let Some(r) = rooms.rooms.get_mut(&id) {
            r.subscribers.retain(|s| s.conn != conn);
        }
    }
    drop(rooms);
    writer.abort();
}

/// A message from `user` to `room_id`: its frame (and with `--emotions` its
/// emotion's) serialised once and queued for every subscriber; its id, or
/// `None` if `user` is not a member.
fn publish(app: &App, user: &str, room_id: &str, client_msg_id: &str, body: &str) -> Option<String> {
    let emotion = app.classifier.as_ref().map(|c| c.classify_one(body));
    let mut rooms = app.rooms.lock().unwrap();
    let r = rooms.rooms.get_mut(room_id).filter(|r| r.members.contains(user))?;
    r.next_id += 1;
    let id = format!("{:020}", r.next_id);
    let message = Utf8Bytes::from(
        json!({"type": "message", "room_id": room_id, "message_id": id, "cursor": id,
               "user_id": user, "username": user, "text": body, "client_msg_id": client_msg_id})
        .to_string(),
    );
    let emotion = emotion.map(|e| {
        Utf8Bytes::from(
            json!({"type": "emotion", "room_id": room_id, "message_id": id, "cursor": id,
                   "label": e.label.as_str(), "confidence": e.score})
            .to_string(),
        )
    });
    for s in &r.subscribers {
        if s.chat {
            let _ = s.tx.send(message.clone());
        }
    }
    if let Some(e) = &emotion {
        for s in r.subscribers.iter().filter(|s| s.emotion) {
            let _ = s.tx.send(e.clone());
        }
    }
    Some(id)
}

/// `POST /v1/rooms/{id}/messages`: as a `send` frame, answered `202`.
async fn post_message(
    State(app): State<Shared>,
    Path(room): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let Some(user) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required");
    };
    let client_msg_id = body["client_msg_id"].as_str().unwrap_or_default();
    let text = body["text"].as_str().unwrap_or_default();
    match publish(&app, &user, &room, client_msg_id, text) {
        Some(id) => (StatusCode::ACCEPTED, Json(json!({"message_id": id, "cursor": id}))).into_response(),
        None => error(StatusCode::FORBIDDEN, "not_member", "not a member of this room"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let app = Arc::new(App {
        rooms: Mutex::default(),
        next_room: AtomicU64::new(0),
        next_conn: AtomicU64::new(0),
        classifier: args.iter().any(|a| a == "--emotions").then(LexiconClassifier::new),
    });
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/rooms", post(create_room))
        .route("/v1/rooms/{id}/join", post(join))
        .route("/v1/rooms/{id}/messages", post(post_message))
        .route("/v1/ws", get(ws))
        .with_state(app);
    // No Nagle delay on small frames (emosation sets TCP_NODELAY too).
    let listener = tokio::net::TcpListener::bind(&listen).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}
