//! The `igpo` command line: parses arguments and calls the library. Nothing
//! here computes; every error reaches the user as one line and exit code 1.
//! Logs are `tracing` events on stderr (`logging.rs`: `-q`, `-v`, `RUST_LOG`);
//! results go to stdout.

mod agent_cmd;
mod logging;
mod model_cmd;
mod plugin_cmd;
mod train_cmd;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

use crate::backend::{AnyBackend, Backend, Device};
use crate::rollout::{generate, GenerateOptions, SamplingParams};
use crate::tokenizer::{Message, StreamDecoder, Tokenizer};

type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "igpo",
    version,
    about = "IGPO Engine: RL for multi-turn LLM agents"
)]
struct Cli {
    /// Log warnings and errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log more: -v debug (with level and target), -vv trace. `RUST_LOG`,
    /// when set, overrides both flags.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream a reply from a model to one prompt (ChatML).
    Generate(GenerateArgs),
    /// Create, convert and describe model folders.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Run the agent over a dataset and write its trajectories (JSONL).
    Rollout(agent_cmd::RolloutArgs),
    /// Run the agent over a dataset and report EM / F1, turns, tool calls.
    Eval(agent_cmd::EvalArgs),
    /// Supervised fine-tuning on JSONL chat transcripts.
    Sft(train_cmd::SftArgs),
    /// Train an agent with IGPO or a baseline estimator (`[rl] estimator`).
    Train(train_cmd::TrainArgs),
    /// Print the `igpo train` run file reference.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write an HTML report comparing run folders of `igpo train`.
    Report(train_cmd::ReportArgs),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check, describe and call plugin components (.wasm).
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCommand),
    /// Convert data for plugins (e.g. the search corpus).
    #[command(subcommand)]
    Data(plugin_cmd::DataCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// A commented `igpo train` run file with every key at its default.
    Default,
    /// The run file reference as Markdown (docs/config.md).
    Doc,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill and decode tokens/s of a model's forward pass.
    Forward {
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
    },
    /// The agent loop under load: concurrent rollouts that each call a tool
    /// once (the first turn is forced to be the call, so random weights
    /// do): generated tokens/s, the share of time spent waiting on tools,
    /// prompt tokens prefilled.
    Agent {
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
    },
    /// Causal attention alone (training forward, backward) on one sequence:
    /// seconds and TFLOP/s.
    Attention {
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
    },
    /// Time and peak memory of the fused lm-head log-prob of chosen tokens
    /// (forward, and forward + backward) on random inputs of a given shape.
    Score {
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
    },
}

/// Opens the backend `--device` names, before any other work (plugins,
/// models). Without a GPU, `cuda:N` is one line naming the device.
pub(crate) fn open_device(device: &Device) -> Result<AnyBackend, String> {
    device
        .open()
        .map_err(|e| format!("--device {e}; use --device cpu"))
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// User message.
    #[arg(long)]
    prompt: String,
    /// System message (default: the one in the model's chat template, if any).
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 = no top-k cut.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A bad value (`--device bogus`) is one line, like every other error;
        // clap's usage hint stays for missing or unknown arguments.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: invalid value"));
            return 2;
        }
        Err(e) => e.exit(),
    };
    logging::init(cli.quiet, cli.verbose);
    let result = match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::Model(cmd) => model_cmd::run(cmd),
        Command::Sft(args) => train_cmd::sft(args),
        Command::Train(args) => train_cmd::train(args),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", crate::train::config_doc::default_train_toml());
            Ok(())
        }
        Command::Config(ConfigCommand::Doc) => {
            print!("{}", crate::train::config_doc::config_markdown());
            Ok(())
        }
        Command::Report(args) => train_cmd::report(args),
        Command::Rollout(args) => agent_cmd::run_rollout(args),
        Command::Eval(args) => agent_cmd::run_eval(args),
        Command::Bench(cmd) => run_bench(cmd),
        Command::Plugin(cmd) => plugin_cmd::run(cmd),
        Command::Data(cmd) => plugin_cmd::run_data(cmd),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn run_generate(a: GenerateArgs) -> CliResult {
    let backend = open_device(&a.device)?;
    crate::with_backend!(backend, b => generate_on(b, a))
}

