//! One-token products (`1 × k` activations times a `[n, k]` matrix) for Q4_K and Q6_K matrices,
//! read in place from the file's own blocks.
//!
//! candle multiplies a decode step's K-quant matrices with tiles that widen every Q4_K scale and
//! min to f32 (6 bits read per weight instead of 4.5) and with an AVX2 loop for Q6_K; on the
//! 1.5B model, whose matrices are all K-quants, those two took 68% of a decode step (perf).
//! [`KMatrix::gemv_many`] reads the 144-byte Q4_K and 210-byte Q6_K blocks as they are in the
//! file and multiplies them with AVX-512 VNNI: unpacked quants times Q8_K activations with
//! `vpmaddubsw`, then weighted by the sub-block scales with `vpdpwssd`, so every sub-block's integer
//! sum is the exact one of ggml's reference (`ggml_vec_dot_q4_K_q8_K`, `..._q6_K_q8_K`) and only the
//! order of the float additions differs.
//!
//! Activations are quantized to Q8_K like candle's `BlockQ8K::from_float` (ggml's
//! `quantize_row_q8_K`). Products of several activation rows (prefill) stay with candle, whose
//! tiles reuse each weight for every row.
use half::f16;

/// Weights per super-block.
pub const QK_K: usize = 256;
const Q4K_BYTES: usize = 144;
const Q6K_BYTES: usize = 210;

/// The K-quant block types this module multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KType {
    Q4K,
    Q6K,
}

impl KType {
    fn block_bytes(self) -> usize {
        match self {
            KType::Q4K => Q4K_BYTES,
            KType::Q6K => Q6K_BYTES,
        }
    }
}

/// Where a matrix's blocks live: a `[n, k]` row-major run of `n * k / 256` blocks.
#[derive(Clone, Copy)]
pub struct KView<'a> {
    pub ty: KType,
    pub n: usize,
    pub k: usize,
    pub bytes: &'a [u8],
}

impl KView<'_> {
    fn row(&self, j: usize) -> &[u8] {
        let rb = self.k / QK_K * self.ty.block_bytes();
        &self.bytes[j * rb..(j + 1) * rb]
    }
}

/// One row of activations quantized to Q8_K: per super-block a scale, 256 quants (also kept in
/// the sub-block order the Q4_K kernel reads) and the sums of each 16 quants.
pub struct Q8KRow {
    k: usize,
    d: Vec<f32>,
    qs: Vec<i8>,
    /// `qs` with each block's 32-quant sub-blocks in the order 0, 2, 1, 3, 4, 6, 5, 7: the order
    /// in which a Q4_K block's low and high nibbles hold them.
    q4k_order: Vec<i8>,
    bsums: Vec<i16>,
}

/// Quantizes `x` (`k` values, a multiple of 256) to Q8_K as candle's `BlockQ8K::from_float` does.
pub fn quantize_q8k(x: &[f32]) -> Q8KRow {
    assert!(x.len() % QK_K == 0, "quantize_q8k: {} values, not a multiple of {QK_K}", x.len());
    let nb = x.len() / QK_K;
    let mut row = Q8KRow { k: x.len(), d: vec![0.0; nb], qs: vec![0; x.len()], q4k_order: vec![0; x.len()], bsums: vec![0; nb * 16] };
    for b in 0..nb {
        let xs = &x[b * QK_K..(b + 1) * QK_K];
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            continue;
        }
        let iscale = -127f32 / max;
        let qs = &mut row.qs[b * QK_K..(b + 1) * QK_K];
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
        }
        for (s, chunk) in row.bsums[b * 16..(b + 1) * 16].iter_mut().zip(qs.chunks_exact(16)) {
            *s = chunk.iter().map(|&q| q as i16).sum();
        }
        row.d[b] = 1.0 / iscale;
        for (slot, sub) in [0, 2, 1, 3, 4, 6, 5, 7].into_iter().enumerate() {
            row.q4k_order[b * QK_K + slot * 32..][..32].copy_from_slice(&qs[sub * 32..sub * 32 + 32]);
        }
    }
    row
}

