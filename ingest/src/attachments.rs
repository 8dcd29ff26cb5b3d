//! Attachments: uploads, the checks of a message that carries them, and
//! the garbage collection of uploads no message carried.
//!
//! An upload streams into the blob store, which answers only once the bytes
//! are durable; only then is `AttachmentUploaded` appended, so the log never
//! names a blob that is not there. The fold decides it like any room
//! command (the uploader must be a member), and a message names attachments
//! by id: the fold lets a message carry only its sender's uploads to its
//! room that no message carries yet.
//!
//! Garbage collection ([`Ingest::collect_attachments`]) visits each room's
//! unsent uploads (the fold keeps them, oldest first, under the room's
//! reserved attachment id) and appends `AttachmentExpired` for those older
//! than the delay. The fold forgets an attachment only if no message carries
//! it at that point of the log — a message and an expiry racing are decided
//! in log order, the same way on every replay — and the blob is deleted only
//! once that decision is known (the record durable and folded).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use emosation_core::ids::attachment_room;
use emosation_core::limits::MAX_ATTACHMENTS;
use emosation_core::ports::{BlobError, ByteStream};
use emosation_core::record::{AttachmentExpired, AttachmentUploaded};
use emosation_core::view::{AttachmentView, ViewKey, ViewValue};
use emosation_core::{Accepted, Record, Rejection, access};
use emosation_http::AuthUser;
use emosation_http::files::{HEAD_BYTES, Head, clean_name, content_type, image_size, sniff};

use crate::{CommandError, Ingest};

/// The default limit on one upload: 25 MiB.
pub const DEFAULT_ATTACHMENT_MAX_BYTES: u64 = 25 * 1024 * 1024;

/// Rooms visited per page by the garbage collector.
const GC_PAGE: usize = 256;

