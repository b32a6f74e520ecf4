//! The service binaries: which cargo profile to build, where its binaries are, and building them.
use crate::cli::UpArgs;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use tracing::info;

/// The profile's directory name under target/ ("dev" builds into "debug").
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        p => p,
    }
}

/// The cargo profile to build, and the directory holding the binaries.
pub(crate) fn locate(args: &UpArgs) -> Result<(String, PathBuf)> {
    let exe = std::env::current_exe().context("cannot find the polyllm executable")?;
    let exe_dir = exe.parent().context("executable has no directory")?.to_path_buf();
    let own = exe_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_string();
    let profile = match (&args.profile, args.release) {
        (Some(p), _) => p.clone(),
        (None, true) => "release".to_string(),
        (None, false) if own == "debug" => "dev".to_string(),
        (None, false) => own.clone(),
    };
    let dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None if profile_dir(&profile) == own => exe_dir,
        None => exe_dir.parent().unwrap_or(&exe_dir).join(profile_dir(&profile)),
    };
    Ok((profile, dir))
}

pub(crate) fn build(profile: &str) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "-p", "inference", "-p", "router", "--bins"]);
    match profile {
        "dev" => {}
        "release" => {
            cmd.arg("--release");
        }
        p => {
            cmd.args(["--profile", p]);
        }
    }
    info!("building: {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {cargo} (use --no-build with prebuilt binaries)"))?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_map_to_target_directories() {
        assert_eq!(profile_dir("dev"), "debug");
        assert_eq!(profile_dir("test"), "debug");
        assert_eq!(profile_dir("release"), "release");
        assert_eq!(profile_dir("bench"), "release");
    }
}
