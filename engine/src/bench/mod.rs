//! Throughput measurements (what `igpo bench forward` and `igpo bench score`
//! report and `cargo xtask bench` compares with PyTorch): prefill, decode and
//! a training step of a model, and the fused lm-head log-prob of chosen
//! tokens; the agent loop under load (`igpo bench agent`, [`agent`]); calls
//! through the plugin host (`igpo plugin bench`, [`plugins`]). GPU work is
//! asynchronous: every timing ends with [`Backend::synchronize`] or a
//! download.

pub mod agent;
pub mod machine;
pub mod plugins;
pub mod retrieval;

use std::time::Instant;

use serde::Serialize;

use crate::backend::profile::{format_profile, Profile};
use crate::backend::Backend;
use crate::model::{LogitRows, Model, ModelConfig, PagedStep, SeqStep};
use crate::tensor::Tensor;
use crate::train::optim::{AdamW, OptimConfig};
use crate::train::sft::sft_micro_batch;
use crate::train::sft_data::SftExample;

/// What to measure.
#[derive(Clone, Debug)]
pub struct ForwardBenchSpec {
    pub prefill_tokens: usize,
    pub decode_prompt_tokens: usize,
    pub decode_tokens: usize,
    pub batches: Vec<usize>,
    pub repeats: usize,
    /// Training step: tokens per sequence and sequences (0 skips training).
    pub train_seq: usize,
    pub train_batch: usize,
    /// Sequences per forward + backward; a step of `train_batch` sequences
    /// accumulates the gradients of its micro-batches before one AdamW update
    /// (0: the whole batch at once).
    pub train_micro_batch: usize,
}

/// Tokens per second, median over repeats after one warm-up.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardBenchResult {
    pub engine: String,
    pub backend: String,
    pub prefill_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens: usize,
    /// Batch size -> decode tokens per second (all rows together).
    pub decode_tokens_per_s: std::collections::BTreeMap<String, f64>,
    /// Batch size -> bytes a decode step must read at least: every weight
    /// once and each row's cached keys and values (at the mean context of
    /// the timed steps).
    pub decode_bytes_per_step: std::collections::BTreeMap<String, f64>,
    /// Batch size -> those bytes over the measured step time, GB/s: divided
    /// by the device's peak bandwidth, how near decode is to its limit.
    pub decode_read_gb_per_s: std::collections::BTreeMap<String, f64>,
    pub train_seq: usize,
    pub train_batch: usize,
    pub train_micro_batch: usize,
    /// forward + backward + AdamW tokens per second (the SFT loss).
    pub train_tokens_per_s: Option<f64>,
    /// Parameters of the model (embedding included).
    pub parameters: u64,
    /// [`train_flops_per_token`] at `train_seq`: achieved FLOP/s is this
    /// times `train_tokens_per_s`, MFU that over the device's peak.
    pub train_flops_per_token: f64,
    /// [`forward_flops_per_token`] at `prefill_tokens`.
    pub prefill_flops_per_token: f64,
    /// `IGPO_PROFILE=1`: one more run of each measurement (prefill, decode at
    /// each batch, train) with its op times per phase; empty otherwise.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub profile: std::collections::BTreeMap<String, ProfiledRun>,
}

/// One profiled run: its wall time, its ops' time per phase and its host reads.
#[derive(Clone, Debug, Serialize)]
pub struct ProfiledRun {
    pub wall_seconds: f64,
    #[serde(flatten)]
    pub profile: Profile,
}

impl ProfiledRun {
    /// The table `igpo bench forward` prints.
    pub fn format(&self, label: &str) -> String {
        format_profile(label, &self.profile, self.wall_seconds)
    }
}

/// Runs `run` once more when the backend profiles, and keeps its phases.
fn profile_once<B: Backend>(
    backend: &B,
    label: String,
    profile: &mut std::collections::BTreeMap<String, ProfiledRun>,
    run: impl FnOnce() -> f64,
) {
    if backend.take_profile().is_none() {
        return;
    }
    let wall_seconds = run();
    if let Some(p) = backend.take_profile() {
        profile.insert(
            label,
            ProfiledRun {
                wall_seconds,
                profile: p,
            },
        );
    }
}

