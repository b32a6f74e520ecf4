//! The router's settings, grouped by concern ([`ServerConfig`], [`BackendConfig`], [`RoutingConfig`],
//! [`RedisConfig`], [`CacheConfig`], [`LimitConfig`], [`AccessConfig`], [`LogConfig`]). Every
//! setting is a flag with an environment-variable fallback (shown in `--help`, one heading per
//! group), and can also come from a TOML file given with `--config` ([`file`]): flags win over the
//! environment, the environment over the file, the file over the defaults.
use clap::{Args, CommandFactory, Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod file;

/// Which baseline rule ranks the healthy backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    /// The smallest model first (fewest parameters, read from the model name).
    Smallest,
    /// The lowest recent time-to-first-token first, weighted by requests in flight.
    Latency,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "router",
    version,
    about = "One endpoint for the polyllm mesh: cache, rate limits, routing, fallback."
)]
pub struct Config {
    /// A TOML file of settings, one table per group of flags below (`[server]`, `[backends]`,
    /// `[routing]`, `[redis]`, `[cache]`, `[limits]`, `[access]`, `[logging]`), each key a flag's
    /// name with underscores. Flags and environment variables override it.
    #[arg(long = "config", env = "ROUTER_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    #[command(flatten, next_help_heading = "Server")]
    pub server: ServerConfig,

    #[command(flatten, next_help_heading = "Backends")]
    pub backends: BackendConfig,

    #[command(flatten, next_help_heading = "Routing")]
    pub routing: RoutingConfig,

    #[command(flatten, next_help_heading = "Redis")]
    pub redis: RedisConfig,

    #[command(flatten, next_help_heading = "Cache")]
    pub cache: CacheConfig,

    #[command(flatten, next_help_heading = "Rate limits")]
    pub limits: LimitConfig,

    #[command(flatten, next_help_heading = "Access")]
    pub access: AccessConfig,

    #[command(flatten, next_help_heading = "Logging")]
    pub logging: LogConfig,
}

/// The listening socket and what one request may hold.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Largest request body accepted (bytes).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// A client must send a request's whole body within this time (ms) of its headers, or gets 408.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    // Connection bounds: --max-connections, --header-read-timeout-ms, --max-header-bytes.
    #[command(flatten)]
    pub conn: polyllm_common::listener::ConnLimits,

    /// Longest prompt accepted (characters).
    #[arg(long, env = "MAX_PROMPT_CHARS", default_value_t = 32_768)]
    pub max_prompt_chars: usize,

    /// Runtime worker threads (default: one per CPU core).
    #[arg(long, env = "WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// The UI's built files, served at / when the directory exists.
    #[arg(long, env = "UI_DIR", default_value = "ui/dist")]
    pub ui_dir: PathBuf,

    /// Origins allowed to call the API from a browser (CORS), comma-separated, e.g. the UI's
    /// `http://localhost:5173`. Unset: no cross-origin access (the UI served by the router itself
    /// is same-origin and needs none).
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

/// The model services and how long each may take.
#[derive(Debug, Clone, Args)]
pub struct BackendConfig {
    /// The backends: a catalog file (models.toml), a JSON file, or inline JSON of id -> URL.
    #[arg(long, env = "BACKENDS", default_value = "models.toml")]
    pub backends: String,

    /// How often each backend's /health is polled (ms).
    #[arg(long, env = "HEALTH_INTERVAL_MS", default_value_t = 2000)]
    pub health_interval_ms: u64,

    /// Timeout of one health check (ms).
    #[arg(long, env = "HEALTH_TIMEOUT_MS", default_value_t = 1000)]
    pub health_timeout_ms: u64,

    /// TCP connect timeout towards a backend (ms).
    #[arg(long, env = "BACKEND_CONNECT_TIMEOUT_MS", default_value_t = 1000)]
    pub connect_timeout_ms: u64,

    /// A backend that has sent no first token within this time is abandoned for the next one (ms).
    #[arg(long, env = "FIRST_TOKEN_TIMEOUT_MS", default_value_t = 30000)]
    pub first_token_timeout_ms: u64,

    /// Longest silence allowed between two tokens once streaming has started (ms).
    #[arg(long, env = "TOKEN_TIMEOUT_MS", default_value_t = 60000)]
    pub token_timeout_ms: u64,
}

/// How a backend is chosen.
#[derive(Debug, Clone, Args)]
pub struct RoutingConfig {
    /// The baseline routing rule.
    #[arg(long, env = "ROUTING_POLICY", value_enum, default_value_t = PolicyKind::Smallest)]
    pub policy: PolicyKind,

    /// Model name or backend id tried last when every chosen candidate failed.
    #[arg(long, env = "FALLBACK_MODEL")]
    pub fallback_model: Option<String>,

