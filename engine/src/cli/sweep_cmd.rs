//! `igpo sweep`: `igpo train` over seeds and a grid of `--set` values; when
//! every run is done, the over-seeds table (`report::seed_table`).

use std::path::PathBuf;

use super::{open_device, CliResult};
use crate::backend::Device;
use crate::sweep::{parse_seeds, run_sweep, Axis, SweepSpec};

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Run file of `igpo train` (repeatable: each is a setting).
    #[arg(long, required = true)]
    config: Vec<PathBuf>,
    /// Seeds (`train.seed`) of every setting: `0..5` (5 excluded), `0..=4`, or `1,4,9`.
    #[arg(long, default_value = "0..3")]
    seeds: String,
    /// A grid axis (repeatable): `--set rl.estimator=igpo,grpo` runs each
    /// value as a setting of its own; several axes make every combination.
    #[arg(long = "set", value_name = "KEY=V1,V2,...")]
    set: Vec<String>,
    /// The sweep folder: `OUT/<setting>/seed-<S>/` run folders, their logs
    /// beside them, `OUT/sweep.json`.
    #[arg(long)]
    out: PathBuf,
    /// Runs at once; the cores are shared between them.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// cpu, or cuda[:N] (every run on it).
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn sweep(a: SweepArgs) -> CliResult {
    // Without the device every run would fail the same way: say it once.
    drop(open_device(&a.device)?);
    let spec = SweepSpec {
        configs: a.config,
        seeds: parse_seeds(&a.seeds)?,
        axes: a
            .set
            .iter()
            .map(|s| Axis::parse(s))
            .collect::<Result<_, _>>()?,
        out: std::path::absolute(&a.out)?,
        jobs: a.jobs,
        device: a.device.to_string(),
    };
    let igpo = std::env::current_exe()?;
    let done = run_sweep(&spec, &igpo)?;
    println!(
        "sweep: {} runs finished ({} before this sweep) in {:.0} s",
        done.runs, done.skipped, done.seconds
    );
    let runs = crate::report::load_runs(std::slice::from_ref(&spec.out))?;
    print!("{}", crate::report::seed_table(&runs));
    println!(
        "curves and every run: igpo report {} --out report.html",
        spec.out.display()
    );
    Ok(())
}
