//! `igpo sft`, `igpo train` and `igpo report`. A run that fails before it
//! wrote any file (a model or data file that cannot be read) leaves no run
//! folder behind when there was none before.

use std::path::PathBuf;

use super::{open_device, CliResult, Device};
use crate::runfile::RunFile;
use crate::train::{run_sft, run_train, RlRunConfig, RlRunOptions, SftConfig, SftRunOptions};

#[derive(clap::Args)]
pub struct SftArgs {
    /// Run file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest complete checkpoint of the run folder.
    #[arg(long)]
    resume: bool,
    /// Stop after this step (its checkpoint is written), as if killed.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Change a key of the run file as if it were written there
    /// (repeatable): `--set rl.group_size=4 --set optim.lr=1e-6`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// cpu, or cuda[:N] (under mpirun or srun, `cuda` is each rank's GPU of its node).
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// In a data-parallel job `cuda` (`cuda:0`) is this rank's GPU of its
/// node, `cuda:LOCAL_RANK`; any other device is taken as given.
fn rank_device(device: Device) -> Device {
    match device {
        Device::Cuda(0) => Device::Cuda(crate::dist::local_rank()),
        d => d,
    }
}

pub fn sft(a: SftArgs) -> CliResult {
    let backend = open_device(&rank_device(a.device))?;
    let file = RunFile::read(&a.config, &a.set)?;
    let cfg = SftConfig::from_run_file(&file)?;
    let opts = SftRunOptions {
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let run_dir = cfg.train.run_dir.clone();
    let existed = run_dir.exists();
    let out = crate::with_backend!(backend, b => run_sft(b, &cfg, &file.text, &opts))
        .inspect_err(|_| crate::fsutil::remove_if_empty_tree(&run_dir, existed))?;
    if crate::dist::world().rank() != 0 {
        // Rank 0 reports the run (every rank holds the same metrics).
        return Ok(());
    }
    let (first, last) = (out.metrics.first(), out.metrics.last());
    if let (Some(f), Some(l)) = (first, last) {
        println!(
            "sft: steps {}..{}, loss {:.4} -> {:.4}, run folder {}",
            f.step,
            l.step,
            f.loss,
            l.loss,
            cfg.train.run_dir.display()
        );
    }
    if let Some(c) = out.final_checkpoint {
        println!("checkpoint: {}", c.display());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Run file (TOML): model, agent, tools, dataset, reward, [rl], [loss], [train].
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest complete checkpoint of the run folder.
    #[arg(long)]
    resume: bool,
    /// Stop after this step (its checkpoint is written), as if killed.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Change a key of the run file as if it were written there
    /// (repeatable): `--set rl.group_size=4 --set optim.lr=1e-6`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// cpu, or cuda[:N] (under mpirun or srun, `cuda` is each rank's GPU of its node).
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn train(a: TrainArgs) -> CliResult {
    let backend = open_device(&rank_device(a.device))?;
    let file = RunFile::read(&a.config, &a.set)?;
    let cfg = RlRunConfig::from_run_file(&file)?;
    let opts = RlRunOptions {
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let run_dir = cfg.train.run_dir.clone();
    let existed = run_dir.exists();
    let out = crate::with_backend!(backend, b => run_train(b, &cfg, &file.text, &opts))
        .inspect_err(|_| crate::fsutil::remove_if_empty_tree(&run_dir, existed))?;
    if let (Some(f), Some(l)) = (out.metrics.first(), out.metrics.last()) {
        println!(
            "train ({:?}): steps {}..{}, training F1 {:.3} -> {:.3}, zero-advantage groups {:.2} -> {:.2}, run folder {}",
            cfg.rl.estimator,
            f.step,
            l.step,
            f.f1,
            l.f1,
            f.zero_adv_ratio,
            l.zero_adv_ratio,
            cfg.train.run_dir.display()
        );
    }
    if let (Some(f), Some(l)) = (out.evals.first(), out.evals.last()) {
        println!(
            "dev F1 {:.3} (step {}) -> {:.3} (step {}); EM {:.3} -> {:.3}",
            f.f1, f.step, l.f1, l.step, f.em, l.em
        );
    }
    if let Some(c) = out.final_checkpoint {
        println!("checkpoint: {}", c.display());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Run folders of `igpo train` (metrics.jsonl, eval.jsonl, samples/, config.toml).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
}

pub fn report(a: ReportArgs) -> CliResult {
    crate::fsutil::check_writable(&a.out)?;
    let runs = crate::report::write_report(&a.runs, &a.out)?;
    // One name per setting: a sweep's runs are named by their setting.
    let groups = crate::report::groups::group_runs(&runs);
    let names: Vec<String> = groups.iter().map(|g| g.label()).collect();
    let count = match groups.len() < runs.len() {
        true => format!("{} runs: ", runs.len()),
        false => String::new(),
    };
    println!(
        "report: {count}{} -> {}",
        names.join(" vs "),
        a.out.display()
    );
    Ok(())
}
