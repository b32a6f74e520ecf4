//! Downloading one wheel into the cache: resumable (`Range`), verified against the index digest.

use std::io;
use std::path::{Path, PathBuf};

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::index::WheelInfo;
use super::net::{error_chain, http_error, with_retries, Attempt};
use super::progress::{Reporter, WheelProgress};
use super::verify::{hash_reader, sha256_file, with_suffix};
use super::{io_err, FetchError, FetchOptions};

/// `Content-Range: bytes <start>-<end>/<total>` as (start, total).
pub(crate) fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

async fn file_len(path: &Path) -> Result<u64, FetchError> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path, e)),
    }
}

async fn remove_if_exists(path: &Path) -> Result<(), FetchError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// The hasher state after the first `len` bytes of `path`.
async fn hash_prefix(path: &Path, len: u64) -> Result<Sha256, FetchError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || -> io::Result<Sha256> {
        use std::io::Read;
        let mut hasher = Sha256::new();
        let file = std::fs::File::open(&owned)?;
        let read = hash_reader(&mut file.take(len), &mut hasher, &mut |_| {})?;
        if read != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while hashing"));
        }
        Ok(hasher)
    })
    .await
    .expect("hashing task panicked")
    .map_err(|e| io_err(path, e))
}

/// Makes sure a verified copy of `wheel` is in `cache`; returns its path.
pub(crate) async fn fetch_wheel(
    client: &reqwest::Client,
    opts: &FetchOptions,
    reporter: &Reporter,
    wheel: &WheelInfo,
    cache: &Path,
) -> Result<PathBuf, FetchError> {
    let path = cache.join(&wheel.filename);
    let progress = reporter.wheel(&wheel.filename, wheel.size);

    // A wheel left by an earlier run (e.g. with --keep-wheels, or one whose join failed).
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        let owned = path.clone();
        let (digest, len) = tokio::task::spawn_blocking(move || sha256_file(&owned, &mut |_| {}))
            .await
            .expect("hashing task panicked")
            .map_err(|e| io_err(&path, e))?;
        if digest == wheel.sha256 {
            progress.cached(len);
            return Ok(path);
        }
        progress.log("cached copy does not match the index; downloading again");
        remove_if_exists(&path).await?;
    }

    let part = with_suffix(&path, ".part");
    let result = with_retries(opts, reporter, &wheel.filename, || download_once(client, wheel, &part, &progress)).await;
    match result {
        Ok(len) => {
            tokio::fs::rename(&part, &path).await.map_err(|e| io_err(&path, e))?;
            progress.finished(len);
            Ok(path)
        }
        Err(e) => {
            progress.abandon();
            Err(e)
        }
    }
}

/// One try at completing `part`. Keeps what arrived when the connection fails, so the next try
/// resumes; returns the verified length.
async fn download_once(
    client: &reqwest::Client,
    wheel: &WheelInfo,
    part: &Path,
    progress: &WheelProgress,
) -> Result<u64, Attempt> {
    let url = wheel.url.as_str();
    let fatal = |e: FetchError| Attempt::Fatal(e);
    let mut have = file_len(part).await.map_err(fatal)?;
    if wheel.size.is_some_and(|size| have > size) {
        remove_if_exists(part).await.map_err(fatal)?;
        have = 0;
    }

    let mut request = client.get(wheel.url.clone());
    if have > 0 {
        request = request.header(RANGE, format!("bytes={have}-"));
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| Attempt::Retry(FetchError::Network { url: url.to_owned(), reason: error_chain(&e) }))?;

    let status = response.status();
    let header = |name| {
        response.headers().get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(str::to_owned)
    };
    let mut expected = wheel.size;
    let append = match status {
        StatusCode::PARTIAL_CONTENT if have > 0 => match header(CONTENT_RANGE).as_deref().and_then(parse_content_range)
        {
            Some((start, total)) if start == have => {
                expected = expected.or(total);
                true
            }
            other => {
                remove_if_exists(part).await.map_err(fatal)?;
                return Err(Attempt::Retry(FetchError::Network {
                    url: url.to_owned(),
                    reason: format!("asked for bytes {have}- but the server sent range {other:?}; restarting"),
                }));
            }
        },
        StatusCode::OK => {
            if have > 0 {
                progress.log("the server ignored the Range request; downloading from the start");
            }
            expected = expected.or(header(CONTENT_LENGTH).and_then(|v| v.parse().ok()));
            false
        }
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
            if wheel.size == Some(have) {
                // Everything had arrived; the previous try died before verifying.
                let hasher = hash_prefix(part, have).await.map_err(fatal)?;
                return verify(wheel, part, hasher, have, true).await;
            }
            remove_if_exists(part).await.map_err(fatal)?;
            return Err(Attempt::Retry(FetchError::Network {
                url: url.to_owned(),
                reason: format!("range {have}- not satisfiable; restarting"),
            }));
        }
        status => return Err(http_error(url, status)),
    };

    let mut hasher = if append { hash_prefix(part, have).await.map_err(fatal)? } else { Sha256::new() };
    let mut received = if append { have } else { 0 };
    if let Some(len) = expected {
        progress.set_len(len);
    }
    progress.started(received, expected);

    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(|e| fatal(io_err(part, e)))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let lost = loop {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                hasher.update(&bytes);
                out.write_all(&bytes).await.map_err(|e| fatal(io_err(part, e)))?;
                received += bytes.len() as u64;
                progress.set(received);
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    // Keep what arrived, even when the connection broke: the next try resumes from it.
    out.flush().await.map_err(|e| fatal(io_err(part, e)))?;
    drop(out);
    if let Some(e) = lost {
        return Err(Attempt::Retry(FetchError::Network {
            url: url.to_owned(),
            reason: format!("connection lost after {received} bytes: {}", error_chain(&e)),
        }));
    }
    match expected {
        Some(total) if received < total => {
            return Err(Attempt::Retry(FetchError::Network {
                url: url.to_owned(),
                reason: format!("connection closed after {received} of {total} bytes"),
            }))
        }
        Some(total) if received > total => {
            remove_if_exists(part).await.map_err(fatal)?;
            return Err(Attempt::Retry(FetchError::Network {
                url: url.to_owned(),
                reason: format!("received {received} bytes, more than the expected {total}; restarting"),
            }));
        }
        _ => {}
    }
    verify(wheel, part, hasher, received, append).await
}

async fn verify(wheel: &WheelInfo, part: &Path, hasher: Sha256, len: u64, resumed: bool) -> Result<u64, Attempt> {
    let actual = hex::encode(hasher.finalize());
    if actual == wheel.sha256 {
        return Ok(len);
    }
    remove_if_exists(part).await.map_err(Attempt::Fatal)?;
    let err = FetchError::WheelHashMismatch {
        wheel: wheel.filename.clone(),
        url: wheel.url.to_string(),
        expected: wheel.sha256.clone(),
        actual,
    };
    // Bytes kept from an earlier try may be what is wrong: one more try from scratch.
    Err(if resumed { Attempt::Retry(err) } else { Attempt::Fatal(err) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
