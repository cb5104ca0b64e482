//! The `igpo` command line: parses arguments and calls the library. Nothing
//! here computes; every error reaches the user as one `error: ` line on
//! stderr and exit code 2 (bad input, a file that cannot be read or written,
//! a bad value of an `IGPO_*` variable alike; clap's usage errors exit 2
//! too). A panic, a bug, exits 101.
//! Logs are `tracing` events on stderr (`logging.rs`: `-q`, `-v`, `RUST_LOG`);
//! results go to stdout.

mod agent_cmd;
mod bench_cmd;
mod generate_cmd;
mod logging;
mod model_cmd;
mod plugin_cmd;
mod serve_cmd;
mod sweep_cmd;
mod train_cmd;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

use crate::backend::{AnyBackend, Device};

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
    Generate(generate_cmd::GenerateArgs),
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
    /// Run `igpo train` over seeds and a grid of settings (resumable).
    Sweep(sweep_cmd::SweepArgs),
    /// Print the `igpo train` run file reference.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write an HTML report comparing run folders of `igpo train`.
    Report(train_cmd::ReportArgs),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
    /// Check, describe and call plugin components (.wasm).
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCommand),
    /// Convert data for plugins (the search corpus, its BM25 index).
    #[command(subcommand)]
    Data(plugin_cmd::DataCommand),
    /// Serve data over HTTP (a retrieval index under Search-R1's protocol).
    #[command(subcommand)]
    Serve(serve_cmd::ServeCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// A commented `igpo train` run file with every key at its default.
    Default,
    /// The run file reference as Markdown (docs/config.md).
    Doc,
}

/// Opens the backend `--device` names, before any other work (plugins,
/// models). Without a GPU, `cuda:N` is one line naming the device.
pub(crate) fn open_device(device: &Device) -> Result<AnyBackend, String> {
    device
        .open()
        .map_err(|e| format!("--device {e}; use --device cpu"))
}

/// The exit code of every error the CLI reports (its one `error: ` line).
const EXIT_ERROR: i32 = 2;

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
            return EXIT_ERROR;
        }
        Err(e) => e.exit(),
    };
    logging::init(cli.quiet, cli.verbose);
    if let Err(e) = crate::backend::cpu::check_env() {
        eprintln!("error: {e}");
        return EXIT_ERROR;
    }
    let verbose = cli.verbose > 0;
    let result = match cli.command {
        Command::Generate(args) => generate_cmd::run(args),
        Command::Model(cmd) => model_cmd::run(cmd),
        Command::Sft(args) => train_cmd::sft(args),
        Command::Train(args) => train_cmd::train(args),
        Command::Sweep(args) => sweep_cmd::sweep(args),
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
        Command::Bench(cmd) => bench_cmd::run(cmd),
        Command::Plugin(cmd) => plugin_cmd::run(cmd),
        Command::Data(cmd) => plugin_cmd::run_data(cmd),
        Command::Serve(cmd) => serve_cmd::run(cmd, verbose),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}
