//! Single phases of the RL step run alone: on hand-made trajectories, and
//! (old log-probs, PPO epochs) on a tiny random model on the CPU.

use std::cell::RefCell;

use super::config::RlConfig;
use super::logs::{sample_lines, step_metrics};
use super::step::{
    next_tasks, old_logprobs, rewards, turn_advantages, LogprobDelta, Rewards, StepData, Timings,
};
use super::update::{
    ppo_epochs, sequence_logprobs, Guard, Sample, SampleShare, Update, UpdateSettings,
};
use crate::backend::Cpu;
use crate::model::init::random_weights;
use crate::model::{Model, ModelConfig};
use crate::plugins::RewardOutput;
use crate::rl::{spread_over_tokens, Advantages, Estimator, LossConfig, LossStats};
use crate::rng::Rng;
use crate::rollout::{RolloutStats, Segment, SpanKind, Task, Trajectory, TurnMeta};
use crate::train::checkpoint::{DataPosition, TrainerState};
use crate::train::guard::SkipCounts;
use crate::train::optim::{AdamW, OptimConfig};
use crate::train::run::shuffled;

/// A rollout of 12 tokens: prompt, a tool turn, its result, the answer turn.
fn traj(id: &str, final_answer: Option<&str>, answer_text: &str) -> Trajectory {
    let seg = |kind, start, end| Segment { kind, start, end };
    Trajectory {
        id: id.into(),
        question: format!("question {id}"),
        answers: vec!["a".into()],
        tokens: (0..12).map(|t| (t * 5 + id.len() as u32) % 64).collect(),
        segments: vec![
            seg(SpanKind::Prompt, 0, 3),
            seg(SpanKind::Generated { turn: 0 }, 3, 6),
            seg(SpanKind::ToolResult { turn: 0 }, 6, 9),
            seg(SpanKind::Generated { turn: 1 }, 9, 12),
        ],
        loss_mask: vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1],
        sample_logprobs: vec![0.0; 12],
        turns: vec![
            TurnMeta::new("<tool_call>{}</tool_call>".into()),
            TurnMeta::new(answer_text.into()),
        ],
        final_answer: final_answer.map(String::from),
        truncated: false,
        text: format!("text of {id}"),
    }
}

fn grpo(group_size: usize) -> RlConfig {
    RlConfig {
        estimator: Estimator::Grpo,
        group_size,
        ..RlConfig::default()
    }
}

/// Two groups of two: a right answer, an answer with broken tags (format
/// penalty), one that never answered (format penalty), one whose reward
/// plugin failed (dropped).
fn hand_made() -> (Vec<Trajectory>, Vec<Vec<f64>>) {
    let trajs = vec![
        traj("t0", Some("a"), "<answer>a</answer>"),
        traj("t1", Some("b"), "<answer>b"),
        traj("t2", None, "no answer"),
        traj("fails", Some("a"), "<answer>a</answer>"),
    ];
    let p = vec![vec![0.1, 0.4], vec![0.2, 0.1], vec![], vec![0.5, 0.5]];
    (trajs, p)
}

fn score(rec: &crate::plugins::TrajectoryRecord) -> Result<RewardOutput, String> {
    if rec.question.ends_with("fails") {
        return Err("boom".into());
    }
    let right = rec.final_answer.as_deref() == Some("a");
    Ok(RewardOutput {
        outcome: if right { 1.0 } else { 0.0 },
        turn_rewards: None,
        details: Some(serde_json::json!({ "f1": if right { 0.75 } else { 0.0 } })),
    })
}

/// [`hand_made`] through the rewards and (GRPO) advantages phases.
fn rewarded() -> (Vec<Trajectory>, Vec<Vec<f64>>, Rewards, Advantages) {
    let (trajs, p) = hand_made();
    let rl = grpo(2);
    let r = rewards(&trajs, &p, &rl, score);
    let adv = turn_advantages(&trajs, &r, &rl, &crate::dist::Solo).unwrap();
    (trajs, p, r, adv)
}

