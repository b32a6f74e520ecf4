//! The weight matrices of the models and how they are multiplied: our CPU kernels where they beat
//! candle's (Q8_0/Q5_0/Q4_0 matrices in [`q8`]; Q4_K and Q6_K matrices in [`kquant`]; prompts of
//! all of these on the AMX tile unit in [`amx`]), candle's `QMatMul` elsewhere (other block types,
//! CPUs without AVX-512 VNNI for K-quants, and always on a GPU).
//!
//! Which one a matrix gets is decided once, at load, by [`Kernels`] and the matrix's block type.
pub mod amx;
pub mod kquant;
pub mod q8;
pub mod repack;
pub mod tile;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use q8::Q8Matrix;

/// An output buffer that several workers write at disjoint places (each user says where).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: workers write disjoint index sets: the matrix products disjoint columns (units of
// rows of the weights), `cached_attention` one slice per (head, position), `activation::gated`
// one chunk each.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `i` floats in (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Output rows of several matrices (`rows[t]` each) cut into units of `unit` rows, numbered
/// across the matrices one after another: what one dispatch to the worker pool spreads when a
/// step multiplies one input by several matrices (q/k/v, gate/up).
pub(crate) struct Units {
    starts: Vec<usize>,
    rows: Vec<usize>,
    unit: usize,
}

impl Units {
    pub(crate) fn new(rows: Vec<usize>, unit: usize) -> Units {
        let starts = rows.iter().scan(0, |acc, n| Some(std::mem::replace(acc, *acc + n.div_ceil(unit)))).collect();
        Units { starts, rows, unit }
    }

    /// How many units there are.
    pub(crate) fn count(&self) -> usize {
        self.starts.last().map_or(0, |s| s + self.rows.last().unwrap().div_ceil(self.unit))
    }

    /// Calls `run` with ranges of units covering them all: spread over candle's worker pool (the
    /// one its own kernels use, so the two never compete for cores) where `parallel` and there is
    /// more than one unit, else with all of them here.
    pub(crate) fn dispatch(&self, parallel: bool, run: impl Fn(std::ops::Range<usize>) + Sync) {
        let n = self.count();
        if parallel && n > 1 {
            candle_core::utils::barrier_pool().execute_chunked(n, run);
        } else {
            run(0..n);
        }
    }

    /// Calls `f(t, j0, j1)` for each matrix `t` whose rows `j0..j1` the units `range` cover.
    pub(crate) fn each(&self, range: std::ops::Range<usize>, mut f: impl FnMut(usize, usize, usize)) {
        for (t, (&s, &n)) in self.starts.iter().zip(&self.rows).enumerate() {
            let (u0, u1) = (range.start.max(s), range.end.min(s + n.div_ceil(self.unit)));
            if u0 < u1 {
                f(t, (u0 - s) * self.unit, ((u1 - s) * self.unit).min(n));
            }
        }
    }
}

/// How the CPU multiplies weight matrices (`--kernels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernels {
    /// Our kernels for Q8_0, Q5_0 and Q4_0 matrices (every weight kept bit for bit: Q5_0 in its
    /// own packing, Q4_0 widened to 8 bits), and for Q4_K and Q6_K matrices (AVX-512 VNNI, each
    /// row bit for bit candle's one-token result); prompts of 32+ tokens of all of them on the
    /// AMX tile unit where the CPU has one (`POLYLLM_AMX=0` turns it off).
    #[default]
    Fast,
    /// candle's kernels, Q4_0/Q5_0 re-packed as Q8_0.
    Repack,
    /// candle's kernels on the file's own block types.
    File,
}

/// One weight matrix, used as `x @ w^T`.
pub enum Linear {
    /// Every product through our kernels.
    Q8(Q8Matrix),
    /// A Q4_K or Q6_K matrix, every product through our kernels.
    K(KMatrix),
    /// candle's kernel.
    Candle(QMatMul),
}

