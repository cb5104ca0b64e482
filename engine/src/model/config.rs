//! Model configuration parsed from a Hugging Face `config.json`.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::rope_scaling::{rope_for, RopeScaling};
use super::ModelError;
use crate::backend::Rope;

/// Supported decoder families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Qwen2 / Qwen2.5: Llama layout plus q/k/v biases.
    Qwen2,
    /// Llama (and SmolLM2, which is a Llama).
    Llama,
    /// Qwen3: Llama layout plus an RMSNorm over each head of q and k (before
    /// RoPE), an explicit `head_dim`; q/k/v biases only if `attention_bias`.
    Qwen3,
}

impl Arch {
    pub fn parse(name: &str) -> Option<Arch> {
        match name {
            "qwen2" | "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            "llama" | "LlamaForCausalLM" => Some(Arch::Llama),
            "qwen3" | "Qwen3ForCausalLM" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
            Arch::Qwen3 => "qwen3",
        }
    }

    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// Whether each head of q and k is RMSNormed (`q_norm` / `k_norm`).
    pub fn has_qk_norm(self) -> bool {
        self == Arch::Qwen3
    }
}

/// Everything the decoder needs to know about its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    /// `rope_scaling` / `rope_parameters.rope_type` other than `default`.
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str, file: &str) -> Result<&'a Value, ModelError> {
    obj.get(key).ok_or_else(|| ModelError::Config {
        file: file.to_string(),
        msg: format!("missing field `{key}`"),
    })
}

/// The largest size a config field may declare: far above any real model
/// (vocabularies of 256K, hidden sizes of 16K), low enough that what is
/// derived from the sizes (the tensor list, parameter counts) cannot run
/// away. A fuzzed config with 2^64 - 2 layers asked for a 1.5 GB list.
const MAX_SIZE: u64 = 1 << 24;
/// The same for `num_hidden_layers` (real models: up to ~130).
const MAX_LAYERS: u64 = 1 << 12;

