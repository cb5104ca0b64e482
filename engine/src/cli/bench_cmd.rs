//! `igpo bench forward | agent | attention | score | retrieval | machine`: measurements of
//! `crate::bench`, printed as JSON (and written to `--out`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use super::{open_device, CliResult, Device};
use crate::bench;
use crate::plugins::{PluginHost, PluginSpec, ToolPool};
use crate::tokenizer::Tokenizer;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode tokens/s of a model's forward pass.
    Forward(ForwardArgs),
    /// The agent loop under load: concurrent rollouts that each call a tool
    /// once (the first turn is forced to be the call, so random weights
    /// do): generated tokens/s, the share of time spent waiting on tools,
    /// prompt tokens prefilled.
    Agent(AgentArgs),
    /// Causal attention alone (training forward, backward) on one sequence:
    /// seconds and TFLOP/s.
    Attention(AttentionArgs),
    /// Time and peak memory of the fused lm-head log-prob of chosen tokens
    /// (forward, and forward + backward) on random inputs of a given shape.
    Score(ScoreArgs),
    /// BM25 at corpus scale: a synthetic corpus from a seed, its on-disk
    /// index (build time, peak memory, size), query latency through the
    /// bm25-search plugin (one instance and a pool) and its smallest memory cap.
    Retrieval(RetrievalArgs),
    /// This CPU's measured limits: the f32 GEMM peak (GFLOP/s, every
    /// thread) and memory read and copy bandwidth (GB/s), what the model
    /// benchmarks are compared with.
    Machine(MachineArgs),
}

#[derive(clap::Args)]
pub struct MachineArgs {
    /// m = n = k of the timed GEMM.
    #[arg(long, default_value_t = 2048)]
    gemm_size: usize,
    /// MiB read and copied (far above the caches).
    #[arg(long, default_value_t = 1024)]
    buffer_mib: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ForwardArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    #[arg(long, default_value_t = 16)]
    decode_prompt_tokens: usize,
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Comma-separated decode batch sizes.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Training step (forward + backward + AdamW): tokens per sequence.
    #[arg(long, default_value_t = 512)]
    train_seq: usize,
    /// Training step: sequences; 0 skips the training measurement.
    #[arg(long, default_value_t = 1)]
    train_batch: usize,
    /// Training step: sequences per forward + backward, gradients
    /// accumulated over the step's micro-batches (0: all at once).
    #[arg(long, default_value_t = 0)]
    train_micro_batch: usize,
    /// Write the result as JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    #[arg(long)]
    model: PathBuf,
    /// The tool plugin (.wasm); an instant one (echo) measures the engine.
    #[arg(long)]
    tool: PathBuf,
    /// The tool's config (JSON).
    #[arg(long, default_value = "{}")]
    tool_config: String,
    #[arg(long, default_value_t = 256)]
    rollouts: usize,
    /// Rollouts per question (the G of a training group).
    #[arg(long, default_value_t = 16)]
    group_size: usize,
    /// Sampled tokens of the turn after the tool result.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Every rollout prefills its own prompt.
    #[arg(long)]
    no_prefix_sharing: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the result as JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(clap::Args)]
