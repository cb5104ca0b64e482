//! `igpo train`: the RL step loop. Dataset plugin -> G rollouts per prompt ->
//! ground-truth scoring -> rewards -> advantages -> clipped-surrogate
//! updates -> periodic dev evaluation -> checkpoints (resumable).
//!
//! - `config.rs`: the run file;
//! - `step.rs`: one step, phase by phase in the order they run;
//! - `update.rs`: old/ref log-probs and the PPO epochs (`mini_batch_grads`);
//! - `logs.rs`: metrics.jsonl, eval.jsonl, samples/, the step line;
//! - `ranks.rs`: how a step splits over data-parallel ranks.
//!
//! Resume, the data cursor, the logs' files, the progress bar and the
//! checkpoints are the loop `igpo sft` shares (`train::run`).

mod config;
mod logs;
mod ranks;
mod step;
mod update;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use config::{RlConfig, RlEvalConfig, RlRunConfig, RlTrainConfig};
pub use logs::{DevEval, RlMetrics};
pub use update::sequence_logprobs;
#[cfg(test)]
pub(crate) use update::{mini_batch_grads, Sample, UpdateSettings};

use crate::backend::Backend;
use crate::train::run::{JsonlLog, Run, Start};
pub use crate::train::run::{RunOptions as RlRunOptions, TrainError};
use crate::train::tensorboard::json_lines;
use step::{dev_eval, rl_step, RlEnv, RlLoop};

pub struct RlOutcome {
    pub metrics: Vec<RlMetrics>,
    pub evals: Vec<DevEval>,
    pub final_checkpoint: Option<PathBuf>,
}

/// Runs (or resumes) an RL job on `backend` (the policy, its reference
/// copy, AdamW state and every rollout live there).
pub fn run_train<B: Backend>(
    backend: B,
    cfg: &RlRunConfig,
    config_text: &str,
    opts: &RlRunOptions,
) -> Result<RlOutcome, TrainError> {
    ranks::check_split(cfg.rl.prompts_per_step, crate::dist::world().size())?;
    let env = RlEnv::load(cfg)?;
    let loop_cfg = cfg.loop_config(opts);
    let start = Start::load(backend.clone(), &loop_cfg, env.train_tasks.len())?;
    let fresh = start.resumed_at.is_none();
    let reference = match cfg.loss.kl_beta > 0.0 {
        true => Some(crate::model::load(&cfg.model, backend)?),
        false => None,
    };
    let eval_path = cfg.train.run_dir.join("eval.jsonl");
    let (evals, eval_log) = JsonlLog::reopen::<DevEval>(eval_path, "eval/", start.resumed_at)?;
    let history = [("eval/", &json_lines(&evals)[..])];
    let mut run: Run<B, RlMetrics> = Run::start(start, loop_cfg, config_text, &history)?;
    let cum_tokens = run.history.last().map_or(0, |m| m.cum_grad_tokens);
    let mut lp = RlLoop {
        reference,
        evals,
        eval_log,
        cum_tokens,
    };
    if env.has_eval() && fresh {
        let e = dev_eval(&run.model, &env, 0, 0)?;
        tracing::info!(
            "step 0: dev F1 {:.3}, EM {:.3} ({} examples)",
            e.f1,
            e.em,
            e.examples
        );
        lp.eval_log.append(&e, &mut run.tb)?;
        lp.evals.push(e);
    }
    run.drive(|run, step| rl_step(&env, &mut lp, run, step))?;
    Ok(RlOutcome {
        metrics: run.history,
        evals: lp.evals,
        final_checkpoint: run.final_checkpoint,
    })
}
