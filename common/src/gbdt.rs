//! A pure-Rust predictor for LightGBM text models (`model.txt`): class probabilities and per-feature
//! contributions (TreeSHAP, as LightGBM's `predict_contrib`) of one row.
//!
//! Why our own: the router only predicts, and LightGBM's C++ library needs cmake and libclang to
//! build (`lightgbm3-sys`), which the README's run command cannot assume. No maintained crate reads
//! LightGBM's text format *and* computes its contributions (the `gbdt` crate reads XGBoost models
//! only). The trainer keeps LightGBM for training, and `trainer/tests/gbdt_parity.rs` proves this
//! predictor equal to LightGBM's own `predict` and `predict_contrib` (max abs difference <= 1e-9)
//! on the committed router model and on random rows.
//!
//! What it reads: numerical and categorical splits, every missing-value type, and the objectives
//! the trainer can write (multiclass, multiclassova, binary, cross_entropy and the identity-output
//! regressions).
//! Linear trees are refused with a clear error.
use std::path::Path;

/// Why a model could not be read or a row not predicted.
#[derive(Debug, thiserror::Error)]
pub enum GbdtError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("model file: {0}")]
    Format(String),
    #[error("row has {got} features, the model {want}")]
    RowWidth { got: usize, want: usize },
}

fn format_err(msg: impl Into<String>) -> GbdtError {
    GbdtError::Format(msg.into())
}

/// LightGBM's `kZeroThreshold` (`1e-35f` widened to double): values this close to zero are zero
/// to the model.
const ZERO_THRESHOLD: f64 = 1e-35f32 as f64;
const CATEGORICAL_MASK: u8 = 1;
const DEFAULT_LEFT_MASK: u8 = 2;

/// How the raw scores become outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transform {
    /// `multiclass`: softmax over the classes.
    Softmax,
    /// `binary` and `multiclassova`: a logistic function per class, `1 / (1 + exp(-s * x))`.
    Sigmoid(f64),
    /// Regression objectives whose prediction is the raw score.
    Identity,
}

/// One tree, in LightGBM's arrays: node `i >= 0` is internal, child `c < 0` is leaf `!c`.
#[derive(Debug, Clone)]
struct Tree {
    split_feature: Vec<usize>,
    threshold: Vec<f64>,
    decision_type: Vec<u8>,
    left: Vec<i32>,
    right: Vec<i32>,
    leaf_value: Vec<f64>,
    leaf_count: Vec<f64>,
    internal_count: Vec<f64>,
    cat_boundaries: Vec<usize>,
    cat_threshold: Vec<u32>,
    /// Deepest leaf's depth (LightGBM's `max_depth_`), which sizes the TreeSHAP path buffer.
    max_depth: usize,
}

/// A loaded model. Predictions take `&self` and allocate only their outputs.
#[derive(Debug, Clone)]
pub struct Predictor {
    trees: Vec<Tree>,
    classes: usize,
    trees_per_iteration: usize,
    features: usize,
    transform: Transform,
    average_output: bool,
}

fn parse_list<T: std::str::FromStr>(key: &str, v: &str) -> Result<Vec<T>, GbdtError> {
    v.split_whitespace().map(|t| t.parse::<T>().map_err(|_| format_err(format!("{key}: cannot read {t:?}")))).collect()
}

/// `key=value` lines of one section.
struct Section<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Section<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn need(&self, key: &str) -> Result<&'a str, GbdtError> {
        self.get(key).ok_or_else(|| format_err(format!("missing {key}")))
    }
    fn list<T: std::str::FromStr>(&self, key: &str) -> Result<Vec<T>, GbdtError> {
        parse_list(key, self.need(key)?)
    }
    fn list_or_empty<T: std::str::FromStr>(&self, key: &str) -> Result<Vec<T>, GbdtError> {
        self.get(key).map_or(Ok(Vec::new()), |v| parse_list(key, v))
    }
    fn one<T: std::str::FromStr>(&self, key: &str) -> Result<T, GbdtError> {
        let v = self.need(key)?;
        v.trim().parse().map_err(|_| format_err(format!("{key}: cannot read {v:?}")))
    }
}

