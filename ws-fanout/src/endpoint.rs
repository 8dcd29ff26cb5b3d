//! The `/v1/ws` endpoint: the token is checked *before* upgrading (a refused
//! token never gets a socket), then the handshake hands the connection to a
//! [`session`](crate::session).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use emosation_http::auth::TokenKind;
use emosation_http::{ApiError, AuthUser};
use serde::Deserialize;

use crate::node::Fanout;
use crate::session;
use crate::socket::handshake::Handshake;

/// The `/v1/ws` route.
pub fn routes(fanout: Arc<Fanout>) -> Router {
    Router::new().route("/v1/ws", get(upgrade)).with_state(fanout)
}

#[derive(Deserialize)]
struct WsQuery {
    access_token: Option<String>,
}

async fn upgrade(
    State(fanout): State<Arc<Fanout>>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    handshake: Result<Handshake, ApiError>,
) -> Response {
    let from_header = emosation_http::auth::bearer_header(&headers).map(str::to_owned);
    let token = from_header.or_else(|| query.ok().and_then(|Query(q)| q.access_token));
    let Some(token) = token else {
        return ApiError::unauthorized("missing token (Authorization: Bearer or ?access_token=)").into_response();
    };
    let claims = match fanout
        .ingest
        .authenticator()
        .authenticate(&token, TokenKind::Access)
        .await
    {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let handshake = match handshake {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let exp = claims.exp;
    let user = AuthUser {
        user_id: claims.sub,
        username: claims.name,
        session_id: claims.sid,
        issued_at: claims.iat,
    };
    handshake.accept(move |tcp, pre| session::run(fanout, user, exp, tcp, pre))
}
