//! `polyllm up`: the selected backends from the catalog, the binaries, the models and the UI
//! ready, then Redis, the model services and the router started under supervision, and their
//! health reported until Ctrl-C or SIGTERM.
use crate::binaries::{build, locate};
use crate::cli::UpArgs;
use crate::health::{free_port, port_free, wait_healthy, which};
use crate::models::{embedder, fetch_missing};
use crate::supervise::{supervise, Service};
use crate::ui;
use anyhow::{bail, Context, Result};
use polyllm_common::catalog::{BackendSpec, Catalog, Slot};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub(crate) async fn up(args: UpArgs) -> Result<()> {
    let selected = select(&args)?;
    let (profile, bin_dir) = locate(&args)?;
    if !args.no_build {
        build(&profile)?;
    }
    let inference = bin_dir.join("inference");
    let router = bin_dir.join("router");
    for b in [&inference, &router] {
        if !b.is_file() {
            bail!(
                "{} is missing: build it with `cargo build -p inference -p router` (or drop --no-build)",
                b.display()
            );
        }
    }
    fetch_missing(&args, &selected).await?;
    let ui_state = ui::ensure(&args.ui_dir, which("npm").as_deref(), !args.no_build);

    let mut ports: Vec<(String, u16)> = selected.iter().map(|b| (b.id.clone(), b.port)).collect();
    ports.push(("router".into(), args.router_port));
    for (id, port) in &ports {
        if !port_free(&args.host, *port) {
            bail!("port {port} for {id} is in use (is another mesh running? try --port-offset or --router-port)");
        }
    }

    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("Ctrl-C: stopping"),
            _ = term.recv() => info!("SIGTERM: stopping"),
        }
        let _ = tx.send(true);
    });

    let mut tasks = JoinSet::new();
    let redis_url = start_redis(&args, &mut tasks, &rx)?;
    let connect_host =
        if args.host == "0.0.0.0" || args.host == "::" { "127.0.0.1".to_string() } else { args.host.clone() };
    let mut backends_json = serde_json::Map::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or_else(|| threads_share(cores, selected.len()));
    info!("model services: {threads} compute thread(s) each on {cores} core(s)");
    for b in &selected {
        let svc = Service { id: b.id.clone(), program: inference.clone(), args: inference_args(&args, b, threads) };
        tasks.spawn(supervise(svc, rx.clone()));
        backends_json.insert(b.id.clone(), format!("http://{connect_host}:{}", b.port).into());
    }
    let ra = router_args(&args, serde_json::Value::Object(backends_json), redis_url.as_deref());
    tasks.spawn(supervise(Service { id: "router".into(), program: router, args: ra }, rx.clone()));

    report_health(&args, &selected, &connect_host, &ui_state, &rx).await?;
    let mut stop = rx.clone();
    let _ = stop.wait_for(|s| *s).await;
    while tasks.join_next().await.is_some() {}
    info!("all services stopped");
    Ok(())
}

/// The backends to run: `--backends` from the catalog (all of them by default), ports offset.
fn select(args: &UpArgs) -> Result<Vec<BackendSpec>> {
    let catalog = Catalog::load(&args.catalog)?;
    let mut selected: Vec<BackendSpec> = if args.backends.is_empty() {
        catalog.backends.clone()
    } else {
        let mut v = Vec::new();
        for id in &args.backends {
            let id = id.trim();
            let b = catalog.get(id).with_context(|| {
                let ids: Vec<_> = catalog.backends.iter().map(|b| b.id.as_str()).collect();
                format!("unknown backend {id:?}; the catalog {} has {}", args.catalog.display(), ids.join(", "))
            })?;
            v.push(b.clone());
        }
        v
    };
    if selected.is_empty() {
        bail!("no backends selected");
    }
    for b in &mut selected {
        b.port = b.port.checked_add(args.port_offset).context("--port-offset pushes a port past 65535")?;
    }
    Ok(selected)
}

/// Redis for the router: `--redis-url`, else a local `redis-server` when one is on PATH (and not
/// `--no-redis`), else none (the router then keeps its cache and limits in process).
fn start_redis(args: &UpArgs, tasks: &mut JoinSet<()>, rx: &watch::Receiver<bool>) -> Result<Option<String>> {
    Ok(match (&args.redis_url, args.no_redis, which("redis-server")) {
        (Some(u), _, _) => {
            info!("Redis: {u} (REDIS_URL)");
            Some(u.clone())
        }
        (None, false, Some(bin)) => {
            let port = if port_free("127.0.0.1", args.redis_port) { args.redis_port } else { free_port()? };
            let svc = Service {
                id: "redis".into(),
                program: bin,
                args: ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                    .map(String::from)
                    .to_vec(),
            };
            tasks.spawn(supervise(svc, rx.clone()));
            info!("Redis: local redis-server on 127.0.0.1:{port}");
            Some(format!("redis://127.0.0.1:{port}"))
        }
        _ => {
            info!("Redis: none (the router uses its in-process cache and rate limiter)");
            None
        }
    })
}

