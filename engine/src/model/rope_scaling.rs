//! RoPE frequency scaling read from `config.json`: the old `rope_scaling`
//! dict (`{"type"|"rope_type": ..., "factor": ...}`) or transformers 5's
//! `rope_parameters` (`{rope_type, rope_theta, factor, ...}`), and the
//! inverse frequencies and cos/sin scale each type gives. The formulas follow
//! transformers' `modeling_rope_utils.py` (`_compute_*_parameters`):
//!
//! - `linear`: `inv_freq / factor`.
//! - `dynamic` (NTK): `base' = theta * (factor * L / max_pos - (factor - 1))^(d / (d - 2))`
//!   with `L = max(largest position + 1, max_position_embeddings)`; the
//!   frequencies depend on the forward's positions (see [`RopeScaling::Dynamic`]).
//! - `llama3`: wavelengths `2 pi / inv_freq` longer than `orig / low_freq_factor`
//!   are divided by `factor`, shorter than `orig / high_freq_factor` kept,
//!   in between blended with `s = (orig / wavelen - low) / (high - low)`:
//!   `(1 - s) * inv_freq / factor + s * inv_freq`.
//! - `yarn`: per pair a blend of interpolated (`inv_freq / factor`) and
//!   extrapolated frequencies over a linear ramp between the correction
//!   dimensions of `beta_fast` and `beta_slow`; cos and sin are multiplied by
//!   `attention_factor` (default `0.1 ln(factor) + 1`, or the `mscale` /
//!   `mscale_all_dim` ratio).

use serde_json::{json, Map, Value};

use super::ModelError;
use crate::backend::Rope;

/// A RoPE scaling type and its parameters (no scaling is `None` in
/// [`super::ModelConfig::rope_scaling`]).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    /// Dynamic NTK. Like transformers, a forward whose largest position is
    /// past `max_position_embeddings` recomputes the frequencies for that
    /// length (one set for the whole call: every sequence of a batch, every
    /// new token of a prefill). Decoding with a KV cache therefore rotates
    /// each new key with the frequencies of its own step while the cached
    /// keys keep theirs, as transformers' `generate` does. (transformers also
    /// keeps the grown frequencies for a later, shorter call until it drops
    /// below `max_position_embeddings`; the engine has no such state: each
    /// call uses its own length.)
    Dynamic {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        /// As written in the config; [`RopeScaling::attention_scaling`]
        /// resolves the default.
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: bool,
    },
}

/// Where the scaling dict was found, for error messages.
const SOURCES: [&str; 2] = ["rope_scaling", "rope_parameters"];

