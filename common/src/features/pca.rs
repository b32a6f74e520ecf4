//! PCA of the sentence embedding, fitted by the trainer and stored in the router model's
//! `meta.json`; the router applies it to every prompt.
//!
//! This module owns [`Pca`]: fitting (center, d×d covariance, symmetric eigen-decomposition with
//! nalgebra in f64, top-k axes by eigenvalue with a deterministic sign) and projecting.
use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};

use super::FeatureError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    /// Mean of the fitted embeddings (length = embedding dims).
    pub mean: Vec<f32>,
    /// `dims` principal axes, each of embedding length, largest variance first.
    pub components: Vec<Vec<f32>>,
    /// Share of the variance each component explains.
    pub explained_variance_ratio: Vec<f32>,
}

fn pca_err(message: impl Into<String>) -> FeatureError {
    FeatureError::Pca(message.into())
}

impl Pca {
    /// Fit `k` components on the rows (each an embedding).
    ///
    /// The covariance uses the `n - 1` denominator (irrelevant to the axes and ratios). Each
    /// component is a unit vector whose largest-magnitude entry is positive (first such entry on
    /// ties), so refitting the same rows gives the same signs. Errors on no rows, ragged rows,
    /// zero-width rows, non-finite values, or `k` above the row width.
    pub fn fit(rows: &[Vec<f32>], k: usize) -> Result<Self, FeatureError> {
        let n = rows.len();
        let first = rows.first().ok_or_else(|| pca_err("no rows to fit"))?;
        let d = first.len();
        if d == 0 {
            return Err(pca_err("rows have no columns"));
        }
        if k > d {
            return Err(pca_err(format!("{k} components requested from {d}-dimensional rows")));
        }
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != d) {
            return Err(pca_err(format!("row {i} has {} values, row 0 has {d}", r.len())));
        }
        if rows.iter().flatten().any(|x| !x.is_finite()) {
            return Err(pca_err("rows contain NaN or infinite values"));
        }

        let mut mean = vec![0f64; d];
        for r in rows {
            for (m, x) in mean.iter_mut().zip(r) {
                *m += *x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);

        // Centered data, n × d (column-major, filled row by row).
        let centered = DMatrix::<f64>::from_fn(n, d, |i, j| rows[i][j] as f64 - mean[j]);
        let denom = (n.max(2) - 1) as f64;
        let cov = (centered.transpose() * &centered) / denom;

        let eigen = SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..d).collect();
        // Descending eigenvalue; index breaks ties so the order is total and deterministic.
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]).then(a.cmp(&b)));
        let total: f64 = eigen.eigenvalues.iter().map(|l| l.max(0.0)).sum();

        let mut components = Vec::with_capacity(k);
        let mut explained_variance_ratio = Vec::with_capacity(k);
        for &idx in order.iter().take(k) {
            let col = eigen.eigenvectors.column(idx);
            let mut best = 0usize;
            for j in 1..d {
                if col[j].abs() > col[best].abs() {
                    best = j;
                }
            }
            let sign = if col[best] < 0.0 { -1.0 } else { 1.0 };
            components.push(col.iter().map(|x| (x * sign) as f32).collect());
            let lambda = eigen.eigenvalues[idx].max(0.0);
            explained_variance_ratio.push(if total > 0.0 { (lambda / total) as f32 } else { 0.0 });
        }

        Ok(Self { mean: mean.into_iter().map(|m| m as f32).collect(), components, explained_variance_ratio })
    }

    pub fn dims(&self) -> usize {
        self.components.len()
    }

    /// Project one embedding: `components · (v - mean)`.
    pub fn transform(&self, v: &[f32]) -> Vec<f32> {
        self.components
            .iter()
            .map(|c| c.iter().zip(v.iter().zip(&self.mean)).map(|(c, (x, m))| c * (x - m)).sum())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers in [-1, 1) (xorshift), no rand dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    fn synthetic(n: usize, d: usize, dir: &[f32]) -> Vec<Vec<f32>> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        (0..n)
            .map(|_| {
                let t = rng.next() * 10.0;
                (0..d).map(|j| 3.0 + t * dir[j] + 0.1 * rng.next()).collect()
            })
            .collect()
    }

    fn unit_dir(d: usize) -> Vec<f32> {
        let raw: Vec<f32> = (0..d).map(|j| ((j * 7 % 11) as f32 - 5.0) / 5.0).collect();
        let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        raw.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn first_component_recovers_dominant_direction() {
        let d = 384;
        let dir = unit_dir(d);
        let rows = synthetic(500, d, &dir);
        let pca = Pca::fit(&rows, 3).expect("fit");
        assert_eq!(pca.dims(), 3);
        assert_eq!(pca.mean.len(), d);
        let c0 = &pca.components[0];
        let cos: f32 = c0.iter().zip(&dir).map(|(a, b)| a * b).sum();
        assert!(cos.abs() > 0.99, "cos = {cos}");
        let norm: f32 = c0.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        // Deterministic sign: the largest-magnitude entry is positive.
        for c in &pca.components {
            let best = c.iter().cloned().fold(0f32, |m, x| if x.abs() > m.abs() { x } else { m });
            assert!(best > 0.0);
        }
        assert!(pca.explained_variance_ratio[0] > 0.9);
        assert!(pca.explained_variance_ratio.windows(2).all(|w| w[0] >= w[1]));
        // Transform of the mean is ~0.
        for x in pca.transform(&pca.mean) {
            assert!(x.abs() < 1e-5, "{x}");
        }
        // Refit gives identical output.
        assert_eq!(Pca::fit(&rows, 3).expect("refit"), pca);
    }

    #[test]
    fn serde_round_trip() {
        let d = 16;
        let rows = synthetic(40, d, &unit_dir(d));
        let pca = Pca::fit(&rows, 4).expect("fit");
        let json = serde_json::to_string(&pca).expect("serialize");
        let back: Pca = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, pca);
    }

    #[test]
    fn errors() {
        assert!(matches!(Pca::fit(&[], 2), Err(FeatureError::Pca(_))));
        assert!(matches!(Pca::fit(&[vec![1.0, 2.0]], 3), Err(FeatureError::Pca(_))));
        assert!(matches!(Pca::fit(&[vec![1.0, 2.0], vec![1.0]], 1), Err(FeatureError::Pca(_))));
        assert!(matches!(Pca::fit(&[vec![f32::NAN, 2.0]], 1), Err(FeatureError::Pca(_))));
        // One row is fine (zero variance): ratios are 0.
        let one = Pca::fit(&[vec![1.0, 2.0]], 2).expect("single row");
        assert_eq!(one.explained_variance_ratio, vec![0.0, 0.0]);
        assert_eq!(one.transform(&[1.0, 2.0]), vec![0.0, 0.0]);
    }
}
