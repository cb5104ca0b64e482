//! The explicit backward equals PyTorch autograd: every parameter gradient of
//! the tiny Qwen2 (tied, biased), Llama (untied), Llama 3.x with `llama3`,
//! `dynamic` and `yarn` RoPE scaling, and Qwen3 (q/k norms; tied and
//! untied) fixtures for the SFT loss
//! (token-mean next-token cross-entropy, with and without a loss mask).
//! Reference: `tools/reference/hf_grads.py` (float64 autograd), outputs in
//! `tests/fixtures/hf/*-grads.json`.

use crate::common;

use igpo::backend::{Backend, Cpu};
use igpo::model::{init::fixture_weights, Model, ModelConfig, TrainSeq};
use igpo::tensor::Tensor;
use serde_json::Value;

/// Relative error bound asked for by the issue.
const REL: f64 = 1e-3;

fn load(name: &str) -> (Value, Value) {
    let read = |f: String| -> Value {
        let p = common::workspace().join(format!("tests/fixtures/hf/{f}"));
        serde_json::from_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    };
    (
        read(format!("{name}.json")),
        read(format!("{name}-grads.json")),
    )
}

/// Loss and gradients of the fixture's SFT loss counting positions >= t0.
fn our_grads(model: &Model<Cpu>, seqs: &[Vec<u32>], t0: usize) -> (f64, Vec<Tensor>) {
    let positions: Vec<Vec<usize>> = seqs.iter().map(|s| (0..s.len()).collect()).collect();
    let batch: Vec<TrainSeq<'_>> = seqs
        .iter()
        .zip(&positions)
        .map(|(s, p)| TrainSeq::causal(s, p))
        .collect();
    let acts = model.forward_train(&batch);
    // Row r predicts the next token of its sequence; a sequence's last row
    // (and rows before t0) get target 0 and zero weight.
    let (mut targets, mut weight) = (vec![], vec![]);
    for s in seqs {
        for t in 0..s.len() {
            let counted = t + 1 < s.len() && t >= t0;
            targets.push(if t + 1 < s.len() { s[t + 1] } else { 0 });
            weight.push(if counted { 1.0f32 } else { 0.0 });
        }
    }
    let n: f32 = weight.iter().sum();
    let out = model.token_logprobs(&acts.hidden, &targets, 1000, false);
    let loss: f64 = out
        .logp
        .data()
        .iter()
        .zip(&weight)
        .map(|(l, w)| -(*l as f64) * *w as f64)
        .sum::<f64>()
        / n as f64;
    let dlogp = Tensor::from_vec(&[targets.len()], weight.iter().map(|w| -w / n).collect());
    let mut grads = model.zero_grads();
    let d_hidden = model.token_logprobs_backward(
        &acts.hidden,
        &targets,
        &out,
        (&dlogp, None),
        1000,
        &mut grads,
    );
    model.backward(&acts, &d_hidden, &mut grads);
    (loss, grads)
}

/// [`our_grads`] with one training forward per sequence, combined with the
/// token-mean weights: what dynamic RoPE needs to match the reference, which
/// runs each sequence alone (the engine's frequencies follow each call's
/// longest position, so one packed call would rescale the short sequences too).
fn per_sequence_grads(model: &Model<Cpu>, seqs: &[Vec<u32>], t0: usize) -> (f64, Vec<Tensor>) {
    let counted = |s: &Vec<u32>| s.len().saturating_sub(t0 + 1) as f64;
    let total: f64 = seqs.iter().map(counted).sum();
    let mut grads = model.zero_grads();
    let mut loss = 0.0;
    for s in seqs {
        let w = counted(s) / total;
        let (l, g) = our_grads(model, std::slice::from_ref(s), t0);
        loss += w * l;
        for (acc, mut g) in grads.iter_mut().zip(g) {
            Cpu.scale(&mut g, w as f32);
            Cpu.add_assign(acc, &g);
        }
    }
    (loss, grads)
}

