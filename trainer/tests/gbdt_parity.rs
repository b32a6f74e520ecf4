//! The router's pure-Rust LightGBM predictor (`polyllm_common::gbdt`) against LightGBM itself:
//! probabilities (`predict`) and per-feature contributions (`predict_contrib`) agree within 1e-9
//! on the committed router model over 1,000 random rows, and on models trained here that use what
//! the committed one does not (categorical splits, NaN and zero as missing, the binary objective,
//! single-leaf trees).
use std::ffi::{CStr, CString};
use std::os::raw::{c_int, c_void};
use std::path::{Path, PathBuf};

use lightgbm3_sys as sys;
use polyllm_common::gbdt::Predictor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOLERANCE: f64 = 1e-9;

/// LightGBM's own predictions through its C API, sized from the model's class count
/// (`lightgbm3::Booster::predict_contrib` sizes its buffer for one class only).
struct Reference {
    handle: sys::BoosterHandle,
    classes: usize,
    features: usize,
}

fn check(code: c_int) {
    if code != 0 {
        // SAFETY: LGBM_GetLastError returns a thread-local NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(sys::LGBM_GetLastError()) };
        panic!("LightGBM: {}", msg.to_string_lossy());
    }
}

impl Reference {
    fn load(path: &Path) -> Self {
        let c = CString::new(path.to_str().unwrap()).unwrap();
        let mut handle: sys::BoosterHandle = std::ptr::null_mut();
        let mut iterations: c_int = 0;
        let (mut k, mut f): (c_int, c_int) = (0, 0);
        // SAFETY: valid C string and out-pointers; the handle is used only after success.
        unsafe {
            check(sys::LGBM_BoosterCreateFromModelfile(c.as_ptr(), &mut iterations, &mut handle));
            check(sys::LGBM_BoosterGetNumClasses(handle, &mut k));
            check(sys::LGBM_BoosterGetNumFeature(handle, &mut f));
        }
        Reference { handle, classes: k as usize, features: f as usize }
    }

    fn run(&self, row: &[f32], kind: u32, len: usize) -> Vec<f64> {
        assert_eq!(row.len(), self.features);
        let mut out = vec![0f64; len];
        let mut out_len: i64 = 0;
        let params = CString::new("num_threads=1").unwrap();
        // SAFETY: `row` holds `features` f32s, `out` the most LightGBM writes for this kind.
        check(unsafe {
            sys::LGBM_BoosterPredictForMatSingleRow(
                self.handle,
                row.as_ptr() as *const c_void,
                sys::C_API_DTYPE_FLOAT32 as c_int,
                self.features as i32,
                1,
                kind as c_int,
                0,
                -1,
                params.as_ptr(),
                &mut out_len,
                out.as_mut_ptr(),
            )
        });
        assert_eq!(out_len as usize, len);
        out
    }

    fn predict(&self, row: &[f32]) -> Vec<f64> {
        self.run(row, sys::C_API_PREDICT_NORMAL, self.classes)
    }

    fn contrib(&self, row: &[f32]) -> Vec<f64> {
        self.run(row, sys::C_API_PREDICT_CONTRIB, self.classes * (self.features + 1))
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        // SAFETY: created by LGBM_BoosterCreateFromModelfile, freed once.
        unsafe { sys::LGBM_BoosterFree(self.handle) };
    }
}

/// Compares both predictors on every row; returns the largest difference seen.
fn compare(model: &Path, rows: &[Vec<f32>]) -> f64 {
    let ours = Predictor::load(model).unwrap();
    let theirs = Reference::load(model);
    assert_eq!((ours.classes(), ours.features()), (theirs.classes, theirs.features));
    let mut worst = 0f64;
    for (r, row) in rows.iter().enumerate() {
        let (p, q) = (ours.predict(row).unwrap(), theirs.predict(row));
        let (c, d) = (ours.contributions(row).unwrap().concat(), theirs.contrib(row));
        assert_eq!((p.len(), c.len()), (q.len(), d.len()));
        for (a, b) in p.iter().zip(&q).chain(c.iter().zip(&d)) {
            let diff = (a - b).abs();
            assert!(diff <= TOLERANCE, "{}: row {r} differs by {diff:e} ({a} vs {b}): {row:?}", model.display());
            worst = worst.max(diff);
        }
    }
    worst
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Random rows within (and a little past) each feature's training range from `feature_infos`,
/// with exact zeros, ties at the model's thresholds and NaNs mixed in.
fn random_rows(model_text: &str, n: usize, rng: &mut StdRng) -> Vec<Vec<f32>> {
    let infos = model_text.lines().find_map(|l| l.strip_prefix("feature_infos=")).expect("feature_infos");
    // `[lo:hi]` for a numerical feature, `c1:c2:…` (its categories) for a categorical one.
    let ranges: Vec<Result<(f32, f32), Vec<f32>>> = infos
        .split_whitespace()
        .map(|i| match i.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
            Some(r) => {
                let (a, b) = r.split_once(':').unwrap();
                Ok((a.parse().unwrap(), b.parse().unwrap()))
            }
            None if i == "none" => Ok((0.0, 1.0)),
            None => Err(i.split(':').map(|c| c.parse().unwrap()).collect()),
        })
        .collect();
    let thresholds: Vec<f32> = model_text
        .lines()
        .filter_map(|l| l.strip_prefix("threshold="))
        .flat_map(|l| l.split_whitespace().map(|t| t.parse::<f64>().unwrap() as f32).collect::<Vec<_>>())
        .collect();
    (0..n)
        .map(|_| {
            ranges
                .iter()
                .map(|r| match (r, rng.random_range(0..20)) {
                    (_, 0) => 0.0,
                    (_, 1) => f32::NAN,
                    (Ok(_), 2) => thresholds[rng.random_range(0..thresholds.len())],
                    (&Ok((lo, hi)), _) => {
                        let span = (hi - lo).max(1e-3);
                        rng.random_range(lo - 0.1 * span..=hi + 0.1 * span)
                    }
                    // Seen categories, unseen ones, negatives and fractions.
                    (Err(_), 2) => rng.random_range(-3.0..40.0),
                    (Err(cats), _) => cats[rng.random_range(0..cats.len())],
                })
                .collect()
        })
        .collect()
}

