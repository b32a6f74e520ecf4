//! The API-key gate: with `--api-keys FILE` ([`crate::keys`]), a model request without an
//! accepted key ends here with 401 and a JSON body; without the flag every request passes.
use crate::ratelimit::api_key;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use polyllm_common::wire::ErrorBody;
use std::sync::Arc;

/// Middleware on the model endpoints: with `--api-keys`, a request without an accepted key ends
/// here with 401 and a JSON body.
pub async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(keys) = &st.api_keys else { return next.run(req).await };
    let (code, message) = match api_key(req.headers()) {
        Some(k) if keys.check(k).is_some() => return next.run(req).await,
        Some(_) => ("invalid_api_key", "the API key is not accepted"),
        None => {
            ("missing_api_key", "this router needs an API key: send Authorization: Bearer <key> or X-API-Key: <key>")
        }
    };
    st.metrics.requests.with_label_values(&["401"]).inc();
    let mut resp = (StatusCode::UNAUTHORIZED, Json(ErrorBody::new(code, message))).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}
