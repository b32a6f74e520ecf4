//! The `router` binary: flags, logging (JSON lines when `LOG_FORMAT=json` or stderr is not a
//! terminal; see `router::logging`), the runtime, the listener, and a graceful shutdown on
//! SIGTERM or Ctrl-C.
use anyhow::Context;
use router::config::Config;
use router::state::AppState;
use std::sync::Arc;
use std::time::Duration;

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn main() -> anyhow::Result<()> {
    let config = Config::load()?;
    router::logging::init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.server.worker_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    let res = rt.block_on(run(config));
    // A task still on the blocking pool (a routing decision) must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = &res {
        tracing::error!(error = format!("{e:#}"), "router failed");
    }
    router::logging::flush(Duration::from_secs(2));
    res
}

async fn run(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let state = Arc::new(AppState::with_learned_policy(config)?);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(
        %addr,
        backends = state.registry.all().len(),
        policy = state.policy.name(),
        cache = state.cache.as_ref().map_or("off", |c| c.name()),
        redis = state.redis.is_some(),
        "router listening"
    );
    router::serve(listener, state, shutdown_signal()).await?;
    Ok(())
}
