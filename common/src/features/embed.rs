//! The all-MiniLM-L6-v2 sentence embedding, run with candle-transformers' BERT on the safetensors
//! of `models/all-MiniLM-L6-v2/`: WordPiece tokens (no fixed padding), truncation to the 256
//! positions sentence-transformers uses (`sentence_bert_config.json`'s `max_seq_length`), mean
//! pooling over the attention mask, L2 normalization. Matches sentence-transformers'
//! `encode(..., normalize_embeddings=True)`.
//!
//! This module owns [`Embedder`] (loading the model and tokenizer, embedding one text) and
//! [`Embedding`] (the unit vector plus the text's untruncated token count).
//!
//! One text is embedded at a time, so there is never any padding: every position is a real
//! token, the attention mask is all ones and mean pooling is a plain mean over the sequence.
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use super::FeatureError;

/// Positions sentence-transformers gives all-MiniLM-L6-v2 (`max_seq_length`), [CLS]/[SEP] included.
pub const MAX_SEQ_LEN: usize = 256;

/// Width of the embedding.
pub const EMBEDDING_DIMS: usize = 384;

/// One embedded text.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// 384 floats, unit L2 norm.
    pub vector: Vec<f32>,
    /// WordPiece tokens of the text, [CLS] and [SEP] included, before truncation.
    pub tokens: usize,
}

/// The loaded model (weights, tokenizer); cheap to share behind an `Arc`, `Send + Sync`.
pub struct Embedder {
    model: BertModel,
    /// The model's tokenizer with padding and truncation turned off: [`Embedder::embed`] counts
    /// the full sequence, then truncates it itself (see [`truncate_ids`]).
    tokenizer: Tokenizer,
    device: Device,
    hidden_size: usize,
}

// The router shares one embedder across threads; fail the build if that ever stops holding.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Embedder>();
};

fn load_err(dir: &Path, message: impl std::fmt::Display) -> FeatureError {
    FeatureError::Load { path: dir.display().to_string(), message: message.to_string() }
}

fn embed_err(message: impl std::fmt::Display) -> FeatureError {
    FeatureError::Embed(message.to_string())
}

impl Embedder {
    /// Load from a directory holding `config.json`, `model.safetensors` and `tokenizer.json`
    /// (`models/all-MiniLM-L6-v2/` after `fetch-models --only minilm`).
    pub fn load(dir: &Path) -> Result<Self, FeatureError> {
        if !dir.is_dir() {
            return Err(load_err(dir, "no such directory (run `target/debug/fetch-models --only minilm`)"));
        }
        let config_path = dir.join("config.json");
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| load_err(dir, format!("reading config.json: {e}")))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| load_err(dir, format!("parsing config.json: {e}")))?;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err(dir, format!("loading tokenizer.json: {e}")))?;
        // tokenizer.json ships fixed padding to 128 and truncation at 128; sentence-transformers
        // overrides both (pad to the batch's longest, truncate at 256). We embed one text at a
        // time (no padding) and truncate after counting the tokens.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| load_err(dir, format!("configuring the tokenizer: {e}")))?;

        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(load_err(dir, "model.safetensors is missing"));
        }
        // SAFETY: the safetensors file is memory-mapped read-only; like every candle user we
        // assume nobody rewrites it while the process runs (fetch-models writes to a temporary
        // file and renames).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device) }
            .map_err(|e| load_err(dir, format!("mapping model.safetensors: {e}")))?;
        let model =
            BertModel::load(vb, &config).map_err(|e| load_err(dir, format!("building BERT from the weights: {e}")))?;
        Ok(Self { model, tokenizer, device, hidden_size: config.hidden_size })
    }

    /// Width of the embedding (384 for all-MiniLM-L6-v2).
    pub fn dims(&self) -> usize {
        self.hidden_size
    }

    /// WordPiece token count of `text`, [CLS]/[SEP] included, before truncation.
    pub fn count_tokens(&self, text: &str) -> Result<usize, FeatureError> {
        Ok(self.encode_ids(text)?.len())
    }

    fn encode_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| embed_err(format!("tokenizing: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Embed one text, truncated to the model's [`MAX_SEQ_LEN`] positions like
    /// sentence-transformers does ([CLS] + the first 254 WordPieces + [SEP]). The empty string
    /// is valid: it embeds `[CLS] [SEP]`.
    pub fn embed(&self, text: &str) -> Result<Embedding, FeatureError> {
        let mut ids = self.encode_ids(text)?;
        let tokens = ids.len();
        truncate_ids(&mut ids, MAX_SEQ_LEN);
        let vector = self.forward(&ids).map_err(embed_err)?;
        Ok(Embedding { vector, tokens })
    }

    /// BERT over one unpadded sequence, mean pooling, L2 normalization.
    fn forward(&self, ids: &[u32]) -> candle_core::Result<Vec<f32>> {
        let len = ids.len();
        if len == 0 {
            candle_core::bail!("the tokenizer produced no tokens");
        }
        let input_ids = Tensor::from_slice(ids, (1, len), &self.device)?;
        let type_ids = Tensor::zeros((1, len), DType::U32, &self.device)?;
        // No padding: the mask is all ones, which is what `None` means to candle's BERT.
        let hidden = self.model.forward(&input_ids, &type_ids, None)?; // (1, len, hidden)
        let pooled = hidden.squeeze(0)?.mean(0)?; // (hidden,)
        let mut v: Vec<f32> = pooled.to_vec1()?;
        if v.len() != self.hidden_size {
            candle_core::bail!("BERT returned {} dims, expected {}", v.len(), self.hidden_size);
        }
        // sentence-transformers' normalize: x / max(||x||, 1e-12).
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
        if v.iter().any(|x| !x.is_finite()) {
            candle_core::bail!("non-finite embedding");
        }
        Ok(v)
    }
}

/// Truncate a post-processed `[CLS] … [SEP]` sequence to `max` positions the way HF tokenizers'
/// `truncation=longest_first, max_length=max` does for a single sequence: keep [CLS] and the
/// first `max - 2` WordPieces, then the final [SEP].
fn truncate_ids(ids: &mut Vec<u32>, max: usize) {
    if ids.len() > max && max >= 2 {
        let sep = ids[ids.len() - 1];
        ids.truncate(max - 1);
        ids.push(sep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_cls_and_sep() {
        let mut ids: Vec<u32> = std::iter::once(101).chain(1000..1300).chain(std::iter::once(102)).collect();
        assert_eq!(ids.len(), 302);
        truncate_ids(&mut ids, 256);
        assert_eq!(ids.len(), 256);
        assert_eq!(ids[0], 101);
        assert_eq!(ids[254], 1253);
        assert_eq!(ids[255], 102);
        let mut short = vec![101, 5, 102];
        truncate_ids(&mut short, 256);
        assert_eq!(short, vec![101, 5, 102]);
    }

    #[test]
    fn missing_dir_is_a_load_error() {
        let err = Embedder::load(Path::new("/nonexistent/minilm")).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("fetch-models"));
    }
}
