//! `igpo plugin check|describe|call|prompt` and `igpo data corpus`: argument
//! parsing only; the work is in `crate::plugins` and `crate::data`.

use std::path::PathBuf;

use clap::Subcommand;

use crate::plugins::{
    inspect, DatasetPlugin, PluginHost, PluginSpec, RewardPlugin, SandboxLimits, ToolPlugin,
    ToolPool, TrajectoryRecord, World,
};
use crate::rollout::{agent_system_prompt, AgentConfig};
use crate::tokenizer::ToolCallFormat;

type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Say which world a component implements and what it says about itself.
    Check { file: PathBuf },
    /// Print a component's self-description as JSON.
    Describe { file: PathBuf },
    /// Load a component (init with --config) and call it once with --args:
    /// a tool's arguments, a reward's trajectory, or a dataset's
    /// `{"split"?: name, "index"?: n}` (no index: its size and splits).
    Call {
        file: PathBuf,
        /// JSON config for `init`.
        #[arg(long, default_value = "{}")]
        config: String,
        /// JSON arguments.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Directory the plugin may read (read-only, at /data).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Sandbox limits as JSON, e.g. '{"call_timeout_ms": 2000}'.
        #[arg(long)]
        limits: Option<String>,
        /// An origin the tool may reach over HTTP, `http://host:port`
        /// (repeat for several; the run file's `allow_http`).
        #[arg(long = "allow-http", value_name = "ORIGIN")]
        allow_http: Vec<String>,
    },
    /// Print the agent's system prompt presenting these tools (what SFT
    /// transcripts teaching the protocol must start with).
    Prompt {
        /// Tool components, in any order (the prompt lists them by name).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// tool_call or search_tags.
        #[arg(long, default_value = "tool_call")]
        protocol: String,
        /// JSON config for `init` (all tools).
        #[arg(long, default_value = "{}")]
        config: String,
        /// Directory the tools may read (read-only, at /data).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Start a new tool plugin project (Rust, Python or JavaScript) that builds as is:
    /// a word counter to replace with your tool.
    New {
        /// The tool's name (lowercase letters, digits, '-').
        name: String,
        #[arg(long, value_enum)]
        lang: crate::plugins::scaffold::PluginLang,
        /// The project folder to create (default: ./NAME).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Any tool through the sandbox: its compile and first-instance cost,
    /// the memory of an instance, and calls/s with p50/p99 latency on one
    /// thread and pooled over several.
    Bench {
        /// The tool component (`.wasm`).
        file: PathBuf,
        /// JSON arguments of a call (repeat for several; calls rotate).
        #[arg(long = "args", value_name = "JSON")]
        args: Vec<String>,
        /// A JSONL file of call arguments, one object a line (calls rotate).
        #[arg(long)]
        args_file: Option<PathBuf>,
        /// JSON config for `init`.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Directory the tool may read (read-only, at /data).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// An origin the tool may reach over HTTP (repeat for several).
        #[arg(long = "allow-http", value_name = "ORIGIN")]
        allow_http: Vec<String>,
        /// Calls per measurement (single, then pooled).
        #[arg(long, default_value_t = 10_000)]
        calls: usize,
        /// Instances (and threads) of the pooled measurement (default: cores).
        #[arg(long)]
        instances: Option<usize>,
        /// Write the report as JSON here too.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write the search corpus (JSONL {id,title,text}) from SQuAD paragraphs
    /// and Wikipedia summaries.
    Corpus {
        #[arg(long)]
        squad: Option<PathBuf>,
        #[arg(long)]
        wiki: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Build the BM25 index of a passage corpus once, on disk, for the
    /// `bm25-search` plugin (`index` in its config) and `igpo serve retrieval`.
    Index {
        /// JSONL file(s) of {id, title, text}, one passage a line, in order.
        #[arg(required = true)]
        corpus: Vec<PathBuf>,
        /// The index folder to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Memory for postings before they spill to sorted runs on disk (MiB).
        #[arg(long, default_value_t = 512)]
        memory_mib: usize,
        /// Replace an index already in --out (once the new one is complete).
        #[arg(long)]
        force: bool,
    },
    /// Generate the synthetic multi-hop world of the demo into a folder:
    /// corpus.jsonl, train.jsonl, dev.jsonl, sft.jsonl (demonstrations with
    /// real search results), tokenizer.json, synth.json.
    Synth(SynthArgs),
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder (also the search tool's granted directory).
    #[arg(long)]
    out: PathBuf,
    /// The agent run file the demonstrations are made for: its `[agent]`
    /// (system prompt, protocol, tool-result cap) and its first `[[tools]]`
    /// entry (the search plugin and its config) are used.
    #[arg(long)]
    agent_config: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 150)]
    people: usize,
    #[arg(long, default_value_t = 30)]
    cities: usize,
    #[arg(long, default_value_t = 20)]
    companies: usize,
    #[arg(long, default_value_t = 8)]
    countries: usize,
    /// Train questions (each gets one SFT demonstration).
    #[arg(long, default_value_t = 1200)]
    train: usize,
    #[arg(long, default_value_t = 100)]
    dev: usize,
    /// Share of 2-hop questions.
    #[arg(long, default_value_t = 0.6)]
    two_hop: f64,
    /// Share of 2-hop demonstrations that are lazy (stop after one hop or do not search).
    #[arg(long, default_value_t = 0.3)]
    lazy: f64,
    /// Most BPE tokens (special tokens included); merges seen once are not learned.
    #[arg(long, default_value_t = 2048)]
    vocab_size: usize,
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what}: not valid JSON: {e}"))
}

pub fn run(cmd: PluginCommand) -> CliResult {
    let host = PluginHost::default();
    match cmd {
        PluginCommand::Check { file } => {
            let d = inspect(&host, &file)?;
            println!(
                "{}: implements the `{}` world ({})",
                file.display(),
                d.world,
                d.export
            );
            println!("  name:        {}", d.name);
            println!("  version:     {}", d.version);
            println!("  description: {}", d.description);
            println!("  config:      {}", d.config_schema);
            if let Some(p) = &d.parameters_schema {
                println!("  arguments:   {p}");
            }
        }
        PluginCommand::New { name, lang, out } => {
            use crate::plugins::scaffold::{build_command, built_component, new_plugin};
            let out = out.unwrap_or_else(|| PathBuf::from(&name));
            for f in new_plugin(&name, lang, &out)? {
                println!("wrote {}", f.display());
            }
            println!(
                "build:  cd {} && {}",
                out.display(),
                build_command(&name, lang)
            );
            println!(
                "check:  igpo plugin check {}",
                out.join(built_component(&name, lang)).display()
            );
        }
        PluginCommand::Describe { file } => {
            let d = inspect(&host, &file)?;
            println!("{}", serde_json::to_string_pretty(&d)?);
        }
        PluginCommand::Call {
            file,
            config,
            args,
            dir,
            limits,
            allow_http,
        } => call(&host, &file, &config, &args, dir, limits, allow_http)?,
        PluginCommand::Prompt {
            files,
            protocol,
            config,
            dir,
        } => prompt(&host, &files, &protocol, &config, dir)?,
        PluginCommand::Bench {
            file,
            args,
            args_file,
            config,
            dir,
            allow_http,
            calls,
            instances,
            out,
        } => {
            if let Some(path) = &out {
                crate::fsutil::check_writable(path)?;
            }
            let mut arguments = args;
            if let Some(f) = args_file {
                let text =
                    std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    // Each line is one JSON object; a bad line is named here,
                    // not as a failed call.
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line)
                        .map_err(|e| {
                            format!(
                                "{}:{}: not a JSON object of call arguments: {e}",
                                f.display(),
                                i + 1
                            )
                        })?;
                    arguments.push(line.to_string());
                }
            }
            if arguments.is_empty() {
                return Err(
                    "give the call arguments: --args JSON (or --args-file FILE.jsonl)".into(),
                );
            }
            let spec = crate::bench::plugins::PluginBenchSpec {
                file,
                config: parse_json("--config", &config)?,
                readonly_dir: dir,
                allow_http,
                arguments,
                calls,
                instances: instances
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            };
            run_bench(&host, &spec, out)?
        }
    }
    Ok(())
}

