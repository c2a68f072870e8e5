//! The engine's one error type. Every variant that concerns a file names it, and every message
//! says what was expected, so that a user can act on it without reading the code.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    // The cause is part of the message (not a `source`) so that it is printed once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file exists but its bytes are not what its format requires (truncated, corrupt).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The file is well formed but describes something lensd cannot run.
    #[error("{path}: unsupported {what}")]
    Unsupported { path: PathBuf, what: String },
    /// A tensor's shape does not match what the model's configuration implies.
    #[error("{path}: tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A lens does not fit the base it is applied to.
    #[error("{path}: lens does not match the base: {msg}")]
    LensMismatch { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// A caller asked for something outside what the loaded model offers.
    #[error("{0}")]
    Input(String),
    /// The caller's progress callback asked to stop.
    #[error("cancelled")]
    Cancelled,
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

impl EngineError {
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        EngineError::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        EngineError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn unsupported(path: &Path, what: impl Into<String>) -> Self {
        EngineError::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub fn lens(path: &Path, msg: impl Into<String>) -> Self {
        EngineError::LensMismatch {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
