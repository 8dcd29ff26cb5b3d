//! A direct decoder for records written under the *current* schemas.
//!
//! Decoding through `apache_avro::types::Value` allocates a tree per record;
//! replay and every consumer decode millions of records, so records whose
//! fingerprint is a current schema are read field by field straight into
//! their structs. The field order below must follow the `.avsc` files: the
//! `fast_decoder_agrees_with_apache_avro` test checks every record type
//! against apache-avro, and a schema change without a matching change here
//! fails it. Records written under older versions go through apache-avro's
//! schema resolution instead.

use emosation_core::Record;
use emosation_core::record::*;

use crate::{RecordType, SchemaError};

struct Reader<'a> {
    buf: &'a [u8],
}

fn malformed(what: &str) -> SchemaError {
    SchemaError::Malformed(what.to_owned())
}

impl<'a> Reader<'a> {
    /// A zig-zag varint of at most 10 bytes.
    fn long(&mut self) -> Result<i64, SchemaError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or_else(|| malformed("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, SchemaError> {
        i32::try_from(self.long()?).map_err(|_| malformed("int out of range"))
    }

    fn float(&mut self) -> Result<f32, SchemaError> {
        if self.buf.len() < 4 {
            return Err(malformed("truncated float"));
        }
        let (b, rest) = self.buf.split_at(4);
        self.buf = rest;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array: blocks of `count` items (a negative count is followed by
    /// the block's size in bytes), ended by a zero count. Each item takes at
    /// least `min_bytes`, so a count the rest of the record cannot hold is
    /// refused before anything is allocated for it.
    fn array<T>(
        &mut self,
        min_bytes: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, SchemaError>,
    ) -> Result<Vec<T>, SchemaError> {
        let mut out = Vec::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(out);
            }
            if count < 0 {
                self.long()?;
            }
            let n = count.unsigned_abs();
            if n > (self.buf.len() / min_bytes) as u64 {
                return Err(malformed("array longer than the record"));
            }
            for _ in 0..n {
                out.push(item(self)?);
            }
        }
    }

    /// An array of floats (four bytes each).
    fn floats(&mut self) -> Result<Vec<f32>, SchemaError> {
        self.array(4, Self::float)
    }

    fn string(&mut self) -> Result<String, SchemaError> {
        let len = usize::try_from(self.long()?).map_err(|_| malformed("negative string length"))?;
        if len > self.buf.len() {
            return Err(malformed("string longer than the record"));
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        String::from_utf8(s.to_vec()).map_err(|_| malformed("string is not UTF-8"))
    }

    /// A boolean: one byte, 0 or 1.
    fn boolean(&mut self) -> Result<bool, SchemaError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| malformed("truncated boolean"))?;
        self.buf = rest;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(malformed("boolean is neither 0 nor 1")),
        }
    }

    /// An array of strings (each at least its length's byte).
    fn strings(&mut self) -> Result<Vec<String>, SchemaError> {
        self.array(1, Self::string)
    }

    /// A `["null", "int"]` union: the branch index, then the int.
    fn optional_int(&mut self) -> Result<Option<i32>, SchemaError> {
        match self.long()? {
            0 => Ok(None),
            1 => self.int().map(Some),
            _ => Err(malformed("union branch out of range")),
        }
    }

    /// A `["null", "string"]` union: the branch index, then the string.
    fn optional_string(&mut self) -> Result<Option<String>, SchemaError> {
        match self.long()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(malformed("union branch out of range")),
        }
    }
}

