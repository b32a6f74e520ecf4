//! The `inference` binary: serve one GGUF model. See `inference --help`.
use anyhow::{Context, Result};
use clap::Parser;
use inference::chat::ChatTemplate;
use inference::config::Config;
use inference::engine::{device_name, Engine};
use inference::metrics::Metrics;
use inference::model::{select_device, GgufHeader, Weights};
use inference::scheduler::Scheduler;
use inference::server;
use inference::state::{AppState, Identity};
use inference::tokenizer::GgufTokenizer;
use std::sync::Arc;
use std::time::Instant;

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

fn main() -> Result<()> {
    let cfg = Config::parse();
    inference::memory::retain_freed_memory();
    if let Some(n) = cfg.threads {
        // candle's CPU kernels size their rayon pool from this variable.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    init_tracing(&cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let res = rt.block_on(serve(cfg));
    // A generation still running on the blocking pool stops at its next token, its client being
    // gone; the process does not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    res
}

async fn serve(cfg: Config) -> Result<()> {
    let device = select_device(cfg.device)?;
    let header = GgufHeader::read(&cfg.model)?;
    let tokenizer = match &cfg.tokenizer {
        Some(p) => GgufTokenizer::with_tokenizer_json(&header.content, p),
        None => GgufTokenizer::from_gguf(&header.content),
    }
    .with_context(|| format!("building the tokenizer of {}", cfg.model.display()))?;
    let template = match tokenizer.chat_template() {
        Some(src) => Some(
            ChatTemplate::new(src, tokenizer.bos_token(), tokenizer.eos_token())
                .with_context(|| format!("the chat template of {}", cfg.model.display()))?,
        ),
        None => None,
    };
    let context = match cfg.context {
        Some(c) if c > header.context_length => {
            tracing::warn!(
                requested = c,
                model = header.context_length,
                "--context is above the model's; using the model's"
            );
            header.context_length
        }
        Some(c) => c,
        None => header.context_length,
    };
    let identity = Identity {
        model_id: cfg.model_id.clone(),
        model: cfg.model_name(),
        arch: header.arch.as_str().to_string(),
        device: device_name(&device).to_string(),
    };
    let metrics = Arc::new(Metrics::new(&cfg.model_id));
    let scheduler = Scheduler::new(cfg.max_concurrent, cfg.max_queue, metrics.clone());
    let state = Arc::new(AppState::new(identity.clone(), scheduler, metrics.clone()));

    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, model_id = %identity.model_id, model = %identity.model, arch = %identity.arch, device = %identity.device, context, "listening; loading the model");

    let loader_state = state.clone();
    let model_path = cfg.model.clone();
    let has_template = template.is_some();
    let kernels = cfg.kernels;
    let prefill_chunk = cfg.prefill_chunk;
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let arch = header.arch;
        let result = Weights::load(header, &device, context, kernels).and_then(|weights| {
            let engine = Engine {
                weights,
                tokenizer: Arc::new(tokenizer),
                template,
                device,
                arch,
                context,
                model_id: identity.model_id.clone(),
                model_name: identity.model.clone(),
                metrics,
                prefill_chunk: prefill_chunk as usize,
            };
            engine.warm_up()?;
            Ok(engine)
        });
        match result {
            Ok(engine) => {
                tracing::info!(load_ms = t0.elapsed().as_millis() as u64, chat_template = has_template, "model ready");
                loader_state.set_engine(Arc::new(engine));
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), model = %model_path.display(), "cannot load the model");
                eprintln!("error: cannot load {}: {e:#}", model_path.display());
                std::process::exit(1);
            }
        }
    });

    let observer = Arc::new(polyllm_common::listener::NoObserver);
    polyllm_common::listener::serve(
        listener,
        server::router(state, cfg.max_body_bytes),
        cfg.conn.clone(),
        observer,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}
