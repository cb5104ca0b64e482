//! The tiny RL world of the `igpo train` tests (engine/tests/rl_train.rs,
//! tensorboard.rs): a random Qwen2 with the real tokenizer, six capital-city
//! passages and questions, and a run file over the real plugins.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use igpo::model::init::{random_weights, write_model_dir};
use igpo::tensor::DType;

use crate::common;

/// A tiny random Qwen2 with the real Qwen2.5 tokenizer, a small corpus and
/// a small question file.
pub fn setup(dir: &Path) {
    let tok = common::data_dir().join("qwen2.5-tokenizer.json");
    let config = common::tiny_qwen2(4096);
    write_model_dir(
        &dir.join("model"),
        &config,
        &random_weights(&config, 11),
        DType::F32,
        Some(&tok),
    )
    .unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let facts = [
        ("Paris", "France", "Paris is the capital of France."),
        ("Rome", "Italy", "Rome is the capital of Italy."),
        ("Madrid", "Spain", "Madrid is the capital of Spain."),
        ("Berlin", "Germany", "Berlin is the capital of Germany."),
        ("Lisbon", "Portugal", "Lisbon is the capital of Portugal."),
        ("Vienna", "Austria", "Vienna is the capital of Austria."),
    ];
    let mut corpus = String::new();
    let mut qa = String::new();
    for (i, (city, country, text)) in facts.iter().enumerate() {
        corpus += &format!("{{\"id\":\"p{i}\",\"title\":\"{country}\",\"text\":\"{text}\"}}\n");
        qa += &format!(
            "{{\"id\":\"q{i}\",\"question\":\"What is the capital of {country}?\",\"golden_answers\":[\"{city}\"]}}\n"
        );
    }
    std::fs::write(data.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(data.join("qa.jsonl"), qa).unwrap();
}

pub fn run_file(dir: &Path, plugins: &Path, extra_rl: &str, extra_train: &str) -> PathBuf {
    let p = plugins.display();
    let text = format!(
        r#"model = "model"

[agent]
max_turns = 2
max_new_tokens_per_turn = 12
max_new_tokens_per_rollout = 40
max_tool_result_tokens = 64

[[tools]]
path = "{p}/bm25-search.wasm"
readonly_dir = "data"
config = {{ k = 1 }}

[dataset]
split = "train"
[dataset.plugin]
path = "{p}/qa-dataset.wasm"
readonly_dir = "data"
config = {{ file = "qa.jsonl", dev_size = 2 }}

[reward]
path = "{p}/qa-reward.wasm"

[eval]
limit = 2
every = 2

[rl]
group_size = 3
prompts_per_step = 2
{extra_rl}

[loss]
kl_beta = 0.01
# Every advantage is 0 for a model that never answers: the entropy bonus
# alone moves the weights, so resuming has something to get right.
entropy_coef = 0.01

[optim]
lr = 1e-3

[train]
run_dir = "run"
steps = 2
micro_batch = 4
logprob_chunk = 40000
checkpoint_every = 1
keep_last = 5
{extra_train}
"#
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}
