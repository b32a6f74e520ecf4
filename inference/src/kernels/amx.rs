//! Prompt products (at least [`MIN_ROWS`] activation rows) on AMX, the tile unit of Intel's
//! Sapphire Rapids and later cores: one `tdpbssd` multiplies 16 weight rows by 16 activation rows
//! over 32 weights (8,192 multiply-adds) where a `vpdpbusd` does 64. Every block type our
//! kernels read goes through it: Q8_0, Q5_0 and Q4_0 ([`super::q8::Q8Matrix`]), Q4_K and Q6_K
//! ([`super::kquant::KRows`]), each saying through [`TileRows`] how its rows unpack to i8 quants
//! with a scale per 32 (Q6_K: 16) weights and, for Q4_K, a min per 32.
//!
//! The activations are quantized to Q8_0 (a scale per 32 values). Per block the tile unit forms
//! the exact integer dot product of every (weight row, activation row) pair, and the float step
//! adds `(d_w · d_x) · dot` (less `m_w · d_x · Σq_x` for Q4_K's mins) to that pair's sum: ggml's
//! block products, added once per block where the one-token and short-prompt kernels add eight
//! partial sums per block (and Q4_K/Q6_K ones quantize activations per 256 values). The same
//! numbers up to float rounding; decode steps and short prompts never come here, and prompts'
//! perplexity is checked against candle's kernels in `tests/kernels.rs`.
//!
//! Layout: the weights are the tiles' A operand, 16 rows of 32 quants each (read in place from
//! Q8_0's i8 form, else unpacked once per 16 rows into a buffer); the activations are the B
//! operand, re-laid once per product by [`PackedActs`]; each C tile (16 weight rows × 16
//! activation rows of i32) is stored and scaled into sixteen registers of f32 sums.
use super::q8::Q8Rows;
pub use super::tile::{TileRows, T};
use super::OutPtr;

/// Fewest activation rows that take this path.
pub const MIN_ROWS: usize = 32;

/// Weights per activation block.
const QK: usize = 32;

/// Whether the tile unit runs here: the CPU has AMX-INT8 and AVX-512, Linux granted the process
/// the tile state, and neither `POLYLLM_AMX=0` nor `POLYLLM_KERNEL` (which picks a vector kernel
/// for comparisons) turned it off.
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let off = matches!(std::env::var("POLYLLM_AMX").as_deref(), Ok("0") | Ok("false"))
            || std::env::var("POLYLLM_KERNEL").is_ok_and(|k| !k.is_empty());
        !off && imp::supported()
    })
}

/// Activations quantized to Q8_0, re-laid as AMX B tiles: for every 16 rows and every block,
/// 8 rows of 64 bytes where row `kk` holds quants `4kk..4kk + 4` of the block of each of the 16
/// activation rows (zeros past the last row); with `halves`, the same tile twice more, once with
/// only the block's first 16 quants and once with only its last 16 (for 16-weight scales). Per
/// block also the 16 rows' scales and, with `sums`, scale times quant sum (for mins).
pub struct PackedActs {
    m: usize,
    nb: usize,
    tiles: Vec<BTile>,
    halves: Vec<BTile>,
    d: Vec<[f32; T]>,
    sums: Vec<[f32; T]>,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct BTile([u8; 8 * 64]);

impl PackedActs {
    pub fn new(x: &Q8Rows, halves: bool, sums: bool) -> PackedActs {
        let (m, k) = (x.m, x.k);
        let nb = k / QK;
        let groups = m.div_ceil(T);
        let mut p = PackedActs {
            m,
            nb,
            tiles: vec![BTile([0; 512]); groups * nb],
            halves: vec![BTile([0; 512]); if halves { 2 * groups * nb } else { 0 }],
            d: vec![[0f32; T]; groups * nb],
            sums: vec![[0f32; T]; if sums { groups * nb } else { 0 }],
        };
        for r in 0..m {
            let (g, mm) = (r / T, r % T);
            for b in 0..nb {
                let i = g * nb + b;
                let q = &x.q[r * k + b * QK..][..QK];
                for kk in 0..8 {
                    let word = &q[kk * 4..kk * 4 + 4];
                    for (j, &v) in word.iter().enumerate() {
                        p.tiles[i].0[kk * 64 + mm * 4 + j] = v as u8;
                        if halves {
                            p.halves[2 * i + kk / 4].0[kk * 64 + mm * 4 + j] = v as u8;
                        }
                    }
                }
                let d = x.d[r * nb + b];
                p.d[i][mm] = d;
                if sums {
                    p.sums[i][mm] = d * q.iter().map(|&v| v as i32).sum::<i32>() as f32;
                }
            }
        }
        p
    }
}

/// `x @ w^T` for each of `ws` (matrices of `x`'s width): `x` quantized and re-laid once, one
/// dispatch to candle's worker pool for all of them, units of 16 weight rows.
///
/// # Panics
/// Where [`available`] is false, or a matrix's width is not `x`'s.
pub fn matmul_many(ws: &[&dyn TileRows], x: &Q8Rows) -> Vec<Vec<f32>> {
    assert!(available(), "AMX products on a CPU without AMX");
    for w in ws {
        assert_eq!(w.dims().1, x.k, "matmul: activations of width {} against weights of width {}", x.k, w.dims().1);
    }
    let packed = PackedActs::new(x, ws.iter().any(|w| w.group() == 16), ws.iter().any(|w| w.has_mins()));
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; x.m * w.dims().0]).collect();
    let units = super::Units::new(ws.iter().map(|w| w.dims().0).collect(), T);
    let dsts: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let run = |range: std::ops::Range<usize>| {
        // SAFETY: AMX is available (asserted); each call gets a disjoint range of units, i.e. of
        // output columns of each matrix, and `block` writes only columns j0..j1 of rows 0..m of
        // the `m * n` buffer of matrix t.
        units.each(range, |t, j0, j1| unsafe { block(ws[t], &packed, j0, j1, dsts[t]) });
    };
    units.dispatch(true, run);
    outs
}