fn check(name: &str) {
    let (fx, gx) = load(name);
    let config = ModelConfig::from_json(&fx["config"], "fixture config").unwrap();
    let model = Model::from_tensors(config.clone(), fixture_weights(&config), Cpu);
    let seqs: Vec<Vec<u32>> = gx["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    for variant in gx["variants"].as_array().unwrap() {
        let vname = variant["name"].as_str().unwrap();
        let t0 = variant["first_position"].as_u64().unwrap() as usize;
        let dynamic = config.rope_scaling.as_ref().is_some_and(|r| r.is_dynamic());
        let (loss, grads) = if dynamic {
            per_sequence_grads(&model, &seqs, t0)
        } else {
            our_grads(&model, &seqs, t0)
        };
        let want_loss = variant["loss"].as_f64().unwrap();
        assert!(
            (loss - want_loss).abs() <= REL * want_loss.abs(),
            "{name}/{vname}: loss {loss} vs {want_loss}"
        );
        let mut worst = 0.0f64;
        let reference = variant["grads"].as_object().unwrap();
        assert_eq!(
            reference.len(),
            model.param_names().len(),
            "{name}: parameter count"
        );
        for (pname, g) in model.param_names().iter().zip(&grads) {
            let r = reference
                .get(pname)
                .unwrap_or_else(|| panic!("{name}: no reference gradient for {pname}"));
            let norm = Cpu.sum_squares(g).sqrt();
            let want_norm = r["norm"].as_f64().unwrap();
            let rel = (norm - want_norm).abs() / want_norm.max(1e-30);
            assert!(
                rel < REL,
                "{name}/{vname} {pname}: gradient norm {norm} vs {want_norm} (rel {rel:.2e})"
            );
            worst = worst.max(rel);
            // Sampled elements, relative to the tensor's largest gradient.
            let scale = r["max_abs"].as_f64().unwrap().max(1e-30);
            let pairs = [
                ("indices", "values"),
                ("input_row_indices", "input_row_values"),
            ];
            for (ik, vk) in pairs {
                let (Some(idx), Some(vals)) = (r.get(ik), r.get(vk)) else {
                    continue;
                };
                for (i, v) in idx.as_array().unwrap().iter().zip(vals.as_array().unwrap()) {
                    let i = i.as_u64().unwrap() as usize;
                    let (ours, want) = (g.data()[i] as f64, v.as_f64().unwrap());
                    let err = (ours - want).abs() / scale;
                    assert!(err < REL, "{name}/{vname} {pname}[{i}]: {ours} vs {want} (error {err:.2e} of max |grad|)");
                    worst = worst.max(err);
                }
            }
        }
        eprintln!("{name}/{vname}: loss {loss:.6} (torch {want_loss:.6}); worst relative gradient error {worst:.2e}");
    }
}

#[test]
fn tiny_qwen2_gradients_match_pytorch_autograd() {
    check("tiny-qwen2");
}

#[test]
fn tiny_llama_gradients_match_pytorch_autograd() {
    check("tiny-llama");
}

#[test]
fn tiny_llama31_llama3_rope_scaling_gradients_match_pytorch_autograd() {
    check("tiny-llama31");
}

/// Dynamic NTK: sequences longer than max_position_embeddings (16) are
/// rescaled; the backward must use the same frequencies as the forward.
#[test]
fn tiny_llama_dynamic_rope_scaling_gradients_match_pytorch_autograd() {
    check("tiny-llama-dynamic");
}

/// Yarn: cos/sin times the attention factor, in the backward too.
#[test]
fn tiny_llama_yarn_rope_scaling_gradients_match_pytorch_autograd() {
    check("tiny-llama-yarn");
}

#[test]
fn tiny_qwen3_tied_gradients_match_pytorch_autograd() {
    check("tiny-qwen3");
}

#[test]
fn tiny_qwen3_untied_gradients_match_pytorch_autograd() {
    check("tiny-qwen3-untied");
}

/// Recomputing each layer's activations in the backward gives the same
/// gradients, bit for bit.
#[test]
fn activation_recomputation_gives_identical_gradients() {
    let (fx, gx) = load("tiny-llama");
    let config = ModelConfig::from_json(&fx["config"], "fixture config").unwrap();
    let model = Model::from_tensors(config.clone(), fixture_weights(&config), Cpu);
    let seq: Vec<u32> = gx["sequences"][3]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let pos: Vec<usize> = (0..seq.len()).collect();
    let grads = |recompute: bool| {
        let acts = model.forward_train_with(&[TrainSeq::causal(&seq, &pos)], recompute);
        let targets: Vec<u32> = seq.iter().skip(1).chain([&0]).cloned().collect();
        let out = model.token_logprobs(&acts.hidden, &targets, 4096, false);
        let dlogp = Tensor::from_vec(&[seq.len()], vec![-1.0; seq.len()]);
        let mut g = model.zero_grads();
        let dh = model.token_logprobs_backward(
            &acts.hidden,
            &targets,
            &out,
            (&dlogp, None),
            4096,
            &mut g,
        );
        model.backward(&acts, &dh, &mut g);
        g
    };
    assert_eq!(grads(false), grads(true));
}
