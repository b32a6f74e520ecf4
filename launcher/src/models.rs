//! The model files a mesh needs, from the downloader's own table ([`polyllm_fetch`]), and fetching
//! the missing ones with its library.
use crate::cli::UpArgs;
use anyhow::{bail, Context, Result};
use polyllm_common::catalog::BackendSpec;
use polyllm_fetch::{Artifact, ArtifactId, FetchOptions, ProgressMode};
use tracing::info;

/// The downloader's artifact for a catalog file (the one of that name), if it has one.
fn artifact_of(file: &str) -> Option<&'static Artifact> {
    polyllm_fetch::artifacts().iter().find(|a| a.name == file)
}

/// The sentence embedder the router's learned policy needs, as the downloader names it.
pub(crate) fn embedder() -> &'static Artifact {
    polyllm_fetch::artifacts().iter().find(|a| a.id == ArtifactId::Minilm).expect("the downloader knows MiniLM")
}

/// Downloads (with the downloader's library, resumable and verified) the model files of
/// `backends` and the embedder that are not in the models directory yet.
pub(crate) async fn fetch_missing(args: &UpArgs, backends: &[BackendSpec]) -> Result<()> {
    let dest = &args.models_dir;
    let mut only: Vec<ArtifactId> = Vec::new();
    for b in backends {
        if dest.join(&b.file).is_file() {
            continue;
        }
        if args.no_fetch {
            bail!("{} needs {} which is not in {} (and --no-fetch was given)", b.id, b.file, dest.display());
        }
        match artifact_of(&b.file) {
            Some(a) if !only.contains(&a.id) => only.push(a.id),
            Some(_) => {}
            None => {
                bail!("{} needs {}: not a file fetch-models knows; copy it into {}", b.id, b.file, dest.display())
            }
        }
    }
    if !embedder().path(dest).is_dir() && !args.no_fetch {
        only.push(ArtifactId::Minilm);
    }
    if only.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = only.iter().map(|a| a.as_str()).collect();
    info!("fetching {} into {}", names.join(","), dest.display());
    let mut opts = FetchOptions::new(dest);
    opts.progress = ProgressMode::Plain;
    polyllm_fetch::ensure(&opts, &only).await.context("fetching the models")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use polyllm_common::catalog::Catalog;
    use std::path::Path;

    #[test]
    fn every_catalog_file_can_be_fetched() {
        let cat = Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models.toml")).unwrap();
        for b in &cat.backends {
            assert!(artifact_of(&b.file).is_some(), "{}: fetch-models has no artifact for {}", b.id, b.file);
        }
        assert!(embedder().is_dir());
    }
}
