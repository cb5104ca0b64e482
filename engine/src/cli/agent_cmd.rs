//! `igpo rollout` and `igpo eval`.

use std::io::Write;
use std::path::PathBuf;

use super::{open_device, CliResult, Device};
use crate::eval::{eval, rollout, AgentRunConfig};
use crate::plugins::PluginHost;
use crate::runfile::RunFile;

#[derive(clap::Args)]
pub struct RolloutArgs {
    /// Run file (TOML): model, agent, tools, dataset.
    #[arg(long)]
    config: PathBuf,
    /// Trajectories as JSON lines.
    #[arg(long)]
    out: PathBuf,
    /// Also write throughput numbers (tokens/s, time waiting on tools) as JSON here.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Change a key of the run file as if it were written there
    /// (repeatable): `--set rl.group_size=4 --set optim.lr=1e-6`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// One or more run files; several are reported side by side.
    #[arg(long, required = true, num_args = 1..)]
    config: Vec<PathBuf>,
    /// Also write every run's trajectories here (JSONL, one file per config: NAME.jsonl).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Change a key of every run file as if it were written there
    /// (repeatable): `--set dataset.limit=8`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run_rollout(a: RolloutArgs) -> CliResult {
    let backend = open_device(&a.device)?;
    let cfg = AgentRunConfig::from_run_file(&RunFile::read(&a.config, &a.set)?)?;
    // The outputs are written at the end: find out now, not after the
    // rollouts, that they cannot be.
    crate::fsutil::check_writable(&a.out)?;
    if let Some(path) = &a.stats {
        crate::fsutil::check_writable(path)?;
    }
    let host = PluginHost::default();
    let (trajs, stats) = crate::with_backend!(backend, b => rollout(b, &cfg, &host))?;
    let mut text = String::new();
    for t in &trajs {
        text.push_str(&serde_json::to_string(t)?);
        text.push('\n');
    }
    crate::fsutil::write_atomic(&a.out, text.as_bytes())
        .map_err(|e| format!("{}: {e}", a.out.display()))?;
    if let Some(path) = &a.stats {
        let json = serde_json::json!({
            "rollouts": trajs.len(),
            "batch": cfg.batch,
            "generated_tokens": stats.generated_tokens,
            "wall_s": stats.wall_s,
            "generated_tokens_per_s": stats.generated_tokens as f64 / stats.wall_s.max(1e-9),
            "tool_calls": stats.tool_calls,
            "waiting_on_tools_share": stats.waiting_on_tools_s / stats.wall_s.max(1e-9),
            "prompt_tokens": stats.prompt_tokens,
            "prefilled_prompt_tokens": stats.prefilled_prompt_tokens,
            "share_prompt_prefixes": cfg.agent.share_prompt_prefixes,
        });
        crate::fsutil::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    tracing::info!(
        "wrote {} trajectories to {} ({} tokens generated, {:.1} tok/s, {} tool calls, {:.0}% of wall time waiting on tools)",
        trajs.len(),
        a.out.display(),
        stats.generated_tokens,
        stats.generated_tokens as f64 / stats.wall_s.max(1e-9),
        stats.tool_calls,
        100.0 * stats.waiting_on_tools_s / stats.wall_s.max(1e-9)
    );
    Ok(())
}

pub fn run_eval(a: EvalArgs) -> CliResult {
    let backend = open_device(&a.device)?;
    // The output folder is made up front (a file there, or an unwritable
    // parent, fails before any rollout) and removed again if the command
    // fails before writing into it.
    let made_out_dir = match &a.out_dir {
        Some(dir) => {
            let existed = dir.exists();
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            crate::fsutil::check_writable(&dir.join(".igpo-eval"))?;
            Some((dir.clone(), existed))
        }
        None => None,
    };
    let result = eval_all(&a, &backend);
    if let (Err(_), Some((dir, existed))) = (&result, &made_out_dir) {
        crate::fsutil::remove_if_empty_tree(dir, *existed);
    }
    result
}

fn eval_all(a: &EvalArgs, backend: &crate::backend::AnyBackend) -> CliResult {
    let host = PluginHost::default();
    let mut rows = vec![];
    // Trajectory files are written once every run has been evaluated: a
    // failing run file leaves none of them.
    let mut files = vec![];
    for path in &a.config {
        let cfg = AgentRunConfig::from_run_file(&RunFile::read(path, &a.set)?)?;
        let (report, trajs) = crate::with_backend!(backend.clone(), b => eval(b, &cfg, &host))?;
        if let Some(dir) = &a.out_dir {
            // NAME.jsonl, NAME as it is on disk (not necessarily UTF-8).
            let mut name = path.file_stem().unwrap_or_default().to_os_string();
            name.push(".jsonl");
            let mut text = String::new();
            for t in &trajs {
                text.push_str(&serde_json::to_string(t)?);
                text.push('\n');
            }
            files.push((dir.join(name), text));
        }
        rows.push((path.display().to_string(), report));
    }
    for (out, text) in &files {
        crate::fsutil::write_atomic(out, text.as_bytes())
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{:<44} {:>5} {:>6} {:>6} {:>10} {:>8} {:>6} {:>6} {:>10}",
        "run", "n", "EM", "F1", "lenient F1", "answered", "turns", "tools", "truncated"
    )?;
    for (name, r) in &rows {
        writeln!(
            out,
            "{:<44} {:>5} {:>6.3} {:>6.3} {:>10.3} {:>8.2} {:>6.2} {:>6} {:>10.2}",
            name,
            r.examples,
            r.em,
            r.f1,
            r.lenient_f1,
            r.answered,
            r.mean_turns,
            r.tool_calls,
            r.truncation_rate
        )?;
    }
    for (name, r) in &rows {
        writeln!(out, "{name}: {}", serde_json::to_string(r)?)?;
    }
    Ok(())
}
