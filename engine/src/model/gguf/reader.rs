//! GGUF parsing: header (versions 2 and 3, little-endian), metadata of every
//! value type (arrays included, nested too), tensor infos, alignment and the
//! data section, over a memory map of the file.
//!
//! Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
//! then the metadata (string key, u32 type, value), then per tensor
//! (string name, u32 n_dims, u64 dims[n_dims] innermost first, u32 ggml
//! type, u64 offset into the data section), then padding up to
//! `general.alignment` (default 32), then the data section. Strings are a u64
//! byte length followed by UTF-8 bytes.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::dequant::GgmlType;
use super::GgufError;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; this bounds the recursion on a hostile file.
const MAX_ARRAY_DEPTH: usize = 8;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Human-readable type for error messages, e.g. `u32` or `array of string`.
    pub fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::F32(_) => "f32".into(),
            Value::Bool(_) => "bool".into(),
            Value::Str(_) => "a string".into(),
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F64(_) => "f64".into(),
            Value::Array(items) => match items.first() {
                Some(first) => format!("an array of {}", first.type_name()),
                None => "an empty array".into(),
            },
        }
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer or float type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// One entry of the tensor-info table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (row length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    /// The path as given, for error messages.
    pub path: String,
    map: Mmap,
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_start: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        let meta = file.metadata().map_err(|e| GgufError::io(path, e))?;
        if meta.is_dir() {
            // A directory opens, but cannot be mapped ("No such device").
            return Err(GgufError::io(
                path,
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
        let len = meta.len();
        let shown = path.display().to_string();
        if len < 4 {
            return Err(GgufError::NotGguf {
                path: shown,
                found: format!("nothing (the file has {len} bytes)"),
            });
        }
        // SAFETY: the map is read-only and lives as long as `GgufFile`. As with
        // any memory map, another process truncating or rewriting the file
        // while we read it is outside what we can guard against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?;
        let header = parse(&shown, &map)?;
        let index = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        Ok(GgufFile {
            path: shown,
            map,
            metadata: header.metadata,
            index,
            tensors: header.tensors,
            data_start: header.data_start,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, got: &Value) -> GgufError {
        GgufError::KeyType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            got: got.type_name(),
        }
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v)),
        }
    }

    pub fn req_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a string", v)),
        }
    }

    pub fn req_str(&self, key: &str) -> Result<&str, GgufError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a bool", v)),
        }
    }

    /// An array of strings (empty arrays allowed).
    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "an array of strings", v))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| self.wrong_type(key, "an array of strings", v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An array of integers (any integer type).
    pub fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong_type(key, "an array of integers", v))?;
        items
            .iter()
            .map(|item| {
                let n = match *item {
                    Value::I8(x) => Some(x.into()),
                    Value::I16(x) => Some(x.into()),
                    Value::I32(x) => Some(x.into()),
                    Value::I64(x) => Some(x),
                    _ => item.as_u64().and_then(|x| i64::try_from(x).ok()),
                };
                n.ok_or_else(|| self.wrong_type(key, "an array of integers", v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, checked against the end of the file. The
    /// type must have a known block layout.
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let nbytes = tensor_nbytes(t).map_err(|what| GgufError::BadTensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            what,
        })?;
        let start = self.data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(nbytes));
        let size = self.map.len() as u64;
        match (start, end) {
            (Some(start), Some(end)) if end <= size => Ok(&self.map[start as usize..end as usize]),
            _ => Err(GgufError::Truncated {
                path: self.path.clone(),
                what: format!("data of tensor `{}`", t.name),
                needed: end.unwrap_or(u64::MAX),
                size,
            }),
        }
    }
}

/// Bytes a tensor takes in the data section; an error says why it has none.
pub fn tensor_nbytes(t: &TensorInfo) -> Result<u64, String> {
    let (block, bytes) =
        t.ty.layout()
            .ok_or_else(|| format!("unknown ggml type {}", t.ty.name()))?;
    let ne0 = t.dims.first().copied().unwrap_or(1);
    if ne0 % block != 0 {
        return Err(format!(
            "row length {ne0} is not a multiple of the {} block size {block}",
            t.ty.name()
        ));
    }
    let n = t.n_elements();
    (n / block)
        .checked_mul(bytes)
        .ok_or_else(|| format!("size of dims {:?} overflows", t.dims))
}