/// A Q4_K or Q6_K matrix, every product through our kernels ([`kquant`]; prompts on the AMX tile
/// unit where there is one). candle's kernels are not used: on a prompt of 32 or more tokens its
/// Q4_K kernel built a second, wider copy of every matrix (+1.1 GB for the 1.5B after its first
/// long prompt, measured with `scripts/service_memory.py`).
pub struct KMatrix {
    n: usize,
    k: usize,
    /// The file's blocks: Q6_K matrices are read in place; Q4_K ones only by the tile unit, so
    /// they are kept only where it runs.
    t: Option<QTensor>,
    /// A Q4_K matrix re-laid for our kernels; `None` for Q6_K.
    q4k: Option<kquant::Q4KTiles>,
}

impl KMatrix {
    /// `t` as a [`KMatrix`] where it is a 2-D Q4_K/Q6_K matrix of whole super-blocks (Q4_K: of
    /// rows in multiples of 16) on the CPU and our kernels run here.
    fn new(t: QTensor) -> Result<std::result::Result<KMatrix, QTensor>> {
        let dims = t.shape().dims();
        if !kquant::available() || dims.len() != 2 || !dims[1].is_multiple_of(kquant::QK_K) {
            return Ok(Err(t));
        }
        let (n, k) = (dims[0], dims[1]);
        Ok(Ok(match t.dtype() {
            GgmlDType::Q6K => KMatrix { n, k, t: Some(t), q4k: None },
            GgmlDType::Q4K => match kquant::Q4KTiles::new(&t.data()?, n, k) {
                Some(tiles) => KMatrix { n, k, t: amx::available().then_some(t), q4k: Some(tiles) },
                None => return Ok(Err(t)),
            },
            _ => return Ok(Err(t)),
        }))
    }

    fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn ty(&self) -> kquant::KType {
        if self.q4k.is_some() {
            kquant::KType::Q4K
        } else {
            kquant::KType::Q6K
        }
    }

    /// The file's blocks, where kept.
    fn bytes(&self) -> Result<Option<std::borrow::Cow<'_, [u8]>>> {
        self.t.as_ref().map(|t| t.data()).transpose()
    }

    /// `x @ w^T` for each of `ws` on every row of `x`, each row what it gives alone
    /// ([`kquant::rows_many`]), with one quantization of each row and one pool dispatch.
    fn rows_many(ws: &[&KMatrix], x: &Tensor) -> Result<Vec<Tensor>> {
        let k = ws[0].dims().1;
        if x.dims().last() != Some(&k) {
            candle_core::bail!("matmul: input of width {:?} against a matrix of width {k}", x.dims().last());
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let rows: Vec<kquant::Q8KRow> = xs.chunks_exact(k).map(kquant::quantize_q8k).collect();
        let data = ws.iter().map(|w| w.bytes()).collect::<Result<Vec<_>>>()?;
        let weights: Vec<kquant::KWeights> = ws
            .iter()
            .zip(&data)
            .map(|(w, bytes)| match (&w.q4k, bytes) {
                (Some(tiles), _) => Ok(kquant::KWeights::Q4K(tiles)),
                (None, Some(bytes)) => Ok(kquant::KWeights::Q6K { n: w.n, k: w.k, bytes }),
                (None, None) => Err(candle_core::Error::Msg("a Q6_K matrix without its blocks".into())),
            })
            .collect::<Result<_>>()?;
        kquant::rows_many(&weights, &rows).into_iter().zip(ws).map(|(out, w)| q8_output(out, w.n, x)).collect()
    }
}

/// Rows of activations in `x` (`[.., k]`).
fn rows(x: &Tensor) -> usize {
    x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1)
}

/// Whether `x` is a single row of activations.
fn one_row(x: &Tensor) -> bool {
    x.dims().last().is_some_and(|&k| k > 0 && x.elem_count() == k)
}

fn exact_q8(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q5_0 | GgmlDType::Q4_0)
}