fn f16_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Scale and min `j` (0..8) of a Q4_K block from its 12 packed bytes (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The reference: one row times `x`, integer sums per sub-block as ggml's scalar code does them.
fn row_scalar(ty: KType, w: &[u8], x: &Q8KRow) -> f32 {
    let mut sum = 0f32;
    for b in 0..x.k / QK_K {
        let q8 = &x.qs[b * QK_K..(b + 1) * QK_K];
        let yd = x.d[b];
        match ty {
            KType::Q4K => {
                let blk = &w[b * Q4K_BYTES..(b + 1) * Q4K_BYTES];
                let (d, dmin, scales, qs) = (f16_at(&blk[0..]), f16_at(&blk[2..]), &blk[4..16], &blk[16..]);
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, scales);
                    let chunk = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                    let dot: i32 = (0..32)
                        .map(|l| {
                            let q = if j % 2 == 0 { chunk[l] & 0xF } else { chunk[l] >> 4 };
                            q as i32 * q8[j * 32 + l] as i32
                        })
                        .sum();
                    sumi += sc as i32 * dot;
                    summ += m as i32 * (x.bsums[b * 16 + 2 * j] as i32 + x.bsums[b * 16 + 2 * j + 1] as i32);
                }
                sum += yd * d * sumi as f32 - yd * dmin * summ as f32;
            }
            KType::Q6K => {
                let blk = &w[b * Q6K_BYTES..(b + 1) * Q6K_BYTES];
                let (ql, qh, sc, d) = (&blk[0..128], &blk[128..192], &blk[192..208], f16_at(&blk[208..]));
                let mut sumi = 0i32;
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    for l in 0..32 {
                        let q = [
                            (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                            (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                        ];
                        for (t, &q) in q.iter().enumerate() {
                            let y = 128 * half + 32 * t + l;
                            sumi += (sc[y / 16] as i8) as i32 * (q as i32 - 32) * q8[y] as i32;
                        }
                    }
                }
                sum += yd * d * sumi as f32;
            }
        }
    }
    sum
}

/// Whether this CPU runs the AVX-512 kernels (`POLYLLM_KERNEL` naming another kernel turns them
/// off, so that comparisons can run candle's instead).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let wanted = std::env::var("POLYLLM_KERNEL").unwrap_or_default().to_lowercase();
        #[cfg(target_arch = "x86_64")]
        {
            (wanted.is_empty() || wanted == "vnni512")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = wanted;
            false
        }
    })
}

/// Whether `POLYLLM_Q4K_GEMV=1` asks for our one-token Q4_K kernel. It is faster than candle's
/// tiles (qwen-1.5b decode 1.17-1.21x llama.cpp with it, 0.88x without, measured) but adds each
/// row's floats in sixteen lanes where candle adds them sub-block by sub-block, so greedy tokens
/// are not candle's: top-1 agreement 0.985-0.990 on gemma, 0.979 on qwen-1.5b (before the Q6_K
/// kernel matched candle). Off by default, so that `--kernels fast` keeps candle's numerics.
pub fn q4k_opted_in() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| matches!(std::env::var("POLYLLM_Q4K_GEMV").as_deref(), Ok("1") | Ok("true")))
}

