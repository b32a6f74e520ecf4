//! Is it up: polling a service's `/health`, and whether a port is free to start one on.
use anyhow::Result;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub(crate) fn port_free(host: &str, port: u16) -> bool {
    TcpListener::bind((host, port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds an executable on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

/// Polls `url` until it answers 200 (and, for the router, reports a healthy backend).
pub(crate) async fn wait_healthy(
    client: &reqwest::Client,
    url: &str,
    deadline: Instant,
    shutdown: &watch::Receiver<bool>,
) -> Option<serde_json::Value> {
    loop {
        if *shutdown.borrow() || Instant::now() > deadline {
            return None;
        }
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let router_waiting = body.get("healthy_backends").and_then(|v| v.as_u64()) == Some(0);
                if !router_waiting {
                    return Some(body);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