impl RopeScaling {
    /// The scaling declared by a config object, `None` for plain RoPE. The
    /// old `rope_scaling` wins over `rope_parameters` (as in transformers).
    /// Errors name `file` and the field.
    pub fn from_config(
        obj: &Map<String, Value>,
        file: &str,
        max_position_embeddings: usize,
    ) -> Result<Option<RopeScaling>, ModelError> {
        let Some((source, dict)) = SOURCES
            .iter()
            .find_map(|s| obj.get(*s).filter(|v| !v.is_null()).map(|v| (*s, v)))
        else {
            return Ok(None);
        };
        let err = |msg: String| ModelError::Config {
            file: file.to_string(),
            msg,
        };
        let dict = dict
            .as_object()
            .ok_or_else(|| err(format!("`{source}` must be an object")))?;
        let num = |key: &str| -> Result<Option<f64>, ModelError> {
            match dict.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| err(format!("`{source}.{key}` must be a number"))),
            }
        };
        let need = |key: &str| -> Result<f64, ModelError> {
            num(key)?.ok_or_else(|| err(format!("`{source}` lacks `{key}`")))
        };
        if let Some(p) = num("partial_rotary_factor")?.filter(|p| *p != 1.0) {
            return Err(err(format!(
                "`{source}.partial_rotary_factor` {p} is not supported (only 1.0)"
            )));
        }
        // transformers gives a top-level `original_max_position_embeddings`
        // priority over the dict's (Phi-3 style configs).
        let original = |default: usize| -> Result<f64, ModelError> {
            if let Some(v) = obj.get("original_max_position_embeddings") {
                return v.as_f64().ok_or_else(|| {
                    err("`original_max_position_embeddings` must be a number".into())
                });
            }
            Ok(num("original_max_position_embeddings")?.unwrap_or(default as f64))
        };
        let kind = ["rope_type", "type"]
            .iter()
            .find_map(|k| dict.get(*k))
            .map(|t| {
                t.as_str()
                    .ok_or_else(|| err(format!("`{source}.rope_type` must be a string")))
            })
            .transpose()?
            .unwrap_or("default");
        let scaling = match kind {
            "default" => return Ok(None),
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: need("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: original(max_position_embeddings)?,
            },
            "yarn" => {
                let orig = original(max_position_embeddings)?;
                let truncate = match dict.get("truncate") {
                    None | Some(Value::Null) => true,
                    Some(v) => v
                        .as_bool()
                        .ok_or_else(|| err(format!("`{source}.truncate` must be a boolean")))?,
                };
                // transformers reads `beta_fast or 32`: 0 means the default too.
                let or = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
                RopeScaling::Yarn {
                    factor: num("factor")?.unwrap_or(max_position_embeddings as f64 / orig),
                    original_max_position_embeddings: orig,
                    beta_fast: or(num("beta_fast")?, 32.0),
                    beta_slow: or(num("beta_slow")?, 1.0),
                    attention_factor: num("attention_factor")?,
                    mscale: num("mscale")?,
                    mscale_all_dim: num("mscale_all_dim")?,
                    truncate,
                }
            }
            other => {
                return Err(err(format!(
                    "unsupported `{source}.rope_type` `{other}` (supported: default, linear, dynamic, llama3, yarn)"
                )))
            }
        };
        let factor = scaling.factor();
        if factor.is_nan() || factor <= 0.0 {
            return Err(err(format!("`{source}.factor` {factor} must be positive")));
        }
        Ok(Some(scaling))
    }

    /// The transformers name of the type.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }

    fn factor(&self) -> f64 {
        match *self {
            RopeScaling::Linear { factor }
            | RopeScaling::Dynamic { factor }
            | RopeScaling::Llama3 { factor, .. }
            | RopeScaling::Yarn { factor, .. } => factor,
        }
    }

    /// The `rope_scaling` object of `config.json` (old form, which
    /// transformers 4 and 5 both read).
    pub fn to_json(&self) -> Value {
        let mut v = json!({"rope_type": self.name()});
        for (k, x) in self.params() {
            v[k] = json!(x);
        }
        if let RopeScaling::Yarn { truncate, .. } = self {
            v["truncate"] = json!(truncate);
        }
        v
    }

    /// The numeric parameters as (config key, value), for printing.
    pub fn params(&self) -> Vec<(&'static str, f64)> {
        match *self {
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
                vec![("factor", factor)]
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => vec![
                ("factor", factor),
                ("low_freq_factor", low_freq_factor),
                ("high_freq_factor", high_freq_factor),
                (
                    "original_max_position_embeddings",
                    original_max_position_embeddings,
                ),
            ],
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                ..
            } => {
                let mut p = vec![
                    ("factor", factor),
                    (
                        "original_max_position_embeddings",
                        original_max_position_embeddings,
                    ),
                    ("beta_fast", beta_fast),
                    ("beta_slow", beta_slow),
                ];
                for (k, v) in [
                    ("attention_factor", attention_factor),
                    ("mscale", mscale),
                    ("mscale_all_dim", mscale_all_dim),
                ] {
                    p.extend(v.map(|v| (k, v)));
                }
                p
            }
        }
    }

    /// The factor cos and sin are multiplied by (1 except for yarn).
    pub fn attention_scaling(&self) -> f64 {
        let RopeScaling::Yarn {
            factor,
            attention_factor,
            mscale,
            mscale_all_dim,
            ..
        } = *self
        else {
            return 1.0;
        };
        let get_mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        match (attention_factor, mscale, mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                get_mscale(factor, m) / get_mscale(factor, all)
            }
            _ => get_mscale(factor, 1.0),
        }
    }

    /// Whether the frequencies depend on the forward's positions.
    pub fn is_dynamic(&self) -> bool {
        matches!(self, RopeScaling::Dynamic { .. })
    }
}

