//! Records from fuzz input. Ids come mostly from small pools (a few
//! usernames and rooms, the ids earlier records got from their positions),
//! so that the interesting collisions — a second signup of a name, a full
//! room, a repeated `client_msg_id`, a read marker on a real message — happen
//! often; now and then any string, integer or float at all.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use emosation_core::emotion::Label;
use emosation_core::ids::{LogPosition, Topic, Topology, normalize_username, partition_for};
use emosation_core::record::*;

const USERS: [&str; 5] = ["alice", "bob", "Alice", "carol", "dave"];
const ROOMS: [&str; 3] = ["00000000000000a1", "00000000000000b2", "00000000000000c3"];
const CLIENT_MSG_IDS: [&str; 3] = ["c0", "c1", "c2"];
const SESSION_IDS: [&str; 3] = ["s0", "s1", "s2"];

/// A log being written: records at the positions a log would give them
/// (each key in its partition, offsets counting up per topic partition), and
/// the ids those positions gave (user ids, message ids) for later records to
/// name.
#[derive(Debug, Default)]
pub struct LogBuilder {
    topology: Topology,
    next: HashMap<(Topic, u32), u64>,
    /// Normalized username → the user id of its first signup.
    user_ids: HashMap<String, String>,
    /// Room id → ids of messages posted to it.
    message_ids: HashMap<String, Vec<String>>,
    /// Room id → ids of attachments uploaded to it.
    attachment_ids: HashMap<String, Vec<String>>,
    pub log: Vec<(LogPosition, Record)>,
}

impl LogBuilder {
    /// Appends `record` where its topic and key route it.
    pub fn push(&mut self, record: Record) {
        let topic = record.topic();
        let partition = partition_for(record.key().as_bytes(), self.topology.partitions(topic));
        let offset = self.next.entry((topic, partition)).or_default();
        let pos = LogPosition::new(partition, *offset);
        *offset += 1;
        match &record {
            Record::UserSignedUp(r) => {
                self.user_ids
                    .entry(normalize_username(&r.username))
                    .or_insert_with(|| pos.to_id());
            }
            Record::MessagePosted(r) => self.message_ids.entry(r.room_id.clone()).or_default().push(pos.to_id()),
            Record::AttachmentUploaded(r) => self
                .attachment_ids
                .entry(r.room_id.clone())
                .or_default()
                .push(emosation_core::ids::attachment_id(&r.room_id, pos)),
            _ => {}
        }
        self.log.push((pos, record));
    }