/// FLOPs of one training step (forward + backward) per token, PaLM's
/// convention (Chowdhery et al. 2022, appendix B): 6 per weight that every
/// token multiplies (every linear layer and the lm head; the embedding lookup
/// is no matmul) plus 12 x layers x attention width x sequence for the
/// attention scores and their weighted sum (causal masking not discounted).
/// PyTorch's side of the benchmark is divided by the same number.
pub fn train_flops_per_token(c: &ModelConfig, seq: usize) -> f64 {
    3.0 * forward_flops_per_token(c, seq) + 6.0 * (c.vocab_size * c.hidden_size) as f64
}

/// FLOPs per token of a forward pass over `seq` tokens without the lm head
/// (a prefill that wants the logits of its last token only): a third of
/// [`train_flops_per_token`] less the lm head.
pub fn forward_flops_per_token(c: &ModelConfig, seq: usize) -> f64 {
    let d = c.hidden_size as f64;
    let q = (c.num_heads * c.head_dim) as f64;
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    let layer = d * q + 2.0 * d * kv + q * d + 3.0 * d * c.intermediate_size as f64;
    2.0 * c.num_layers as f64 * layer + 4.0 * c.num_layers as f64 * q * seq as f64
}

/// The least a decode step of `batch` rows reads: every weight at the bytes
/// the backend streams it in ([`Backend::weight_read_bytes`]; an untied
/// embedding table not counted: a lookup reads only its rows; a tied one is
/// read whole as the lm head) and the keys and values of each row's
/// context, taken at the mean over the timed steps.
fn decode_bytes_per_step<B: Backend>(
    model: &Model<B>,
    batch: usize,
    spec: &ForwardBenchSpec,
) -> f64 {
    let c = &model.config;
    let elem = model.backend().stored_elem_bytes() as f64;
    let kv_per_pos = (2 * c.num_layers * c.num_kv_heads * c.head_dim) as f64 * elem;
    let mean_ctx = spec.decode_prompt_tokens as f64 + (spec.decode_tokens as f64 + 1.0) / 2.0;
    let b = model.backend();
    let weights: usize = model
        .param_names()
        .iter()
        .zip(model.params())
        .filter(|(name, _)| c.tie_word_embeddings || name.as_str() != "model.embed_tokens.weight")
        .map(|(_, w)| b.weight_read_bytes(w))
        .sum();
    weights as f64 + batch as f64 * mean_ctx * kv_per_pos
}

/// Median of `repeats` runs of `run` (each returns its seconds) after one
/// warm-up run.
fn warm_median(repeats: usize, mut run: impl FnMut() -> f64) -> f64 {
    run();
    median((0..repeats.max(1)).map(|_| run()).collect())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Deterministic token ids that cover the vocabulary (same rule as
/// `tools/bench_torch.py`: `(i * 7919) % vocab`).
fn bench_ids(n: usize, offset: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (((i + offset) * 7919) % vocab) as u32)
        .collect()
}

fn time_prefill<B: Backend>(model: &Model<B>, ids: &[u32]) -> f64 {
    let mut cache = model.new_cache();
    let t = Instant::now();
    let logits = model.forward(
        &mut [SeqStep {
            tokens: ids,
            positions: None,
            cache: &mut cache,
        }],
        LogitRows::Last,
    );
    let _ = model.backend().download(&logits);
    t.elapsed().as_secs_f64()
}

/// Greedy decode of `steps` tokens for `batch` rows; times the decode steps only.
fn time_decode<B: Backend>(model: &Model<B>, batch: usize, spec: &ForwardBenchSpec) -> f64 {
    let vocab = model.config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|r| bench_ids(spec.decode_prompt_tokens, r * 31, vocab))
        .collect();
    // The paged cache generation and the agent decode with.
    let bs = crate::kv::KvConfig::default().block_size;
    let mut kv = model.new_kv(crate::kv::KvConfig {
        initial_blocks: batch * (spec.decode_prompt_tokens + spec.decode_tokens + 1).div_ceil(bs),
        ..Default::default()
    });
    let seqs: Vec<_> = (0..batch).map(|_| kv.new_seq()).collect();
    let mut next: Vec<Vec<u32>> = prompts;
    let mut elapsed = 0.0;
    for step in 0..=spec.decode_tokens {
        let t = Instant::now();
        let logits = {
            let steps: Vec<PagedStep<'_>> = next
                .iter()
                .zip(&seqs)
                .map(|(tokens, &seq)| PagedStep { tokens, seq })
                .collect();
            model
                .forward_paged(&mut kv, &steps, LogitRows::Last)
                .expect("the KV cache grows without limit")
        };
        // Greedy, on the device (as `rollout::generate` samples).
        next = model
            .backend()
            .sample_rows(&logits, &Default::default(), &vec![0.0; batch])
            .into_iter()
            .map(|s| vec![s.id])
            .collect();
        if step > 0 {
            elapsed += t.elapsed().as_secs_f64();
        } else {
            // Step 0 is the prompt prefill: neither timed nor profiled.
            let _ = model.backend().take_profile();
        }
    }
    elapsed
}

