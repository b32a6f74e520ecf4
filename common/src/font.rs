//! The font the figures are drawn with (feature `plot`), for the load test's plots and the trainer's
//! report. plotters' `ab_glyph` renderer does no system font lookup, so a TTF is loaded at run time
//! and registered as `sans-serif`: the given file, else `$POLYLLM_FONT`, else DejaVu Sans from
//! Debian's `fonts-dejavu-core` (or another common sans).
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

#[derive(Debug, Clone, thiserror::Error)]
#[error("no TTF font found: install fonts-dejavu-core, or pass --font FILE.ttf")]
pub struct NoFont;

/// Loads a TTF and registers it as `sans-serif`, once per process. Returns the file used.
pub fn init_font(explicit: Option<&Path>) -> Result<PathBuf, NoFont> {
    static DONE: std::sync::OnceLock<Result<PathBuf, NoFont>> = std::sync::OnceLock::new();
    let r = DONE.get_or_init(|| {
        let mut cands: Vec<PathBuf> = Vec::new();
        if let Some(p) = explicit {
            cands.push(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os("POLYLLM_FONT") {
            cands.push(PathBuf::from(p));
        }
        cands.extend(FONT_CANDIDATES.iter().map(PathBuf::from));
        for p in cands {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(p);
                }
            }
        }
        Err(NoFont)
    });
    r.clone()
}
