//! Attention of one new token over a sequence's cached keys and values, read in place on the CPU.
//!
//! candle's `KvCache` keeps each layer's keys as one preallocated `[1, n_kv, max_len, d]` tensor.
//! The tensor-op path (still used for prompts and on GPUs, in each architecture) copies the used
//! part out (`contiguous`), copies it again `n_head / n_kv` times (`repeat_kv`), and runs two small
//! matmuls and a softmax as separate ops. For a one-token step, [`decode_attention`] instead lets
//! each query head read its key/value head where it lies, heads spread over candle's CPU workers.
use candle_core::{Result, Storage, Tensor};
use candle_nn::kv_cache::KvCache;

/// Attention output `[1, 1, n_head * d]` of one query (`q`: `[1, n_head, 1, d]`, f32) over cached
/// positions `from..len` of `cache` (keys already rotated, `scale` applied to the scores). `None`
/// where the fast path does not apply (not on the CPU, not f32, nothing cached); the caller then
/// uses tensor ops.
pub fn decode_attention(q: &Tensor, cache: &KvCache, from: usize, scale: f32) -> Result<Option<Tensor>> {
    let (Some(k_all), Some(v_all)) = (cache.k_cache().all_data(), cache.v_cache().all_data()) else {
        return Ok(None);
    };
    let len = cache.current_seq_len();
    if !q.device().is_cpu() || q.dtype() != candle_core::DType::F32 || k_all.dtype() != candle_core::DType::F32 || from >= len {
        return Ok(None);
    }
    let (_, n_head, one, d) = q.dims4()?;
    let (_, n_kv, max_len, kd) = k_all.dims4()?;
    if one != 1 || kd != d || n_kv == 0 || n_head % n_kv != 0 || v_all.dims4()? != k_all.dims4()? {
        return Ok(None);
    }
    let qv = q.flatten_all()?.to_vec1::<f32>()?;
    let (ks, kl) = k_all.storage_and_layout();
    let (vs, vl) = v_all.storage_and_layout();
    let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks, &*vs) else {
        return Ok(None);
    };
    if !kl.is_contiguous() || !vl.is_contiguous() {
        return Ok(None);
    }
    let keys = &kc.as_slice::<f32>()?[kl.start_offset()..][..n_kv * max_len * d];
    let values = &vc.as_slice::<f32>()?[vl.start_offset()..][..n_kv * max_len * d];
    let mut out = vec![0f32; n_head * d];
    let heads = Heads { q: &qv, keys, values, n_rep: n_head / n_kv, max_len, d, from, len, scale };
    let dst = OutPtr(out.as_mut_ptr());
    let run = |range: std::ops::Range<usize>| {
        for h in range {
            // SAFETY: head `h` writes only `out[h * d..(h + 1) * d]`, and each head is handed to
            // exactly one worker.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.at(h * d), d) };
            heads.one(h, o);
        }
    };
    // Below a few thousand multiply-adds per head, waking workers costs more than it saves.
    if n_head > 1 && (len - from) * d >= 4096 {
        candle_core::utils::barrier_pool().execute_chunked(n_head, run);
    } else {
        run(0..n_head);
    }
    drop((ks, vs));
    Ok(Some(Tensor::from_vec(out, (1, 1, n_head * d), q.device())?))
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: workers write disjoint head slices (see `decode_attention`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `i` floats in (a method, so that closures capture the whole `Send` wrapper).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

struct Heads<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    n_rep: usize,
    max_len: usize,
    d: usize,
    from: usize,
    len: usize,
    scale: f32,
}

impl Heads<'_> {
    fn one(&self, h: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the copy is compiled for.
                return unsafe { self.one_avx2(h, out) };
            }
        }
        self.one_body(h, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn one_avx2(&self, h: usize, out: &mut [f32]) {
        self.one_body(h, out)
    }

    /// Softmax-weighted sum of the values of head `h`'s key/value head, into `out` (zeroed).
    #[inline(always)]
    fn one_body(&self, h: usize, out: &mut [f32]) {
        let d = self.d;
        let base = (h / self.n_rep) * self.max_len * d;
        let q = &self.q[h * d..][..d];
        let mut scores: Vec<f32> = (self.from..self.len).map(|t| dot(q, &self.keys[base + t * d..][..d]) * self.scale).collect();
        let top = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - top).exp();
            sum += *s;
        }
        for (t, &p) in (self.from..self.len).zip(&scores) {
            let w = p / sum;
            for (o, &v) in out.iter_mut().zip(&self.values[base + t * d..][..d]) {
                *o += w * v;
            }
        }
    }
}

/// Dot product in 8 independent lanes (so that it vectorizes), then their sum.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The tensor-op path the architectures use for prompts.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, n_rep: usize, scale: f64) -> Tensor {
        let k = candle_transformers::utils::repeat_kv(k.contiguous().unwrap(), n_rep).unwrap();
        let v = candle_transformers::utils::repeat_kv(v.contiguous().unwrap(), n_rep).unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
        let (_, h, _, d) = q.dims4().unwrap();
        att.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((1, 1, h * d)).unwrap()
    }

    #[test]
    fn matches_tensor_ops_with_grouped_heads_and_windows() {
        let dev = Device::Cpu;
        for (n_head, n_kv, d, steps, window) in [(4, 1, 256, 40, None), (14, 2, 64, 70, None), (4, 1, 32, 30, Some(8)), (2, 2, 24, 5, None)] {
            let mut cache = KvCache::new(2, 128);
            // A prompt of 3 positions, then one position at a time, as decoding does.
            let k0 = Tensor::randn(0f32, 1.0, (1, n_kv, 3, d), &dev).unwrap();
            let v0 = Tensor::randn(0f32, 1.0, (1, n_kv, 3, d), &dev).unwrap();
            cache.append(&k0, &v0).unwrap();
            for _ in 0..steps {
                let k1 = Tensor::randn(0f32, 1.0, (1, n_kv, 1, d), &dev).unwrap();
                let v1 = Tensor::randn(0f32, 1.0, (1, n_kv, 1, d), &dev).unwrap();
                let (k, v) = cache.append(&k1, &v1).unwrap();
                let q = Tensor::randn(0f32, 1.0, (1, n_head, 1, d), &dev).unwrap();
                let len = cache.current_seq_len();
                let from = window.map_or(0, |w: usize| len.saturating_sub(w));
                let scale = 1.0 / (d as f64).sqrt();
                let got = decode_attention(&q, &cache, from, scale as f32).unwrap().expect("fast path applies");
                let want = reference(&q, &k.narrow(2, from, len - from).unwrap(), &v.narrow(2, from, len - from).unwrap(), n_head / n_kv, scale);
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "heads {n_head}/{n_kv} d {d} len {len}: max difference {diff}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let dev = Device::Cpu;
        let cache = KvCache::new(2, 16);
        let q = Tensor::zeros((1, 2, 1, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(decode_attention(&q, &cache, 0, 1.0).unwrap().is_none(), "empty cache");
        let mut cache = KvCache::new(2, 16);
        let kv = Tensor::zeros((1, 2, 2, 8), candle_core::DType::F32, &dev).unwrap();
        cache.append(&kv, &kv).unwrap();
        let two = Tensor::zeros((1, 2, 2, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(decode_attention(&two, &cache, 0, 1.0).unwrap().is_none(), "more than one query");
        assert!(decode_attention(&q, &cache, 2, 1.0).unwrap().is_none(), "empty window");
        assert!(decode_attention(&q, &cache, 0, 1.0).unwrap().is_some());
    }
}
