//! One-token products (`1 × k` activations times a `[n, k]` matrix) for Q4_K and Q6_K matrices.
//!
//! candle multiplies a decode step's K-quant matrices with tiles that widen every Q4_K scale and
//! min to f32 (6 bits read per weight instead of 4.5) and a chain of dependent `vpdpbusd`s per
//! sub-block, and with an AVX2 loop for Q6_K; on the 1.5B model, whose matrices are all K-quants,
//! those two took 68% of a decode step (perf). Here, with AVX-512 VNNI:
//! - Q6_K rows are read in place from the file's 210-byte blocks ([`KWeights::Q6K`]);
//! - Q4_K matrices are re-laid once, at load, into [`Q4KTiles`]: candle's tile layout for the
//!   quants (16 rows side by side, one lane per row) with the scales and mins kept as the file's
//!   f16 and 6-bit integers (4.6 bits per weight), read with prefetching and eight independent
//!   integer sums per super-block.
//!
//! Both add their floats exactly as candle's kernels do, so results are candle's bit for bit (unit
//! tests assert equal bits): every sub-block's integer sum is exact whatever the order of its
//! products, and the float steps after it are candle's, in its order.
//!
//! Activations are quantized to Q8_K like candle's `BlockQ8K::from_float` (ggml's
//! `quantize_row_q8_K`). Products of several activation rows (prefill) stay with candle, whose
//! tiles and AMX kernel reuse each weight for every row.
use super::OutPtr;
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
    /// ggml's name for it.
    pub fn dtype(self) -> candle_core::quantized::GgmlDType {
        match self {
            KType::Q4K => candle_core::quantized::GgmlDType::Q4K,
            KType::Q6K => candle_core::quantized::GgmlDType::Q6K,
        }
    }

    fn bytes(self) -> usize {
        match self {
            KType::Q4K => Q4K_BYTES,
            KType::Q6K => Q6K_BYTES,
        }
    }
}

/// One row of activations quantized to Q8_K: per super-block a scale, 256 quants and the sums of
/// each 16 quants.
pub struct Q8KRow {
    k: usize,
    d: Vec<f32>,
    qs: Vec<i8>,
    bsums: Vec<i16>,
    /// Per 32-quant sub-block, `d · (its two bsums)` as candle's Q4_K tile forms it for the mins.
    dbsum: Vec<f32>,
}

