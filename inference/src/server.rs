//! HTTP: the routes of the model service and the glue between a request and a running job.
//!
//! `/generate` (SSE or JSON), `/health`, `/metrics` here; the OpenAI endpoints in [`crate::openai`].
//! The listener is up while the model loads: `/health` answers 503 until the engine is ready.
use crate::engine::Event;
use crate::error::ApiError;
use crate::state::SharedState;
use crate::validation::{self, ValidJson};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use polyllm_common::wire::{BatchLoad, ErrorBody, GenerateRequest, GenerateResponse, HealthBody};
use std::convert::Infallible;
use std::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

pub fn router(state: SharedState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/generate", post(generate))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(crate::openai::chat_completions))
        .route("/v1/completions", post(crate::openai::completions))
        .route("/v1/models", get(crate::openai::models))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(ErrorBody::new("not_found", "no such endpoint"))).into_response()
}

async fn health(State(st): State<SharedState>) -> Response {
    let id = &st.identity;
    let ready = st.engine().is_ok();
    let body = HealthBody {
        status: if ready { "ok" } else { "loading" }.to_string(),
        model_id: id.model_id.clone(),
        model: id.model.clone(),
        arch: id.arch.clone(),
        device: id.device.clone(),
        batch: ready.then(|| BatchLoad {
            size: st.scheduler.capacity() as u32,
            free: st.scheduler.free() as u32,
            queued: st.scheduler.queued() as u32,
        }),
    };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn metrics(State(st): State<SharedState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

fn json_event(name: &str, value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default().event(name).data(serde_json::to_string(value).expect("wire types serialize"))
}

async fn generate(
    State(st): State<SharedState>,
    body: Result<ValidJson<GenerateRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let ValidJson(req) = body.inspect_err(|e| st.refused(e))?;
    let engine = st.engine().inspect_err(|e| st.refused(e))?;
    let (job, stream) = validation::generate_job(&engine, req, received).inspect_err(|e| st.refused(e))?;
    let mut rx = st.start(job).await?;
    if stream {
        let events = UnboundedReceiverStream::new(rx).map(|ev| {
            Ok::<_, Infallible>(match ev {
                Event::Token(text) => json_event("token", &polyllm_common::wire::TokenEvent { text }),
                Event::Done(stats) => json_event("done", &stats),
                Event::Error(msg) => json_event("error", &ErrorBody::new("server_error", msg)),
            })
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => text.push_str(&t),
            Event::Done(stats) => return Ok(Json(GenerateResponse { text, stats }).into_response()),
            Event::Error(msg) => return Err(ApiError::Internal(msg)),
        }
    }
    Err(ApiError::Internal("generation ended without a result".into()))
}