/// A Q8_0, Q5_0 or Q4_0 matrix in our layout, every weight kept exactly (Q5_0 stays packed).
fn to_q8(t: &QTensor) -> Result<Q8Matrix> {
    let (n, k) = t.shape().dims2()?;
    let bytes = t.data()?;
    Ok(match t.dtype() {
        GgmlDType::Q8_0 => Q8Matrix::from_ggml_q8_0(&bytes, n, k),
        GgmlDType::Q5_0 => Q8Matrix::from_ggml_q5_0(&bytes, n, k),
        other => Q8Matrix::from_ggml_q8_0(&repack::repack_q8_0(other, &bytes)?, n, k),
    })
}

impl Linear {
    /// Prepares `t` (a `[n, k]` matrix) for `kernels` on `device`.
    pub fn new(t: QTensor, kernels: Kernels, device: &Device) -> Result<Linear> {
        let two_d = t.shape().dims().len() == 2 && t.shape().dims()[1].is_multiple_of(q8::QK);
        if !device.is_cpu() || !two_d {
            return Ok(Linear::Candle(QMatMul::from_qtensor(t)?));
        }
        let dtype = t.dtype();
        Ok(match kernels {
            Kernels::File => Linear::Candle(QMatMul::from_qtensor(t)?),
            Kernels::Repack if matches!(dtype, GgmlDType::Q5_0 | GgmlDType::Q4_0) => {
                let data = repack::repack_q8_0(dtype, &t.data()?)?;
                let shape = t.shape().clone();
                Linear::Candle(QMatMul::from_qtensor(QTensor::new(
                    candle_core::quantized::QStorage::from_data(data.into(), device, GgmlDType::Q8_0)?,
                    shape,
                )?)?)
            }
            Kernels::Repack => Linear::Candle(QMatMul::from_qtensor(t)?),
            Kernels::Fast if exact_q8(dtype) => Linear::Q8(to_q8(&t)?),
            Kernels::Fast => match KMatrix::new(t)? {
                Ok(m) => Linear::K(m),
                Err(t) => Linear::Candle(QMatMul::from_qtensor(t)?),
            },
        })
    }
}

/// `x` (`[.., k]`, any float type) as rows of quantized activations.
fn q8_input(x: &Tensor, k: usize) -> Result<q8::Q8Rows> {
    let width = *x.dims().last().ok_or_else(|| candle_core::Error::Msg("matmul of a scalar".into()))?;
    if width != k {
        candle_core::bail!("matmul: input width {width} against a matrix of width {k}");
    }
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(q8::quantize_rows(&xs, k))
}

/// The product laid out like `x` with `n` in place of its last dimension.
fn q8_output(out: Vec<f32>, n: usize, x: &Tensor) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    *dims.last_mut().unwrap() = n;
    Tensor::from_vec(out, dims, x.device())?.to_dtype(x.dtype())
}

fn q8_forward(w: &Q8Matrix, x: &Tensor) -> Result<Tensor> {
    q8_output(w.matmul(&q8_input(x, w.cols())?), w.rows(), x)
}

impl Linear {
    /// `x @ w^T` for each of `ws`, all of the same input width. Where every matrix is ours, `x`
    /// is quantized once and the products share one dispatch to the worker pool; where every one
    /// is candle's of one block type, candle's fused kernel does the same when it supports them.
    pub fn forward_many(ws: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        if ws.is_empty() {
            return Ok(Vec::new());
        }
        // Prompts on the tile unit, where there is one.
        if amx_rows(x) {
            if let Some(outs) = Linear::amx_many(ws, x)? {
                return Ok(outs);
            }
        }
        let ours: Option<Vec<&Q8Matrix>> = ws
            .iter()
            .map(|w| match w {
                Linear::Q8(m) => Some(m),
                _ => None,
            })
            .collect();
        if let Some(ms) = ours {
            let rows = q8_input(x, ms[0].cols())?;
            return Q8Matrix::matmul_many(&ms, &rows)
                .into_iter()
                .zip(&ms)
                .map(|(out, m)| q8_output(out, m.rows(), x))
                .collect();
        }
        let ks: Option<Vec<&KMatrix>> = ws
            .iter()
            .map(|w| match w {
                Linear::K(m) => Some(m),
                _ => None,
            })
            .collect();
        if let Some(ks) = ks {
            return KMatrix::rows_many(&ks, x);
        }
        let theirs: Option<Vec<&QTensor>> = ws
            .iter()
            .map(|w| match w {
                Linear::Candle(QMatMul::QTensor(t)) => Some(&**t),
                _ => None,
            })
            .collect();
        // candle's fused kernel is its tiled one-token kernel; from 32 rows on, its separate
        // products.
        let rows = rows(x);
        if let (Some(ts), true) = (theirs, x.is_contiguous() && x.dtype() == DType::F32 && rows < 32) {
            if let Some(outs) = QTensor::gemv_fused_shared_lhs(&ts, x)? {
                return Ok(outs);
            }
        }
        ws.iter().map(|w| w.forward(x)).collect()
    }
}

