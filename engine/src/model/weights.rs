//! Checkpoint tensors in and out: Hugging Face safetensors, single file or sharded.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;

use super::{ModelConfig, ModelError};
use crate::tensor::{decode_le, encode_le, DType, Tensor};

/// Host tensors by Hugging Face name.
pub type TensorMap = HashMap<String, Tensor>;

/// What the checkpoint stores on disk (the first weight's dtype).
pub fn stored_dtype(dir: &Path) -> Result<DType, ModelError> {
    let files = shard_files(dir)?;
    let first = files.first().ok_or_else(|| ModelError::Weights {
        file: dir.display().to_string(),
        msg: "no safetensors files".into(),
    })?;
    let mmap = map_file(&dir.join(first))?;
    let st = parse(&mmap, &dir.join(first))?;
    let dtype = st
        .tensors()
        .first()
        .map(|(_, v)| to_dtype(v.dtype()))
        .unwrap_or(Ok(DType::F32));
    dtype.map_err(|d| ModelError::Weights {
        file: first.clone(),
        msg: format!("unsupported dtype {d:?}"),
    })
}

fn to_dtype(d: Dtype) -> Result<DType, Dtype> {
    match d {
        Dtype::F32 => Ok(DType::F32),
        Dtype::F16 => Ok(DType::F16),
        Dtype::BF16 => Ok(DType::BF16),
        other => Err(other),
    }
}

/// The safetensors files of a model folder: `model.safetensors`, or the
/// shards listed by `model.safetensors.index.json`; for a checkpoint its f32
/// master weights.
fn shard_files(dir: &Path) -> Result<Vec<String>, ModelError> {
    if super::is_checkpoint(dir) {
        return Ok(vec![super::folder::MASTER_WEIGHTS.into()]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let file = index.display().to_string();
        let text = fs::read_to_string(&index).map_err(|e| ModelError::Io {
            path: file.clone(),
            source: e,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Weights {
            file: file.clone(),
            msg: format!("not valid JSON: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Weights {
                file: file.clone(),
                msg: "missing `weight_map` object".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    if dir.join("model.safetensors").exists() {
        return Ok(vec!["model.safetensors".into()]);
    }
    Err(ModelError::Weights {
        file: dir.display().to_string(),
        msg: "no model.safetensors or model.safetensors.index.json".into(),
    })
}

fn map_file(path: &Path) -> Result<memmap2::Mmap, ModelError> {
    let f = fs::File::open(path).map_err(|e| ModelError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    // SAFETY: the checkpoint is opened read-only; we copy out of the mapping
    // before returning and do not rely on it staying unchanged afterwards.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, ModelError> {
    SafeTensors::deserialize(bytes).map_err(|e| ModelError::Weights {
        file: path.display().to_string(),
        msg: format!("not a readable safetensors file ({e}); truncated?"),
    })
}

/// Loads every tensor the configuration needs, converted to f32, checking
/// names and shapes. Extra tensors (e.g. `lm_head.weight` when tied) are ignored.
pub fn load_weights(dir: &Path, config: &ModelConfig) -> Result<TensorMap, ModelError> {
    let files = shard_files(dir)?;
    let maps = files
        .iter()
        .map(|f| map_file(&dir.join(f)).map(|m| (f.clone(), m)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut views: HashMap<String, (String, TensorView<'_>)> = HashMap::new();
    for (file, mmap) in &maps {
        let st = parse(mmap, &dir.join(file))?;
        for (name, view) in st.tensors() {
            views.insert(name, (file.clone(), view));
        }
    }
    config
        .tensor_shapes()
        .into_par_iter()
        .map(|(name, shape)| {
            let (file, view) = views.get(&name).ok_or_else(|| ModelError::MissingTensor {
                dir: dir.display().to_string(),
                name: name.clone(),
            })?;
            if view.shape() != shape.as_slice() {
                return Err(ModelError::TensorShape {
                    file: file.clone(),
                    name: name.clone(),
                    expected: shape.clone(),
                    got: view.shape().to_vec(),
                });
            }
            let dtype = to_dtype(view.dtype()).map_err(|d| ModelError::Weights {
                file: file.clone(),
                msg: format!("tensor `{name}` has unsupported dtype {d:?}"),
            })?;
            Ok((
                name,
                Tensor::from_vec(&shape, decode_le(view.data(), dtype)),
            ))
        })
        .collect()
}

/// Writes tensors as one safetensors file in `dtype`, atomically.
pub fn save_safetensors(path: &Path, tensors: &TensorMap, dtype: DType) -> Result<(), ModelError> {
    let sorted: BTreeMap<&String, &Tensor> = tensors.iter().collect();
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
    };
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = sorted
        .par_iter()
        .map(|(name, t)| {
            (
                name.to_string(),
                t.shape().to_vec(),
                encode_le(t.data(), dtype),
            )
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Weights {
                    file: path.display().to_string(),
                    msg: format!("tensor `{name}`: {e}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Weights {
        file: path.display().to_string(),
        msg: e.to_string(),
    })?;
    crate::fsutil::write_atomic(path, &bytes).map_err(|e| ModelError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// Shards of a model folder larger than this are split, as Hugging Face does
/// (`save_pretrained`'s default `max_shard_size` is 5 GB).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Writes a model folder's weights in `dtype`: one `model.safetensors`, or,
/// past `max_shard_bytes`, `model-0000i-of-0000n.safetensors` shards (tensors
/// in name order, a shard closed before it would pass the limit) and
/// `model.safetensors.index.json` (`metadata.total_size`, `weight_map`).
/// Each file is written atomically; the index last.
pub fn save_model_weights(
    dir: &Path,
    tensors: &TensorMap,
    dtype: DType,
    max_shard_bytes: usize,
) -> Result<(), ModelError> {
    let sorted: BTreeMap<&String, &Tensor> = tensors.iter().collect();
    let bytes_of = |t: &Tensor| t.data().len() * dtype.size_of();
    let total: usize = sorted.values().map(|t| bytes_of(t)).sum();
    if total <= max_shard_bytes {
        return save_safetensors(&dir.join("model.safetensors"), tensors, dtype);
    }
    let mut shards: Vec<TensorMap> = vec![];
    let mut size = 0;
    for (name, t) in sorted {
        if shards.is_empty() || (size > 0 && size + bytes_of(t) > max_shard_bytes) {
            shards.push(TensorMap::new());
            size = 0;
        }
        size += bytes_of(t);
        shards
            .last_mut()
            .expect("a shard")
            .insert(name.clone(), t.clone());
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        save_safetensors(&dir.join(&file), shard, dtype)?;
        for name in shard.keys() {
            weight_map.insert(name.clone(), Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    let path = dir.join("model.safetensors.index.json");
    crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&index).expect("json")).map_err(
        |e| ModelError::Io {
            path: path.display().to_string(),
            source: e,
        },
    )
}