    /// The learned router model (model.txt + meta.json from `trainer train`). Without one the
    /// baseline `--policy` routes; a model written there later is picked up without a restart.
    #[arg(long, env = "ROUTER_MODEL", default_value = "router/model")]
    pub router_model: PathBuf,

    /// all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json) for the learned policy's
    /// prompt embedding; `fetch-models --only minilm` puts it here.
    #[arg(long, env = "EMBEDDER_DIR", default_value = "models/all-MiniLM-L6-v2")]
    pub embedder_dir: PathBuf,

    /// How often the router model directory is checked for a new model (ms); 0 turns it off.
    #[arg(long, env = "ROUTER_MODEL_POLL_MS", default_value_t = 2000)]
    pub router_model_poll_ms: u64,

    /// The learned router's quality/latency knob: how much predicted answer quality (0-1) one
    /// largest-model latency is worth. 0 takes the best predicted answer whatever it costs; higher
    /// values send more to faster models. Unset: the model's calibrated default (meta.json). A
    /// request's `cost_weight` field overrides it.
    #[arg(long, env = "COST_WEIGHT", value_parser = parse_cost_weight)]
    pub cost_weight: Option<f64>,

    /// Weigh each backend's load (requests running and queued, from the router's count and the
    /// service's /health) into the learned router's expected latency, so a saturated model's
    /// prompts go to a smaller model that answers them nearly as well.
    #[arg(long, env = "LOAD_AWARE", default_value_t = true, action = clap::ArgAction::Set)]
    pub load_aware: bool,
}

fn parse_cost_weight(s: &str) -> Result<f64, String> {
    let w: f64 = s.parse().map_err(|e| format!("{e}"))?;
    let max = polyllm_common::router_model::MAX_COST_WEIGHT;
    if (0.0..=max).contains(&w) {
        Ok(w)
    } else {
        Err(format!("must be a number from 0 to {max}"))
    }
}

/// The shared store of the cache and the rate limits.
#[derive(Debug, Clone, Args)]
pub struct RedisConfig {
    /// Redis for the shared cache and rate limits; without it an in-process cache and limiter
    /// are used.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key the router writes.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "polyllm:")]
    pub redis_key_prefix: String,

    /// Timeout of one Redis command (ms); a slower Redis counts as down.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 100)]
    pub redis_timeout_ms: u64,

    /// After a Redis error, Redis is bypassed for this long before it is tried again (ms).
    #[arg(long, env = "REDIS_RETRY_MS", default_value_t = 1000)]
    pub redis_retry_ms: u64,
}

/// The answer cache.
#[derive(Debug, Clone, Args)]
pub struct CacheConfig {
    /// Lifetime of a cached answer in seconds; 0 turns the cache off.
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 3600)]
    pub cache_ttl_secs: u64,

    /// The temperature the backends use when a request gives none; it decides whether such
    /// requests are deterministic, hence cacheable.
    #[arg(long, env = "DEFAULT_TEMP", default_value_t = 0.7)]
    pub default_temp: f64,

    /// Answer a deterministic request from the cache when an earlier prompt means the same: its
    /// MiniLM embedding within --semantic-threshold and the same numbers, names, identifiers and
    /// negations (requests may turn it on or off with "semantic_cache").
    #[arg(long, env = "SEMANTIC_CACHE", value_parser = clap::builder::BoolishValueParser::new())]
    pub semantic_cache: bool,

    /// Cosine similarity at or above which a paraphrase shares an answer (measured on
    /// datasets/semantic_pairs.jsonl: 0.85 hits 72% of paraphrases and none of the near misses).
    #[arg(long, env = "SEMANTIC_THRESHOLD", default_value_t = 0.85)]
    pub semantic_threshold: f32,

    /// Most prompts the semantic index keeps (in process, per router replica).
    #[arg(long, env = "SEMANTIC_MAX_ENTRIES", default_value_t = 10_000)]
    pub semantic_max_entries: u64,

    /// Capacity of the in-process cache, in answers.
    #[arg(long, env = "CACHE_MAX_ENTRIES", default_value_t = 10_000)]
    pub cache_max_entries: u64,

    /// With --api-keys, share cached answers across keys (by default each key has its own cache
    /// entries, so no tenant is served, or learns about, another's prompts).
    #[arg(long, env = "SHARED_CACHE")]
    pub shared_cache: bool,
}

/// Token buckets per API key or client address.
#[derive(Debug, Clone, Args)]
pub struct LimitConfig {
    /// Sustained requests per second per API key (or client IP); 0 turns rate limiting off.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 10.0)]
    pub rate_limit_rps: f64,

