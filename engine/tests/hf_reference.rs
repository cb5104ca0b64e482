//! Logits equal Hugging Face transformers on tiny Qwen2, Llama, Llama 3.x
//! with each RoPE scaling type (`llama3`, `linear`, `dynamic`, `yarn`; a
//! case at positions 100.. past every original context) and Qwen3 (tied and
//! untied) models.
//!
//! `tools/reference/hf_logits.py` built the fixtures in `tests/fixtures/hf/`
//! with transformers; the weights are a closed-form function both sides
//! compute (`igpo::model::init::fixture_weights`), so none are committed.

use crate::common;

use igpo::backend::{Backend, Cpu};
use igpo::model::{init::fixture_weights, LogitRows, Model, ModelConfig, SeqStep};
use igpo::tensor::Tensor;
use igpo::tokenizer::Tokenizer;
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> Value {
    let path = common::workspace().join(format!("tests/fixtures/hf/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn model_for(fx: &Value) -> Model<Cpu> {
    let config = ModelConfig::from_json(&fx["config"], "fixture config").unwrap();
    let weights = fixture_weights(&config);
    Model::from_tensors(config, weights, Cpu)
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Compares every position of one fixture row against our logits rows.
fn check_row(case: &str, row: &Value, ours: &Tensor, first: usize, probe_ids: &[u32]) -> f32 {
    let mut worst = 0.0f32;
    let want_logits = row["logits"].as_array().unwrap();
    for (p, want) in want_logits.iter().enumerate() {
        let got = ours.row(first + p);
        let mut diff = |a: f32, b: f32, what: &str| {
            let d = (a - b).abs();
            assert!(
                d < TOL,
                "{case} position {p} {what}: ours {a} vs transformers {b}"
            );
            worst = worst.max(d);
        };
        for (id, w) in probe_ids.iter().zip(f32s(want)) {
            diff(got[*id as usize], w, &format!("logit of id {id}"));
        }
        for (id, w) in u32s(&row["top5_ids"][p])
            .iter()
            .zip(f32s(&row["top5_logits"][p]))
        {
            diff(got[*id as usize], w, &format!("top-5 logit of id {id}"));
        }
        diff(
            common::logsumexp(got) as f32,
            row["logsumexp"][p].as_f64().unwrap() as f32,
            "logsumexp",
        );
    }
    worst
}

fn check_model(name: &str) {
    let fx = fixture(name);
    let model = model_for(&fx);
    let tok = Tokenizer::from_file(&common::data_dir().join("qwen2.5-tokenizer.json")).unwrap();
    let probe_ids = u32s(&fx["probe_ids"]);
    let mut worst = 0.0f32;
    for case in fx["cases"].as_array().unwrap() {
        let case_name = format!("{name}/{}", case["name"].as_str().unwrap());
        let rows = case["rows"].as_array().unwrap();
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| u32s(&r["ids"])).collect();
        let positions: Vec<Vec<usize>> = rows.iter().map(|r| usizes(&r["positions"])).collect();
        for (r, want) in rows.iter().zip(&ids) {
            let text = r["text"].as_str().unwrap();
            assert_eq!(
                &tok.encode(text).unwrap(),
                want,
                "{case_name}: token ids of {text:?}"
            );
        }
        if let Some(prefill) = rows[0].get("prefill").and_then(|p| p.as_u64()) {
            let logits = decode(&model, &ids[0], prefill as usize);
            worst = worst.max(check_row(&case_name, &rows[0], &logits, 0, &probe_ids));
            continue;
        }
        // Every row of the case in ONE forward call: the padded batch of the
        // reference becomes a packed batch of unequal sequences here.
        let mut caches: Vec<_> = rows.iter().map(|_| model.new_cache()).collect();
        let mut steps: Vec<SeqStep<'_, Cpu>> = ids
            .iter()
            .zip(&positions)
            .zip(caches.iter_mut())
            .map(|((t, p), cache)| SeqStep {
                tokens: t,
                positions: Some(p),
                cache,
            })
            .collect();
        let logits = model.forward(&mut steps, LogitRows::All);
        let mut first = 0;
        for (r, t) in rows.iter().zip(&ids) {
            worst = worst.max(check_row(&case_name, r, &logits, first, &probe_ids));
            first += t.len();
        }
    }
    eprintln!("{name}: max |logit difference| vs transformers = {worst:.2e}");
}

/// Logits of every position of `ids` decoded as `generate` runs it: a
/// `prefill`-token forward, then one token per forward through the KV cache.
fn decode(model: &Model<Cpu>, ids: &[u32], prefill: usize) -> Tensor {
    let mut cache = model.new_cache();
    let mut rows = vec![];
    let mut start = 0;
    for end in std::iter::once(prefill).chain(prefill + 1..=ids.len()) {
        let logits = model.forward(
            &mut [SeqStep {
                tokens: &ids[start..end],
                positions: None,
                cache: &mut cache,
            }],
            LogitRows::All,
        );
        rows.extend_from_slice(logits.data());
        start = end;
    }
    Tensor::from_vec(&[ids.len(), model.config.vocab_size], rows)
}

#[test]
fn tiny_qwen2_logits_match_transformers() {
    check_model("tiny-qwen2");
}

#[test]
fn tiny_llama_logits_match_transformers() {
    check_model("tiny-llama");
}

/// The RoPE-scaling fixtures (Llama 3.1/3.2 `llama3`; `linear`, `dynamic`,
/// `yarn`) and Qwen3: transformers 5 writes the config as `rope_parameters`.
const SCALED_AND_QWEN3: [&str; 6] = [
    "tiny-llama31",
    "tiny-llama-linear",
    "tiny-llama-dynamic",
    "tiny-llama-yarn",
    "tiny-qwen3",
    "tiny-qwen3-untied",
];

#[test]
fn tiny_llama31_llama3_rope_scaling_logits_match_transformers() {
    check_model("tiny-llama31");
}

#[test]
fn tiny_llama_linear_rope_scaling_logits_match_transformers() {
    check_model("tiny-llama-linear");
}

#[test]
fn tiny_llama_dynamic_rope_scaling_logits_match_transformers() {
    check_model("tiny-llama-dynamic");
}

#[test]
fn tiny_llama_yarn_rope_scaling_logits_match_transformers() {
    check_model("tiny-llama-yarn");
}

#[test]
fn tiny_qwen3_tied_logits_match_transformers() {
    check_model("tiny-qwen3");
}

#[test]
fn tiny_qwen3_untied_logits_match_transformers() {
    check_model("tiny-qwen3-untied");
}

/// Each fixture's config parses to what it declares, and the old form
/// (`rope_scaling` + top-level `rope_theta`, as Llama 3.1 checkpoints ship
/// it) parses to the same configuration.
#[test]
fn fixture_configs_parse_in_both_rope_forms() {
    let expect = [
        ("tiny-llama31", Some("llama3"), false, true),
        ("tiny-llama-linear", Some("linear"), false, false),
        ("tiny-llama-dynamic", Some("dynamic"), false, true),
        ("tiny-llama-yarn", Some("yarn"), false, false),
        ("tiny-qwen3", None, true, true),
        ("tiny-qwen3-untied", None, true, false),
    ];
    assert_eq!(expect.len(), SCALED_AND_QWEN3.len());
    for (name, scaling, qk_norm, tied) in expect {
        let fx = fixture(name);
        let c = ModelConfig::from_json(&fx["config"], name).unwrap();
        assert_eq!(c.rope_scaling.as_ref().map(|s| s.name()), scaling, "{name}");
        assert_eq!(c.arch.has_qk_norm(), qk_norm, "{name}");
        assert_eq!(c.tie_word_embeddings, tied, "{name}");
        let mut old = fx["config"].clone();
        let params = old
            .as_object_mut()
            .unwrap()
            .remove("rope_parameters")
            .unwrap();
        old["rope_theta"] = params["rope_theta"].clone();
        old["rope_scaling"] = params;
        assert_eq!(ModelConfig::from_json(&old, name).unwrap(), c, "{name}");
        // What the engine writes back (model export) reads the same again.
        assert_eq!(
            ModelConfig::from_json(&c.to_json(), name).unwrap(),
            c,
            "{name}"
        );
    }
}

/// Decoding token by token through the KV cache gives the logits of one
/// full forward at every position.
#[test]
fn kv_cache_decoding_equals_full_forward() {
    // Not dynamic RoPE: there each decode step has its own frequencies, and
    // its fixture's `decode_*` case checks decoding against transformers.
    let names = ["tiny-qwen2", "tiny-llama"]
        .into_iter()
        .chain(SCALED_AND_QWEN3)
        .filter(|n| *n != "tiny-llama-dynamic");
    for name in names {
        let fx = fixture(name);
        let model = model_for(&fx);
        let ids = u32s(&fx["cases"][2]["rows"][0]["ids"]);
        let mut cache = model.new_cache();
        let full = model.forward(
            &mut [SeqStep {
                tokens: &ids,
                positions: None,
                cache: &mut cache,
            }],
            LogitRows::All,
        );
        let mut cache = model.new_cache();
        // A 3-token prefill, then one token at a time.
        let mut rows = vec![];
        let first = model.forward(
            &mut [SeqStep {
                tokens: &ids[..3],
                positions: None,
                cache: &mut cache,
            }],
            LogitRows::All,
        );
        (0..3).for_each(|r| rows.push(first.row(r).to_vec()));
        for t in 3..ids.len() {
            let step = model.forward(
                &mut [SeqStep {
                    tokens: &ids[t..t + 1],
                    positions: None,
                    cache: &mut cache,
                }],
                LogitRows::Last,
            );
            rows.push(step.row(0).to_vec());
        }
        assert_eq!(cache.len(), ids.len());
        for (p, row) in rows.iter().enumerate() {
            let d = row
                .iter()
                .zip(full.row(p))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            // Same math, different GEMM blocking (m = 1 vs m = n): f32 rounding only.
            assert!(d < TOL, "{name} position {p}: cached decode differs by {d}");
        }
        assert_eq!(Cpu.shape(&full), &[ids.len(), model.config.vocab_size]);
    }
}
