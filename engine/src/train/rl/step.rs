//! One RL step, its phases in the order they run: next tasks -> rollouts ->
//! ground-truth scoring -> rewards -> advantages -> old/ref log-probs ->
//! PPO epochs (`update.rs`) -> step metrics -> samples (`logs.rs`) -> dev
//! eval. The checkpoint that may follow is the shared loop's
//! (`train::run`). Each phase is a function of what it reads, so a test can
//! run one alone.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::config::{RlConfig, RlRunConfig};
use super::logs::{bar_message, step_line, step_metrics, write_samples, DevEval, RlMetrics};
use super::ranks::{even_block, gather_rollouts, rollout_block, whole_step};
use super::update::{
    ppo_epochs, sequence_logprobs, sum_over_ranks, Guard, Sample, SampleShare, UpdateSettings,
};
use crate::backend::Backend;
use crate::dist::Collective;
use crate::model::Model;
use crate::plugins::{PluginHost, RewardOutput, RewardPlugin, ToolPool, TrajectoryRecord};
use crate::rl::{
    advantages_over, gt_probabilities, outcome_reward, rollout_rewards, score, spread_over_tokens,
    tokens_per_turn, turn_boundaries, Advantages, Estimator, Probe, ProbeAnswers, ProbeTemplate,
    RolloutRewards, ScoreRequest,
};
use crate::rng::Rng;
use crate::rollout::protocol::tags_balanced;
use crate::rollout::{AgentConfig, RolloutStats, Task, Trajectory};
use crate::tasks::{f1_em, load_tasks, reward_record, rollout_tasks, score_report, DatasetConfig};
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::TrainerState;
use crate::train::guard::{Inject, NanInjection};
use crate::train::run::{io_err, next_example, on_cadence, JsonlLog, Run, StepEnd, TrainError};

/// What every step reads and none changes: the run file, the tokenizer and
/// probe template, the plugins and the tasks.
pub(crate) struct RlEnv<'a> {
    pub cfg: &'a RlRunConfig,
    pub tok: Tokenizer,
    pub template: ProbeTemplate,
    pub tools: Option<Arc<ToolPool>>,
    pub reward: RewardPlugin,
    pub train_tasks: Vec<Task>,
    pub dev_tasks: Vec<Task>,
    /// The `IGPO_INJECT_NAN` test hook (`train::guard`).
    pub inject: NanInjection,
}

impl<'a> RlEnv<'a> {
    /// Loads everything that can fail on input, before the first rollout,
    /// and makes the run folder's `samples/`.
    pub(crate) fn load(cfg: &'a RlRunConfig) -> Result<RlEnv<'a>, TrainError> {
        let inject = NanInjection::from_env(&[
            Inject::Loss,
            Inject::Grad,
            Inject::Advantage,
            Inject::LogProb,
        ])?;
        let host = PluginHost::default();
        let tools = if cfg.tools.is_empty() {
            None
        } else {
            Some(Arc::new(ToolPool::load(&host, &cfg.tools)?))
        };
        let reward = RewardPlugin::load(&host, &cfg.reward)?;
        let train_tasks = load_tasks(&host, &cfg.dataset)?;
        if train_tasks.is_empty() {
            return Err(TrainError::NoTrainingExamples(
                cfg.dataset.plugin.path.clone(),
            ));
        }
        let dev_tasks = match &cfg.eval {
            Some(e) => load_tasks(
                &host,
                &DatasetConfig {
                    plugin: cfg.dataset.plugin.clone(),
                    split: e.split.clone(),
                    limit: e.limit,
                },
            )?,
            None => vec![],
        };
        let tok = Tokenizer::load_dir(&cfg.model)?;
        let template =
            ProbeTemplate::parse(&cfg.rl.probe_template).map_err(TrainError::ProbeTemplate)?;
        let samples = cfg.train.run_dir.join("samples");
        if crate::dist::world().rank() == 0 {
            std::fs::create_dir_all(&samples).map_err(io_err(&cfg.train.run_dir))?;
        }
        Ok(RlEnv {
            cfg,
            tok,
            template,
            tools,
            reward,
            train_tasks,
            dev_tasks,
            inject,
        })
    }

    /// The run evaluates on a dev split.
    pub(crate) fn has_eval(&self) -> bool {
        self.cfg.eval.is_some() && !self.dev_tasks.is_empty()
    }

    pub(crate) fn update_settings(&self) -> UpdateSettings<'a> {
        let c = self.cfg;
        UpdateSettings {
            loss: &c.loss,
            sequence_ratio: c.rl.estimator == Estimator::Gspo,
            micro: c.train.micro_batch,
            chunk: c.train.logprob_chunk,
            recompute: c.train.recompute_activations,
            comm: crate::dist::world(),
        }
    }
}

