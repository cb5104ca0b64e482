//! IGPO against GRPO on the same real rollouts: SmolLM2-135M tuned to call
//! the search tool (`cargo xtask test` makes it, `IGPO_SMOLLM2_TOOL_DIR`),
//! SQuAD questions, the real bm25-search / qa-dataset / qa-reward plugins.
//! Both runs sample the same trajectories (same seed, same weights); IGPO's
//! information gain keeps every group informative, GRPO's outcome-only
//! advantage collapses in groups whose answers score the same.

mod common;
mod plugins_support;

use std::path::{Path, PathBuf};

use igpo::train::{run_train, RlMetrics, RlRunConfig, RlRunOptions};

fn tool_model(test: &str) -> Option<PathBuf> {
    match std::env::var_os("IGPO_SMOLLM2_TOOL_DIR").map(PathBuf::from) {
        Some(d) if d.join("config.json").exists() => Some(d),
        _ => {
            eprintln!(
                "skipped {test}: IGPO_SMOLLM2_TOOL_DIR is not set (cargo xtask test sets it)"
            );
            None
        }
    }
}

fn one_step(dir: &Path, model: &Path, plugins: &Path, estimator: &str) -> RlMetrics {
    let data = common::shared_data();
    let text = format!(
        r#"model = "{model}"

[agent]
max_turns = 2
max_new_tokens_per_turn = 64
max_new_tokens_per_rollout = 128
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
estimator = "{estimator}"
group_size = 3
prompts_per_step = 3

[loss]
kl_beta = 0.0

[train]
run_dir = "run-{estimator}"
steps = 1
micro_batch = 3
checkpoint_every = 0
"#,
        model = model.display(),
        p = plugins.display(),
        data = data.display(),
    );
    let path = dir.join(format!("{estimator}.toml"));
    std::fs::write(&path, &text).unwrap();
    let cfg = RlRunConfig::load(&path).unwrap();
    run_train(&cfg, &text, &RlRunOptions::default())
        .unwrap()
        .metrics
        .remove(0)
}

#[test]
fn igpo_keeps_groups_informative_where_grpo_collapses() {
    let (Some(model), Some(plugins)) = (
        tool_model("igpo_keeps_groups_informative_where_grpo_collapses"),
        plugins_support::plugin_dir("igpo_keeps_groups_informative_where_grpo_collapses"),
    ) else {
        return;
    };
    let dir = plugins_support::scratch("rl_smollm2");
    let passages = igpo::data::build_corpus(
        Some(&common::shared_data().join("squad-dev-v1.1.json")),
        Some(&common::shared_data().join("wiki-summaries-en.json")),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    igpo::data::write_jsonl(&dir.join("corpus/corpus.jsonl"), &passages).unwrap();

    let igpo = one_step(&dir, &model, &plugins, "igpo");
    let grpo = one_step(&dir, &model, &plugins, "grpo");
    eprintln!("igpo: {igpo:?}\ngrpo: {grpo:?}");
    // The same rollouts: same answers and turns.
    assert_eq!((igpo.f1, igpo.mean_turns), (grpo.f1, grpo.mean_turns));
    // The tuned model searches, so turns have information gain.
    assert!(
        igpo.mean_turns > 1.0 && !igpo.ig_mean.is_empty(),
        "{igpo:?}"
    );
    assert!(igpo.ig_std[0] > 0.0);
    assert_eq!(igpo.zero_adv_ratio, 0.0);
    assert!(grpo.zero_adv_ratio >= igpo.zero_adv_ratio);
    // One epoch, one mini-batch: on policy.
    for m in [&igpo, &grpo] {
        assert!(
            (m.ratio_mean - 1.0).abs() < 1e-6 && m.clip_frac == 0.0,
            "{m:?}"
        );
        assert!(m.logprob_delta < 1e-4, "{m:?}");
    }
}