/// The RoPE tables of a model: `theta` and `head_dim` from its config,
/// scaled by `scaling`. `seq_len` (largest position + 1 of the forward) only
/// matters for `dynamic`.
pub fn rope_for(
    head_dim: usize,
    theta: f64,
    scaling: Option<&RopeScaling>,
    max_position_embeddings: usize,
    seq_len: usize,
) -> Rope {
    let d = head_dim as f64;
    let plain = |base: f64| -> Vec<f64> {
        (0..head_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / d))
            .collect()
    };
    let inv_freq: Vec<f64> = match scaling {
        None => plain(theta),
        Some(RopeScaling::Linear { factor }) => plain(theta).iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Dynamic { factor }) => {
            let max_pos = max_position_embeddings as f64;
            let len = (seq_len as f64).max(max_pos);
            plain(theta * (factor * len / max_pos - (factor - 1.0)).powf(d / (d - 2.0)))
        }
        Some(&RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: orig,
        }) => plain(theta)
            .iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < orig / high {
                    f
                } else if wavelen > orig / low {
                    f / factor
                } else {
                    let s = (orig / wavelen - low) / (high - low);
                    (1.0 - s) * f / factor + s * f
                }
            })
            .collect(),
        Some(&RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: orig,
            beta_fast,
            beta_slow,
            truncate,
            ..
        }) => {
            // The pair index where `rotations` full turns fit in `orig` positions.
            let correction_dim = |rotations: f64| {
                d * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
            if low == high {
                high += 0.001; // transformers' guard against a zero-width ramp
            }
            plain(theta)
                .iter()
                .enumerate()
                .map(|(i, &f)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    f / factor * (1.0 - extrapolation) + f * extrapolation
                })
                .collect()
        }
    };
    Rope {
        head_dim,
        inv_freq: inv_freq.iter().map(|&f| f as f32).collect(),
        attention_scaling: scaling.map_or(1.0, |s| s.attention_scaling()) as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Option<RopeScaling>, ModelError> {
        RopeScaling::from_config(v.as_object().unwrap(), "m/config.json", 4096)
    }

    #[test]
    fn reads_both_config_forms() {
        let old = parse(json!({"rope_scaling": {"type": "linear", "factor": 2.0}})).unwrap();
        let new = parse(
            json!({"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                   "rope_theta": 1e4}}),
        )
        .unwrap();
        assert_eq!(old, Some(RopeScaling::Linear { factor: 2.0 }));
        assert_eq!(old, new);
        assert_eq!(
            parse(json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})).unwrap(),
            None
        );
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let back = parse(json!({ "rope_scaling": s.to_json() })).unwrap();
        assert_eq!(back, Some(s));
    }

    #[test]
    fn unknown_type_and_missing_field_name_the_file_and_field() {
        let e = parse(json!({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("`rope_scaling.rope_type` `longrope`"),
            "{e}"
        );
        let e = parse(json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/config.json") && e.contains("`rope_parameters` lacks `low_freq_factor`"),
            "{e}"
        );
    }

    /// Llama 3.1's published numbers: head_dim 128, theta 500000, factor 8,
    /// low 1, high 4, original 8192. The fastest pair is untouched, the
    /// slowest divided by 8, and pair 30 (wavelength 2 pi 5e5^(60/128) ~ 3.1e3,
    /// between 8192 / 4 and 8192 / 1) lies in the blended band.
    #[test]
    fn llama3_frequencies_in_each_band() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let plain = rope_for(128, 5e5, None, 131072, 1);
        let scaled = rope_for(128, 5e5, Some(&s), 131072, 1);
        assert_eq!(scaled.inv_freq[0], plain.inv_freq[0]);
        assert_eq!(scaled.inv_freq[63], plain.inv_freq[63] / 8.0);
        let ratio = scaled.inv_freq[30] / plain.inv_freq[30];
        assert!(ratio > 1.0 / 8.0 && ratio < 1.0, "{ratio}");
        assert_eq!(scaled.attention_scaling, 1.0);
    }

    #[test]
    fn yarn_attention_factor_defaults() {
        let yarn = |attention_factor, mscale, mscale_all_dim| RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32768.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate: true,
        };
        let default = 0.1 * 4f64.ln() + 1.0;
        assert_eq!(yarn(None, None, None).attention_scaling(), default);
        assert_eq!(yarn(Some(1.5), None, None).attention_scaling(), 1.5);
        assert_eq!(yarn(None, Some(1.0), Some(1.0)).attention_scaling(), 1.0);
    }

    #[test]
    fn dynamic_only_scales_past_max_position_embeddings() {
        let s = RopeScaling::Dynamic { factor: 2.0 };
        let plain = rope_for(16, 1e4, None, 64, 1);
        assert_eq!(rope_for(16, 1e4, Some(&s), 64, 64).inv_freq, plain.inv_freq);
        let long = rope_for(16, 1e4, Some(&s), 64, 128);
        assert_eq!(long.inv_freq[0], 1.0);
        assert!(long.inv_freq[7] < plain.inv_freq[7]);
    }
}
