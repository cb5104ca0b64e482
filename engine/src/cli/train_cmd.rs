//! `igpo sft`.

use std::path::PathBuf;

use super::CliResult;
use crate::train::{run_sft, SftConfig, SftRunOptions};

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
}

pub fn sft(a: SftArgs) -> CliResult {
    let cfg = SftConfig::load(&a.config)?;
    let text =
        std::fs::read_to_string(&a.config).map_err(|e| format!("{}: {e}", a.config.display()))?;
    let opts = SftRunOptions {
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let out = run_sft(&cfg, &text, &opts)?;
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