fn row_fast(ty: KType, w: &[u8], x: &Q8KRow) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available` checked the features; `w` holds k / 256 blocks of `ty` (KView::row)
        // and `x` k quantized activations.
        return unsafe {
            match ty {
                KType::Q4K => x86::q4k_row(w, x),
                KType::Q6K => x86::q6k_row(w, x),
            }
        };
    }
    row_scalar(ty, w, x)
}

/// Rows per unit of parallel work.
const UNIT: usize = 16;

#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: workers write disjoint index ranges (see `gemv_many`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `x @ w^T` for each of `ws` (matrices of `x`'s width): one dispatch to candle's worker pool for
/// all of them, units of 16 rows numbered across the matrices.
pub fn gemv_many(ws: &[KView], x: &Q8KRow) -> Vec<Vec<f32>> {
    gemv_many_with(ws, x, row_fast)
}

fn gemv_many_with(ws: &[KView], x: &Q8KRow, row: fn(KType, &[u8], &Q8KRow) -> f32) -> Vec<Vec<f32>> {
    for w in ws {
        assert_eq!(w.k, x.k, "gemv: activations of width {} against weights of width {}", x.k, w.k);
        assert_eq!(w.bytes.len(), w.n * w.k / QK_K * w.ty.block_bytes(), "gemv: {:?} matrix of {} bytes", w.ty, w.bytes.len());
    }
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.n]).collect();
    let units = super::Units::new(ws.iter().map(|w| w.n).collect(), UNIT);
    let dsts: Vec<SharedOut> = outs.iter_mut().map(|o| SharedOut(o.as_mut_ptr())).collect();
    let run = |range: std::ops::Range<usize>| {
        units.each(range, |t, j0, j1| {
            for j in j0..j1 {
                // SAFETY: each call gets a disjoint range of units, i.e. of rows of each matrix,
                // and writes only those entries of that matrix's `n` outputs.
                unsafe { *dsts[t].0.add(j) = row(ws[t].ty, ws[t].row(j), x) };
            }
        });
    };
    let n_units = units.count();
    if n_units > 1 {
        candle_core::utils::barrier_pool().execute_chunked(n_units, run);
    } else {
        run(0..n_units);
    }
    outs
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q8KRow, Q4K_BYTES, Q6K_BYTES, QK_K};
    use std::arch::x86_64::*;

    /// How far ahead of the block being multiplied the weights are fetched into cache, in bytes.
    /// The weights stream from memory once per token; without this the loads of each block
    /// stalled for most of the kernel's time (perf annotate), the hardware prefetcher not
    /// keeping ahead. (Rows follow each other in memory, so this runs on into the next row.)
    const PREFETCH_AHEAD: usize = 2048;

    /// Fetches the cache lines of the block `PREFETCH_AHEAD` bytes after the `len`-byte one at `p`.
    #[inline(always)]
    unsafe fn prefetch(p: *const u8, len: usize) {
        let ahead = p.wrapping_add(PREFETCH_AHEAD) as *const i8;
        let mut off = 0;
        while off < len + 63 {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off));
            off += 64;
        }
    }

    /// The f16 at `p`, converted in registers (a call here would spill every vector register).
    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const u16) as i32)))
    }

    /// i16 lane indices: lanes 0..16 take scale `a`, lanes 16..32 scale `b`.
    const fn pair(a: i16, b: i16) -> [i16; 32] {
        let mut v = [0i16; 32];
        let mut i = 0;
        while i < 32 {
            v[i] = if i < 16 { a } else { b };
            i += 1;
        }
        v
    }

    /// i16 lane indices: lane `i` takes scale `first + i / 8`.
    const fn quad(first: i16) -> [i16; 32] {
        let mut v = [0i16; 32];
        let mut i = 0;
        while i < 32 {
            v[i] = first + (i / 8) as i16;
            i += 1;
        }
        v
    }

    const Q4K_SCALES: [[i16; 32]; 4] = [pair(0, 2), pair(1, 3), pair(4, 6), pair(5, 7)];
    const Q6K_SCALES: [[i16; 32]; 4] = [quad(0), quad(4), quad(8), quad(12)];

    #[inline(always)]
    unsafe fn idx(v: &[i16; 32]) -> __m512i {
        _mm512_loadu_si512(v.as_ptr() as *const _)
    }

    /// One Q4_K row times `x`. Per block the 128 bytes of nibbles are two 64-byte loads; their low
    /// and high nibbles are four vectors holding sub-blocks (0, 2), (1, 3), (4, 6), (5, 7), which
    /// `x.q4k_order` lines up with. `vpmaddubsw` forms pairs of products (at most 2·15·128, no
    /// saturation), `vpdpwssd` weights them by their sub-block's 6-bit scale into i32 lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `w` holds `x.k / 256` Q4_K blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub unsafe fn q4k_row(w: &[u8], x: &Q8KRow) -> f32 {
        const K1: u32 = 0x3f3f3f3f;
        const K2: u32 = 0x0f0f0f0f;
        const K3: u32 = 0x03030303;
        let nib = _mm512_set1_epi8(0x0F);
        // mins of sub-blocks 0..8 (bytes 8..16 of the unpacked scales), each twice, as bytes.
        let dup_mins = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
        let (i0, i1, i2, i3) = (idx(&Q4K_SCALES[0]), idx(&Q4K_SCALES[1]), idx(&Q4K_SCALES[2]), idx(&Q4K_SCALES[3]));
        let mut acc = _mm512_setzero_ps();
        let mut accm = _mm256_setzero_ps();
        for b in 0..x.k / QK_K {
            let blk = w.as_ptr().add(b * Q4K_BYTES);
            prefetch(blk, Q4K_BYTES);
            let yd = *x.d.get_unchecked(b);
            let (d, dmin) = (yd * f16_at(blk), yd * f16_at(blk.add(2)));
            let word = |i: usize| std::ptr::read_unaligned(blk.add(4 + 4 * i) as *const u32);
            let mut u = [word(0), word(1), word(2), 0];
            u[3] = ((u[2] >> 4) & K2) | (((u[1] >> 6) & K3) << 4);
            let uaux = u[1] & K1;
            u[1] = (u[2] & K2) | (((u[0] >> 6) & K3) << 4);
            u[2] = uaux;
            u[0] &= K1;
            // bytes 0..8: the scales, 8..16: the mins.
            let sm = _mm_setr_epi32(u[0] as i32, u[1] as i32, u[2] as i32, u[3] as i32);
            let bsums = _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16) as *const _);
            let mins = _mm256_madd_epi16(bsums, _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup_mins)));
            accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(mins), accm);

            let sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm));
            let q0 = _mm512_loadu_si512(blk.add(16) as *const _);
            let q1 = _mm512_loadu_si512(blk.add(80) as *const _);
            let a = x.q4k_order.as_ptr().add(b * QK_K);
            let p0 = _mm512_maddubs_epi16(_mm512_and_si512(q0, nib), _mm512_loadu_si512(a as *const _));
            let p1 = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(q0, 4), nib), _mm512_loadu_si512(a.add(64) as *const _));
            let p2 = _mm512_maddubs_epi16(_mm512_and_si512(q1, nib), _mm512_loadu_si512(a.add(128) as *const _));
            let p3 = _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(q1, 4), nib), _mm512_loadu_si512(a.add(192) as *const _));
            let s0 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), p0, _mm512_permutexvar_epi16(i0, sc));
            let s1 = _mm512_dpwssd_epi32(_mm512_setzero_si512(), p1, _mm512_permutexvar_epi16(i1, sc));
            let s0 = _mm512_dpwssd_epi32(s0, p2, _mm512_permutexvar_epi16(i2, sc));
            let s1 = _mm512_dpwssd_epi32(s1, p3, _mm512_permutexvar_epi16(i3, sc));
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc);
        }
        let m = _mm_add_ps(_mm256_castps256_ps128(accm), _mm256_extractf128_ps(accm, 1));
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(m)
    }

    /// One Q6_K row times `x`. Per 128-weight half, the 64 bytes of low nibbles and the 32 bytes of
    /// high bits (loaded into both 256-bit halves and shifted per half) give two vectors of 6-bit
    /// quants in the activations' own order; the `- 32` of every weight is taken off once per block
    /// as `32 · Σ scale · bsum`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `w` holds `x.k / 256` Q6_K blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub unsafe fn q6k_row(w: &[u8], x: &Q8KRow) -> f32 {
        let nib = _mm512_set1_epi8(0x0F);
        let top = _mm512_set1_epi8(0x30);
        // Shift counts per 16-bit lane, low 256 bits then high 256 bits.
        let shl_a = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        let shr_b = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        let ix = [idx(&Q6K_SCALES[0]), idx(&Q6K_SCALES[1]), idx(&Q6K_SCALES[2]), idx(&Q6K_SCALES[3])];
        let m32 = _mm512_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for b in 0..x.k / QK_K {
            let blk = w.as_ptr().add(b * Q6K_BYTES);
            prefetch(blk, Q6K_BYTES);
            let d = *x.d.get_unchecked(b) * f16_at(blk.add(208));
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const _));
            let sc = _mm512_castsi256_si512(sc16);
            let a = x.qs.as_ptr().add(b * QK_K);
            let mut s = _mm512_setzero_si512();
            for half in 0..2 {
                let l = _mm512_loadu_si512(blk.add(64 * half) as *const _);
                let h = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * half) as *const _));
                let va = _mm512_or_si512(_mm512_and_si512(l, nib), _mm512_and_si512(_mm512_sllv_epi16(h, shl_a), top));
                let vb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), nib), _mm512_and_si512(_mm512_srlv_epi16(h, shr_b), top));
                let (xa, xb) = (_mm512_loadu_si512(a.add(128 * half) as *const _), _mm512_loadu_si512(a.add(128 * half + 64) as *const _));
                // The `- 32` of each weight taken off per pair of products, as candle's kernel does,
                // so that each i32 lane holds the same products as its lane does.
                let pa = _mm512_sub_epi16(_mm512_maddubs_epi16(va, xa), _mm512_maddubs_epi16(m32, xa));
                let pb = _mm512_sub_epi16(_mm512_maddubs_epi16(vb, xb), _mm512_maddubs_epi16(m32, xb));
                s = _mm512_dpwssd_epi32(s, pa, _mm512_permutexvar_epi16(ix[2 * half], sc));
                s = _mm512_dpwssd_epi32(s, pb, _mm512_permutexvar_epi16(ix[2 * half + 1], sc));
            }
            // Lane l of candle's 256-bit sum covers bytes 4l..4l + 4 of each 32-quant group: our
            // lanes l and l + 8. Integer sums are exact, so the two are equal, and the floats are
            // then added in its order.
            let s8 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s8), acc);
        }
        hsum8(acc)
    }

    /// candle's `hsum_float_8`: the same additions in the same order.
    #[inline(always)]
    unsafe fn hsum8(x: __m256) -> f32 {
        let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
        let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        let r = _mm_add_ss(r, _mm_movehdup_ps(r));
        _mm_cvtss_f32(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
    use candle_core::{Device, Module, Tensor};

    /// A deterministic generator (xorshift), enough for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f32(&mut self) -> f32 {
            (self.next() % 20001) as f32 / 10000.0 - 1.0
        }
    }

    /// `n` rows of `k` weights as blocks of `ty`: random quants and scales, small positive `d`.
    fn random_matrix(ty: KType, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
        let mut bytes = vec![0u8; n * k / QK_K * ty.block_bytes()];
        for blk in bytes.chunks_exact_mut(ty.block_bytes()) {
            for b in blk.iter_mut() {
                *b = rng.next() as u8;
            }
            let d = f16::from_f32(0.001 + (rng.next() % 1000) as f32 * 1e-5).to_le_bytes();
            match ty {
                KType::Q4K => {
                    blk[0..2].copy_from_slice(&d);
                    blk[2..4].copy_from_slice(&f16::from_f32(0.0005 + (rng.next() % 1000) as f32 * 1e-6).to_le_bytes());
                }
                KType::Q6K => blk[208..210].copy_from_slice(&d),
            }
        }
        bytes
    }

    fn candle_gemv(ty: KType, bytes: &[u8], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
        let dtype = match ty {
            KType::Q4K => GgmlDType::Q4K,
            KType::Q6K => GgmlDType::Q6K,
        };
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &Device::Cpu, dtype).unwrap();
        let qmm = QMatMul::from_qtensor(QTensor::new(storage, (n, k)).unwrap()).unwrap();
        let xs = Tensor::from_slice(x, (1, k), &Device::Cpu).unwrap();
        qmm.forward(&xs).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Every output of the fast kernel, the scalar reference and candle's kernel agree to float
    /// rounding, for both block types, with several matrices in one call.
    #[test]
    fn kernels_match_the_reference_and_candle() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for &(n, k) in &[(48, 256), (37, 1536), (20, 2304)] {
            let x: Vec<f32> = (0..k).map(|_| rng.f32() * 3.0).collect();
            let q = quantize_q8k(&x);
            let mats: Vec<(KType, Vec<u8>)> = [KType::Q4K, KType::Q6K].into_iter().map(|ty| (ty, random_matrix(ty, n, k, &mut rng))).collect();
            let views: Vec<KView> = mats.iter().map(|(ty, b)| KView { ty: *ty, n, k, bytes: b }).collect();
            let fast = gemv_many(&views, &q);
            let scalar = gemv_many_with(&views, &q, row_scalar);
            for (((ty, bytes), f), s) in mats.iter().zip(&fast).zip(&scalar) {
                let theirs = candle_gemv(*ty, bytes, n, k, &x);
                for j in 0..n {
                    let tol = 1e-4 * (1.0 + s[j].abs());
                    assert!((f[j] - s[j]).abs() <= tol, "{ty:?} {n}x{k} row {j}: fast {} scalar {}", f[j], s[j]);
                    assert!((theirs[j] - s[j]).abs() <= tol, "{ty:?} {n}x{k} row {j}: candle {} scalar {}", theirs[j], s[j]);
                    if *ty == KType::Q6K && available() {
                        // Bit for bit: the same lanes and the same float order as candle's kernel.
                        assert_eq!(f[j].to_bits(), theirs[j].to_bits(), "{ty:?} {n}x{k} row {j}: fast {} candle {}", f[j], theirs[j]);
                    }
                }
                assert!(s.iter().any(|v| v.abs() > 1e-3), "{ty:?}: degenerate test data");
            }
        }
    }

    /// The quantization is candle's, quant for quant.
    #[test]
    fn quantization_matches_candles() {
        use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
        let mut rng = Rng(42);
        let x: Vec<f32> = (0..512).map(|_| rng.f32()).collect();
        let ours = quantize_q8k(&x);
        let mut theirs = vec![BlockQ8K::zeros(); 2];
        BlockQ8K::from_float(&x, &mut theirs);
        // BlockQ8K's fields are private: compare through its to_float, the dequantized values.
        let mut deq = vec![0f32; 512];
        BlockQ8K::to_float(&theirs, &mut deq);
        for i in 0..512 {
            assert_eq!(deq[i], ours.d[i / QK_K] * ours.qs[i] as f32, "value {i}");
        }
        assert!(quantize_q8k(&[0.0; 256]).qs.iter().all(|&q| q == 0));
    }
}