    /// A record of any type, its fields drawn as the module says.
    pub fn record(&self, u: &mut Unstructured<'_>) -> Result<Record> {
        let request_id = i64::arbitrary(u)?;
        let at = small_or_any(u)?;
        Ok(match u.int_in_range(0..=17u8)? {
            0 => Record::UserSignedUp(UserSignedUp {
                request_id,
                at,
                username: pick(u, &USERS)?,
                password_hash: String::arbitrary(u)?,
            }),
            1 => {
                let (username, user_id) = self.account(u)?;
                Record::AccountDeleted(AccountDeleted {
                    request_id,
                    at,
                    user_id,
                    username,
                    by: None,
                })
            }
            2 => {
                let (username, user_id) = self.account(u)?;
                Record::AccountRestored(AccountRestored {
                    request_id,
                    at,
                    user_id,
                    username,
                    by: None,
                })
            }
            3 => {
                let (username, user_id) = self.account(u)?;
                Record::SessionRevoked(SessionRevoked {
                    request_id,
                    at,
                    user_id,
                    username,
                    session_id: pick(u, &SESSION_IDS)?,
                    expires_at: small_or_any(u)?,
                })
            }
            10 => {
                let (username, user_id) = self.account(u)?;
                Record::SessionOpened(SessionOpened {
                    request_id,
                    at,
                    user_id,
                    username,
                    session_id: pick(u, &SESSION_IDS)?,
                    expires_at: small_or_any(u)?,
                })
            }
            11 => {
                let (username, user_id) = self.account(u)?;
                Record::SessionRefreshed(SessionRefreshed {
                    request_id,
                    at,
                    user_id,
                    username,
                    session_id: pick(u, &SESSION_IDS)?,
                    generation: small_or_any(u)?,
                })
            }
            4 => {
                let (owner_name, owner_id) = self.member(u)?;
                Record::RoomCreated(RoomCreated {
                    request_id,
                    at,
                    room_id: pick(u, &ROOMS)?,
                    name: String::arbitrary(u)?,
                    capacity: if u.ratio(1, 8)? {
                        i32::arbitrary(u)?
                    } else {
                        u.int_in_range(-1..=3)?
                    },
                    owner_id,
                    owner_name,
                })
            }
            5 => {
                let (username, user_id) = self.member(u)?;
                Record::MemberJoined(MemberJoined {
                    request_id,
                    at,
                    room_id: pick(u, &ROOMS)?,
                    user_id,
                    username,
                })
            }
            6 => {
                let (username, user_id) = self.member(u)?;
                Record::MemberQuit(MemberQuit {
                    request_id,
                    at,
                    room_id: pick(u, &ROOMS)?,
                    user_id,
                    username,
                })
            }
            7 => {
                let (author, author_id) = self.member(u)?;
                let room_id = pick(u, &ROOMS)?;
                let mut attachments = Vec::new();
                for _ in 0..u.int_in_range(0..=2u8)? {
                    attachments.push(self.attachment_id(u, &room_id)?);
                }
                Record::MessagePosted(MessagePosted {
                    request_id,
                    at,
                    room_id,
                    author_id,
                    author,
                    client_msg_id: pick(u, &CLIENT_MSG_IDS)?,
                    text: String::arbitrary(u)?,
                    attachments,
                })
            }
            8 => {
                let (_, user_id) = self.member(u)?;
                let room_id = pick(u, &ROOMS)?;
                Record::ReadMarkerSet(ReadMarkerSet {
                    request_id,
                    at,
                    message_id: self.message_id(u, &room_id)?,
                    room_id,
                    user_id,
                })
            }
            9 => {
                let room_id = pick(u, &ROOMS)?;
                let label = if u.ratio(1, 8)? {
                    String::arbitrary(u)?
                } else {
                    u.choose(&Label::ALL)?.as_str().to_owned()
                };
                let scores = if u.ratio(1, 8)? {
                    Vec::<f32>::arbitrary(u)?
                } else {
                    (0..Label::ALL.len()).map(|_| score(u)).collect::<Result<_>>()?
                };
                let edit_id = if u.ratio(1, 4)? {
                    Some(self.message_id(u, &room_id)?)
                } else {
                    None
                };
                Record::EmotionRecorded(EmotionRecorded {
                    request_id,
                    at,
                    message_id: self.message_id(u, &room_id)?,
                    room_id,
                    label,
                    score: score(u)?,
                    scores,
                    model: String::arbitrary(u)?,
                    edit_id,
                })
            }
            12 => {
                let (username, user_id) = self.member(u)?;
                let room_id = pick(u, &ROOMS)?;
                Record::MessageEdited(MessageEdited {
                    request_id,
                    at,
                    message_id: self.message_id(u, &room_id)?,
                    room_id,
                    user_id,
                    username,
                    text: String::arbitrary(u)?,
                })
            }
            13 => {
                let (username, user_id) = self.member(u)?;
                let room_id = pick(u, &ROOMS)?;
                Record::MessageDeleted(MessageDeleted {
                    request_id,
                    at,
                    message_id: self.message_id(u, &room_id)?,
                    room_id,
                    user_id,
                    username,
                })
            }
            14 => {
                let (username, user_id) = self.member(u)?;
                let (other_name, other_id) = self.member(u)?;
                // Mostly the pair's own room id; sometimes any room's.
                let room_id = if u.ratio(7, 8)? {
                    emosation_core::ids::pair_room_id(&user_id, &other_id)
                } else {
                    pick(u, &ROOMS)?
                };
                let action = if u.ratio(1, 8)? {
                    String::arbitrary(u)?
                } else {
                    (*u.choose(&emosation_core::record::RELATIONSHIP_ACTIONS)?).to_owned()
                };
                Record::RelationshipChanged(RelationshipChanged {
                    request_id,
                    at,
                    room_id,
                    user_id,
                    username,
                    other_id,
                    other_name,
                    action,
                })
            }
            15 => {
                let (username, user_id) = self.account(u)?;
                Record::AdminRoleChanged(AdminRoleChanged {
                    request_id,
                    at,
                    user_id,
                    username,
                    granted: bool::arbitrary(u)?,
                    by: "cli".into(),
                })
            }
            16 => {
                let (uploader, uploader_id) = self.member(u)?;
                Record::AttachmentUploaded(AttachmentUploaded {
                    request_id,
                    at,
                    room_id: pick(u, &ROOMS)?,
                    uploader_id,
                    uploader,
                    file_name: String::arbitrary(u)?,
                    size: small_or_any(u)?,
                    content_type: "image/png".into(),
                    width: Option::<i32>::arbitrary(u)?,
                    height: Option::<i32>::arbitrary(u)?,
                    blob_key: String::arbitrary(u)?,
                    sha256: String::arbitrary(u)?,
                })
            }
            17 => {
                let room_id = pick(u, &ROOMS)?;
                Record::AttachmentExpired(AttachmentExpired {
                    request_id,
                    at,
                    attachment_id: self.attachment_id(u, &room_id)?,
                    room_id,
                })
            }
            _ => unreachable!("a record type out of range"),
        })
    }

