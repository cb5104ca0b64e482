//! Demonstrations of the search agent over a synthetic world, in each
//! [`Style`]; what `igpo sft` learns from.

use serde::Serialize;
use serde_json::{json, Value};

use super::{Question, SynthError};
use crate::rng::Rng;
use crate::rollout::protocol::tool_response_content;
use crate::tokenizer::Message;

/// One assistant turn of a demonstration and the tool result it gets.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoTurn {
    /// The assistant's text (what the policy generates).
    pub text: String,
    /// The tool's output for this turn's call (None for the answer turn).
    pub result: Option<String>,
}

/// How a demonstration behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// Searches every hop, then answers.
    Full,
    /// 2-hop: answers the intermediate entity after the first search.
    StopsEarly,
    /// Answers without searching: the question's own entity (always wrong,
    /// but copied like every other answer: the answer is always the last
    /// name of the turn's think, so the answer position never teaches noise).
    NoSearch,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Demo {
    pub question: String,
    pub style: Style,
    pub turns: Vec<DemoTurn>,
}

impl Demo {
    /// The chat transcript `igpo sft` reads: system, user, then assistant
    /// turns with each tool result as a user message in `<tool_response>`.
    pub fn messages(&self, system: &str) -> Vec<Message> {
        let mut m = vec![
            Message::new("system", system),
            Message::new("user", &self.question),
        ];
        for t in &self.turns {
            m.push(Message::new("assistant", &t.text));
            if let Some(r) = &t.result {
                m.push(Message::new("user", &tool_response_content(r)));
            }
        }
        m
    }
}

fn tool_call_text(tool: &str, query: &str) -> String {
    format!(
        "<tool_call>{{\"name\": {}, \"arguments\": {{\"query\": {}}}}}</tool_call>",
        Value::String(tool.into()),
        Value::String(query.into())
    )
}

/// The arguments the agent passes to the tool for `query` (the parsed
/// `arguments` object, serialized compactly).
pub fn search_arguments(query: &str) -> String {
    json!({ "query": query }).to_string()
}

/// Builds the demonstration of `q`. `search` maps a query to the tool's
/// output; returns None when a hop's gold passage is not in the output (a
/// demonstration must never answer from nothing).
pub fn demonstrate(
    q: &Question,
    style: Style,
    tool: &str,
    search: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Option<Demo>, SynthError> {
    let mut turns = vec![];
    if style == Style::NoSearch {
        turns.push(DemoTurn {
            text: format!(
                "<think>The answer is {0}.</think>\n<answer> {0} </answer>",
                q.subject
            ),
            result: None,
        });
    } else {
        let searched = if style == Style::StopsEarly {
            1
        } else {
            q.hops.len()
        };
        let mut note = "I need to search.".to_string();
        for hop in &q.hops[..searched] {
            let result = search(&hop.query).map_err(SynthError::Search)?;
            if !result.contains(&hop.fact) {
                return Ok(None);
            }
            turns.push(DemoTurn {
                text: format!(
                    "<think>{note}</think>\n{}",
                    tool_call_text(tool, &hop.query)
                ),
                result: Some(result),
            });
            note = hop.fact.clone();
        }
        let answer = &q.hops[searched - 1].answer;
        turns.push(DemoTurn {
            text: format!("<think>The answer is {answer}.</think>\n<answer> {answer} </answer>"),
            result: None,
        });
    }
    Ok(Some(Demo {
        question: q.question.clone(),
        style,
        turns,
    }))
}

/// The style of each train question's demonstration: `lazy` of the 2-hop
/// ones are lazy (alternately stopping early and not searching).
pub fn styles(questions: &[Question], lazy: f64, rng: &mut Rng) -> Vec<Style> {
    let mut alternate = false;
    questions
        .iter()
        .map(|q| {
            if q.hops.len() < 2 || rng.uniform() >= lazy {
                Style::Full
            } else {
                alternate = !alternate;
                if alternate {
                    Style::StopsEarly
                } else {
                    Style::NoSearch
                }
            }
        })
        .collect()
}