impl Linear {
    /// `x @ w^T` for each of `ws`, where `x` (`[.., rows, k]`) holds one row per sequence of a
    /// decode batch: each output row is bit for bit what that row gets alone from
    /// [`Linear::forward_many`] (several matrices) or [`Module::forward`] (one), so a sequence
    /// decodes the same tokens in a batch as alone. Where every matrix is ours, one pass over each
    /// serves every row (the weights stream from memory once per step, not once per sequence);
    /// the tile unit is not used (its float order differs from the one-row kernels'). Other
    /// matrices (candle's) run row by row.
    pub fn forward_batch(ws: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        if ws.is_empty() {
            return Ok(Vec::new());
        }
        let alone = |row: &Tensor| -> Result<Vec<Tensor>> {
            match ws {
                [w] => Ok(vec![w.forward(row)?]),
                _ => Linear::forward_many(ws, row),
            }
        };
        if one_row(x) {
            return alone(x);
        }
        if let Some(ms) =
            ws.iter().map(|w| if let Linear::Q8(m) = w { Some(m) } else { None }).collect::<Option<Vec<_>>>()
        {
            let rows = q8_input(x, ms[0].cols())?;
            return Q8Matrix::matmul_many(&ms, &rows)
                .into_iter()
                .zip(&ms)
                .map(|(out, m)| q8_output(out, m.rows(), x))
                .collect();
        }
        if let Some(ks) =
            ws.iter().map(|w| if let Linear::K(m) = w { Some(m) } else { None }).collect::<Option<Vec<_>>>()
        {
            return KMatrix::rows_many(&ks, x);
        }
        let dims = x.dims();
        let (m, k) = (rows(x), *dims.last().unwrap());
        let flat = x.reshape((m, k))?;
        let mut outs: Vec<Vec<Tensor>> = vec![Vec::with_capacity(m); ws.len()];
        for i in 0..m {
            for (t, o) in alone(&flat.narrow(0, i, 1)?)?.into_iter().enumerate() {
                outs[t].push(o.flatten_all()?);
            }
        }
        outs.into_iter()
            .map(|rows_t| {
                let n = rows_t[0].elem_count();
                let mut d = dims.to_vec();
                *d.last_mut().unwrap() = n;
                Tensor::stack(&rows_t, 0)?.reshape(d)
            })
            .collect()
    }
}

