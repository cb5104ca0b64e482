//! The `igpo train` run file documented from the config structs themselves:
//! `igpo config default` (a commented run file with every key at its
//! default) and `docs/config.md` (one table per section). Defaults come from
//! serializing the `Default` of each section, so they cannot drift; tests
//! check that every key has a meaning here and that the output parses back
//! into the defaults.

use serde::Serialize;

use super::optim::{OptimConfig, ScheduleConfig};
use super::rl::{RlConfig, RlEvalConfig, RlTrainConfig};
use crate::rl::LossConfig;
use crate::rollout::AgentConfig;

/// One documented key.
#[derive(Clone, Copy)]
pub struct KeyDoc {
    pub key: &'static str,
    pub ty: &'static str,
    pub doc: &'static str,
    /// For a key whose value is not a serialized default (required paths,
    /// optional keys): the value shown, `None` = left out of `config default`.
    pub example: Option<&'static str>,
}

const fn key(key: &'static str, ty: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        ty,
        doc,
        example: None,
    }
}

const fn ex(
    key: &'static str,
    ty: &'static str,
    example: &'static str,
    doc: &'static str,
) -> KeyDoc {
    KeyDoc {
        key,
        ty,
        doc,
        example: Some(example),
    }
}

/// A section of the run file.
pub struct Section {
    /// `""` for the top level, `[name]` or `[[name]]` otherwise.
    pub header: &'static str,
    pub doc: &'static str,
    pub keys: Vec<KeyDoc>,
    /// Serialized defaults of the section's struct, when it has one.
    pub defaults: Option<fn() -> toml::Table>,
}

fn table<T: Serialize>(v: T) -> toml::Table {
    toml::Table::try_from(v).expect("config sections serialize to TOML tables")
}

const PLUGIN_KEYS: &[KeyDoc] = &[
    ex("path", "path", "\"plugins/NAME.wasm\"", "The plugin component (`.wasm`), relative to the run file."),
    ex("name", "string", "\"search\"", "Rename a tool (two `search` tools over different corpora); default: the plugin's own name."),
    ex("config", "table", "{}", "JSON-like config handed to the plugin's `init` (see `igpo plugin describe`)."),
    ex("readonly_dir", "path", "\"data\"", "The only directory the plugin may read, mounted read-only at `/data`."),
];

/// Tools only: how the agent sees the tool, where it may reach over HTTP.
const TOOL_KEYS: &[KeyDoc] = &[
    ex("description", "string", "\"Searches Wikipedia (BM25) ...\"", "The description the agent prompt shows instead of the plugin's own: what the corpus behind a search tool is; two plugins over one corpus can present the same text."),
    ex("allow_http", "list of strings", "[\"http://127.0.0.1:8000\"]", "The origins (`http://host:port`, `https://host:port`; port default 80/443) the plugin may send `wasi:http` requests to, compared literally (no name lookup, redirects not followed); anything else is refused with an error naming the origin. None by default: no network."),
];

const LIMIT_KEYS: &[KeyDoc] = &[
    ex(
        "memory_bytes",
        "integer",
        "268435456",
        "Cap on the plugin instance's linear memories, in bytes.",
    ),
    ex(
        "call_timeout_ms",
        "integer",
        "10000",
        "Time limit of one call (`call`, `score`, `get`), in ms; a timeout becomes a tool error.",
    ),
    ex(
        "init_timeout_ms",
        "integer",
        "120000",
        "Time limit of `init` (building an index), in ms.",
    ),
    ex(
        "max_output_bytes",
        "integer",
        "65536",
        "Longest tool output passed on; longer ones are cut with a note.",
    ),
    ex(
        "instances",
        "integer",
        "4",
        "Most instances alive at once (parallel calls); default: the CPU count.",
    ),
    ex(
        "http_timeout_ms",
        "integer",
        "5000",
        "Cap on each timeout of an HTTP request (connect, first byte, between bytes), in ms (`allow_http` plugins); keep it below `call_timeout_ms`, which cannot stop a call while it waits on HTTP.",
    ),
    ex(
        "http_max_response_bytes",
        "integer",
        "1048576",
        "Longest HTTP response body a plugin receives; past it the body ends with an error (`HTTP-response-body-size`).",
    ),
    ex(
        "http_max_concurrent",
        "integer",
        "16",
        "Most HTTP requests of the plugin (all its instances) in flight at once; more wait up to `http_timeout_ms`.",
    ),
];

