//! What one client may hold of the router. Connections and headers are bounded by the shared
//! accept loop ([`polyllm_common::listener`]: `--max-connections`, `--header-read-timeout-ms`,
//! `--max-header-bytes`; refusals counted in `router_connections_refused_total`); bodies here:
//! [`body_deadline`] reads the whole body within `--body-read-timeout-ms` (408 JSON otherwise) and
//! never more than one byte over `--max-body-bytes` (the handler answers 413).
use crate::error::ApiError;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use polyllm_common::listener::ConnObserver;
use polyllm_common::validation::ValidationError;
use std::time::Duration;

/// The request-body bounds of [`body_deadline`].
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
}

impl ConnObserver for Metrics {
    fn opened(&self) {
        self.connections_open.inc();
    }
    fn closed(&self) {
        self.connections_open.dec();
    }
    fn refused(&self) {
        self.connections_refused.inc();
    }
}

/// Middleware: reads the request body within the deadline, then hands the buffered body on. At most
/// `max_bytes + 1` bytes are read: a longer body reaches the handler one byte over the limit, so it
/// is refused there (413) like any other oversized body. A slow body never reaches a handler: it gets
/// 408 here.
pub async fn body_deadline(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limits.timeout, read_capped(body, limits.max_bytes.saturating_add(1))).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(e)) => with_request_id(ValidationError::Syntax(format!("could not read the request body: {e}")).into()),
        Err(_) => with_request_id(ApiError::Timeout(format!(
            "request body not received within {} ms",
            limits.timeout.as_millis()
        ))),
    }
}

/// The first `cap` bytes of `body` (all of it when shorter).
async fn read_capped(body: Body, cap: usize) -> Result<Bytes, axum::Error> {
    let mut data = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        let room = cap - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= cap {
            break;
        }
    }
    Ok(buf.freeze())
}

/// An error answered here, before a handler gave the request its id: it gets one too.
fn with_request_id(e: ApiError) -> Response {
    let mut resp = e.into_response();
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