/// `igpo plugin call`: one call of a plugin of any world.
fn call(
    host: &PluginHost,
    file: &std::path::Path,
    config: &str,
    args: &str,
    dir: Option<PathBuf>,
    limits: Option<String>,
    allow_http: Vec<String>,
) -> CliResult {
    let mut spec = PluginSpec::new(file)
        .config(parse_json("--config", config)?)
        .allow_http(allow_http);
    spec.readonly_dir = dir;
    if let Some(l) = limits {
        spec.limits =
            serde_json::from_str::<SandboxLimits>(&l).map_err(|e| format!("--limits: {e}"))?;
    }
    spec.limits.instances = 1;
    match inspect(host, file)?.world {
        World::Tool => {
            let tool = ToolPlugin::load(host, &spec)?;
            println!("{}", tool.call(args)?);
        }
        World::Reward => {
            let t: TrajectoryRecord =
                serde_json::from_str(args).map_err(|e| format!("--args: not a trajectory: {e}"))?;
            let out = RewardPlugin::load(host, &spec)?.score(&t)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        World::Dataset => {
            let a = parse_json("--args", args)?;
            let split = match &a["split"] {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                _ => return Err("--args: `split` must be a string".into()),
            };
            let ds = DatasetPlugin::load(host, &spec)?;
            let out = match &a["index"] {
                serde_json::Value::Null => serde_json::json!({
                    "len": ds.len(split.as_deref())?,
                    "splits": ds.splits(),
                }),
                v => {
                    let i = v
                        .as_u64()
                        .ok_or("--args: `index` must be a non-negative integer")?;
                    serde_json::to_value(ds.get(split.as_deref(), i)?)?
                }
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}

/// `igpo plugin prompt`: the agent's system prompt for these tools.
fn prompt(
    host: &PluginHost,
    files: &[PathBuf],
    protocol: &str,
    config: &str,
    dir: Option<PathBuf>,
) -> CliResult {
    let protocol = serde_json::from_value(serde_json::Value::String(protocol.to_string()))
        .map_err(|_| format!("--protocol: `{protocol}` is not one of tool_call, search_tags"))?;
    let config = parse_json("--config", config)?;
    let specs: Vec<PluginSpec> = files
        .iter()
        .map(|f| {
            let mut spec = PluginSpec::new(f).config(config.clone());
            spec.readonly_dir = dir.clone();
            spec.limits.instances = 1;
            spec
        })
        .collect();
    let pool = ToolPool::load(host, &specs)?;
    let cfg = AgentConfig {
        protocol,
        ..AgentConfig::default()
    };
    // No model here: the prompt of a model whose template knows
    // no tools (the engine lists them itself).
    println!(
        "{}",
        agent_system_prompt(&cfg, Some(&pool), &ToolCallFormat::Prompted)
    );
    Ok(())
}

fn run_bench(
    host: &PluginHost,
    spec: &crate::bench::plugins::PluginBenchSpec,
    out: Option<PathBuf>,
) -> CliResult {
    let report = crate::bench::plugins::plugin_bench(host, spec)?;
    for line in report.lines() {
        println!("{line}");
    }
    if let Some(path) = out {
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

pub fn run_data(cmd: DataCommand) -> CliResult {
    match cmd {
        DataCommand::Corpus { squad, wiki, out } => {
            if squad.is_none() && wiki.is_none() {
                return Err("give --squad and/or --wiki".into());
            }
            let passages = crate::data::build_corpus(squad.as_deref(), wiki.as_deref())?;
            crate::data::write_jsonl(&out, &passages)?;
            tracing::info!("wrote {} passages to {}", passages.len(), out.display());
        }
        DataCommand::Index {
            corpus,
            out,
            memory_mib,
            force,
        } => {
            let t0 = std::time::Instant::now();
            let s = crate::data::index::build_index(&corpus, &out, memory_mib << 20, force)?;
            println!(
                "indexed {} passages ({} terms, {} postings, mean length {:.1}) into {}: {:.1} MiB, {:.1} s{}",
                s.documents,
                s.terms,
                s.postings,
                s.avg_len,
                out.display(),
                s.bytes as f64 / (1 << 20) as f64,
                t0.elapsed().as_secs_f64(),
                if s.runs > 0 {
                    format!(", {} runs merged", s.runs)
                } else {
                    String::new()
                }
            );
        }
        DataCommand::Synth(a) => synth(a)?,
    }
    Ok(())
}

fn synth(a: SynthArgs) -> CliResult {
    use crate::data::synth::{synthesize, SynthConfig};
    let cfg = SynthConfig {
        seed: a.seed,
        people: a.people,
        cities: a.cities,
        companies: a.companies,
        countries: a.countries,
        train: a.train,
        dev: a.dev,
        two_hop: a.two_hop,
        lazy: a.lazy,
        vocab_size: a.vocab_size,
    };
    cfg.validate()?;
    let run = crate::eval::AgentRunConfig::load(&a.agent_config)?;
    let search = run.tools.first().ok_or_else(|| {
        format!(
            "{}: no [[tools]] entry (the search tool the demonstrations call)",
            a.agent_config.display()
        )
    })?;
    let start = std::time::Instant::now();
    let s = synthesize(&a.out, &cfg, &run.agent, search, &PluginHost::default())?;
    tracing::info!(
        "synth: {} passages, {} train + {} dev questions ({} + {} 2-hop), {} demonstrations \
         ({} stop early, {} do not search, {} skipped), hop retrieval {:.1}%, vocab {}, \
         {:.0}% of names one token, {:.0} tokens per demonstration (max {}), in {:.1} s -> {}",
        s.passages,
        s.train_questions,
        s.dev_questions,
        s.two_hop_train,
        s.two_hop_dev,
        s.demonstrations,
        s.stops_early_demonstrations,
        s.no_search_demonstrations,
        s.skipped_unretrieved,
        100.0 * s.hop_retrieval_rate,
        s.vocab_size,
        100.0 * s.single_token_names,
        s.mean_demo_tokens,
        s.max_demo_tokens,
        start.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
