//! Q8_0-style matrices in our own layout, and the CPU kernels that multiply activations by them.
//!
//! A [`Q8Matrix`] keeps ggml's numerics (blocks of 32 signed weights sharing one scale, weight =
//! `d * q`) but not its byte layout: the scales are stored as f32 in one array and the quants in
//! another, so the inner loop never converts an f16. The quants are kept in one of two forms
//! ([`Quants`]): one i8 per weight (Q8_0 matrices, and Q4_0 widened exactly), or Q5_0's own packing
//! (4 low bits in nibbles plus a word of fifth bits, 20 bytes per block instead of 32), unpacked in
//! registers, so that a decode step reads 24 bytes per 32 weights instead of 36.
//!
//! Activations are quantized per block to Q8_0 exactly as ggml's `quantize_row_q8_0` does (scale
//! `amax / 127` rounded to f16, quants `round(x / scale)` with the unrounded scale), so a product
//! matches what candle's and llama.cpp's kernels compute up to the order of float additions; each
//! block's integer dot product is exact in every kernel and both quant forms.
//!
//! [`Q8Matrix::matmul`] computes tiles of up to 4 activation rows × 4 weight rows at once: each
//! weight block loaded (and unpacked) is used for every activation row of the tile, which is what
//! makes prompt prefill fast (candle multiplies one row at a time). Kernels, picked at run time:
//! AVX-512 VNNI or AVX-VNNI (`vpdpbusd`, one instruction per block product), AVX2 (`maddubs` and
//! `madd`), and a scalar loop elsewhere.
use super::OutPtr;
use half::f16;

/// Weights per block.
pub const QK: usize = 32;

/// The quants of every block, row by row.
enum Quants {
    /// One i8 per weight.
    I8(Vec<i8>),
    /// Q5_0's packing: per block 16 bytes of nibbles (weight `t` in the low nibble of byte `t`,
    /// weight `t + 16` in the high one) and a u32 whose bit `t` is weight `t`'s fifth bit; the
    /// weight is `(nibble | bit << 4) - 16`.
    Q5 { qs: Vec<u8>, qh: Vec<u32> },
}

/// A row-major `[n, k]` matrix of 32-weight blocks (`x @ w^T` gives `n` outputs per row of `x`).
pub struct Q8Matrix {
    n: usize,
    k: usize,
    /// `n * k / 32` block scales, row by row.
    d: Vec<f32>,
    quants: Quants,
}

/// Rows of activations quantized to Q8_0 blocks.
pub struct Q8Rows {
    pub(super) m: usize,
    pub(super) k: usize,
    /// Scale of block `b` of row `r` at `r * k / 32 + b`.
    pub(super) d: Vec<f32>,
    /// Quant `t` of row `r` at `r * k + t`.
    pub(super) q: Vec<i8>,
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

impl Q8Rows {
    /// The quantized values as f32 (for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        self.q.iter().enumerate().map(|(i, &q)| self.d[i / QK] * q as f32).collect()
    }
}

/// Quantizes `x` (rows of `k` values, `k` a multiple of 32) to Q8_0 blocks.
pub fn quantize_rows(x: &[f32], k: usize) -> Q8Rows {
    assert!(k.is_multiple_of(QK) && x.len().is_multiple_of(k), "quantize_rows: {} values in rows of {k}", x.len());
    let m = x.len() / k;
    let mut q = vec![0i8; x.len()];
    let d = x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).map(|(x, q)| quantize_block(x, q, true)).collect();
    Q8Rows { m, k, d, q }
}

fn f16_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

impl Q8Matrix {
    /// From ggml Q8_0 bytes (34-byte blocks: f16 scale, 32 i8 quants) of an `[n, k]` matrix.
    pub fn from_ggml_q8_0(bytes: &[u8], n: usize, k: usize) -> Q8Matrix {
        assert!(
            k.is_multiple_of(QK) && bytes.len() == n * k / QK * 34,
            "from_ggml_q8_0: {} bytes for [{n}, {k}]",
            bytes.len()
        );
        let mut d = Vec::with_capacity(n * k / QK);
        let mut q = Vec::with_capacity(n * k);
        for b in bytes.chunks_exact(34) {
            d.push(f16_at(b));
            q.extend(b[2..].iter().map(|&v| v as i8));
        }
        Q8Matrix { n, k, d, quants: Quants::I8(q) }
    }

