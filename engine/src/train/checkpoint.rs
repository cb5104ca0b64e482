//! Checkpoints: `run_dir/checkpoints/step-N/` is a Hugging Face model folder
//! (f32 weights, so a resume is exact; other tools load it as is) plus
//! `optimizer.safetensors` and `trainer_state.json` (step, RNG, data position).
//!
//! A checkpoint is written under a temporary name and renamed into place, so
//! `step-N` exists only when complete; `trainer_state.json` is written last
//! inside it and a folder without it is never picked for a resume.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::model::{init::write_model_dir, save_safetensors, Model, ModelError, TensorMap};
use crate::tensor::{decode_le, DType, Tensor};
use crate::train::optim::AdamW;

/// Where the data stream stands: epoch and index inside its shuffled order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub index: u64,
}

/// Everything besides tensors that a resume needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub rng: [u64; 4],
    pub data: DataPosition,
    /// The data order of the current epoch (indices into the dataset).
    pub order: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {msg}")]
    Bad { path: String, msg: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Complete checkpoints in `run_dir/checkpoints`, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let dir = run_dir.join("checkpoints");
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let step = step_of(&e.file_name().to_string_lossy())?;
            e.path()
                .join("trainer_state.json")
                .exists()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Writes checkpoint `state.step` and keeps only the newest `keep_last`.
pub fn save_checkpoint<B: Backend>(
    run_dir: &Path,
    model: &Model<B>,
    opt: &AdamW<B>,
    state: &TrainerState,
    tokenizer_dir: &Path,
    keep_last: usize,
) -> Result<PathBuf, CheckpointError> {
    let root = run_dir.join("checkpoints");
    fs::create_dir_all(&root).map_err(io(&root))?;
    let fin = root.join(format!("step-{}", state.step));
    let tmp = root.join(format!(".step-{}.tmp-{}", state.step, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    write_model_dir(
        &tmp,
        &model.config,
        &model.to_tensor_map(),
        DType::F32,
        None,
    )?;
    // The model's own tokenizer files, chat template included.
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let src = tokenizer_dir.join(name);
        if src.exists() {
            fs::copy(&src, tmp.join(name)).map_err(io(&src))?;
        }
    }
    let b = model.backend();
    let mut moments = TensorMap::new();
    for (i, name) in model.param_names().iter().enumerate() {
        moments.insert(format!("m.{name}"), b.download(&opt.m[i]));
        moments.insert(format!("v.{name}"), b.download(&opt.v[i]));
    }
    save_safetensors(&tmp.join("optimizer.safetensors"), &moments, DType::F32)?;
    let json = serde_json::to_vec_pretty(state).expect("state serializes");
    crate::fsutil::write_atomic(&tmp.join("trainer_state.json"), &json).map_err(io(&tmp))?;
    if fin.exists() {
        fs::remove_dir_all(&fin).map_err(io(&fin))?;
    }
    fs::rename(&tmp, &fin).map_err(io(&fin))?;
    let all = list_checkpoints(run_dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep_last.max(1))) {
        let _ = fs::remove_dir_all(old);
    }
    Ok(fin)
}

/// Loads the trainer state and optimizer moments of a checkpoint into `opt`
/// (the weights are loaded as a model folder by the caller).
pub fn load_checkpoint_state<B: Backend>(
    dir: &Path,
    model: &Model<B>,
    opt: &mut AdamW<B>,
) -> Result<TrainerState, CheckpointError> {
    let sp = dir.join("trainer_state.json");
    let text = fs::read_to_string(&sp).map_err(io(&sp))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| CheckpointError::Bad {
        path: sp.display().to_string(),
        msg: e.to_string(),
    })?;
    let op = dir.join("optimizer.safetensors");
    let bytes = fs::read(&op).map_err(io(&op))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Bad {
        path: op.display().to_string(),
        msg: e.to_string(),
    })?;
    let b = model.backend();
    for (i, name) in model.param_names().iter().enumerate() {
        for (which, dst) in [("m", &mut opt.m[i]), ("v", &mut opt.v[i])] {
            let key = format!("{which}.{name}");
            let view = st.tensor(&key).map_err(|_| CheckpointError::Bad {
                path: op.display().to_string(),
                msg: format!("missing `{key}`"),
            })?;
            let t = Tensor::from_vec(view.shape(), decode_le(view.data(), DType::F32));
            if view.shape() != b.shape(dst) {
                return Err(CheckpointError::Bad {
                    path: op.display().to_string(),
                    msg: format!(
                        "`{key}` has shape {:?}, expected {:?}",
                        view.shape(),
                        b.shape(dst)
                    ),
                });
            }
            *dst = b.upload(&t);
        }
    }
    opt.step = state.step;
    Ok(state)
}
