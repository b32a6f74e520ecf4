//! Gated MLP activations fused with their product, `act(gate) * up` (GELU for gemma, SiLU for
//! qwen), in one pass over the two tensors, vectorized, on candle's CPU workers.
//!
//! candle computes `gate.gelu()` element by element through libm's `tanhf` (and its `expm1f`)
//! (`silu` through `expf`), then multiplies by `up` in a second pass over a fresh tensor: on a
//! gemma prefill the two took about 8% of the samples (perf). Here the exponential is evaluated
//! with a degree-6 polynomial after range reduction (relative error about 1e-7, checked against
//! candle's ops in the tests), written as plain arithmetic so that the loop vectorizes.
use crate::kernels::OutPtr;
use candle_core::{DType, Result, Storage, Tensor};

/// `exp(x)` for `x <= 0`: `2^n · e^r` with `n = round(x / ln 2)` and `|r| <= ln 2 / 2`.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    // Round to nearest by the float magic number 1.5 · 2^23 (|x / ln 2| < 2^22): `n` lands in the
    // low bits of `t`, read back as an integer without a float-to-int conversion (a saturating
    // `as i32` kept the loop from vectorizing).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits((ni.wrapping_add(127) as u32) << 23)
}

/// The tanh approximation of GELU (`gelu_pytorch_tanh`, candle's `gelu`).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    let e = exp_nonpositive(-2.0 * u.abs());
    let t = ((1.0 - e) / (1.0 + e)).copysign(u);
    0.5 * x * (1.0 + t)
}

/// `x * sigmoid(x)`, candle's `silu`.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    x * sigmoid
}

/// A gate activation.
trait Act {
    fn f(x: f32) -> f32;
}

struct GeluTanh;
impl Act for GeluTanh {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        gelu_tanh(x)
    }
}

struct Silu;
impl Act for Silu {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        silu(x)
    }
}

#[inline(always)]
fn gated_body<A: Act>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = out.len().min(gate.len()).min(up.len());
    let (out, gate, up) = (&mut out[..n], &gate[..n], &up[..n]);
    for i in 0..n {
        out[i] = A::f(gate[i]) * up[i];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gated_avx512<A: Act>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gated_body::<A>(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2<A: Act>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    gated_body::<A>(gate, up, out)
}

fn gated_slices<A: Act>(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the copy is compiled for.
            return unsafe { gated_avx512::<A>(gate, up, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { gated_avx2::<A>(gate, up, out) };
        }
    }
    gated_body::<A>(gate, up, out)
}

/// Elements per unit of parallel work.
const CHUNK: usize = 8192;

/// `gelu_tanh(gate) * up` for two tensors of one shape; on the CPU with f32 contiguous inputs in
/// one vectorized pass, elsewhere through candle's ops.
pub fn gelu_tanh_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match gated::<GeluTanh>(gate, up)? {
        Some(t) => Ok(t),
        None => gate.gelu()? * up,
    }
}

/// `silu(gate) * up`, as [`gelu_tanh_mul`].
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    match gated::<Silu>(gate, up)? {
        Some(t) => Ok(t),
        None => candle_nn::ops::silu(gate)? * up,
    }
}

/// `A(gate) * up` where the fast path applies, else `None`.
fn gated<A: Act>(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    let cpu_f32 = gate.device().is_cpu() && gate.dtype() == DType::F32 && up.dtype() == DType::F32;
    if !cpu_f32 || gate.dims() != up.dims() || !gate.is_contiguous() || !up.is_contiguous() {
        return Ok(None);
    }
    let n = gate.elem_count();
    let mut out = vec![0f32; n];
    {
        let (gs, gl) = gate.storage_and_layout();
        let (us, ul) = up.storage_and_layout();
        let (Storage::Cpu(gc), Storage::Cpu(uc)) = (&*gs, &*us) else {
            return Ok(None);
        };
        let g = &gc.as_slice::<f32>()?[gl.start_offset()..][..n];
        let u = &uc.as_slice::<f32>()?[ul.start_offset()..][..n];
        let dst = OutPtr(out.as_mut_ptr());
        let run = |range: std::ops::Range<usize>| {
            for c in range {
                let (s, e) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
                // SAFETY: chunk `c` covers out[s..e] only, and each chunk goes to one worker.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.at(s), e - s) };
                gated_slices::<A>(&g[s..e], &u[s..e], o);
            }
        };
        let chunks = n.div_ceil(CHUNK);
        if chunks > 1 {
            candle_core::utils::barrier_pool().execute_chunked(chunks, run);
        } else {
            run(0..chunks);
        }
    }
    Ok(Some(Tensor::from_vec(out, gate.dims(), gate.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candles_gelu_times_up() {
        let dev = Device::Cpu;
        // Values across GELU's whole shape: large negative (0), around 0, large positive (x).
        let gate = (Tensor::randn(0f32, 1.0, (3, 37, 611), &dev).unwrap() * 4.0).unwrap();
        let extremes = Tensor::new(&[-100f32, -20.0, -9.0, -1e-4, 0.0, 1e-6, 3.0, 9.0, 20.0, 100.0], &dev).unwrap();
        for (gate, up) in [
            (gate.clone(), Tensor::randn(0f32, 1.0, (3, 37, 611), &dev).unwrap()),
            (extremes.clone(), extremes.ones_like().unwrap()),
        ] {
            let want = (gate.gelu().unwrap() * &up).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = gelu_tanh_mul(&gate, &up).unwrap();
            assert_eq!(got.dims(), gate.dims());
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 2e-6 * (1.0 + b.abs()), "element {i}: {a} against candle's {b}");
            }
        }
    }

    #[test]
    fn matches_candles_silu_times_up() {
        let dev = Device::Cpu;
        let gate = (Tensor::randn(0f32, 1.0, (2, 29, 977), &dev).unwrap() * 5.0).unwrap();
        let extremes = Tensor::new(&[-100f32, -20.0, -9.0, -1e-4, 0.0, 1e-6, 3.0, 9.0, 20.0, 100.0], &dev).unwrap();
        for (gate, up) in [
            (gate.clone(), Tensor::randn(0f32, 1.0, (2, 29, 977), &dev).unwrap()),
            (extremes.clone(), extremes.ones_like().unwrap()),
        ] {
            let want =
                (candle_nn::ops::silu(&gate).unwrap() * &up).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = silu_mul(&gate, &up).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 2e-6 * (1.0 + b.abs()), "element {i}: {a} against candle's {b}");
            }
        }
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (a, b) = (exp_nonpositive(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b + 1e-38, "exp({x}) = {a}, libm {b}");
        }
    }

    #[test]
    fn other_layouts_fall_back_to_candle() {
        let dev = Device::Cpu;
        let gate = Tensor::randn(0f32, 1.0, (8, 16), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (16, 8), &dev).unwrap().t().unwrap();
        let want = (gate.gelu().unwrap() * &up).unwrap();
        let got = gelu_tanh_mul(&gate, &up).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }
}
