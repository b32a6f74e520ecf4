//! The polyllm router: one endpoint for the whole mesh. It answers repeated prompts from a cache,
//! keeps each client inside its rate, sends each prompt to a healthy backend of the kind asked for
//! (chosen by a [`policy::RoutingPolicy`]), falls back when a backend fails, and exposes
//! everything to Prometheus.
//!
//! Request path: [`bounds`] (connection, header and body limits) → [`server`] (routes, CORS) → [`auth`] (API keys, when required) → [`generate`] / [`openai`] (parse, format) → [`pipeline`]
//! (rate limit, cache, route) → [`proxy`] (relay and fallback cascade).
pub mod admin;
pub mod auth;
pub mod backends;
pub mod bounds;
pub mod cache;
pub mod config;
pub mod error;
pub mod generate;
pub mod keys;
pub mod learned;
pub mod logging;
pub mod metrics;
pub mod openai;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod redis_conn;
pub mod reqlog;
pub mod semantic;
pub mod server;
pub mod state;
pub mod validation;

use std::sync::Arc;
use std::time::Duration;

/// Serves `state` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<state::AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let c = &state.config;
    // Learn which backends are up before the first request is read, so that a router that has just
    // (re)started does not answer "no healthy backend" for its first moments.
    state.registry.check_all(&state.client, Duration::from_millis(c.backends.health_timeout_ms), &state.metrics).await;
    state.spawn_background();
    let app = server::router(state.clone());
    polyllm_common::listener::serve(listener, app, c.server.conn.clone(), state.metrics.clone(), shutdown).await?;
    let closing = std::time::Instant::now();
    state.shutdown();
    tracing::info!(ms = closing.elapsed().as_millis() as u64, "response log closed");
    Ok(())
}
