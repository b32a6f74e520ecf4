//! The web page that the router serves at `/`: `polyllm up` builds `ui/` with npm when its built
//! files are missing or older than its sources, and says on the console how to build it where it
//! cannot (no npm, or the build failed). The router itself then serves a page that says the same.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use tracing::{info, warn};

/// The command a user runs by hand to build the page.
pub const BUILD_HINT: &str = "(cd ui && npm ci && npm run build)";

/// What became of the page.
#[derive(Debug, PartialEq, Eq)]
pub enum UiState {
    /// Built files are there and not older than the sources.
    Ready,
    /// Built just now.
    Built,
    /// Not built (reason said on the console); `/` explains how to build it.
    Missing(String),
}

/// Newest modification time among the UI's sources (`src/`, `index.html`, the package files, the
/// build config); `None` when there are no sources (a packaged install with only `dist/`).
fn newest_source(src: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack: Vec<PathBuf> =
        ["src", "index.html", "package.json", "package-lock.json", "vite.config.ts", "tsconfig.json"]
            .iter()
            .map(|p| src.join(p))
            .collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else { continue };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if let Ok(m) = meta.modified() {
            newest = newest.max(Some(m));
        }
    }
    newest
}

fn built_at(dist: &Path) -> Option<SystemTime> {
    std::fs::metadata(dist.join("index.html")).and_then(|m| m.modified()).ok()
}

fn run(src: &Path, npm: &Path, args: &[&str]) -> Result<(), String> {
    info!("UI: {} {}", npm.display(), args.join(" "));
    match Command::new(npm).args(args).current_dir(src).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`npm {}` failed ({s})", args.join(" "))),
        Err(e) => Err(format!("cannot run npm: {e}")),
    }
}

/// Makes sure `src/dist` holds a current build of the page, building it with `npm` when allowed.
pub fn ensure(src: &Path, npm: Option<&Path>, build: bool) -> UiState {
    let dist = src.join("dist");
    let sources = newest_source(src);
    let built = built_at(&dist);
    let current = match (built, sources) {
        (Some(b), Some(s)) => b >= s,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if current {
        return UiState::Ready;
    }
    let why = if built.is_some() { "older than its sources" } else { "not built" };
    let missing = |reason: String| {
        if built.is_some() {
            warn!("UI: {reason}; serving the older build in {} (rebuild: {BUILD_HINT})", dist.display());
            UiState::Ready
        } else {
            warn!("UI: {reason}; http://…/ will say how to build it: {BUILD_HINT}, then restart");
            UiState::Missing(reason)
        }
    };
    if sources.is_none() {
        return missing(format!("no UI sources in {}", src.display()));
    }
    if !build {
        return missing(format!("the page is {why} and --no-build was given"));
    }
    let Some(npm) = npm else {
        return missing(format!("the page is {why} and npm is not installed (install Node.js 18+ with npm)"));
    };
    let install = if src.join("node_modules").is_dir() { None } else { Some(["ci", "--no-audit", "--no-fund"]) };
    let result = install.map_or(Ok(()), |a| run(src, npm, &a)).and_then(|()| run(src, npm, &["run", "build"]));
    match result {
        Ok(()) if built_at(&dist).is_some() => {
            info!("UI: built into {}", dist.display());
            UiState::Built
        }
        Ok(()) => missing(format!("`npm run build` wrote no {}", dist.join("index.html").display())),
        Err(e) => missing(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_current_build_is_kept_and_a_missing_one_is_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("src/main.tsx"), "x").unwrap();
        // No build and no npm: reported, with nothing built.
        assert!(matches!(ensure(d.path(), None, true), UiState::Missing(r) if r.contains("npm is not installed")));
        assert!(matches!(ensure(d.path(), None, false), UiState::Missing(r) if r.contains("--no-build")));
        // A build newer than the sources is used as it is.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(d.path().join("dist")).unwrap();
        std::fs::write(d.path().join("dist/index.html"), "<html>").unwrap();
        assert_eq!(ensure(d.path(), None, true), UiState::Ready);
        // A failing npm leaves the older build serving.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.path().join("src/main.tsx"), "y").unwrap();
        assert_eq!(ensure(d.path(), Some(Path::new("/bin/false")), true), UiState::Ready);
    }
}
