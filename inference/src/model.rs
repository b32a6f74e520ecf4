//! Loading a GGUF file into shared weights, and per-request [`Session`]s over them.
//!
//! The weights are loaded once and shared (every tensor is reference counted); each request gets
//! its own [`Session`] holding its own KV cache, so concurrent requests never see each other's
//! state and never copy a weight. The architecture is chosen by `general.architecture`.
pub mod activation;
pub mod attention;
pub mod gemma3;
pub mod parts;
pub mod qwen2;

use crate::kernels::Kernels;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Architectures this service can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Qwen2,
    Gemma3,
    Llama,
}

impl Arch {
    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        match name {
            "qwen2" => Some(Arch::Qwen2),
            "gemma3" => Some(Arch::Gemma3),
            "llama" => Some(Arch::Llama),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
            Arch::Llama => "llama",
        }
    }
}

/// The header of a GGUF file, read and checked without loading any tensor.
pub struct GgufHeader {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    pub arch: Arch,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// `<arch>.context_length`.
    pub context_length: usize,
}

impl GgufHeader {
    /// Reads the metadata and tensor table, and checks that the architecture is supported and that
    /// the file holds every byte its tensor table promises (a truncated download fails here).
    pub fn read(path: &Path) -> Result<Self> {
        let mut file = File::open(path).with_context(|| format!("cannot open model file {}", path.display()))?;
        let file_len = file.metadata()?.len();
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
        let arch_name = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .with_context(|| format!("{} has no general.architecture", path.display()))?;
        let Some(arch) = Arch::from_gguf_name(&arch_name) else {
            bail!("{}: unsupported architecture {arch_name:?} (supported: qwen2, gemma3, llama)", path.display())
        };
        let mut needed = 0u64;
        for info in content.tensor_infos.values() {
            let elems = info.shape.elem_count();
            let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            needed = needed.max(content.tensor_data_offset + info.offset + bytes as u64);
        }
        if file_len < needed {
            bail!(
                "{} is truncated: {file_len} bytes, but its tensors need {needed} (fetch it again with fetch-models)",
                path.display()
            );
        }
        let context_length =
            content.metadata.get(&format!("{arch_name}.context_length")).and_then(|v| v.to_u32().ok()).unwrap_or(2048)
                as usize;
        let name = content.metadata.get("general.name").and_then(|v| v.to_string().ok()).cloned();
        Ok(GgufHeader { path: path.to_path_buf(), content, arch, name, context_length })
    }
}

/// The loaded weights of one model, shared by every request.
pub enum Weights {
    /// qwen2 and llama: the same block, with or without q/k/v biases.
    Llama(qwen2::Weights),
    Gemma3(gemma3::Weights),
}

impl Weights {
    /// Loads every tensor of `header`'s file onto `device`, with rotary tables for `context`
    /// positions; `kernels` says how the weight matrices are stored and multiplied.
    pub fn load(header: GgufHeader, device: &Device, context: usize, kernels: Kernels) -> Result<Self> {
        let path = header.path.clone();
        let mut file = File::open(&path)?;
        let ctx = || format!("loading weights from {}", path.display());
        Ok(match header.arch {
            Arch::Qwen2 | Arch::Llama => Weights::Llama(
                qwen2::Weights::from_gguf(header.content, &mut file, device, context, kernels).with_context(ctx)?,
            ),
            Arch::Gemma3 => Weights::Gemma3(
                gemma3::Weights::from_gguf(header.content, &mut file, device, context, kernels).with_context(ctx)?,
            ),
        })
    }

    /// The token embeddings of `ids`, `[ids.len(), hidden]` f32 (before any scaling).
    pub fn embed(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let ids = Tensor::new(ids, device)?;
        Ok(match self {
            Weights::Llama(w) => w.embed(&ids)?,
            Weights::Gemma3(w) => w.embed(&ids)?,
        })
    }

