//! Ground-truth scoring: after every turn boundary of a trajectory, how
//! likely the policy is to write the reference answer next (teacher forced).
//!
//! A boundary is a point where the policy is about to write a turn: the end
//! of the prompt (boundary 0) and the end of each tool result. For each
//! boundary a *probe* (the probe template with the answer filled in) is
//! appended after the trajectory; the probe's rows see the trajectory up to
//! their boundary and their own earlier tokens only (a block mask), at
//! positions that continue the boundary's. One forward scores every probe of
//! a rollout, so the shared prefix is computed once.

use std::ops::Range;

use crate::backend::{AttnMask, Backend};
use crate::model::{Model, TrainSeq};
use crate::rollout::{SpanKind, Trajectory};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// The reference's probe: the policy's own answer format after a fixed
/// thought. (The reference ends it with the turn's closing token; what
/// follows `{answer}` is never run, so it is left out here.)
pub const DEFAULT_PROBE_TEMPLATE: &str =
    "<think>\nNow there's enough information to answer\n</think>\n<answer>\n{answer}\n</answer>";

/// A probe template split at its `{answer}` placeholder. Only the answer
/// tokens are scored; what follows them cannot change their probabilities
/// (causal attention), so it is not run.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTemplate {
    prefix: String,
}

impl ProbeTemplate {
    /// `template` must contain `{answer}` exactly once.
    pub fn parse(template: &str) -> Result<ProbeTemplate, String> {
        match template.match_indices("{answer}").count() {
            1 => Ok(ProbeTemplate {
                prefix: template[..template.find("{answer}").expect("found")].to_string(),
            }),
            n => Err(format!(
                "probe template must contain `{{answer}}` exactly once (found {n} times)"
            )),
        }
    }

    /// The probe's tokens: prefix and answer encoded together (as the
    /// policy would write them: a byte-level BPE merges the space before a
    /// word into the word's token), split at the first token that covers
    /// any byte of the answer.
    pub fn probe(&self, tok: &Tokenizer, answer: &str) -> Result<Probe, TokenizerError> {
        let text = format!("{}{answer}", self.prefix);
        let at = self.prefix.len();
        let toks = tok.encode_with_offsets(&text)?;
        let split = toks
            .iter()
            .position(|(_, r)| r.end > at)
            .unwrap_or(toks.len());
        Ok(Probe {
            prefix: toks[..split].iter().map(|t| t.0).collect(),
            answer: toks[split..].iter().map(|t| t.0).collect(),
        })
    }
}

/// One probe's tokens: `prefix` then the scored `answer`.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub prefix: Vec<u32>,
    pub answer: Vec<u32>,
}

/// Token positions where the policy is about to write turn `t`, for
/// `t = 0..turns` (the prompt's end, then each tool result's end).
pub fn turn_boundaries(traj: &Trajectory) -> Vec<usize> {
    let mut out: Vec<usize> = traj
        .segments
        .iter()
        .filter(|s| matches!(s.kind, SpanKind::Prompt | SpanKind::ToolResult { .. }))
        .map(|s| s.end)
        .collect();
    out.truncate(traj.turns.len().max(1));
    out
}

/// What to score for one rollout: its tokens, its boundaries, and the
/// probes (one per reference answer used).
pub struct ScoreRequest<'a> {
    pub tokens: &'a [u32],
    pub boundaries: &'a [usize],
    pub probes: &'a [Probe],
}

/// A packed scoring sequence and which of its rows predict answer tokens.
struct Packed {
    ids: Vec<u32>,
    positions: Vec<usize>,
    spans: Vec<Vec<Range<usize>>>,
    /// (row, target) per scored answer token, probe-major then boundary.
    rows: Vec<(usize, u32)>,
}

