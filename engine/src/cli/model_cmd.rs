//! `igpo model ...`: init, inspect, import-gguf.

use std::path::PathBuf;

use clap::Subcommand;

use super::{CliResult, Device};
use crate::backend::Fit;
use crate::model::init::{preset, random_weights, write_model_dir, Dims, PRESETS};
use crate::model::{stored_dtype, Arch, MemoryEstimate, ModelConfig, RankMemory};
use crate::tensor::DType;
use crate::tokenizer::Tokenizer;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Write a randomly initialised model folder (tests, benchmarks at real shapes).
    Init(InitArgs),
    /// Describe a model folder: architecture, size, memory needs, and
    /// whether training state fits on `--device` (cpu: MemAvailable; cuda:N:
    /// free GPU memory). Without a GPU, `cuda:N` prints the description, then
    /// fails with one line.
    Inspect {
        dir: PathBuf,
        /// Device to check the training memory estimate against: cpu, or cuda[:N].
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Data-parallel ranks: also print the training state per rank,
        /// replicated and with AdamW's moments sharded (`optim.zero_stage = 1`),
        /// and check the sharded one against the device.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
        ranks: u32,
    },
    /// Convert a GGUF checkpoint into a Hugging Face model folder (bf16).
    ImportGguf { file: PathBuf, out_dir: PathBuf },
    /// Write a clean Hugging Face model folder (config, weights, generation
    /// config, tokenizer files) from a training checkpoint (its f32 master
    /// weights) or any model folder, in the dtype asked for.
    Export {
        /// A checkpoint (`RUN/checkpoints/step-N`) or a model folder.
        checkpoint: PathBuf,
        /// The new folder (must not exist, or be empty).
        out_dir: PathBuf,
        /// bf16, f16 or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
    },
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// Output folder.
    out_dir: PathBuf,
    /// A real model's shape: qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b, smollm2-135m.
    #[arg(long)]
    preset: Option<String>,
    /// qwen2 or llama (when no preset).
    #[arg(long)]
    arch: Option<String>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    kv_heads: Option<usize>,
    #[arg(long)]
    intermediate: Option<usize>,
    /// tokenizer.json to copy into the folder; sets the vocabulary size.
    #[arg(long)]
    vocab_from: PathBuf,
    /// Vocabulary rows (default: the tokenizer's size, or the preset's).
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long)]
    tied: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// On-disk dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
}

pub fn run(cmd: ModelCommand) -> CliResult {
    match cmd {
        ModelCommand::Init(a) => init(a),
        ModelCommand::Inspect { dir, device, ranks } => inspect(&dir, &device, ranks as usize),
        ModelCommand::ImportGguf { file, out_dir } => import_gguf(&file, &out_dir),
        ModelCommand::Export {
            checkpoint,
            out_dir,
            dtype,
        } => export(&checkpoint, &out_dir, &dtype),
    }
}

fn export(checkpoint: &std::path::Path, out_dir: &std::path::Path, dtype: &str) -> CliResult {
    let dtype =
        DType::parse(dtype).ok_or_else(|| format!("--dtype `{dtype}`: use bf16, f16 or f32"))?;
    crate::model::export(checkpoint, out_dir, dtype)?;
    println!(
        "wrote {} ({dtype}) from {}",
        out_dir.display(),
        checkpoint.display()
    );
    Ok(())
}