impl Tree {
    fn parse(s: &Section, features: usize) -> Result<Self, GbdtError> {
        let leaves: usize = s.one("num_leaves")?;
        if leaves == 0 {
            return Err(format_err("a tree has no leaves"));
        }
        if s.get("is_linear").is_some_and(|v| v.trim() != "0") {
            return Err(format_err("linear trees are not supported"));
        }
        let leaf_value: Vec<f64> = s.list("leaf_value")?;
        if leaf_value.len() != leaves {
            return Err(format_err("leaf_value does not match num_leaves"));
        }
        if leaves == 1 {
            return Ok(Tree {
                split_feature: vec![],
                threshold: vec![],
                decision_type: vec![],
                left: vec![],
                right: vec![],
                leaf_value,
                leaf_count: s.list_or_empty("leaf_count")?,
                internal_count: vec![],
                cat_boundaries: vec![],
                cat_threshold: vec![],
                max_depth: 0,
            });
        }
        let n = leaves - 1;
        let t = Tree {
            split_feature: s.list("split_feature")?,
            threshold: s.list("threshold")?,
            decision_type: s.list::<i32>("decision_type")?.into_iter().map(|d| d as u8).collect(),
            left: s.list("left_child")?,
            right: s.list("right_child")?,
            leaf_value,
            leaf_count: s.list("leaf_count")?,
            internal_count: s.list("internal_count")?,
            cat_boundaries: s.list_or_empty("cat_boundaries")?,
            cat_threshold: s.list_or_empty("cat_threshold")?,
            max_depth: 0,
        };
        let lens = [
            t.split_feature.len(),
            t.threshold.len(),
            t.decision_type.len(),
            t.left.len(),
            t.right.len(),
            t.internal_count.len(),
        ];
        if lens.iter().any(|&l| l != n) || t.leaf_count.len() != leaves {
            return Err(format_err("a tree's arrays do not match num_leaves"));
        }
        let child_ok = |c: i32| if c >= 0 { (c as usize) < n } else { ((!c) as usize) < leaves };
        if !t.left.iter().chain(&t.right).all(|&c| child_ok(c)) {
            return Err(format_err("a tree has a child index out of range"));
        }
        if t.split_feature.iter().any(|&f| f >= features) {
            return Err(format_err("a tree splits on a feature past max_feature_idx"));
        }
        for (i, &d) in t.decision_type.iter().enumerate() {
            if d & CATEGORICAL_MASK != 0 {
                let c = t.threshold[i] as usize;
                let ok = c + 1 < t.cat_boundaries.len()
                    && t.cat_boundaries[c] <= t.cat_boundaries[c + 1]
                    && t.cat_boundaries[c + 1] <= t.cat_threshold.len();
                if !ok {
                    return Err(format_err("a categorical split points past cat_threshold"));
                }
            }
        }
        let max_depth = t.depth_below(0, 0, n)?;
        Ok(Tree { max_depth, ..t })
    }

    /// Depth of the deepest leaf under `node`; a tree whose walk is longer than its node count has
    /// a cycle and is refused.
    fn depth_below(&self, node: i32, depth: usize, internal: usize) -> Result<usize, GbdtError> {
        if node < 0 {
            return Ok(depth);
        }
        if depth > internal {
            return Err(format_err("a tree has a cycle"));
        }
        let n = node as usize;
        Ok(self.depth_below(self.left[n], depth + 1, internal)?.max(self.depth_below(
            self.right[n],
            depth + 1,
            internal,
        )?))
    }

    fn is_leaf_only(&self) -> bool {
        self.leaf_value.len() == 1
    }

    /// The child that `x` goes to at internal node `n` (LightGBM's `Tree::Decision`).
    fn decision(&self, x: f64, n: usize) -> i32 {
        let d = self.decision_type[n];
        if d & CATEGORICAL_MASK != 0 {
            // As LightGBM: NaN and values that truncate to a negative integer go right.
            let v = x as i64;
            if x.is_nan() || v < 0 {
                return self.right[n];
            }
            let v = v as usize;
            let c = self.threshold[n] as usize;
            let bits = &self.cat_threshold[self.cat_boundaries[c]..self.cat_boundaries[c + 1]];
            let hit = bits.get(v / 32).is_some_and(|w| (w >> (v % 32)) & 1 == 1);
            return if hit { self.left[n] } else { self.right[n] };
        }
        let missing = (d >> 2) & 3; // 0 none, 1 zero, 2 NaN
        let mut x = x;
        if x.is_nan() && missing != 2 {
            x = 0.0;
        }
        if (missing == 1 && (-ZERO_THRESHOLD..=ZERO_THRESHOLD).contains(&x)) || (missing == 2 && x.is_nan()) {
            return if d & DEFAULT_LEFT_MASK != 0 { self.left[n] } else { self.right[n] };
        }
        if x <= self.threshold[n] {
            self.left[n]
        } else {
            self.right[n]
        }
    }

