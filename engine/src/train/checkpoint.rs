//! Checkpoints: `run_dir/checkpoints/step-N/` holds
//! - `model/`: a clean Hugging Face model folder in the run's
//!   `checkpoint_dtype` (bf16 by default) with the base model's tokenizer and
//!   generation files, which transformers, vLLM and llama.cpp's converter load
//!   as they are;
//! - `state/`: what an exact resume needs — `master.safetensors` (the f32
//!   weights), `optimizer.safetensors` (AdamW moments) and
//!   `trainer_state.json` (step, RNG, data position).
//!
//! A checkpoint is written under a temporary name and renamed into place, so
//! `step-N` exists only when complete; `state/trainer_state.json` is written
//! last inside it and a folder without it is never picked for a resume. A
//! checkpoint folder is also a model path (see [`crate::model::folder`]): it
//! loads its f32 master weights.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::model::folder::{copy_model_files, MASTER_WEIGHTS};
use crate::model::{init::write_model_dir, save_safetensors, Model, ModelError, TensorMap};
use crate::tensor::{decode_le, DType, Tensor};
use crate::train::guard::SkipCounts;
use crate::train::optim::AdamW;

/// Where the data stream stands: epoch and index inside its shuffled order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub index: u64,
}

/// The dtype of a checkpoint's `model/` folder (`checkpoint_dtype` in a run
/// file). The f32 master weights for resume are kept in `state/` whatever
/// this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointDType {
    #[default]
    Bf16,
    F16,
    F32,
}

impl CheckpointDType {
    pub fn dtype(self) -> DType {
        match self {
            CheckpointDType::Bf16 => DType::BF16,
            CheckpointDType::F16 => DType::F16,
            CheckpointDType::F32 => DType::F32,
        }
    }
}

/// Where a checkpoint keeps its trainer state, relative to its folder.
const TRAINER_STATE: &str = "state/trainer_state.json";
const OPTIMIZER_STATE: &str = "state/optimizer.safetensors";

/// Everything besides tensors that a resume needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub rng: [u64; 4],
    pub data: DataPosition,
    /// The data order of the current epoch (indices into the dataset).
    pub order: Vec<u64>,
    /// AdamW updates applied (its bias corrections count them): more than
    /// `step` with several PPO mini-batches per step, fewer after skips.
    /// Absent in checkpoints written before it was kept: `step`.
    #[serde(default)]
    pub optimizer_steps: Option<u64>,
    /// Updates skipped as not finite (`train::guard`).
    #[serde(default)]
    pub skips: SkipCounts,
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
    /// Writing checkpoint `step` failed; nothing of it is left.
    #[error("checkpoint step-{step} not written (the newest complete one is {newest}): {source}")]
    Write {
        step: u64,
        newest: String,
        source: Box<CheckpointError>,
    },
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
                .join(TRAINER_STATE)
                .exists()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The checkpoint `--resume` continues from: the newest complete one. A run
/// folder that holds only checkpoints of the layout before `model/` +
/// `state/` (`trainer_state.json` at the top) is an error rather than a
/// silent fresh start that would overwrite its metrics.
pub fn resume_point(run_dir: &Path) -> Result<Option<(u64, PathBuf)>, CheckpointError> {
    let newest = list_checkpoints(run_dir).pop();
    if newest.is_none() {
        let dir = run_dir.join("checkpoints");
        let legacy = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("trainer_state.json").is_file());
        if let Some(old) = legacy {
            return Err(CheckpointError::Bad {
                path: old.display().to_string(),
                msg: "a checkpoint of the old layout (no state/): --resume cannot continue it; \
                      give this folder as `model` to train on from its weights"
                    .into(),
            });
        }
    }
    Ok(newest)
}

