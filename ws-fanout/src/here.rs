//! Room presence, this node's side: who has a room open right now, as
//! distinct from who is a member. A connection has a room open while it is
//! subscribed to it with the `presence` stream — the client's statement that
//! it shows the room (a client that follows many rooms for their unread
//! counts subscribes to those without it). Ephemeral: nothing of it is
//! logged; it lives in the `Presence` port (in process, or Redis shared by
//! every node).
//!
//! The [`Hub`] tells [`Here`] of every subscription that starts or ends, in
//! order, under its lock; `Here` queues them to one task per node, which
//! records them in the port:
//! - an entry that makes the user present (no other tab, no departure
//!   pending) is an **arrival**: a `presence` frame (`state: "arrived"`) goes
//!   to the room's subscribers of the `presence` stream on every node, with
//!   the room's online count;
//! - an exit that leaves the user with no entry starts the **grace period**
//!   (`presence_grace`); if no entry of the user comes back before it ends
//!   (a reconnect, a reload), the departure is announced (`state: "left"`)
//!   by exactly one node; if one does, nothing is announced at all;
//! - each connection's entries are refreshed at every ping; entries of a
//!   node that died expire, and the sweep (every ping interval, over the
//!   rooms with subscribers here) announces those users' departure.
//!
//! `typing` notices travel the same way ([`Presence::signal`]), so they
//! reach the room's subscribers on every node. Signals are notices, at most
//! once; a client that needs the whole picture asks `GET
//! /v1/rooms/{id}/presence`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use emosation_core::ports::{ConnRef, Presence, RoomSignal, SignalKind};
use tokio::sync::mpsc;
use tracing::debug;

use crate::feed::Feed;
use crate::hub::{Hub, Watcher};
use crate::node::Fanout;
use crate::protocol;

/// A subscription started or ended.
enum Change {
    Opened { conn: u64, user: String, room: String },
    Closed { conn: u64, user: String, room: String },
}

/// The node's room presence (see the module doc).
pub(crate) struct Here {
    changes: mpsc::UnboundedSender<Change>,
}

impl Watcher for Here {
    fn opened(&self, conn: u64, user_id: &str, room_id: &str) {
        let _ = self.changes.send(Change::Opened {
            conn,
            user: user_id.to_owned(),
            room: room_id.to_owned(),
        });
    }

    fn closed(&self, conn: u64, user_id: &str, room_id: &str) {
        let _ = self.changes.send(Change::Closed {
            conn,
            user: user_id.to_owned(),
            room: room_id.to_owned(),
        });
    }
}

/// What the node's presence task needs.
#[derive(Clone)]
struct Ctx {
    presence: Arc<dyn Presence>,
    node: String,
    /// An entry lives this long unless refreshed.
    ttl: Duration,
    /// A departure is announced only after this long without a return.
    grace: Duration,
}

impl Ctx {
    /// A connection's identity in room entries (its session does not matter there).
    fn conn(&self, conn: u64) -> ConnRef {
        conn_ref(&self.node, conn)
    }

    /// Announces `user`'s arrival or departure with the room's online count.
    async fn announce(&self, room: &str, user: &str, arrived: bool) {
        let online = match self.presence.here(room).await {
            Ok(users) => users.len() as u32,
            Err(e) => {
                store_error("here");
                debug!(error = %e, room, "cannot count who is here; not announced");
                return;
            }
        };
        let kind = if arrived {
            SignalKind::Arrived { online }
        } else {
            SignalKind::Left { online }
        };
        let signal = RoomSignal {
            room_id: room.to_owned(),
            user_id: user.to_owned(),
            kind,
            origin: None,
        };
        let state = if arrived { "arrived" } else { "left" };
        match self.presence.signal(&signal).await {
            Ok(()) => metrics::counter!("emosation_presence_announcements_total", "state" => state).increment(1),
            Err(e) => {
                store_error("signal");
                debug!(error = %e, room, "cannot announce presence");
            }
        }
    }
}

/// A presence store call that failed (`op`: `enter`, `exit`, `settle`,
/// `sweep`, `here`, `refresh`, `signal`): presence is best effort, so the
/// failure is counted and logged at debug level, never shown to a client.
fn store_error(op: &'static str) {
    metrics::counter!("emosation_presence_store_errors_total", "op" => op).increment(1);
}

fn conn_ref(node: &str, conn: u64) -> ConnRef {
    ConnRef {
        node: node.to_owned(),
        conn,
        session: String::new(),
    }
}