    fn predict(&self, row: &[f64]) -> f64 {
        if self.is_leaf_only() {
            return self.leaf_value[0];
        }
        let mut node = 0i32;
        while node >= 0 {
            let n = node as usize;
            node = self.decision(row[self.split_feature[n]], n);
        }
        self.leaf_value[(!node) as usize]
    }

    fn count(&self, node: i32) -> f64 {
        if node >= 0 {
            self.internal_count[node as usize]
        } else {
            self.leaf_count[(!node) as usize]
        }
    }

    /// The mean output over the training rows (LightGBM's `ExpectedValue`): the bias term.
    fn expected_value(&self) -> f64 {
        if self.is_leaf_only() {
            return self.leaf_value[0];
        }
        let total = self.internal_count[0];
        self.leaf_value.iter().zip(&self.leaf_count).map(|(v, c)| (c / total) * v).sum()
    }

    /// Adds this tree's contributions to `phi` (`features + 1` values, bias last).
    fn contributions(&self, row: &[f64], phi: &mut [f64]) {
        let bias = phi.len() - 1;
        phi[bias] += self.expected_value();
        if self.is_leaf_only() {
            return;
        }
        let len = self.max_depth + 1;
        let mut path = vec![PathElement::default(); len * (len + 1) / 2];
        self.tree_shap(row, phi, 0, 0, &mut path, 0, 1.0, 1.0, None);
    }

    /// LightGBM's `Tree::TreeSHAP` (Lundberg et al.'s polynomial-time algorithm), in its order of
    /// floating-point operations. `path[base..]` is the parent's unique path of `depth` elements;
    /// this call works on a copy of it at `base + depth`.
    #[allow(clippy::too_many_arguments)]
    fn tree_shap(
        &self,
        row: &[f64],
        phi: &mut [f64],
        node: i32,
        mut depth: usize,
        path: &mut [PathElement],
        base: usize,
        zero_fraction: f64,
        one_fraction: f64,
        feature: Option<usize>,
    ) {
        let here = base + depth;
        if depth > 0 {
            path.copy_within(base..base + depth, here);
        }
        let up = &mut path[here..];
        extend_path(up, depth, zero_fraction, one_fraction, feature);
        if node < 0 {
            let leaf = self.leaf_value[(!node) as usize];
            for i in 1..=depth {
                let w = unwound_path_sum(up, depth, i);
                let el = up[i];
                let f = el.feature.expect("only the root element has no feature");
                phi[f] += w * (el.one_fraction - el.zero_fraction) * leaf;
            }
            return;
        }
        let n = node as usize;
        let split = self.split_feature[n];
        let hot = self.decision(row[split], n);
        let cold = if hot == self.left[n] { self.right[n] } else { self.left[n] };
        let w = self.count(node);
        let hot_zero = self.count(hot) / w;
        let cold_zero = self.count(cold) / w;
        let (mut in_zero, mut in_one) = (1.0, 1.0);
        if let Some(k) = (0..=depth).find(|&k| up[k].feature == Some(split)) {
            in_zero = up[k].zero_fraction;
            in_one = up[k].one_fraction;
            unwind_path(up, depth, k);
            depth -= 1;
        }
        self.tree_shap(row, phi, hot, depth + 1, path, here, hot_zero * in_zero, in_one, Some(split));
        self.tree_shap(row, phi, cold, depth + 1, path, here, cold_zero * in_zero, 0.0, Some(split));
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct PathElement {
    feature: Option<usize>,
    zero_fraction: f64,
    one_fraction: f64,
    pweight: f64,
}

fn extend_path(p: &mut [PathElement], depth: usize, zero_fraction: f64, one_fraction: f64, feature: Option<usize>) {
    p[depth] = PathElement { feature, zero_fraction, one_fraction, pweight: if depth == 0 { 1.0 } else { 0.0 } };
    let d1 = (depth + 1) as f64;
    for i in (0..depth).rev() {
        p[i + 1].pweight += one_fraction * p[i].pweight * (i + 1) as f64 / d1;
        p[i].pweight = zero_fraction * p[i].pweight * (depth - i) as f64 / d1;
    }
}

fn unwind_path(p: &mut [PathElement], depth: usize, index: usize) {
    let one = p[index].one_fraction;
    let zero = p[index].zero_fraction;
    let mut next_one = p[depth].pweight;
    let d1 = (depth + 1) as f64;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = p[i].pweight;
            p[i].pweight = next_one * d1 / ((i + 1) as f64 * one);
            next_one = tmp - p[i].pweight * zero * (depth - i) as f64 / d1;
        } else {
            p[i].pweight = (p[i].pweight * d1) / (zero * (depth - i) as f64);
        }
    }
    for i in index..depth {
        p[i].feature = p[i + 1].feature;
        p[i].zero_fraction = p[i + 1].zero_fraction;
        p[i].one_fraction = p[i + 1].one_fraction;
    }
}

