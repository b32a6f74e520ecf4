//! Q8_0 matrices in our own layout, and the CPU kernels that multiply activations by them.
//!
//! A [`Q8Matrix`] keeps ggml's Q8_0 numerics (blocks of 32 signed 8-bit weights sharing one scale)
//! but not its byte layout: the scales are stored as f32 in one array and the quants in another,
//! so the inner loop never converts an f16 and always loads 32 aligned-in-size bytes.
//!
//! Activations are quantized per block to Q8_0 exactly as ggml's `quantize_row_q8_0` does (scale
//! `amax / 127` rounded to f16, quants `round(x / scale)` with the unrounded scale), so a product
//! matches what candle's and llama.cpp's Q8_0 kernels compute up to the order of float additions.
//!
//! [`Q8Matrix::matmul`] computes tiles of up to 4 activation rows × 4 weight rows at once: each
//! weight block loaded from memory is used for every activation row of the tile, which is what makes
//! prompt prefill fast (candle multiplies one row at a time). On x86-64 with AVX2 and FMA (checked
//! at run time) a block product is `maddubs` on |w| and sign(a, w); elsewhere a scalar loop.
use half::f16;

/// Weights per block.
pub const QK: usize = 32;

/// A row-major `[n, k]` matrix of Q8_0 blocks (`x @ w^T` gives `n` outputs per row of `x`).
pub struct Q8Matrix {
    n: usize,
    k: usize,
    /// `n * k / 32` block scales, row by row.
    d: Vec<f32>,
    /// `n * k` quants, row by row.
    q: Vec<i8>,
}

/// Rows of activations quantized to Q8_0 blocks.
pub struct Q8Rows {
    m: usize,
    k: usize,
    d: Vec<f32>,
    q: Vec<i8>,
}

/// Quantizes one block like ggml's `quantize_row_q8_0`; with `f16_scale` the stored scale is
/// rounded to f16 as ggml stores it (used for activations, to match the reference kernels).
fn quantize_block(x: &[f32], q: &mut [i8], f16_scale: bool) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (o, v) in q.iter_mut().zip(x) {
        *o = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    if f16_scale {
        f16::from_f32(d).to_f32()
    } else {
        d
    }
}

/// Quantizes `x` (rows of `k` values, `k` a multiple of 32) to Q8_0 blocks.
pub fn quantize_rows(x: &[f32], k: usize) -> Q8Rows {
    assert!(k % QK == 0 && x.len() % k == 0, "quantize_rows: {} values in rows of {k}", x.len());
    let m = x.len() / k;
    let mut q = vec![0i8; x.len()];
    let d = x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).map(|(x, q)| quantize_block(x, q, true)).collect();
    Q8Rows { m, k, d, q }
}

impl Q8Matrix {
    /// From ggml Q8_0 bytes (34-byte blocks: f16 scale, 32 i8 quants) of an `[n, k]` matrix.
    pub fn from_ggml_q8_0(bytes: &[u8], n: usize, k: usize) -> Q8Matrix {
        assert!(k % QK == 0 && bytes.len() == n * k / QK * 34, "from_ggml_q8_0: {} bytes for [{n}, {k}]", bytes.len());
        let mut d = Vec::with_capacity(n * k / QK);
        let mut q = Vec::with_capacity(n * k);
        for b in bytes.chunks_exact(34) {
            d.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
            q.extend(b[2..].iter().map(|&v| v as i8));
        }
        Q8Matrix { n, k, d, q }
    }