/// Quantizes `x` (`k` values, a multiple of 256) to Q8_K as candle's `BlockQ8K::from_float` does.
pub fn quantize_q8k(x: &[f32]) -> Q8KRow {
    assert!(x.len().is_multiple_of(QK_K), "quantize_q8k: {} values, not a multiple of {QK_K}", x.len());
    let nb = x.len() / QK_K;
    let mut row = Q8KRow {
        k: x.len(),
        d: vec![0.0; nb],
        qs: vec![0; x.len()],
        bsums: vec![0; nb * 16],
        dbsum: vec![0.0; nb * 8],
    };
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
        for sub in 0..8 {
            let bsum = row.bsums[b * 16 + 2 * sub] as i32 + row.bsums[b * 16 + 2 * sub + 1] as i32;
            row.dbsum[b * 8 + sub] = row.d[b] * bsum as f32;
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

/// Rows of a Q4_K tile, one f32 lane each (candle's `TILE_N`).
pub const TILE_ROWS: usize = 16;

/// One super-block (256 weights) of 16 rows of a Q4_K matrix.
#[repr(C, align(64))]
#[derive(Clone)]
struct Q4KTile {
    /// `[group g of 8 weights (32)][row (16)][4 bytes]`: byte `j` holds weight `8g + j` in its low
    /// nibble and `8g + j + 4` in its high one (candle's `TileQ4K::qs`), so that one 64-byte load
    /// holds a group for all 16 rows.
    qs: [u8; QK_K / 8 * TILE_ROWS * 4],
    /// Per row, the block's `d` and `dmin` (f16 bits).
    d: [u16; TILE_ROWS],
    dmin: [u16; TILE_ROWS],
    /// Per sub-block and row, the 6-bit scale and min.
    sc: [[u8; TILE_ROWS]; 8],
    m: [[u8; TILE_ROWS]; 8],
}

/// A `[n, k]` Q4_K matrix (`n` a multiple of 16) re-laid as tiles, those of rows `16t..16t + 16`
/// one after another along `k` so that a unit of work streams through one run of memory. It holds
/// every weight, scale and min of the file exactly; 2,368 bytes per 4,096 weights where the file
/// takes 2,304 (candle's tiles, which widen scales and mins to f32, take 3,072).
pub struct Q4KTiles {
    n: usize,
    k: usize,
    tiles: Vec<Q4KTile>,
}

impl Q4KTiles {
    /// Re-lays `bytes`, the Q4_K blocks of a `[n, k]` matrix as the file holds them; `None` where `n`
    /// is not a multiple of 16 or `k` of 256 (candle's kernels then take the matrix).
    pub fn new(bytes: &[u8], n: usize, k: usize) -> Option<Q4KTiles> {
        if n == 0 || !n.is_multiple_of(TILE_ROWS) || !k.is_multiple_of(QK_K) || bytes.len() != n * k / QK_K * Q4K_BYTES
        {
            return None;
        }
        let kb = k / QK_K;
        let empty = Q4KTile {
            qs: [0; QK_K / 8 * TILE_ROWS * 4],
            d: [0; TILE_ROWS],
            dmin: [0; TILE_ROWS],
            sc: [[0; TILE_ROWS]; 8],
            m: [[0; TILE_ROWS]; 8],
        };
        let mut tiles = vec![empty; n / TILE_ROWS * kb];
        let fill = |i: usize, tile: &mut Q4KTile| {
            let (t, b) = (i / kb, i % kb);
            for r in 0..TILE_ROWS {
                let blk = &bytes[((t * TILE_ROWS + r) * kb + b) * Q4K_BYTES..][..Q4K_BYTES];
                tile.d[r] = u16::from_le_bytes([blk[0], blk[1]]);
                tile.dmin[r] = u16::from_le_bytes([blk[2], blk[3]]);
                for j in 0..8 {
                    (tile.sc[j][r], tile.m[j][r]) = scale_min_k4(j, &blk[4..16]);
                }
                // Weight `w` of the block: the low nibbles of its 32-byte chunk `w / 64` hold
                // `w % 64 < 32`, the high nibbles the rest.
                let qs = &blk[16..];
                let q = |w: usize| {
                    let byte = qs[w / 64 * 32 + w % 32];
                    if w % 64 < 32 {
                        byte & 0xF
                    } else {
                        byte >> 4
                    }
                };
                for g in 0..QK_K / 8 {
                    for j in 0..4 {
                        tile.qs[(g * TILE_ROWS + r) * 4 + j] = q(8 * g + j) | (q(8 * g + j + 4) << 4);
                    }
                }
            }
        };
        // Re-laying a 1.5B model's matrices is a pass over a gigabyte: spread it over the cores.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = tiles.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (c, chunk) in tiles.chunks_mut(per).enumerate() {
                let fill = &fill;
                s.spawn(move || chunk.iter_mut().enumerate().for_each(|(i, tile)| fill(c * per + i, tile)));
            }
        });
        Some(Q4KTiles { n, k, tiles })
    }

    /// Bytes the tiles take.
    pub fn size_bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<Q4KTile>()
    }

    /// The tiles of rows `16u..16u + 16`, along `k`.
    fn unit(&self, u: usize) -> &[Q4KTile] {
        let kb = self.k / QK_K;
        &self.tiles[u * kb..(u + 1) * kb]
    }
}

/// Rows `16u..16u + 16` of a Q4_K matrix times `x`, lane by lane in candle's float order (its
/// `q4k_tile`): per sub-block `acc = fma(isum, (d·sc)·dall, acc)`, then `acc -= (dmin·m)·(dall·bsum)`
/// fused. The reference for the AVX-512 kernel, and its stand-in where that does not run.
fn q4k_unit_scalar(tiles: &[Q4KTile], x: &Q8KRow, out: &mut [f32]) {
    let mut acc = [0f32; TILE_ROWS];
    for (b, tile) in tiles.iter().enumerate() {
        let a = &x.qs[b * QK_K..(b + 1) * QK_K];
        for sub in 0..8 {
            for (r, acc) in acc.iter_mut().enumerate() {
                let mut isum = 0i32;
                for g in sub * 4..sub * 4 + 4 {
                    for j in 0..4 {
                        let byte = tile.qs[(g * TILE_ROWS + r) * 4 + j];
                        isum +=
                            (byte & 0xF) as i32 * a[8 * g + j] as i32 + (byte >> 4) as i32 * a[8 * g + j + 4] as i32;
                    }
                }
                let scale = f16::from_bits(tile.d[r]).to_f32() * tile.sc[sub][r] as f32;
                let min = f16::from_bits(tile.dmin[r]).to_f32() * tile.m[sub][r] as f32;
                *acc = (isum as f32).mul_add(scale * x.d[b], *acc);
                *acc = (-min).mul_add(x.dbsum[b * 8 + sub], *acc);
            }
        }
    }
    out.copy_from_slice(&acc);
}

