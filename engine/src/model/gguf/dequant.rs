//! ggml tensor types and their dequantization to f32.
//!
//! Block layouts follow ggml (`ggml-common.h`); every multi-byte field is
//! little-endian. Each function dequantizes one block, computing in f32 in
//! the same order of operations as the `gguf` Python package, so the results
//! match it bit for bit (checked against `testdata/dequant_vectors.json`).

use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml tensor type id, as stored in a GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

struct Traits {
    name: &'static str,
    /// Elements per block.
    block: u64,
    /// Bytes per block.
    bytes: u64,
    /// Whether `dequantize` handles it.
    supported: bool,
}

const fn t(name: &'static str, block: u64, bytes: u64, supported: bool) -> Traits {
    Traits {
        name,
        block,
        bytes,
        supported,
    }
}

fn traits(id: u32) -> Option<Traits> {
    Some(match id {
        0 => t("F32", 1, 4, true),
        1 => t("F16", 1, 2, true),
        2 => t("Q4_0", 32, 18, true),
        3 => t("Q4_1", 32, 20, true),
        6 => t("Q5_0", 32, 22, true),
        7 => t("Q5_1", 32, 24, true),
        8 => t("Q8_0", 32, 34, true),
        9 => t("Q8_1", 32, 40, false),
        10 => t("Q2_K", 256, 84, true),
        11 => t("Q3_K", 256, 110, true),
        12 => t("Q4_K", 256, 144, true),
        13 => t("Q5_K", 256, 176, true),
        14 => t("Q6_K", 256, 210, true),
        15 => t("Q8_K", 256, 292, true),
        16 => t("IQ2_XXS", 256, 66, false),
        17 => t("IQ2_XS", 256, 74, false),
        18 => t("IQ3_XXS", 256, 98, false),
        19 => t("IQ1_S", 256, 50, false),
        20 => t("IQ4_NL", 32, 18, true),
        21 => t("IQ3_S", 256, 110, false),
        22 => t("IQ2_S", 256, 82, false),
        23 => t("IQ4_XS", 256, 136, true),
        24 => t("I8", 1, 1, false),
        25 => t("I16", 1, 2, false),
        26 => t("I32", 1, 4, false),
        27 => t("I64", 1, 8, false),
        28 => t("F64", 1, 8, true),
        29 => t("IQ1_M", 256, 56, false),
        30 => t("BF16", 1, 2, true),
        34 => t("TQ1_0", 256, 54, false),
        35 => t("TQ2_0", 256, 66, false),
        39 => t("MXFP4", 32, 17, false),
        _ => return None,
    })
}

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const Q8_K: GgmlType = GgmlType(15);
    pub const IQ4_NL: GgmlType = GgmlType(20);
    pub const IQ4_XS: GgmlType = GgmlType(23);
    pub const F64: GgmlType = GgmlType(28);
    pub const BF16: GgmlType = GgmlType(30);

    /// ggml's name, e.g. `Q4_K`; `unknown ggml type 77` for an id ggml does
    /// not define.
    pub fn name(self) -> String {
        match traits(self.0) {
            Some(t) => t.name.to_string(),
            None => format!("unknown ggml type {}", self.0),
        }
    }

    /// (elements per block, bytes per block), for every type ggml defines.
    pub fn layout(self) -> Option<(u64, u64)> {
        traits(self.0).map(|t| (t.block, t.bytes))
    }

    pub fn can_dequantize(self) -> bool {
        traits(self.0).is_some_and(|t| t.supported)
    }

    /// Names of the types `dequantize` handles, for error messages.
    pub fn supported_names() -> String {
        (0..64)
            .filter_map(traits)
            .filter(|t| t.supported)
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why `dequantize` refused.
#[derive(Debug, PartialEq, Eq)]
pub enum DequantError {
    Unsupported,
    /// Source bytes or destination length do not fit the block layout.
    Size {
        bytes: usize,
        elements: usize,
    },
}

/// Dequantizes runs of whole blocks of one type.
#[derive(Clone, Copy)]
pub struct Kernel {
    /// Elements per block.
    pub block: usize,
    /// Bytes per block.
    pub bytes: usize,
    /// `src` holds k whole blocks, `dst` k * block elements.
    run: fn(&[u8], &mut [f32]),
}

/// Turns a one-block function into one over a run of blocks (a plain `fn`,
/// so the block function is called directly and can be inlined).
macro_rules! blocks {
    ($one:expr, $block:expr, $bytes:expr) => {
        |src: &[u8], dst: &mut [f32]| {
            for (b, y) in src.chunks_exact($bytes).zip(dst.chunks_exact_mut($block)) {
                $one(b, y);
            }
        }
    };
}

impl Kernel {
    /// The kernel of a supported type.
    pub fn of(ty: GgmlType) -> Option<Kernel> {
        let t = traits(ty.0).filter(|t| t.supported)?;
        let run: fn(&[u8], &mut [f32]) = match ty {
            GgmlType::F32 => |src, dst| {
                for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
                    *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            },
            GgmlType::F16 => |src, dst| {
                for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
                    *y = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            },
            GgmlType::BF16 => |src, dst| {
                for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
                    *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                }
            },
            GgmlType::F64 => |src, dst| {
                for (b, y) in src.chunks_exact(8).zip(dst.iter_mut()) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    *y = f64::from_le_bytes(a) as f32;
                }
            },
            GgmlType::Q4_0 => blocks!(q4_0, 32, 18),
            GgmlType::Q4_1 => blocks!(q4_1, 32, 20),
            GgmlType::Q5_0 => blocks!(q5_0, 32, 22),
            GgmlType::Q5_1 => blocks!(q5_1, 32, 24),
            GgmlType::Q8_0 => blocks!(q8_0, 32, 34),
            GgmlType::Q2_K => blocks!(q2_k, 256, 84),
            GgmlType::Q3_K => blocks!(q3_k, 256, 110),
            GgmlType::Q4_K => blocks!(q4_k, 256, 144),
            GgmlType::Q5_K => blocks!(q5_k, 256, 176),
            GgmlType::Q6_K => blocks!(q6_k, 256, 210),
            GgmlType::Q8_K => blocks!(q8_k, 256, 292),
            GgmlType::IQ4_NL => blocks!(iq4_nl, 32, 18),
            GgmlType::IQ4_XS => blocks!(iq4_xs, 256, 136),
            _ => return None,
        };
        Some(Kernel {
            block: t.block as usize,
            bytes: t.bytes as usize,
            run,
        })
    }

    /// Dequantizes whole blocks, sequentially.
    pub fn run(&self, src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len() / self.bytes * self.block, dst.len());
        (self.run)(src, dst)
    }

    /// Dequantizes one row of whole blocks straight to little-endian bf16
    /// (round to nearest even), through a small buffer on the stack.
    pub fn row_to_bf16(&self, src: &[u8], dst: &mut [u8]) {
        const CHUNK: usize = 512; // a multiple of every block size
        let mut buf = [0f32; CHUNK];
        let blocks_per_chunk = CHUNK / self.block;
        for (s, d) in src
            .chunks(blocks_per_chunk * self.bytes)
            .zip(dst.chunks_mut(CHUNK * 2))
        {
            let n = d.len() / 2;
            (self.run)(s, &mut buf[..n]);
            for (o, v) in d.chunks_exact_mut(2).zip(&buf[..n]) {
                o.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
    }
}

/// Dequantizes `src` (whole blocks of type `ty`) into `dst`, in parallel.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), DequantError> {
    let k = Kernel::of(ty).ok_or(DequantError::Unsupported)?;
    if !dst.len().is_multiple_of(k.block) || src.len() != dst.len() / k.block * k.bytes {
        return Err(DequantError::Size {
            bytes: src.len(),
            elements: dst.len(),
        });
    }
    // About 32K elements per task: big enough to amortize scheduling, small
    // enough to spread a single matrix over every core.
    let blocks_per_task = (32 * 1024 / k.block).max(1);
    dst.par_chunks_mut(k.block * blocks_per_task)
        .zip(src.par_chunks(k.bytes * blocks_per_task))
        .for_each(|(y, s)| k.run(s, y));
    Ok(())
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Q4_0: f16 d; u8 qs[16]. x = d * (q - 8); low nibbles are elements 0..16,
/// high nibbles 16..32.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: f16 d; f16 m; u8 qs[16]. x = d * q + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = d * (qs[j] & 0x0F) as f32 + m;
        y[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// Q5_0: f16 d; u32 qh; u8 qs[16]. Bit i of qh is the fifth bit of element i.
/// x = d * (q - 16).
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        y[j] = d * (((qs[j] & 0x0F) | (h0 << 4)) as i32 - 16) as f32;
        y[j + 16] = d * (((qs[j] >> 4) | (h1 << 4)) as i32 - 16) as f32;
    }
}