pub struct AttentionArgs {
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    /// Query heads (12: Qwen2.5-1.5B).
    #[arg(long, default_value_t = 12)]
    heads: usize,
    /// Key/value heads (2: Qwen2.5-1.5B).
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// 64 or 128 on the GPU.
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Write the result as JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// Token rows scored at once.
    #[arg(long, default_value_t = 4096)]
    tokens: usize,
    /// Hidden size (896: Qwen2.5-0.5B, 1536: 1.5B).
    #[arg(long, default_value_t = 896)]
    hidden: usize,
    /// Vocabulary size (Qwen2.5: 151936).
    #[arg(long, default_value_t = 151936)]
    vocab: usize,
    /// Vocabulary rows per lm-head chunk.
    #[arg(long, default_value_t = 8192)]
    chunk: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Write the result as JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run(cmd: BenchCommand) -> CliResult {
    // `--out` is written after the measurement: find out now that it can be.
    let out = match &cmd {
        BenchCommand::Forward(a) => &a.out,
        BenchCommand::Agent(a) => &a.out,
        BenchCommand::Attention(a) => &a.out,
        BenchCommand::Score(a) => &a.out,
        BenchCommand::Retrieval(a) => &a.out,
        BenchCommand::Machine(a) => &a.out,
    };
    if let Some(path) = out {
        crate::fsutil::check_writable(path)?;
    }
    let (json, out) = match cmd {
        BenchCommand::Forward(a) => (forward(&a)?, a.out),
        BenchCommand::Agent(a) => (agent(&a)?, a.out),
        BenchCommand::Attention(a) => (attention(&a)?, a.out),
        BenchCommand::Score(a) => (score(&a)?, a.out),
        BenchCommand::Retrieval(a) => (retrieval(&a)?, a.out.clone()),
        BenchCommand::Machine(a) => {
            if a.gemm_size == 0 || a.buffer_mib == 0 || a.repeats == 0 {
                return Err(
                    "bench machine: --gemm-size, --buffer-mib and --repeats must be positive"
                        .into(),
                );
            }
            let r = bench::machine::machine_bench(a.gemm_size, a.buffer_mib, a.repeats);
            (serde_json::to_string_pretty(&r)?, a.out)
        }
    };
    println!("{json}");
    if let Some(path) = out {
        crate::fsutil::write_atomic(&path, json.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

type Json = Result<String, Box<dyn std::error::Error>>;

#[derive(clap::Args)]
pub struct RetrievalArgs {
    /// Passages of the synthetic corpus.
    #[arg(long, default_value_t = 2_000_000)]
    passages: usize,
    #[arg(long, default_value_t = 100)]
    words_per_passage: usize,
    /// Distinct words (Zipf-distributed).
    #[arg(long, default_value_t = 200_000)]
    vocabulary: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the corpus and its index (reused when already there).
    #[arg(long)]
    work: PathBuf,
    /// Folder with bm25-search.wasm (`cargo xtask plugins`).
    #[arg(long)]
    plugins: PathBuf,
    /// `igpo data index --memory-mib`.
    #[arg(long, default_value_t = 512)]
    memory_mib: usize,
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Seconds per latency measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn retrieval(a: &RetrievalArgs) -> Json {
    let spec = bench::retrieval::RetrievalBenchSpec {
        passages: a.passages,
        words_per_passage: a.words_per_passage,
        vocabulary: a.vocabulary,
        seed: a.seed,
        work: a.work.clone(),
        memory_mib: a.memory_mib,
        plugins: a.plugins.clone(),
        queries: a.queries,
        duration: std::time::Duration::from_secs_f64(a.seconds),
    };
    let r = bench::retrieval::retrieval_bench(&PluginHost::default(), &spec)?;
    Ok(serde_json::to_string_pretty(&r)?)
}

fn forward(a: &ForwardArgs) -> Json {
    let backend = open_device(&a.device)?;
    let spec = bench::ForwardBenchSpec {
        prefill_tokens: a.prefill_tokens,
        decode_prompt_tokens: a.decode_prompt_tokens,
        decode_tokens: a.decode_tokens,
        batches: a.batches.clone(),
        repeats: a.repeats,
        train_seq: a.train_seq,
        train_batch: a.train_batch,
        train_micro_batch: a.train_micro_batch,
    };
    // IGPO_PROFILE=1: the same measurements on a backend that times every
    // op, plus one profiled run of each, printed per phase.
    let result = if crate::backend::profile::requested() {
        crate::with_backend!(backend, b => {
            let b = crate::backend::profile::Profiled::new(b);
            let mut model = crate::model::load(&a.model, b)?;
            bench::forward_bench(&mut model, &spec)
        })
    } else {
        crate::with_backend!(backend, b => {
            let mut model = crate::model::load(&a.model, b)?;
            bench::forward_bench(&mut model, &spec)
        })
    };
    for (label, run) in &result.profile {
        eprint!("{}", run.format(label));
    }
    Ok(serde_json::to_string_pretty(&result)?)
}

fn agent(a: &AgentArgs) -> Json {
    if a.rollouts == 0 || a.group_size == 0 {
        return Err("bench agent: --rollouts and --group-size must be positive".into());
    }
    let config: serde_json::Value = serde_json::from_str(&a.tool_config)
        .map_err(|e| format!("bench agent: --tool-config is not JSON: {e}"))?;
    let backend = open_device(&a.device)?;
    let host = PluginHost::default();
    let pool = Arc::new(ToolPool::load(
        &host,
        &[PluginSpec::new(&a.tool).config(config)],
    )?);
    let tok = Tokenizer::load_dir(&a.model)?;
    let spec = bench::agent::AgentBenchSpec {
        rollouts: a.rollouts,
        group_size: a.group_size,
        max_new_tokens_per_turn: a.max_new_tokens,
        share_prompt_prefixes: !a.no_prefix_sharing,
        seed: a.seed,
    };
    let result = crate::with_backend!(backend, b => {
        let model = crate::model::load(&a.model, b)?;
        bench::agent::agent_bench(&model, &tok, pool, &spec)?
    });
    Ok(serde_json::to_string_pretty(&result)?)
}

fn attention(a: &AttentionArgs) -> Json {
    if a.seq == 0
        || a.kv_heads == 0
        || !a.heads.is_multiple_of(a.kv_heads)
        || !a.head_dim.is_multiple_of(2)
    {
        return Err("bench attention: --seq and --kv-heads must be positive, --kv-heads must divide --heads, --head-dim must be even".into());
    }
    let backend = open_device(&a.device)?;
    let spec = bench::AttentionBenchSpec {
        seq: a.seq,
        heads: a.heads,
        kv_heads: a.kv_heads,
        head_dim: a.head_dim,
        repeats: a.repeats,
    };
    let result = crate::with_backend!(backend, b => bench::attention_bench(&b, &spec));
    Ok(serde_json::to_string_pretty(&result)?)
}

fn score(a: &ScoreArgs) -> Json {
    if a.tokens == 0 || a.hidden == 0 || a.vocab == 0 || a.chunk == 0 {
        return Err("bench score: --tokens, --hidden, --vocab and --chunk must be positive".into());
    }
    let backend = open_device(&a.device)?;
    let spec = bench::ScoreBenchSpec {
        tokens: a.tokens,
        hidden: a.hidden,
        vocab: a.vocab,
        chunk: a.chunk,
        repeats: a.repeats,
    };
    let result = crate::with_backend!(backend, b => bench::score_bench(&b, &spec));
    Ok(serde_json::to_string_pretty(&result)?)
}