/// What the RL loop carries from step to step besides the shared run.
pub(crate) struct RlLoop<B: Backend> {
    /// The KL reference policy (with `loss.kl_beta > 0`).
    pub reference: Option<Model<B>>,
    pub evals: Vec<DevEval>,
    pub eval_log: JsonlLog,
    /// Tokens that produced gradients since the first step.
    pub cum_tokens: usize,
}

/// Wall time of a step's stages.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Timings {
    pub rollout_s: f64,
    pub scoring_s: f64,
    /// Rewards, advantages, old log-probs and the PPO epochs.
    pub update_s: f64,
}

/// One step's rollouts and what the phases found out about them.
pub(crate) struct StepData {
    pub step: u64,
    pub trajs: Vec<Trajectory>,
    pub rollout: RolloutStats,
    /// `p_0..p_T` of each rollout (empty when not scored).
    pub p: Vec<Vec<f64>>,
    pub rewards: Rewards,
    /// Per kept rollout, per turn.
    pub adv: Advantages,
    pub logprob_delta: LogprobDelta,
    pub timings: Timings,
}

/// |sampled - recomputed old log-prob| summed over the generated tokens:
/// how far the sampler's numbers are from the trainer's.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LogprobDelta {
    pub sum: f64,
    pub tokens: usize,
}

impl LogprobDelta {
    pub(crate) fn mean(&self) -> f64 {
        self.sum / self.tokens.max(1) as f64
    }
}

/// The RL step: every phase in order; its metrics go to the shared loop.
pub(crate) fn rl_step<B: Backend>(
    env: &RlEnv<'_>,
    lp: &mut RlLoop<B>,
    run: &mut Run<B, RlMetrics>,
    step: u64,
) -> Result<StepEnd<RlMetrics>, TrainError> {
    let cfg = env.cfg;
    let settings = env.update_settings();
    let comm = settings.comm;
    let mut timings = Timings::default();
    // Every rank draws the step's tasks and seed; each runs its groups.
    let tasks = next_tasks(&env.train_tasks, &cfg.rl, &mut run.state, &mut run.rng);
    let mine = rollout_block(tasks.len(), cfg.rl.group_size, comm);
    let seed = run.rng.next_u64().wrapping_add(mine.start as u64);
    let t0 = Instant::now();
    let (trajs, rollout) = rollouts(&run.model, env, &tasks[mine], seed)?;
    timings.rollout_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let p = ground_truth(&run.model, env, &trajs)?;
    timings.scoring_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let rewards = rewards(&trajs, &p, &cfg.rl, |rec| env.reward.score(rec));
    let adv = turn_advantages(&trajs, &rewards, &cfg.rl, comm)?;
    let (mut samples, logprob_delta) = old_logprobs(
        &run.model,
        lp.reference.as_ref(),
        &trajs,
        &rewards.kept,
        &adv,
        &settings,
    );
    if comm.rank() == 0 {
        inject_nan(&env.inject, step, &mut samples);
    }
    let share = SampleShare::exchange(comm, samples.len())?;
    let lr = cfg.schedule.lr(cfg.optim.lr, step, cfg.train.steps);
    let passes = (cfg.train.ppo_epochs, cfg.train.mini_batches);
    let mut guard = Guard {
        counts: &mut run.state.skips,
        limit: cfg.optim.max_consecutive_skips,
        step,
        nan_loss: env.inject.at(Inject::Loss, step),
        nan_grad: env.inject.at(Inject::Grad, step),
    };
    let update = ppo_epochs(
        &mut run.model,
        &mut run.opt,
        &samples,
        share,
        &settings,
        passes,
        lr,
        &mut run.rng,
        &mut guard,
    )?;
    timings.update_s = t2.elapsed().as_secs_f64();
    lp.cum_tokens += update.stats.tokens;
    let data = StepData {
        step,
        trajs,
        rollout,
        p,
        rewards,
        adv,
        logprob_delta,
        timings,
    };
    let data = whole_step(comm, data)?;
    let mut m = step_metrics(&data, &update, lr, lp.cum_tokens);
    m.skipped_updates = run.state.skips.total;
    if comm.rank() == 0 {
        write_samples(&cfg.train.run_dir, &data, cfg.train.samples_per_step)?;
    }
    let every = cfg.eval.as_ref().map_or(0, |e| e.every);
    if env.has_eval() && on_cadence(step, cfg.train.steps, every) {
        let e = dev_eval(&run.model, env, step, lp.cum_tokens)?;
        m.dev_f1 = Some(e.f1);
        lp.eval_log.append(&e, &mut run.tb)?;
        lp.evals.push(e);
    }
    Ok(StepEnd {
        line: Some(step_line(&m, cfg.train.steps)),
        message: bar_message(&m),
        metrics: m,
    })
}