/// Compute threads per model service when `--threads` is not given: the machine's cores divided
/// among the services, at least one each. Measured on 2 cores with three services
/// (`benchmarks/mesh_threads.sh`, RESULTS.md "Threads for a mesh"): one thread each finished a load
/// spread over the three models in 0.67x the time all cores each took, while one model loaded
/// alone got 0.55x the tokens/s; a mesh's load is spread by design, so the share wins.
pub(crate) fn threads_share(cores: usize, services: usize) -> usize {
    (cores / services.max(1)).max(1)
}

/// The command line of backend `b`'s model service, with `threads` compute threads.
fn inference_args(args: &UpArgs, b: &BackendSpec, threads: usize) -> Vec<String> {
    let model = args.models_dir.join(&b.file);
    let device = match b.device {
        Slot::Cpu => "cpu",
        Slot::Gpu => "auto",
    };
    let mut a: Vec<String> = vec![
        "--model".into(),
        model.display().to_string(),
        "--model-id".into(),
        b.id.clone(),
        "--model-name".into(),
        b.model.clone(),
        "--host".into(),
        args.host.clone(),
        "--port".into(),
        b.port.to_string(),
        "--device".into(),
        device.into(),
    ];
    a.extend(["--threads".into(), threads.to_string()]);
    a
}

/// The router's command line: the backends (id -> URL), the embedder, the UI, Redis, and what
/// came after `--`.
fn router_args(args: &UpArgs, backends: serde_json::Value, redis_url: Option<&str>) -> Vec<String> {
    let mut ra: Vec<String> = vec![
        "--host".into(),
        args.host.clone(),
        "--port".into(),
        args.router_port.to_string(),
        "--backends".into(),
        backends.to_string(),
        "--embedder-dir".into(),
        embedder().path(&args.models_dir).display().to_string(),
        "--ui-dir".into(),
        args.ui_dir.join("dist").display().to_string(),
    ];
    if let Some(u) = redis_url {
        ra.extend(["--redis-url".into(), u.to_string()]);
    }
    ra.extend(args.router_args.iter().cloned());
    ra
}

/// Waits for every model service, then the router, to be healthy, and says so (or what is not).
async fn report_health(
    args: &UpArgs,
    selected: &[BackendSpec],
    connect_host: &str,
    ui_state: &ui::UiState,
    rx: &watch::Receiver<bool>,
) -> Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(args.health_timeout_secs);
    let mut all_ok = true;
    for b in selected {
        let url = format!("http://{connect_host}:{}/health", b.port);
        match wait_healthy(&client, &url, deadline, rx).await {
            Some(h) => info!(
                "{} healthy after {:.1}s: {} on {}",
                b.id,
                t0.elapsed().as_secs_f64(),
                h.get("model").and_then(|v| v.as_str()).unwrap_or("?"),
                h.get("device").and_then(|v| v.as_str()).unwrap_or("?")
            ),
            None if *rx.borrow() => break,
            None => {
                all_ok = false;
                warn!("{} is not healthy after {}s; still waiting in the background", b.id, args.health_timeout_secs);
            }
        }
    }
    if !*rx.borrow() {
        let url = format!("http://{connect_host}:{}", args.router_port);
        if wait_healthy(&client, &format!("{url}/health"), Instant::now() + Duration::from_secs(60), rx).await.is_some()
            && all_ok
        {
            match ui_state {
                ui::UiState::Missing(why) => {
                    warn!("the UI is not built ({why}): {url}/ says how; build it with {}", ui::BUILD_HINT)
                }
                ui::UiState::Ready | ui::UiState::Built => {}
            }
            info!("polyllm is up: {url}  (UI at /, API POST {url}/generate, metrics at {url}/metrics); Ctrl-C stops");
        } else if !*rx.borrow() {
            warn!("router at {url} is not healthy yet; see the [router] lines above");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::threads_share;

    #[test]
    fn services_share_the_cores() {
        assert_eq!(threads_share(2, 5), 1, "more services than cores: one thread each");
        assert_eq!(threads_share(2, 1), 2);
        assert_eq!(threads_share(16, 5), 3, "the shares add up to at most the machine");
        assert_eq!(threads_share(16, 0), 16);
    }
}