/// A Q4_K or Q6_K matrix as the file holds it (`[n, k]`, blocks row by row): what the tile unit
/// ([`super::amx`]) unpacks for prompts, 16 rows at a time.
pub struct KRows<'a> {
    pub ty: KType,
    pub n: usize,
    pub k: usize,
    pub bytes: &'a [u8],
}

impl KRows<'_> {
    fn block(&self, row: usize, b: usize) -> &[u8] {
        let (bytes, kb) = (self.ty.bytes(), self.k / QK_K);
        &self.bytes[(row * kb + b) * bytes..][..bytes]
    }
}

impl super::tile::TileRows for KRows<'_> {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn group(&self) -> usize {
        match self.ty {
            KType::Q4K => 32,
            KType::Q6K => 16,
        }
    }

    fn has_mins(&self) -> bool {
        self.ty == KType::Q4K
    }

    fn quants(&self, n0: usize, take: usize, rows: &mut [i8]) {
        for r in 0..take {
            for b in 0..self.k / QK_K {
                let (blk, out) = (self.block(n0 + r, b), &mut rows[r * self.k + b * QK_K..][..QK_K]);
                match self.ty {
                    // Weight `64c + l` (l < 32) is the low nibble of byte `32c + l`, `64c + 32 + l` its high one.
                    KType::Q4K => {
                        for (c, chunk) in blk[16..].chunks_exact(32).enumerate() {
                            for (l, &v) in chunk.iter().enumerate() {
                                out[64 * c + l] = (v & 0xF) as i8;
                                out[64 * c + 32 + l] = (v >> 4) as i8;
                            }
                        }
                    }
                    // As `row_scalar` reads them.
                    KType::Q6K => {
                        for half in 0..2 {
                            let (ql, qh, o) = (&blk[64 * half..], &blk[128 + 32 * half..], &mut out[128 * half..]);
                            for l in 0..32 {
                                o[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                                o[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                                o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                                o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                            }
                        }
                    }
                }
            }
        }
    }

    fn scales(&self, n0: usize, take: usize, dw: &mut [[f32; super::tile::T]], mw: &mut [[f32; super::tile::T]]) {
        for r in 0..take {
            for b in 0..self.k / QK_K {
                let blk = self.block(n0 + r, b);
                match self.ty {
                    KType::Q4K => {
                        let (d, dmin) = (f16_at(blk), f16_at(&blk[2..]));
                        for j in 0..8 {
                            let (sc, m) = scale_min_k4(j, &blk[4..16]);
                            dw[b * 8 + j][r] = d * sc as f32;
                            mw[b * 8 + j][r] = dmin * m as f32;
                        }
                    }
                    KType::Q6K => {
                        let d = f16_at(&blk[208..]);
                        for j in 0..16 {
                            dw[b * 16 + j][r] = d * (blk[192 + j] as i8) as f32;
                        }
                    }
                }
            }
        }
    }
}

/// The weights of one matrix as the kernels read them.
#[derive(Clone, Copy)]
pub enum KWeights<'a> {
    /// A `[n, k]` matrix of Q6_K blocks as in the file.
    Q6K { n: usize, k: usize, bytes: &'a [u8] },
    /// A Q4_K matrix re-laid at load.
    Q4K(&'a Q4KTiles),
}

impl KWeights<'_> {
    fn dims(&self) -> (usize, usize) {
        match self {
            KWeights::Q6K { n, k, .. } => (*n, *k),
            KWeights::Q4K(t) => (t.n, t.k),
        }
    }
}

/// Rows per unit of parallel work: one Q4_K tile.
const UNIT: usize = TILE_ROWS;

/// `x @ w^T` for each of `ws` (matrices of `x`'s width): one dispatch to candle's worker pool for
/// all of them, units of 16 rows numbered across the matrices.
pub fn gemv_many(ws: &[KWeights], x: &Q8KRow) -> Vec<Vec<f32>> {
    rows_many_with(ws, std::slice::from_ref(x), available())
}

/// `xs @ w^T` for each of `ws`: `[m, n]` row-major per matrix, each row bit for bit what
/// [`gemv_many`] gives it alone (the same per-row kernel, whatever the rows beside it), which is
/// what a batched decode step needs for its outputs to match the same sequence run alone. Per unit
/// of 16 weight rows every activation row passes over the unit while it is in cache, so the
/// weights stream from memory once per step, not once per sequence.
pub fn rows_many(ws: &[KWeights], xs: &[Q8KRow]) -> Vec<Vec<f32>> {
    rows_many_with(ws, xs, available())
}

/// [`rows_many`] with the AVX-512 kernels (`fast`, where [`available`]) or the scalar ones.
fn rows_many_with(ws: &[KWeights], xs: &[Q8KRow], fast: bool) -> Vec<Vec<f32>> {
    for w in ws {
        let (n, k) = w.dims();
        for x in xs {
            assert_eq!(k, x.k, "gemv: activations of width {} against weights of width {k}", x.k);
        }
        if let KWeights::Q6K { bytes, .. } = w {
            assert_eq!(bytes.len(), n * k / QK_K * Q6K_BYTES, "gemv: Q6_K matrix of {} bytes", bytes.len());
        }
    }
    let m = xs.len();
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; m * w.dims().0]).collect();
    let units = super::Units::new(ws.iter().map(|w| w.dims().0).collect(), UNIT);
    let dsts: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let run = |range: std::ops::Range<usize>| {
        units.each(range, |t, j0, j1| match ws[t] {
            KWeights::Q6K { n, k, bytes } => {
                let row_bytes = k / QK_K * Q6K_BYTES;
                for j in j0..j1.min(n) {
                    let w = &bytes[j * row_bytes..(j + 1) * row_bytes];
                    // Four rows at a time where the fast kernel runs, then one by one.
                    let mut done = 0;
                    #[cfg(target_arch = "x86_64")]
                    if fast && available() {
                        while done + 4 <= xs.len() {
                            let x = [&xs[done], &xs[done + 1], &xs[done + 2], &xs[done + 3]];
                            // SAFETY: `available` checked the features; `w` holds k / 256 blocks.
                            let v = unsafe { x86::q6k_row_rows(w, x) };
                            for (r, v) in v.into_iter().enumerate() {
                                // SAFETY: as below.
                                unsafe { *dsts[t].at((done + r) * n + j) = v };
                            }
                            done += 4;
                        }
                    }
                    for (i, x) in xs.iter().enumerate().skip(done) {
                        let v = if fast { q6k_row_fast(w, x) } else { row_scalar(KType::Q6K, w, x) };
                        // SAFETY: each call gets a disjoint range of units, i.e. of rows of each
                        // matrix, and writes only those columns of that matrix's `m * n` outputs.
                        unsafe { *dsts[t].at(i * n + j) = v };
                    }
                }
            }
            KWeights::Q4K(tiles) => {
                let n = tiles.n;
                let mut row = [0f32; TILE_ROWS];
                // Units are whole tiles: j0 and j1 are multiples of 16 (n is).
                for u in j0 / TILE_ROWS..j1 / TILE_ROWS {
                    // Eight, then four rows at a time where the fast kernel runs, then one by one.
                    #[allow(unused_mut)]
                    let mut done = 0;
                    #[cfg(target_arch = "x86_64")]
                    if fast && available() {
                        // SAFETY: `available` checked the features; columns 16u..16u + 16 of the
                        // rows written are this call's.
                        unsafe {
                            done = q4k_rows_fast::<8>(tiles.unit(u), xs, done, dsts[t], n, u);
                            done = q4k_rows_fast::<4>(tiles.unit(u), xs, done, dsts[t], n, u);
                        }
                    }
                    for (i, x) in xs.iter().enumerate().skip(done) {
                        q4k_unit(tiles.unit(u), x, &mut row, fast);
                        // SAFETY: as above; columns 16u..16u + 16 of row i are this call's.
                        unsafe {
                            std::ptr::copy_nonoverlapping(row.as_ptr(), dsts[t].at(i * n + u * TILE_ROWS), TILE_ROWS)
                        };
                    }
                }
            }
        });
    };
    units.dispatch(true, run);
    outs
}