/// Decodes the datum of a record written under the current schema of `kind`.
pub(crate) fn decode_current(kind: RecordType, body: &[u8]) -> Result<Record, SchemaError> {
    let mut r = Reader { buf: body };
    let request_id = r.long()?;
    let at = r.long()?;
    let record = match kind {
        RecordType::UserSignedUp => Record::UserSignedUp(UserSignedUp {
            request_id,
            at,
            username: r.string()?,
            password_hash: r.string()?,
        }),
        RecordType::AccountDeleted => Record::AccountDeleted(AccountDeleted {
            request_id,
            at,
            user_id: r.string()?,
            username: r.string()?,
            by: r.optional_string()?,
        }),
        RecordType::AccountRestored => Record::AccountRestored(AccountRestored {
            request_id,
            at,
            user_id: r.string()?,
            username: r.string()?,
            by: r.optional_string()?,
        }),
        RecordType::SessionRevoked => Record::SessionRevoked(SessionRevoked {
            request_id,
            at,
            user_id: r.string()?,
            username: r.string()?,
            session_id: r.string()?,
            expires_at: r.long()?,
        }),
        RecordType::RoomCreated => Record::RoomCreated(RoomCreated {
            request_id,
            at,
            room_id: r.string()?,
            name: r.string()?,
            capacity: r.int()?,
            owner_id: r.string()?,
            owner_name: r.string()?,
        }),
        RecordType::MemberJoined => Record::MemberJoined(MemberJoined {
            request_id,
            at,
            room_id: r.string()?,
            user_id: r.string()?,
            username: r.string()?,
        }),
        RecordType::MemberQuit => Record::MemberQuit(MemberQuit {
            request_id,
            at,
            room_id: r.string()?,
            user_id: r.string()?,
            username: r.string()?,
        }),
        RecordType::MessagePosted => Record::MessagePosted(MessagePosted {
            request_id,
            at,
            room_id: r.string()?,
            author_id: r.string()?,
            author: r.string()?,
            client_msg_id: r.string()?,
            text: r.string()?,
            attachments: r.strings()?,
        }),
        RecordType::AttachmentUploaded => Record::AttachmentUploaded(AttachmentUploaded {
            request_id,
            at,
            room_id: r.string()?,
            uploader_id: r.string()?,
            uploader: r.string()?,
            file_name: r.string()?,
            size: r.long()?,
            content_type: r.string()?,
            width: r.optional_int()?,
            height: r.optional_int()?,
            blob_key: r.string()?,
            sha256: r.string()?,
        }),
        RecordType::AttachmentExpired => Record::AttachmentExpired(AttachmentExpired {
            request_id,
            at,
            room_id: r.string()?,
            attachment_id: r.string()?,
        }),
        RecordType::EmotionRecorded => Record::EmotionRecorded(EmotionRecorded {
            request_id,
            at,
            room_id: r.string()?,
            message_id: r.string()?,
            label: r.string()?,
            score: r.float()?,
            scores: r.floats()?,
            model: r.string()?,
            edit_id: r.optional_string()?,
        }),
        RecordType::ReadMarkerSet => Record::ReadMarkerSet(ReadMarkerSet {
            request_id,
            at,
            room_id: r.string()?,
            user_id: r.string()?,
            message_id: r.string()?,
        }),
        RecordType::SessionOpened => Record::SessionOpened(SessionOpened {
            request_id,
            at,
            user_id: r.string()?,
            username: r.string()?,
            session_id: r.string()?,
            expires_at: r.long()?,
        }),
        RecordType::SessionRefreshed => Record::SessionRefreshed(SessionRefreshed {
            request_id,
            at,
            user_id: r.string()?,
            username: r.string()?,
            session_id: r.string()?,
            generation: r.long()?,
        }),
        RecordType::MessageEdited => Record::MessageEdited(MessageEdited {
            request_id,
            at,
            room_id: r.string()?,
            message_id: r.string()?,
            user_id: r.string()?,
            username: r.string()?,
            text: r.string()?,
        }),
        RecordType::AdminRoleChanged => Record::AdminRoleChanged(AdminRoleChanged {
            request_id,
            at,
            user_id: r.string()?,
            username: r.string()?,
            granted: r.boolean()?,
            by: r.string()?,
        }),
        RecordType::RelationshipChanged => Record::RelationshipChanged(RelationshipChanged {
            request_id,
            at,
            room_id: r.string()?,
            user_id: r.string()?,
            username: r.string()?,
            other_id: r.string()?,
            other_name: r.string()?,
            action: r.string()?,
        }),
        RecordType::MessageDeleted => Record::MessageDeleted(MessageDeleted {
            request_id,
            at,
            room_id: r.string()?,
            message_id: r.string()?,
            user_id: r.string()?,
            username: r.string()?,
        }),
    };
    if !r.buf.is_empty() {
        return Err(SchemaError::TrailingBytes(r.buf.len()));
    }
    Ok(record)
}
