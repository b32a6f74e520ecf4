//! Qwen2 (and any llama-style block with optional q/k/v biases) over quantized GGUF weights.
//!
//! Unlike candle-transformers' `quantized_qwen2`, the weights ([`Weights`]) and the per-sequence
//! state ([`Session`]: KV cache) are separate types, so one load serves many concurrent requests.
//! The KV cache is preallocated for the request's whole length (prompt plus `max_tokens`), so
//! appending a token copies only that token's keys and values.
use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::repeat_kv;
use std::io::{Read, Seek};
use std::sync::Arc;

struct Mlp {
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(gate * self.up.forward(x)?)?)
    }
}

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    wo: QMatMul,
    attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

struct Inner {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    hidden: usize,
}

/// Loaded weights; cheap to share.
#[derive(Clone)]
pub struct Weights(Arc<Inner>);

/// One sequence: shared weights plus its own KV cache.
pub struct Session {
    w: Arc<Inner>,
    caches: Vec<KvCache>,
}

fn rope_tables(head_dim: usize, base: f32, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1f32 / base.powf(i as f32 / head_dim as f32)).collect();
    let inv = Tensor::new(inv.as_slice(), device)?;
    let pos = Tensor::arange(0, len as u32, device)?.to_dtype(DType::F32)?.reshape((len, 1))?;
    let freqs = pos.matmul(&inv.reshape((1, head_dim / 2))?)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

impl Weights {
    pub fn from_gguf<R: Read + Seek>(ct: gguf_file::Content, r: &mut R, device: &Device) -> Result<Self> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "qwen2".to_string());
        let md = |k: &str| -> Result<&gguf_file::Value> {
            let key = format!("{arch}.{k}");
            ct.metadata.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("missing metadata {key}")))
        };
        let n_head = md("attention.head_count")?.to_u32()? as usize;
        let n_kv_head = md("attention.head_count_kv")?.to_u32()? as usize;
        let hidden = md("embedding_length")?.to_u32()? as usize;
        let ctx_len = md("context_length")?.to_u32()? as usize;
        let n_layer = md("block_count")?.to_u32()? as usize;
        let eps = md("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let rope_base = md("rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0);
        let head_dim = hidden / n_head;

        let embed_q = ct.tensor(r, "token_embd.weight", device)?;
        let embed = Embedding::new(embed_q.dequantize(device)?, hidden);
        let output = match ct.tensor(r, "output.weight", device) {
            Ok(t) => QMatMul::from_qtensor(t)?,
            Err(_) => QMatMul::from_qtensor(embed_q)?, // tied embeddings
        };
        let norm = RmsNorm::from_qtensor(ct.tensor(r, "output_norm.weight", device)?, eps)?;
        let (cos, sin) = rope_tables(head_dim, rope_base, ctx_len, device)?;

        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let mut t = |name: &str| ct.tensor(r, &format!("blk.{i}.{name}"), device);
            let mut mm = |name: &str| -> Result<QMatMul> { QMatMul::from_qtensor(t(name)?) };
            let wq = mm("attn_q.weight")?;
            let wk = mm("attn_k.weight")?;
            let wv = mm("attn_v.weight")?;
            let wo = mm("attn_output.weight")?;
            let mlp = Mlp { gate: mm("ffn_gate.weight")?, up: mm("ffn_up.weight")?, down: mm("ffn_down.weight")? };
            let mut bias = |name: &str| -> Result<Option<Tensor>> {
                match ct.tensor(r, &format!("blk.{i}.{name}"), device) {
                    Ok(q) => Ok(Some(q.dequantize(device)?)),
                    Err(_) => Ok(None),
                }
            };
            let (bq, bk, bv) = (bias("attn_q.bias")?, bias("attn_k.bias")?, bias("attn_v.bias")?);
            let attn_norm = RmsNorm::from_qtensor(ct.tensor(r, &format!("blk.{i}.attn_norm.weight"), device)?, eps)?;
            let ffn_norm = RmsNorm::from_qtensor(ct.tensor(r, &format!("blk.{i}.ffn_norm.weight"), device)?, eps)?;
            layers.push(Layer { wq, wk, wv, bq, bk, bv, wo, attn_norm, ffn_norm, mlp });
        }
        Ok(Weights(Arc::new(Inner { embed, layers, norm, output, cos, sin, n_head, n_kv_head, head_dim, hidden })))
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

impl Session {
    /// Logits for the last of `input`'s tokens (shape `[1, vocab]`), placed at `pos..`.
    pub fn forward(&mut self, input: &Tensor, pos: usize) -> Result<Tensor> {
        let w = &*self.w;
        let (b, seq) = input.dims2()?;
        let mask = if seq > 1 {
            let kv_len = pos + seq;
            let m: Vec<f32> = (0..seq)
                .flat_map(|i| (0..kv_len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(m, (1, 1, seq, kv_len), input.device())?)
        } else {
            None
        };
        let cos = w.cos.narrow(0, pos, seq)?;
        let sin = w.sin.narrow(0, pos, seq)?;
        let scale = 1.0 / (w.head_dim as f64).sqrt();
        let mut x = w.embed.forward(input)?;
        for (layer, cache) in w.layers.iter().zip(self.caches.iter_mut()) {
            let residual = &x;
            let h = layer.attn_norm.forward(&x)?;
            let q = add_bias(layer.wq.forward(&h)?, &layer.bq)?;
            let k = add_bias(layer.wk.forward(&h)?, &layer.bk)?;
            let v = add_bias(layer.wv.forward(&h)?, &layer.bv)?;
            let q = q.reshape((b, seq, w.n_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
            let k = k.reshape((b, seq, w.n_kv_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
            let v = v.reshape((b, seq, w.n_kv_head, w.head_dim))?.transpose(1, 2)?.contiguous()?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            let (k, v) = cache.append(&k, &v)?;
            let n_rep = w.n_head / w.n_kv_head;
            let k = repeat_kv(k.contiguous()?, n_rep)?;
            let v = repeat_kv(v.contiguous()?, n_rep)?;
            let att = (q.matmul(&k.t()?)? * scale)?;
            let att = match &mask {
                Some(m) => att.broadcast_add(m)?,
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?;
            let y = y.transpose(1, 2)?.reshape((b, seq, w.hidden))?;
            let x1 = (layer.wo.forward(&y)? + residual)?;
            let h = layer.ffn_norm.forward(&x1)?;
            x = (layer.mlp.forward(&h)? + &x1)?;
        }
        let x = w.norm.forward(&x.i((.., seq - 1, ..))?.unsqueeze(1)?)?;
        let logits = w.output.forward(&x)?;
        logits.squeeze(1)
    }
}