/// `xs @ w^T` for a short prompt (`xs` rows of `w`'s width) and a Q4_K matrix: `[m, n]` row-major,
/// each row exactly what [`gemv_many`] gives it, which is what candle's multi-row tiles give it
/// too (their float chain runs per row, whatever the rows beside it). Per unit of 16 weight rows
/// every prompt row passes over the unit's tiles while they are in cache, so the matrix streams
/// from memory once; candle would first build a second, wider copy of it (6 bits per weight).
pub fn q4k_rows(w: &Q4KTiles, xs: &[Q8KRow]) -> Vec<f32> {
    rows_many(&[KWeights::Q4K(w)], xs).remove(0)
}

/// Rows `from..` of `xs` against the tiles of unit `u`, `R` at a time while `R` remain, into
/// columns `16u..16u + 16` of the `[m, n]` output at `dst`; returns the first row not done.
///
/// # Safety
/// The CPU runs the AVX-512 kernels ([`available`]); no other thread writes those columns.
#[cfg(target_arch = "x86_64")]
unsafe fn q4k_rows_fast<const R: usize>(
    tiles: &[Q4KTile],
    xs: &[Q8KRow],
    mut from: usize,
    dst: OutPtr,
    n: usize,
    u: usize,
) -> usize {
    let mut out = [[0f32; TILE_ROWS]; R];
    while from + R <= xs.len() {
        let x: [&Q8KRow; R] = std::array::from_fn(|r| &xs[from + r]);
        x86::q4k_unit_rows(tiles, x, &mut out);
        for (r, row) in out.iter().enumerate() {
            std::ptr::copy_nonoverlapping(row.as_ptr(), dst.at((from + r) * n + u * TILE_ROWS), TILE_ROWS);
        }
        from += R;
    }
    from
}

