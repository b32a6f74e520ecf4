//! `polyllm up`: the native mesh without Docker. It builds the service binaries, fetches the
//! missing models, starts the selected model services (m1–m5 from `models.toml`, same ports as
//! docker-compose.yml), Redis when available, and the router, as supervised child processes:
//! their output is prefixed with the service id, a service that dies is restarted with backoff,
//! and Ctrl-C / SIGTERM stops everything and exits 0.
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use polyllm_common::catalog::{BackendSpec, Catalog, Slot};
use polyllm_fetch::{Artifact, ArtifactId, FetchOptions, ProgressMode};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

mod ui;

#[derive(Parser)]
#[command(name = "polyllm", version, about = "Run the polyllm mesh natively: model services m1-m5 and the router.")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build, fetch the models, start the services and the router, and supervise them until Ctrl-C.
    Up(UpArgs),
}

#[derive(Args, Clone, Debug)]
pub struct UpArgs {
    /// Backends to start, comma-separated ids from the catalog (default: all). On a small machine
    /// start fewer, e.g. `--backends m1,m2`.
    #[arg(long, env = "POLYLLM_BACKENDS", value_delimiter = ',')]
    backends: Vec<String>,

    /// The models directory (missing files are fetched into it).
    #[arg(long, env = "MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,

    /// The backend catalog.
    #[arg(long, env = "POLYLLM_CATALOG", default_value = "models.toml")]
    catalog: PathBuf,

    /// Address the router and the model services listen on (0.0.0.0 to expose them).
    #[arg(long, env = "POLYLLM_HOST", default_value = "127.0.0.1")]
    host: String,

    /// The router's port.
    #[arg(long, env = "POLYLLM_ROUTER_PORT", default_value_t = 8080)]
    router_port: u16,

    /// Added to every catalog port (to run a second mesh beside the first).
    #[arg(long, env = "POLYLLM_PORT_OFFSET", default_value_t = 0)]
    port_offset: u16,

    /// Do not run `cargo build` (nor build the UI); use the binaries already next to this one.
    #[arg(long)]
    no_build: bool,

    /// The UI's sources; its built page (`DIR/dist`) is what the router serves at `/`. It is built
    /// with npm when missing or older than its sources.
    #[arg(long, env = "POLYLLM_UI_DIR", default_value = "ui")]
    ui_dir: PathBuf,

    /// Build and run the release binaries (the default follows how `polyllm` itself was built).
    #[arg(long, conflicts_with = "profile")]
    release: bool,

    /// Build and run binaries of this cargo profile.
    #[arg(long)]
    profile: Option<String>,

    /// Where the `inference` and `router` binaries are (default: next to `polyllm`).
    #[arg(long, env = "POLYLLM_BIN_DIR")]
    bin_dir: Option<PathBuf>,

    /// Do not download missing models (fail instead).
    #[arg(long)]
    no_fetch: bool,

    /// Redis for the router's shared cache and rate limits. Unset: a local redis-server is
    /// started when the binary exists, else the router uses its in-process cache and limiter.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,

    /// Never start a local redis-server (the router then uses its in-process cache and limiter).
    #[arg(long)]
    no_redis: bool,

    /// Port of the local redis-server (a free port is taken when it is busy).
    #[arg(long, env = "POLYLLM_REDIS_PORT", default_value_t = 6379)]
    redis_port: u16,

    /// CPU threads per model service (default: the service's default, all cores).
    #[arg(long)]
    threads: Option<usize>,

    /// How long to wait for every service to become healthy before warning (seconds).
    #[arg(long, env = "POLYLLM_HEALTH_TIMEOUT_SECS", default_value_t = 600)]
    health_timeout_secs: u64,

    /// Extra flags for the router, after `--` (e.g. `-- --policy latency`).
    #[arg(last = true)]
    router_args: Vec<String>,
}

/// One supervised child process.
#[derive(Clone, Debug)]
struct Service {
    id: String,
    program: PathBuf,
    args: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("POLYLLM_LOG").unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.cmd {
        Cmd::Up(args) => rt.block_on(up(args)),
    }
}

/// The profile's directory name under target/ ("dev" builds into "debug").
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        p => p,
    }
}

/// The cargo profile to build, and the directory holding the binaries.
fn locate(args: &UpArgs) -> Result<(String, PathBuf)> {
    let exe = std::env::current_exe().context("cannot find the polyllm executable")?;
    let exe_dir = exe.parent().context("executable has no directory")?.to_path_buf();
    let own = exe_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_string();
    let profile = match (&args.profile, args.release) {
        (Some(p), _) => p.clone(),
        (None, true) => "release".to_string(),
        (None, false) if own == "debug" => "dev".to_string(),
        (None, false) => own.clone(),
    };
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None if profile_dir(&profile) == own => exe_dir,
        None => exe_dir.parent().unwrap_or(&exe_dir).join(profile_dir(&profile)),
    };
    Ok((profile, dir))
}

fn build(profile: &str) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "-p", "inference", "-p", "router", "--bins"]);
    match profile {
        "dev" => {}
        "release" => {
            cmd.arg("--release");
        }
        p => {
            cmd.args(["--profile", p]);
        }
    }
    info!("building: {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {cargo} (use --no-build with prebuilt binaries)"))?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(())
}

/// The downloader's artifact for a catalog file (the one of that name), if it has one.
fn artifact_of(file: &str) -> Option<&'static Artifact> {
    polyllm_fetch::artifacts().iter().find(|a| a.name == file)
}

/// The sentence embedder the router's learned policy needs, as the downloader names it.
fn embedder() -> &'static Artifact {
    polyllm_fetch::artifacts().iter().find(|a| a.id == ArtifactId::Minilm).expect("the downloader knows MiniLM")
}

