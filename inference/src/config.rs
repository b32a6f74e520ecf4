//! Command-line flags of the `inference` binary; every flag falls back to an environment variable.
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// Always the CPU.
    Cpu,
    /// CUDA device 0; fails at start when the binary has no CUDA support or no GPU is visible.
    Cuda,
    /// CUDA when available, else the CPU.
    Auto,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "inference",
    version,
    about = "Serve one GGUF model over HTTP: SSE /generate, the OpenAI API, /health and /metrics."
)]
pub struct Config {
    /// Path of the GGUF model file.
    #[arg(long, env = "MODEL")]
    pub model: PathBuf,

    /// Backend id reported in responses and metrics (m1 … m5).
    #[arg(long, env = "MODEL_ID", default_value = "m1")]
    pub model_id: String,

    /// Model name reported to clients; defaults to the GGUF file name without extension and quantization suffix.
    #[arg(long, env = "MODEL_NAME")]
    pub model_name: Option<String>,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8101)]
    pub port: u16,

    /// Where to run the model.
    #[arg(long, env = "DEVICE", value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,

    /// CPU threads for the math kernels (default: all cores).
    #[arg(long, env = "THREADS")]
    pub threads: Option<usize>,

    /// Requests generated at the same time: the places of the continuous batch (they decode
    /// together, one pass over the weights per step); more wait in the queue.
    #[arg(long, env = "MAX_CONCURRENT", default_value_t = 4)]
    pub max_concurrent: usize,

    /// Requests allowed to wait for a slot; beyond this the service answers 503 with Retry-After.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,

    /// Most prompt tokens per prefill pass. A long prompt is run in chunks of this size, and a
    /// client that leaves is noticed between chunks (its slot freed within one chunk's time).
    #[arg(long, env = "PREFILL_CHUNK", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub prefill_chunk: u64,

    /// Context length (prompt plus generated tokens); default and upper bound: the model's own.
    #[arg(long, env = "CONTEXT")]
    pub context: Option<usize>,

    /// CPU matmul kernels: `fast` (ours for Q8_0/Q5_0/Q4_0 matrices, re-packed exactly; candle's
    /// for K-quants), `repack` (candle's, Q4_0/Q5_0 re-packed as Q8_0) or `file` (candle's on the
    /// file's own types).
    #[arg(long, env = "KERNELS", value_enum, default_value_t = crate::kernels::Kernels::Fast)]
    pub kernels: crate::kernels::Kernels,

    /// A tokenizer.json to use instead of the tokenizer built from the GGUF metadata.
    #[arg(long, env = "TOKENIZER")]
    pub tokenizer: Option<PathBuf>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    // Connection bounds: --max-connections, --header-read-timeout-ms, --max-header-bytes.
    #[command(flatten)]
    pub conn: polyllm_common::listener::ConnLimits,

    /// Log format: `json` (for containers and log shippers) or `text`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

impl Config {
    /// The default model name: `qwen2.5-coder-0.5b-instruct-q4_k_m.gguf` → `qwen2.5-coder-0.5b-instruct`.
    pub fn model_name(&self) -> String {
        if let Some(n) = &self.model_name {
            return n.clone();
        }
        let stem = self.model.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let lower = stem.to_lowercase();
        for suffix in ["-q4_k_m", "-q4_k_s", "-q5_k_m", "-q8_0", "-q4_0", "-f16"] {
            if let Some(i) = lower.rfind(suffix) {
                return stem[..i].to_string();
            }
        }
        stem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_drops_the_quantization_suffix() {
        let c = Config::parse_from(["inference", "--model", "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"]);
        assert_eq!(c.model_name(), "qwen2.5-coder-0.5b-instruct");
        assert_eq!(c.port, 8101);
        let c = Config::parse_from(["inference", "--model", "x.gguf", "--model-name", "y", "--device", "auto"]);
        assert_eq!(c.model_name(), "y");
        assert_eq!(c.device, DeviceChoice::Auto);
    }
}
