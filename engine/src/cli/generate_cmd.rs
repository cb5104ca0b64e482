//! `igpo generate`: stream a reply from a model to one prompt.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use super::{open_device, CliResult, Device};
use crate::backend::Backend;
use crate::rollout::{generate, stop_tokens, GenerateOptions, SamplingParams};
use crate::tokenizer::{Message, StreamDecoder, Tokenizer};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// User message.
    #[arg(long)]
    prompt: String,
    /// System message (default: the one in the model's chat template, if any).
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt as plain text, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 = no top-k cut.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run(a: GenerateArgs) -> CliResult {
    let backend = open_device(&a.device)?;
    crate::with_backend!(backend, b => generate_on(b, a))
}

fn generate_on<B: Backend>(backend: B, a: GenerateArgs) -> CliResult {
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        return Err(format!("--top-p must be in (0, 1], got {}", a.top_p).into());
    }
    if a.temperature < 0.0 || !a.temperature.is_finite() {
        return Err(format!("--temperature must be >= 0, got {}", a.temperature).into());
    }
    let model = crate::model::load(&a.model, backend)?;
    let tok = Tokenizer::load_dir(&a.model)?;
    let prompt = if a.raw {
        tok.encode(&a.prompt)?
    } else {
        let mut msgs = vec![];
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &a.prompt));
        tok.encode_chat(&msgs, true)?
    };
    let stop_tokens = stop_tokens(&model, &tok);
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
        },
        stop_tokens,
        seed: a.seed,
    };
    let mut stream = StreamDecoder::new();
    let mut stdout = std::io::stdout();
    let mut failure = None;
    let start = Instant::now();
    let out = generate(
        &model,
        std::slice::from_ref(&prompt),
        &opts,
        |_, id| match stream.push(&tok, id) {
            Ok(Some(piece)) => {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
            Ok(None) => {}
            Err(e) => failure = Some(e),
        },
    );
    if let Some(e) = failure {
        return Err(e.into());
    }
    let secs = start.elapsed().as_secs_f64();
    println!();
    tracing::info!(
        "[{} prompt + {} new tokens in {:.2} s, {:.1} tok/s, stop: {:?}]",
        prompt.len(),
        out[0].tokens.len(),
        secs,
        out[0].tokens.len() as f64 / secs,
        out[0].stop
    );
    Ok(())
}