#[test]
fn equals_lightgbm_on_the_committed_router_model() {
    let model = workspace().join("router/model/model.txt");
    let text = std::fs::read_to_string(&model).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let rows = random_rows(&text, 1000, &mut rng);
    let worst = compare(&model, &rows);
    eprintln!("committed model, 1000 rows: max abs difference {worst:e}");
}

/// Trains with LightGBM's C API directly: `categorical_feature` is a Dataset parameter, which
/// `lightgbm3::Dataset` cannot pass.
fn train_c(rows: &[Vec<f32>], labels: &[f32], params: &str, rounds: usize, path: &Path) {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let params = CString::new(params).unwrap();
    let field = CString::new("label").unwrap();
    let file = CString::new(path.to_str().unwrap()).unwrap();
    let mut data: sys::DatasetHandle = std::ptr::null_mut();
    let mut booster: sys::BoosterHandle = std::ptr::null_mut();
    // SAFETY: `flat` holds rows x 3 f32s and `labels` one f32 per row; handles are freed below.
    unsafe {
        check(sys::LGBM_DatasetCreateFromMat(
            flat.as_ptr() as *const c_void,
            sys::C_API_DTYPE_FLOAT32 as c_int,
            rows.len() as i32,
            3,
            1,
            params.as_ptr(),
            std::ptr::null_mut(),
            &mut data,
        ));
        check(sys::LGBM_DatasetSetField(
            data,
            field.as_ptr(),
            labels.as_ptr() as *const c_void,
            labels.len() as c_int,
            sys::C_API_DTYPE_FLOAT32 as c_int,
        ));
        check(sys::LGBM_BoosterCreate(data, params.as_ptr(), &mut booster));
        for _ in 0..rounds {
            let mut finished: c_int = 0;
            check(sys::LGBM_BoosterUpdateOneIter(booster, &mut finished));
        }
        check(sys::LGBM_BoosterSaveModel(booster, 0, -1, 0, file.as_ptr()));
        sys::LGBM_BoosterFree(booster);
        sys::LGBM_DatasetFree(data);
    }
}

/// A model over a NaN-missing numeric feature, a categorical feature and a zero-heavy feature.
fn train(objective: &str, classes: usize, zero_as_missing: bool, dir: &Path, name: &str) -> (PathBuf, Vec<Vec<f32>>) {
    let mut rng = StdRng::seed_from_u64(11);
    let rows: Vec<Vec<f32>> = (0..600)
        .map(|_| {
            let a = if rng.random_range(0..8) == 0 { f32::NAN } else { rng.random_range(-2.0..2.0) };
            let cat = rng.random_range(0..24) as f32;
            let z = if rng.random_range(0..3) == 0 { 0.0 } else { rng.random_range(-1.0..1.0) };
            vec![a, cat, z]
        })
        .collect();
    let labels: Vec<f32> = rows
        .iter()
        .map(|r| {
            let score = if r[0].is_nan() { 1.5 } else { r[0] }
                + if (r[1] as u32).is_multiple_of(3) { 1.5 } else { -0.5 }
                + r[2];
            (((score + 3.0) / 6.0 * classes as f32).floor().max(0.0) as usize).min(classes - 1) as f32
        })
        .collect();
    let params = format!(
        "{objective} num_leaves=7 min_data_in_leaf=5 min_data_per_group=5 cat_smooth=1 max_cat_to_onehot=4 \
         categorical_feature=1 zero_as_missing={zero_as_missing} deterministic=true num_threads=1 verbosity=-1"
    );
    let path = dir.join(name);
    train_c(&rows, &labels, &params, 25, &path);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut probe = random_rows(&text, 500, &mut rng);
    probe.extend(rows.into_iter().take(200));
    (path, probe)
}

#[test]
fn equals_lightgbm_on_categorical_and_missing_values() {
    let dir = tempfile::tempdir().unwrap();
    for (objective, classes, zero_as_missing, name) in [
        ("objective=multiclass num_class=3", 3, false, "multiclass.txt"),
        ("objective=multiclass num_class=3", 3, true, "multiclass_zero.txt"),
        ("objective=binary", 2, false, "binary.txt"),
        // The router's quality model: labels in [0, 1], a logistic output.
        ("objective=cross_entropy", 2, false, "xentropy.txt"),
    ] {
        let (path, rows) = train(objective, classes, zero_as_missing, dir.path(), name);
        let text = std::fs::read_to_string(&path).unwrap();
        // The models must use what this test is for, or it proves nothing about it.
        let types: Vec<u8> = text
            .lines()
            .filter_map(|l| l.strip_prefix("decision_type="))
            .flat_map(|l| l.split_whitespace().map(|t| t.parse::<u8>().unwrap()).collect::<Vec<_>>())
            .collect();
        assert!(types.iter().any(|d| d & 1 == 1), "{name}: no categorical split");
        let missing = if zero_as_missing { 1 } else { 2 };
        assert!(types.iter().any(|d| (d >> 2) & 3 == missing), "{name}: no split with missing type {missing}");
        let worst = compare(&path, &rows);
        eprintln!("{name}, {} rows: max abs difference {worst:e}", rows.len());
    }
}