fn usize_field(obj: &Map<String, Value>, key: &str, file: &str) -> Result<usize, ModelError> {
    let max = match key {
        "num_hidden_layers" => MAX_LAYERS,
        _ => MAX_SIZE,
    };
    field(obj, key, file)?
        .as_u64()
        .filter(|v| (1..=max).contains(v))
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::Config {
            file: file.to_string(),
            msg: format!("field `{key}` must be a positive integer of at most {max}"),
        })
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    /// Reads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<ModelConfig, ModelError> {
        let path = super::hf_dir(dir).join("config.json");
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io {
            path: file.clone(),
            source: e,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: file.clone(),
            msg: format!("not valid JSON: {e}"),
        })?;
        ModelConfig::from_json(&value, &file)
    }

    /// Parses a Hugging Face config object; `file` names it in errors.
    pub fn from_json(value: &Value, file: &str) -> Result<ModelConfig, ModelError> {
        let err = |msg: String| ModelError::Config {
            file: file.to_string(),
            msg,
        };
        let obj = value
            .as_object()
            .ok_or_else(|| err("top level is not a JSON object".into()))?;
        let declared = obj
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| obj.get("model_type").and_then(|m| m.as_str()))
            .ok_or_else(|| err("missing field `architectures` (or `model_type`)".into()))?;
        let arch = Arch::parse(declared).ok_or_else(|| {
            err(format!(
                "unknown architecture `{declared}` (supported: Qwen2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM)"
            ))
        })?;
        let hidden_size = usize_field(obj, "hidden_size", file)?;
        let num_heads = usize_field(obj, "num_attention_heads", file)?;
        let num_kv_heads = match obj.get("num_key_value_heads") {
            None | Some(Value::Null) => num_heads,
            Some(_) => usize_field(obj, "num_key_value_heads", file)?,
        };
        let head_dim = match obj.get("head_dim") {
            None | Some(Value::Null) => hidden_size / num_heads,
            Some(_) => usize_field(obj, "head_dim", file)?,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(err(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        if head_dim == 0 {
            return Err(err(format!(
                "head_dim is 0 (hidden_size {hidden_size} / num_attention_heads {num_heads}); it must be positive"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(err(format!("head_dim {head_dim} must be even for RoPE")));
        }
        let act = obj
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("silu");
        if act != "silu" {
            return Err(err(format!("unsupported hidden_act `{act}` (only silu)")));
        }
        let float = |key: &str, default: f64| -> Result<f64, ModelError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| err(format!("field `{key}` must be a number"))),
            }
        };
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            Arch::Llama | Arch::Qwen3 => obj
                .get("attention_bias")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        if obj
            .get("mlp_bias")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
        {
            return Err(err("unsupported `mlp_bias: true`".into()));
        }
        let max_position_embeddings = obj
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .unwrap_or(32768) as usize;
        // Stored as f32: 1e308 would become inf (and its JSON null).
        let rms_norm_eps = float("rms_norm_eps", 1e-6)? as f32;
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(err(format!(
                "`rms_norm_eps` {rms_norm_eps} must be a non-negative f32"
            )));
        }
        // transformers >= 5 writes `rope_parameters: {rope_theta, rope_type}`.
        let rope_theta = match obj.get("rope_parameters").and_then(|r| r.get("rope_theta")) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err("`rope_parameters.rope_theta` must be a number".into()))?,
            None => float("rope_theta", 10000.0)?,
        };
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(err(format!("`rope_theta` {rope_theta} must be positive")));
        }
        Ok(ModelConfig {
            arch,
            vocab_size: usize_field(obj, "vocab_size", file)?,
            hidden_size,
            intermediate_size: usize_field(obj, "intermediate_size", file)?,
            num_layers: usize_field(obj, "num_hidden_layers", file)?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling: RopeScaling::from_config(obj, file, max_position_embeddings)?,
            max_position_embeddings,
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            attention_bias,
            bos_token_id: token_ids(obj.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(obj.get("eos_token_id")),
        })
    }

    /// The Hugging Face `config.json` object for this configuration.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
        });
        if self.arch != Arch::Qwen2 {
            v["attention_bias"] = json!(self.attention_bias);
            v["mlp_bias"] = json!(false);
        }
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = s.to_json();
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = json!(b);
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = json!(one),
            many => v["eos_token_id"] = json!(many),
        }
        v
    }

    /// The RoPE tables for a forward whose largest position is `seq_len - 1`
    /// (the length only matters for `dynamic` scaling).
    pub fn rope(&self, seq_len: usize) -> Rope {
        rope_for(
            self.head_dim,
            self.rope_theta,
            self.rope_scaling.as_ref(),
            self.max_position_embeddings,
            seq_len,
        )
    }

    /// Every parameter tensor the checkpoint must hold: (name, shape).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![d]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
            if self.attention_bias {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            if self.arch.has_qk_norm() {
                let hd = vec![self.head_dim];
                out.push((format!("{p}.self_attn.q_norm.weight"), hd.clone()));
                out.push((format!("{p}.self_attn.k_norm.weight"), hd));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, d]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, d]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![d, i]));
        }
        out.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, d]));
        }
        out
    }

    /// RoPE base, scaling type with its parameters, and the context the
    /// config declares, in one line.
    pub fn rope_description(&self) -> String {
        let scaling = match &self.rope_scaling {
            None => "none".to_string(),
            Some(s) => {
                let params: Vec<String> =
                    s.params().iter().map(|(k, v)| format!("{k} {v}")).collect();
                format!("{} ({})", s.name(), params.join(", "))
            }
        };
        format!(
            "theta {}, scaling {scaling}, max positions {}",
            self.rope_theta, self.max_position_embeddings
        )
    }

    pub fn num_parameters(&self) -> u64 {
        self.tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    }
}

