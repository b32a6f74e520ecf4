//! Turning logits into the next token: greedy at temperature 0, otherwise temperature sampling
//! with optional top-k and top-p, reproducible for a given seed.
use candle_transformers::generation::{LogitsProcessor, Sampling};

/// The sampling parameters of one request, already validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub seed: u64,
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// candle's sampling mode for these parameters; top_p of 1 and top_k of 0 mean "off".
    pub fn mode(&self) -> Sampling {
        let temperature = self.temperature;
        if self.is_greedy() {
            return Sampling::ArgMax;
        }
        let k = self.top_k.filter(|&k| k > 0);
        let p = self.top_p.filter(|&p| p < 1.0);
        match (k, p) {
            (None, None) => Sampling::All { temperature },
            (Some(k), None) => Sampling::TopK { k, temperature },
            (None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }

    pub fn processor(&self) -> LogitsProcessor {
        LogitsProcessor::from_sampling(self.seed, self.mode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn logits() -> Tensor {
        Tensor::new(&[0.1f32, 2.0, 1.9, -1.0, 0.5], &Device::Cpu).unwrap()
    }

    fn params(temperature: f64, top_k: Option<usize>, top_p: Option<f64>, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, seed }
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let mut p = params(0.0, None, None, 1).processor();
        for _ in 0..10 {
            assert_eq!(p.sample(&logits()).unwrap(), 1);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_sampling_explores() {
        let draw = |seed| {
            let mut p = params(1.5, None, None, seed).processor();
            (0..64).map(|_| p.sample(&logits()).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let d = draw(7);
        assert!(d.iter().any(|&t| t != 1), "sampling at temperature 1.5 never left the argmax: {d:?}");
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_two_stays_in_the_top_two() {
        let mut p = params(5.0, Some(1), None, 3).processor();
        assert!((0..32).all(|_| p.sample(&logits()).unwrap() == 1));
        let mut p = params(5.0, Some(2), None, 3).processor();
        let seen: Vec<u32> = (0..64).map(|_| p.sample(&logits()).unwrap()).collect();
        assert!(seen.iter().all(|t| *t == 1 || *t == 2), "{seen:?}");
        assert!(seen.contains(&1) && seen.contains(&2));
    }

    #[test]
    fn small_top_p_keeps_only_the_head() {
        let mut p = params(1.0, None, Some(0.05), 9).processor();
        assert!((0..32).all(|_| p.sample(&logits()).unwrap() == 1));
        assert!(matches!(params(1.0, Some(0), Some(1.0), 0).mode(), Sampling::All { .. }));
    }
}