fn unwound_path_sum(p: &[PathElement], depth: usize, index: usize) -> f64 {
    let one = p[index].one_fraction;
    let zero = p[index].zero_fraction;
    let mut next_one = p[depth].pweight;
    let d1 = (depth + 1) as f64;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next_one * d1 / ((i + 1) as f64 * one);
            total += tmp;
            next_one = p[i].pweight - tmp * zero * ((depth - i) as f64 / d1);
        } else {
            total += (p[i].pweight / zero) / ((depth - i) as f64 / d1);
        }
    }
    total
}

impl Predictor {
    /// Load a LightGBM text model file.
    pub fn load(path: &Path) -> Result<Self, GbdtError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| GbdtError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Read a LightGBM text model (what `Booster::save_file` writes).
    pub fn parse(text: &str) -> Result<Self, GbdtError> {
        // Sections: the header, then one per `Tree=`, up to `end of trees`.
        let mut sections: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
        let mut average_output = false;
        let mut ended = false;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line == "end of trees" {
                ended = true;
                break;
            }
            if line == "average_output" {
                average_output = true;
                continue;
            }
            if line.starts_with("Tree=") {
                sections.push(Vec::new());
            }
            if let Some((k, v)) = line.split_once('=') {
                sections.last_mut().expect("never empty").push((k, v));
            }
        }
        if !ended {
            return Err(format_err("no `end of trees` line (truncated or not a LightGBM text model)"));
        }
        let header = Section(sections.remove(0));
        let classes: usize = header.one("num_class")?;
        let trees_per_iteration: usize =
            header.get("num_tree_per_iteration").map_or(Ok(classes), |_| header.one("num_tree_per_iteration"))?;
        let features = header.one::<usize>("max_feature_idx")? + 1;
        if classes == 0 || trees_per_iteration == 0 {
            return Err(format_err("num_class and num_tree_per_iteration must be positive"));
        }
        let objective = header.need("objective")?;
        let mut words = objective.split_whitespace();
        let name = words.next().unwrap_or("");
        let param = |key: &str| -> Option<f64> {
            objective.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix(':')?.parse().ok())
        };
        let transform = match name {
            "multiclass" | "softmax" => Transform::Softmax,
            // `cross_entropy` (alias `xentropy`) takes labels in [0, 1] and predicts the logistic of the raw score.
            "cross_entropy" | "xentropy" => Transform::Sigmoid(1.0),
            "binary" | "multiclassova" | "multiclass_ova" | "ova" | "ovr" => {
                Transform::Sigmoid(param("sigmoid").unwrap_or(1.0))
            }
            "regression" | "regression_l2" | "regression_l1" | "huber" | "fair" | "quantile" | "mape"
            | "lambdarank" | "rank_xendcg" => {
                if objective.split_whitespace().any(|w| w == "sqrt") {
                    return Err(format_err("regression with `sqrt` is not supported"));
                }
                Transform::Identity
            }
            other => return Err(format_err(format!("objective {other:?} is not supported"))),
        };
        if transform == Transform::Softmax && trees_per_iteration != classes {
            return Err(format_err("a multiclass model needs one tree per class per iteration"));
        }
        let trees = sections
            .iter()
            .enumerate()
            .map(|(i, s)| Tree::parse(&Section(s.clone()), features).map_err(|e| format_err(format!("Tree={i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if trees.is_empty() || trees.len() % trees_per_iteration != 0 {
            return Err(format_err(format!(
                "{} trees is not a whole number of iterations of {trees_per_iteration}",
                trees.len()
            )));
        }
        Ok(Predictor { trees, classes, trees_per_iteration, features, transform, average_output })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn features(&self) -> usize {
        self.features
    }

    /// The row as LightGBM's predictor sees it: f64, with values within 1e-35 of zero as zero.
    fn widen(&self, row: &[f32]) -> Result<Vec<f64>, GbdtError> {
        if row.len() != self.features {
            return Err(GbdtError::RowWidth { got: row.len(), want: self.features });
        }
        Ok(row.iter().map(|&v| if f64::from(v).abs() <= ZERO_THRESHOLD { 0.0 } else { f64::from(v) }).collect())
    }

    /// Raw scores (before the objective's transform), one per tree of an iteration.
    pub fn raw(&self, row: &[f32]) -> Result<Vec<f64>, GbdtError> {
        let x = self.widen(row)?;
        let k = self.trees_per_iteration;
        let mut out = vec![0.0; k];
        for (i, t) in self.trees.iter().enumerate() {
            out[i % k] += t.predict(&x);
        }
        if self.average_output {
            let iterations = (self.trees.len() / k) as f64;
            out.iter_mut().for_each(|v| *v /= iterations);
        }
        Ok(out)
    }

    /// Class probabilities of one row (for a regression model, its prediction).
    pub fn predict(&self, row: &[f32]) -> Result<Vec<f64>, GbdtError> {
        let mut out = self.raw(row)?;
        match self.transform {
            Transform::Softmax => {
                let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for v in &mut out {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                out.iter_mut().for_each(|v| *v /= sum);
            }
            Transform::Sigmoid(s) => out.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-s * *v).exp())),
            Transform::Identity => {}
        }
        Ok(out)
    }

    /// Per class, the contribution of each feature to the raw score, bias last
    /// (`classes` vectors of `features + 1`), as LightGBM's `predict_contrib`.
    pub fn contributions(&self, row: &[f32]) -> Result<Vec<Vec<f64>>, GbdtError> {
        let x = self.widen(row)?;
        let k = self.trees_per_iteration;
        let mut out = vec![vec![0.0; self.features + 1]; k];
        // LightGBM's `GBDT::PredictContrib` sums the trees' values without `average_output`'s mean.
        for (i, t) in self.trees.iter().enumerate() {
            t.contributions(&x, &mut out[i % k]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes' worth of hand-made trees on 2 features: one split each, and a single-leaf tree.
    const MODEL: &str = "tree\nversion=v4\nnum_class=2\nnum_tree_per_iteration=2\nlabel_index=0\nmax_feature_idx=1\n\
objective=multiclass num_class:2\nfeature_names=a b\n\n\
Tree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=1\nthreshold=0.5\ndecision_type=2\nleft_child=-1\nright_child=-2\n\
leaf_value=1 -1\nleaf_count=3 1\ninternal_count=4\nis_linear=0\nshrinkage=1\n\n\
Tree=1\nnum_leaves=1\nleaf_value=0.25\n\nend of trees\n";

    #[test]
    fn predicts_and_explains_a_hand_made_model() {
        let p = Predictor::parse(MODEL).unwrap();
        assert_eq!((p.classes(), p.features()), (2, 2));
        assert_eq!(p.raw(&[9.0, 0.0]).unwrap(), vec![1.0, 0.25]);
        assert_eq!(p.raw(&[9.0, 1.0]).unwrap(), vec![-1.0, 0.25]);
        let probs = p.predict(&[0.0, 1.0]).unwrap();
        assert!((probs[0] + probs[1] - 1.0).abs() < 1e-6 && probs[1] > probs[0]);
        // Expected value of tree 0: 0.75 * 1 + 0.25 * -1 = 0.5; feature b moves it to the leaf.
        let c = p.contributions(&[0.0, 1.0]).unwrap();
        assert_eq!(c[0], vec![0.0, -1.5, 0.5]);
        assert_eq!(c[1], vec![0.0, 0.0, 0.25]);
        assert!(matches!(p.predict(&[1.0]), Err(GbdtError::RowWidth { got: 1, want: 2 })));
    }

    #[test]
    fn refuses_broken_models() {
        assert!(Predictor::parse("").is_err());
        assert!(Predictor::parse(&MODEL.replace("end of trees\n", "")).is_err(), "a truncated file");
        assert!(Predictor::parse(&MODEL.replace("left_child=-1", "left_child=-7")).is_err());
        assert!(Predictor::parse(&MODEL.replace("split_feature=1", "split_feature=5")).is_err());
        assert!(Predictor::parse(&MODEL.replace("leaf_value=1 -1", "leaf_value=1 x")).is_err());
        assert!(Predictor::parse(&MODEL.replace("is_linear=0", "is_linear=1")).is_err());
        assert!(Predictor::parse(&MODEL.replace("objective=multiclass", "objective=poisson")).is_err());
    }
}