impl Ingest {
    /// Stores `body` as a file of `room_id` named `name`: the bytes go to the
    /// blob store (streamed, never held whole), then the record to the log.
    /// `declared` is the client's `Content-Type`; `length` its
    /// `Content-Length`, which lets an upload over the limit be refused before
    /// any byte is read.
    pub async fn upload(
        &self,
        user: &AuthUser,
        room_id: &str,
        name: &str,
        declared: Option<&str>,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<AttachmentView, CommandError> {
        let blobs = self
            .blobs
            .as_ref()
            .ok_or_else(|| CommandError::Unavailable("this node stores no files".into()))?;
        let max = self.cfg.attachment_max_bytes;
        access::member_room(&*self.views, room_id, &user.user_id).await?;
        if length.is_some_and(|n| n > max) {
            return Err(CommandError::TooLarge { limit: max });
        }
        self.allow_message(&user.user_id).await?;
        let head = Head::default();
        let stored = blobs.put(head.tap(body, HEAD_BYTES), max).await.map_err(|e| match e {
            BlobError::TooLarge { limit } => CommandError::TooLarge { limit },
            BlobError::Body(why) => CommandError::Invalid(format!("the upload broke off: {why}")),
            other => {
                tracing::error!(error = %other, "blob store");
                CommandError::Unavailable("the file could not be stored; retry it".into())
            }
        })?;
        let head = head.bytes();
        let mut kind = content_type(declared);
        if kind == "application/octet-stream"
            && let Some(sniffed) = sniff(&head)
        {
            kind = sniffed.to_owned();
        }
        let dims = image_size(&kind, &head);
        let file_name = clean_name(name);
        let at_seen = AtomicI64::new(0);
        let make = |request_id, at| {
            at_seen.store(at, Ordering::Relaxed);
            Record::AttachmentUploaded(AttachmentUploaded {
                request_id,
                at,
                room_id: room_id.to_owned(),
                uploader_id: user.user_id.clone(),
                uploader: user.username.clone(),
                file_name: file_name.clone(),
                size: stored.size as i64,
                content_type: kind.clone(),
                width: dims.map(|d| d.0 as i32),
                height: dims.map(|d| d.1 as i32),
                blob_key: stored.key.clone(),
                sha256: stored.sha256.clone(),
            })
        };
        let decided = self
            .command("upload attachment", make, |a| match a {
                Accepted::AttachmentUploaded { attachment_id } => Ok(attachment_id),
                other => Err(Box::new(other)),
            })
            .await;
        let attachment_id = match decided {
            Ok(id) => id,
            Err(e) => {
                // Refused by the fold (the uploader left meanwhile): nothing
                // names the blob. Otherwise the record may be on the log.
                if matches!(e, CommandError::Rejected(_)) {
                    let _ = blobs.delete(&stored.key).await;
                }
                return Err(e);
            }
        };
        Ok(AttachmentView {
            attachment_id,
            room_id: room_id.to_owned(),
            uploader_id: user.user_id.clone(),
            file_name,
            size: stored.size,
            content_type: kind,
            width: dims.map(|d| d.0),
            height: dims.map(|d| d.1),
            blob_key: stored.key,
            sha256: stored.sha256,
            uploaded_at: at_seen.load(Ordering::Relaxed),
            message_id: None,
        })
    }

    /// The early refusals of a message carrying `attachments` (the fold
    /// decides again, in log order): at most [`MAX_ATTACHMENTS`], each once,
    /// each an upload of the sender to this room. One carried by a message
    /// already is left to the fold, which answers a retried post with its
    /// first message.
    pub(crate) async fn check_attachments(
        &self,
        user: &AuthUser,
        room_id: &str,
        attachments: &[String],
    ) -> Result<(), CommandError> {
        if attachments.is_empty() {
            return Ok(());
        }
        if attachments.len() > MAX_ATTACHMENTS {
            return Err(CommandError::Invalid(format!(
                "a message carries at most {MAX_ATTACHMENTS} attachments"
            )));
        }
        for (i, a) in attachments.iter().enumerate() {
            if attachment_room(a) != Some(room_id) || attachments[..i].contains(a) {
                return Err(Rejection::InvalidAttachment.into());
            }
        }
        let keys: Vec<ViewKey> = attachments.iter().map(|a| ViewKey::attachment(room_id, a)).collect();
        for found in self.views.load(&keys).await? {
            match found {
                Some(ViewValue::Attachment(a)) if a.uploader_id == user.user_id => {}
                _ => return Err(Rejection::InvalidAttachment.into()),
            }
        }
        Ok(())
    }

    /// Expires every upload that no message carried within `after` of its
    /// upload, and deletes its blob once the fold has decided the expiry.
    /// Returns how many were expired. Several nodes may run it at once: the
    /// fold accepts one expiry per attachment, and only that one's caller
    /// deletes the blob.
    pub async fn collect_attachments(&self, after: Duration) -> Result<usize, CommandError> {
        let Some(blobs) = self.blobs.as_ref() else {
            return Ok(0);
        };
        let cutoff = emosation_core::time::now_ms().saturating_sub(after.as_millis() as i64);
        let mut expired = 0;
        let mut from: Option<String> = None;
        loop {
            let rooms = self.views.rooms(from.as_deref(), GC_PAGE).await?;
            let Some(last) = rooms.last() else {
                return Ok(expired);
            };
            from = Some(last.room_id.clone());
            let keys: Vec<ViewKey> = rooms.iter().map(|r| ViewKey::room_attachments(&r.room_id)).collect();
            for found in self.views.load(&keys).await? {
                let Some(ViewValue::RoomAttachments(room)) = found else {
                    continue;
                };
                for (attachment_id, at) in room.pending {
                    if at > cutoff {
                        // Kept oldest first.
                        break;
                    }
                    let make = |request_id, at| {
                        Record::AttachmentExpired(AttachmentExpired {
                            request_id,
                            at,
                            room_id: room.room_id.clone(),
                            attachment_id: attachment_id.clone(),
                        })
                    };
                    let decided = self
                        .command("expire attachment", make, |a| match a {
                            Accepted::AttachmentExpired { blob_key } => Ok(blob_key),
                            other => Err(Box::new(other)),
                        })
                        .await;
                    match decided {
                        Ok(blob_key) => {
                            expired += 1;
                            metrics::counter!("emosation_attachments_expired_total").increment(1);
                            if let Err(e) = blobs.delete(&blob_key).await {
                                tracing::warn!(%blob_key, error = %e, "could not delete an expired attachment's blob");
                            }
                        }
                        // Sent (or expired by another node) meanwhile.
                        Err(CommandError::Rejected(Rejection::InvalidAttachment)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// Runs [`Ingest::collect_attachments`] every `every` until `stop`.
pub async fn run_attachment_gc(
    ingest: std::sync::Arc<Ingest>,
    after: Duration,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
        match ingest.collect_attachments(after).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "attachments collected"),
            Err(e) => tracing::warn!(error = %e, "attachment collection failed; retrying later"),
        }
    }
}