/// Every section of an `igpo train` run file, in file order.
pub fn train_sections() -> Vec<Section> {
    vec![
        Section {
            header: "",
            doc: "Top level.",
            keys: vec![ex(
                "model",
                "path",
                "\"models/policy\"",
                "Hugging Face model folder: the initial policy and the frozen KL reference (required).",
            )],
            defaults: None,
        },
        Section {
            header: "[agent]",
            doc: "The multi-turn agent: protocol, limits and sampling of rollouts.",
            keys: vec![
                key("protocol", "\"tool_call\" | \"search_tags\"", "Turn format: Qwen2.5 function calling (`<tool_call>`, `<tool_response>`) or Search-R1 (`<search>`, `<information>`)."),
                key("max_turns", "integer", "Tool-calling turns allowed before the rollout is cut (the answer turn comes on top)."),
                key("max_new_tokens_per_turn", "integer", "Generated tokens per turn."),
                key("max_new_tokens_per_rollout", "integer", "Generated tokens per rollout, all turns together."),
                key("max_tool_result_tokens", "integer", "A tool result longer than this is cut with a marker."),
                key("temperature", "float", "Sampling temperature (0 = greedy)."),
                key("top_p", "float", "Nucleus sampling mass (1 = off)."),
                key("top_k", "integer", "Top-k sampling (0 = off)."),
                ex("system_prompt", "string", "\"Answer the question. Search for facts with the search tool, then answer inside <answer> </answer>.\"", "Replaces the generated system prompt that presents the tools and the protocol."),
                key("share_prompt_prefixes", "bool", "Rollouts with the same prompt (a group's G) prefill it once and share its cached keys and values (false: each prefills its own; same tokens)."),
            ],
            defaults: Some(|| table(AgentConfig::default())),
        },
        Section {
            header: "[[tools]]",
            doc: "A tool plugin the agent may call (repeat the section for several; none = closed book).",
            keys: [PLUGIN_KEYS, TOOL_KEYS].concat(),
            defaults: None,
        },
        Section {
            header: "[tools.limits]",
            doc: "Sandbox limits of the tool above (the same table exists for every plugin: `[dataset.plugin.limits]`, `[reward.limits]`).",
            keys: LIMIT_KEYS.to_vec(),
            defaults: None,
        },
        Section {
            header: "[dataset]",
            doc: "Training prompts from a dataset plugin.",
            keys: vec![
                ex("split", "string", "\"train\"", "Named split of the dataset plugin; absent = the whole dataset."),
                ex("limit", "integer", "0", "Use the first `limit` examples; 0 = all."),
            ],
            defaults: None,
        },
        Section {
            header: "[dataset.plugin]",
            doc: "The dataset plugin (keys as for `[[tools]]`).",
            keys: PLUGIN_KEYS.to_vec(),
            defaults: None,
        },
        Section {
            header: "[reward]",
            doc: "The reward plugin: scores final answers (the outcome reward) and may replace per-turn rewards (keys as for `[[tools]]`).",
            keys: PLUGIN_KEYS.to_vec(),
            defaults: None,
        },
        Section {
            header: "[eval]",
            doc: "Dev evaluation before, during and after training (absent = none).",
            keys: vec![
                key("split", "string", "Split of the training dataset plugin to evaluate on."),
                key("limit", "integer", "First `limit` examples; 0 = all."),
                key("every", "integer", "Evaluate every this many steps (and before the first and after the last); 0 = only before and after."),
                key("temperature", "float", "Sampling temperature of the evaluation (0 = greedy)."),
                key("batch", "integer", "Rollouts decoding together."),
            ],
            defaults: Some(|| table(RlEvalConfig::default())),
        },
        Section {
            header: "[rl]",
            doc: "Rollouts per step, rewards and advantages.",
            keys: vec![
                key("estimator", "\"igpo\" | \"ig_only\" | \"f1_only\" | \"grpo\" | \"rloo\" | \"reinforce_pp\" | \"gspo\"", "Advantage estimator: IGPO (information gain + outcome), IG only, F1 only (IGPO's path with the information gain left out), GRPO (outcome only), RLOO, REINFORCE++ (batch-whitened), GSPO (sequence-level ratio)."),
                key("group_size", "integer >= 2", "Rollouts per prompt (G)."),
                key("prompts_per_step", "integer", "Prompts per training step."),
                key("gamma", "float in (0, 1]", "Discount of turn advantages: A_t = a_t + gamma * A_{t+1}."),
                key("normalization", "\"joint\" | \"separate\"", "IGPO: z-score information gain and outcome rewards of a group together, or each kind on its own."),
                key("ig_form", "\"prob_diff\" | \"log_prob_diff\"", "Information gain as the change of p = exp(mean log-prob) of the answer, or of the mean log-prob itself."),
                key("probe_template", "string", "What follows a turn boundary when the ground truth is scored; `{answer}` marks the scored answer tokens."),
                key("probe_answers", "\"first\" | \"max\"", "Probe the first reference answer, or every one and take the most probable."),
                key("score_baselines", "bool", "Also score the ground truth after every turn for estimators that do not reward with it (f1_only, grpo, rloo, reinforce_pp, gspo): never a reward there, but the ground-truth entropy figure and the samples then compare runs; one packed forward per rollout."),
                key("format_penalty", "float", "Outcome reward of a rollout that never answered or left a tag unbalanced."),
                key("rollout_batch", "integer", "Rollouts decoding together."),
            ],
            defaults: Some(|| table(RlConfig::default())),
        },
        Section {
            header: "[loss]",
            doc: "The policy loss.",
            keys: vec![
                key("clip_low", "float", "Lower clip of the importance ratio: 1 - clip_low."),
                key("clip_high", "float", "Upper clip of the importance ratio: 1 + clip_high."),
                key("dual_clip", "float", "Dual-clip constant c (> 1) bounding negative-advantage losses at -A * c; 0 = off."),
                key("kl_beta", "float", "KL-to-reference coefficient; 0 = no reference model (saves its memory)."),
                key("kl_estimator", "\"k1\" | \"k3\" | \"low_var_kl\"", "Per-token KL estimator; low_var_kl is k3 clamped to [-10, 10]."),
                key("entropy_coef", "float", "Entropy bonus coefficient."),
                key("aggregation", "\"token_mean\" | \"seq_mean_token_sum\" | \"seq_mean_token_mean\"", "How token losses of a mini-batch become one number."),
            ],
            defaults: Some(|| table(LossConfig::default())),
        },
        Section {
            header: "[optim]",
            doc: "AdamW.",
            keys: vec![
                key("lr", "float", "Peak learning rate."),
                key("beta1", "float", "First-moment decay."),
                key("beta2", "float", "Second-moment decay."),
                key("eps", "float", "Denominator epsilon."),
                key("weight_decay", "float", "Decoupled weight decay for parameters not matched by `no_decay`."),
                key("no_decay", "list of strings", "Parameters whose name contains one of these get no weight decay."),
                key("grad_clip", "float", "Clip the global gradient norm to this; 0 = off."),
                key("max_consecutive_skips", "integer", "An update whose loss, gradient norm, advantages or log-probs are not finite is skipped (logged, counted as `skipped_updates` in metrics.jsonl); this many skips in a row stop the run with an error (>= 1)."),
                key("zero_stage", "integer", "Data parallel (docs/distributed.md): 0 keeps the whole AdamW state on every rank; 1 shards it (ZeRO-1): each rank keeps the moments of, and updates, an equal share of the parameters' rows, then broadcasts them (the same numbers as 0); 2 also reduces the gradients to their rows' owners only (one reduce-scatter instead of an all-reduce; the norm adds the ranks' shares, so the last bits of the norm may differ). A single process ignores it."),
                key("bucket_mb", "float", "Data parallel: the ranks' gradients are summed in buckets of about this many MiB (whole layers, last layer first), each as soon as a rank's last backward of the step is done with it, so the sums overlap the rest of the backward; 0 sums everything after the backward. The same sums either way (bit for bit on 2 ranks). A single process ignores it."),
            ],
            defaults: Some(|| table(OptimConfig::default())),
        },
        Section {
            header: "[schedule]",
            doc: "Learning-rate schedule over training steps.",
            keys: vec![
                key("warmup_steps", "integer", "Linear warmup steps."),
                key("kind", "\"constant\" | \"cosine\"", "Shape after warmup."),
                key("min_lr_ratio", "float", "Cosine decays to lr * min_lr_ratio at the last step."),
            ],
            defaults: Some(|| table(ScheduleConfig::default())),
        },
        Section {
            header: "[train]",
            doc: "The step loop.",
            keys: vec![
                key("run_dir", "path", "Output folder: config.toml, metrics.jsonl, eval.jsonl, samples/, checkpoints/, tb/ (TensorBoard events: train/<key>, eval/<key>)."),
                key("steps", "integer", "Training steps (one rollout batch each)."),
                key("ppo_epochs", "integer", "Passes over a step's rollouts."),
                key("mini_batches", "integer", "Optimizer updates per epoch (the rollouts split evenly)."),
                key("micro_batch", "integer", "Rollouts per forward/backward (memory, not math)."),
                key("seed", "integer", "Seed of every random draw (data order, sampling)."),
                key("checkpoint_every", "integer", "Checkpoint every this many steps (and at the end); 0 = only at the end."),
                key("keep_last", "integer", "Checkpoints kept."),
                key("checkpoint_dtype", "\"bf16\" | \"f16\" | \"f32\"", "Dtype of each checkpoint's `model/` folder (what transformers or vLLM load); `state/` keeps the f32 master weights and AdamW moments for an exact resume."),
                key("logprob_chunk", "integer", "Vocabulary rows per chunk of the fused log-prob op."),
                key("recompute_activations", "bool", "Keep only each layer's input and recompute the rest in the backward."),
                key("samples_per_step", "integer", "Trajectories written to samples/step-N.jsonl per step."),
            ],
            defaults: Some(|| table(RlTrainConfig::default())),
        },
    ]
}

