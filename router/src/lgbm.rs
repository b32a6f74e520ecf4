//! A minimal LightGBM predictor over the C API (`lightgbm3-sys`): load a text model, predict one
//! row's class probabilities and its per-feature contributions.
//!
//! Why not `lightgbm3::Booster`: its `predict_contrib` sizes the output buffer for one class
//! (`rows × (features + 1)`), while LightGBM writes `rows × classes × (features + 1)` values for
//! a multiclass model, so a multiclass call overruns the buffer (lightgbm3 1.0.11; worth fixing
//! upstream). Here every output buffer is sized from the model's own class count.
use std::ffi::{CStr, CString};
use std::os::raw::{c_int, c_void};
use std::path::Path;

use lightgbm3_sys as sys;

#[derive(Debug, thiserror::Error)]
#[error("LightGBM: {0}")]
pub struct LgbmError(String);

fn last_error() -> LgbmError {
    // SAFETY: LGBM_GetLastError returns a pointer to a thread-local, NUL-terminated C string.
    let msg = unsafe { CStr::from_ptr(sys::LGBM_GetLastError()) };
    LgbmError(msg.to_string_lossy().into_owned())
}

fn check(code: c_int) -> Result<(), LgbmError> {
    if code == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

/// A loaded model. Predictions take `&self` and are serialized by a mutex (a prediction takes
/// microseconds), so the predictor can be shared across threads whatever LightGBM's own locking.
pub struct Predictor {
    handle: sys::BoosterHandle,
    lock: std::sync::Mutex<()>,
    classes: usize,
    features: usize,
}

// SAFETY: the Booster has no thread affinity, every call on the handle after construction holds
// `lock`, and the handle is freed exactly once, in Drop, when no reference is left.
unsafe impl Send for Predictor {}
unsafe impl Sync for Predictor {}

impl Predictor {
    /// Load a LightGBM text model file.
    pub fn load(path: &Path) -> Result<Self, LgbmError> {
        let c = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| LgbmError("path contains NUL".into()))?;
        let mut handle: sys::BoosterHandle = std::ptr::null_mut();
        let mut iterations: c_int = 0;
        // SAFETY: valid C string and out-pointers.
        check(unsafe { sys::LGBM_BoosterCreateFromModelfile(c.as_ptr(), &mut iterations, &mut handle) })?;
        let mut p = Predictor { handle, lock: std::sync::Mutex::new(()), classes: 0, features: 0 };
        let (mut k, mut f): (c_int, c_int) = (0, 0);
        // SAFETY: the handle is valid (created above; freed by Drop if we return early).
        check(unsafe { sys::LGBM_BoosterGetNumClasses(p.handle, &mut k) })?;
        check(unsafe { sys::LGBM_BoosterGetNumFeature(p.handle, &mut f) })?;
        if k <= 0 || f <= 0 {
            return Err(LgbmError(format!("model has {k} classes and {f} features")));
        }
        p.classes = k as usize;
        p.features = f as usize;
        Ok(p)
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn features(&self) -> usize {
        self.features
    }

    fn predict_one(&self, row: &[f32], kind: u32, len: usize) -> Result<Vec<f64>, LgbmError> {
        if row.len() != self.features {
            return Err(LgbmError(format!("row has {} features, the model {}", row.len(), self.features)));
        }
        let mut out = vec![0f64; len];
        let mut out_len: i64 = 0;
        let params = CString::new("").expect("no NUL");
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `row` holds `features` f32s; `out` holds `len` f64s, the most LightGBM writes for
        // this prediction kind on one row of this model.
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
        })?;
        if out_len as usize != len {
            return Err(LgbmError(format!("expected {len} outputs, LightGBM wrote {out_len}")));
        }
        Ok(out)
    }

    /// Class probabilities of one row.
    pub fn predict(&self, row: &[f32]) -> Result<Vec<f64>, LgbmError> {
        self.predict_one(row, sys::C_API_PREDICT_NORMAL, self.classes)
    }

    /// Per class, the contribution of each feature to the raw score, bias last
    /// (`classes` vectors of `features + 1`).
    pub fn contributions(&self, row: &[f32]) -> Result<Vec<Vec<f64>>, LgbmError> {
        let flat = self.predict_one(row, sys::C_API_PREDICT_CONTRIB, self.classes * (self.features + 1))?;
        Ok(flat.chunks(self.features + 1).map(|c| c.to_vec()).collect())
    }
}

impl Drop for Predictor {
    fn drop(&mut self) {
        // SAFETY: created by LGBM_BoosterCreateFromModelfile, freed once.
        unsafe {
            sys::LGBM_BoosterFree(self.handle);
        }
    }
}