    /// Quantizes an f32 `[n, k]` matrix to Q8_0 with f32 scales.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Q8Matrix {
        assert!(k % QK == 0 && w.len() == n * k, "quantize: {} values for [{n}, {k}]", w.len());
        let mut q = vec![0i8; w.len()];
        let d = w.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).map(|(x, q)| quantize_block(x, q, false)).collect();
        Q8Matrix { n, k, d, q }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// The weights as f32 (for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        self.q.iter().enumerate().map(|(i, &q)| q as f32 * self.d[i / QK]).collect()
    }

    /// `x @ self^T`: `[m, n]` row-major, for `x` quantized with [`quantize_rows`]. The weight rows
    /// are split in units over candle's CPU worker pool (the one its own kernels use, so the two
    /// never compete for cores); each unit is small enough that its weights stay in cache while
    /// every activation row passes over them.
    pub fn matmul(&self, x: &Q8Rows) -> Vec<f32> {
        assert_eq!(x.k, self.k, "matmul: activations of width {} against weights of width {}", x.k, self.k);
        let (m, n) = (x.m, self.n);
        let mut out = vec![0f32; m * n];
        let kernel = Kernel::detect();
        let units = n.div_ceil(UNIT);
        let dst = SharedOut(out.as_mut_ptr());
        let run = |range: std::ops::Range<usize>| {
            let (j0, j1) = (range.start * UNIT, (range.end * UNIT).min(n));
            // SAFETY: each call gets a disjoint range of weight rows, i.e. of output columns, and
            // `block` writes only columns j0..j1 of rows 0..m of the `m * n` buffer.
            unsafe { self.block(kernel, x, j0, j1, dst, n) };
        };
        if units > 1 && m * n * self.k >= PARALLEL_MIN_MACS {
            candle_core::utils::barrier_pool().execute_chunked(units, run);
        } else {
            run(0..units);
        }
        out
    }

    /// Writes outputs for weight rows `j0..j1` and every activation row into `out` (`[m, n]`).
    ///
    /// # Safety
    /// `out` points to `x.m * n` floats, and no other thread writes columns `j0..j1`.
    unsafe fn block(&self, kernel: Kernel, x: &Q8Rows, j0: usize, j1: usize, out: SharedOut, n: usize) {
        let (k, nb) = (self.k, self.k / QK);
        let mut i = 0;
        while i < x.m {
            let rm = (x.m - i).min(TM);
            let mut j = j0;
            while j < j1 {
                let rn = (j1 - j).min(TN);
                let a = Operand { d: &x.d[i * nb..], q: &x.q[i * k..], nb, k };
                let b = Operand { d: &self.d[j * nb..], q: &self.q[j * k..], nb, k };
                let mut tile = [[0f32; TN]; TM];
                kernel.tile(rm, rn, &a, &b, &mut tile);
                for (r, row) in tile.iter().enumerate().take(rm) {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), out.0.add((i + r) * n + j), rn);
                }
                j += rn;
            }
            i += rm;
        }
    }
}

/// Weight rows per unit of parallel work.
const UNIT: usize = 16;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// The output buffer, written by several workers at disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: workers write disjoint index sets (see `Q8Matrix::block`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Largest tile: activation rows × weight rows.
const TM: usize = 4;
const TN: usize = 4;