/// Writes checkpoint `state.step` (the model folder in `model_dtype`, the
/// tokenizer and generation files copied from `base_model`, every
/// parameter's AdamW `moments`) and keeps only
/// the newest `keep_last`. A write that fails (a full disk) leaves nothing
/// of the new checkpoint behind and the older ones as they were.
pub fn save_checkpoint<B: Backend>(
    run_dir: &Path,
    model: &Model<B>,
    moments: Vec<(Tensor, Tensor)>,
    state: &TrainerState,
    base_model: &Path,
    model_dtype: CheckpointDType,
    keep_last: usize,
) -> Result<PathBuf, CheckpointError> {
    let root = run_dir.join("checkpoints");
    fs::create_dir_all(&root).map_err(io(&root))?;
    // What a process killed mid-write left.
    crate::fsutil::remove_stale_temps(&root, |stem| stem.starts_with(".step-"));
    let fin = root.join(format!("step-{}", state.step));
    let tmp = root.join(crate::fsutil::temp_name(&format!(".step-{}", state.step)));
    let written =
        write_checkpoint(&tmp, model, moments, state, base_model, model_dtype).and_then(|()| {
            if fin.exists() {
                fs::remove_dir_all(&fin).map_err(io(&fin))?;
            }
            fs::rename(&tmp, &fin).map_err(io(&fin))
        });
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        let newest = list_checkpoints(run_dir)
            .pop()
            .map_or("none".to_string(), |(s, _)| format!("step-{s}"));
        return Err(CheckpointError::Write {
            step: state.step,
            newest,
            source: Box::new(e),
        });
    }
    tracing::debug!("wrote checkpoint {}", fin.display());
    let all = list_checkpoints(run_dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep_last.max(1))) {
        let _ = fs::remove_dir_all(old);
    }
    Ok(fin)
}

/// The files of a checkpoint, into the folder `dir` (the trainer state
/// last: a folder without it is never resumed from).
fn write_checkpoint<B: Backend>(
    dir: &Path,
    model: &Model<B>,
    moments: Vec<(Tensor, Tensor)>,
    state: &TrainerState,
    base_model: &Path,
    model_dtype: CheckpointDType,
) -> Result<(), CheckpointError> {
    let _ = fs::remove_dir_all(dir);
    let weights = model.to_tensor_map();
    let model_dir = dir.join("model");
    write_model_dir(
        &model_dir,
        &model.config,
        &weights,
        model_dtype.dtype(),
        None,
    )?;
    copy_model_files(base_model, &model_dir)?;
    let state_dir = dir.join("state");
    fs::create_dir_all(&state_dir).map_err(io(&state_dir))?;
    save_safetensors(&dir.join(MASTER_WEIGHTS), &weights, DType::F32)?;
    drop(weights);
    let mut state_map = TensorMap::new();
    for (name, (m, v)) in model.param_names().iter().zip(moments) {
        state_map.insert(format!("m.{name}"), m);
        state_map.insert(format!("v.{name}"), v);
    }
    save_safetensors(&dir.join(OPTIMIZER_STATE), &state_map, DType::F32)?;
    let json = serde_json::to_vec_pretty(state).expect("state serializes");
    crate::fsutil::write_atomic(&dir.join(TRAINER_STATE), &json).map_err(io(dir))
}

/// Loads the trainer state and optimizer moments of a checkpoint into `opt`
/// (those it keeps, see [`AdamW::owns`]; the caller loads the weights by
/// giving the checkpoint folder as the model: its f32 master weights).
pub fn load_checkpoint_state<B: Backend>(
    dir: &Path,
    model: &Model<B>,
    opt: &mut AdamW<B>,
) -> Result<TrainerState, CheckpointError> {
    let sp = dir.join(TRAINER_STATE);
    let text = fs::read_to_string(&sp).map_err(io(&sp))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| CheckpointError::Bad {
        path: sp.display().to_string(),
        msg: e.to_string(),
    })?;
    let op = dir.join(OPTIMIZER_STATE);
    let bytes = fs::read(&op).map_err(io(&op))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Bad {
        path: op.display().to_string(),
        msg: e.to_string(),
    })?;
    let b = model.backend();
    for (i, name) in model.param_names().iter().enumerate() {
        let want = b.shape(&model.params()[i]);
        let [m, v] = ["m", "v"].map(|which| -> Result<Tensor, CheckpointError> {
            let key = format!("{which}.{name}");
            let view = st.tensor(&key).map_err(|_| CheckpointError::Bad {
                path: op.display().to_string(),
                msg: format!("missing `{key}`"),
            })?;
            if view.shape() != want {
                return Err(CheckpointError::Bad {
                    path: op.display().to_string(),
                    msg: format!("`{key}` has shape {:?}, expected {:?}", view.shape(), want),
                });
            }
            Ok(Tensor::from_vec(
                view.shape(),
                decode_le(view.data(), DType::F32),
            ))
        });
        opt.set_moments(b, i, &m?, &v?);
    }
    opt.step = state.optimizer_steps.unwrap_or(state.step);
    Ok(state)
}
