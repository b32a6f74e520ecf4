//! The accept loop every polyllm HTTP service runs, and the bounds it puts on what one client may
//! hold (feature `server`):
//!
//! - Connections: at most `max_connections` open at once. One more is answered at once with a 503
//!   JSON body (`{"error": {"type": "overloaded"}}`) and closed.
//! - Headers: a request's header block must arrive within `header_read_timeout` (slowloris) and fit
//!   in `max_header_bytes` and [`MAX_HEADERS`] fields (hyper answers 431 otherwise). The same deadline
//!   closes a keep-alive connection that sits idle between requests, so idle sockets cannot pile up.
//!
//! Connections are HTTP/1.1 (hyper's http1 server). Each request carries the peer address as axum's
//! `ConnectInfo<SocketAddr>`.
//!
//! On shutdown the listener closes; a connection serving a request (its response body included, so
//! a stream runs to its end) finishes that request and closes, within `shutdown_grace_ms`. Every
//! other connection closes at once: an idle keep-alive one, and one whose request headers are still
//! arriving. (hyper's own graceful shutdown waits for the latter until its header deadline: a client
//! killed halfway through its headers held a router's exit for 8 s.)
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Most header fields in one request; more gets 431.
pub const MAX_HEADERS: usize = 100;

/// The connection-level bounds of [`serve`], as flags (with env fallbacks) that each service
/// flattens into its own configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnLimits {
    /// Most client connections open at once; one more is answered 503 (JSON) and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// A client must send a request's whole header block within this time (ms), or the connection
    /// is closed; it is also how long an idle keep-alive connection is kept.
    #[arg(long = "header-read-timeout-ms", env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Largest request header block accepted (bytes, at least 8192); a larger one gets 431.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_header_bytes: u32,

    /// After SIGTERM, requests still running get this long (ms) to finish before their connections
    /// are closed; below the 10 s that docker/podman wait before SIGKILL.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 8_000)]
    pub shutdown_grace_ms: u64,
}

/// Told about connections as they open, close or are refused (for the service's metrics).
pub trait ConnObserver: Send + Sync + 'static {
    fn opened(&self) {}
    fn closed(&self) {}
    fn refused(&self) {}
}

/// An observer that counts nothing.
pub struct NoObserver;
impl ConnObserver for NoObserver {}

/// Accepts connections on `listener` and serves `app` on each until `shutdown` resolves; then stops
/// accepting and waits for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    observer: Arc<dyn ConnObserver>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let max_connections = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_header_size(limits.max_header_bytes as usize)
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
            observer.refused();
            tokio::spawn(refuse(tcp));
            continue;
        };
        // Requests of this connection whose response body is not yet sent (or dropped).
        let busy = Arc::new(AtomicUsize::new(0));
        let (started, finished) = (busy.clone(), busy.clone());
        let svc = app
            .clone()
            .map_request(move |mut req: Request<hyper::body::Incoming>| {
                started.fetch_add(1, Ordering::SeqCst);
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(Body::new)
            })
            .map_response(move |resp: axum::response::Response| {
                let guard = Busy(finished.clone());
                resp.map(|body| Body::new(Tracked { body, _guard: guard }))
            });
        let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc));
        let observer = observer.clone();
        let mut stop = stop_rx.clone();
        observer.opened();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.wait_for(|stopping| *stopping) => None,
            };
            let result = match ended {
                Some(r) => r,
                // Shutting down with nothing being served: idle, or headers still arriving. Close.
                None if busy.load(Ordering::SeqCst) == 0 => Ok(()),
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            observer.closed();
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let draining = std::time::Instant::now();
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    // Every connection task holds a slot until it ends: all slots back means all connections closed.
    match tokio::time::timeout(grace, slots.acquire_many(max_connections as u32)).await {
        Ok(_) => tracing::info!(drain_ms = draining.elapsed().as_millis() as u64, "every connection closed"),
        Err(_) => tracing::warn!(
            grace_ms = limits.shutdown_grace_ms,
            "requests still running after the shutdown grace period; closing their connections"
        ),
    }
    Ok(())
}

/// Counts a response as in progress until its body is dropped (sent, or abandoned).
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its connection [`Busy`] while it is alive; otherwise the body itself.
struct Tracked {
    body: Body,
    _guard: Busy,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The answer to a connection over the limit: 503 with a JSON body, then close. What the client
/// sent is read first and drained after (briefly), so the close does not turn into a reset that
/// hides the answer.
async fn refuse(mut tcp: TcpStream) {
    const BODY: &str = r#"{"error":{"message":"too many open connections; retry shortly","type":"overloaded"}}"#;
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