/// Weight tiles (of 16 rows) unpacked together, and activation groups (of 16 rows) multiplied
/// against them before the next groups: 64 x 64 blocks, so that a down-projection's 64 weight rows
/// (8,960 quants each on the 1.5B) and 64 prompt rows both stay in L2 while every pair is
/// multiplied, where one weight tile at a time streamed the whole prompt through L2 again for
/// every 16 weight rows.
const BLOCK_TILES: usize = 4;

/// One weight tile made ready for the tile unit: its quants (in place or unpacked), scales, mins.
struct ATile {
    n0: usize,
    take: usize,
    rows: Vec<i8>,
    in_place: Option<*const i8>,
    dw: Vec<[f32; T]>,
    mw: Vec<[f32; T]>,
}

impl ATile {
    fn new(w: &dyn TileRows) -> ATile {
        let (_, k) = w.dims();
        ATile {
            n0: 0,
            take: 0,
            rows: Vec::new(),
            in_place: None,
            dw: vec![[0f32; T]; k / w.group()],
            mw: vec![[0f32; T]; if w.has_mins() { k / QK } else { 0 }],
        }
    }

    /// Rows `n0..n0 + take` of `w`.
    fn load(&mut self, w: &dyn TileRows, n0: usize, take: usize) {
        let k = w.dims().1;
        (self.n0, self.take) = (n0, take);
        self.dw.iter_mut().chain(self.mw.iter_mut()).for_each(|v| *v = [0.0; T]);
        w.scales(n0, take, &mut self.dw, &mut self.mw);
        self.in_place = w.in_place(n0).filter(|_| take == T);
        if self.in_place.is_none() {
            // `quants` writes rows 0..take whole; the rest of a last, short tile stays zero.
            if self.rows.len() != T * k {
                self.rows.resize(T * k, 0i8);
            }
            self.rows[take * k..].fill(0);
            w.quants(n0, take, &mut self.rows);
        }
    }

    fn quants(&self) -> *const i8 {
        self.in_place.unwrap_or(self.rows.as_ptr())
    }
}