fn q6k_row_fast(w: &[u8], x: &Q8KRow) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available` checked the features; `w` holds k / 256 Q6_K blocks and `x` k
        // quantized activations.
        return unsafe { x86::q6k_row(w, x) };
    }
    row_scalar(KType::Q6K, w, x)
}

fn q4k_unit(tiles: &[Q4KTile], x: &Q8KRow, out: &mut [f32], fast: bool) {
    #[cfg(target_arch = "x86_64")]
    if fast && available() {
        // SAFETY: `available` checked the features; `tiles` are k / 256 tiles, `x` holds k
        // quantized activations and `out` 16 floats.
        return unsafe { x86::q4k_unit(tiles, x, out) };
    }
    q4k_unit_scalar(tiles, x, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q4KTile, Q8KRow, Q6K_BYTES, QK_K};
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

    const Q6K_SCALES: [[i16; 32]; 4] = [quad(0), quad(4), quad(8), quad(12)];

    #[inline(always)]
    unsafe fn idx(v: &[i16; 32]) -> __m512i {
        _mm512_loadu_si512(v.as_ptr() as *const _)
    }

    /// The 4 activation bytes at `a + off` in every 32-bit lane.
    #[inline(always)]
    unsafe fn bcast4(a: *const u8, off: usize) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(a.add(off) as *const i32))
    }

    /// [`q4k_unit`] for `R` activation rows at once: each weight vector is unpacked once for all
    /// of them (a prompt or a decode batch). Per row the integer sums are the same and the float
    /// steps run in the same order (sub-block by sub-block: the scaled sum, then the min), so each
    /// row is bit for bit what [`q4k_unit`] gives it. One row at a time, a 1.5B prefill ran 30%
    /// slower than candle's tiled kernel, whose second copy of the weights this avoids.
    ///
    /// # Safety
    /// As [`q4k_unit`], for each row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
    pub unsafe fn q4k_unit_rows<const R: usize>(tiles: &[Q4KTile], xs: [&Q8KRow; R], out: &mut [[f32; 16]; R]) {
        let nib = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for (b, tile) in tiles.iter().enumerate() {
            let p = tile as *const Q4KTile as *const u8;
            prefetch(p, std::mem::size_of::<Q4KTile>());
            let q = tile.qs.as_ptr();
            let d = _mm512_cvtph_ps(_mm256_load_si256(tile.d.as_ptr() as *const _));
            let dmin = _mm512_cvtph_ps(_mm256_load_si256(tile.dmin.as_ptr() as *const _));
            for sub in 0..8 {
                let mut isum = [_mm512_setzero_si512(); R];
                for g in sub * 4..sub * 4 + 4 {
                    let w = _mm512_load_si512(q.add(g * 64) as *const _);
                    let lo = _mm512_and_si512(w, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), nib);
                    for r in 0..R {
                        let a = xs[r].qs.as_ptr().add(b * QK_K) as *const u8;
                        isum[r] = _mm512_dpbusd_epi32(isum[r], lo, bcast4(a, 8 * g));
                        isum[r] = _mm512_dpbusd_epi32(isum[r], hi, bcast4(a, 8 * g + 4));
                    }
                }
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(tile.sc[sub].as_ptr() as *const _)));
                let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(tile.m[sub].as_ptr() as *const _)));
                let scale = _mm512_mul_ps(d, sc);
                let min = _mm512_mul_ps(dmin, m);
                for r in 0..R {
                    let dall = _mm512_set1_ps(*xs[r].d.get_unchecked(b));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_mul_ps(scale, dall), acc[r]);
                    acc[r] = _mm512_fnmadd_ps(min, _mm512_set1_ps(*xs[r].dbsum.get_unchecked(b * 8 + sub)), acc[r]);
                }
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
    }

    /// Rows `16u..16u + 16` of a Q4_K matrix (`tiles`, along `k`) times `x`, bit for bit candle's
    /// `q4k_tile`: per super-block, eight integer sums per row (one `vpdpbusd` chain per
    /// sub-block, all eight independent where candle's are two at a time), then candle's float
    /// steps per sub-block in its order. The next tile is fetched into cache while this one is
    /// multiplied.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW, VNNI and F16C; `x` holds `256 · tiles.len()` quants and `out` 16
    /// floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub unsafe fn q4k_unit(tiles: &[Q4KTile], x: &Q8KRow, out: &mut [f32]) {
        let nib = _mm512_set1_epi8(0x0F);
        let mut acc = _mm512_setzero_ps();
        for (b, tile) in tiles.iter().enumerate() {
            let p = tile as *const Q4KTile as *const u8;
            prefetch(p, std::mem::size_of::<Q4KTile>());
            let a = x.qs.as_ptr().add(b * QK_K) as *const u8;
            let q = tile.qs.as_ptr();
            let mut isum = [_mm512_setzero_si512(); 8];
            for (sub, isum) in isum.iter_mut().enumerate() {
                for g in sub * 4..sub * 4 + 4 {
                    let w = _mm512_load_si512(q.add(g * 64) as *const _);
                    *isum = _mm512_dpbusd_epi32(*isum, _mm512_and_si512(w, nib), bcast4(a, 8 * g));
                    *isum = _mm512_dpbusd_epi32(
                        *isum,
                        _mm512_and_si512(_mm512_srli_epi16(w, 4), nib),
                        bcast4(a, 8 * g + 4),
                    );
                }
            }
            let dall = _mm512_set1_ps(*x.d.get_unchecked(b));
            let d = _mm512_cvtph_ps(_mm256_load_si256(tile.d.as_ptr() as *const _));
            let dmin = _mm512_cvtph_ps(_mm256_load_si256(tile.dmin.as_ptr() as *const _));
            for (sub, isum) in isum.iter().enumerate() {
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(tile.sc[sub].as_ptr() as *const _)));
                let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(tile.m[sub].as_ptr() as *const _)));
                let scale = _mm512_mul_ps(d, sc);
                let min = _mm512_mul_ps(dmin, m);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*isum), _mm512_mul_ps(scale, dall), acc);
                acc = _mm512_fnmadd_ps(min, _mm512_set1_ps(*x.dbsum.get_unchecked(b * 8 + sub)), acc);
            }
        }
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
    }

    /// [`q6k_row`] for `R` activation rows at once: the 6-bit quants and scales of each block are
    /// unpacked once for all of them. Each row's integer sums and float steps are the ones
    /// [`q6k_row`] computes, in its order, so each result is bit for bit that row's alone.
    ///
    /// # Safety
    /// As [`q6k_row`], for each row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub unsafe fn q6k_row_rows<const R: usize>(w: &[u8], xs: [&Q8KRow; R]) -> [f32; R] {
        let nib = _mm512_set1_epi8(0x0F);
        let top = _mm512_set1_epi8(0x30);
        let shl_a = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        let shr_b = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        let ix = [idx(&Q6K_SCALES[0]), idx(&Q6K_SCALES[1]), idx(&Q6K_SCALES[2]), idx(&Q6K_SCALES[3])];
        let m32 = _mm512_set1_epi8(32);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..xs[0].k / QK_K {
            let blk = w.as_ptr().add(b * Q6K_BYTES);
            prefetch(blk, Q6K_BYTES);
            let dw = f16_at(blk.add(208));
            let sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const _)));
            let mut s = [_mm512_setzero_si512(); R];
            for half in 0..2 {
                let l = _mm512_loadu_si512(blk.add(64 * half) as *const _);
                let h = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * half) as *const _));
                let va = _mm512_or_si512(_mm512_and_si512(l, nib), _mm512_and_si512(_mm512_sllv_epi16(h, shl_a), top));
                let vb = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(l, 4), nib),
                    _mm512_and_si512(_mm512_srlv_epi16(h, shr_b), top),
                );
                let (sa, sb) =
                    (_mm512_permutexvar_epi16(ix[2 * half], sc), _mm512_permutexvar_epi16(ix[2 * half + 1], sc));
                for r in 0..R {
                    let a = xs[r].qs.as_ptr().add(b * QK_K);
                    let (xa, xb) = (
                        _mm512_loadu_si512(a.add(128 * half) as *const _),
                        _mm512_loadu_si512(a.add(128 * half + 64) as *const _),
                    );
                    let pa = _mm512_sub_epi16(_mm512_maddubs_epi16(va, xa), _mm512_maddubs_epi16(m32, xa));
                    let pb = _mm512_sub_epi16(_mm512_maddubs_epi16(vb, xb), _mm512_maddubs_epi16(m32, xb));
                    s[r] = _mm512_dpwssd_epi32(s[r], pa, sa);
                    s[r] = _mm512_dpwssd_epi32(s[r], pb, sb);
                }
            }
            for r in 0..R {
                let d = *xs[r].d.get_unchecked(b) * dw;
                let s8 = _mm256_add_epi32(_mm512_castsi512_si256(s[r]), _mm512_extracti64x4_epi64::<1>(s[r]));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s8), acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            out[r] = hsum8(acc[r]);
        }
        out
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
                let vb = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(l, 4), nib),
                    _mm512_and_si512(_mm512_srlv_epi16(h, shr_b), top),
                );
                let (xa, xb) = (
                    _mm512_loadu_si512(a.add(128 * half) as *const _),
                    _mm512_loadu_si512(a.add(128 * half + 64) as *const _),
                );
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
        let mut bytes = vec![0u8; n * k / QK_K * ty.bytes()];
        for blk in bytes.chunks_exact_mut(ty.bytes()) {
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

    /// Every output of the fast kernels, the scalar ones and candle's kernel: equal bits, and
    /// within float rounding of the integer reference (`row_scalar`), for both block types, with
    /// matrices of both types in one call.
    #[test]
    fn kernels_match_the_reference_and_candle() {
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for &(n, k) in &[(48, 256), (32, 1536), (80, 2304)] {
            let x: Vec<f32> = (0..k).map(|_| rng.f32() * 3.0).collect();
            let q = quantize_q8k(&x);
            let q4k = random_matrix(KType::Q4K, n, k, &mut rng);
            let q6k = random_matrix(KType::Q6K, n, k, &mut rng);
            let tiles = Q4KTiles::new(&q4k, n, k).expect("n is a multiple of 16");
            let weights = [KWeights::Q4K(&tiles), KWeights::Q6K { n, k, bytes: &q6k }];
            let fast = gemv_many(&weights, &q);
            let scalar = rows_many_with(&weights, std::slice::from_ref(&q), false);
            for (i, (ty, bytes)) in [(KType::Q4K, &q4k), (KType::Q6K, &q6k)].into_iter().enumerate() {
                let theirs = candle_gemv(ty, bytes, n, k, &x);
                let row_bytes = k / QK_K * ty.bytes();
                for j in 0..n {
                    let reference = row_scalar(ty, &bytes[j * row_bytes..(j + 1) * row_bytes], &q);
                    let tol = 1e-4 * (1.0 + reference.abs());
                    assert!(
                        (theirs[j] - reference).abs() <= tol,
                        "{ty:?} {n}x{k} row {j}: candle {} reference {reference}",
                        theirs[j]
                    );
                    assert!(
                        (scalar[i][j] - reference).abs() <= tol,
                        "{ty:?} {n}x{k} row {j}: scalar {} reference {reference}",
                        scalar[i][j]
                    );
                    if available() {
                        // Bit for bit: candle's integer sums and its float steps in its order.
                        assert_eq!(
                            fast[i][j].to_bits(),
                            theirs[j].to_bits(),
                            "{ty:?} {n}x{k} row {j}: fast {} candle {}",
                            fast[i][j],
                            theirs[j]
                        );
                        if ty == KType::Q4K {
                            assert_eq!(
                                scalar[i][j].to_bits(),
                                theirs[j].to_bits(),
                                "{ty:?} {n}x{k} row {j}: scalar {} candle {}",
                                scalar[i][j],
                                theirs[j]
                            );
                        }
                    }
                }
                assert!(theirs.iter().any(|v| v.abs() > 1e-3), "{ty:?}: degenerate test data");
            }
        }
    }

    /// A decode batch: every row of a several-row product, for both block types, in one call,
    /// bit for bit what the same row gives alone, with the fast kernels and the scalar ones.
    #[test]
    fn rows_of_a_batch_equal_each_row_alone() {
        let mut rng = Rng(77);
        let (n, k) = (48, 1536);
        let q4k = random_matrix(KType::Q4K, n, k, &mut rng);
        let q6k = random_matrix(KType::Q6K, n, k, &mut rng);
        let tiles = Q4KTiles::new(&q4k, n, k).unwrap();
        let weights = [KWeights::Q4K(&tiles), KWeights::Q6K { n, k, bytes: &q6k }];
        for m in [1, 2, 3, 4, 7, 8, 13] {
            let xs: Vec<Q8KRow> =
                (0..m).map(|_| quantize_q8k(&(0..k).map(|_| rng.f32() * 2.0).collect::<Vec<_>>())).collect();
            for fast in [false, true] {
                let batch = rows_many_with(&weights, &xs, fast);
                for (i, x) in xs.iter().enumerate() {
                    let alone = rows_many_with(&weights, std::slice::from_ref(x), fast);
                    for t in 0..2 {
                        assert_eq!(alone[t].len(), n);
                        let row: Vec<u32> = batch[t][i * n..(i + 1) * n].iter().map(|v| v.to_bits()).collect();
                        let want: Vec<u32> = alone[t].iter().map(|v| v.to_bits()).collect();
                        assert_eq!(row, want, "matrix {t} m={m} row {i} fast={fast}");
                    }
                }
                assert!(batch[0].iter().any(|v| v.abs() > 1e-3), "degenerate test data");
            }
        }
    }

    /// Short prompts on a Q4_K matrix: every row bit for bit what candle's multi-row kernel gives.
    #[test]
    fn q4k_rows_are_candles_bit_for_bit() {
        let mut rng = Rng(5);
        let (m, n, k) = (13, 48, 768);
        let bytes = random_matrix(KType::Q4K, n, k, &mut rng);
        let tiles = Q4KTiles::new(&bytes, n, k).unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32() * 2.0).collect();
        let rows: Vec<Q8KRow> = x.chunks_exact(k).map(quantize_q8k).collect();
        let ours = q4k_rows(&tiles, &rows);
        let storage =
            QStorage::from_data(std::borrow::Cow::Borrowed(&bytes[..]), &Device::Cpu, GgmlDType::Q4K).unwrap();
        let qmm = QMatMul::from_qtensor(QTensor::new(storage, (n, k)).unwrap()).unwrap();
        let theirs: Vec<f32> = qmm
            .forward(&Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours.len(), theirs.len());
        assert!(theirs.iter().any(|v| v.abs() > 1e-3), "degenerate test data");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            if available() {
                assert_eq!(a.to_bits(), b.to_bits(), "row {} column {}: ours {a} candle {b}", i / n, i % n);
            } else {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "row {} column {}: ours {a} candle {b}", i / n, i % n);
            }
        }
    }

    /// Rows not in multiples of 16 or a width not of whole blocks are left to candle.
    #[test]
    fn q4k_tiles_take_only_whole_tiles() {
        let mut rng = Rng(7);
        assert!(Q4KTiles::new(&random_matrix(KType::Q4K, 37, 256, &mut rng), 37, 256).is_none());
        assert!(Q4KTiles::new(&random_matrix(KType::Q4K, 16, 256, &mut rng), 16, 512).is_none());
        let t = Q4KTiles::new(&random_matrix(KType::Q4K, 32, 512, &mut rng), 32, 512).unwrap();
        assert_eq!(t.size_bytes(), 2 * 2 * 2368);
    }

    /// Prompts on the tile unit: both block types unpack to the weights candle dequantizes, with
    /// their scales (and Q4_K's mins), so the products are those of the dequantized weights and
    /// the Q8_0-quantized activations, to float rounding.
    #[test]
    fn tile_unit_reads_k_quants_as_candle_dequantizes_them() {
        use crate::kernels::{amx, q8};
        if !amx::available() {
            eprintln!("no AMX on this CPU: nothing to check");
            return;
        }
        let mut rng = Rng(99);
        let (m, n, k) = (40, 48, 512);
        let xs: Vec<f32> = (0..m * k).map(|_| rng.f32()).collect();
        let x = q8::quantize_rows(&xs, k);
        let xd = x.dequantize();
        let mats: Vec<(KType, Vec<u8>)> =
            [KType::Q4K, KType::Q6K].into_iter().map(|ty| (ty, random_matrix(ty, n, k, &mut rng))).collect();
        let rows: Vec<KRows> = mats.iter().map(|(ty, bytes)| KRows { ty: *ty, n, k, bytes }).collect();
        let got = amx::matmul_many(&[&rows[0], &rows[1]], &x);
        for ((ty, bytes), got) in mats.iter().zip(&got) {
            let dtype = if *ty == KType::Q4K { GgmlDType::Q4K } else { GgmlDType::Q6K };
            let storage = QStorage::from_data(std::borrow::Cow::Borrowed(&bytes[..]), &Device::Cpu, dtype).unwrap();
            let w: Vec<f32> = QTensor::new(storage, (n, k))
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut worst = 0f64;
            let mut scale = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| xd[i * k + t] as f64 * w[j * k + t] as f64).sum();
                    worst = worst.max((got[i * n + j] as f64 - want).abs());
                    scale = scale.max(want.abs());
                }
            }
            assert!(scale > 0.1, "{ty:?}: degenerate test data");
            assert!(worst <= 1e-5 * scale, "{ty:?}: off by {worst} at scale {scale}");
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