#[cfg(test)]
impl ModelConfig {
    /// A two-layer Qwen2 of a few thousand parameters (tied lm-head,
    /// attention biases) for unit tests.
    pub(crate) fn tiny_for_tests() -> ModelConfig {
        ModelConfig {
            arch: Arch::Qwen2,
            vocab_size: 64,
            hidden_size: 16,
            intermediate_size: 32,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 1e4,
            rope_scaling: None,
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            attention_bias: true,
            bos_token_id: None,
            eos_token_ids: vec![3],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen_json() -> Value {
        json!({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 100, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "tie_word_embeddings": true, "eos_token_id": [1, 2]})
    }

    #[test]
    fn parses_qwen2_and_round_trips() {
        let c = ModelConfig::from_json(&qwen_json(), "config.json").unwrap();
        assert_eq!(c.arch, Arch::Qwen2);
        assert!(c.attention_bias);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        let back = ModelConfig::from_json(&c.to_json(), "x").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = qwen_json();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = ModelConfig::from_json(&v, "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("hidden_size"),
            "{e}"
        );
        let mut v = qwen_json();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = ModelConfig::from_json(&v, "c").unwrap_err().to_string();
        assert!(e.contains("unknown architecture `GPT2LMHeadModel`"), "{e}");
    }

    /// Qwen3-0.6B's config: explicit head_dim 128 (hidden 1024 / 16 heads
    /// would be 64), no biases, tied; 596M parameters as its model card's
    /// 0.6B (0.44B without the embedding).
    #[test]
    fn parses_qwen3_with_explicit_head_dim() {
        let v = json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                       "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
                       "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                       "head_dim": 128, "attention_bias": false, "tie_word_embeddings": true,
                       "rope_theta": 1000000, "max_position_embeddings": 40960});
        let c = ModelConfig::from_json(&v, "c").unwrap();
        assert_eq!(
            (c.arch, c.head_dim, c.attention_bias),
            (Arch::Qwen3, 128, false)
        );
        assert!(c.arch.has_qk_norm());
        let names: Vec<String> = c.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.27.self_attn.k_norm.weight".to_string()));
        assert_eq!(c.num_parameters(), 596_049_920);
        assert_eq!(ModelConfig::from_json(&c.to_json(), "x").unwrap(), c);
    }

    #[test]
    fn parameter_count_of_smollm2_shape() {
        let v = json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
                       "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                       "num_key_value_heads": 3, "tie_word_embeddings": true});
        let c = ModelConfig::from_json(&v, "c").unwrap();
        assert_eq!(c.num_parameters(), 134_515_008);
    }

    /// Found by the fuzz tests (engine/tests/fuzz.rs): a derived head_dim
    /// of 0 was accepted (and the config's own JSON then refused), and a
    /// layer count of 2^64 - 2 made `tensor_shapes` allocate without bound.
    #[test]
    fn refuses_zero_head_dim_and_absurd_sizes() {
        let base = crate::model::init::preset("smollm2-135m")
            .unwrap()
            .to_json();
        let load = |edit: &dyn Fn(&mut Value)| {
            let mut v = base.clone();
            edit(&mut v);
            ModelConfig::from_json(&v, "config.json").map_err(|e| e.to_string())
        };
        assert!(load(&|_| {}).is_ok());
        let err = load(&|v| {
            v["hidden_size"] = 1.into();
            v.as_object_mut().unwrap().remove("head_dim");
        })
        .unwrap_err();
        assert!(err.contains("head_dim is 0"), "{err}");
        let err = load(&|v| v["num_hidden_layers"] = (u64::MAX - 1).into()).unwrap_err();
        assert!(
            err.contains("`num_hidden_layers` must be a positive integer of at most 4096"),
            "{err}"
        );
        let err = load(&|v| v["vocab_size"] = (1u64 << 40).into()).unwrap_err();
        assert!(err.contains("`vocab_size`"), "{err}");
        // 1e308 is inf as an f32.
        let err = load(&|v| v["rms_norm_eps"] = 1e308.into()).unwrap_err();
        assert!(err.contains("rms_norm_eps"), "{err}");
        let err = load(&|v| v["rope_theta"] = (-1.0).into()).unwrap_err();
        assert!(err.contains("rope_theta"), "{err}");
    }
}