#[test]
fn rewards_score_every_rollout_drop_failures_and_penalize_bad_format() {
    let (trajs, p) = hand_made();
    let seen = RefCell::new(vec![]);
    let r = rewards(&trajs, &p, &grpo(2), |rec| {
        let turn_p: Vec<Option<f64>> = rec.turns.iter().map(|t| t.gt_probability).collect();
        seen.borrow_mut().push((rec.initial_gt_probability, turn_p));
        score(rec)
    });
    // The plugin sees p_0 and the probability after each turn.
    assert_eq!(seen.borrow()[0], (Some(0.1), vec![Some(0.4), None]));
    assert_eq!(seen.borrow()[2], (None, vec![None, None]));
    assert_eq!(r.kept, vec![0, 1, 2]);
    assert_eq!(r.failures, 1);
    assert_eq!(r.groups.len(), 2);
    assert_eq!(r.groups[1].len(), 1);
    // Outcomes: 1, then the format penalty for broken tags and no answer.
    let outcomes: Vec<f64> = r.flat().iter().map(|x| x.outcome).collect();
    assert_eq!(outcomes, vec![1.0, -2.0, -2.0]);
    assert_eq!(r.outcome_sum, -3.0);
    assert_eq!(r.f1_of, vec![0.75, 0.0, 0.0, 0.0]);
    assert_eq!(r.f1_sum, 0.75);
    // Information gain of the tool turn: p_1 - p_0 (0 where nothing was scored).
    assert!((r.groups[0][0].ig[0] - 0.3).abs() < 1e-12);
    assert!((r.groups[0][1].ig[0] + 0.1).abs() < 1e-12);
    assert_eq!(r.groups[1][0].ig, vec![0.0]);
}

#[test]
fn advantages_of_kept_rollouts_follow_their_group() {
    let (trajs, _, r, adv) = rewarded();
    let rl = grpo(2);
    assert_eq!(adv.turns.len(), 3);
    // GRPO: the group's z-score of the outcome (1 vs -2: +-1.5 over the
    // unbiased std sqrt(4.5)), on every turn.
    let (a0, a1) = (adv.turns[0][0], adv.turns[1][0]);
    let z = std::f64::consts::FRAC_1_SQRT_2;
    assert!((a0 - z).abs() < 1e-5 && (a1 + z).abs() < 1e-5, "{a0} {a1}");
    assert_eq!(adv.turns[0], vec![a0, a0]);
    // A group left with one rollout teaches nothing.
    assert_eq!(adv.turns[2], vec![0.0, 0.0]);
    assert_eq!((adv.zero_groups, adv.groups), (1, 2));
    // IGPO over the same rewards: the tool turns differ by their gain.
    let igpo = RlConfig {
        estimator: Estimator::Igpo,
        ..rl
    };
    let adv = turn_advantages(&trajs, &r, &igpo, &crate::dist::Solo).unwrap();
    assert!(adv.turns[0][0] > adv.turns[1][0]);
}

#[test]
fn next_tasks_repeat_each_prompt_group_size_times_across_epochs() {
    let tasks: Vec<Task> = (0..3)
        .map(|i| Task {
            id: format!("q{i}"),
            question: format!("question {i}"),
            answers: vec![format!("answer {i}")],
        })
        .collect();
    let mut rng = Rng::new(5);
    let order = shuffled(3, &mut rng);
    let mut state = TrainerState {
        step: 0,
        rng: rng.state(),
        data: DataPosition::default(),
        order: order.clone(),
        optimizer_steps: None,
        skips: SkipCounts::default(),
    };
    let rl = RlConfig {
        group_size: 2,
        prompts_per_step: 2,
        ..RlConfig::default()
    };
    let step1 = next_tasks(&tasks, &rl, &mut state, &mut rng);
    let first = &tasks[order[0] as usize];
    let ids: Vec<&str> = step1.iter().map(|t| t.id.as_str()).collect();
    let second = format!("q{}", order[1]);
    assert_eq!(
        ids,
        vec![
            format!("{}#0", first.id),
            format!("{}#1", first.id),
            format!("{second}#0"),
            format!("{second}#1")
        ]
    );
    assert_eq!(step1[1].question, first.question);
    assert_eq!(step1[1].answers, first.answers);
    // The third prompt ends the epoch; the fourth opens the next one.
    let step2 = next_tasks(&tasks, &rl, &mut state, &mut rng);
    assert_eq!(step2[0].id, format!("q{}#0", order[2]));
    assert_eq!(state.data, DataPosition { epoch: 1, index: 1 });
}

