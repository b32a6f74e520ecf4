//! Qwen2 (and any llama-style block with optional q/k/v biases) over quantized GGUF weights.
//! Also serves `llama` files: the same block without biases.
//!
//! Unlike candle-transformers' `quantized_qwen2`, the weights ([`Weights`]) and the per-sequence
//! state ([`Session`]: KV cache) are separate types, so one load serves many concurrent requests.
//! The KV cache is preallocated for the request's whole length (prompt plus `max_tokens`), so
//! appending a token copies only that token's keys and values.
use super::attention::cached_attention;
use super::parts::{causal_mask, rope_tables, Loader, TokenEmbedding};
use crate::kernels::{Kernels, Linear};
use candle_core::quantized::gguf_file;
use candle_core::{Device, IndexOp, Module, Result, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::repeat_kv;
use std::io::{Read, Seek};
use std::sync::Arc;

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] = Linear::forward_many(&[&self.gate, &self.up], x)?.try_into().unwrap();
        self.down.forward(&super::activation::silu_mul(&gate, &up)?)
    }

    /// [`Mlp::forward`] of a decode batch, each row as it would be alone.
    fn forward_batch(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] = Linear::forward_batch(&[&self.gate, &self.up], x)?.try_into().unwrap();
        Ok(Linear::forward_batch(&[&self.down], &super::activation::silu_mul(&gate, &up)?)?.remove(0))
    }
}