struct Header {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    data_start: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let end = (self.pos as u64).saturating_add(n);
        if end > self.buf.len() as u64 {
            return Err(GgufError::Truncated {
                path: self.path.to_string(),
                what: what(),
                needed: end,
                size: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Malformed {
            path: self.path.to_string(),
            what: format!("{} is not valid UTF-8", what()),
        })
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn malformed(&self, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_string(),
            what,
        }
    }

    fn value(
        &mut self,
        ty: u32,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.malformed(format!("{} is a bool stored as {b}", what()))),
            },
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed(format!("{} nests arrays too deeply", what())));
                }
                let elem_ty = self.u32(what)?;
                let len = self.u64(what)?;
                // Every element takes at least one byte: a longer array
                // cannot fit, so do not let its length drive an allocation.
                if len > self.remaining() {
                    return Err(GgufError::Truncated {
                        path: self.path.to_string(),
                        what: format!("{} (an array of {len} elements)", what()),
                        needed: (self.pos as u64).saturating_add(len),
                        size: self.buf.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem_ty, depth + 1, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(self.malformed(format!("{} has unknown value type {other}", what())))
            }
        })
    }
}

fn parse(path: &str, buf: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { buf, pos: 0, path };
    let header = || "the header".to_string();
    let magic = c.array::<4>(&header)?;
    if &magic != MAGIC {
        return Err(GgufError::NotGguf {
            path: path.to_string(),
            found: describe_magic(&magic),
        });
    }
    let version = c.u32(&header)?;
    if version != 2 && version != 3 {
        let note = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            " (a big-endian file)"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion {
            path: path.to_string(),
            version,
            note,
        });
    }
    let n_tensors = c.u64(&header)?;
    let n_kv = c.u64(&header)?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv.min(1 << 16) as usize);
    let mut seen = HashMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("the key of metadata entry #{i}"))?;
        let what = || format!("the value of metadata key `{key}`");
        let ty = c.u32(&what)?;
        let value = c.value(ty, 0, &what)?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(c.malformed(format!("metadata key `{key}` appears twice")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(GgufError::BadMetadata {
                    path: path.to_string(),
                    key: "general.alignment".into(),
                    reason: "must be a positive power of two".into(),
                })
            }
        },
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
    let mut names = HashMap::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("the name of tensor info #{i}"))?;
        let what = || format!("the info of tensor `{name}`");
        let n_dims = c.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(c.malformed(format!(
                "tensor `{name}` has {n_dims} dims, at most {MAX_DIMS} allowed"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        let ty = GgmlType(c.u32(&what)?);
        let offset = c.u64(&what)?;
        if dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(c.malformed(format!(
                "tensor `{name}` has dims {dims:?} whose product overflows"
            )));
        }
        if offset % alignment != 0 {
            return Err(c.malformed(format!(
                "tensor `{name}` starts at data offset {offset}, not a multiple of the alignment {alignment}"
            )));
        }
        if names.insert(name.clone(), i).is_some() {
            return Err(c.malformed(format!("tensor `{name}` appears twice")));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
        });
    }

    let data_start = (c.pos as u64).next_multiple_of(alignment);
    // A file with no tensors may end right after its infos; one with tensors
    // must reach its data section.
    if !tensors.is_empty() && data_start > buf.len() as u64 {
        return Err(GgufError::Truncated {
            path: path.to_string(),
            what: "the padding before the tensor data".into(),
            needed: data_start,
            size: buf.len() as u64,
        });
    }
    Ok(Header {
        metadata,
        tensors,
        data_start,
    })
}

fn describe_magic(magic: &[u8; 4]) -> String {
    if magic.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("\"{}\"", String::from_utf8_lossy(magic))
    } else {
        format!(
            "bytes {:02x} {:02x} {:02x} {:02x}",
            magic[0], magic[1], magic[2], magic[3]
        )
    }
}