impl Linear {
    /// [`Linear::forward_many`] on the tile unit, where every matrix is one our kernels read;
    /// `None` where one is candle's.
    fn amx_many(ws: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let data = ws
            .iter()
            .map(|w| match w {
                Linear::K(m) => m.bytes(),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let krows: Vec<Option<kquant::KRows>> = ws
            .iter()
            .zip(&data)
            .map(|(w, bytes)| match (w, bytes) {
                (Linear::K(m), Some(bytes)) => {
                    let (n, k) = m.dims();
                    Some(kquant::KRows { ty: m.ty(), n, k, bytes })
                }
                _ => None,
            })
            .collect();
        let mut tiles: Vec<&dyn amx::TileRows> = Vec::with_capacity(ws.len());
        for (w, kr) in ws.iter().zip(&krows) {
            match (w, kr) {
                (Linear::Q8(m), _) => tiles.push(m),
                (Linear::K(_), Some(kr)) => tiles.push(kr),
                _ => return Ok(None),
            }
        }
        let rows = q8_input(x, tiles[0].dims().1)?;
        amx::matmul_many(&tiles, &rows)
            .into_iter()
            .zip(&tiles)
            .map(|(out, t)| q8_output(out, t.dims().0, x))
            .collect::<Result<_>>()
            .map(Some)
    }
}

impl Linear {
    /// Rows `ids` of the matrix as f32 (`ids.len() * k` values), each what dequantizing the
    /// file's blocks gives: how a tied output head doubles as the token embedding table without a
    /// second copy. `None` where the matrix is not kept in a form that has its rows (a Q4_K matrix
    /// re-laid without its file blocks, or a dense or GPU one).
    pub fn rows_f32(&self, ids: &[u32]) -> Result<Option<Vec<f32>>> {
        let (n, k) = match self {
            Linear::Q8(m) => (m.rows(), m.cols()),
            Linear::K(m) => m.dims(),
            Linear::Candle(QMatMul::QTensor(t)) if t.device().is_cpu() => t.shape().dims2()?,
            Linear::Candle(_) => return Ok(None),
        };
        let bytes = match self {
            Linear::K(m) => match m.bytes()? {
                Some(b) => Some((b, m.ty().dtype())),
                None => return Ok(None),
            },
            Linear::Candle(QMatMul::QTensor(t)) => Some((t.data()?, t.dtype())),
            _ => None,
        };
        let mut out = Vec::with_capacity(ids.len() * k);
        for &id in ids {
            let id = id as usize;
            if id >= n {
                candle_core::bail!("token id {id} out of the table's {n} rows");
            }
            match (self, &bytes) {
                (Linear::Q8(m), _) => m.dequantize_row(id, &mut out),
                (_, Some((data, dtype))) => {
                    let row_bytes = k / dtype.block_size() * dtype.type_size();
                    let row = &data[id * row_bytes..(id + 1) * row_bytes];
                    let storage = QStorage::from_data(std::borrow::Cow::Borrowed(row), &Device::Cpu, *dtype)?;
                    out.extend(QTensor::new(storage, (k,))?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?);
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

/// Whether `x` is a prompt the tile unit takes: [`amx::MIN_ROWS`] rows or more, where it runs.
fn amx_rows(x: &Tensor) -> bool {
    let width = x.dims().last().copied().unwrap_or(0);
    width > 0 && x.elem_count() / width >= amx::MIN_ROWS && amx::available()
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if matches!(self, Linear::Q8(_) | Linear::K(_)) && amx_rows(x) {
            if let Some(mut outs) = Linear::amx_many(&[self], x)? {
                return Ok(outs.remove(0));
            }
        }
        match self {
            Linear::Candle(m) => m.forward(x),
            Linear::Q8(w) => q8_forward(w, x),
            Linear::K(w) => Ok(KMatrix::rows_many(&[w], x)?.remove(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Units;

    fn covered(u: &Units, range: std::ops::Range<usize>) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        u.each(range, |t, j0, j1| v.push((t, j0, j1)));
        v
    }

    #[test]
    fn units_cover_every_row_of_every_matrix_once() {
        let u = Units::new(vec![5, 16, 33], 16);
        assert_eq!(u.count(), 5);
        assert_eq!(covered(&u, 0..5), vec![(0, 0, 5), (1, 0, 16), (2, 0, 33)]);
        assert_eq!(covered(&u, 1..3), vec![(1, 0, 16), (2, 0, 16)]);
        assert_eq!(covered(&u, 4..5), vec![(2, 32, 33)]);
        assert!(covered(&u, 5..9).is_empty());
        // Any split of the units covers each row exactly once.
        let mut seen = [vec![0; 5], vec![0; 16], vec![0; 33]];
        for r in [0..2, 2..3, 3..5] {
            u.each(r, |t, j0, j1| (j0..j1).for_each(|j| seen[t][j] += 1));
        }
        assert!(seen.iter().flatten().all(|&n| n == 1));
        assert_eq!(Units::new(Vec::new(), 16).count(), 0);
    }
}
