//! What one client may hold of the router, and the accept loop that enforces it.
//!
//! - Connections: at most `--max-connections` open at once. One more is answered at once with a
//!   503 JSON body and `Connection: close`, counted in `router_connections_refused_total`.
//! - Headers: a request's header block must arrive within `--header-read-timeout-ms` (slowloris)
//!   and fit in `--max-header-bytes` (hyper answers 431 otherwise). The same deadline closes a
//!   keep-alive connection that sits idle between requests, so idle sockets cannot pile up.
//! - Bodies: [`body_deadline`] reads the whole body within `--body-read-timeout-ms` (408 JSON
//!   otherwise) and never more than one byte over `--max-body-bytes` (the handler answers 413).
//!
//! Connections are HTTP/1.1 (hyper's http1 server; clients and the UI speak it). On shutdown the
//! listener closes and in-flight requests are drained.
use crate::error::ApiError;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::http::HeaderValue;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Most header fields in one request; more gets 431.
pub const MAX_HEADERS: usize = 100;

/// The connection-level bounds of [`serve`].
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// The request-body bounds of [`body_deadline`].
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
}

/// Accepts connections on `listener` and serves `app` on each until `shutdown` resolves; then stops
/// accepting and waits for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // SSE is many small writes: without TCP_NODELAY, Nagle plus delayed ACKs add ~40 ms.
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            tokio::spawn(refuse(tcp));
            continue;
        };
        let svc = app.clone().map_request(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.map(Body::new)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc)));
        let metrics = metrics.clone();
        metrics.connections_open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            metrics.connections_open.dec();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The answer to a connection over the limit: 503 with a JSON body, then close. What the client
/// sent is read first and drained after (briefly), so the close does not turn into a reset that
/// hides the answer.
async fn refuse(mut tcp: TcpStream) {
    const BODY: &str =
        r#"{"error":{"message":"too many open connections; retry shortly","type":"overloaded"}}"#;
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(msg.as_bytes()).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Middleware: reads the request body within the deadline, then hands the buffered body on. At most
/// `max_bytes + 1` bytes are read: a longer body reaches the handler one byte over the limit, so it
/// is refused there (413) like any other oversized body. A slow body never reaches a handler: it gets
/// 408 here.
pub async fn body_deadline(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(limits.timeout, read_capped(body, limits.max_bytes.saturating_add(1))).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(e)) => with_request_id(ApiError::BadRequest(format!("could not read the request body: {e}"))),
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