/// Q5_1: f16 d; f16 m; u32 qh; u8 qs[16]. x = d * q + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        y[j] = d * ((qs[j] & 0x0F) | (h0 << 4)) as f32 + m;
        y[j + 16] = d * ((qs[j] >> 4) | (h1 << 4)) as f32 + m;
    }
}

/// Q8_0: f16 d; i8 qs[32]. x = q * d.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..34].iter().enumerate() {
        y[j] = (q as i8) as f32 * d;
    }
}

/// Q2_K: u8 scales[16] (low nibble scale, high nibble min); u8 qs[64];
/// f16 d; f16 dmin. Element f (0..256) is the 2-bit field at shift
/// 2*((f%128)/32) of qs[32*(f/128) + f%32]; its group of 16 is f/16.
/// x = (d * scale) * q - (dmin * min).
fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for n in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                let f = n * 128 + s * 32 + l;
                let g = f / 16;
                let dl = d * (scales[g] & 0x0F) as f32;
                let ml = dmin * (scales[g] >> 4) as f32;
                let q = (qs[n * 32 + l] >> (2 * s)) & 3;
                y[f] = dl * q as f32 - ml;
            }
        }
    }
}

/// Q3_K: u8 hmask[32]; u8 qs[64]; u8 scales[12] (16 six-bit scales, offset
/// 32); f16 d. The low two bits come as in Q2_K; the high bit of element f
/// is bit f/32 of hmask[f%32], and a clear bit subtracts 4.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let sc = &b[96..108];
    let d = f16_at(b, 108);
    let mut dl = [0f32; 16];
    for (k, dl) in dl.iter_mut().enumerate() {
        let low = if k < 8 { sc[k] & 0x0F } else { sc[k - 8] >> 4 };
        let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
        let scale = ((low | (high << 4)) as i8).wrapping_sub(32);
        *dl = d * scale as f32;
    }
    for n in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                let f = n * 128 + s * 32 + l;
                let low = ((qs[n * 32 + l] >> (2 * s)) & 3) as i8;
                let hbit = (hmask[f % 32] >> (f / 32)) & 1;
                let q = low - (((hbit ^ 1) << 2) as i8);
                y[f] = dl[f / 16] * q as f32;
            }
        }
    }
}

