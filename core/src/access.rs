//! The room checks every command and read makes before acting for a user:
//! the room exists, and the user is one of its members. Answered from the
//! views; the fold decides again in log order for commands, so these are
//! early refusals, never the decision itself.

use crate::fold::Rejection;
use crate::ids::is_id;
use crate::ports::{StoreError, ViewQueries};
use crate::view::RoomView;

/// Why a room check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// [`Rejection::RoomNotFound`] or [`Rejection::NotMember`].
    #[error(transparent)]
    Refused(#[from] Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The room; [`Rejection::RoomNotFound`] for an unknown or malformed id.
pub async fn room(views: &dyn ViewQueries, room_id: &str) -> Result<RoomView, AccessError> {
    if !is_id(room_id) {
        return Err(Rejection::RoomNotFound.into());
    }
    views
        .room(room_id)
        .await?
        .ok_or(AccessError::Refused(Rejection::RoomNotFound))
}

/// The room if `user_id` is a member: [`Rejection::RoomNotFound`], else
/// [`Rejection::NotMember`].
pub async fn member_room(views: &dyn ViewQueries, room_id: &str, user_id: &str) -> Result<RoomView, AccessError> {
    let room = room(views, room_id).await?;
    if views.member(room_id, user_id).await?.is_none() {
        return Err(Rejection::NotMember.into());
    }
    Ok(room)
}