/// One optimizer step of the next-token loss: forward + backward of each
/// micro-batch of `micro` sequences (gradients accumulated), then AdamW.
fn time_train<B: Backend>(
    model: &mut Model<B>,
    opt: &mut AdamW<B>,
    seqs: &[Vec<u32>],
    micro: usize,
) -> f64 {
    let t = Instant::now();
    let examples: Vec<SftExample> = seqs
        .iter()
        .map(|s| SftExample {
            tokens: s.clone(),
            loss_mask: vec![1; s.len()],
        })
        .collect();
    let refs: Vec<&SftExample> = examples.iter().collect();
    let mut grads = model.zero_grads();
    for part in refs.chunks(micro.max(1)) {
        sft_micro_batch(model, part, 8192, false, &mut grads);
    }
    let backend = model.backend().clone();
    opt.update(&backend, model.params_mut(), &grads, 1e-5, 1);
    backend.synchronize();
    t.elapsed().as_secs_f64()
}

/// Runs the prefill, decode and (optionally) training measurements.
/// Training changes the weights: it runs last.
pub fn forward_bench<B: Backend>(
    model: &mut Model<B>,
    spec: &ForwardBenchSpec,
) -> ForwardBenchResult {
    let repeats = spec.repeats.max(1);
    let ids = bench_ids(spec.prefill_tokens, 0, model.config.vocab_size);
    let backend = model.backend().clone();
    let mut profile = std::collections::BTreeMap::new();
    let prefill = warm_median(repeats, || time_prefill(model, &ids));
    profile_once(&backend, "prefill".into(), &mut profile, || {
        time_prefill(model, &ids)
    });
    let mut decode = std::collections::BTreeMap::new();
    let (mut step_bytes, mut read_gbs) = (decode.clone(), decode.clone());
    for &b in &spec.batches {
        let t = warm_median(repeats, || time_decode(model, b, spec));
        decode.insert(b.to_string(), (b * spec.decode_tokens) as f64 / t);
        let bytes = decode_bytes_per_step(model, b, spec);
        step_bytes.insert(b.to_string(), bytes);
        read_gbs.insert(b.to_string(), bytes * spec.decode_tokens as f64 / t / 1e9);
        profile_once(&backend, format!("decode batch {b}"), &mut profile, || {
            time_decode(model, b, spec)
        });
    }
    let micro = match spec.train_micro_batch {
        0 => spec.train_batch,
        m => m.min(spec.train_batch),
    };
    let mut train = None;
    if spec.train_batch > 0 {
        let vocab = model.config.vocab_size;
        let seqs: Vec<Vec<u32>> = (0..spec.train_batch)
            .map(|r| bench_ids(spec.train_seq, r * 31, vocab))
            .collect();
        let mut opt = AdamW::new(
            &backend,
            OptimConfig::default(),
            model.param_names(),
            model.params(),
        );
        let t = warm_median(repeats, || time_train(model, &mut opt, &seqs, micro));
        train = Some((spec.train_batch * spec.train_seq) as f64 / t);
        profile_once(&backend, "train".into(), &mut profile, || {
            time_train(model, &mut opt, &seqs, micro)
        });
    }
    ForwardBenchResult {
        engine: "igpo".into(),
        backend: model.backend().name(),
        prefill_tokens: spec.prefill_tokens,
        prefill_tokens_per_s: spec.prefill_tokens as f64 / prefill,
        decode_tokens: spec.decode_tokens,
        decode_tokens_per_s: decode,
        decode_bytes_per_step: step_bytes,
        decode_read_gb_per_s: read_gbs,
        train_seq: spec.train_seq,
        train_batch: spec.train_batch,
        train_micro_batch: micro,
        train_tokens_per_s: train,
        parameters: model.config.num_parameters(),
        train_flops_per_token: train_flops_per_token(&model.config, spec.train_seq),
        prefill_flops_per_token: forward_flops_per_token(&model.config, spec.prefill_tokens),
        profile,
    }
}