    /// A username and the user id an account record names with it: mostly
    /// the id its first signup got, sometimes another user's or any string.
    fn account(&self, u: &mut Unstructured<'_>) -> Result<(String, String)> {
        let username = pick(u, &USERS)?;
        let own = self.user_ids.get(&normalize_username(&username));
        let user_id = match (own, u.int_in_range(0..=7u8)?) {
            (Some(id), 0..=5) => id.clone(),
            (_, 6) => self.any_user_id(u)?,
            _ => String::arbitrary(u)?,
        };
        Ok((username, user_id))
    }

    /// A user as a room record names one: an id and a name.
    fn member(&self, u: &mut Unstructured<'_>) -> Result<(String, String)> {
        Ok((pick(u, &USERS)?, self.any_user_id(u)?))
    }

    fn any_user_id(&self, u: &mut Unstructured<'_>) -> Result<String> {
        let mut ids: Vec<&String> = self.user_ids.values().collect();
        ids.sort();
        if ids.is_empty() || u.ratio(1, 8)? {
            return String::arbitrary(u);
        }
        Ok((*u.choose(&ids)?).clone())
    }

    /// An attachment id for `room_id`: one uploaded there, one of another
    /// room, or any string.
    fn attachment_id(&self, u: &mut Unstructured<'_>, room_id: &str) -> Result<String> {
        let here = self.attachment_ids.get(room_id).map(Vec::as_slice).unwrap_or_default();
        match u.int_in_range(0..=7u8)? {
            0..=5 if !here.is_empty() => Ok(u.choose(here)?.clone()),
            6 => {
                let mut all: Vec<&String> = self.attachment_ids.values().flatten().collect();
                all.sort();
                match all.is_empty() {
                    true => String::arbitrary(u),
                    false => Ok((*u.choose(&all)?).clone()),
                }
            }
            _ => String::arbitrary(u),
        }
    }

    /// A message id for `room_id`: one posted there, one that could be (a
    /// position in the room's partition), or any string.
    fn message_id(&self, u: &mut Unstructured<'_>, room_id: &str) -> Result<String> {
        let posted = self.message_ids.get(room_id).map(Vec::as_slice).unwrap_or_default();
        match u.int_in_range(0..=7u8)? {
            0..=4 if !posted.is_empty() => Ok(u.choose(posted)?.clone()),
            0..=5 => {
                let partition = partition_for(room_id.as_bytes(), self.topology.partitions(Topic::Rooms));
                Ok(LogPosition::new(partition, u.int_in_range(0..=64)?).to_id())
            }
            _ => String::arbitrary(u),
        }
    }
}

/// One of `pool`, or now and then any string.
fn pick(u: &mut Unstructured<'_>, pool: &[&str]) -> Result<String> {
    if u.ratio(1, 8)? {
        String::arbitrary(u)
    } else {
        Ok((*u.choose(pool)?).to_owned())
    }
}

/// A score: mostly in 0..=1, sometimes any float (NaN and infinities too).
fn score(u: &mut Unstructured<'_>) -> Result<f32> {
    if u.ratio(1, 8)? {
        f32::arbitrary(u)
    } else {
        Ok(f32::from(u.int_in_range(0..=100u8)?) / 100.0)
    }
}

/// Mostly a small number (times, generations that collide), sometimes any.
fn small_or_any(u: &mut Unstructured<'_>) -> Result<i64> {
    if u.ratio(1, 8)? {
        i64::arbitrary(u)
    } else {
        u.int_in_range(0..=40)
    }
}