/// The `IGPO_INJECT_NAN` test hook: a NaN advantage or old log-prob on the
/// first loss token of the first sample.
fn inject_nan(inject: &NanInjection, step: u64, samples: &mut [Sample]) {
    let Some(s) = samples.first_mut() else {
        return;
    };
    let Some(j) = s.traj.loss_mask.iter().position(|&m| m == 1) else {
        return;
    };
    if inject.at(Inject::Advantage, step) {
        s.adv[j] = f32::NAN;
    }
    if inject.at(Inject::LogProb, step) {
        s.old[j] = f32::NAN;
    }
}

/// Phase 1: the step's `prompts_per_step` prompts from the data cursor,
/// each `group_size` times (ids `ID#k`).
pub(crate) fn next_tasks(
    tasks: &[Task],
    rl: &RlConfig,
    state: &mut TrainerState,
    rng: &mut Rng,
) -> Vec<Task> {
    let mut out = vec![];
    for _ in 0..rl.prompts_per_step {
        let t = &tasks[next_example(state, rng, tasks.len())];
        out.extend((0..rl.group_size).map(|k| Task {
            id: format!("{}#{k}", t.id),
            ..t.clone()
        }));
    }
    out
}

/// Phase 2: the rollouts of `tasks` under the current policy.
pub(crate) fn rollouts<B: Backend>(
    model: &Model<B>,
    env: &RlEnv<'_>,
    tasks: &[Task],
    seed: u64,
) -> Result<(Vec<Trajectory>, RolloutStats), TrainError> {
    let c = env.cfg;
    rollout_tasks(
        model,
        &env.tok,
        env.tools.clone(),
        &c.agent,
        tasks,
        c.rl.rollout_batch,
        seed,
    )
    .map_err(TrainError::from)
}