/// The fused scoring op alone: `token_logprobs` of `tokens` rows of hidden
/// states against a `[vocab, hidden]` lm head.
#[derive(Clone, Debug)]
pub struct ScoreBenchSpec {
    pub tokens: usize,
    pub hidden: usize,
    pub vocab: usize,
    /// Vocabulary rows per lm-head chunk (the engine's default is 8192).
    pub chunk: usize,
    pub repeats: usize,
}

/// Median seconds after one warm-up; peak bytes the op held above what was
/// in use before it (inputs excluded, outputs and gradients included).
#[derive(Clone, Debug, Serialize)]
pub struct ScoreBenchResult {
    pub engine: String,
    pub backend: String,
    pub tokens: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub chunk: usize,
    /// Log-probs of the chosen tokens (no entropy): the scoring pass.
    pub forward_seconds: f64,
    pub forward_peak_bytes: Option<u64>,
    /// The same, then the backward into the hidden states and an f32 lm-head
    /// gradient (allocated inside the measurement): the training pass.
    pub forward_backward_seconds: f64,
    pub forward_backward_peak_bytes: Option<u64>,
    /// What the `[tokens, vocab]` logits alone take in f32: the unfused op
    /// holds at least this.
    pub full_logits_f32_bytes: u64,
}

/// Deterministic values of about unit size (hidden states after the final
/// norm) scaled by `scale`: the op's cost does not depend on them.
fn bench_values(n: usize, salt: u64, scale: f32) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(salt);
    (0..n)
        .map(|_| scale * (2.0 * rng.uniform() as f32 - 1.0) * 1.7)
        .collect()
}

/// Times [`Backend::token_logprobs`] and its backward and measures their
/// peak memory.
pub fn score_bench<B: Backend>(b: &B, spec: &ScoreBenchSpec) -> ScoreBenchResult {
    let (t, d, v) = (spec.tokens, spec.hidden, spec.vocab);
    let h = b.upload(&Tensor::from_vec(&[t, d], bench_values(t * d, 1, 1.0)));
    let w = b.upload(&Tensor::from_vec(&[v, d], bench_values(v * d, 2, 0.02)));
    let targets = bench_ids(t, 0, v);
    let dlogp = b.upload(&Tensor::from_vec(&[t], vec![1.0; t]));
    let forward = || {
        let out = b.token_logprobs(&h, &w, &targets, spec.chunk, false);
        b.synchronize();
        out
    };
    let forward_backward = || {
        let out = b.token_logprobs(&h, &w, &targets, spec.chunk, false);
        let mut dw = b.zeros(&[v, d]);
        let dh = b.token_logprobs_backward(
            (&h, &w),
            &targets,
            &out,
            (&dlogp, None),
            spec.chunk,
            &mut dw,
        );
        b.synchronize();
        (dh, dw)
    };
    // Time one closure; then measure its peak once more, alone.
    let measure = |f: &dyn Fn()| -> (f64, Option<u64>) {
        let secs = warm_median(spec.repeats, || {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        });
        b.synchronize();
        b.reset_peak_memory();
        let before = b.memory_usage();
        f();
        let peak = b
            .memory_usage()
            .zip(before)
            .map(|(after, before)| after.peak.saturating_sub(before.in_use));
        (secs, peak)
    };
    let (forward_seconds, forward_peak_bytes) = measure(&|| drop(forward()));
    let (forward_backward_seconds, forward_backward_peak_bytes) =
        measure(&|| drop(forward_backward()));
    ScoreBenchResult {
        engine: "igpo".into(),
        backend: b.name(),
        tokens: t,
        hidden: d,
        vocab: v,
        chunk: spec.chunk,
        forward_seconds,
        forward_peak_bytes,
        forward_backward_seconds,
        forward_backward_peak_bytes,
        full_logits_f32_bytes: (t * v * 4) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn flops_per_token_of_a_known_shape() {
        // Qwen2.5-0.5B: 24 layers, d 896, 14 heads x 64, 2 kv heads, ffn 4864,
        // vocab 151936. Matmul weights: 24 x (896*896*2 + 2*896*128 + 3*896*4864)
        // + 151936*896 = 493,961,216; attention 12*24*896*2048.
        let c = crate::model::init::preset("qwen2.5-0.5b").unwrap();
        let f = train_flops_per_token(&c, 2048);
        let want = 6.0 * 493_961_216.0 + 12.0 * 24.0 * 896.0 * 2048.0;
        assert!((f - want).abs() < 1.0, "{f} vs {want}");
        let fwd = forward_flops_per_token(&c, 2048);
        let want = 2.0 * (493_961_216.0 - 151_936.0 * 896.0) + 4.0 * 24.0 * 896.0 * 2048.0;
        assert!((fwd - want).abs() < 1.0, "{fwd} vs {want}");
    }

    #[test]
    fn score_bench_runs_and_counts_the_logits_it_never_holds() {
        let spec = ScoreBenchSpec {
            tokens: 64,
            hidden: 32,
            vocab: 5000,
            chunk: 1024,
            repeats: 1,
        };
        let r = score_bench(&Cpu, &spec);
        assert!(r.forward_seconds > 0.0 && r.forward_backward_seconds > 0.0);
        assert_eq!(r.full_logits_f32_bytes, 64 * 5000 * 4);
        assert!(r.backend.starts_with("cpu"));
    }
}

/// The attention op alone, causal, one sequence: what `igpo bench attention`
/// measures beside PyTorch's SDPA (`tools/bench_torch.py attention`).
#[derive(Clone, Debug)]
pub struct AttentionBenchSpec {
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub repeats: usize,
}

/// Median seconds after one warm-up, and TFLOP/s by FlashAttention's count.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionBenchResult {
    pub engine: String,
    pub backend: String,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// [`Backend::attention_train`] (output and log-sum-exp).
    pub forward_seconds: f64,
    /// [`Backend::attention_backward`] alone.
    pub backward_seconds: f64,
    pub forward_tflops: f64,
    pub backward_tflops: f64,
}

