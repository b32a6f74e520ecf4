//! `POST /generate`, the native endpoint: SSE `route`, then the backend's `token` events relayed as
//! they arrive, then `done` (backend stats plus `routing_ms`, `cache_ms`, `total_ms`) or `error`;
//! with `stream: false` one JSON object (`text`, the stats, the timings and the `route`). A cache
//! hit replays the stored answer in the same shapes.
use crate::error::ApiError;
use crate::pipeline::{self, decorate, fail, prompt_hash, sse_headers, Started};
use crate::proxy::Out;
use crate::state::AppState;
use crate::validation::{self, Limits};
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use polyllm_common::route::{RouteEvent, RouterDone};
use polyllm_common::sse;
use polyllm_common::validation::ValidationError;
use polyllm_common::wire::{ErrorBody, TokenEvent};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One SSE event with a JSON payload.
pub fn frame(event: &str, value: &impl Serialize) -> Bytes {
    let data = serde_json::to_string(value).expect("wire types serialize");
    Bytes::from(sse::encode(event, &data))
}

/// The body's extractor error as the service's error.
pub fn body_error(e: BytesRejection, max: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(max)
    } else {
        ValidationError::Syntax(e.body_text()).into()
    }
}

/// The non-streaming answer: `{text, ...DoneStats, request_id, cache, routing_ms, cache_ms, total_ms, route}`.
#[derive(Serialize)]
struct Whole<'a> {
    text: &'a str,
    #[serde(flatten)]
    done: &'a RouterDone,
    route: &'a RouteEvent,
}

pub async fn generate(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let adm = match pipeline::admit(&st, &headers, peer).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return fail(&st, &adm, "", body_error(e, st.config.server.max_body_bytes)),
    };
    let req = match validation::generate(&body, Limits { max_prompt_chars: st.config.server.max_prompt_chars }) {
        Ok(r) => r,
        Err(e) => return fail(&st, &adm, "", e),
    };
    let hash = prompt_hash(&req.prompt);
    let stream = req.stream;
    match pipeline::start(&st, &adm, req, hash.clone()).await {
        Err(e) => fail(&st, &adm, &hash, e),
        Ok(Started::Hit(hit)) => {
            let resp = if stream {
                let mut buf = Vec::with_capacity(256 + hit.answer.pieces.iter().map(|p| p.len() + 32).sum::<usize>());
                buf.extend_from_slice(&frame("route", &hit.route));
                for p in &hit.answer.pieces {
                    buf.extend_from_slice(&frame("token", &TokenEvent { text: p.clone() }));
                }
                buf.extend_from_slice(&frame("done", &hit.done));
                let mut r = Body::from(buf).into_response();
                sse_headers(&mut r);
                r
            } else {
                let text = hit.answer.text();
                axum::Json(Whole { text: &text, done: &hit.done, route: &hit.route }).into_response()
            };
            decorate(resp, &adm, hit.x_cache)
        }
        Ok(Started::Live { first, rx }) => {
            let resp = if stream {
                let mut r = Body::from_stream(events(first, rx)).into_response();
                sse_headers(&mut r);
                r
            } else {
                match first {
                    Out::Done(c) => axum::Json(Whole { text: &c.text, done: &c.done, route: &c.route }).into_response(),
                    _ => ApiError::Internal("unexpected relay message".into()).into_response(),
                }
            };
            decorate(resp, &adm, "MISS")
        }
    }
}

/// The relay's messages as SSE bytes, written as soon as they arrive. Messages already queued are
/// sent together in one chunk (one write instead of one per event; no waiting for more).
fn events(first: Out, rx: mpsc::Receiver<Out>) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::unfold((Some(first), rx, false), |(pending, mut rx, ended)| async move {
        if ended {
            return None;
        }
        let msg = match pending {
            Some(m) => Some(m),
            None => rx.recv().await,
        };
        let mut buf = Vec::new();
        let mut end = encode(msg, &mut buf);
        while !end {
            match rx.try_recv() {
                Ok(m) => end = encode(Some(m), &mut buf),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => end = encode(None, &mut buf),
            }
        }
        Some((Ok(Bytes::from(buf)), (None, rx, end)))
    })
}

/// Appends one message as SSE; true when it ends the stream.
fn encode(msg: Option<Out>, buf: &mut Vec<u8>) -> bool {
    let (bytes, end) = match msg {
        Some(Out::Route(r)) => (frame("route", &*r), false),
        Some(Out::Token(text)) => (frame("token", &TokenEvent { text }), false),
        Some(Out::Done(c)) => (frame("done", &c.done), true),
        Some(Out::Error { body, .. }) => (frame("error", &body), true),
        None => (frame("error", &ErrorBody::new("internal_error", "the relay ended without an answer")), true),
    };
    buf.extend_from_slice(&bytes);
    end
}