fn import_gguf(file: &std::path::Path, out_dir: &std::path::Path) -> CliResult {
    let start = std::time::Instant::now();
    let s = crate::model::gguf::import_gguf(file, out_dir)?;
    for note in &s.notes {
        tracing::info!("note: {note}");
    }
    let types: Vec<String> = s
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    println!(
        "imported {} ({} tensors: {}; {} parameters, vocab {}) into {} as bf16 in {:.1} s",
        s.architecture,
        s.n_tensors,
        types.join(", "),
        s.n_params,
        s.vocab_size,
        out_dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn init(a: InitArgs) -> CliResult {
    let tok = Tokenizer::from_file(&a.vocab_from)?;
    let dtype = DType::parse(&a.dtype)
        .ok_or_else(|| format!("--dtype `{}`: use bf16, f16 or f32", a.dtype))?;
    let mut config = match &a.preset {
        Some(name) => preset(name)
            .ok_or_else(|| format!("unknown --preset `{name}` (known: {})", PRESETS.join(", ")))?,
        None => {
            let need = |v: Option<usize>, flag: &str| {
                v.ok_or_else(|| format!("--{flag} is required without --preset"))
            };
            let arch_name = a
                .arch
                .as_deref()
                .ok_or("--arch is required without --preset")?;
            let arch = Arch::parse(arch_name)
                .ok_or_else(|| format!("unknown --arch `{arch_name}` (qwen2, qwen3 or llama)"))?;
            let heads = need(a.heads, "heads")?;
            let dims = Dims {
                vocab: tok.vocab_size(),
                hidden: need(a.hidden, "hidden")?,
                intermediate: need(a.intermediate, "intermediate")?,
                layers: need(a.layers, "layers")?,
                heads,
                kv_heads: a.kv_heads.unwrap_or(heads),
                tied: a.tied,
            };
            ModelConfig::from_dims(arch, dims)?
        }
    };
    if let Some(v) = a.vocab_size {
        config.vocab_size = v;
    }
    if config.vocab_size < tok.vocab_size() {
        return Err(format!(
            "vocabulary of {} rows is smaller than the tokenizer's {} tokens",
            config.vocab_size,
            tok.vocab_size()
        )
        .into());
    }
    config.eos_token_ids = tok.end_of_turn_ids().into_iter().take(1).collect();
    let tensors = random_weights(&config, a.seed);
    // A folder this command created is removed again if writing fails.
    let existed = a.out_dir.exists();
    write_model_dir(&a.out_dir, &config, &tensors, dtype, Some(&a.vocab_from)).inspect_err(
        |_| {
            if !existed {
                let _ = std::fs::remove_dir_all(&a.out_dir);
            }
        },
    )?;
    println!(
        "wrote {} ({} parameters, {}) to {}",
        config.arch.hf_class(),
        config.num_parameters(),
        dtype,
        a.out_dir.display()
    );
    Ok(())
}

const GIB: f64 = (1u64 << 30) as f64;

fn inspect(dir: &std::path::Path, device: &Device, ranks: usize) -> CliResult {
    let c = ModelConfig::load(dir)?;
    let dtype = stored_dtype(dir)?;
    let mem = MemoryEstimate::new(&c, dtype);
    let gib = |bytes: u64| bytes as f64 / GIB;
    println!("folder:        {}", dir.display());
    println!(
        "architecture:  {} ({})",
        c.arch.hf_class(),
        c.arch.model_type()
    );
    println!(
        "shape:         {} layers, hidden {}, MLP {}, heads {} / kv {} x {}, vocab {}",
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.vocab_size
    );
    println!(
        "extras:        qkv bias {}, q/k norm {}, tied embeddings {}, rms eps {}",
        c.attention_bias,
        c.arch.has_qk_norm(),
        c.tie_word_embeddings,
        c.rms_norm_eps
    );
    println!("rope:          {}", c.rope_description());
    println!(
        "parameters:    {} ({:.1} M)",
        mem.parameters,
        mem.parameters as f64 / 1e6
    );
    println!(
        "stored dtype:  {dtype} ({:.2} GiB on disk)",
        gib(mem.disk_bytes)
    );
    let chat = crate::tokenizer::ChatTemplate::load_dir(&crate::model::hf_dir(dir))?;
    println!("chat template: {}", chat.source());
    println!("tool calls:    {}", chat.tool_call_format());
    println!(
        "inference:     {:.2} GiB on CPU (f32, the GEMM's packed copy, bf16 panels of a bf16 checkpoint), {:.2} GiB on GPU (bf16), plus KV cache",
        gib(mem.inference_cpu_bytes),
        gib(mem.inference_gpu_bytes)
    );
    println!(
        "KV cache:      {} values per token ({:.1} KiB f32)",
        mem.kv_values_per_token,
        mem.kv_values_per_token as f64 * 4.0 / 1024.0
    );
    println!(
        "training:      {:.2} GiB on CPU (f32 weights, packed and transposed copies, grads, AdamW), {:.2} GiB on GPU (bf16 weights, f32 grads + master, AdamW, bf16 reference), plus activations",
        gib(mem.training_cpu_bytes),
        gib(mem.training_gpu_bytes)
    );
    let mut needs = mem.training_bytes(device);
    if ranks > 1 {
        let [cpu, gpu] = [Device::Cpu, Device::Cuda(0)].map(|d| RankMemory::new(&c, &d, ranks));
        println!(
            "per rank:      {ranks} data-parallel ranks: {:.2} GiB on CPU, {:.2} GiB on GPU with the \
             whole state on every rank (optim.zero_stage = 0); {:.2} GiB on CPU, {:.2} GiB on GPU \
             with AdamW's moments sharded (optim.zero_stage = 1: the largest share {:.1} M values, \
             1/{ranks} = {:.1} M); {:.2} GiB on CPU, {:.2} GiB on GPU with the gradients sharded \
             too (optim.zero_stage = 2, one micro-batch a rank a step; more hold stage 1's), plus \
             activations",
            gib(cpu.replicated_bytes),
            gib(gpu.replicated_bytes),
            gib(cpu.zero1_bytes),
            gib(gpu.zero1_bytes),
            cpu.largest_share as f64 / 1e6,
            mem.parameters as f64 / ranks as f64 / 1e6,
            gib(cpu.zero2_bytes),
            gib(gpu.zero2_bytes),
        );
        needs = RankMemory::new(&c, device, ranks).zero1_bytes;
    }
    match device.memory() {
        Ok(mem) => {
            if let Some(name) = &mem.name {
                println!("device:        {device} ({name})");
            }
            let line = Fit::new(needs, &mem).line(device);
            match ranks {
                1 => println!("{line}"),
                _ => println!(
                    "{}",
                    line.replacen(
                        "for training",
                        &format!("for training as one of {ranks} ranks with optim.zero_stage = 1"),
                        1
                    )
                ),
            }
        }
        Err(e) if *device == Device::Cpu => {
            println!("fits on cpu for training: unknown ({e})")
        }
        Err(e) => {
            return Err(format!(
                "--device {e}; cannot tell whether it fits (the GPU estimate above is what training needs)"
            )
            .into())
        }
    }
    Ok(())
}
