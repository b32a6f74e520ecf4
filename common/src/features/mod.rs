//! The prompt featurizer that the router and the trainer must compute identically.
//!
//! A prompt becomes one row of `f32` features, in the order of [`feature_names`]:
//! the hand-made text features of [`text`] (lengths, code and math cues, task verbs...), then the
//! all-MiniLM-L6-v2 sentence embedding of [`embed`] projected to a few dimensions by the [`Pca`]
//! the trainer fitted and stored with the router model.
//!
//! Nothing here knows about LightGBM or HTTP; the router's learned policy and the trainer's
//! `train`/`evaluate` both call [`Featurizer::featurize`].
pub mod embed;
pub mod pca;
pub mod text;

pub use embed::{Embedder, Embedding};
pub use pca::Pca;
pub use text::{text_features, TEXT_FEATURE_NAMES};

/// Errors of loading or running the featurizer.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("sentence-embedding model at {path}: {message}")]
    Load { path: String, message: String },
    #[error("embedding failed: {0}")]
    Embed(String),
    #[error("PCA: {0}")]
    Pca(String),
}

/// One featurized prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// `feature_names(pca.dims())`, in order.
    pub names: Vec<String>,
    /// The row the model is given, same order as `names`.
    pub values: Vec<f32>,
    /// The full (L2-normalized) sentence embedding, for scorers and PCA fitting.
    pub embedding: Vec<f32>,
}

/// Names of a feature row with `pca_dims` embedding components: the text features, then
/// `emb_pca_0` … `emb_pca_{pca_dims-1}`.
pub fn feature_names(pca_dims: usize) -> Vec<String> {
    let mut names: Vec<String> = TEXT_FEATURE_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend((0..pca_dims).map(|i| format!("emb_pca_{i}")));
    names
}

/// Embedder plus text features: one call per prompt.
pub struct Featurizer {
    embedder: Embedder,
}

impl Featurizer {
    pub fn new(embedder: Embedder) -> Self {
        Self { embedder }
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Featurize one prompt with the model's PCA.
    pub fn featurize(&self, prompt: &str, pca: &Pca) -> Result<Features, FeatureError> {
        let emb = self.embedder.embed(prompt)?;
        Ok(assemble(prompt, emb, pca))
    }
}

/// Build the row from an embedding already computed (the trainer embeds in bulk, then fits the PCA).
pub fn assemble(prompt: &str, emb: Embedding, pca: &Pca) -> Features {
    let mut values: Vec<f32> = text_features(prompt, emb.tokens).to_vec();
    values.extend(pca.transform(&emb.vector));
    Features { names: feature_names(pca.dims()), values, embedding: emb.vector }
}