    /// From ggml Q5_0 bytes (22-byte blocks: f16 scale, u32 of fifth bits, 16 bytes of nibbles),
    /// kept packed.
    pub fn from_ggml_q5_0(bytes: &[u8], n: usize, k: usize) -> Q8Matrix {
        assert!(
            k.is_multiple_of(QK) && bytes.len() == n * k / QK * 22,
            "from_ggml_q5_0: {} bytes for [{n}, {k}]",
            bytes.len()
        );
        let blocks = n * k / QK;
        let (mut d, mut qh, mut qs) =
            (Vec::with_capacity(blocks), Vec::with_capacity(blocks), Vec::with_capacity(blocks * 16));
        for b in bytes.chunks_exact(22) {
            d.push(f16_at(b));
            qh.push(u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
            qs.extend_from_slice(&b[6..22]);
        }
        Q8Matrix { n, k, d, quants: Quants::Q5 { qs, qh } }
    }

    /// Quantizes an f32 `[n, k]` matrix to Q8_0 with f32 scales.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Q8Matrix {
        assert!(k.is_multiple_of(QK) && w.len() == n * k, "quantize: {} values for [{n}, {k}]", w.len());
        let mut q = vec![0i8; w.len()];
        let d = w.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).map(|(x, q)| quantize_block(x, q, false)).collect();
        Q8Matrix { n, k, d, quants: Quants::I8(q) }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes held by the weights (scales and quants).
    pub fn bytes(&self) -> usize {
        self.d.len() * 4
            + match &self.quants {
                Quants::I8(q) => q.len(),
                Quants::Q5 { qs, qh } => qs.len() + qh.len() * 4,
            }
    }

    /// The 32 quants of block `blk` (counted over the whole matrix).
    fn block_quants(&self, blk: usize) -> [i8; QK] {
        match &self.quants {
            Quants::I8(q) => q[blk * QK..][..QK].try_into().unwrap(),
            Quants::Q5 { qs, qh } => {
                let (qs, qh) = (&qs[blk * 16..][..16], qh[blk]);
                std::array::from_fn(|t| {
                    let nibble = if t < 16 { qs[t] & 0x0F } else { qs[t - 16] >> 4 };
                    (nibble | (((qh >> t) & 1) as u8) << 4) as i8 - 16
                })
            }
        }
    }

    /// Block `blk`'s 32 quants as i8 into `dst`.
    fn unpack_block(&self, blk: usize, dst: &mut [i8]) {
        #[cfg(target_arch = "x86_64")]
        if let (Quants::Q5 { qs, qh }, true) = (&self.quants, is_x86_feature_detected!("avx2")) {
            assert!(dst.len() == QK && blk < qh.len());
            // SAFETY: AVX2 checked; block `blk` exists and `dst` holds 32 bytes.
            return unsafe { x86::unpack_q5(qs, qh, blk, dst) };
        }
        dst.copy_from_slice(&self.block_quants(blk));
    }

    /// Row `j` as f32, appended to `out`: what ggml's (and candle's) dequantization of the file's
    /// blocks gives, value for value (`quant as f32 * scale`).
    pub fn dequantize_row(&self, j: usize, out: &mut Vec<f32>) {
        let nb = self.k / QK;
        for b in j * nb..(j + 1) * nb {
            out.extend(self.block_quants(b).map(|q| q as f32 * self.d[b]));
        }
    }

