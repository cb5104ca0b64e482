//! The real SmolLM2-135M-Instruct, imported from its GGUF by `cargo xtask
//! test`, answers a question correctly under greedy decoding.

use crate::common;

use igpo::backend::Cpu;
use igpo::rollout::{generate, GenerateOptions, SamplingParams, StopReason};
use igpo::tokenizer::{Message, Tokenizer};

#[test]
fn smollm2_says_paris() {
    let Some(dir) = common::smollm2_dir("smollm2_says_paris") else {
        return;
    };
    let model = igpo::model::load(&dir, Cpu).unwrap();
    let tok = Tokenizer::load_dir(&dir).unwrap();
    let messages = [Message::new("user", "What is the capital of France?")];
    let rendered = tok.chat.render(&messages, None, true).unwrap();
    assert!(
        rendered.contains("You are a helpful AI assistant named SmolLM"),
        "the imported chat template should add SmolLM2's default system prompt: {rendered:?}"
    );
    let prompt = tok.encode_chat(&messages, true).unwrap();
    let closer = tok.chat.turn_closer().expect("the template closes turns");
    let end_id = tok
        .token_id(closer)
        .expect("the closing token is one token");
    let opts = GenerateOptions {
        max_new_tokens: 24,
        sampling: SamplingParams::default(),
        stop_tokens: tok.stop_ids(),
        seed: 0,
    };
    let out = generate(&model, &[prompt], &opts, |_, _| {});
    let text = tok.decode(&out[0].tokens, true).unwrap();
    eprintln!("SmolLM2 answered: {text:?}");
    assert!(text.contains("Paris"), "expected Paris in {text:?}");
    assert_eq!(
        out[0].stop,
        StopReason::StopToken,
        "answer should end with {closer}"
    );
    assert_eq!(out[0].tokens.last(), Some(&end_id));
}
