//! Pieces shared by the architectures: reading tensors (with the optional re-quantization of
//! slow block types), rotary tables and attention masks.
use crate::kernels::{Kernels, Linear};
use candle_core::quantized::{gguf_file, QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use std::io::{Read, Seek};

/// Reads tensors of one GGUF file.
pub struct Loader<'a, R> {
    pub ct: &'a gguf_file::Content,
    pub r: &'a mut R,
    pub device: &'a Device,
    /// How weight matrices are stored and multiplied (see [`Kernels`]).
    pub kernels: Kernels,
}

impl<'a, R: Read + Seek> Loader<'a, R> {
    pub fn tensor(&mut self, name: &str) -> Result<QTensor> {
        self.ct.tensor(self.r, name, self.device)
    }

    pub fn has(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }

    /// A weight matrix for `x @ w^T`.
    pub fn matmul(&mut self, name: &str) -> Result<Linear> {
        let t = self.tensor(name)?;
        self.head(t)
    }

    /// A loaded tensor as a weight matrix (the output head may be the embedding table).
    pub fn head(&mut self, t: QTensor) -> Result<Linear> {
        Linear::new(t, self.kernels, self.device)
    }

    /// The token embedding table and the output head: `output.weight`, or the table itself where
    /// the file has no separate head (tied).
    pub fn embedding_and_head(&mut self, hidden: usize) -> Result<(TokenEmbedding, Linear)> {
        let table = self.tensor("token_embd.weight")?;
        if self.has("output.weight") {
            let embed = TokenEmbedding::new(&table, hidden, self.device)?;
            drop(table);
            let head = self.matmul("output.weight")?;
            return Ok((embed, head));
        }
        let (kernels, device) = (self.kernels, self.device);
        TokenEmbedding::tied(table, hidden, device, |t| Linear::new(t, kernels, device))
    }

    /// A small tensor (norm weights, biases) as f32.
    pub fn dense(&mut self, name: &str) -> Result<Tensor> {
        self.tensor(name)?.dequantize(self.device)
    }

    pub fn md_u32(&self, key: &str) -> Result<usize> {
        self.ct
            .metadata
            .get(key)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing metadata {key}")))?
            .to_u32()
            .map(|v| v as usize)
    }

    pub fn md_f32(&self, key: &str) -> Option<f32> {
        self.ct.metadata.get(key).and_then(|v| v.to_f32().ok())
    }
}

/// The token embedding table on the CPU, never as f32: a lookup dequantizes only the rows it reads
/// (bit for bit candle's dequantization of those rows). The f32 table it replaces took 4 bytes a
/// weight: 671 MB for gemma-3-270m's 262,144 x 640, more than twice its whole file. Where the
/// output head is tied to the table ([`TokenEmbedding::Head`]), the rows come from the head's own
/// matrix, so the table is held once. On a GPU the table is dequantized once, as before.
pub enum TokenEmbedding {
    /// Rows read from the tied output head ([`Linear::rows_f32`]).
    Head {
        hidden: usize,
    },
    /// The file's blocks, ours.
    Quantized {
        t: QTensor,
        hidden: usize,
    },
    Dense(candle_nn::Embedding),
}

impl TokenEmbedding {
    /// The table `t` on its own (the model has a separate output head).
    pub fn new(t: &QTensor, hidden: usize, device: &Device) -> Result<TokenEmbedding> {
        let (_, k) = t.shape().dims2()?;
        if !device.is_cpu() || k != hidden || !k.is_multiple_of(t.dtype().block_size()) {
            return Ok(TokenEmbedding::Dense(candle_nn::Embedding::new(t.dequantize(device)?, hidden)));
        }
        let storage = QStorage::from_data(t.data()?, device, t.dtype())?;
        Ok(TokenEmbedding::Quantized { t: QTensor::new(storage, t.shape().clone())?, hidden })
    }

