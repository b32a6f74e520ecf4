//! The command line: `polyllm up` and its flags (each with an environment fallback).
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "polyllm", version, about = "Run the polyllm mesh natively: model services m1-m5 and the router.")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Build, fetch the models, start the services and the router, and supervise them until Ctrl-C.
    Up(UpArgs),
}

#[derive(Args, Clone, Debug)]
pub(crate) struct UpArgs {
    /// Backends to start, comma-separated ids from the catalog (default: all). On a small machine
    /// start fewer, e.g. `--backends m1,m2`.
    #[arg(long, env = "POLYLLM_BACKENDS", value_delimiter = ',')]
    pub(crate) backends: Vec<String>,

    /// The models directory (missing files are fetched into it).
    #[arg(long, env = "MODELS_DIR", default_value = "models")]
    pub(crate) models_dir: PathBuf,

    /// The backend catalog.
    #[arg(long, env = "POLYLLM_CATALOG", default_value = "models.toml")]
    pub(crate) catalog: PathBuf,

    /// Address the router and the model services listen on (0.0.0.0 to expose them).
    #[arg(long, env = "POLYLLM_HOST", default_value = "127.0.0.1")]
    pub(crate) host: String,

    /// The router's port.
    #[arg(long, env = "POLYLLM_ROUTER_PORT", default_value_t = 8080)]
    pub(crate) router_port: u16,

    /// Added to every catalog port (to run a second mesh beside the first).
    #[arg(long, env = "POLYLLM_PORT_OFFSET", default_value_t = 0)]
    pub(crate) port_offset: u16,

    /// Do not run `cargo build` (nor build the UI); use the binaries already next to this one.
    #[arg(long)]
    pub(crate) no_build: bool,

    /// The UI's sources; its built page (`DIR/dist`) is what the router serves at `/`. It is built
    /// with npm when missing or older than its sources.
    #[arg(long, env = "POLYLLM_UI_DIR", default_value = "ui")]
    pub(crate) ui_dir: PathBuf,

    /// Build and run the release binaries (the default follows how `polyllm` itself was built).
    #[arg(long, conflicts_with = "profile")]
    pub(crate) release: bool,

    /// Build and run binaries of this cargo profile.
    #[arg(long)]
    pub(crate) profile: Option<String>,

    /// Where the `inference` and `router` binaries are (default: next to `polyllm`).
    #[arg(long, env = "POLYLLM_BIN_DIR")]
    pub(crate) bin_dir: Option<PathBuf>,

    /// Do not download missing models (fail instead).
    #[arg(long)]
    pub(crate) no_fetch: bool,

    /// Redis for the router's shared cache and rate limits. Unset: a local redis-server is
    /// started when the binary exists, else the router uses its in-process cache and limiter.
    #[arg(long, env = "REDIS_URL")]
    pub(crate) redis_url: Option<String>,

    /// Never start a local redis-server (the router then uses its in-process cache and limiter).
    #[arg(long)]
    pub(crate) no_redis: bool,

    /// Port of the local redis-server (a free port is taken when it is busy).
    #[arg(long, env = "POLYLLM_REDIS_PORT", default_value_t = 6379)]
    pub(crate) redis_port: u16,

    /// CPU threads per model service (default: the machine's cores divided among the services, at
    /// least one each, so that they add up to the machine).
    #[arg(long)]
    pub(crate) threads: Option<usize>,

    /// How long to wait for every service to become healthy before warning (seconds).
    #[arg(long, env = "POLYLLM_HEALTH_TIMEOUT_SECS", default_value_t = 600)]
    pub(crate) health_timeout_secs: u64,

    /// Extra flags for the router, after `--` (e.g. `-- --policy latency`).
    #[arg(last = true)]
    pub(crate) router_args: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse() {
        Cli::command().debug_assert();
        let Cmd::Up(a) =
            Cli::parse_from(["polyllm", "up", "--backends", "m1,m2", "--no-build", "--", "--policy", "latency"]).cmd;
        assert_eq!(a.backends, ["m1", "m2"]);
        assert!(a.no_build);
        assert_eq!(a.router_port, 8080);
        assert_eq!(a.router_args, ["--policy", "latency"]);
    }
}