fn generate_on<B: Backend>(backend: B, a: GenerateArgs) -> CliResult {
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        return Err(format!("--top-p must be in (0, 1], got {}", a.top_p).into());
    }
    if a.temperature < 0.0 || !a.temperature.is_finite() {
        return Err(format!("--temperature must be >= 0, got {}", a.temperature).into());
    }
    let model = crate::model::load(&a.model, backend)?;
    let tok = Tokenizer::load_dir(&a.model)?;
    let prompt = if a.raw {
        tok.encode(&a.prompt)?
    } else {
        let mut msgs = vec![];
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &a.prompt));
        tok.encode_chat(&msgs, true)?
    };
    let mut stop_tokens = model.config.eos_token_ids.clone();
    stop_tokens.extend(tok.stop_ids());
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
        },
        stop_tokens,
        seed: a.seed,
    };
    let mut stream = StreamDecoder::new();
    let mut stdout = std::io::stdout();
    let mut failure = None;
    let start = Instant::now();
    let out = generate(
        &model,
        std::slice::from_ref(&prompt),
        &opts,
        |_, id| match stream.push(&tok, id) {
            Ok(Some(piece)) => {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
            Ok(None) => {}
            Err(e) => failure = Some(e),
        },
    );
    if let Some(e) = failure {
        return Err(e.into());
    }
    let secs = start.elapsed().as_secs_f64();
    println!();
    tracing::info!(
        "[{} prompt + {} new tokens in {:.2} s, {:.1} tok/s, stop: {:?}]",
        prompt.len(),
        out[0].tokens.len(),
        secs,
        out[0].tokens.len() as f64 / secs,
        out[0].stop
    );
    Ok(())
}

fn run_bench(cmd: BenchCommand) -> CliResult {
    let (json, out) = match cmd {
        BenchCommand::Forward {
            model,
            prefill_tokens,
            decode_prompt_tokens,
            decode_tokens,
            batches,
            repeats,
            train_seq,
            train_batch,
            train_micro_batch,
            out,
            device,
        } => {
            let backend = open_device(&device)?;
            let spec = crate::bench::ForwardBenchSpec {
                prefill_tokens,
                decode_prompt_tokens,
                decode_tokens,
                batches,
                repeats,
                train_seq,
                train_batch,
                train_micro_batch,
            };
            // IGPO_PROFILE=1: the same measurements on a backend that times
            // every op, plus one profiled run of each, printed per phase.
            let result = if crate::backend::profile::requested() {
                crate::with_backend!(backend, b => {
                    let b = crate::backend::profile::Profiled::new(b);
                    let mut model = crate::model::load(&model, b)?;
                    crate::bench::forward_bench(&mut model, &spec)
                })
            } else {
                crate::with_backend!(backend, b => {
                    let mut model = crate::model::load(&model, b)?;
                    crate::bench::forward_bench(&mut model, &spec)
                })
            };
            for (label, run) in &result.profile {
                eprint!("{}", run.format(label));
            }
            (serde_json::to_string_pretty(&result)?, out)
        }
        BenchCommand::Agent {
            model,
            tool,
            tool_config,
            rollouts,
            group_size,
            max_new_tokens,
            no_prefix_sharing,
            seed,
            out,
            device,
        } => {
            if rollouts == 0 || group_size == 0 {
                return Err("bench agent: --rollouts and --group-size must be positive".into());
            }
            let config: serde_json::Value = serde_json::from_str(&tool_config)
                .map_err(|e| format!("bench agent: --tool-config is not JSON: {e}"))?;
            let backend = open_device(&device)?;
            let host = crate::plugins::PluginHost::default();
            let pool = std::sync::Arc::new(crate::plugins::ToolPool::load(
                &host,
                &[crate::plugins::PluginSpec::new(tool).config(config)],
            )?);
            let tok = crate::tokenizer::Tokenizer::load_dir(&model)?;
            let spec = crate::bench::agent::AgentBenchSpec {
                rollouts,
                group_size,
                max_new_tokens_per_turn: max_new_tokens,
                share_prompt_prefixes: !no_prefix_sharing,
                seed,
            };
            let result = crate::with_backend!(backend, b => {
                let model = crate::model::load(&model, b)?;
                crate::bench::agent::agent_bench(&model, &tok, pool, &spec)?
            });
            (serde_json::to_string_pretty(&result)?, out)
        }
        BenchCommand::Attention {
            seq,
            heads,
            kv_heads,
            head_dim,
            repeats,
            out,
            device,
        } => {
            if seq == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
                return Err("bench attention: --seq and --kv-heads must be positive, --kv-heads must divide --heads, --head-dim must be even".into());
            }
            let backend = open_device(&device)?;
            let spec = crate::bench::AttentionBenchSpec {
                seq,
                heads,
                kv_heads,
                head_dim,
                repeats,
            };
            let result =
                crate::with_backend!(backend, b => crate::bench::attention_bench(&b, &spec));
            (serde_json::to_string_pretty(&result)?, out)
        }
        BenchCommand::Score {
            tokens,
            hidden,
            vocab,
            chunk,
            repeats,
            out,
            device,
        } => {
            if tokens == 0 || hidden == 0 || vocab == 0 || chunk == 0 {
                return Err(
                    "bench score: --tokens, --hidden, --vocab and --chunk must be positive".into(),
                );
            }
            let backend = open_device(&device)?;
            let spec = crate::bench::ScoreBenchSpec {
                tokens,
                hidden,
                vocab,
                chunk,
                repeats,
            };
            let result = crate::with_backend!(backend, b => crate::bench::score_bench(&b, &spec));
            (serde_json::to_string_pretty(&result)?, out)
        }
    };
    println!("{json}");
    if let Some(path) = out {
        crate::fsutil::write_atomic(&path, json.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
