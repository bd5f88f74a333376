//! The engine's error type: what can go wrong loading a model or running a pipeline, with
//! messages a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A model folder that exists but lacks files a pipeline needs.
    #[error("model folder {dir} is incomplete; missing: {missing}. {hint}", missing = .missing.join(", "))]
    IncompleteModel {
        dir: PathBuf,
        missing: Vec<String>,
        hint: String,
    },

    /// A model location that is neither a folder nor a repo id found in the hub cache.
    #[error("model not found: {0}")]
    ModelNotFound(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A request the pipeline cannot run (bad sizes, over-long prompt, …).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("image: {0}")]
    Image(String),

    #[error("cancelled")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