#[allow(clippy::single_range_in_vec_init)] // one causal key range per row
fn pack(req: &ScoreRequest<'_>) -> Packed {
    let base = req.boundaries.iter().copied().max().unwrap_or(0);
    assert!(
        base <= req.tokens.len() && req.boundaries.iter().all(|&b| b >= 1),
        "scoring: boundaries must lie inside the trajectory"
    );
    let mut p = Packed {
        ids: req.tokens[..base].to_vec(),
        positions: (0..base).collect(),
        spans: (0..base).map(|j| vec![0..j + 1]).collect(),
        rows: vec![],
    };
    for probe in req.probes {
        let seq: Vec<u32> = probe.prefix.iter().chain(&probe.answer).copied().collect();
        let first_scored = probe.prefix.len();
        for &b in req.boundaries {
            let start = p.ids.len();
            // Only the rows up to the last answer token's predictor are needed.
            let len = seq.len() - 1;
            for (i, &id) in seq[..len].iter().enumerate() {
                p.ids.push(id);
                p.positions.push(b + i);
                p.spans.push(vec![0..b, start..start + i + 1]);
            }
            for (i, &target) in seq.iter().enumerate().skip(first_scored) {
                // Token i of the probe is predicted by the row before it: the
                // boundary's last context token for i = 0.
                let row = if i == 0 { b - 1 } else { start + i - 1 };
                p.rows.push((row, target));
            }
        }
    }
    p
}