/// FLOPs of causal attention's forward over one sequence, as the
/// FlashAttention papers count them: `4 seq^2 d heads` (QK^T and PV), halved
/// by the causal mask; the backward is 2.5 times that (five matmuls to two).
/// `tools/bench_torch.py attention` uses the same numbers.
pub fn causal_attention_flops(seq: usize, heads: usize, head_dim: usize) -> (f64, f64) {
    let forward = 4.0 * (seq * seq) as f64 * (head_dim * heads) as f64 / 2.0;
    (forward, 2.5 * forward)
}

/// Times the training forward and the backward of causal attention on
/// deterministic inputs (`q[seq, heads*d]`, `k, v[seq, kv_heads*d]`).
pub fn attention_bench<B: Backend>(b: &B, spec: &AttentionBenchSpec) -> AttentionBenchResult {
    let (s, d) = (spec.seq, spec.head_dim);
    let shape = crate::backend::AttnShape {
        n_heads: spec.heads,
        n_kv_heads: spec.kv_heads,
        head_dim: d,
    };
    let input = |cols: usize, salt: u64| {
        b.upload(&Tensor::from_vec(
            &[s, cols],
            bench_values(s * cols, salt, 1.0),
        ))
    };
    let (q, k, v) = (
        input(spec.heads * d, 1),
        input(spec.kv_heads * d, 2),
        input(spec.kv_heads * d, 3),
    );
    let dout = input(spec.heads * d, 4);
    let mask = crate::backend::AttnMask::Causal { offset: 0 };
    let forward = warm_median(spec.repeats, || {
        b.synchronize();
        let t = Instant::now();
        let _ = b.attention_train(&q, &k, &v, shape, &mask);
        b.synchronize();
        t.elapsed().as_secs_f64()
    });
    let (out, lse) = b.attention_train(&q, &k, &v, shape, &mask);
    let backward = warm_median(spec.repeats, || {
        b.synchronize();
        let t = Instant::now();
        let _ = b.attention_backward((&q, &k, &v), (&out, &lse), &dout, shape, &mask);
        b.synchronize();
        t.elapsed().as_secs_f64()
    });
    let (ff, bf) = causal_attention_flops(s, spec.heads, d);
    AttentionBenchResult {
        engine: "igpo".into(),
        backend: b.name(),
        seq: s,
        heads: spec.heads,
        kv_heads: spec.kv_heads,
        head_dim: d,
        forward_seconds: forward,
        backward_seconds: backward,
        forward_tflops: ff / forward / 1e12,
        backward_tflops: bf / backward / 1e12,
    }
}
