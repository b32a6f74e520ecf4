//! What the AMX tile unit ([`super::amx`]) needs of a weight matrix, apart from the tile unit
//! itself: the tile size and how a matrix's rows unpack to i8 quants with their scales. The block
//! types ([`super::q8`], [`super::kquant`]) implement [`TileRows`] without depending on the AMX
//! code, which in turn reads their activations' [`super::q8::Q8Rows`].

/// Rows of a tile (of weights and of activations).
pub const T: usize = 16;

/// A weight matrix as the tile unit reads it.
pub trait TileRows: Sync {
    /// `(n, k)`: rows and weights per row (`k` a multiple of 32).
    fn dims(&self) -> (usize, usize);

    /// Weights per scale: 32, or 16 (Q6_K).
    fn group(&self) -> usize {
        32
    }

    /// Whether each 32 weights also have a min, subtracted (Q4_K).
    fn has_mins(&self) -> bool {
        false
    }

    /// Rows `n0..n0 + 16` as i8 rows of `k`, where the matrix holds them so.
    fn in_place(&self, _n0: usize) -> Option<*const i8> {
        None
    }

    /// The quants of rows `n0..n0 + take` (`take <= 16`) into `rows[r * k..]`.
    fn quants(&self, n0: usize, take: usize, rows: &mut [i8]);

    /// The scale of group `g` of row `n0 + r` into `dw[g][r]`, and with [`has_mins`] the min of
    /// its 32-weight block `b` into `mw[b][r]`.
    ///
    /// [`has_mins`]: TileRows::has_mins
    fn scales(&self, n0: usize, take: usize, dw: &mut [[f32; T]], mw: &mut [[f32; T]]);
}