/// The eight (scale, min) pairs of Q4_K and Q5_K, 6 bits each in 12 bytes.
fn k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30);
    }
    (sc, mn)
}

/// Q4_K: f16 d; f16 dmin; u8 scales[12]; u8 qs[128]. Eight groups of 32:
/// group 2c takes the low nibbles of qs[32c..32c+32], group 2c+1 the high
/// ones. x = (d * scale) * q - (dmin * min).
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = k_scales(&b[4..16]);
    let qs = &b[16..144];
    for c in 0..4 {
        for h in 0..2 {
            let g = 2 * c + h;
            let dl = d * sc[g] as f32;
            let ml = dmin * mn[g] as f32;
            for l in 0..32 {
                let q = (qs[32 * c + l] >> (4 * h)) & 0x0F;
                y[32 * g + l] = dl * q as f32 - ml;
            }
        }
    }
}

/// Q5_K: f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]. As Q4_K with
/// a fifth bit: bit f/32 of qh[f%32].
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = k_scales(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        for h in 0..2 {
            let g = 2 * c + h;
            let dl = d * sc[g] as f32;
            let ml = dmin * mn[g] as f32;
            for l in 0..32 {
                let low = (qs[32 * c + l] >> (4 * h)) & 0x0F;
                let high = (qh[l] >> g) & 1;
                y[32 * g + l] = dl * (low | (high << 4)) as f32 - ml;
            }
        }
    }
}

/// Q6_K: u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d. Two halves of 128; in
/// half n, element 64h + l (l < 64) takes nibble h of ql[64n + l], and element
/// 32s + l (l < 32) takes bits 2s..2s+2 of qh[32n + l] as bits 4..6.
/// x = (d * scale[f/16]) * (q - 32).
fn q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    let mut ds = [0f32; 16];
    for (k, ds) in ds.iter_mut().enumerate() {
        *ds = d * (scales[k] as i8) as f32;
    }
    for n in 0..2 {
        for i in 0..128 {
            let low = (ql[64 * n + i % 64] >> (4 * (i / 64))) & 0x0F;
            let high = (qh[32 * n + i % 32] >> (2 * (i / 32))) & 3;
            let q = ((low | (high << 4)) as i8) - 32;
            let f = 128 * n + i;
            y[f] = ds[f / 16] * q as f32;
        }
    }
}

/// Q8_K: f32 d; i8 qs[256]; i16 bsums[16] (unused here). x = d * q.
fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (j, &q) in b[4..260].iter().enumerate() {
        y[j] = d * (q as i8) as f32;
    }
}

/// The non-linear 4-bit grid of IQ4_NL and IQ4_XS.
const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// IQ4_NL: f16 d; u8 qs[16], nibbles as Q4_0. x = d * grid[q].
fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * IQ4_VALUES[(qs[j] & 0x0F) as usize] as f32;
        y[j + 16] = d * IQ4_VALUES[(qs[j] >> 4) as usize] as f32;
    }
}

