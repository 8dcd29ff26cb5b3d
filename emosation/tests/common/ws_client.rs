//! A WebSocket client for the protocol's frames.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client on any stream: plain TCP by default, or a TLS stream the test
/// opened itself (`Client::on`).
pub struct Client<S = MaybeTlsStream<TcpStream>> {
    pub ws: WebSocketStream<S>,
}

impl Client {
    pub async fn connect(base: &str, token: &str) -> Client {
        let url = format!("{}/v1/ws?access_token={token}", base.replace("http://", "ws://"));
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws connect");
        Client::greeted(ws).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// The WebSocket handshake for `url` over `stream`, and its `hello`.
    pub async fn on(stream: S, url: &str) -> Client<S> {
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("ws handshake");
        Client::greeted(ws).await
    }

    async fn greeted(ws: WebSocketStream<S>) -> Client<S> {
        let mut c = Client { ws };
        let hello = c.next().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next JSON frame (skipping pings), or panics after 10 s.
    pub async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s")
                .expect("stream open")
                .expect("frame ok");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => return json!({"type": "__close", "code": c.map(|c| u16::from(c.code))}),
                _ => continue,
            }
        }
    }

    /// The next frame of one of `types`, skipping others.
    pub async fn next_of(&mut self, types: &[&str]) -> Value {
        loop {
            let f = self.next().await;
            if types.contains(&f["type"].as_str().unwrap_or("")) {
                return f;
            }
        }
    }

    /// No frame arrives within `ms`.
    pub async fn quiet(&mut self, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), self.ws.next())
            .await
            .is_err()
    }

    /// Subscribes to the chat stream (the emotion stream has its own test).
    pub async fn subscribe(&mut self, room: &str, since: Option<&str>) -> Value {
        let mut f = json!({"type": "subscribe", "room_id": room, "streams": ["chat"]});
        if let Some(s) = since {
            f["since"] = json!(s);
        }
        self.send(f).await;
        self.next_of(&["subscribed", "error"]).await
    }
}
