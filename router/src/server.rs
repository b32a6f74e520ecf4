//! The HTTP routes of the router, and the small read-only endpoints: `/health`, `/backends`,
//! `/metrics`, `/last_request_stats`. The UI's built files are served at `/` when `--ui-dir`
//! exists. With `--api-keys` the model endpoints and `/last_request_stats` sit behind
//! [`auth::require_key`](crate::auth::require_key); `/health`, `/metrics`, `/backends` and
//! `/router_model` stay open for probes and Prometheus. CORS admits only `--cors-origins`.
use crate::state::AppState;
use crate::{generate, openai};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use polyllm_common::wire::ErrorBody;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};

pub fn router(st: Arc<AppState>) -> Router {
    let max_body = st.config.server.max_body_bytes;
    let body_limits = crate::bounds::BodyLimits {
        timeout: std::time::Duration::from_millis(st.config.server.body_read_timeout_ms),
        max_bytes: max_body,
    };
    let ui = st.config.server.ui_dir.clone();
    let admin_on = st.config.access.admin_token.as_deref().is_some_and(|t| !t.is_empty());
    let keyed = Router::new()
        .route("/generate", post(generate::generate))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/last_request_stats", get(last_request_stats))
        .route_layer(axum::middleware::from_fn_with_state(st.clone(), crate::auth::require_key));
    let mut api = Router::new()
        .merge(keyed)
        .route("/backends", get(backends))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/router_model", get(crate::admin::router_model))
        .layer(DefaultBodyLimit::max(max_body));
    if admin_on {
        api = api
            .route("/admin/reload_model", post(crate::admin::reload_model))
            .route("/admin/reset_stats", post(crate::admin::reset_stats));
    }
    let cors = cors_layer(&st.config.server.cors_origins);
    // Every route's body is read within the deadline and the size limit before its handler runs.
    let api = api.layer(axum::middleware::from_fn_with_state(body_limits, crate::bounds::body_deadline)).with_state(st);
    let api = match cors {
        Some(c) => api.layer(c),
        None => api,
    };
    if ui.join("index.html").is_file() {
        let index = ServeFile::new(ui.join("index.html"));
        api.fallback_service(ServeDir::new(&ui).fallback(index))
    } else {
        tracing::warn!(
            ui_dir = %ui.display(),
            "the UI is not built, so / serves a page that says how to build it: (cd ui && npm ci && npm run build), then restart the router"
        );
        api.route("/", get(index)).fallback(not_found)
    }
}

/// CORS for the listed origins only (any other origin gets no `Access-Control-Allow-Origin`, so
/// browsers refuse it); `None` when no origin is listed.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let list: Vec<HeaderValue> = origins
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
        .filter_map(|o| match HeaderValue::from_str(o) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = o, "ignoring an unusable --cors-origins entry");
                None
            }
        })
        .collect();
    if list.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, HeaderName::from_static("x-api-key")])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderName::from_static("x-ratelimit-remaining"),
                header::RETRY_AFTER,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(ErrorBody::new("not_found", "no such endpoint"))).into_response()
}

const ENDPOINTS: [&str; 9] = [
    "POST /generate",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "GET /v1/models",
    "GET /backends",
    "GET /last_request_stats",
    "GET /router_model",
    "GET /health",
    "GET /metrics",
];

/// What `/` answers when the UI's files are missing: a browser gets a page that says so and how
/// to build them (never a bare JSON list where the README promises the UI); an API client that
/// does not accept HTML gets the endpoint list.
async fn index(headers: HeaderMap) -> Response {
    let html = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if !html {
        return Json(json!({ "service": "polyllm router", "ui": "not built", "endpoints": ENDPOINTS })).into_response();
    }
    let items: String = ENDPOINTS.iter().map(|e| format!("<li><code>{e}</code></li>")).collect();
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>polyllm: UI not built</title></head><body>\
         <h1>polyllm router: the UI is not built</h1>\
         <p>The API works; the web page needs its files. Build them once (Node.js 18+ and npm):</p>\
         <pre>cd ui &amp;&amp; npm ci &amp;&amp; npm run build</pre>\
         <p>then restart the router (<code>polyllm up</code> does both when npm is installed).</p>\
         <h2>Endpoints</h2><ul>{items}</ul></body></html>"
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
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
    let id = st.limiter.identifier.identify(&headers, peer);
    match st.last_request(&id) {
        Some(v) => Json(&*v).into_response(),
        None => (StatusCode::NOT_FOUND, Json(ErrorBody::new("not_found", "no request from this key or address yet")))
            .into_response(),
    }
}