    /// A fresh session with an empty KV cache sized for `max_len` positions. Shares the weights.
    pub fn session(&self, max_len: usize) -> Session {
        match self {
            Weights::Llama(w) => Session::Llama(w.session(max_len)),
            Weights::Gemma3(w) => Session::Gemma3(w.session(max_len)),
        }
    }
}

/// One sequence being generated: the shared weights plus this request's KV cache.
pub enum Session {
    Llama(qwen2::Session),
    Gemma3(gemma3::Session),
}

impl Session {
    /// Runs `tokens` at positions `pos..pos + tokens.len()` and returns the logits (f32, one row of
    /// vocabulary size) for the last of them.
    pub fn forward(&mut self, tokens: &[u32], pos: usize, device: &Device) -> Result<Tensor> {
        Ok(self.run(tokens, pos, device, false)?.squeeze(0)?)
    }

    /// Like [`Session::forward`], but returns the logits of every position: `[tokens.len(), vocab]`.
    /// For scoring text (perplexity, agreement between two weight variants).
    pub fn forward_all(&mut self, tokens: &[u32], pos: usize, device: &Device) -> Result<Tensor> {
        self.run(tokens, pos, device, true)
    }

    /// One decode step of several sequences of the same model: `tokens[i]` at `positions[i]` of
    /// `sessions[i]`. Returns logits `[n, vocab]` (f32), row `i` bit for bit what
    /// `sessions[i].forward(&[tokens[i]], positions[i])` returns, with one pass over the weights.
    pub fn forward_batch(
        sessions: &mut [&mut Session],
        tokens: &[u32],
        positions: &[usize],
        device: &Device,
    ) -> Result<Tensor> {
        anyhow::ensure!(
            !sessions.is_empty() && tokens.len() == sessions.len() && positions.len() == sessions.len(),
            "a batch needs one token and one position per sequence"
        );
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match &mut sessions[0] {
            Session::Llama(_) => {
                let mut ss: Vec<&mut qwen2::Session> = sessions
                    .iter_mut()
                    .map(|s| match &mut **s {
                        Session::Llama(s) => Ok(s),
                        _ => Err(anyhow::anyhow!("a batch of sequences of different models")),
                    })
                    .collect::<Result<_>>()?;
                qwen2::Session::forward_batch(&mut ss, &input, positions)?
            }
            Session::Gemma3(_) => {
                let mut ss: Vec<&mut gemma3::Session> = sessions
                    .iter_mut()
                    .map(|s| match &mut **s {
                        Session::Gemma3(s) => Ok(s),
                        _ => Err(anyhow::anyhow!("a batch of sequences of different models")),
                    })
                    .collect::<Result<_>>()?;
                gemma3::Session::forward_batch(&mut ss, &input, positions)?
            }
        };
        Ok(logits.to_dtype(candle_core::DType::F32)?)
    }

    fn run(&mut self, tokens: &[u32], pos: usize, device: &Device, all: bool) -> Result<Tensor> {
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let logits = match self {
            Session::Llama(s) => s.forward(&input, pos, all)?,
            Session::Gemma3(s) => s.forward(&input, pos, all)?,
        };
        Ok(logits.to_dtype(candle_core::DType::F32)?)
    }
}

/// Picks the device for `choice`. Never claims a GPU it does not have: `cuda` fails with a clear
/// message when the binary lacks CUDA support or no GPU is visible; `auto` then uses the CPU.
pub fn select_device(choice: crate::config::DeviceChoice) -> Result<Device> {
    use crate::config::DeviceChoice;
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this binary was built without CUDA support; rebuild with `--features cuda`, or use --device cpu or auto")
            }
            Device::new_cuda(0).map_err(|e| anyhow::anyhow!("--device cuda: no usable CUDA device: {e}"))
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                match Device::new_cuda(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => tracing::warn!(error = %e, "no usable CUDA device; running on the CPU"),
                }
            }
            Ok(Device::Cpu)
        }
    }
}
