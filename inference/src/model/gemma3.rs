//! Gemma 3 over quantized GGUF weights, with shared [`Weights`] and per-sequence [`Session`]s.
//!
//! Per layer: pre- and post-norms around attention and the MLP, RMS norms on queries and keys,
//! GELU (tanh) gated MLP, and alternating attention: five sliding-window layers (local rotary base)
//! for each global one. Embeddings are scaled by sqrt(hidden) and the output head is tied to them.
//! The rotary tables are computed once for the served context and shared by all layers.
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

struct Layer {
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    attn_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    post_ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// Sliding-window size for local layers; None for global ones.
    window: Option<usize>,
}

struct Inner {
    embed: TokenEmbedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    rope_local: (Tensor, Tensor),
    rope_global: (Tensor, Tensor),
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    hidden: usize,
}

#[derive(Clone)]
pub struct Weights(Arc<Inner>);

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
        let mut l = Loader { ct: &ct, r, device, kernels };
        let n_head = l.md_u32("gemma3.attention.head_count")?;
        let n_kv_head = l.md_u32("gemma3.attention.head_count_kv")?;
        let hidden = l.md_u32("gemma3.embedding_length")?;
        let n_layer = l.md_u32("gemma3.block_count")?;
        let head_dim = l.md_u32("gemma3.attention.key_length")?;
        let window = l.md_u32("gemma3.attention.sliding_window")?;
        let pattern = l.md_u32("gemma3.attention.sliding_window_type").unwrap_or(6);
        let eps = l.md_f32("gemma3.attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f64;
        let base_global = l.md_f32("gemma3.rope.freq_base").unwrap_or(1_000_000.0);
        let base_local = l.md_f32("gemma3.rope.local_freq_base").unwrap_or(10_000.0);

        // Tied embeddings when there is no separate output head.
        let (embed, output) = l.embedding_and_head(hidden)?;
        let norm = RmsNorm::from_qtensor(l.tensor("output_norm.weight")?, eps)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = |n: &str| format!("blk.{i}.{n}");
            let mut rms = |n: &str| -> Result<RmsNorm> { RmsNorm::from_qtensor(l.tensor(&p(n))?, eps) };
            let (q_norm, k_norm) = (rms("attn_q_norm.weight")?, rms("attn_k_norm.weight")?);
            let (attn_norm, post_attn_norm) = (rms("attn_norm.weight")?, rms("post_attention_norm.weight")?);
            let (ffn_norm, post_ffn_norm) = (rms("ffn_norm.weight")?, rms("post_ffw_norm.weight")?);
            layers.push(Layer {
                wq: l.matmul(&p("attn_q.weight"))?,
                wk: l.matmul(&p("attn_k.weight"))?,
                wv: l.matmul(&p("attn_v.weight"))?,
                wo: l.matmul(&p("attn_output.weight"))?,
                q_norm,
                k_norm,
                attn_norm,
                post_attn_norm,
                ffn_norm,
                post_ffn_norm,
                gate: l.matmul(&p("ffn_gate.weight"))?,
                up: l.matmul(&p("ffn_up.weight"))?,
                down: l.matmul(&p("ffn_down.weight"))?,
                window: ((i + 1) % pattern != 0).then_some(window),
            });
        }
        let rope_local = rope_tables(head_dim, base_local, context, device)?;
        let rope_global = rope_tables(head_dim, base_global, context, device)?;
        Ok(Weights(Arc::new(Inner {
            embed,
            layers,
            norm,
            output,
            rope_local,
            rope_global,
            n_head,
            n_kv_head,
            head_dim,
            hidden,
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

/// The tensor-op path's masks (GPUs) for one prompt, global and sliding-window, each built on
/// first need and reused across layers.
#[derive(Default)]
struct Masks {
    global: Option<Tensor>,
    local: Option<Tensor>,
}

impl Inner {
    /// Self-attention of one sequence's `seq` new positions at `pos..` in `layer`: `q`, `k`, `v`
    /// are `[1, seq, heads * d]` as projected; the keys and values are appended to `cache`.
    /// Returns `[1, seq, n_head * d]`.
    fn attend(
        &self,
        layer: &Layer,
        cache: &mut KvCache,
        (q, k, v): (Tensor, Tensor, Tensor),
        pos: usize,
        masks: &mut Masks,
    ) -> Result<Tensor> {
        let w = self;
        let (b, seq, _) = q.dims3()?;
        let dev = q.device().clone();
        let kv_len = pos + seq;
        let n_rep = w.n_head / w.n_kv_head;
        let scale = 1.0 / (w.head_dim as f64).sqrt();
        let q = q.reshape((b, seq, w.n_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, seq, w.n_kv_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, seq, w.n_kv_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
        let q = layer.q_norm.forward(&q)?;
        let k = layer.k_norm.forward(&k)?;
        let (cos, sin) = if layer.window.is_some() { &w.rope_local } else { &w.rope_global };
        let (cos, sin) = (cos.narrow(0, pos, seq)?, sin.narrow(0, pos, seq)?);
        let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
        let (k, v) = cache.append(&k, &v)?;
        // On the CPU attention reads the cache in place (windowed layers see only the last
        // `win` keys of each position); GPUs take the tensor ops below.
        if let Some(y) = cached_attention(&q, cache, pos, layer.window, scale as f32)? {
            return Ok(y);
        }
        let (k, v, mask) = match layer.window {
            // Decoding one token: keys older than the window are simply left out.
            Some(win) if seq == 1 && kv_len > win => {
                (k.narrow(2, kv_len - win, win)?, v.narrow(2, kv_len - win, win)?, None)
            }
            Some(win) if seq > 1 => {
                if masks.local.is_none() {
                    masks.local = Some(causal_mask(seq, pos, Some(win), &dev)?);
                }
                (k, v, masks.local.as_ref())
            }
            _ => {
                if seq > 1 && masks.global.is_none() {
                    masks.global = Some(causal_mask(seq, pos, None, &dev)?);
                }
                (k, v, masks.global.as_ref().filter(|_| seq > 1))
            }
        };
        let k = repeat_kv(k.contiguous()?, n_rep)?;
        let v = repeat_kv(v.contiguous()?, n_rep)?;
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        att.matmul(&v)?.transpose(1, 2)?.reshape((b, seq, w.n_head * w.head_dim))
    }

    /// One layer after its attention output `y`: output projection, norms, residuals and the MLP.
    /// With `batch`, `x` holds one row per sequence of a decode batch, each computed as alone.
    fn finish_layer(&self, layer: &Layer, y: &Tensor, residual: Tensor, batch: bool) -> Result<Tensor> {
        let one = |w: &Linear, x: &Tensor| -> Result<Tensor> {
            if batch {
                Ok(Linear::forward_batch(&[w], x)?.remove(0))
            } else {
                w.forward(x)
            }
        };
        let y = layer.post_attn_norm.forward(&one(&layer.wo, y)?)?;
        let x1 = (y + residual)?;
        let h = layer.ffn_norm.forward(&x1)?;
        let ws = [&layer.gate, &layer.up];
        let [gate, up]: [Tensor; 2] =
            if batch { Linear::forward_batch(&ws, &h)? } else { Linear::forward_many(&ws, &h)? }.try_into().unwrap();
        let gated = super::activation::gelu_tanh_mul(&gate, &up)?;
        let y = layer.post_ffn_norm.forward(&one(&layer.down, &gated)?)?;
        y + x1
    }
}

impl Session {
    /// Logits `[1, vocab]` for the last of `input`'s tokens, placed at `pos..`; with `all`, logits
    /// `[seq, vocab]` for every position (batch of one).
    pub fn forward(&mut self, input: &Tensor, pos: usize, all: bool) -> Result<Tensor> {
        let w = &*self.w;
        let (_, seq) = input.dims2()?;
        let mut masks = Masks::default();
        let mut x = (w.embed.forward(input, &w.output)? * (w.hidden as f64).sqrt())?;
        for (layer, cache) in w.layers.iter().zip(self.caches.iter_mut()) {
            let residual = x.clone();
            let h = layer.attn_norm.forward(&x)?;
            let qkv: [Tensor; 3] = Linear::forward_many(&[&layer.wq, &layer.wk, &layer.wv], &h)?.try_into().unwrap();
            let [q, k, v] = qkv;
            let y = w.attend(layer, cache, (q, k, v), pos, &mut masks)?;
            x = w.finish_layer(layer, &y, residual, false)?;
        }
        if all {
            return w.output.forward(&w.norm.forward(&x)?)?.squeeze(0);
        }
        let x = w.norm.forward(&x.i((.., seq - 1..seq, ..))?)?;
        w.output.forward(&x)?.squeeze(1)
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
        let mut x = (w.embed.forward(input, &w.output)? * (w.hidden as f64).sqrt())?;
        for (l, layer) in w.layers.iter().enumerate() {
            let residual = x.clone();
            let h = layer.attn_norm.forward(&x)?;
            let [q, k, v]: [Tensor; 3] =
                Linear::forward_batch(&[&layer.wq, &layer.wk, &layer.wv], &h)?.try_into().unwrap();
            let mut ys = Vec::with_capacity(sessions.len());
            for (i, s) in sessions.iter_mut().enumerate() {
                let row = |t: &Tensor| t.narrow(1, i, 1);
                let qkv = (row(&q)?, row(&k)?, row(&v)?);
                ys.push(w.attend(layer, &mut s.caches[l], qkv, positions[i], &mut Masks::default())?);
            }
            x = w.finish_layer(layer, &Tensor::cat(&ys, 1)?, residual, true)?;
        }
        let x = w.norm.forward(&x)?;
        Linear::forward_batch(&[&w.output], &x)?.remove(0).squeeze(0)
    }
}
