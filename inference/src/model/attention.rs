//! Attention of new tokens over a sequence's cached keys and values, read in place on the CPU.
//!
//! candle's `KvCache` keeps each layer's keys as one preallocated `[1, n_kv, max_len, d]` tensor.
//! The tensor-op path (still used on GPUs, in each architecture) copies the used part out
//! (`contiguous`), copies it again `n_head / n_kv` times (`repeat_kv`), multiplies every query by
//! every key (the masked half too), adds a mask and runs a softmax as separate ops; on a 512-token
//! prompt its f32 matmuls also ran on one thread (perf). [`cached_attention`] instead lets each
//! (query head, position) pair read its key/value head where it lies, only the keys that position
//! sees, with the pairs spread over candle's CPU workers.
use crate::kernels::OutPtr;
use candle_core::{Result, Storage, Tensor};
use candle_nn::kv_cache::KvCache;

/// Attention output `[1, seq, n_head * d]` of the queries `q` (`[1, n_head, seq, d]`, f32, already
/// rotated) at positions `pos..pos + seq`, the last `seq` entries of `cache`: position `p` sees the
/// cached positions `from..=p`, where `from` is 0, or `p + 1 - window` for a sliding window; the
/// scores are multiplied by `scale`. `None` where this path does not apply (not on the CPU, not
/// f32, the cache not holding exactly `pos + seq` positions); the caller then uses tensor ops.
pub fn cached_attention(
    q: &Tensor,
    cache: &KvCache,
    pos: usize,
    window: Option<usize>,
    scale: f32,
) -> Result<Option<Tensor>> {
    let (Some(k_all), Some(v_all)) = (cache.k_cache().all_data(), cache.v_cache().all_data()) else {
        return Ok(None);
    };
    let len = cache.current_seq_len();
    if !q.device().is_cpu()
        || q.dtype() != candle_core::DType::F32
        || k_all.dtype() != candle_core::DType::F32
        || window == Some(0)
    {
        return Ok(None);
    }
    let (_, n_head, seq, d) = q.dims4()?;
    let (_, n_kv, max_len, kd) = k_all.dims4()?;
    if seq == 0 || pos + seq != len || kd != d || n_kv == 0 || n_head % n_kv != 0 || v_all.dims4()? != k_all.dims4()? {
        return Ok(None);
    }
    let q = q.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k_all.storage_and_layout();
    let (vs, vl) = v_all.storage_and_layout();
    let (Storage::Cpu(qc), Storage::Cpu(kc), Storage::Cpu(vc)) = (&*qs, &*ks, &*vs) else {
        return Ok(None);
    };
    if !kl.is_contiguous() || !vl.is_contiguous() {
        return Ok(None);
    }
    let queries = &qc.as_slice::<f32>()?[ql.start_offset()..][..n_head * seq * d];
    let keys = &kc.as_slice::<f32>()?[kl.start_offset()..][..n_kv * max_len * d];
    let values = &vc.as_slice::<f32>()?[vl.start_offset()..][..n_kv * max_len * d];
    let mut out = vec![0f32; seq * n_head * d];
    let heads = Heads { q: queries, keys, values, n_rep: n_head / n_kv, seq, max_len, d, pos, window, scale };
    let dst = OutPtr(out.as_mut_ptr());
    // Work items: (head, position), head-major so that one worker's items share keys in cache.
    let run = |range: std::ops::Range<usize>| {
        let mut scores = Vec::with_capacity(len);
        for item in range {
            let (h, i) = (item / seq, item % seq);
            // SAFETY: item (h, i) writes only `out[(i * n_head + h) * d..][..d]`, and each item
            // is handed to exactly one worker.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.at((i * n_head + h) * d), d) };
            heads.one(h, i, &mut scores, o);
        }
    };
    // Below a few thousand multiply-adds in all, waking workers costs more than it saves.
    if n_head * seq > 1 && seq * len * d >= 4096 {
        candle_core::utils::barrier_pool().execute_chunked(n_head * seq, run);
    } else {
        run(0..n_head * seq);
    }
    drop((qs, ks, vs));
    Ok(Some(Tensor::from_vec(out, (1, seq, n_head * d), q.device())?))
}

struct Heads<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    n_rep: usize,
    seq: usize,
    max_len: usize,
    d: usize,
    pos: usize,
    window: Option<usize>,
    scale: f32,
}

