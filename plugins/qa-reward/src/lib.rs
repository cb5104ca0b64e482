//! `qa-reward`: SQuAD-style answer scoring. Answers are normalized (lower
//! case, ASCII punctuation removed, the articles a/an/the removed, spaces
//! collapsed); exact match and word-level F1 take the max over the reference
//! answers. The outcome is F1 by default (`{"outcome": "em"}` for EM), minus
//! `format_penalty` when the agent never gave a final answer. Per-turn
//! rewards: `"turn_rewards": "engine"` (default: leave the engine's
//! information gain), `"zero"` (outcome only) or `"clipped_ig"` (the change
//! of ground-truth probability per turn, clipped to +-`ig_clip`).

wit_bindgen::generate!({ path: "../../wit", world: "reward" });

use std::cell::RefCell;
use std::collections::HashMap;

use exports::igpo::plugins::reward_api::{Guest, RewardOutput, Trajectory};
use igpo::plugins::types::PluginInfo;
use serde::Deserialize;

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    outcome: Outcome,
    #[serde(default)]
    format_penalty: f64,
    #[serde(default)]
    turn_rewards: TurnRewards,
    #[serde(default = "default_clip")]
    ig_clip: f64,
}

fn default_clip() -> f64 {
    1.0
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    #[default]
    F1,
    Em,
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
enum TurnRewards {
    #[default]
    Engine,
    Zero,
    ClippedIg,
}

thread_local! {
    static CONFIG: RefCell<Option<Config>> = const { RefCell::new(None) };
}

/// SQuAD normalization: lower, drop ASCII punctuation, drop the words
/// a/an/the, collapse whitespace. Returns the tokens.
pub fn normalize(s: &str) -> Vec<String> {
    let lowered = s.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // Replace whole words (runs of \w, as Python's regex \b sees them) that
    // are articles with a space.
    let mut out = String::with_capacity(no_punct.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punct.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.split_whitespace().map(str::to_string).collect()
}

pub fn exact_match(pred: &str, truth: &str) -> f64 {
    (normalize(pred) == normalize(truth)) as u8 as f64
}

/// Word-level F1 of normalized tokens (bag of words). When either side is
/// empty after normalization, F1 is 1 if both are, else 0.
pub fn f1(pred: &str, truth: &str) -> f64 {
    let (p, t) = (normalize(pred), normalize(truth));
    if p.is_empty() || t.is_empty() {
        return (p.is_empty() && t.is_empty()) as u8 as f64;
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &t {
        *counts.entry(w).or_default() += 1;
    }
    let mut same = 0i64;
    for w in &p {
        if let Some(c) = counts.get_mut(w.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / t.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

fn best(pred: &str, refs: &[String], f: fn(&str, &str) -> f64) -> f64 {
    refs.iter().map(|r| f(pred, r)).fold(0.0, f64::max)
}

struct QaReward;

impl Guest for QaReward {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "qa-reward".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "SQuAD-style answer scoring: normalized exact match and word F1, max over references; optional format penalty and per-turn reward shaping.".into(),
            config_schema: r#"{"type":"object","additionalProperties":false,"properties":{
"outcome":{"enum":["f1","em"],"default":"f1"},
"format_penalty":{"type":"number","minimum":0,"default":0,"description":"subtracted from the outcome when the agent gave no final answer"},
"turn_rewards":{"enum":["engine","zero","clipped_ig"],"default":"engine"},
"ig_clip":{"type":"number","exclusiveMinimum":0,"default":1}}}"#
                .into(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        let cfg: Config = serde_json::from_str(if config.trim().is_empty() {
            "{}"
        } else {
            &config
        })
        .map_err(|e| format!("config: {e}"))?;
        if !(cfg.format_penalty.is_finite() && cfg.format_penalty >= 0.0) {
            return Err("config: format_penalty must be a finite number >= 0".into());
        }
        if !(cfg.ig_clip.is_finite() && cfg.ig_clip > 0.0) {
            return Err("config: ig_clip must be a finite number > 0".into());
        }
        CONFIG.with(|c| *c.borrow_mut() = Some(cfg));
        Ok(())
    }

    fn score(t: Trajectory) -> Result<RewardOutput, String> {
        let cfg = CONFIG
            .with(|c| c.borrow().clone())
            .ok_or("not initialized")?;
        if t.references.is_empty() {
            return Err("trajectory has no reference answers".into());
        }
        let (em, f1v, answered) = match &t.final_answer {
            Some(a) => (
                best(a, &t.references, exact_match),
                best(a, &t.references, f1),
                true,
            ),
            None => (0.0, 0.0, false),
        };
        let mut outcome = match cfg.outcome {
            Outcome::F1 => f1v,
            Outcome::Em => em,
        };
        if !answered {
            outcome -= cfg.format_penalty;
        }
        let turn_rewards = match cfg.turn_rewards {
            TurnRewards::Engine => None,
            TurnRewards::Zero => Some(vec![0.0; t.turns.len()]),
            TurnRewards::ClippedIg => {
                let mut prev = t
                    .initial_gt_probability
                    .ok_or("clipped_ig needs initial-gt-probability")?;
                let mut v = Vec::with_capacity(t.turns.len());
                let last = t.turns.len().saturating_sub(1);
                for (i, turn) in t.turns.iter().enumerate() {
                    // The answer turn ends the rollout: no probe after it.
                    if i == last && turn.gt_probability.is_none() {
                        v.push(0.0);
                        continue;
                    }
                    let p = turn
                        .gt_probability
                        .ok_or_else(|| format!("clipped_ig: turn {i} has no gt-probability"))?;
                    v.push((p - prev).clamp(-cfg.ig_clip, cfg.ig_clip));
                    prev = p;
                }
                Some(v)
            }
        };
        Ok(RewardOutput {
            outcome,
            turn_rewards,
            details: Some(format!(r#"{{"em":{em},"f1":{f1v},"answered":{answered}}}"#)),
        })
    }
}

export!(QaReward);
