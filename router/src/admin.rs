//! The router model's endpoint `GET /router_model` (what model routes, public) and the admin
//! endpoints `POST /admin/reload_model` and `POST /admin/reset_stats`, which exist only when
//! `--admin-token` is set and need `Authorization: Bearer <token>` (compared in constant time).
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polyllm_common::wire::ErrorBody;
use serde_json::json;

use crate::state::AppState;

/// `GET /router_model`.
pub async fn router_model(State(st): State<Arc<AppState>>) -> Response {
    match &st.learned {
        Some(l) => Json(json!({ "policy": st.policy.name(), "model": l.status() })).into_response(),
        None => Json(json!({ "policy": st.policy.name(), "model": null })).into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the admin token.
pub fn authorized(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = st.config.access.admin_token.as_deref().filter(|t| !t.is_empty()) else { return false };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| constant_time_eq(got.trim().as_bytes(), token.as_bytes()))
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, Json(ErrorBody::new("unauthorized", "admin token missing or wrong"))).into_response()
}

/// `POST /admin/reset_stats`: forget every caller's `/last_request_stats` record.
pub async fn reset_stats(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    Json(json!({ "reset": true, "records_cleared": st.reset_stats() })).into_response()
}

/// `POST /admin/reload_model`: load the model directory now and swap it in.
pub async fn reload_model(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let Some(l) = st.learned.clone() else {
        return (StatusCode::CONFLICT, Json(ErrorBody::new("no_learned_policy", "this router runs no learned policy")))
            .into_response();
    };
    match tokio::task::spawn_blocking(move || l.reload()).await {
        Ok(Ok(status)) => Json(json!({ "reloaded": true, "model": status })).into_response(),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ErrorBody::new("model_invalid", format!("{e}; the previous model keeps serving"))),
        )
            .into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(ErrorBody::new("internal_error", e.to_string()))).into_response()
        }
    }
}