#[test]
fn step_metrics_and_samples_of_a_hand_made_step() {
    let (trajs, p, r, adv) = rewarded();
    let d = StepData {
        step: 7,
        trajs,
        rollout: RolloutStats {
            generated_tokens: 24,
            ..RolloutStats::default()
        },
        p,
        rewards: r,
        adv,
        logprob_delta: LogprobDelta {
            sum: 0.5,
            tokens: 4,
        },
        timings: Timings::default(),
    };
    let u = Update {
        stats: LossStats {
            kl: 0.4,
            pg_loss: -0.2,
            tokens: 10,
            clipped: 2,
            ratio_sum: 9.0,
            ..LossStats::default()
        },
        grad_norm: 0.5,
        updates: 2,
        skipped: 0,
    };
    let m = step_metrics(&d, &u, 1e-3, 30);
    assert_eq!(m.step, 7);
    assert_eq!(m.outcome_reward, -1.0); // over the 3 kept
    assert_eq!(m.f1, 0.25);
    assert_eq!(m.answer_rate, 0.75); // over all 4 rollouts
    assert_eq!(m.mean_turns, 2.0);
    assert!((m.ig_mean[0] - (0.3 - 0.1 + 0.0) / 3.0).abs() < 1e-12);
    assert_eq!(m.ig_mean.len(), 1);
    assert!(m.ig_std[0] > 0.0);
    let drop = ((0.4f64.ln() - 0.1f64.ln()) + (0.1f64.ln() - 0.2f64.ln()) + 0.0) / 3.0;
    assert!((m.gt_entropy_drop - drop).abs() < 1e-12);
    assert_eq!(m.zero_adv_ratio, 0.5);
    assert_eq!((m.kl, m.pg_loss), (0.2, -0.1)); // per update
    assert_eq!((m.clip_frac, m.ratio_mean), (0.2, 0.9)); // per token
    assert_eq!((m.grad_tokens, m.cum_grad_tokens), (10, 30));
    assert_eq!((m.reward_failures, m.generated_tokens), (1, 24));
    assert_eq!(m.logprob_delta, 0.125);
    assert_eq!(m.dev_f1, None);

    let lines = sample_lines(&d, 2);
    let v: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["id"], "t0");
    assert_eq!(v[0]["f1"], 0.75);
    assert_eq!(v[0]["gt_probability"], serde_json::json!([0.1, 0.4]));
    assert_eq!(v[1]["turn_rewards"][1], -2.0);
    assert_eq!(v[1]["turn_advantages"], serde_json::json!(d.adv.turns[1]));
}

fn tiny_model() -> Model<Cpu> {
    let config = ModelConfig {
        num_layers: 1,
        max_position_embeddings: 64,
        eos_token_ids: vec![1],
        ..ModelConfig::tiny_for_tests()
    };
    Model::from_tensors(config.clone(), random_weights(&config, 7), Cpu)
}

/// Every parameter's values, by name.
fn weights(m: &Model<Cpu>) -> Vec<(String, Vec<f32>)> {
    let mut w: Vec<_> = m
        .to_tensor_map()
        .into_iter()
        .map(|(k, t)| (k, t.data().to_vec()))
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn settings(loss: &LossConfig) -> UpdateSettings<'_> {
    UpdateSettings {
        loss,
        sequence_ratio: false,
        micro: 2,
        chunk: 16,
        recompute: false,
        comm: &crate::dist::Solo,
    }
}

#[test]
fn old_logprobs_make_samples_of_the_kept_rollouts() {
    let model = tiny_model();
    let loss = LossConfig::default();
    let mut trajs = vec![
        traj("t0", Some("a"), ""),
        traj("t11", None, ""),
        traj("t222", Some("a"), ""),
    ];
    let kept = [0, 2];
    let expected = sequence_logprobs(&model, &[&trajs[0], &trajs[2]], 16);
    // Sampled log-probs 0.25 above the recomputed ones.
    for (&i, e) in kept.iter().zip(&expected) {
        let t = &mut trajs[i];
        for ((s, &m), &e) in t.sample_logprobs.iter_mut().zip(&t.loss_mask).zip(e) {
            if m == 1 {
                *s = e + 0.25;
            }
        }
    }
    let adv = Advantages {
        turns: vec![vec![1.0, -0.5], vec![0.25, 0.25]],
        zero_groups: 0,
        groups: 1,
    };
    let (samples, delta) = old_logprobs(&model, None, &trajs, &kept, &adv, &settings(&loss));
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[1].traj.id, "t222");
    assert_eq!(samples[0].old, expected[0]);
    assert_eq!(samples[1].old, expected[1]);
    assert!(samples[0].old[3] < 0.0 && samples[0].old[6] == 0.0);
    assert_eq!(samples[0].reference, vec![0.0; 12]);
    assert_eq!(samples[0].adv, spread_over_tokens(&trajs[0], &[1.0, -0.5]));
    assert!((delta.mean() - 0.25).abs() < 1e-5, "{delta:?}");
    // With a reference policy its log-probs come along.
    let (with_ref, _) = old_logprobs(&model, Some(&model), &trajs, &kept, &adv, &settings(&loss));
    assert_eq!(with_ref[1].reference, expected[1]);
}

/// The tiny model and the samples of three hand-made rollouts with
/// advantages 1, -1 and 0.5.
fn ppo_world(loss: &LossConfig) -> (Model<Cpu>, Vec<Sample>) {
    let (trajs, _) = hand_made();
    let adv = Advantages {
        turns: vec![vec![1.0, 1.0], vec![-1.0, -1.0], vec![0.5, 0.5]],
        zero_groups: 0,
        groups: 1,
    };
    let model = tiny_model();
    let (samples, _) = old_logprobs(&model, None, &trajs, &[0, 1, 2], &adv, &settings(loss));
    (model, samples)
}