/// Phase 3: the ground truth's probability after every turn boundary of
/// each rollout (`p_0..p_T`); empty where nothing is scored. Baselines
/// (GRPO, ...) ignore p_t in their advantages; scoring it anyway
/// (`score_baselines`) lets a report compare how much each run's turns
/// inform the policy.
pub(crate) fn ground_truth<B: Backend>(
    model: &Model<B>,
    env: &RlEnv<'_>,
    trajs: &[Trajectory],
) -> Result<Vec<Vec<f64>>, TrainError> {
    let rl = &env.cfg.rl;
    let mut p: Vec<Vec<f64>> = vec![vec![]; trajs.len()];
    if !(rl.estimator.uses_information_gain() || rl.score_baselines) {
        return Ok(p);
    }
    let bounds: Vec<Vec<usize>> = trajs.iter().map(turn_boundaries).collect();
    let probes: Vec<Vec<Probe>> = trajs
        .iter()
        .map(|t| {
            let answers = match rl.probe_answers {
                ProbeAnswers::First => &t.answers[..t.answers.len().min(1)],
                ProbeAnswers::Max => &t.answers[..],
            };
            answers
                .iter()
                .map(|a| env.template.probe(&env.tok, a))
                .filter(|p| p.as_ref().map_or(true, |p| !p.answer.is_empty()))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let idx: Vec<usize> = (0..trajs.len())
        .filter(|&i| !probes[i].is_empty())
        .collect();
    for part in idx.chunks(env.cfg.train.micro_batch) {
        let reqs: Vec<ScoreRequest<'_>> = part
            .iter()
            .map(|&i| ScoreRequest {
                tokens: &trajs[i].tokens,
                boundaries: &bounds[i],
                probes: &probes[i],
            })
            .collect();
        for (&i, s) in part
            .iter()
            .zip(score(model, &reqs, env.cfg.train.logprob_chunk))
        {
            p[i] = gt_probabilities(&s);
        }
    }
    Ok(p)
}

/// The rewards of a step's rollouts, groups of `group_size` in order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Rewards {
    /// Per group, the rewards of its kept rollouts.
    pub groups: Vec<Vec<RolloutRewards>>,
    /// Indices of the kept rollouts, in the order of `groups` flattened.
    pub kept: Vec<usize>,
    /// F1 of each rollout's answer (0 for a dropped one).
    pub f1_of: Vec<f64>,
    pub f1_sum: f64,
    /// Sum of the kept rollouts' outcome rewards (after the format penalty).
    pub outcome_sum: f64,
    /// Rollouts whose reward plugin failed.
    pub failures: usize,
}

impl Rewards {
    /// The kept rollouts' rewards, in the order of `kept`.
    pub(crate) fn flat(&self) -> Vec<&RolloutRewards> {
        self.groups.iter().flatten().collect()
    }
}

/// Phase 4: each rollout's outcome (from `score`, the reward plugin; the
/// format penalty for one that never answered or broke its tags) and turn
/// rewards from `p`. A rollout whose reward failed is dropped, never scored 0.
pub(crate) fn rewards<E: std::fmt::Display>(
    trajs: &[Trajectory],
    p: &[Vec<f64>],
    rl: &RlConfig,
    score: impl Fn(&TrajectoryRecord) -> Result<RewardOutput, E>,
) -> Rewards {
    let g = rl.group_size;
    let mut r = Rewards {
        f1_of: vec![0.0; trajs.len()],
        ..Rewards::default()
    };
    for (gi, block) in trajs.chunks(g).enumerate() {
        let mut group = vec![];
        for (k, t) in block.iter().enumerate() {
            let i = gi * g + k;
            let mut rec = reward_record(t);
            rec.initial_gt_probability = p[i].first().copied();
            for (turn, tr) in rec.turns.iter_mut().enumerate() {
                tr.gt_probability = p[i].get(turn + 1).copied();
            }
            match score(&rec) {
                Ok(out) => {
                    let well_formed =
                        t.final_answer.is_some() && t.turns.iter().all(|m| tags_balanced(&m.text));
                    let outcome = outcome_reward(out.outcome, well_formed, rl.format_penalty);
                    r.f1_of[i] = f1_em(&out).0;
                    r.f1_sum += r.f1_of[i];
                    r.outcome_sum += outcome;
                    group.push(rollout_rewards(
                        rl.ig_form,
                        &p[i],
                        t.turns.len(),
                        outcome,
                        out.turn_rewards.as_deref(),
                    ));
                    r.kept.push(i);
                }
                Err(e) => {
                    r.failures += 1;
                    tracing::warn!(
                        "reward plugin failed on `{}` (dropped from the update): {e}",
                        t.id
                    );
                }
            }
        }
        if !group.is_empty() {
            r.groups.push(group);
        }
    }
    r
}

/// Phase 5: per kept rollout, per turn, the estimator's advantage (the
/// batch-wide sums over every rank's groups).
pub(crate) fn turn_advantages(
    trajs: &[Trajectory],
    rewards: &Rewards,
    rl: &RlConfig,
    comm: &dyn Collective,
) -> Result<Advantages, TrainError> {
    let tokens: Vec<Vec<usize>> = rewards
        .kept
        .iter()
        .map(|&i| tokens_per_turn(&trajs[i]))
        .collect();
    advantages_over(
        rl.estimator,
        rl.normalization,
        rl.gamma,
        &rewards.groups,
        &tokens,
        |v| sum_over_ranks(comm, v),
    )
}

/// Phase 6: the kept rollouts as samples for the update: advantages spread
/// over their tokens, old (and reference) log-probs under the weights that
/// sampled. Also |sampled - recomputed| old log-prob.
pub(crate) fn old_logprobs<B: Backend>(
    model: &Model<B>,
    reference: Option<&Model<B>>,
    trajs: &[Trajectory],
    kept: &[usize],
    adv: &Advantages,
    settings: &UpdateSettings<'_>,
) -> (Vec<Sample>, LogprobDelta) {
    let refs: Vec<&Trajectory> = kept.iter().map(|&i| &trajs[i]).collect();
    let (mut old, mut reference_lp) = (vec![], vec![]);
    for part in refs.chunks(settings.micro) {
        old.extend(sequence_logprobs(model, part, settings.chunk));
        if let Some(r) = reference {
            reference_lp.extend(sequence_logprobs(r, part, settings.chunk));
        }
    }
    let mut delta = LogprobDelta::default();
    for (t, o) in refs.iter().zip(&old) {
        for ((&mask, &sampled), &recomputed) in t.loss_mask.iter().zip(&t.sample_logprobs).zip(o) {
            if mask == 1 {
                delta.sum += (sampled - recomputed).abs() as f64;
                delta.tokens += 1;
            }
        }
    }
    let samples = kept
        .iter()
        .enumerate()
        .map(|(k, &i)| Sample {
            adv: spread_over_tokens(&trajs[i], &adv.turns[k]),
            old: old[k].clone(),
            reference: reference_lp
                .get(k)
                .cloned()
                .unwrap_or_else(|| vec![0.0; trajs[i].tokens.len()]),
            traj: trajs[i].clone(),
        })
        .collect();
    (samples, delta)
}

/// Phase 10: the dev split through the agent (greedy by default) and the
/// reward plugin; data-parallel ranks each run a block of the questions.
pub(crate) fn dev_eval<B: Backend>(
    model: &Model<B>,
    env: &RlEnv<'_>,
    step: u64,
    cum_grad_tokens: usize,
) -> Result<DevEval, TrainError> {
    let cfg = env.cfg;
    let e = cfg.eval.as_ref().expect("eval configured");
    let agent = AgentConfig {
        temperature: e.temperature,
        ..cfg.agent.clone()
    };
    let comm = crate::dist::world();
    let mine = even_block(env.dev_tasks.len(), comm);
    let seed = cfg.train.seed.wrapping_add(mine.start as u64);
    let (trajs, stats) = rollout_tasks(
        model,
        &env.tok,
        env.tools.clone(),
        &agent,
        &env.dev_tasks[mine],
        e.batch,
        seed,
    )?;
    let (trajs, stats) = gather_rollouts(comm, trajs, stats)?;
    let r = score_report(&trajs, &stats, &env.reward);
    Ok(DevEval {
        step,
        cum_grad_tokens,
        f1: r.f1,
        f1_se: r.f1_se,
        em: r.em,
        answered: r.answered,
        mean_turns: r.mean_turns,
        tool_calls: r.tool_calls,
        examples: r.examples,
    })
}
