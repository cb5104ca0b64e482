//! Model folders on disk: a Hugging Face folder, or a training checkpoint.
//!
//! A Hugging Face folder is what transformers, vLLM and llama.cpp's converter
//! load as it is: `config.json` (its `torch_dtype` is the dtype of the tensors
//! beside it), `model.safetensors` (sharded past 5 GB, with
//! `model.safetensors.index.json`), `generation_config.json` and the
//! tokenizer files.
//!
//! A checkpoint `checkpoints/step-N/` holds such a folder in `model/` and, in
//! `state/`, what an exact resume needs: the f32 master weights
//! ([`MASTER_WEIGHTS`]), the AdamW moments and the trainer state. Wherever a
//! model folder is expected, a checkpoint may be given instead: its config and
//! tokenizer come from `model/`, its weights from the f32 master, so training
//! on from a checkpoint (or resuming it) starts from exactly the weights the
//! run had.

use std::fs;
use std::path::{Path, PathBuf};

use super::init::write_model_dir;
use super::{load_weights, ModelConfig, ModelError};
use crate::tensor::DType;

/// The f32 master weights of a checkpoint, relative to its folder.
pub const MASTER_WEIGHTS: &str = "state/master.safetensors";

/// Files of a model folder besides config and weights that travel with the
/// model (copied from the base model into every checkpoint and export).
pub const MODEL_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
];

/// Whether `path` is a checkpoint (`model/` + `state/` with master weights).
pub fn is_checkpoint(path: &Path) -> bool {
    path.join("model/config.json").is_file() && path.join(MASTER_WEIGHTS).is_file()
}

/// The Hugging Face folder of `path`: `path/model` for a checkpoint, else
/// `path` itself.
pub fn hf_dir(path: &Path) -> PathBuf {
    if is_checkpoint(path) {
        path.join("model")
    } else {
        path.to_path_buf()
    }
}

/// Copies the [`MODEL_FILES`] that `from` (a model folder or checkpoint) has
/// into `to`, atomically each.
pub fn copy_model_files(from: &Path, to: &Path) -> Result<(), ModelError> {
    let from = hf_dir(from);
    for name in MODEL_FILES {
        let src = from.join(name);
        if !src.is_file() {
            continue;
        }
        let bytes = fs::read(&src).map_err(|e| ModelError::Io {
            path: src.display().to_string(),
            source: e,
        })?;
        let dst = to.join(name);
        crate::fsutil::write_atomic(&dst, &bytes).map_err(|e| ModelError::Io {
            path: dst.display().to_string(),
            source: e,
        })?;
    }
    Ok(())
}

/// Writes a clean Hugging Face folder `out` in `dtype` from a checkpoint (its
/// f32 master weights) or any model folder: config, weights, generation
/// config and tokenizer files. `out` must not exist or be empty; it appears
/// complete or not at all.
pub fn export(src: &Path, out: &Path, dtype: DType) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e| ModelError::Io { path, source: e }
    };
    if out.exists() && fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(ModelError::Config {
            file: out.display().to_string(),
            msg: "exists and is not empty; export writes a new folder".into(),
        });
    }
    let config = ModelConfig::load(src)?;
    let tensors = load_weights(src, &config)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = out.with_file_name(crate::fsutil::temp_name(&format!(".{name}")));
    let _ = fs::remove_dir_all(&tmp);
    // The first writes: missing parents are made (as `mkdir -p`); a parent
    // that is a file or read-only fails here, named as `out`.
    if let Some(parent) = tmp.parent() {
        fs::create_dir_all(parent).map_err(io(out))?;
    }
    fs::create_dir(&tmp).map_err(io(out))?;
    let written = write_model_dir(&tmp, &config, &tensors, dtype, None)
        .and_then(|()| copy_model_files(src, &tmp))
        .and_then(|()| {
            if out.exists() {
                fs::remove_dir(out).map_err(io(out))?;
            }
            fs::rename(&tmp, out).map_err(io(out))
        });
    if written.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::random_weights;
    use crate::model::save_model_weights;

    fn tiny() -> ModelConfig {
        ModelConfig::tiny_for_tests()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("igpo-folder-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn shards_past_the_limit_load_back_and_the_index_names_every_tensor() {
        let dir = scratch("shards");
        let config = tiny();
        let weights = random_weights(&config, 1);
        write_model_dir(&dir, &config, &weights, DType::F32, None).unwrap();
        // Rewrite the weights with a 4 KiB shard limit: several shards.
        fs::remove_file(dir.join("model.safetensors")).unwrap();
        save_model_weights(&dir, &weights, DType::F32, 4096).unwrap();
        let index: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), weights.len());
        let files: std::collections::BTreeSet<&str> =
            map.values().map(|v| v.as_str().unwrap()).collect();
        assert!(files.len() > 2, "{files:?}");
        let n = files.len();
        for (i, f) in files.iter().enumerate() {
            assert_eq!(*f, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
            // Past the limit only when one tensor alone is larger.
            let size = fs::metadata(dir.join(f)).unwrap().len();
            assert!(size < 4096 + 1024 || map.values().filter(|v| v == f).count() == 1);
        }
        let total: usize = weights.values().map(|t| t.data().len() * 4).sum();
        assert_eq!(index["metadata"]["total_size"], serde_json::json!(total));
        let back = load_weights(&dir, &config).unwrap();
        for (name, t) in &weights {
            assert_eq!(back[name].data(), t.data(), "{name}");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn export_writes_the_dtype_it_says_and_refuses_a_full_folder() {
        let dir = scratch("export");
        let config = tiny();
        let weights = random_weights(&config, 2);
        write_model_dir(&dir.join("src"), &config, &weights, DType::F32, None).unwrap();
        fs::write(dir.join("src/tokenizer_config.json"), "{\"x\": 1}").unwrap();
        export(&dir.join("src"), &dir.join("out"), DType::F16).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("out/config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["torch_dtype"], "float16");
        assert_eq!(
            crate::model::stored_dtype(&dir.join("out")).unwrap(),
            DType::F16
        );
        assert_eq!(
            fs::read(dir.join("out/tokenizer_config.json")).unwrap(),
            b"{\"x\": 1}"
        );
        let gen: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(dir.join("out/generation_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(gen["eos_token_id"], 3);
        let err = export(&dir.join("src"), &dir.join("out"), DType::F16).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
