//! A tiny valid GGUF file (a one-layer Llama with a byte-level BPE
//! vocabulary), written from scratch: the seed the GGUF targets mutate.

use crate::rng::Rng;

const HIDDEN: u64 = 32;
const HEADS: u64 = 2;
const KV_HEADS: u64 = 1;
const HEAD_DIM: u64 = 16;
const FF: u64 = 64;

/// A GGUF metadata value, of the types the importer reads.
#[derive(Clone)]
pub(crate) enum Kv {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
}

/// One tensor: its name, dimensions (innermost first), ggml type id and
/// bytes.
#[derive(Clone)]
pub(crate) struct Tensor {
    pub(crate) name: String,
    pub(crate) dims: Vec<u64>,
    pub(crate) ty: u32,
    pub(crate) data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_kv(out: &mut Vec<u8>, key: &str, v: &Kv) {
    put_str(out, key);
    match v {
        Kv::U32(x) => {
            out.extend(4u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Kv::F32(x) => {
            out.extend(6u32.to_le_bytes());
            out.extend(x.to_le_bytes());
        }
        Kv::Bool(x) => {
            out.extend(7u32.to_le_bytes());
            out.push(u8::from(*x));
        }
        Kv::Str(s) => {
            out.extend(8u32.to_le_bytes());
            put_str(out, s);
        }
        Kv::StrArr(items) => {
            out.extend(9u32.to_le_bytes());
            out.extend(8u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for s in items {
                put_str(out, s);
            }
        }
        Kv::I32Arr(items) => {
            out.extend(9u32.to_le_bytes());
            out.extend(5u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for x in items {
                out.extend(x.to_le_bytes());
            }
        }
    }
}

/// A GGUF file of format `version`: the header, the metadata `kv` in
/// order, the tensor infos, then each tensor's data at a multiple of
/// `alignment` (which goes into the file only as a `general.alignment`
/// entry of `kv`).
pub(crate) fn write<K: AsRef<str>>(
    version: u32,
    alignment: u64,
    kv: &[(K, Kv)],
    tensors: &[Tensor],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_kv(&mut out, k.as_ref(), v);
    }
    let mut offsets = Vec::new();
    let mut cur = 0u64;
    for t in tensors {
        cur = cur.next_multiple_of(alignment);
        offsets.push(cur);
        cur += t.data.len() as u64;
    }
    for (t, off) in tensors.iter().zip(&offsets) {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.to_le_bytes());
        out.extend(off.to_le_bytes());
    }
    let data_start = (out.len() as u64).next_multiple_of(alignment);
    for (t, off) in tensors.iter().zip(&offsets) {
        out.resize((data_start + off) as usize, 0);
        out.extend(&t.data);
    }
    out
}

/// A byte-level BPE vocabulary: three specials (`<|endoftext|>`,
/// `<|im_start|>`, `<|im_end|>`), the GPT-2 byte alphabet and three merges
/// (tokens, token types, merges).
pub(crate) fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut toks: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    let mut types = vec![3, 3, 3];
    let mut next = 256u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        toks.push(char::from_u32(c).expect("a valid char").to_string());
        types.push(1);
    }
    toks.extend(["Ġt".to_string(), "he".into(), "Ġthe".into()]);
    types.extend([1, 1, 1]);
    let merges = vec!["Ġ t".to_string(), "h e".into(), "Ġt he".into()];
    (toks, types, merges)
}

/// Tensor bytes of a type: f32 (0), f16 (1) or q8_0 (8), finite values.
fn data(ty: u32, n: u64, rng: &mut Rng) -> Vec<u8> {
    let mut val = || (rng.uniform() as f32 - 0.5) * 0.1;
    match ty {
        0 => (0..n).flat_map(|_| val().to_le_bytes()).collect(),
        1 => (0..n)
            .flat_map(|_| half::f16::from_f32(val()).to_bits().to_le_bytes())
            .collect(),
        _ => (0..n / 32)
            .flat_map(|_| {
                let mut b = half::f16::from_f32(0.01).to_bits().to_le_bytes().to_vec();
                b.extend((0..32).map(|_| (val() * 1000.0) as i8 as u8));
                b
            })
            .collect(),
    }
}

/// The whole file. `alignment` is written as `general.alignment` unless 32.
pub fn tiny_llama(alignment: u64) -> Vec<u8> {
    let (toks, types, merges) = vocab();
    let rows = toks.len() as u64;
    let mut kv: Vec<(&str, Kv)> = vec![
        ("general.architecture", Kv::Str("llama".into())),
        ("general.name", Kv::Str("fuzz".into())),
        ("llama.block_count", Kv::U32(1)),
        ("llama.context_length", Kv::U32(128)),
        ("llama.embedding_length", Kv::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Kv::U32(FF as u32)),
        ("llama.attention.head_count", Kv::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Kv::U32(KV_HEADS as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Kv::F32(1e-5)),
        ("llama.rope.dimension_count", Kv::U32(HEAD_DIM as u32)),
        ("tokenizer.ggml.model", Kv::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Kv::Str("smollm".into())),
        ("tokenizer.ggml.tokens", Kv::StrArr(toks)),
        ("tokenizer.ggml.token_type", Kv::I32Arr(types)),
        ("tokenizer.ggml.merges", Kv::StrArr(merges)),
        ("tokenizer.ggml.bos_token_id", Kv::U32(1)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(2)),
        ("tokenizer.ggml.add_bos_token", Kv::Bool(false)),
        (
            "tokenizer.chat_template",
            Kv::Str("{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
        ),
    ];
    if alignment != 32 {
        kv.push(("general.alignment", Kv::U32(alignment as u32)));
    }
    let q = HEADS * HEAD_DIM;
    let kvd = KV_HEADS * HEAD_DIM;
    let layout: Vec<(&str, Vec<u64>, u32)> = vec![
        ("token_embd.weight", vec![HIDDEN, rows], 8),
        ("output_norm.weight", vec![HIDDEN], 0),
        ("blk.0.attn_norm.weight", vec![HIDDEN], 0),
        ("blk.0.attn_q.weight", vec![HIDDEN, q], 1),
        ("blk.0.attn_k.weight", vec![HIDDEN, kvd], 8),
        ("blk.0.attn_v.weight", vec![HIDDEN, kvd], 0),
        ("blk.0.attn_output.weight", vec![q, HIDDEN], 1),
        ("blk.0.ffn_norm.weight", vec![HIDDEN], 0),
        ("blk.0.ffn_gate.weight", vec![HIDDEN, FF], 8),
        ("blk.0.ffn_up.weight", vec![HIDDEN, FF], 1),
        ("blk.0.ffn_down.weight", vec![FF, HIDDEN], 0),
    ];
    let mut rng = Rng::new(7);
    let tensors: Vec<Tensor> = layout
        .into_iter()
        .map(|(name, dims, ty)| Tensor {
            name: name.into(),
            data: data(ty, dims.iter().product(), &mut rng),
            dims,
            ty,
        })
        .collect();
    write(3, alignment, &kv, &tensors)
}
