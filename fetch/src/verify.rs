//! Hashing files, and the `<file>.sha256` sidecar that caches a verification.
//!
//! The sidecar holds the digest together with the size and modification time the file had when it
//! was hashed; while both still match, the digest is trusted without reading the file again.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

const BUF: usize = 1 << 20;

/// Feeds `reader` into `hasher` until EOF; returns the bytes read.
pub(crate) fn hash_reader(
    reader: &mut impl Read,
    hasher: &mut Sha256,
    on_bytes: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
        on_bytes(n as u64);
    }
}

/// SHA-256 (lowercase hex) and length of a file.
pub(crate) fn sha256_file(path: &Path, on_bytes: &mut dyn FnMut(u64)) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let len = hash_reader(&mut file, &mut hasher, on_bytes)?;
    Ok((hex::encode(hasher.finalize()), len))
}

/// `path` with `suffix` appended to its file name (`a.gguf` + `.part` = `a.gguf.part`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

pub(crate) fn sidecar_path(file: &Path) -> PathBuf {
    with_suffix(file, ".sha256")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sidecar {
    pub sha256: String,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0)
}

impl Sidecar {
    fn render(&self) -> String {
        format!("sha256 {}\nsize {}\nmtime_ns {}\n", self.sha256, self.size, self.mtime_ns)
    }

    fn parse(text: &str) -> Option<Self> {
        let (mut sha256, mut size, mut mtime_ns) = (None, None, None);
        for line in text.lines() {
            let (key, value) = line.split_once(' ')?;
            match key {
                "sha256" => sha256 = Some(value.trim().to_ascii_lowercase()),
                "size" => size = value.trim().parse().ok(),
                "mtime_ns" => mtime_ns = value.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Self { sha256: sha256?, size: size?, mtime_ns: mtime_ns? })
    }

    /// The cached digest of `file`, if the sidecar exists and the file's size and mtime still match.
    pub fn cached(file: &Path, meta: &fs::Metadata) -> Option<String> {
        let text = fs::read_to_string(sidecar_path(file)).ok()?;
        let sidecar = Self::parse(&text)?;
        (sidecar.size == meta.len() && sidecar.mtime_ns == mtime_ns(meta) && sidecar.mtime_ns != 0)
            .then_some(sidecar.sha256)
    }

    /// Records `sha256` for `file` as it is described by `meta`. Best effort: a read-only models
    /// directory only means the next run hashes again.
    pub fn store(file: &Path, meta: &fs::Metadata, sha256: &str) {
        let sidecar = Self { sha256: sha256.to_owned(), size: meta.len(), mtime_ns: mtime_ns(meta) };
        let path = sidecar_path(file);
        let tmp = with_suffix(&path, ".tmp");
        let ok = fs::write(&tmp, sidecar.render()).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = ok {
            let _ = fs::remove_file(&tmp);
            tracing::debug!("cannot write {}: {e}", path.display());
        }
    }

    pub fn remove(file: &Path) {
        let _ = fs::remove_file(sidecar_path(file));
    }
}

/// What a file on disk is, compared to what it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FileState {
    Valid,
    Missing,
    NotAFile,
    WrongSize { actual: u64, expected: u64 },
    WrongHash { actual: String, expected: String },
}

impl FileState {
    pub fn describe(&self) -> String {
        match self {
            Self::Valid => "ok".into(),
            Self::Missing => "missing".into(),
            Self::NotAFile => "not a regular file".into(),
            Self::WrongSize { actual, expected } => format!("size is {actual} bytes, expected {expected}"),
            Self::WrongHash { actual, expected } => format!("SHA-256 is {actual}, expected {expected}"),
        }
    }
}

/// Checks `path` against an optional size and SHA-256, using (and refreshing) the sidecar.
/// `on_hash` is called with the file size when the file has to be read, then `on_bytes` as it is.
pub(crate) fn check_file(
    path: &Path,
    size: Option<u64>,
    sha256: Option<&str>,
    on_hash: &mut dyn FnMut(u64),
    on_bytes: &mut dyn FnMut(u64),
) -> io::Result<FileState> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Ok(FileState::NotAFile);
    }
    if let Some(expected) = size {
        if meta.len() != expected {
            return Ok(FileState::WrongSize { actual: meta.len(), expected });
        }
    }
    let Some(expected) = sha256 else { return Ok(FileState::Valid) };
    let expected = expected.to_ascii_lowercase();
    let actual = match Sidecar::cached(path, &meta) {
        Some(digest) => digest,
        None => {
            on_hash(meta.len());
            let (digest, len) = sha256_file(path, on_bytes)?;
            // Only trust what we read if the file did not change under us.
            match fs::metadata(path) {
                Ok(after) if after.len() == len && mtime_ns(&after) == mtime_ns(&meta) => {
                    Sidecar::store(path, &meta, &digest)
                }
                _ => {}
            }
            digest
        }
    };
    if actual == expected {
        Ok(FileState::Valid)
    } else {
        Ok(FileState::WrongHash { actual, expected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn check(path: &Path, size: Option<u64>, sha: Option<&str>) -> (FileState, bool) {
        let mut hashed = false;
        let state = check_file(path, size, sha, &mut |_| hashed = true, &mut |_| {}).unwrap();
        (state, hashed)
    }

    #[test]
    fn hashes_and_caches_in_a_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.bin");
        assert_eq!(check(&file, Some(3), Some(ABC)), (FileState::Missing, false));
        fs::write(&file, b"abc").unwrap();
        assert_eq!(sha256_file(&file, &mut |_| {}).unwrap(), (ABC.to_string(), 3));
        assert_eq!(check(&file, Some(4), Some(ABC)).0, FileState::WrongSize { actual: 3, expected: 4 });
        assert_eq!(check(&file, Some(3), None), (FileState::Valid, false));
        assert_eq!(check(&file, Some(3), Some(ABC)), (FileState::Valid, true));
        assert!(sidecar_path(&file).ends_with("x.bin.sha256"));
        // Second time: trusted from the sidecar.
        assert_eq!(check(&file, Some(3), Some(&ABC.to_uppercase())), (FileState::Valid, false));

        // Same size, new content and a new mtime: hashed again, and found wrong.
        fs::write(&file, b"abd").unwrap();
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        let (state, hashed) = check(&file, Some(3), Some(ABC));
        assert!(hashed);
        assert!(matches!(state, FileState::WrongHash { .. }), "{state:?}");
        // The sidecar now records the wrong digest: still wrong, without hashing.
        let (state, hashed) = check(&file, Some(3), Some(ABC));
        assert!(!hashed && matches!(state, FileState::WrongHash { .. }));
    }

    #[test]
    fn sidecar_round_trip_and_garbage() {
        let s = Sidecar { sha256: ABC.into(), size: 12, mtime_ns: 1_700_000_000_123_456_789 };
        assert_eq!(Sidecar::parse(&s.render()), Some(s));
        assert_eq!(Sidecar::parse("nonsense"), None);
        assert_eq!(Sidecar::parse("sha256 ab\nsize x\nmtime_ns 1\n"), None);
    }

    #[test]
    fn suffixes() {
        assert_eq!(with_suffix(Path::new("/m/a.gguf"), ".part"), Path::new("/m/a.gguf.part"));
        assert_eq!(sidecar_path(Path::new("m/a.gguf")), Path::new("m/a.gguf.sha256"));
    }
}
