//! Qwen2 / Llama / Qwen3 decoders: configuration, weights in and out, the forward
//! pass with a KV cache, random initialisation and GGUF import.

mod backward;
mod config;
mod decoder;
pub mod folder;
pub mod gguf;
pub mod init;
mod memory;
pub mod rope_scaling;
mod weights;

use std::path::Path;

pub use backward::{Activations, HandOver, TrainSeq};
pub use config::{Arch, ModelConfig};
pub use decoder::{KvCache, LogitRows, Model, PagedStep, SeqStep};
pub use folder::{export, hf_dir, is_checkpoint};
pub use memory::{MemoryEstimate, RankMemory, MOMENT_BYTES_PER_PARAM};
pub use rope_scaling::RopeScaling;
pub use weights::{
    load_weights, save_model_weights, save_safetensors, stored_dtype, TensorMap, MAX_SHARD_BYTES,
};

use crate::backend::Backend;

/// Errors loading or saving a model; each names the file, field or tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {msg}")]
    Config { file: String, msg: String },
    #[error("{file}: {msg}")]
    Weights { file: String, msg: String },
    #[error("{dir}: checkpoint has no tensor `{name}`")]
    MissingTensor { dir: String, name: String },
    #[error("{file}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        file: String,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
}

/// Loads a Hugging Face model folder (config.json + safetensors), or a
/// checkpoint's f32 master weights (see [`folder`]), onto `backend`.
pub fn load<B: Backend>(dir: &Path, backend: B) -> Result<Model<B>, ModelError> {
    let config = ModelConfig::load(dir)?;
    let tensors = load_weights(dir, &config)?;
    let backend_name = backend.name();
    tracing::debug!(
        "loaded {} ({:?}, {} layers, hidden {}, vocab {}, {} parameters) on {backend_name}",
        dir.display(),
        config.arch,
        config.num_layers,
        config.hidden_size,
        config.vocab_size,
        config.num_parameters()
    );
    Ok(Model::from_tensors(config, tensors, backend))
}