/// IQ4_XS: f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]. Eight groups of
/// 32 with a six-bit scale (offset 32); group g takes qs[16g..16g+16], low
/// nibbles first.
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let scales_l = &b[4..8];
    let qs = &b[8..136];
    for g in 0..8 {
        let low = (scales_l[g / 2] >> (4 * (g % 2))) & 0x0F;
        let high = ((scales_h >> (2 * g)) & 3) as u8;
        let ls = ((low | (high << 4)) as i8).wrapping_sub(32);
        let dl = d * ls as f32;
        for j in 0..16 {
            let q = qs[16 * g + j];
            y[32 * g + j] = dl * IQ4_VALUES[(q & 0x0F) as usize] as f32;
            y[32 * g + j + 16] = dl * IQ4_VALUES[(q >> 4) as usize] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Vectors written by tools/reference/gguf_dequant_vectors.py with the
    /// `gguf` Python package: raw blocks and the f32 bits it dequantizes them to.
    #[test]
    fn matches_gguf_python_reference() {
        let text = include_str!("testdata/dequant_vectors.json");
        let cases: serde_json::Value = serde_json::from_str(text).expect("fixture parses");
        let cases = cases["cases"].as_array().expect("cases");
        let mut seen = Vec::new();
        for case in cases {
            let name = case["type"].as_str().expect("type");
            let id = case["id"].as_u64().expect("id") as u32;
            let ty = GgmlType(id);
            assert_eq!(ty.name(), name);
            let src = hex(case["blocks"].as_str().expect("blocks"));
            let want: Vec<u32> = hex(case["expected_f32_le"].as_str().expect("expected"))
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let mut got = vec![f32::NAN; want.len()];
            dequantize(ty, &src, &mut got).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let w = f32::from_bits(*w);
                // Same operations in the same order as numpy: bit for bit.
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{name} element {i}: got {g} want {w}"
                );
            }
            seen.push(name.to_string());
        }
        for must in [
            "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
        ] {
            assert!(seen.iter().any(|s| s == must), "fixture lacks {must}");
        }
    }

    #[test]
    fn q8_k_by_hand() {
        // The gguf package has no Q8_K; its layout is simple enough to check directly.
        let mut b = vec![0u8; 292];
        b[0..4].copy_from_slice(&0.5f32.to_le_bytes());
        for j in 0..256 {
            b[4 + j] = (j as i32 - 128) as i8 as u8;
        }
        let mut y = vec![0f32; 256];
        dequantize(GgmlType::Q8_K, &b, &mut y).expect("dequantize");
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, 0.5 * (j as f32 - 128.0));
        }
    }

    #[test]
    fn rejects_bad_sizes_and_unsupported_types() {
        let mut y = vec![0f32; 32];
        assert_eq!(
            dequantize(GgmlType::Q4_0, &[0u8; 17], &mut y),
            Err(DequantError::Size {
                bytes: 17,
                elements: 32
            })
        );
        assert_eq!(
            dequantize(GgmlType(16), &[0u8; 66], &mut y),
            Err(DequantError::Unsupported)
        );
        assert_eq!(
            dequantize(GgmlType(999), &[], &mut []),
            Err(DequantError::Unsupported)
        );
        assert_eq!(GgmlType(16).name(), "IQ2_XXS");
        assert_eq!(GgmlType(999).name(), "unknown ggml type 999");
        assert!(GgmlType::supported_names().contains("Q6_K"));
    }

    #[test]
    fn row_to_bf16_matches_dequantize_then_round() {
        // 600 elements: not a multiple of the 512-element stack buffer.
        for (ty, n) in [
            (GgmlType::Q4_1, 640usize),
            (GgmlType::F16, 600),
            (GgmlType::Q6_K, 768),
        ] {
            let k = Kernel::of(ty).unwrap();
            let src: Vec<u8> = (0..n / k.block * k.bytes)
                .map(|i| {
                    if i % k.bytes < 2 || (ty == GgmlType::Q6_K && i % k.bytes >= 208) {
                        0x21
                    } else {
                        (i * 97 % 256) as u8
                    }
                })
                .collect();
            let mut f = vec![0f32; n];
            dequantize(ty, &src, &mut f).unwrap();
            let mut b = vec![0u8; n * 2];
            k.row_to_bf16(&src, &mut b);
            let want: Vec<u8> = f
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect();
            assert_eq!(b, want, "{}", ty.name());
        }
    }

    #[test]
    fn parallel_split_matches_serial() {
        // More blocks than one task holds, so the rayon split is exercised.
        let n_blocks = 3000;
        let src: Vec<u8> = (0..n_blocks * 18)
            .map(|i| {
                if i % 18 == 1 {
                    0x30
                } else {
                    (i * 37 % 251) as u8
                }
            })
            .collect();
        let mut par = vec![0f32; n_blocks * 32];
        dequantize(GgmlType::Q4_0, &src, &mut par).expect("dequantize");
        let mut ser = vec![0f32; n_blocks * 32];
        for (y, b) in ser.chunks_exact_mut(32).zip(src.chunks_exact(18)) {
            q4_0(b, y);
        }
        assert_eq!(par, ser);
    }
}
