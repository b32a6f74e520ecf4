//! The trainer's stages, one module each: the prompt set ([`dataset`]), collecting every model's
//! answers ([`collect`]), scoring them ([`score`] per answer, [`scoring`] over a file), joining
//! them into a labelled table ([`table`]), training the router model ([`train`]) and evaluating it
//! against baselines ([`evaluate`]).
pub mod collect;
pub mod dataset;
pub mod evaluate;
pub mod score;
pub mod scoring;
pub mod table;
pub mod train;

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
