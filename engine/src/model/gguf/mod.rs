//! Import a GGUF checkpoint (llama.cpp's single-file format) as a Hugging Face
//! model folder: `config.json`, `model.safetensors` (bf16), `tokenizer.json`,
//! `tokenizer_config.json` and `generation_config.json`.
//!
//! ```no_run
//! # use std::path::Path;
//! let summary = igpo::model::gguf::import_gguf(
//!     Path::new("SmolLM2-135M-Instruct.Q4_1.gguf"),
//!     Path::new("models/smollm2-135m"),
//! )?;
//! println!("{} tensors, {} parameters", summary.n_tensors, summary.n_params);
//! # Ok::<(), igpo::model::gguf::GgufError>(())
//! ```
//!
//! Inside: `reader` parses the file (memory-mapped), `dequant` turns every
//! supported ggml block type into f32, `vocab` rebuilds `tokenizer.json` from
//! the `tokenizer.ggml.*` metadata, and `import` maps names and shapes, undoes
//! llama.cpp's q/k row permutation and writes the folder (temp file + rename,
//! `config.json` last, so an interrupted import never looks complete).

pub(crate) mod dequant;
mod import;
pub(crate) mod reader;
pub(crate) mod rope_factors;
mod vocab;

pub use import::import_gguf;

/// What an import wrote, for the CLI to print.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSummary {
    /// `general.architecture`, e.g. `llama` or `qwen2`.
    pub architecture: String,
    /// Tensors written to `model.safetensors`.
    pub n_tensors: usize,
    /// Elements over all written tensors.
    pub n_params: u64,
    /// `config.json`'s `vocab_size` (rows of the embedding matrix).
    pub vocab_size: usize,
    /// ggml type name -> number of tensors of that type in the GGUF file,
    /// sorted by name.
    pub tensor_types: Vec<(String, usize)>,
    /// Things the import did that a user may want to know (skipped tensors,
    /// skipped duplicate tokens, ...), one line each.
    pub notes: Vec<String>,
}

/// Everything that can go wrong while importing a GGUF file. `Display` is one
/// line naming the file and the key, tensor or type at fault.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file: it starts with {found}, a GGUF file starts with \"GGUF\"")]
    NotGguf { path: String, found: String },
    #[error(
        "{path}: unsupported GGUF version {version}{note} (this importer reads versions 2 and 3)"
    )]
    UnsupportedVersion {
        path: String,
        version: u32,
        note: &'static str,
    },
    #[error("{path} is truncated: {what} needs bytes up to offset {needed}, but the file has {size} bytes")]
    Truncated {
        path: String,
        what: String,
        needed: u64,
        size: u64,
    },
    #[error("{path}: malformed GGUF: {what}")]
    Malformed { path: String, what: String },
    #[error("{path}: missing required metadata key `{key}`")]
    MissingKey { path: String, key: String },
    #[error("{path}: metadata key `{key}` holds {got}, expected {expected}")]
    KeyType {
        path: String,
        key: String,
        expected: &'static str,
        got: String,
    },
    #[error("{path}: metadata key `{key}`: {reason}")]
    BadMetadata {
        path: String,
        key: String,
        reason: String,
    },
    #[error("{path}: tensor `{tensor}` is stored as {ty}, which this importer cannot dequantize (supported: {supported})")]
    UnsupportedTensorType {
        path: String,
        tensor: String,
        ty: String,
        supported: String,
    },
    #[error("{path}: tensor `{tensor}`: {what}")]
    BadTensor {
        path: String,
        tensor: String,
        what: String,
    },
    #[error("{path}: tensor `{tensor}` has shape {got:?} (GGUF dims, innermost first), expected {expected:?}")]
    TensorShape {
        path: String,
        tensor: String,
        expected: Vec<u64>,
        got: Vec<u64>,
    },
    #[error("{path}: required tensor `{tensor}` is missing")]
    MissingTensor { path: String, tensor: String },
    #[error("{path}: tensor `{tensor}` has no Hugging Face counterpart for architecture {arch}")]
    UnknownTensor {
        path: String,
        tensor: String,
        arch: String,
    },
    #[error("{path}: unsupported architecture `{arch}` in general.architecture (supported: llama, qwen2)")]
    UnsupportedArchitecture { path: String, arch: String },
    #[error(
        "{path}: unsupported tokenizer model {model} in tokenizer.ggml.model (supported: gpt2)"
    )]
    UnsupportedTokenizer { path: String, model: String },
    #[error(
        "{path}: unsupported pre-tokenizer `{pre}` in tokenizer.ggml.pre (supported: {supported})"
    )]
    UnsupportedPreTokenizer {
        path: String,
        pre: String,
        supported: String,
    },
    #[error("{path}: the tokenizer.json rebuilt from its metadata failed verification: {reason}")]
    Tokenizer { path: String, reason: String },
    #[error("{dir} is not empty: it holds `{file}`, which an import would not write; refusing to overwrite (pick an empty or new folder)")]
    OutDirNotEmpty { dir: String, file: String },
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
}

impl GgufError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        GgufError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