    /// The table `t` and the output head tied to it, built by `head`: the head serves the lookups
    /// where it keeps its rows, else the table keeps its own copy.
    pub fn tied(
        t: QTensor,
        hidden: usize,
        device: &Device,
        head: impl FnOnce(QTensor) -> Result<Linear>,
    ) -> Result<(TokenEmbedding, Linear)> {
        // Re-laid Q4_K tiles do not keep the file's blocks (kernels/mod.rs, `KMatrix`).
        let own = if !device.is_cpu() || t.dtype() == candle_core::quantized::GgmlDType::Q4K {
            Some(TokenEmbedding::new(&t, hidden, device)?)
        } else {
            None
        };
        let head = head(t)?;
        let embed = match own {
            Some(e) => e,
            None if head.rows_f32(&[0])?.is_some() => TokenEmbedding::Head { hidden },
            None => candle_core::bail!("the tied output head keeps no rows to embed tokens with"),
        };
        Ok((embed, head))
    }

    /// `[.., hidden]` f32 embeddings of the ids in `ids` (`[..]`, u32); `head` is the model's
    /// output head (read by [`TokenEmbedding::Head`]).
    pub fn forward(&self, ids: &Tensor, head: &Linear) -> Result<Tensor> {
        let hidden = match self {
            TokenEmbedding::Dense(e) => return candle_core::Module::forward(e, ids),
            TokenEmbedding::Quantized { hidden, .. } | TokenEmbedding::Head { hidden } => *hidden,
        };
        let list = ids.flatten_all()?.to_vec1::<u32>()?;
        let out = match self {
            TokenEmbedding::Head { .. } => {
                head.rows_f32(&list)?.ok_or_else(|| candle_core::Error::Msg("the head keeps no rows".into()))?
            }
            TokenEmbedding::Quantized { t, .. } => rows_of(t, hidden, &list)?,
            TokenEmbedding::Dense(_) => unreachable!(),
        };
        let mut dims = ids.dims().to_vec();
        dims.push(hidden);
        Tensor::from_vec(out, dims, ids.device())
    }
}

/// Rows `ids` of the `[rows, hidden]` quantized table `t`, dequantized.
fn rows_of(t: &QTensor, hidden: usize, ids: &[u32]) -> Result<Vec<f32>> {
    let dtype = t.dtype();
    let row_bytes = hidden / dtype.block_size() * dtype.type_size();
    let data = t.data()?;
    let rows = data.len() / row_bytes;
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for &id in ids {
        let id = id as usize;
        if id >= rows {
            candle_core::bail!("token id {id} out of the embedding table's {rows} rows");
        }
        let row = &data[id * row_bytes..(id + 1) * row_bytes];
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(row), &Device::Cpu, dtype)?;
        out.extend(QTensor::new(storage, (hidden,))?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// cos and sin tables for rotary embeddings over `len` positions.
pub fn rope_tables(head_dim: usize, base: f32, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1f32 / base.powf(i as f32 / head_dim as f32)).collect();
    let inv = Tensor::new(inv.as_slice(), device)?;
    let pos = Tensor::arange(0, len as u32, device)?.to_dtype(DType::F32)?.reshape((len, 1))?;
    let freqs = pos.matmul(&inv.reshape((1, head_dim / 2))?)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Additive mask `(1, 1, seq, pos + seq)` for `seq` new tokens placed after `pos` cached ones:
/// 0 where query i may see key j (j <= pos + i, and within `window` when given), -inf elsewhere.
pub fn causal_mask(seq: usize, pos: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let kv = pos + seq;
    let mut m = vec![0f32; seq * kv];
    for i in 0..seq {
        let qi = pos + i;
        for j in 0..kv {
            let visible = j <= qi && window.is_none_or(|w| qi - j < w);
            if !visible {
                m[i * kv + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (1, 1, seq, kv), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        let m = causal_mask(2, 1, None, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(m, vec![0.0, 0.0, f32::NEG_INFINITY, 0.0, 0.0, 0.0]);
        let m = causal_mask(3, 0, Some(2), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![0.0, inf, inf, 0.0, 0.0, inf, inf, 0.0, 0.0]);
    }
}