impl Heads<'_> {
    fn one(&self, h: usize, i: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the features the copy is compiled for.
                return unsafe { self.one_avx512(h, i, scores, out) };
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                return unsafe { self.one_avx2(h, i, scores, out) };
            }
        }
        self.one_body(h, i, scores, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn one_avx512(&self, h: usize, i: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
        self.one_body(h, i, scores, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn one_avx2(&self, h: usize, i: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
        self.one_body(h, i, scores, out)
    }

    /// Softmax-weighted sum of the values that query head `h` at position `pos + i` sees, into
    /// `out` (zeroed); `scores` is scratch space. Plain loops, no closures: a closure is compiled
    /// without the caller's target features (an iterator `map` here ran as SSE code, 7% of a
    /// gemma prefill).
    #[inline(always)]
    fn one_body(&self, h: usize, i: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
        let d = self.d;
        let last = self.pos + i;
        let from = self.window.map_or(0, |w| (last + 1).saturating_sub(w));
        let base = (h / self.n_rep) * self.max_len * d;
        let q = &self.q[(h * self.seq + i) * d..][..d];
        scores.clear();
        let mut top = f32::NEG_INFINITY;
        for t in from..=last {
            let s = dot(q, &self.keys[base + t * d..][..d]) * self.scale;
            top = top.max(s);
            scores.push(s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - top).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        for (k, t) in (from..=last).enumerate() {
            let w = scores[k] * inv;
            for (o, &v) in out.iter_mut().zip(&self.values[base + t * d..][..d]) {
                *o += w * v;
            }
        }
    }
}

/// Dot product in 16 independent lanes (so that it vectorizes, with two chains in flight on
/// 256-bit registers), then their sum.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    s + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The tensor-op path the architectures use on GPUs: `q` `[1, h, seq, d]`, keys and values of
    /// every visible position, `mask` `[1, 1, seq, kv]` or none.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, n_rep: usize, scale: f64, mask: Option<&Tensor>) -> Tensor {
        let k = candle_transformers::utils::repeat_kv(k.contiguous().unwrap(), n_rep).unwrap();
        let v = candle_transformers::utils::repeat_kv(v.contiguous().unwrap(), n_rep).unwrap();
        let mut att = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        if let Some(m) = mask {
            att = att.broadcast_add(m).unwrap();
        }
        let att = candle_nn::ops::softmax(&att, D::Minus1).unwrap();
        let (_, h, seq, d) = q.dims4().unwrap();
        att.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((1, seq, h * d)).unwrap()
    }

    fn max_diff(a: Tensor, b: Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// One token at a time, as decoding does: against the tensor ops over the visible keys.
    #[test]
    fn decoding_matches_tensor_ops_with_grouped_heads_and_windows() {
        let dev = Device::Cpu;
        for (n_head, n_kv, d, steps, window) in
            [(4, 1, 256, 40, None), (14, 2, 64, 70, None), (4, 1, 32, 30, Some(8)), (2, 2, 24, 5, None)]
        {
            let mut cache = KvCache::new(2, 128);
            // A prompt of 3 positions, then one position at a time.
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
                let got =
                    cached_attention(&q, &cache, len - 1, window, scale as f32).unwrap().expect("fast path applies");
                let want = reference(
                    &q,
                    &k.narrow(2, from, len - from).unwrap(),
                    &v.narrow(2, from, len - from).unwrap(),
                    n_head / n_kv,
                    scale,
                    None,
                );
                let diff = max_diff(got, want);
                assert!(diff < 1e-4, "heads {n_head}/{n_kv} d {d} len {len}: max difference {diff}");
            }
        }
    }

    /// Prompts, the first one and one that follows cached positions: against the tensor ops with
    /// the architectures' causal (and sliding-window) mask.
    #[test]
    fn prompts_match_tensor_ops_with_causal_and_window_masks() {
        let dev = Device::Cpu;
        for (n_head, n_kv, d, cached, seq, window) in
            [(14, 2, 64, 0, 37, None), (4, 1, 256, 5, 20, Some(8)), (4, 4, 32, 0, 64, Some(16)), (2, 1, 24, 9, 1, None)]
        {
            let mut cache = KvCache::new(2, 128);
            if cached > 0 {
                let k0 = Tensor::randn(0f32, 1.0, (1, n_kv, cached, d), &dev).unwrap();
                cache.append(&k0, &k0.sin().unwrap()).unwrap();
            }
            let k1 = Tensor::randn(0f32, 1.0, (1, n_kv, seq, d), &dev).unwrap();
            let v1 = Tensor::randn(0f32, 1.0, (1, n_kv, seq, d), &dev).unwrap();
            let (k, v) = cache.append(&k1, &v1).unwrap();
            let q = Tensor::randn(0f32, 1.0, (1, n_head, seq, d), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let got = cached_attention(&q, &cache, cached, window, scale as f32).unwrap().expect("fast path applies");
            let mask = crate::model::parts::causal_mask(seq, cached, window, &dev).unwrap();
            let want = reference(&q, &k, &v, n_head / n_kv, scale, Some(&mask));
            let diff = max_diff(got, want);
            assert!(
                diff < 1e-4,
                "heads {n_head}/{n_kv} d {d} cached {cached} seq {seq} window {window:?}: max difference {diff}"
            );
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let dev = Device::Cpu;
        let cache = KvCache::new(2, 16);
        let q = Tensor::zeros((1, 2, 1, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(cached_attention(&q, &cache, 0, None, 1.0).unwrap().is_none(), "empty cache");
        let mut cache = KvCache::new(2, 16);
        let kv = Tensor::zeros((1, 2, 2, 8), candle_core::DType::F32, &dev).unwrap();
        cache.append(&kv, &kv).unwrap();
        let two = Tensor::zeros((1, 2, 2, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(
            cached_attention(&two, &cache, 1, None, 1.0).unwrap().is_none(),
            "queries not the cache's last positions"
        );
        assert!(cached_attention(&q, &cache, 1, Some(0), 1.0).unwrap().is_none(), "empty window");
        assert!(
            cached_attention(&q.to_dtype(candle_core::DType::F16).unwrap(), &cache, 1, None, 1.0).unwrap().is_none(),
            "f16 queries"
        );
        assert!(cached_attention(&two, &cache, 0, None, 1.0).unwrap().is_some());
        assert!(cached_attention(&q, &cache, 1, None, 1.0).unwrap().is_some());
    }
}