    /// The weights as f32 (for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.d.len()).flat_map(|b| self.block_quants(b).map(|q| q as f32 * self.d[b])).collect()
    }

    /// `x @ self^T`: `[m, n]` row-major, for `x` quantized with [`quantize_rows`]. The weight rows
    /// are split in units over candle's CPU worker pool (the one its own kernels use, so the two
    /// never compete for cores); each unit is small enough that its weights stay in cache while
    /// every activation row passes over them.
    pub fn matmul(&self, x: &Q8Rows) -> Vec<f32> {
        self.matmul_with(Kernel::detect(), x)
    }

    fn matmul_with(&self, kernel: Kernel, x: &Q8Rows) -> Vec<f32> {
        Q8Matrix::matmul_many_with(kernel, &[self], x).pop().unwrap()
    }

    /// `x @ w^T` for each of `ws` (matrices of the same width): one quantization of `x` and one
    /// dispatch to the worker pool for all of them, which is what a one-token step needs for its
    /// q/k/v and gate/up projections (each dispatch costs a few microseconds of waking workers).
    pub fn matmul_many(ws: &[&Q8Matrix], x: &Q8Rows) -> Vec<Vec<f32>> {
        Q8Matrix::matmul_many_with(Kernel::detect(), ws, x)
    }

    fn matmul_many_with(kernel: Kernel, ws: &[&Q8Matrix], x: &Q8Rows) -> Vec<Vec<f32>> {
        for w in ws {
            assert_eq!(x.k, w.k, "matmul: activations of width {} against weights of width {}", x.k, w.k);
        }
        let m = x.m;
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; m * w.n]).collect();
        let units = super::Units::new(ws.iter().map(|w| w.n).collect(), UNIT);
        let dsts: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
        let run = |range: std::ops::Range<usize>| {
            units.each(range, |t, j0, j1| {
                // SAFETY: each call gets a disjoint range of units, i.e. of output columns of each
                // matrix, and `block` writes only columns j0..j1 of rows 0..m of the `m * n`
                // buffer of matrix t.
                unsafe { ws[t].block(kernel, x, j0, j1, dsts[t], ws[t].n) };
            });
        };
        let macs: usize = ws.iter().map(|w| m * w.n * w.k).sum();
        units.dispatch(macs >= PARALLEL_MIN_MACS, run);
        outs
    }

    /// Writes outputs for weight rows `j0..j1` and every activation row into `out` (`[m, n]`).
    ///
    /// # Safety
    /// `out` points to `x.m * n` floats, and no other thread writes columns `j0..j1`.
    unsafe fn block(&self, kernel: Kernel, x: &Q8Rows, j0: usize, j1: usize, out: OutPtr, n: usize) {
        let (k, nb) = (self.k, self.k / QK);
        let mut i = 0;
        while i < x.m {
            let rm = (x.m - i).min(TM);
            let mut j = j0;
            while j < j1 {
                let rn = (j1 - j).min(TN);
                let a = Acts { d: &x.d[i * nb..], q: &x.q[i * k..], nb, k };
                let b = Weights { m: self, row: j, nb };
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

impl super::tile::TileRows for Q8Matrix {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn in_place(&self, n0: usize) -> Option<*const i8> {
        match &self.quants {
            Quants::I8(q) if n0 + super::tile::T <= self.n => Some(q[n0 * self.k..].as_ptr()),
            _ => None,
        }
    }

    fn quants(&self, n0: usize, take: usize, rows: &mut [i8]) {
        let (k, nb) = (self.k, self.k / QK);
        for r in 0..take {
            for b in 0..nb {
                self.unpack_block((n0 + r) * nb + b, &mut rows[r * k + b * QK..][..QK]);
            }
        }
    }

    fn scales(&self, n0: usize, take: usize, dw: &mut [[f32; super::tile::T]], _mw: &mut [[f32; super::tile::T]]) {
        let nb = self.k / QK;
        for r in 0..take {
            for (b, dw) in dw.iter_mut().enumerate() {
                dw[r] = self.d[(n0 + r) * nb + b];
            }
        }
    }
}

/// Weight rows per unit of parallel work.
const UNIT: usize = 16;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// Largest tile: activation rows × weight rows.
const TM: usize = 4;
const TN: usize = 4;

/// Activation rows starting at one row: scales `d[r * nb + b]`, quants `q[r * k + b * 32..]`.
struct Acts<'a> {
    d: &'a [f32],
    q: &'a [i8],
    nb: usize,
    k: usize,
}

/// Weight rows of `m` starting at `row`.
struct Weights<'a> {
    m: &'a Q8Matrix,
    row: usize,
    nb: usize,
}

impl Weights<'_> {
    /// Index of block `blk` of the `j`-th row of the tile.
    fn at(&self, j: usize, blk: usize) -> usize {
        (self.row + j) * self.nb + blk
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// `vpdpbusd` on 256-bit registers: AVX-512 VNNI (with VL) or AVX-VNNI.
    #[cfg(target_arch = "x86_64")]
    Vnni512,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs; `POLYLLM_KERNEL=scalar|avx2|avxvnni|vnni512` picks
    /// another one it can run (for comparisons).
    fn detect() -> Kernel {
        static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            let all = Kernel::available();
            let wanted = std::env::var("POLYLLM_KERNEL").unwrap_or_default().to_lowercase();
            all.iter().copied().find(|k| format!("{k:?}").to_lowercase() == wanted).unwrap_or(*all.last().unwrap())
        })
    }

    /// Every kernel this CPU can run, slowest first.
    fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut v = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Kernel::Avx2);
                if is_x86_feature_detected!("avxvnni") {
                    v.push(Kernel::AvxVnni);
                }
                if is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bw")
                {
                    v.push(Kernel::Vnni512);
                }
            }
        }
        v
    }

    fn tile(self, rm: usize, rn: usize, a: &Acts, b: &Weights, out: &mut [[f32; TN]; TM]) {
        match self {
            Kernel::Scalar => scalar_tile(rm, rn, a, b, out),
            // SAFETY (all three): `available` offered these only where the CPU has the features
            // they are compiled for; the operands hold at least `rm` (activation) and `rn`
            // (weight) full rows, which `block` ensures.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::tile_avx2(rm, rn, a, b, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => unsafe { x86::tile_avxvnni(rm, rn, a, b, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni512 => unsafe { x86::tile_vnni512(rm, rn, a, b, out) },
        }
    }
}