#[test]
fn ppo_epochs_make_epochs_times_mini_batches_updates() {
    let loss = LossConfig::default();
    let (mut model, samples) = ppo_world(&loss);
    let before = weights(&model);
    let optim = |lr| OptimConfig {
        lr,
        ..OptimConfig::default()
    };
    // lr 0: the policy stays the one that sampled, every ratio is 1.
    let mut opt = AdamW::new(&Cpu, optim(0.0), model.param_names(), model.params());
    let mut rng = Rng::new(1);
    let u = ppo_epochs(
        &mut model,
        &mut opt,
        &samples,
        SampleShare::all(samples.len()),
        &settings(&loss),
        (2, 2),
        0.0,
        &mut rng,
        &mut guard(&mut SkipCounts::default(), false),
    )
    .unwrap();
    assert_eq!(u.updates, 4);
    assert_eq!(u.stats.tokens, 2 * 3 * 6);
    assert!((u.stats.ratio_mean() - 1.0).abs() < 1e-5);
    assert_eq!(u.stats.clipped, 0);
    assert!(u.grad_norm > 0.0 && u.grad_norm.is_finite());
    assert_eq!(weights(&model), before);
    // Each epoch draws its order from the run's RNG.
    let mut expect = Rng::new(1);
    shuffled(3, &mut expect);
    shuffled(3, &mut expect);
    assert_eq!(rng.state(), expect.state());
    // A learning rate moves the weights.
    let mut opt = AdamW::new(&Cpu, optim(1e-2), model.param_names(), model.params());
    let u = ppo_epochs(
        &mut model,
        &mut opt,
        &samples,
        SampleShare::all(samples.len()),
        &settings(&loss),
        (1, 3),
        1e-2,
        &mut rng,
        &mut guard(&mut SkipCounts::default(), false),
    )
    .unwrap();
    assert_eq!(u.updates, 3);
    assert_ne!(weights(&model), before);
}

fn guard(counts: &mut SkipCounts, nan_grad: bool) -> Guard<'_> {
    Guard {
        counts,
        limit: 3,
        step: 1,
        nan_loss: false,
        nan_grad,
    }
}

/// A NaN advantage or old log-prob, or a NaN gradient: the update is
/// skipped and counted, the weights and moments stay, its loss statistics
/// are left out; the third skip in a row stops the run.
#[test]
fn non_finite_updates_are_skipped_and_counted() {
    let loss = LossConfig::default();
    let (mut model, clean) = ppo_world(&loss);
    let before = weights(&model);
    let optim = OptimConfig {
        lr: 1e-2,
        ..OptimConfig::default()
    };
    let mut opt = AdamW::new(&Cpu, optim, model.param_names(), model.params());
    let mut counts = SkipCounts::default();
    let mut nan_adv = clean.clone();
    nan_adv[1].adv[4] = f32::NAN;
    let mut nan_old = clean.clone();
    nan_old[2].old[10] = f32::NEG_INFINITY;
    let cases = [(&nan_adv, false), (&nan_old, false), (&clean, true)];
    for (i, (samples, nan_grad)) in cases.into_iter().enumerate() {
        let r = ppo_epochs(
            &mut model,
            &mut opt,
            samples,
            SampleShare::all(samples.len()),
            &settings(&loss),
            (1, 1),
            1e-2,
            &mut Rng::new(1),
            &mut guard(&mut counts, nan_grad),
        );
        assert_eq!(weights(&model), before, "case {i}");
        assert!(opt.m.iter().all(|m| m.data().iter().all(|&x| x == 0.0)));
        assert_eq!(opt.step, 0);
        if i < 2 {
            let u = r.unwrap();
            assert_eq!((u.updates, u.skipped, u.stats.tokens), (0, 1, 0));
            assert!(u.grad_norm.is_nan());
        } else {
            let e = r.expect_err("the third skip in a row stops").to_string();
            assert!(e.contains("3 updates in a row"), "{e}");
            assert!(e.contains("non-finite gradient norm"), "{e}");
        }
    }
    assert_eq!(
        counts,
        SkipCounts {
            total: 3,
            in_a_row: 3
        }
    );
    // A finite update afterwards applies and resets the run of skips.
    let u = ppo_epochs(
        &mut model,
        &mut opt,
        &clean,
        SampleShare::all(clean.len()),
        &settings(&loss),
        (1, 1),
        1e-2,
        &mut Rng::new(1),
        &mut guard(&mut counts, false),
    )
    .unwrap();
    assert_eq!((u.updates, u.skipped), (1, 0));
    assert_ne!(weights(&model), before);
    assert_eq!(
        counts,
        SkipCounts {
            total: 3,
            in_a_row: 0
        }
    );
}
