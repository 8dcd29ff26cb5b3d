//! The room checks every service makes before acting for a user.

use emosation_core::ids::is_id;
use emosation_core::ports::ViewStore;
use emosation_core::view::RoomView;

use crate::ApiError;

/// The room, or `404 room_not_found` for an unknown or malformed id.
pub async fn room_or_404(views: &dyn ViewStore, room_id: &str) -> Result<RoomView, ApiError> {
    if !is_id(room_id) {
        return Err(ApiError::room_not_found());
    }
    views.room(room_id).await?.ok_or_else(ApiError::room_not_found)
}

/// The room if `user_id` is a member: `404 room_not_found`, else `403 not_member`.
pub async fn member_room(views: &dyn ViewStore, room_id: &str, user_id: &str) -> Result<RoomView, ApiError> {
    let room = room_or_404(views, room_id).await?;
    if views.member(room_id, user_id).await?.is_none() {
        return Err(ApiError::not_member());
    }
    Ok(room)
}