/// Writes outputs for weight rows `j0..j1` and every activation row into `out` (`[m, n]`).
///
/// # Safety
/// [`available`] is true; `out` points to `x.m * n` floats, and no other thread writes columns
/// `j0..j1`.
unsafe fn block(w: &dyn TileRows, x: &PackedActs, j0: usize, j1: usize, out: OutPtr) {
    let (n, k) = w.dims();
    let nb = x.nb;
    let halves = w.group() == 16;
    let groups = x.m.div_ceil(T);
    let mut tiles: Vec<ATile> = (0..BLOCK_TILES).map(|_| ATile::new(w)).collect();
    let mut sums = [[0f32; T]; T];
    let mut n0 = j0;
    while n0 < j1 {
        let mut ready = 0;
        while ready < BLOCK_TILES && n0 < j1 {
            let take = (j1 - n0).min(T);
            tiles[ready].load(w, n0, take);
            (ready, n0) = (ready + 1, n0 + take);
        }
        for g0 in (0..groups).step_by(BLOCK_TILES) {
            for tile in &tiles[..ready] {
                for g in g0..(g0 + BLOCK_TILES).min(groups) {
                    let acts = imp::Acts {
                        tiles: &x.tiles[g * nb..(g + 1) * nb],
                        halves: if halves { &x.halves[2 * g * nb..2 * (g + 1) * nb] } else { &[] },
                        d: &x.d[g * nb..(g + 1) * nb],
                        sums: if w.has_mins() { &x.sums[g * nb..(g + 1) * nb] } else { &[] },
                    };
                    imp::tile_row(tile.quants(), k, &acts, &tile.dw, &tile.mw, &mut sums);
                    // sums[r][mm]: weight row tile.n0 + r, activation row 16g + mm.
                    for mm in 0..T.min(x.m - g * T) {
                        let dst = out.at((g * T + mm) * n + tile.n0);
                        for (r, s) in sums.iter().enumerate().take(tile.take) {
                            *dst.add(r) = s[mm];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{BTile, T};
    use std::arch::x86_64::*;

    pub fn supported() -> bool {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            return false;
        }
        // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        // SAFETY: leaf 7 exists on every CPU with AVX-512 (the intrinsic is safe on newer Rust).
        #[allow(unused_unsafe)]
        let edx = unsafe { __cpuid_count(7, 0) }.edx;
        if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
            return false;
        }
        permitted()
    }

    /// Linux hands out the tile state per process on request (`ARCH_REQ_XCOMP_PERM`).
    #[cfg(target_os = "linux")]
    fn permitted() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn permitted() -> bool {
        false
    }

    #[repr(C, align(64))]
    struct TileCfg {
        palette: u8,
        start_row: u8,
        _reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Loads the tile shapes on this thread, once. They are candle's (its AMX Q4_K kernel runs on
    /// the same worker threads and keeps its own once-per-thread flag): tmm0-3 16 rows of 16 i32
    /// (C), tmm4-5 16 rows of 32 bytes (A), tmm6-7 8 rows of 64 bytes (B).
    unsafe fn configure() {
        thread_local! {
            static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if DONE.with(|d| d.replace(true)) {
            return;
        }
        let mut cfg = TileCfg { palette: 1, start_row: 0, _reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..4 {
            (cfg.colsb[t], cfg.rows[t]) = (64, 16);
        }
        for t in 4..6 {
            (cfg.colsb[t], cfg.rows[t]) = (32, 16);
        }
        for t in 6..8 {
            (cfg.colsb[t], cfg.rows[t]) = (64, 8);
        }
        std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) &cfg, options(nostack));
    }

    #[repr(C, align(64))]
    struct CTiles([[i32; T]; 2 * T]);

    /// One group of 16 activation rows, per block: the B tiles (whole, and halves where the
    /// weights have 16-weight scales), scales, and scale times quant sum (where they have mins).
    pub struct Acts<'a> {
        pub tiles: &'a [BTile],
        pub halves: &'a [BTile],
        pub d: &'a [[f32; T]],
        pub sums: &'a [[f32; T]],
    }

    /// Sixteen weight rows (`a`, i8 rows of `k`) times the 16 activation rows of `x` into
    /// `sums[weight row][activation row]`. Scales `dw[group][weight row]` apply per 32 weights,
    /// or per 16 where `x.halves` is given (each block then two products against the halves);
    /// mins `mw[block][weight row]`, where given, take off `mw · x.sums`. Two products per step,
    /// in two C tiles, so that the tile unit works on one while the vector unit scales the other.
    ///
    /// # Safety
    /// The tile unit is available; `a` holds 16 rows of `k = 32 · x.tiles.len()` quants; `dw`
    /// and `mw` are as long as the groups and blocks of `k`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn tile_row(
        a: *const i8,
        k: usize,
        x: &Acts,
        dw: &[[f32; T]],
        mw: &[[f32; T]],
        sums: &mut [[f32; T]; T],
    ) {
        configure();
        let nb = x.tiles.len();
        let halves = !x.halves.is_empty();
        let mut acc = [_mm512_setzero_ps(); T];
        let mut c = CTiles([[0; T]; 2 * T]);
        let cp = c.0.as_mut_ptr() as *mut u8;
        let mut b = 0;
        while b < nb {
            // Two products: blocks b and b + 1, or block b's two halves.
            let (steps, blocks) = if halves { (2, 1) } else { (1 + (b + 1 < nb) as usize, 1 + (b + 1 < nb) as usize) };
            let a0 = a.add(b * 32);
            let a1 = if halves { a0 } else { a.add(b * 32 + 32) };
            let (b0, b1) = if halves {
                (x.halves[2 * b].0.as_ptr(), x.halves[2 * b + 1].0.as_ptr())
            } else {
                (x.tiles[b].0.as_ptr(), x.tiles[(b + 1).min(nb - 1)].0.as_ptr())
            };
            if steps == 2 {
                std::arch::asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tilezero tmm0",
                    "tdpbssd tmm0, tmm4, tmm6",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tilezero tmm1",
                    "tdpbssd tmm1, tmm5, tmm7",
                    "tilestored [{c} + {sb}*1], tmm0",
                    "tilestored [{c1} + {sb}*1], tmm1",
                    a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                    c = in(reg) cp, c1 = in(reg) cp.add(1024),
                    sa = in(reg) k, sb = in(reg) 64usize,
                    options(nostack)
                );
            } else {
                std::arch::asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tilezero tmm0",
                    "tdpbssd tmm0, tmm4, tmm6",
                    "tilestored [{c} + {sb}*1], tmm0",
                    a0 = in(reg) a0, b0 = in(reg) b0, c = in(reg) cp,
                    sa = in(reg) k, sb = in(reg) 64usize,
                    options(nostack)
                );
            }
            for step in 0..steps {
                let (blk, group) = if halves { (b, 2 * b + step) } else { (b + step, b + step) };
                let (dx, dw) = (_mm512_loadu_ps(x.d[blk].as_ptr()), dw[group].as_ptr());
                for (r, acc) in acc.iter_mut().enumerate() {
                    let dot = _mm512_cvtepi32_ps(_mm512_load_si512(c.0[step * T + r].as_ptr() as *const _));
                    *acc = _mm512_fmadd_ps(_mm512_mul_ps(dx, _mm512_set1_ps(*dw.add(r))), dot, *acc);
                }
            }
            if !mw.is_empty() {
                for blk in b..b + blocks {
                    let (sx, mw) = (_mm512_loadu_ps(x.sums[blk].as_ptr()), mw[blk].as_ptr());
                    for (r, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fnmadd_ps(_mm512_set1_ps(*mw.add(r)), sx, *acc);
                    }
                }
            }
            b += blocks;
        }
        for (s, acc) in sums.iter_mut().zip(acc) {
            _mm512_storeu_ps(s.as_mut_ptr(), acc);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::{BTile, T};

    pub fn supported() -> bool {
        false
    }

    pub struct Acts<'a> {
        pub tiles: &'a [BTile],
        pub halves: &'a [BTile],
        pub d: &'a [[f32; T]],
        pub sums: &'a [[f32; T]],
    }

    pub unsafe fn tile_row(_: *const i8, _: usize, _: &Acts, _: &[[f32; T]], _: &[[f32; T]], _: &mut [[f32; T]; T]) {
        unreachable!("AMX on a CPU without it")
    }
}

#[cfg(test)]
mod tests {
    use super::super::q8::tests::{data, q5_bytes, reference};
    use super::super::q8::{quantize_rows, Q8Matrix};
    use super::*;

    /// Every shape the tiles cut unevenly (rows past the last 16, an odd number of blocks, a
    /// last weight tile of fewer than 16 rows, more weight tiles and prompt rows than one 64 x 64
    /// block), both quant forms, several matrices in one call:
    /// the tile unit's products are the exact integer block products, scaled once per block, so
    /// within float reassociation of the reference. (K-quant matrices: `kquant`'s tests.)
    #[test]
    fn tile_unit_matches_the_reference() {
        if !available() {
            eprintln!("no AMX on this CPU: nothing to check");
            return;
        }
        for (m, n, k) in [(32, 16, 32), (45, 37, 96), (100, 64, 896), (33, 48, 640), (70, 85, 64)] {
            let x = quantize_rows(&data(m * k, 17), k);
            let q5 = q5_bytes(n, k, 23);
            let ws = [Q8Matrix::quantize(&data(n * k, 5), n, k), Q8Matrix::from_ggml_q5_0(&q5, n, k)];
            let got = matmul_many(&[&ws[0], &ws[1]], &x);
            for (w, got) in ws.iter().zip(&got) {
                let want = reference(w, &x);
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert!(scale > 0.1, "degenerate test data");
                let worst = got.iter().zip(&want).fold(0f32, |a, (g, r)| a.max((g - r).abs()));
                assert!(worst <= 1e-5 * scale, "m={m} n={n} k={k}: off by {worst} at scale {scale}");
            }
        }
    }
}
