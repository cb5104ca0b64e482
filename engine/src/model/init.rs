//! New models without a checkpoint: seeded random weights at any shape (with
//! presets for real model shapes), the closed-form weights of the reference
//! fixtures, and writing a Hugging Face model folder.

use std::fs;
use std::path::Path;

use rayon::prelude::*;

use super::weights::{save_model_weights, MAX_SHARD_BYTES};
use super::{Arch, ModelConfig, ModelError, TensorMap};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

/// The shape of a new model: what `igpo model init` takes as flags and a
/// preset names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tied: bool,
}

impl ModelConfig {
    /// A config at `dims` with `arch`'s family defaults (QKV bias for Qwen2,
    /// RoPE base 1e4 for Llama and 1e6 otherwise, RMSNorm eps 1e-6, 32k
    /// positions, no end-of-sequence ids yet). An error when the hidden size
    /// does not split into heads of even size or the heads into KV groups.
    pub fn from_dims(arch: Arch, d: Dims) -> Result<ModelConfig, String> {
        if d.heads == 0
            || d.kv_heads == 0
            || !d.hidden.is_multiple_of(d.heads)
            || !d.heads.is_multiple_of(d.kv_heads)
            || !(d.hidden / d.heads).is_multiple_of(2)
        {
            return Err(format!(
                "hidden {} / heads {} / kv heads {}: hidden must split into heads of even size, heads into kv groups",
                d.hidden, d.heads, d.kv_heads
            ));
        }
        Ok(ModelConfig {
            arch,
            vocab_size: d.vocab,
            hidden_size: d.hidden,
            intermediate_size: d.intermediate,
            num_layers: d.layers,
            num_heads: d.heads,
            num_kv_heads: d.kv_heads,
            head_dim: d.hidden / d.heads,
            rms_norm_eps: 1e-6,
            rope_theta: if arch == Arch::Llama { 1e4 } else { 1e6 },
            rope_scaling: None,
            max_position_embeddings: 32768,
            tie_word_embeddings: d.tied,
            attention_bias: arch == Arch::Qwen2,
            bos_token_id: None,
            eos_token_ids: vec![],
        })
    }
}

/// Real model shapes, for tests and benchmarks at true size.
pub fn preset(name: &str) -> Option<ModelConfig> {
    #[rustfmt::skip]
    let (arch, vocab, hidden, intermediate, layers, heads, kv_heads, theta, eps, tied) = match name {
        "qwen2.5-0.5b" => (Arch::Qwen2, 151936, 896, 4864, 24, 14, 2, 1e6, 1e-6, true),
        "qwen2.5-1.5b" => (Arch::Qwen2, 151936, 1536, 8960, 28, 12, 2, 1e6, 1e-6, true),
        "qwen2.5-3b" => (Arch::Qwen2, 151936, 2048, 11008, 36, 16, 2, 1e6, 1e-6, true),
        "qwen2.5-7b" => (Arch::Qwen2, 152064, 3584, 18944, 28, 28, 4, 1e6, 1e-6, false),
        "smollm2-135m" => (Arch::Llama, 49152, 576, 1536, 30, 9, 3, 1e5, 1e-5, true),
        _ => return None,
    };
    let dims = Dims {
        vocab,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        tied,
    };
    let mut config = ModelConfig::from_dims(arch, dims).expect("presets are valid shapes");
    config.rope_theta = theta;
    config.rms_norm_eps = eps;
    Some(config)
}

pub const PRESETS: &[&str] = &[
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-3b",
    "qwen2.5-7b",
    "smollm2-135m",
];

fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight")
}

/// Seeded random weights: normal(0, 0.02) matrices, unit norms, zero biases
/// (the Hugging Face initialisation). Each tensor draws from its own stream
/// (seed, tensor index) so tensors fill in parallel reproducibly.
pub fn random_weights(config: &ModelConfig, seed: u64) -> TensorMap {
    config
        .tensor_shapes()
        .into_par_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let data = if is_norm(&name) {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                let mut rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                (0..n).map(|_| (0.02 * rng.normal()) as f32).collect()
            };
            (name, Tensor::from_vec(&shape, data))
        })
        .collect()
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash of `v`.
fn splitmix64(v: u64) -> u64 {
    let mut z = v.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The reference fixtures' weights: a closed-form function of (name, index)
/// that `tools/reference/hf_logits.py` computes bit for bit, so no weights
/// are committed. `x = 2 * (splitmix64((s << 32) | i) >> 11) * 2^-53 - 1`
/// (uniform in [-1, 1), full rank), `s` = sum of the name's bytes; norms
/// `1 + 0.1x`, biases `0.1x`, embedding `x`, matrices `[out, in]` `x / sqrt(in)`.
pub fn fixture_weights(config: &ModelConfig) -> TensorMap {
    config
        .tensor_shapes()
        .into_par_iter()
        .map(|(name, shape)| {
            let s: u64 = name.bytes().map(u64::from).sum();
            let scale = if name == "model.embed_tokens.weight" || shape.len() != 2 {
                1.0
            } else {
                1.0 / (shape[1] as f64).sqrt()
            };
            let n: usize = shape.iter().product();
            let data = (0..n)
                .into_par_iter()
                .map(|i| {
                    let z = splitmix64((s << 32) | i as u64);
                    let x = 2.0 * (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64) - 1.0;
                    let v = if is_norm(&name) {
                        1.0 + 0.1 * x
                    } else if name.ends_with(".bias") {
                        0.1 * x
                    } else {
                        scale * x
                    };
                    v as f32
                })
                .collect();
            (name, Tensor::from_vec(&shape, data))
        })
        .collect()
}

/// Writes a Hugging Face model folder: config.json (`torch_dtype` = `dtype`),
/// the weights in `dtype` (sharded past 5 GB), generation_config.json (bos and
/// eos ids), and a copy of `tokenizer_json` (plus tokenizer_config.json with
/// the ChatML template) when given.
pub fn write_model_dir(
    dir: &Path,
    config: &ModelConfig,
    tensors: &TensorMap,
    dtype: DType,
    tokenizer_json: Option<&Path>,
) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e| ModelError::Io { path, source: e }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut cfg = config.to_json();
    cfg["torch_dtype"] = serde_json::json!(dtype.torch_name());
    let cfg_bytes = serde_json::to_vec_pretty(&cfg).expect("config serializes");
    crate::fsutil::write_atomic(&dir.join("config.json"), &cfg_bytes)
        .map_err(io(&dir.join("config.json")))?;
    save_model_weights(dir, tensors, dtype, MAX_SHARD_BYTES)?;
    // The generation config repeats config.json's bos / eos ids.
    let generation: serde_json::Map<String, serde_json::Value> = ["bos_token_id", "eos_token_id"]
        .iter()
        .filter_map(|k| Some((k.to_string(), cfg.get(*k)?.clone())))
        .collect();
    let path = dir.join("generation_config.json");
    crate::fsutil::write_atomic(
        &path,
        &serde_json::to_vec_pretty(&generation).expect("json"),
    )
    .map_err(io(&path))?;
    if let Some(tok) = tokenizer_json {
        let bytes = fs::read(tok).map_err(io(tok))?;
        crate::fsutil::write_atomic(&dir.join("tokenizer.json"), &bytes)
            .map_err(io(&dir.join("tokenizer.json")))?;
        let tc = crate::tokenizer::chatml_tokenizer_config();
        let path = dir.join("tokenizer_config.json");
        crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&tc).expect("json"))
            .map_err(io(&path))?;
    }
    Ok(())
}
