//! `polyllm up`: the native mesh without Docker. It builds the service binaries, fetches the
//! missing models, starts the selected model services (m1–m5 from `models.toml`, same ports as
//! docker-compose.yml), Redis when available, and the router, as supervised child processes:
//! their output is prefixed with the service id, a service that dies is restarted with backoff,
//! and Ctrl-C / SIGTERM stops everything and exits 0.
//!
//! Modules: [`cli`] (flags), [`up`] (the sequence), [`binaries`] (build and locate), [`models`]
//! (fetching through the downloader), [`supervise`] (child processes), [`health`] (readiness and
//! ports), [`ui`] (the web page's build).
use anyhow::Result;
use clap::Parser;
use cli::{Cli, Cmd};

mod binaries;
mod cli;
mod health;
mod models;
mod supervise;
mod ui;
mod up;

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
        Cmd::Up(args) => rt.block_on(up::up(args)),
    }
}
