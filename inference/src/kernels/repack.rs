//! Re-laying slow block types as Q8_0: Q4_0 and Q5_0 matrices are widened once, at load, into
//! Q8_0 blocks holding the very same weights, so that the Q8_0 kernels ([`super::q8`]) multiply
//! them.
use candle_core::quantized::GgmlDType;
use candle_core::Result;

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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{QStorage, QTensor};
    use candle_core::{Device, Tensor};

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
}