    /// Bucket size: how many requests a client may send at once.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 20)]
    pub rate_limit_burst: u32,

    /// Per-key limits: a TOML or JSON file mapping API key -> {rps, burst}.
    #[arg(long, env = "RATE_LIMIT_OVERRIDES")]
    pub rate_limit_overrides: Option<PathBuf>,

    /// Proxies (comma-separated addresses or CIDRs) whose X-Forwarded-For is believed: from
    /// them, the client is the rightmost forwarded address that is not itself a trusted proxy.
    /// Empty (the default): the header is ignored and the TCP peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Who may call the router.
#[derive(Debug, Clone, Args)]
pub struct AccessConfig {
    /// Token for the admin endpoints (`POST /admin/reload_model`, `POST /admin/reset_stats`), sent
    /// as `Authorization: Bearer`. Without it the admin endpoints do not exist.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// API keys file (SHA-256 of each key, optional per-key limits; see the README). When set,
    /// every model request needs one of its keys; without it no key is needed.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys: Option<PathBuf>,
}

/// What the router writes down.
#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Write request text into the router's log: error messages that quote what the client sent
    /// (which can be prompt text). Off by default: the log carries error types and prompt hashes.
    #[arg(long, env = "LOG_PROMPTS")]
    pub log_prompts: bool,

    /// Directory of the JSONL response log for the trainer; no log when unset.
    #[arg(long, env = "RESPONSE_LOG_DIR")]
    pub response_log_dir: Option<PathBuf>,

    /// A response log file is closed and a new one started past this size (bytes).
    #[arg(long, env = "RESPONSE_LOG_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub response_log_max_bytes: u64,

    /// Leave prompt and answer text out of the response log.
    #[arg(long, env = "RESPONSE_LOG_NO_TEXT")]
    pub response_log_no_text: bool,
}

impl Config {
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        let s = &self.server;
        let host =
            if s.host.contains(':') && !s.host.starts_with('[') { format!("[{}]", s.host) } else { s.host.clone() };
        Ok(format!("{host}:{}", s.port).parse()?)
    }

    pub fn first_token_timeout(&self) -> Duration {
        Duration::from_millis(self.backends.first_token_timeout_ms)
    }

    pub fn token_timeout(&self) -> Duration {
        Duration::from_millis(self.backends.token_timeout_ms)
    }

    /// A configuration with every default, for tests and the benchmark.
    pub fn defaults() -> Self {
        Config::parse_from(["router"])
    }

    /// The configuration from the process's arguments, its environment and the `--config` file
    /// (in that order of precedence, then the defaults).
    pub fn load() -> anyhow::Result<Self> {
        Self::load_from(std::env::args_os())
    }

    /// [`Self::load`] with the given arguments (the first is the program's name).
    pub fn load_from<I, T>(args: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        // Without the file first: it says which settings the flags and the environment already give.
        let first = Config::try_parse_from(&args).unwrap_or_else(|e| e.exit());
        let Some(path) = &first.config_file else { return Ok(first) };
        let matches = Config::command().try_get_matches_from(&args).unwrap_or_else(|e| e.exit());
        let extra = file::flags_from(path, &Config::command(), &matches)?;
        if extra.is_empty() {
            return Ok(first);
        }
        Ok(Config::try_parse_from(args.into_iter().chain(extra))?)
    }
}

/// An address (`10.0.0.5`, taken as a /32 or /128) or a CIDR (`10.0.0.0/8`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent_and_have_env_fallbacks() {
        Config::command().debug_assert();
        let help = Config::command().render_long_help().to_string();
        for env in [
            "BACKENDS",
            "REDIS_URL",
            "RATE_LIMIT_RPS",
            "RATE_LIMIT_BURST",
            "CACHE_TTL_SECS",
            "UI_DIR",
            "ROUTER_MODEL",
            "EMBEDDER_DIR",
            "ADMIN_TOKEN",
            "MAX_CONNECTIONS",
            "HEADER_READ_TIMEOUT_MS",
            "BODY_READ_TIMEOUT_MS",
            "MAX_HEADER_BYTES",
        ] {
            assert!(help.contains(env), "{env} missing from --help");
        }
    }

    #[test]
    fn defaults() {
        let c = Config::defaults();
        assert_eq!(c.server.port, 8080);
        assert_eq!(c.listen_addr().unwrap().port(), 8080);
        assert_eq!(c.routing.policy, PolicyKind::Smallest);
        let c = Config::parse_from(["router", "--host", "::1", "--port", "9", "--policy", "latency"]);
        assert_eq!(c.listen_addr().unwrap().to_string(), "[::1]:9");
        assert_eq!(c.routing.policy, PolicyKind::Latency);
    }
}