/// Mean log-probability of each probe's answer tokens after each boundary:
/// `out[r][probe][boundary]` for request `r`. One packed forward per request;
/// all requests share one batched call. No gradient.
pub fn score<B: Backend>(
    model: &Model<B>,
    requests: &[ScoreRequest<'_>],
    chunk: usize,
) -> Vec<Vec<Vec<f64>>> {
    for r in requests {
        assert!(
            r.probes.iter().all(|p| !p.answer.is_empty()),
            "scoring: empty answer probe"
        );
    }
    let packed: Vec<Packed> = requests.iter().map(pack).collect();
    let seqs: Vec<TrainSeq<'_>> = packed
        .iter()
        .map(|p| TrainSeq {
            tokens: &p.ids,
            positions: &p.positions,
            mask: AttnMask::Spans(p.spans.clone()),
        })
        .collect();
    let acts = model.forward_train_with(&seqs, true);
    // Only the rows that predict answer tokens go through the lm-head.
    let b = model.backend();
    let (mut rows, mut targets) = (vec![], vec![]);
    let mut offset = 0;
    for p in &packed {
        for &(row, target) in &p.rows {
            rows.push(offset + row);
            targets.push(target);
        }
        offset += p.ids.len();
    }
    let picked = b.gather_rows(&acts.hidden, &rows);
    let logp = b.download(&model.token_logprobs(&picked, &targets, chunk, false).logp);
    let mut logp = logp.data().iter();
    requests
        .iter()
        .map(|r| {
            r.probes
                .iter()
                .map(|probe| {
                    r.boundaries
                        .iter()
                        .map(|_| {
                            let n = probe.answer.len();
                            logp.by_ref().take(n).map(|&l| l as f64).sum::<f64>() / n as f64
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::model::init::random_weights;
    use crate::model::{Arch, ModelConfig};

    fn toy_model(vocab: usize, seed: u64) -> Model<Cpu> {
        let config = ModelConfig {
            arch: Arch::Qwen2,
            vocab_size: vocab,
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            attention_bias: true,
            bos_token_id: None,
            eos_token_ids: vec![0],
        };
        Model::from_tensors(config.clone(), random_weights(&config, seed), Cpu)
    }

    /// The probe scored the slow way: one causal forward of
    /// `tokens[..b] ++ prefix ++ answer` per boundary.
    fn naive(model: &Model<Cpu>, tokens: &[u32], b: usize, probe: &Probe) -> f64 {
        let mut ids = tokens[..b].to_vec();
        ids.extend(&probe.prefix);
        ids.extend(&probe.answer);
        let pos: Vec<usize> = (0..ids.len()).collect();
        let acts = model.forward_train(&[TrainSeq::causal(&ids, &pos)]);
        let targets: Vec<u32> = ids[1..].iter().copied().chain([0]).collect();
        let logp = Cpu.download(&model.token_logprobs(&acts.hidden, &targets, 7, false).logp);
        let n = probe.answer.len();
        let first = ids.len() - n - 1;
        logp.data()[first..first + n]
            .iter()
            .map(|&l| l as f64)
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn packed_scoring_equals_one_forward_per_prefix() {
        let model = toy_model(50, 3);
        let a: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 50).collect();
        let b: Vec<u32> = (0..23).map(|i| (i * 11 + 5) % 50).collect();
        let probes = vec![
            Probe {
                prefix: vec![9, 4, 4, 17],
                answer: vec![31, 2, 8],
            },
            // An empty prefix: the first answer token is predicted by the
            // boundary's last context token.
            Probe {
                prefix: vec![],
                answer: vec![12],
            },
        ];
        let (ba, bb) = (vec![5, 17, 33], vec![23, 1]);
        let reqs = [
            ScoreRequest {
                tokens: &a,
                boundaries: &ba,
                probes: &probes,
            },
            ScoreRequest {
                tokens: &b,
                boundaries: &bb,
                probes: &probes[..1],
            },
        ];
        let out = score(&model, &reqs, 16);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].len(), out[1].len()), (2, 1));
        for (r, req) in reqs.iter().enumerate() {
            for (k, probe) in req.probes.iter().enumerate() {
                for (t, &bd) in req.boundaries.iter().enumerate() {
                    let want = naive(&model, req.tokens, bd, probe);
                    let got = out[r][k][t];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "request {r} probe {k} boundary {bd}: packed {got} vs naive {want}"
                    );
                    assert!(got <= 0.0 && got.is_finite());
                }
            }
        }
        // The probes differ per boundary: scoring is not constant.
        assert!((out[0][0][0] - out[0][0][2]).abs() > 1e-6);
    }

    #[test]
    fn probe_tokens_are_those_of_the_whole_text() {
        // `cargo xtask data` unpacks it; `cargo xtask test` passes IGPO_DATA.
        let dir = std::env::var_os("IGPO_DATA")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/data")
            });
        let path = dir.join("qwen2.5-tokenizer.json");
        let tok = Tokenizer::from_file(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask data`)", path.display()));
        for (template, answer) in [
            ("<answer> {answer} </answer>", "Paris"),
            (DEFAULT_PROBE_TEMPLATE, "Merritt Island"),
        ] {
            let t = ProbeTemplate::parse(template).unwrap();
            let p = t.probe(&tok, answer).unwrap();
            let whole = tok
                .encode(&template.replace("{answer}", answer)[..t.prefix.len() + answer.len()])
                .unwrap();
            let joined: Vec<u32> = p.prefix.iter().chain(&p.answer).copied().collect();
            assert_eq!(joined, whole, "{template}");
            assert!(!p.answer.is_empty());
            // The answer's tokens decode to the answer (with the space the
            // BPE merged into its first token).
            assert_eq!(tok.decode(&p.answer, false).unwrap().trim(), answer);
        }
        // " Paris" is one token: the space belongs to the answer.
        let p = ProbeTemplate::parse("<answer> {answer}")
            .unwrap()
            .probe(&tok, "Paris")
            .unwrap();
        assert_eq!(p.answer, tok.encode(" Paris").unwrap());
    }

    #[test]
    fn template_needs_one_placeholder() {
        assert!(ProbeTemplate::parse(DEFAULT_PROBE_TEMPLATE).is_ok());
        assert!(ProbeTemplate::parse("<answer></answer>")
            .unwrap_err()
            .contains("exactly once"));
        assert!(ProbeTemplate::parse("{answer} {answer}").is_err());
    }
}
