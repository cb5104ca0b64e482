//! IGPO against GRPO on the same real rollouts: SmolLM2-135M tuned to call
//! the search tool (`cargo xtask test` makes it, `IGPO_SMOLLM2_TOOL_DIR`),
//! SQuAD questions, the real bm25-search / qa-dataset / qa-reward plugins.
//! One IGPO step; GRPO's advantages are then computed on the very same
//! rollouts (their rewards from the step's samples): IGPO's information gain
//! keeps every group informative, GRPO's outcome-only advantage collapses in
//! groups whose answers score the same.

use crate::common;
use crate::plugins_support;

use std::path::Path;

use igpo::backend::Cpu;
use igpo::rl::{advantages, Estimator, Normalization, RolloutRewards};
use igpo::train::{run_train, RlMetrics, RlRunConfig, RlRunOptions};

fn one_step(dir: &Path, model: &Path, plugins: &Path) -> RlMetrics {
    let data = common::data_dir();
    let text = format!(
        r#"model = "{model}"

[agent]
max_turns = 2
max_new_tokens_per_turn = 96
max_new_tokens_per_rollout = 192
max_tool_result_tokens = 160

[[tools]]
path = "{p}/bm25-search.wasm"
readonly_dir = "corpus"
config = {{ k = 1, max_chars = 400 }}

[dataset]
limit = 3
[dataset.plugin]
path = "{p}/qa-dataset.wasm"
readonly_dir = "{data}"
config = {{ file = "squad-dev-v1.1.json", shuffle = true, seed = 7 }}

[reward]
path = "{p}/qa-reward.wasm"

[rl]
estimator = "igpo"
group_size = 3
prompts_per_step = 3

[loss]
kl_beta = 0.0

[train]
run_dir = "run"
steps = 1
micro_batch = 3
checkpoint_every = 0
samples_per_step = 9
"#,
        model = model.display(),
        p = plugins.display(),
        data = data.display(),
    );
    let path = dir.join("igpo.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = RlRunConfig::load(&path).unwrap();
    run_train(Cpu, &cfg, &text, &RlRunOptions::default())
        .unwrap()
        .metrics
        .remove(0)
}

#[test]
fn igpo_keeps_groups_informative_where_grpo_collapses() {
    let (Some(model), Some(plugins)) = (
        common::smollm2_tool_dir("igpo_keeps_groups_informative_where_grpo_collapses"),
        plugins_support::plugin_dir("igpo_keeps_groups_informative_where_grpo_collapses"),
    ) else {
        return;
    };
    let dir = plugins_support::scratch("rl_smollm2");
    let passages = igpo::data::build_corpus(
        Some(&common::data_dir().join("squad-dev-v1.1.json")),
        Some(&common::data_dir().join("wiki-summaries-en.json")),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    igpo::data::write_jsonl(&dir.join("corpus/corpus.jsonl"), &passages).unwrap();

    let igpo = one_step(&dir, &model, &plugins);
    eprintln!("igpo: {igpo:?}");
    // The tuned model searches, so turns have information gain.
    assert!(
        igpo.mean_turns > 1.0 && !igpo.ig_mean.is_empty(),
        "{igpo:?}"
    );
    assert!(igpo.ig_std[0] > 0.0);
    assert_eq!(igpo.zero_adv_ratio, 0.0);
    // One epoch, one mini-batch: on policy.
    assert!(
        (igpo.ratio_mean - 1.0).abs() < 1e-6 && igpo.clip_frac == 0.0,
        "{igpo:?}"
    );
    assert!(igpo.logprob_delta < 1e-4, "{igpo:?}");

    // GRPO on the same rollouts: the outcome rewards of the step's samples.
    let samples = std::fs::read_to_string(dir.join("run/samples/step-1.jsonl")).unwrap();
    let rewards: Vec<RolloutRewards> = samples
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let tr: Vec<f64> = v["turn_rewards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!(v["gt_probability"].as_array().unwrap().iter().all(|p| {
                let p = p.as_f64().unwrap();
                p > 0.0 && p <= 1.0
            }));
            RolloutRewards {
                ig: tr[..tr.len() - 1].to_vec(),
                outcome: tr[tr.len() - 1],
            }
        })
        .collect();
    assert_eq!(rewards.len(), 9);
    let groups: Vec<Vec<RolloutRewards>> = rewards.chunks(3).map(|g| g.to_vec()).collect();
    let again = advantages(Estimator::Igpo, Normalization::Joint, 1.0, &groups, &[]);
    let grpo = advantages(Estimator::Grpo, Normalization::Joint, 1.0, &groups, &[]);
    eprintln!(
        "zero-advantage groups: igpo {} / grpo {} of {}",
        again.zero_groups, grpo.zero_groups, grpo.groups
    );
    assert_eq!(again.zero_ratio(), igpo.zero_adv_ratio);
    assert!(grpo.zero_groups >= again.zero_groups);
    for (g, group) in groups.iter().enumerate() {
        let same = group.iter().all(|r| r.outcome == group[0].outcome);
        let igs = group.iter().flat_map(|r| r.ig.iter());
        let ig_varies = igs
            .clone()
            .any(|x| (x - group[0].ig.first().copied().unwrap_or(0.0)).abs() > 1e-9);
        if same {
            assert!(grpo.turns[g * 3..g * 3 + 3]
                .iter()
                .flatten()
                .all(|a| *a == 0.0));
        }
        if ig_varies {
            assert!(again.turns[g * 3..g * 3 + 3]
                .iter()
                .flatten()
                .any(|a| *a != 0.0));
        }
    }
    // Passed: drop the run's SmolLM2 checkpoint (~1.8 GB) so the suite's disk
    // use stays small; a failure keeps it for inspection.
    std::fs::remove_dir_all(&dir).unwrap();
}
