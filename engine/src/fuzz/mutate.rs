//! Input generation: random bytes, and stacked mutations of seed inputs.

use serde_json::Value;

use crate::rng::Rng;

/// Integers that break size and offset arithmetic, written over header
/// fields in place (little-endian, 1/2/4/8 bytes).
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    31,
    32,
    255,
    256,
    1 << 16,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// Values a JSON node is replaced with.
fn json_replacements(rng: &mut Rng) -> Value {
    let pick = [
        Value::Null,
        Value::Bool(true),
        Value::from(0),
        Value::from(-1),
        Value::from(1u64 << 40),
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::from(1e308),
        Value::from(-0.5),
        Value::from(""),
        Value::from("x"),
        Value::Array(vec![]),
        Value::Array(vec![Value::from(1u64 << 40)]),
        Value::Object(Default::default()),
    ];
    pick[rng_below(rng, pick.len())].clone()
}

fn rng_below(rng: &mut Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (rng.next_u64() % n as u64) as usize
    }
}

/// Draws inputs for one target.
pub struct Mutator {
    rng: Rng,
    dict: &'static [&'static str],
    max_len: usize,
}

impl Mutator {
    pub fn new(seed: u64, dict: &'static [&'static str], max_len: usize) -> Mutator {
        Mutator {
            rng: Rng::new(seed),
            dict,
            max_len,
        }
    }

    pub fn below(&mut self, n: usize) -> usize {
        rng_below(&mut self.rng, n)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.uniform() < p
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// One input: random bytes (1 in 16), else a seed with 1 to 8 mutations
    /// (structure-aware ones when the target has them).
    pub fn generate(
        &mut self,
        seeds: &[Vec<u8>],
        structured: Option<fn(&mut Mutator, &mut Vec<u8>) -> bool>,
    ) -> Vec<u8> {
        if seeds.is_empty() || self.below(16) == 0 {
            let n = self.below(self.max_len.min(256) + 1);
            return (0..n).map(|_| self.rng.next_u64() as u8).collect();
        }
        let mut input = seeds[self.below(seeds.len())].clone();
        let rounds = 1 + self.below(8);
        for _ in 0..rounds {
            let applied = match structured {
                Some(f) if self.chance(0.5) => f(self, &mut input),
                _ => false,
            };
            if !applied {
                self.mutate_bytes(&mut input);
            }
        }
        input.truncate(self.max_len);
        input
    }

    /// One byte-level mutation.
    pub fn mutate_bytes(&mut self, b: &mut Vec<u8>) {
        let len = b.len();
        let at = self.below(len + 1);
        match self.below(10) {
            0 if len > 0 => {
                let i = self.below(len);
                b[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let i = self.below(len);
                b[i] = self.rng.next_u64() as u8;
            }
            2 | 3 if len > 0 => {
                // An interesting integer over 1, 2, 4 or 8 bytes; at an
                // aligned offset half the time (header fields are).
                let width = 1 << self.below(4);
                let mut i = self.below(len);
                if self.chance(0.5) {
                    i -= i % width;
                }
                let v = INTERESTING[self.below(INTERESTING.len())];
                let bytes = v.to_le_bytes();
                for (k, byte) in bytes.iter().take(width).enumerate() {
                    if let Some(slot) = b.get_mut(i + k) {
                        *slot = *byte;
                    }
                }
            }
            4 if !self.dict.is_empty() => {
                let tok = self.dict[self.below(self.dict.len())].as_bytes();
                b.splice(at..at, tok.iter().copied());
            }
            5 if len > 0 => {
                // Delete a range.
                let n = 1 + self.below((len - at.min(len - 1)).min(64));
                let from = at.min(len - 1);
                b.drain(from..(from + n).min(len));
            }
            6 if len > 0 => {
                // Duplicate a range elsewhere.
                let from = self.below(len);
                let n = 1 + self.below((len - from).min(64));
                let chunk = b[from..from + n].to_vec();
                let to = self.below(len + 1);
                b.splice(to..to, chunk);
            }
            7 => b.truncate(at),
            8 => {
                let n = 1 + self.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            _ if len > 0 => {
                // A whole byte range set to one value.
                let from = self.below(len);
                let n = 1 + self.below((len - from).min(16));
                let v = [0u8, 0xff, 0x7f, 0x80, b'{', b'<'][self.below(6)];
                b[from..from + n].fill(v);
            }
            _ => b.push(self.rng.next_u64() as u8),
        }
    }

    /// Mutates one node of a JSON value: deletes an object key, replaces a
    /// node by a value of another type, duplicates an array element, or
    /// replaces a number by a huge or negative one.
    pub fn mutate_json_value(&mut self, v: &mut Value) {
        // Walk down a random path; stop at a random depth.
        let mut node = v;
        loop {
            let go_down = self.chance(0.7);
            let n_children = match &*node {
                Value::Object(m) => m.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            };
            if !go_down || n_children == 0 {
                break;
            }
            let i = self.below(n_children);
            node = match node {
                Value::Object(m) => m.values_mut().nth(i).expect("index below len"),
                Value::Array(a) => &mut a[i],
                _ => unreachable!("only containers have children"),
            };
        }
        match node {
            Value::Object(m) if !m.is_empty() && self.chance(0.5) => {
                let i = self.below(m.len());
                let key = m.keys().nth(i).cloned().expect("index below len");
                m.remove(&key);
            }
            Value::Array(a) if !a.is_empty() && self.chance(0.3) => {
                let i = self.below(a.len());
                let copy = a[i].clone();
                a.insert(i, copy);
            }
            Value::Number(_) if self.chance(0.5) => {
                let v = INTERESTING[self.below(INTERESTING.len())];
                *node = match self.below(3) {
                    0 => Value::from(v),
                    1 => Value::from((v as i64).wrapping_neg()),
                    _ => Value::from(v as f64 * 1.5),
                };
            }
            Value::String(s) if self.chance(0.5) && !self.dict.is_empty() => {
                let tok = self.dict[self.below(self.dict.len())];
                let mut at = self.below(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, tok);
            }
            other => *other = json_replacements(&mut self.rng),
        }
    }

    /// [`Mutator::mutate_json_value`] on a JSON text, or on one JSON line
    /// (or one `\0`-separated part) of it; false when none is JSON.
    pub fn mutate_json_text(&mut self, b: &mut Vec<u8>) -> bool {
        if let Ok(mut v) = serde_json::from_slice::<Value>(b) {
            self.mutate_json_value(&mut v);
            *b = serde_json::to_vec(&v).expect("a Value serializes");
            return true;
        }
        // One line of a JSON-lines file (parts split at \0 or \n).
        let parts: Vec<(usize, usize)> = split_spans(b);
        let json_parts: Vec<(usize, usize)> = parts
            .into_iter()
            .filter(|&(s, e)| serde_json::from_slice::<Value>(&b[s..e]).is_ok())
            .collect();
        if json_parts.is_empty() {
            return false;
        }
        let (s, e) = json_parts[self.below(json_parts.len())];
        let mut v: Value = serde_json::from_slice(&b[s..e]).expect("checked above");
        self.mutate_json_value(&mut v);
        let text = serde_json::to_vec(&v).expect("a Value serializes");
        b.splice(s..e, text);
        true
    }
}

/// Spans of `b` between `\n` and `\0` bytes.
fn split_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' || c == 0 {
            if i > start {
                spans.push((start, i));
            }
            start = i + 1;
        }
    }
    if b.len() > start {
        spans.push((start, b.len()));
    }
    spans
}

/// Structured mutation for JSON-ish targets.
pub fn json(m: &mut Mutator, b: &mut Vec<u8>) -> bool {
    m.mutate_json_text(b)
}