fn comment(out: &mut String, text: &str) {
    out.push_str("# ");
    out.push_str(text);
    out.push('\n');
}

/// `igpo config default`: a commented run file with every key.
pub fn default_train_toml() -> String {
    let mut out = String::from(
        "# An `igpo train` run file with every key at its default (reference: docs/config.md).\n\
         # Relative paths are relative to this file. Keys shown commented out are optional.\n",
    );
    for s in train_sections() {
        out.push('\n');
        comment(&mut out, s.doc);
        if !s.header.is_empty() {
            out.push_str(s.header);
            out.push('\n');
        }
        let defaults = s.defaults.map(|f| f());
        for k in &s.keys {
            comment(&mut out, &format!("{} ({})", k.doc, k.ty));
            match defaults.as_ref().and_then(|d| d.get(k.key)) {
                Some(v) => out.push_str(&format!("{} = {}\n", k.key, v)),
                None => {
                    let v = k.example.expect("a key without a default has an example");
                    let required = s.header.is_empty() || k.key == "path";
                    if required {
                        out.push_str(&format!("{} = {v}\n", k.key));
                    } else {
                        out.push_str(&format!("# {} = {v}\n", k.key));
                    }
                }
            }
        }
    }
    out
}

/// The names users know from verl and TRL, and the igpo key that does the
/// same: (verl, TRL, igpo key, note). A test checks every igpo key exists.
const FROM_VERL_AND_TRL: &[(&str, &str, &str, &str)] = &[
    ("`data.train_batch_size`", "(prompts per step: `per_device_train_batch_size` x devices / `num_generations`)", "rl.prompts_per_step", ""),
    ("`actor_rollout_ref.rollout.n`", "`num_generations`", "rl.group_size", "rollouts per prompt (G)"),
    ("`algorithm.adv_estimator`", "the trainer class (`GRPOTrainer`, `RLOOTrainer`)", "rl.estimator", "`grpo`, `rloo`, `reinforce_plus_plus` -> `reinforce_pp`; GAE/PPO with a critic is not implemented"),
    ("`algorithm.gamma`", "-", "rl.gamma", "discount over turns (IGPO), not tokens"),
    ("`actor_rollout_ref.actor.kl_loss_coef` (with `use_kl_loss`)", "`beta`", "loss.kl_beta", "0 = no reference model"),
    ("`actor_rollout_ref.actor.kl_loss_type`", "- (k3)", "loss.kl_estimator", "`kl`/`k1` -> `k1`, `k3`, `low_var_kl`"),
    ("`actor_rollout_ref.actor.clip_ratio_low` / `clip_ratio_high` (`clip_ratio`)", "`epsilon` / `epsilon_high`", "loss.clip_low", "and `loss.clip_high`"),
    ("`actor_rollout_ref.actor.clip_ratio_c`", "-", "loss.dual_clip", "0 = off"),
    ("`actor_rollout_ref.actor.loss_agg_mode`", "`loss_type` (`grpo` ~ `seq_mean_token_mean`, `bnpo`/`dapo` ~ `token_mean`)", "loss.aggregation", "`token-mean` -> `token_mean`, `seq-mean-token-sum` -> `seq_mean_token_sum`, `seq-mean-token-mean` -> `seq_mean_token_mean`"),
    ("`actor_rollout_ref.actor.entropy_coeff`", "-", "loss.entropy_coef", ""),
    ("`actor_rollout_ref.actor.ppo_epochs`", "`num_iterations`", "train.ppo_epochs", ""),
    ("`actor_rollout_ref.actor.ppo_mini_batch_size`", "`steps_per_generation`", "train.mini_batches", "igpo counts updates per epoch: `train_batch_size / ppo_mini_batch_size`"),
    ("`actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu`", "`per_device_train_batch_size`", "train.micro_batch", "memory, not math"),
    ("`actor_rollout_ref.actor.optim.lr`", "`learning_rate`", "optim.lr", ""),
    ("`actor_rollout_ref.actor.optim.weight_decay`", "`weight_decay`", "optim.weight_decay", ""),
    ("`actor_rollout_ref.actor.grad_clip`", "`max_grad_norm`", "optim.grad_clip", ""),
    ("`actor_rollout_ref.actor.optim.lr_warmup_steps`", "`warmup_steps`", "schedule.warmup_steps", ""),
    ("`actor_rollout_ref.actor.optim.warmup_style`", "`lr_scheduler_type`", "schedule.kind", "`constant` or `cosine`"),
    ("`actor_rollout_ref.actor.optim.min_lr_ratio`", "-", "schedule.min_lr_ratio", ""),
    ("`actor_rollout_ref.rollout.temperature`", "`temperature`", "agent.temperature", ""),
    ("`actor_rollout_ref.rollout.top_p`", "`top_p`", "agent.top_p", ""),
    ("`actor_rollout_ref.rollout.top_k`", "`top_k`", "agent.top_k", ""),
    ("`actor_rollout_ref.rollout.multi_turn.max_assistant_turns` (Search-R1: `max_turns`)", "-", "agent.max_turns", "tool-calling turns; the answer turn comes on top"),
    ("`data.max_response_length`", "`max_completion_length`", "agent.max_new_tokens_per_rollout", ""),
    ("`trainer.total_training_steps`", "`max_steps`", "train.steps", ""),
    ("`trainer.save_freq`", "`save_steps`", "train.checkpoint_every", ""),
    ("`trainer.max_actor_ckpt_to_keep`", "`save_total_limit`", "train.keep_last", ""),
    ("`trainer.default_local_dir`", "`output_dir`", "train.run_dir", ""),
    ("`trainer.test_freq`", "`eval_steps`", "eval.every", ""),
    ("`data.seed` / `trainer.seed`", "`seed`", "train.seed", ""),
    ("`actor_rollout_ref.model.path`", "`model` (trainer argument)", "model", "a Hugging Face folder or an igpo checkpoint"),
];