/// Rows of blocks starting at one row: scales `d[r * nb + b]`, quants `q[r * k + b * 32..]`.
struct Operand<'a> {
    d: &'a [f32],
    q: &'a [i8],
    nb: usize,
    k: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("POLYLLM_SCALAR_KERNELS").is_none() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    fn tile(self, rm: usize, rn: usize, a: &Operand, b: &Operand, out: &mut [[f32; TN]; TM]) {
        match self {
            Kernel::Scalar => scalar_tile(rm, rn, a, b, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` returned Avx2 only where the CPU has AVX2 and FMA; the operands
            // hold at least `rm` (activation) and `rn` (weight) full rows, which `block` ensures.
            Kernel::Avx2 => unsafe { avx2::tile(rm, rn, a, b, out) },
        }
    }
}

fn scalar_tile(rm: usize, rn: usize, a: &Operand, b: &Operand, out: &mut [[f32; TN]; TM]) {
    for (i, row) in out.iter_mut().enumerate().take(rm) {
        for (j, o) in row.iter_mut().enumerate().take(rn) {
            let mut sum = 0f32;
            for blk in 0..a.nb {
                let qa = &a.q[i * a.k + blk * QK..][..QK];
                let qb = &b.q[j * b.k + blk * QK..][..QK];
                let dot: i32 = qa.iter().zip(qb).map(|(&x, &y)| x as i32 * y as i32).sum();
                sum += (a.d[i * a.nb + blk] * b.d[j * b.nb + blk]) * dot as f32;
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Operand, QK, TM, TN};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One `RM × RN` tile over every block of the rows.
    #[inline(always)]
    unsafe fn tile_fixed<const RM: usize, const RN: usize>(a: &Operand, b: &Operand, out: &mut [[f32; TN]; TM]) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        let (ad, aq, bd, bq) = (a.d.as_ptr(), a.q.as_ptr(), b.d.as_ptr(), b.q.as_ptr());
        for blk in 0..a.nb {
            let mut w = [_mm256_setzero_si256(); RN];
            let mut wabs = [_mm256_setzero_si256(); RN];
            let mut dw = [_mm256_setzero_ps(); RN];
            for j in 0..RN {
                w[j] = _mm256_loadu_si256(bq.add(j * b.k + blk * QK) as *const __m256i);
                wabs[j] = _mm256_sign_epi8(w[j], w[j]);
                dw[j] = _mm256_broadcast_ss(&*bd.add(j * b.nb + blk));
            }
            for i in 0..RM {
                let x = _mm256_loadu_si256(aq.add(i * a.k + blk * QK) as *const __m256i);
                let da = _mm256_broadcast_ss(&*ad.add(i * a.nb + blk));
                for j in 0..RN {
                    // |w| · (x · sign(w)) in pairs of i16, then pairs of i32: the exact integer dot.
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[j], _mm256_sign_epi8(x, w[j])), ones);
                    acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(da, dw[j]), _mm256_cvtepi32_ps(p), acc[i][j]);
                }
            }
        }
        for i in 0..RM {
            for j in 0..RN {
                out[i][j] = hsum(acc[i][j]);
            }
        }
    }

    macro_rules! dispatch {
        ($rm:expr, $rn:expr, $a:expr, $b:expr, $out:expr; $(($m:literal, $n:literal)),*) => {
            match ($rm, $rn) {
                $(($m, $n) => tile_fixed::<$m, $n>($a, $b, $out),)*
                _ => unreachable!("tile {}x{}", $rm, $rn),
            }
        };
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(rm: usize, rn: usize, a: &Operand, b: &Operand, out: &mut [[f32; TN]; TM]) {
        dispatch!(rm, rn, a, b, out;
            (1, 1), (1, 2), (1, 3), (1, 4),
            (2, 1), (2, 2), (2, 3), (2, 4),
            (3, 1), (3, 2), (3, 3), (3, 4),
            (4, 1), (4, 2), (4, 3), (4, 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    fn reference(w: &Q8Matrix, x: &Q8Rows) -> Vec<f32> {
        let nb = w.k / QK;
        let mut out = vec![0f32; x.m * w.n];
        for i in 0..x.m {
            for j in 0..w.n {
                let mut s = 0f64;
                for b in 0..nb {
                    let dot: i64 = (0..QK).map(|t| x.q[i * w.k + b * QK + t] as i64 * w.q[j * w.k + b * QK + t] as i64).sum();
                    s += (x.d[i * nb + b] as f64) * (w.d[j * nb + b] as f64) * dot as f64;
                }
                out[i * w.n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matmul_matches_reference_for_every_tile_shape() {
        // Sizes that leave every remainder of the 4x4 tiles, and chunking over several threads.
        for (m, n, k) in [(1, 1, 32), (1, 7, 64), (3, 5, 96), (5, 9, 128), (9, 37, 64), (17, 130, 256)] {
            let w = Q8Matrix::quantize(&data(n * k, 7), n, k);
            let x = quantize_rows(&data(m * k, 99), k);
            let want = reference(&w, &x);
            let got = w.matmul(&x);
            for (g, r) in got.iter().zip(&want) {
                assert!((g - r).abs() <= 1e-4 * r.abs().max(1.0), "m={m} n={n} k={k}: {g} vs {r}");
            }
            // The scalar kernel agrees too.
            let (nb, mut tile) = (k / QK, [[0f32; TN]; TM]);
            let a = Operand { d: &x.d, q: &x.q, nb, k };
            let b = Operand { d: &w.d, q: &w.q, nb, k };
            scalar_tile(m.min(TM), n.min(TN), &a, &b, &mut tile);
            assert!((tile[0][0] - want[0]).abs() <= 1e-4 * want[0].abs().max(1.0));
        }
    }

    #[test]
    fn quantization_is_ggml_q8_0() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let r = quantize_rows(&x, 64);
        assert_eq!(r.m, 1);
        // The largest magnitude maps to ±127, zero blocks quantize to zeros with a zero scale.
        assert_eq!(r.q[0], -127);
        assert_eq!(*r.q[32..].iter().max().unwrap(), 127);
        let z = quantize_rows(&[0.0; 32], 32);
        assert_eq!((z.d[0], z.q.iter().all(|&v| v == 0)), (0.0, true));
        // Round trip within half a step.
        let w = Q8Matrix::quantize(&x, 2, 32);
        for (a, b) in w.dequantize().iter().zip(&x) {
            assert!((a - b).abs() <= w.d[0].max(w.d[1]) / 2.0 + 1e-6);
        }
        // ggml bytes: scale then quants.
        let mut bytes = f16::from_f32(0.5).to_le_bytes().to_vec();
        bytes.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let g = Q8Matrix::from_ggml_q8_0(&bytes, 1, 32);
        assert_eq!(g.dequantize()[0], -8.0);
        assert_eq!(g.dequantize()[31], 7.5);
    }
}
