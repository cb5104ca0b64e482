//! The real SmolLM2-135M-Instruct, imported from its GGUF by `cargo xtask
//! test`, answers a question correctly under greedy decoding.

mod common;

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
    assert!(
        tok.chat.default_system.is_some(),
        "the imported chat template should carry SmolLM2's default system prompt"
    );
    let prompt = tok
        .encode_chat(
            &[Message::new("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let im_end = tok.token_id("<|im_end|>").expect("ChatML end token");
    let opts = GenerateOptions {
        max_new_tokens: 24,
        sampling: SamplingParams::default(),
        stop_tokens: vec![im_end],
        seed: 0,
    };
    let out = generate(&model, &[prompt], &opts, |_, _| {});
    let text = tok.decode(&out[0].tokens, true).unwrap();
    eprintln!("SmolLM2 answered: {text:?}");
    assert!(text.contains("Paris"), "expected Paris in {text:?}");
    assert_eq!(
        out[0].stop,
        StopReason::StopToken,
        "answer should end with <|im_end|>"
    );
}