/// docs/config.md.
pub fn config_markdown() -> String {
    let mut out = String::from(
        "# `igpo train` run file reference\n\n\
         Generated by `igpo config doc` from the config structs (a test fails when this file \
         is stale). `igpo config default > run.toml` prints the same keys as a commented run \
         file. Unknown keys are errors; relative paths are relative to the run file. `igpo sft` \
         files share `[optim]` and `[schedule]`; `igpo eval` / `igpo rollout` files share \
         `model`, `[agent]`, `[[tools]]`, `[dataset]` and `[reward]`.\n\n\
         Any key can be changed for one run without editing the file: `igpo train --config \
         run.toml --set rl.group_size=8 --set tools.0.config.k=3` (a dotted path, array \
         entries by index; the value is TOML, or a plain string when it does not parse as \
         TOML; paths stay relative to the run file). The run folder's `config.toml` records \
         the result.\n",
    );
    for s in train_sections() {
        let title = if s.header.is_empty() {
            "top level"
        } else {
            s.header
        };
        out.push_str(&format!("\n## `{title}`\n\n{}\n\n", s.doc));
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
        let defaults = s.defaults.map(|f| f());
        for k in &s.keys {
            let default = match defaults.as_ref().and_then(|d| d.get(k.key)) {
                Some(v) => format!(
                    "`{}`",
                    v.to_string().replace('\n', "\\n").replace('|', "\\|")
                ),
                None if s.header.is_empty() || k.key == "path" => "required".to_string(),
                None => match k.example {
                    Some(e) if s.header.ends_with("limits]") || s.header == "[dataset]" => {
                        format!("`{e}`")
                    }
                    _ => "none".to_string(),
                },
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.key,
                k.ty.replace('|', "\\|"),
                default,
                k.doc.replace('|', "\\|")
            ));
        }
    }
    out.push_str(
        "\n## From verl and TRL\n\n\
         The settings users know from verl (`ppo_trainer.yaml`) and TRL (`GRPOConfig`), and \
         the igpo key that does the same. `-`: no such setting there.\n\n\
         | verl | TRL | igpo | note |\n|---|---|---|---|\n",
    );
    for (verl, trl, key, note) in FROM_VERL_AND_TRL {
        out.push_str(&format!(
            "| {verl} | {trl} | `{key}` | {} |\n",
            note.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_igpo_key_of_the_verl_and_trl_table_exists() {
        let known: Vec<String> = train_sections()
            .iter()
            .flat_map(|s| {
                let section = s.header.trim_matches(|c| c == '[' || c == ']').to_string();
                s.keys.iter().map(move |k| {
                    if section.is_empty() {
                        k.key.to_string()
                    } else {
                        format!("{section}.{}", k.key)
                    }
                })
            })
            .collect();
        for (_, _, key, _) in FROM_VERL_AND_TRL {
            assert!(
                known.iter().any(|k| k == key),
                "`{key}` is not a run-file key"
            );
        }
        // The check itself can fail.
        assert!(!known.iter().any(|k| k == "rl.rollout_n"));
    }

    use super::*;
    use crate::train::rl::RlRunConfig;

    #[test]
    fn every_serialized_key_is_documented_and_every_documented_key_exists() {
        for s in train_sections() {
            let Some(f) = s.defaults else { continue };
            let d = f();
            for k in d.keys() {
                assert!(
                    s.keys.iter().any(|doc| doc.key == k),
                    "{}: key `{k}` has no documentation in config_doc.rs",
                    s.header
                );
            }
            for doc in &s.keys {
                assert!(
                    d.contains_key(doc.key) || doc.example.is_some(),
                    "{}: documented key `{}` is not a field",
                    s.header,
                    doc.key
                );
            }
        }
    }

    #[test]
    fn default_config_parses_back_into_the_defaults() {
        let text = default_train_toml();
        let cfg: RlRunConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.agent, AgentConfig::default());
        assert_eq!(cfg.rl, RlConfig::default());
        assert_eq!(cfg.loss, LossConfig::default());
        assert_eq!(cfg.optim, OptimConfig::default());
        assert_eq!(cfg.schedule, ScheduleConfig::default());
        assert_eq!(cfg.train, RlTrainConfig::default());
        assert_eq!(cfg.eval, Some(RlEvalConfig::default()));
        assert_eq!(cfg.tools.len(), 1);
        // Every optional key shown commented out is a real key: uncommented,
        // the file still parses (unknown keys are errors).
        let all: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.contains('(') => rest,
                _ => l,
            })
            .map(|l| l.to_string() + "\n")
            .collect();
        let full: RlRunConfig = toml::from_str(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert!(full.agent.system_prompt.is_some());
        assert_eq!(full.tools[0].name.as_deref(), Some("search"));
    }

    #[test]
    fn docs_config_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == config_markdown(),
            "docs/config.md is stale: run `cargo run -p igpo -- config doc > docs/config.md`"
        );
    }
}
