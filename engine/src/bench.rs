//! Throughput measurements of the model forward (what `igpo bench forward`
//! reports and `cargo xtask bench` compares with PyTorch).

use std::time::Instant;

use serde::Serialize;

use crate::backend::Backend;
use crate::model::{LogitRows, Model, SeqStep};
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
    pub train_seq: usize,
    pub train_batch: usize,
    /// forward + backward + AdamW tokens per second (the SFT loss).
    pub train_tokens_per_s: Option<f64>,
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
    let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
    let mut next: Vec<Vec<u32>> = prompts;
    let mut elapsed = 0.0;
    for step in 0..=spec.decode_tokens {
        let t = Instant::now();
        let logits = {
            let mut steps: Vec<SeqStep<'_, B>> = next
                .iter()
                .zip(caches.iter_mut())
                .map(|(tokens, cache)| SeqStep {
                    tokens,
                    positions: None,
                    cache,
                })
                .collect();
            model
                .backend()
                .download(&model.forward(&mut steps, LogitRows::Last))
        };
        next = (0..batch)
            .map(|r| vec![crate::rollout::sampler::argmax(logits.row(r))])
            .collect();
        if step > 0 {
            // step 0 is the prompt prefill
            elapsed += t.elapsed().as_secs_f64();
        }
    }
    elapsed
}

/// One forward + backward + AdamW step of the next-token loss.
fn time_train<B: Backend>(model: &mut Model<B>, opt: &mut AdamW<B>, seqs: &[Vec<u32>]) -> f64 {
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
    sft_micro_batch(model, &refs, 8192, false, &mut grads);
    let backend = model.backend().clone();
    opt.update(&backend, model.params_mut(), &grads, 1e-5, 1);
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
    time_prefill(model, &ids); // warm-up
    let prefill = median((0..repeats).map(|_| time_prefill(model, &ids)).collect());
    let mut decode = std::collections::BTreeMap::new();
    for &b in &spec.batches {
        time_decode(model, b, spec); // warm-up
        let t = median((0..repeats).map(|_| time_decode(model, b, spec)).collect());
        decode.insert(b.to_string(), (b * spec.decode_tokens) as f64 / t);
    }
    let mut train = None;
    if spec.train_batch > 0 {
        let vocab = model.config.vocab_size;
        let seqs: Vec<Vec<u32>> = (0..spec.train_batch)
            .map(|r| bench_ids(spec.train_seq, r * 31, vocab))
            .collect();
        let backend = model.backend().clone();
        let mut opt = AdamW::new(
            &backend,
            OptimConfig::default(),
            model.param_names(),
            model.params(),
        );
        time_train(model, &mut opt, &seqs); // warm-up
        let t = median(
            (0..repeats)
                .map(|_| time_train(model, &mut opt, &seqs))
                .collect(),
        );
        train = Some((spec.train_batch * spec.train_seq) as f64 / t);
    }
    ForwardBenchResult {
        engine: "igpo".into(),
        backend: model.backend().name(),
        prefill_tokens: spec.prefill_tokens,
        prefill_tokens_per_s: spec.prefill_tokens as f64 / prefill,
        decode_tokens: spec.decode_tokens,
        decode_tokens_per_s: decode,
        train_seq: spec.train_seq,
        train_batch: spec.train_batch,
        train_tokens_per_s: train,
    }
}
