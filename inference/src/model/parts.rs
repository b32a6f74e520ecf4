//! Pieces shared by the architectures: reading tensors (with the optional re-quantization of
//! slow block types), rotary tables and attention masks.
use crate::kernels::{Kernels, Linear};
#[cfg(test)]
use candle_core::quantized::QStorage;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
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

/// Re-packs Q4_0 or Q5_0 blocks as Q8_0 blocks without changing a single weight.
///
/// All three types hold 32 weights per block as `d * q` with one f16 scale `d`: Q4_0 stores
/// `q + 8` in 4 bits, Q5_0 stores `q + 16` in 5 bits (4 low bits packed in pairs, the fifth bits in
/// a u32), and Q8_0 stores `q` as an i8. Copying `d` and widening `q` is therefore exact: the
/// dequantized weights are bit-identical, at 34 bytes a block instead of 18 or 22.
pub fn repack_q8_0(dtype: GgmlDType, src: &[u8]) -> Result<Vec<u8>> {
    let (block, offset) = match dtype {
        GgmlDType::Q4_0 => (18, 8i16),
        GgmlDType::Q5_0 => (22, 16i16),
        other => candle_core::bail!("repack_q8_0: {other:?} is not Q4_0 or Q5_0"),
    };
    if !src.len().is_multiple_of(block) {
        candle_core::bail!("repack_q8_0: {} bytes is not a whole number of {dtype:?} blocks", src.len());
    }
    let mut out = Vec::with_capacity(src.len() / block * 34);
    for b in src.chunks_exact(block) {
        out.extend_from_slice(&b[..2]); // the f16 scale
        let (qh, qs) = if dtype == GgmlDType::Q5_0 {
            (u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22])
        } else {
            (0, &b[2..18])
        };
        let mut q = [0u8; 32];
        for j in 0..16 {
            let hi0 = ((qh >> j) << 4) & 0x10;
            let hi1 = (qh >> (j + 12)) & 0x10;
            let lo = (qs[j] & 0x0F) as u32 | hi0;
            let up = (qs[j] >> 4) as u32 | hi1;
            q[j] = ((lo as i16) - offset) as i8 as u8;
            q[j + 16] = ((up as i16) - offset) as i8 as u8;
        }
        out.extend_from_slice(&q);
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
    fn repacking_is_exact() {
        let dev = Device::Cpu;
        let x: Vec<f32> = (0..4096).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0).collect();
        let x = Tensor::from_vec(x, (8, 512), &dev).unwrap();
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q5_0] {
            let q = QTensor::quantize(&x, dtype).unwrap();
            let packed = repack_q8_0(dtype, &q.data().unwrap()).unwrap();
            assert_eq!(packed.len(), 8 * 512 / 32 * 34);
            let q8 =
                QTensor::new(QStorage::from_data(packed.into(), &dev, GgmlDType::Q8_0).unwrap(), (8, 512)).unwrap();
            let a = q.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = q8.dequantize(&dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{dtype:?}");
            // Not a no-op: the quantization really is coarse.
            let orig = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_ne!(a, orig);
        }
        assert!(repack_q8_0(GgmlDType::Q4_1, &[0; 20]).is_err());
        assert!(repack_q8_0(GgmlDType::Q5_0, &[0; 23]).is_err());
    }

    #[test]
    fn masks() {
        let m = causal_mask(2, 1, None, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(m, vec![0.0, 0.0, f32::NEG_INFINITY, 0.0, 0.0, 0.0]);
        let m = causal_mask(3, 0, Some(2), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![0.0, inf, inf, 0.0, 0.0, inf, inf, 0.0, 0.0]);
    }
}