/// Starts the node's presence: the hub's watcher, the task recording its
/// changes, the sweep, and the sink delivering every node's signals to the
/// hub's subscribers here.
pub(crate) async fn start(
    node_ref: Weak<Fanout>,
    feed: Weak<Feed>,
    presence: Arc<dyn Presence>,
    node: &str,
    ttl: Duration,
    grace: Duration,
    sweep_every: Duration,
) -> Result<Arc<Here>, emosation_core::ports::PresenceError> {
    let ctx = Ctx {
        presence: Arc::clone(&presence),
        node: node.to_owned(),
        ttl,
        grace,
    };
    let me = node.to_owned();
    presence
        .on_signals(
            node,
            Arc::new(move |signal: RoomSignal| {
                if let Some(fanout) = node_ref.upgrade() {
                    deliver(&fanout, &me, &signal);
                }
            }),
        )
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = rx.recv() => match change {
                    Some(c) => record(&ctx, c).await,
                    None => return,
                },
                _ = sweep.tick() => {
                    let Some(feed) = feed.upgrade() else { return };
                    let rooms = feed.hub().open_rooms();
                    drop(feed);
                    for room in rooms {
                        match ctx.presence.sweep_room(&room).await {
                            Ok(gone) => {
                                for user in gone {
                                    ctx.announce(&room, &user, false).await;
                                }
                            }
                            Err(e) => {
                                store_error("sweep");
                                debug!(error = %e, room, "cannot sweep presence");
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(Arc::new(Here { changes: tx }))
}

/// Records one change in the port, announcing what it decides.
async fn record(ctx: &Ctx, change: Change) {
    match change {
        Change::Opened { conn, user, room } => {
            match ctx.presence.enter_room(&room, &user, &ctx.conn(conn), ctx.ttl).await {
                Ok(true) => ctx.announce(&room, &user, true).await,
                Ok(false) => {}
                Err(e) => {
                    store_error("enter");
                    debug!(error = %e, room, "cannot record presence; the next refresh will");
                }
            }
        }
        Change::Closed { conn, user, room } => match ctx.presence.exit_room(&room, &user, &ctx.conn(conn)).await {
            Ok(true) => {
                // Settled after the grace period, without holding up the
                // changes behind it.
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(ctx.grace).await;
                    match ctx.presence.settle_departure(&room, &user).await {
                        Ok(true) => ctx.announce(&room, &user, false).await,
                        Ok(false) => {}
                        Err(e) => {
                            store_error("settle");
                            debug!(error = %e, room, "cannot settle a departure; it will expire");
                        }
                    }
                });
            }
            Ok(false) => {}
            Err(e) => {
                store_error("exit");
                debug!(error = %e, room, "cannot record a departure; the entry will expire");
            }
        },
    }
}

/// Delivers a signal to the room's subscribers on this node (a notice: to
/// its user's connections here).
fn deliver(fanout: &Fanout, node: &str, signal: &RoomSignal) {
    let hub: &Hub = fanout.feed.hub();
    let room = signal.room_id.as_str();
    match &signal.kind {
        SignalKind::Typing => {
            // Not echoed to the connection it came from.
            let except = signal.origin.as_ref().filter(|o| o.node == node).map(|o| o.conn);
            hub.notify(room, protocol::typing(room, &signal.user_id), except, |s| s.chat);
        }
        SignalKind::Arrived { online } => {
            let frame = protocol::presence(room, &signal.user_id, "arrived", *online);
            hub.notify(room, frame, None, |s| s.presence);
        }
        SignalKind::Left { online } => {
            let frame = protocol::presence(room, &signal.user_id, "left", *online);
            hub.notify(room, frame, None, |s| s.presence);
        }
        SignalKind::Notice {
            what,
            from_id,
            from_name,
        } => {
            let frame = protocol::notification(what.as_str(), from_id, from_name, room);
            fanout.push_to_user(&signal.user_id, frame);
        }
    }
}

/// Keeps `conn`'s room entries alive (at every ping).
pub(crate) async fn refresh(
    presence: &dyn Presence,
    node: &str,
    conn: u64,
    user_id: &str,
    rooms: &[String],
    ttl: Duration,
) {
    if rooms.is_empty() {
        return;
    }
    if let Err(e) = presence.refresh_rooms(&conn_ref(node, conn), user_id, rooms, ttl).await {
        store_error("refresh");
        debug!(error = %e, "cannot refresh room presence; next ping");
    }
}

/// Relays a typing notice from `conn` to the room's subscribers on every node.
pub(crate) async fn typing(presence: &dyn Presence, node: &str, conn: u64, room_id: &str, user_id: &str) {
    let signal = RoomSignal {
        room_id: room_id.to_owned(),
        user_id: user_id.to_owned(),
        kind: SignalKind::Typing,
        origin: Some(conn_ref(node, conn)),
    };
    if let Err(e) = presence.signal(&signal).await {
        store_error("signal");
        debug!(error = %e, "cannot relay a typing notice");
    }
}
