//! The HTTP routes of the router, and the small read-only endpoints: `/health`, `/backends`,
//! `/metrics`, `/last_request_stats`. The UI's built files are served at `/` when `--ui-dir`
//! exists.
use crate::ratelimit::identify;
use crate::state::AppState;
use crate::{generate, openai};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use polyllm_common::wire::ErrorBody;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tower_http::services::{ServeDir, ServeFile};

pub fn router(st: Arc<AppState>) -> Router {
    let max_body = st.config.max_body_bytes;
    let ui = st.config.ui_dir.clone();
    let admin_on = st.config.admin_token.as_deref().is_some_and(|t| !t.is_empty());
    let mut api = Router::new()
        .route("/generate", post(generate::generate))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/backends", get(backends))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/last_request_stats", get(last_request_stats))
        .route("/router_model", get(crate::admin::router_model))
        .layer(DefaultBodyLimit::max(max_body));
    if admin_on {
        api = api.route("/admin/reload_model", post(crate::admin::reload_model));
    }
    let api = api.with_state(st);
    if ui.join("index.html").is_file() {
        let index = ServeFile::new(ui.join("index.html"));
        api.fallback_service(ServeDir::new(&ui).fallback(index))
    } else {
        api.route("/", get(index)).fallback(not_found)
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(ErrorBody::new("not_found", "no such endpoint"))).into_response()
}

async fn index() -> Response {
    Json(json!({
        "service": "polyllm router",
        "endpoints": ["POST /generate", "POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models",
                      "GET /backends", "GET /last_request_stats", "GET /router_model", "GET /health", "GET /metrics"],
    }))
    .into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let healthy = st.registry.all().iter().filter(|b| b.is_healthy()).count();
    let redis = match &st.redis {
        None => "disabled",
        Some(r) if r.is_up() => "up",
        Some(_) => "down",
    };
    Json(json!({
        "status": if healthy > 0 { "ok" } else { "degraded" },
        "backends": st.registry.all().len(),
        "healthy_backends": healthy,
        "redis": redis,
        "cache": st.cache.as_ref().map_or("off", |c| c.name()),
        "policy": st.policy.name(),
    }))
    .into_response()
}

async fn backends(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({ "backends": st.registry.views() })).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

async fn last_request_stats(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let id = identify(&headers, peer, st.config.trust_forwarded_for);
    match st.last_request(&id) {
        Some(v) => Json(&*v).into_response(),
        None => (StatusCode::NOT_FOUND, Json(ErrorBody::new("not_found", "no request from this key or address yet"))).into_response(),
    }
}