struct Layer {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    wo: Linear,
    attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

struct Inner {
    embed: TokenEmbedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    hidden: usize,
    /// llama.cpp stores llama's q/k rows permuted for interleaved (GPT-J style) rotary pairs;
    /// qwen2 uses the split-halves (NeoX) layout.
    interleaved: bool,
}

/// Loaded weights; cheap to share.
#[derive(Clone)]
pub struct Weights(Arc<Inner>);

/// One sequence: shared weights plus its own KV cache.
pub struct Session {
    w: Arc<Inner>,
    caches: Vec<KvCache>,
}

impl Weights {
    pub fn from_gguf<R: Read + Seek>(
        ct: gguf_file::Content,
        r: &mut R,
        device: &Device,
        context: usize,
        kernels: Kernels,
    ) -> Result<Self> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "qwen2".to_string());
        let mut l = Loader { ct: &ct, r, device, kernels };
        let md = |k: &str| format!("{arch}.{k}");
        let n_head = l.md_u32(&md("attention.head_count"))?;
        let n_kv_head = l.md_u32(&md("attention.head_count_kv"))?;
        let hidden = l.md_u32(&md("embedding_length"))?;
        let n_layer = l.md_u32(&md("block_count"))?;
        let eps = l.md_f32(&md("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6) as f64;
        let rope_base = l.md_f32(&md("rope.freq_base")).unwrap_or(10_000.0);
        let head_dim = hidden / n_head;

        // Tied embeddings when there is no separate output head.
        let (embed, output) = l.embedding_and_head(hidden)?;
        let norm = RmsNorm::from_qtensor(l.tensor("output_norm.weight")?, eps)?;
        let (cos, sin) = rope_tables(head_dim, rope_base, context, device)?;

        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = |n: &str| format!("blk.{i}.{n}");
            let mut bias = |n: &str| -> Result<Option<Tensor>> {
                if l.has(&p(n)) {
                    l.dense(&p(n)).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (bq, bk, bv) = (bias("attn_q.bias")?, bias("attn_k.bias")?, bias("attn_v.bias")?);
            layers.push(Layer {
                wq: l.matmul(&p("attn_q.weight"))?,
                wk: l.matmul(&p("attn_k.weight"))?,
                wv: l.matmul(&p("attn_v.weight"))?,
                bq,
                bk,
                bv,
                wo: l.matmul(&p("attn_output.weight"))?,
                attn_norm: RmsNorm::from_qtensor(l.tensor(&p("attn_norm.weight"))?, eps)?,
                ffn_norm: RmsNorm::from_qtensor(l.tensor(&p("ffn_norm.weight"))?, eps)?,
                mlp: Mlp {
                    gate: l.matmul(&p("ffn_gate.weight"))?,
                    up: l.matmul(&p("ffn_up.weight"))?,
                    down: l.matmul(&p("ffn_down.weight"))?,
                },
            });
        }
        Ok(Weights(Arc::new(Inner {
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            n_head,
            n_kv_head,
            head_dim,
            hidden,
            interleaved: arch == "llama",
        })))
    }

    /// The token embeddings of `ids` (`[ids.len(), hidden]`, before any scaling).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.0.embed.forward(ids, &self.0.output)
    }

    pub fn session(&self, max_len: usize) -> Session {
        let caches = (0..self.0.layers.len()).map(|_| KvCache::new(2, max_len.max(1))).collect();
        Session { w: self.0.clone(), caches }
    }
}

fn add_bias(x: Tensor, b: &Option<Tensor>) -> Result<Tensor> {
    match b {
        Some(b) => x.broadcast_add(b),
        None => Ok(x),
    }
}

impl Inner {
    /// Self-attention of one sequence's `seq` new positions at `pos..`: `q`, `k`, `v` are
    /// `[1, seq, heads * d]` as projected (biases added); the keys and values are appended to
    /// `cache`. Returns `[1, seq, hidden]`. `mask` is the causal mask of the tensor-op path
    /// (GPUs), built on first need and reused across layers.
    fn attend(
        &self,
        cache: &mut KvCache,
        (q, k, v): (Tensor, Tensor, Tensor),
        pos: usize,
        mask: &mut Option<Tensor>,
    ) -> Result<Tensor> {
        let w = self;
        let (b, seq, _) = q.dims3()?;
        let q = q.reshape((b, seq, w.n_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, seq, w.n_kv_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, seq, w.n_kv_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
        let (cos, sin) = (w.cos.narrow(0, pos, seq)?, w.sin.narrow(0, pos, seq)?);
        let rope = if w.interleaved { candle_nn::rotary_emb::rope_i } else { candle_nn::rotary_emb::rope };
        let q = rope(&q, &cos, &sin)?;
        let k = rope(&k, &cos, &sin)?;
        let (k, v) = cache.append(&k, &v)?;
        let scale = 1.0 / (w.head_dim as f64).sqrt();
        // On the CPU attention reads the cache in place; GPUs take the tensor ops.
        if let Some(y) = cached_attention(&q, cache, pos, None, scale as f32)? {
            return Ok(y);
        }
        let n_rep = w.n_head / w.n_kv_head;
        let k = repeat_kv(k.contiguous()?, n_rep)?;
        let v = repeat_kv(v.contiguous()?, n_rep)?;
        let att = (q.matmul(&k.t()?)? * scale)?;
        if seq > 1 && mask.is_none() {
            *mask = Some(causal_mask(seq, pos, None, q.device())?);
        }
        let att = match mask {
            Some(m) if seq > 1 => att.broadcast_add(m)?,
            _ => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        att.matmul(&v)?.transpose(1, 2)?.reshape((b, seq, w.hidden))
    }

    /// The projections of a layer's attention input `h`, each row (one per sequence of a decode
    /// batch with `batch`) as it would be alone.
    fn qkv(&self, layer: &Layer, h: &Tensor, batch: bool) -> Result<(Tensor, Tensor, Tensor)> {
        let ws = [&layer.wq, &layer.wk, &layer.wv];
        let [q, k, v]: [Tensor; 3] =
            if batch { Linear::forward_batch(&ws, h)? } else { Linear::forward_many(&ws, h)? }.try_into().unwrap();
        Ok((add_bias(q, &layer.bq)?, add_bias(k, &layer.bk)?, add_bias(v, &layer.bv)?))
    }
}

impl Session {
    /// Logits `[1, vocab]` for the last of `input`'s tokens, placed at `pos..`; with `all`, logits
    /// `[seq, vocab]` for every position (batch of one).
    pub fn forward(&mut self, input: &Tensor, pos: usize, all: bool) -> Result<Tensor> {
        let w = &*self.w;
        let (_, seq) = input.dims2()?;
        // Only the tensor-op attention (GPUs) uses a mask: built on first need.
        let mut mask: Option<Tensor> = None;
        let mut x = w.embed.forward(input, &w.output)?;
        for (layer, cache) in w.layers.iter().zip(self.caches.iter_mut()) {
            let residual = &x;
            let h = layer.attn_norm.forward(&x)?;
            let y = w.attend(cache, w.qkv(layer, &h, false)?, pos, &mut mask)?;
            let x1 = (layer.wo.forward(&y)? + residual)?;
            let h = layer.ffn_norm.forward(&x1)?;
            x = (layer.mlp.forward(&h)? + &x1)?;
        }
        if all {
            return w.output.forward(&w.norm.forward(&x)?)?.squeeze(0);
        }
        let x = w.norm.forward(&x.i((.., seq - 1, ..))?.unsqueeze(1)?)?;
        let logits = w.output.forward(&x)?;
        logits.squeeze(1)
    }

    /// One decode step of several sequences: `input` (`[1, n]`) holds the next token of each of
    /// `sessions`, placed at `positions`. Returns logits `[n, vocab]`, row `i` bit for bit what
    /// `sessions[i].forward` gives that token alone: the matrix products run over all rows at
    /// once ([`Linear::forward_batch`]), attention per sequence over its own cache.
    pub fn forward_batch(sessions: &mut [&mut Session], input: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let Some(first) = sessions.first() else { candle_core::bail!("an empty batch") };
        let w = first.w.clone();
        if sessions.iter().any(|s| !Arc::ptr_eq(&s.w, &w)) || positions.len() != sessions.len() {
            candle_core::bail!("a batch of sequences of different models");
        }
        let mut x = w.embed.forward(input, &w.output)?;
        for (l, layer) in w.layers.iter().enumerate() {
            let residual = &x;
            let h = layer.attn_norm.forward(&x)?;
            let (q, k, v) = w.qkv(layer, &h, true)?;
            let mut ys = Vec::with_capacity(sessions.len());
            for (i, s) in sessions.iter_mut().enumerate() {
                let row = |t: &Tensor| t.narrow(1, i, 1);
                ys.push(w.attend(&mut s.caches[l], (row(&q)?, row(&k)?, row(&v)?), positions[i], &mut None)?);
            }
            let y = Tensor::cat(&ys, 1)?;
            let x1 = (Linear::forward_batch(&[&layer.wo], &y)?.remove(0) + residual)?;
            let h = layer.ffn_norm.forward(&x1)?;
            x = (layer.mlp.forward_batch(&h)? + &x1)?;
        }
        let x = w.norm.forward(&x)?;
        Linear::forward_batch(&[&w.output], &x)?.remove(0).squeeze(0)
    }
}