/// Downloads (with the downloader's library, resumable and verified) the model files of
/// `backends` and the embedder that are not in the models directory yet.
async fn fetch_missing(args: &UpArgs, backends: &[BackendSpec]) -> Result<()> {
    let dest = &args.models_dir;
    let mut only: Vec<ArtifactId> = Vec::new();
    for b in backends {
        if dest.join(&b.file).is_file() {
            continue;
        }
        if args.no_fetch {
            bail!("{} needs {} which is not in {} (and --no-fetch was given)", b.id, b.file, dest.display());
        }
        match artifact_of(&b.file) {
            Some(a) if !only.contains(&a.id) => only.push(a.id),
            Some(_) => {}
            None => {
                bail!("{} needs {}: not a file fetch-models knows; copy it into {}", b.id, b.file, dest.display())
            }
        }
    }
    if !embedder().path(dest).is_dir() && !args.no_fetch {
        only.push(ArtifactId::Minilm);
    }
    if only.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = only.iter().map(|a| a.as_str()).collect();
    info!("fetching {} into {}", names.join(","), dest.display());
    let mut opts = FetchOptions::new(dest);
    opts.progress = ProgressMode::Plain;
    polyllm_fetch::ensure(&opts, &only).await.context("fetching the models")?;
    Ok(())
}

fn port_free(host: &str, port: u16) -> bool {
    TcpListener::bind((host, port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds an executable on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
}

async fn pump<R: AsyncRead + Unpin + Send + 'static>(reader: R, id: String) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("[{id}] {line}");
    }
}

fn signal(pid: u32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on a pid this process spawned and has not reaped yet.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// Runs `svc` until shutdown, restarting it with exponential backoff (1 s to 30 s) when it exits.
async fn supervise(svc: Service, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let mut cmd = Command::new(&svc.program);
        cmd.args(&svc.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Own process group: a terminal's Ctrl-C reaches only the launcher, which then stops
            // the children in order (and does not mistake their exit for a crash).
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                error!("cannot start {} ({}): {e}", svc.id, svc.program.display());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        info!("started {} pid={pid}", svc.id);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, svc.id.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, svc.id.clone()));
        }
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        match exited {
            Some(status) => {
                if *shutdown.borrow() {
                    return;
                }
                let ran = started.elapsed();
                if ran > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                warn!(
                    "{} (pid {pid}) exited: {status} after {:.1}s; restarting in {}s",
                    svc.id,
                    ran.as_secs_f64(),
                    backoff.as_secs()
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            None => {
                signal(pid, libc::SIGTERM);
                match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                    Ok(_) => info!("stopped {} (pid {pid})", svc.id),
                    Err(_) => {
                        warn!("{} (pid {pid}) ignored SIGTERM for 10 s; killing it", svc.id);
                        let _ = child.kill().await;
                    }
                }
                return;
            }
        }
    }
}

/// Polls `url` until it answers 200 (and, for the router, reports a healthy backend).
async fn wait_healthy(
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

async fn up(args: UpArgs) -> Result<()> {
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
    let redis_url = match (&args.redis_url, args.no_redis, which("redis-server")) {
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
    };

    let connect_host =
        if args.host == "0.0.0.0" || args.host == "::" { "127.0.0.1".to_string() } else { args.host.clone() };
    let mut backends_json = serde_json::Map::new();
    for b in &selected {
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
        if let Some(t) = args.threads {
            a.extend(["--threads".into(), t.to_string()]);
        }
        tasks.spawn(supervise(Service { id: b.id.clone(), program: inference.clone(), args: a }, rx.clone()));
        backends_json.insert(b.id.clone(), format!("http://{connect_host}:{}", b.port).into());
    }

    let mut ra: Vec<String> = vec![
        "--host".into(),
        args.host.clone(),
        "--port".into(),
        args.router_port.to_string(),
        "--backends".into(),
        serde_json::Value::Object(backends_json).to_string(),
        "--embedder-dir".into(),
        embedder().path(&args.models_dir).display().to_string(),
        "--ui-dir".into(),
        args.ui_dir.join("dist").display().to_string(),
    ];
    if let Some(u) = &redis_url {
        ra.extend(["--redis-url".into(), u.clone()]);
    }
    ra.extend(args.router_args.iter().cloned());
    tasks.spawn(supervise(Service { id: "router".into(), program: router, args: ra }, rx.clone()));

    // Wait for health.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(args.health_timeout_secs);
    let mut all_ok = true;
    for b in &selected {
        let url = format!("http://{connect_host}:{}/health", b.port);
        match wait_healthy(&client, &url, deadline, &rx).await {
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
        if wait_healthy(&client, &format!("{url}/health"), Instant::now() + Duration::from_secs(60), &rx)
            .await
            .is_some()
            && all_ok
        {
            match &ui_state {
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

    let mut stop = rx.clone();
    let _ = stop.wait_for(|s| *s).await;
    while tasks.join_next().await.is_some() {}
    info!("all services stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn every_catalog_file_can_be_fetched() {
        let cat = Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models.toml")).unwrap();
        for b in &cat.backends {
            assert!(artifact_of(&b.file).is_some(), "{}: fetch-models has no artifact for {}", b.id, b.file);
        }
    }

    #[test]
    fn flags_parse() {
        Cli::command().debug_assert();
        let Cmd::Up(a) =
            Cli::parse_from(["polyllm", "up", "--backends", "m1,m2", "--no-build", "--", "--policy", "latency"]).cmd;
        assert_eq!(a.backends, ["m1", "m2"]);
        assert!(a.no_build);
        assert_eq!(a.router_port, 8080);
        assert_eq!(a.router_args, ["--policy", "latency"]);
        assert_eq!(profile_dir("dev"), "debug");
        assert_eq!(profile_dir("release"), "release");
    }
}