fn scalar_tile(rm: usize, rn: usize, a: &Acts, b: &Weights, out: &mut [[f32; TN]; TM]) {
    for (i, row) in out.iter_mut().enumerate().take(rm) {
        for (j, o) in row.iter_mut().enumerate().take(rn) {
            let mut sum = 0f32;
            for blk in 0..a.nb {
                let qa = &a.q[i * a.k + blk * QK..][..QK];
                let qb = b.m.block_quants(b.at(j, blk));
                let dot: i32 = qa.iter().zip(qb).map(|(&x, y)| x as i32 * y as i32).sum();
                sum += (a.d[i * a.nb + blk] * b.m.d[b.at(j, blk)]) * dot as f32;
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Acts, Quants, Weights, QK, TM, TN};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// 0xFF in byte `t` where bit `t` of `x` is set, else 0 (ggml's `bytes_from_bits_32`).
    #[inline(always)]
    unsafe fn bytes_from_bits(x: u32) -> __m256i {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(x as i32),
            _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303),
        );
        let probe = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        _mm256_cmpeq_epi8(probe, _mm256_set1_epi64x(-1))
    }

    /// Where a tile's weight blocks come from.
    pub(super) trait Load {
        /// The 32 signed weights of block `idx` (counted over the whole matrix).
        unsafe fn load(&self, idx: usize) -> __m256i;
    }

    /// One i8 per weight.
    struct I8Blocks(*const i8);
    impl Load for I8Blocks {
        #[inline(always)]
        unsafe fn load(&self, idx: usize) -> __m256i {
            _mm256_loadu_si256(self.0.add(idx * QK) as *const __m256i)
        }
    }

    /// Q5_0's packing, unpacked in registers as ggml's AVX2 Q5_0 kernel does.
    struct Q5Blocks(*const u8, *const u32);
    impl Load for Q5Blocks {
        #[inline(always)]
        unsafe fn load(&self, idx: usize) -> __m256i {
            let packed = _mm_loadu_si128(self.0.add(idx * 16) as *const __m128i);
            let nibbles = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0F));
            // (nibble | bit << 4) - 16 is the nibble where the bit is set, and nibble - 16, which
            // is nibble | 0xF0 as an i8, where it is not.
            let missing = _mm256_andnot_si256(bytes_from_bits(*self.1.add(idx)), _mm256_set1_epi8(0xF0u8 as i8));
            _mm256_or_si256(nibbles, missing)
        }
    }

    /// Q5_0 block `blk` as 32 i8 quants into `dst`.
    ///
    /// # Safety
    /// The CPU has AVX2; `qs` and `qh` hold block `blk`; `dst` holds 32 bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unpack_q5(qs: &[u8], qh: &[u32], blk: usize, dst: &mut [i8]) {
        _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, Q5Blocks(qs.as_ptr(), qh.as_ptr()).load(blk));
    }

    /// How a block product is formed.
    pub(super) trait Dot {
        /// 8 i32 lanes summing to the dot product of the signed bytes `w` and `x`.
        unsafe fn dot(w: __m256i, x: __m256i) -> __m256i;
    }

    pub(super) struct Avx2;
    impl Dot for Avx2 {
        #[inline(always)]
        unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
            // |w| · (x · sign(w)) in pairs of i16, then pairs of i32: exact (|w|, |x| <= 127).
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            _mm256_madd_epi16(p, _mm256_set1_epi16(1))
        }
    }

    pub(super) struct AvxVnni;
    impl Dot for AvxVnni {
        #[inline(always)]
        unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        }
    }

    pub(super) struct Vnni512;
    impl Dot for Vnni512 {
        #[inline(always)]
        unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        }
    }

    /// One `RM × RN` tile over every block of the rows.
    #[inline(always)]
    unsafe fn tile_fixed<D: Dot, L: Load, const RM: usize, const RN: usize>(
        a: &Acts,
        b: &Weights,
        wq: &L,
        out: &mut [[f32; TN]; TM],
    ) {
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        let (ad, aq, bd) = (a.d.as_ptr(), a.q.as_ptr(), b.m.d.as_ptr());
        for blk in 0..a.nb {
            let mut w = [_mm256_setzero_si256(); RN];
            let mut dw = [_mm256_setzero_ps(); RN];
            for j in 0..RN {
                w[j] = wq.load(b.at(j, blk));
                dw[j] = _mm256_broadcast_ss(&*bd.add(b.at(j, blk)));
            }
            for i in 0..RM {
                let x = _mm256_loadu_si256(aq.add(i * a.k + blk * QK) as *const __m256i);
                let da = _mm256_broadcast_ss(&*ad.add(i * a.nb + blk));
                for j in 0..RN {
                    let p = D::dot(w[j], x);
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
        ($d:ty, $rm:expr, $rn:expr, $a:expr, $b:expr, $wq:expr, $out:expr; $(($m:literal, $n:literal)),*) => {
            match ($rm, $rn) {
                $(($m, $n) => tile_fixed::<$d, _, $m, $n>($a, $b, $wq, $out),)*
                _ => unreachable!("tile {}x{}", $rm, $rn),
            }
        };
    }

    /// Every tile shape, for one kernel and one quant form.
    #[inline(always)]
    unsafe fn shapes<D: Dot, L: Load>(rm: usize, rn: usize, a: &Acts, b: &Weights, wq: &L, out: &mut [[f32; TN]; TM]) {
        dispatch!(D, rm, rn, a, b, wq, out;
            (1, 1), (1, 2), (1, 3), (1, 4),
            (2, 1), (2, 2), (2, 3), (2, 4),
            (3, 1), (3, 2), (3, 3), (3, 4),
            (4, 1), (4, 2), (4, 3), (4, 4))
    }

    macro_rules! tiles {
        ($name:ident, $d:ty, $features:literal) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(rm: usize, rn: usize, a: &Acts, b: &Weights, out: &mut [[f32; TN]; TM]) {
                match &b.m.quants {
                    Quants::I8(q) => shapes::<$d, _>(rm, rn, a, b, &I8Blocks(q.as_ptr()), out),
                    Quants::Q5 { qs, qh } => shapes::<$d, _>(rm, rn, a, b, &Q5Blocks(qs.as_ptr(), qh.as_ptr()), out),
                }
            }
        };
    }

    tiles!(tile_avx2, Avx2, "avx2,fma");
    tiles!(tile_avxvnni, AvxVnni, "avx2,fma,avxvnni");
    tiles!(tile_vnni512_256, Vnni512, "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni");

    /// Two blocks of weights in one 512-bit register (block `idx` low, `idx + 1` high), as
    /// unsigned bytes `w + OFFSET`, the operand `vpdpbusd` wants: then `x · (w + OFFSET)` less
    /// `OFFSET · Σx` is the exact signed dot product, without per-product sign fixes.
    pub(super) trait Load2 {
        const OFFSET: u8;
        unsafe fn load2u(&self, idx: usize) -> __m512i;
        /// Asks for the cache lines of blocks `idx` and `idx + 1` (no fault where they do not exist).
        unsafe fn prefetch2(&self, idx: usize);
    }

    #[inline(always)]
    unsafe fn prefetch<T>(p: *const T, idx: usize) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(idx) as *const i8);
    }
    impl Load2 for I8Blocks {
        const OFFSET: u8 = 128;
        #[inline(always)]
        unsafe fn load2u(&self, idx: usize) -> __m512i {
            _mm512_xor_si512(_mm512_loadu_si512(self.0.add(idx * QK) as *const _), _mm512_set1_epi8(0x80u8 as i8))
        }
        #[inline(always)]
        unsafe fn prefetch2(&self, idx: usize) {
            prefetch(self.0, idx * QK);
        }
    }
    impl Load2 for Q5Blocks {
        /// Q5_0 stores `w + 16`: the nibble plus 16 where the fifth bit is set.
        const OFFSET: u8 = 16;
        #[inline(always)]
        unsafe fn load2u(&self, idx: usize) -> __m512i {
            // The two blocks' 32 bytes of nibbles as 128-bit lanes [b0, b0, b1, b1], the odd
            // lanes shifted down 4 bits: low nibbles then high nibbles of each block.
            let packed = _mm512_castsi256_si512(_mm256_loadu_si256(self.0.add(idx * 16) as *const __m256i));
            let dup = _mm512_shuffle_i64x2::<0b01_01_00_00>(packed, packed);
            let nibbles = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(dup, 0xFF00_FF00, dup), _mm512_set1_epi8(0x0F));
            // The two u32s of fifth bits are one 64-bit byte mask.
            let bits: __mmask64 = (self.1.add(idx) as *const u64).read_unaligned();
            _mm512_mask_add_epi8(nibbles, bits, nibbles, _mm512_set1_epi8(16))
        }
        #[inline(always)]
        unsafe fn prefetch2(&self, idx: usize) {
            prefetch(self.0, idx * 16);
            prefetch(self.1, idx);
        }
    }

    /// `d[0]` in the low eight lanes, `d[1]` in the high eight: the scales of two blocks, lined
    /// up with `vpdpbusd`'s i32 lanes (lane `l` sums bytes `4l..4l + 4`).
    #[inline(always)]
    unsafe fn scale_pair(d: *const f32) -> __m512 {
        let two = _mm_castpd_ps(_mm_load_sd(d as *const f64));
        _mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_castps128_ps512(two),
        )
    }

    /// The upper eight lanes.
    #[inline(always)]
    unsafe fn high(v: __m512) -> __m256 {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
    }

    /// One `RM × RN` tile over every pair of blocks (`nb` even), the integer products 512 bits
    /// at a time: per activation row and pair, `-OFFSET · Σx` (in lanes) seeds the accumulation,
    /// so each product is one `vpdpbusd` of the offset weights. The float accumulation is done
    /// block by block in eight lanes, as the 256-bit kernels (and candle's) do, so that all of
    /// them give bit-identical results: gemma-3's greedy tokens proved sensitive to the order of
    /// these additions (top-1 agreement with candle's kernels 0.982 with sixteen-lane sums).
    #[inline(always)]
    unsafe fn tile_fixed512<L: Load2, const RM: usize, const RN: usize>(
        a: &Acts,
        b: &Weights,
        wq: &L,
        out: &mut [[f32; TN]; TM],
    ) {
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        let (ad, aq, bd) = (a.d.as_ptr(), a.q.as_ptr(), b.m.d.as_ptr());
        let zero = _mm512_setzero_si512();
        let offset = _mm512_set1_epi8(L::OFFSET as i8);
        let mut blk = 0;
        while blk < a.nb {
            let mut wu = [zero; RN];
            let mut dw = [_mm512_setzero_ps(); RN];
            for j in 0..RN {
                wu[j] = wq.load2u(b.at(j, blk));
                dw[j] = scale_pair(bd.add(b.at(j, blk)));
                if RM == 1 {
                    // One token: the weights stream from memory once and the loads stalled on
                    // them; fetch the same blocks of the next tile's rows (the hardware
                    // prefetcher does not follow RN interleaved streams far enough ahead).
                    wq.prefetch2(b.at(j + RN, blk));
                    prefetch(bd, b.at(j + RN, blk));
                }
            }
            for i in 0..RM {
                let x = _mm512_loadu_si512(aq.add(i * a.k + blk * QK) as *const _);
                let da = scale_pair(ad.add(i * a.nb + blk));
                let seed = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, x));
                for j in 0..RN {
                    let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(seed, wu[j], x));
                    let scale = _mm512_mul_ps(da, dw[j]);
                    acc[i][j] = _mm256_fmadd_ps(_mm512_castps512_ps256(scale), _mm512_castps512_ps256(dot), acc[i][j]);
                    acc[i][j] = _mm256_fmadd_ps(high(scale), high(dot), acc[i][j]);
                }
            }
            blk += 2;
        }
        for i in 0..RM {
            for j in 0..RN {
                out[i][j] = hsum(acc[i][j]);
            }
        }
    }

    macro_rules! dispatch512 {
        ($rm:expr, $rn:expr, $a:expr, $b:expr, $wq:expr, $out:expr; $(($m:literal, $n:literal)),*) => {
            match ($rm, $rn) {
                $(($m, $n) => tile_fixed512::<_, $m, $n>($a, $b, $wq, $out),)*
                _ => unreachable!("tile {}x{}", $rm, $rn),
            }
        };
    }

    #[inline(always)]
    unsafe fn shapes512<L: Load2>(rm: usize, rn: usize, a: &Acts, b: &Weights, wq: &L, out: &mut [[f32; TN]; TM]) {
        dispatch512!(rm, rn, a, b, wq, out;
            (1, 1), (1, 2), (1, 3), (1, 4),
            (2, 1), (2, 2), (2, 3), (2, 4),
            (3, 1), (3, 2), (3, 3), (3, 4),
            (4, 1), (4, 2), (4, 3), (4, 4))
    }

    /// AVX-512 VNNI: 512-bit tiles where the rows hold an even number of blocks, else 256-bit.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile_vnni512(rm: usize, rn: usize, a: &Acts, b: &Weights, out: &mut [[f32; TN]; TM]) {
        if !a.nb.is_multiple_of(2) {
            return tile_vnni512_256(rm, rn, a, b, out);
        }
        match &b.m.quants {
            Quants::I8(q) => shapes512(rm, rn, a, b, &I8Blocks(q.as_ptr()), out),
            Quants::Q5 { qs, qh } => shapes512(rm, rn, a, b, &Q5Blocks(qs.as_ptr(), qh.as_ptr()), out),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// ggml Q5_0 bytes of an `[n, k]` matrix with pseudo-random quants, fifth bits and scales.
    pub(crate) fn q5_bytes(n: usize, k: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(747796405).wrapping_add(1);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut out = Vec::new();
        for _ in 0..n * k / QK {
            out.extend(f16::from_f32((next() % 1000) as f32 / 40_000.0 + 0.001).to_le_bytes());
            out.extend(next().to_le_bytes());
            out.extend((0..16).map(|_| next() as u8));
        }
        out
    }

    pub(crate) fn reference(w: &Q8Matrix, x: &Q8Rows) -> Vec<f32> {
        let nb = w.k / QK;
        let mut out = vec![0f32; x.m * w.n];
        for i in 0..x.m {
            for j in 0..w.n {
                let mut s = 0f64;
                for b in 0..nb {
                    let wq = w.block_quants(j * nb + b);
                    let dot: i64 = (0..QK).map(|t| x.q[i * w.k + b * QK + t] as i64 * wq[t] as i64).sum();
                    s += (x.d[i * nb + b] as f64) * (w.d[j * nb + b] as f64) * dot as f64;
                }
                out[i * w.n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_the_reference_for_every_tile_shape_and_quant_form() {
        let kernels = Kernel::available();
        eprintln!("kernels on this CPU: {kernels:?}");
        // Sizes that leave every remainder of the 4x4 tiles, and chunking over several threads.
        for (m, n, k) in [(1, 1, 32), (1, 7, 64), (3, 5, 96), (5, 9, 128), (9, 37, 64), (17, 130, 256)] {
            let x = quantize_rows(&data(m * k, 99), k);
            let q5 = q5_bytes(n, k, (m * n * k) as u32);
            let forms = [
                ("i8", Q8Matrix::quantize(&data(n * k, 7), n, k)),
                ("q5", Q8Matrix::from_ggml_q5_0(&q5, n, k)),
                (
                    "q5 widened",
                    Q8Matrix::from_ggml_q8_0(
                        &crate::kernels::repack::repack_q8_0(candle_core::quantized::GgmlDType::Q5_0, &q5).unwrap(),
                        n,
                        k,
                    ),
                ),
            ];
            for (name, w) in &forms {
                let want = reference(w, &x);
                let first = w.matmul_with(kernels[0], &x);
                for &kernel in &kernels {
                    let got = w.matmul_with(kernel, &x);
                    for (g, r) in got.iter().zip(&want) {
                        assert!(
                            (g - r).abs() <= 1e-4 * r.abs().max(1.0),
                            "{kernel:?} {name} m={m} n={n} k={k}: {g} vs {r}"
                        );
                    }
                    // Integer block products are exact everywhere and every SIMD kernel adds the
                    // floats in the same order: they agree bit for bit (the scalar loop only
                    // within rounding).
                    #[cfg(target_arch = "x86_64")]
                    if kernel != Kernel::Scalar {
                        assert_eq!(got, w.matmul_with(Kernel::Avx2, &x), "{kernel:?} against Avx2");
                    }
                }
                assert_eq!(first.len(), m * n);
            }
            // Q5_0 kept packed computes exactly what its widened i8 copy computes.
            for &kernel in &kernels {
                assert_eq!(forms[1].1.matmul_with(kernel, &x), forms[2].1.matmul_with(kernel, &x), "{kernel:?}");
            }
            assert_eq!(forms[1].1.dequantize(), forms[2].1.dequantize());
            assert!(forms[1].1.bytes() * 3 <= forms[2].1.bytes() * 2 + 3, "q5 form is compact");
        }
    }

    /// A decode batch: each row of a several-row product is bit for bit that row's product alone,
    /// with every kernel this CPU runs (the tile shape must not change a row's float order).
    #[test]
    fn rows_of_a_batch_equal_each_row_alone() {
        let (n, k) = (37, 896);
        let q5 = q5_bytes(n, k, 21);
        for w in [Q8Matrix::quantize(&data(n * k, 13), n, k), Q8Matrix::from_ggml_q5_0(&q5, n, k)] {
            for m in [2, 3, 5, 8] {
                let x = quantize_rows(&data(m * k, m as u32), k);
                for kernel in Kernel::available() {
                    let batch = w.matmul_with(kernel, &x);
                    for i in 0..m {
                        let one = Q8Rows {
                            m: 1,
                            k,
                            d: x.d[i * (k / QK)..(i + 1) * (k / QK)].to_vec(),
                            q: x.q[i * k..(i + 1) * k].to_vec(),
                        };
                        let alone = w.matmul_with(kernel, &one);
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&batch[i * n..(i + 1) * n]), bits(&alone), "{kernel:?} m={m} row {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_agree_on_model_sized_rows() {
        // Rows as wide as the models' (640, 896, 2048, 4864 weights), one and several
        // activation rows: every kernel within float reassociation of the scalar loop.
        for (m, n, k) in [(1, 64, 640), (7, 40, 896), (1, 48, 2048), (3, 24, 4864)] {
            let x = quantize_rows(&data(m * k, 5), k);
            let q5 = q5_bytes(n, k, 11);
            for w in [Q8Matrix::quantize(&data(n * k, 3), n, k), Q8Matrix::from_ggml_q5_0(&q5, n, k)] {
                let want = reference(&w, &x);
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                for kernel in Kernel::available() {
                    let got = w.matmul_with(kernel, &x);
                    let worst = got.iter().zip(&want).fold(0f32, |a, (g, r)| a.max((g - r).abs()));
                    assert!(
                        worst <= 1e-5 * scale.max(1.0),
                        "{kernel:?} m={m} n={n} k={k}: off by {worst} at scale {scale}"
                    );
                }
            }
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
        // Q5_0 bytes: scale, fifth bits, nibbles. Weight 0: nibble 3, bit 1 -> 19 - 16 = 3;
        // weight 16: nibble 0xA, bit 0 -> -6; weight 31: nibble 0xF, bit 1 -> 15.
        let mut bytes = f16::from_f32(2.0).to_le_bytes().to_vec();
        bytes.extend((1u32 | 1 << 31).to_le_bytes());
        bytes.extend([0xA3u8].iter().chain(&[0u8; 14]).chain(&[0xF0u8]));
        let g = Q8Matrix::from_ggml_q5_0(&bytes, 1, 32).dequantize();
        assert_eq!((g[0], g[16], g[31], g[1]), (6.0, -12.0, 30.0, -32.0));
    }
}
