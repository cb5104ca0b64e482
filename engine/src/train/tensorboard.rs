//! TensorBoard event files of a run folder, written by hand (no protobuf or
//! TensorFlow crate): `RUN_DIR/tb/events.out.tfevents.<secs>.<host>.<pid>`
//! holds every scalar of `metrics.jsonl` (and, for `igpo train`, of
//! `eval.jsonl`) at its step, so `tensorboard --logdir target/runs` compares
//! runs while they train.
//!
//! Tags: `igpo sft` writes metrics key `k` as tag `k`; `igpo train` writes
//! `train/<key>` for metrics.jsonl and `eval/<key>` for eval.jsonl. The
//! scalars are parsed back from the very JSON line appended to the `.jsonl`
//! file ([`EventWriter::write_json_line`]), so they cannot drift from it:
//! its `step` is the event's step; every other number is a scalar (as f32),
//! an array or object flattens to `key/0`, `key/sub`; booleans are 0 / 1;
//! strings and nulls are skipped (serde_json writes a NaN as `null`, so a
//! NaN metric is absent from both files).
//!
//! The file is a sequence of records, each
//! `u64 LE length | u32 LE masked_crc32c(length bytes) | data | u32 LE masked_crc32c(data)`
//! with `masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8`, `c` the
//! CRC-32C (Castagnoli) of `x`. Each record's data is a protobuf `Event`:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! The first record carries only `file_version = "brain.Event:2"`; then one
//! `Event` per logged line with all its scalars. Each record goes to the
//! file in one `write` (no user-space buffer), so a reader sees every step
//! as soon as it is logged and a crash can only cut the last record short,
//! which TensorBoard ignores.
//!
//! Resume: [`EventWriter::restart`] deletes the folder's earlier event files
//! and starts a new one; the caller then writes the history it kept in
//! metrics.jsonl / eval.jsonl ([`EventWriter::write_history`]), so
//! TensorBoard shows exactly the kept steps plus the new ones.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::run::TrainError;

/// The folder of a run that holds its event files.
pub const TB_DIR: &str = "tb";

/// `file_version` of the first record (the event format TensorBoard reads).
const FILE_VERSION: &str = "brain.Event:2";

/// Appends records to one event file.
pub struct EventWriter {
    /// None: a writer that discards (a data-parallel rank other than 0).
    file: Option<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Deletes the event files in `run_dir/tb` (a restart or resume rewrites
    /// the history) and starts a new one with its `file_version` record.
    pub fn restart(run_dir: &Path) -> Result<EventWriter, TrainError> {
        let dir = run_dir.join(TB_DIR);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
            let old = entry.map_err(io_error(&dir))?.path();
            let is_event_file = old
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."));
            if is_event_file {
                std::fs::remove_file(&old).map_err(io_error(&old))?;
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let path = dir.join(format!(
            "events.out.tfevents.{:010}.{}.{}",
            now.as_secs(),
            hostname(),
            std::process::id()
        ));
        let file = File::create(&path).map_err(io_error(&path))?;
        let mut writer = EventWriter {
            file: Some(file),
            path,
        };
        writer.write_event(&encode_event(wall_time(), 0, EventBody::FileVersion))?;
        Ok(writer)
    }

    /// A writer that writes nothing: the TensorBoard log of a rank that
    /// leaves the run folder to rank 0.
    pub fn discarding() -> EventWriter {
        EventWriter {
            file: None,
            path: PathBuf::new(),
        }
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One `Event` at `step` with `scalars` (tag, value); nothing when there
    /// are none.
    pub fn write_scalars(
        &mut self,
        step: u64,
        scalars: &[(String, f32)],
    ) -> Result<(), TrainError> {
        if scalars.is_empty() {
            return Ok(());
        }
        let event = encode_event(wall_time(), step, EventBody::Scalars(scalars));
        self.write_event(&event)
    }

    /// The scalars of one `.jsonl` line (see the module doc), tagged
    /// `tag_prefix` + key, at the line's `step`.
    pub fn write_json_line(&mut self, tag_prefix: &str, line: &str) -> Result<(), TrainError> {
        let value: Value = serde_json::from_str(line).map_err(|e| TrainError::LogLine {
            path: self.path.clone(),
            msg: format!("is not JSON: {e}"),
        })?;
        let (step, scalars) = scalars_of_json_line(tag_prefix, &value);
        let step = step.ok_or_else(|| TrainError::LogLine {
            path: self.path.clone(),
            msg: format!("has no integer `step`: {}", line.trim_end()),
        })?;
        self.write_scalars(step, &scalars)
    }

    /// The kept lines of several logs, each `(tag prefix, lines)`, merged in
    /// step order (on equal steps, the earlier log first), as the step loop
    /// wrote them.
    pub fn write_history(&mut self, logs: &[(&str, &[String])]) -> Result<(), TrainError> {
        let mut all: Vec<(u64, &str, &str)> = vec![];
        for (prefix, lines) in logs {
            for line in lines.iter() {
                let step = serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .unwrap_or(0);
                all.push((step, *prefix, line.as_str()));
            }
        }
        all.sort_by_key(|(step, _, _)| *step); // stable: log order on ties
        for (_, prefix, line) in all {
            self.write_json_line(prefix, line)?;
        }
        Ok(())
    }

    fn write_event(&mut self, event: &[u8]) -> Result<(), TrainError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let record = encode_record(event);
        file.write_all(&record)
            .and_then(|()| file.flush())
            .map_err(io_error(&self.path))
    }
}

/// The `.jsonl` lines of `items`, serialized as the run's logs write them.
pub fn json_lines<T: Serialize>(items: &[T]) -> Vec<String> {
    items
        .iter()
        .map(|m| serde_json::to_string(m).expect("json"))
        .collect()
}

/// A log line's `step` (an unsigned integer) and its scalars: every other
/// top-level key flattened (see the module doc), tagged `tag_prefix` + key.
pub fn scalars_of_json_line(tag_prefix: &str, line: &Value) -> (Option<u64>, Vec<(String, f32)>) {
    let mut scalars = vec![];
    let mut step = None;
    if let Value::Object(fields) = line {
        for (key, v) in fields {
            if key == "step" {
                step = v.as_u64();
            } else {
                flatten(format!("{tag_prefix}{key}"), v, &mut scalars);
            }
        }
    }
    (step, scalars)
}

fn flatten(tag: String, v: &Value, out: &mut Vec<(String, f32)>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((tag, x as f32));
            }
        }
        Value::Bool(b) => out.push((tag, if *b { 1.0 } else { 0.0 })),
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                flatten(format!("{tag}/{i}"), x, out);
            }
        }
        Value::Object(fields) => {
            for (k, x) in fields {
                flatten(format!("{tag}/{k}"), x, out);
            }
        }
        Value::Null | Value::String(_) => {}
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.display().to_string();
    move |source| TrainError::Io { path, source }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's name for the file name (Linux: the kernel's; else
/// `$HOSTNAME`; else `localhost`), reduced to `[A-Za-z0-9._-]`.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ---- records ---------------------------------------------------------------

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The record checksum: CRC-32C rotated right by 15 bits plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record: length, its masked CRC, the data, the data's masked CRC.
fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// ---- protobuf ----------------------------------------------------------------

enum EventBody<'a> {
    FileVersion,
    Scalars(&'a [(String, f32)]),
}

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, (field << 3) | wire);
}

fn put_len_delimited(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The bytes of one `Event` message.
fn encode_event(wall_time: f64, step: u64, body: EventBody) -> Vec<u8> {
    let mut out = vec![];
    put_key(&mut out, 1, WIRE_FIXED64);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        put_key(&mut out, 2, WIRE_VARINT);
        put_varint(&mut out, step); // int64 >= 0: the plain varint
    }
    match body {
        EventBody::FileVersion => put_len_delimited(&mut out, 3, FILE_VERSION.as_bytes()),
        EventBody::Scalars(scalars) => {
            let mut summary = vec![];
            for (tag, value) in scalars {
                let mut v = vec![];
                put_len_delimited(&mut v, 1, tag.as_bytes());
                put_key(&mut v, 2, WIRE_FIXED32);
                v.extend_from_slice(&value.to_le_bytes());
                put_len_delimited(&mut summary, 1, &v);
            }
            put_len_delimited(&mut out, 5, &summary);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
    }

    /// A protobuf field as the test decoder reads it.
    #[derive(Debug, PartialEq)]
    enum Field {
        Varint(u64),
        Fixed64([u8; 8]),
        Fixed32([u8; 4]),
        Bytes(Vec<u8>),
    }

    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*at];
            *at += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    /// (field number, value) of every field of a message.
    fn decode(b: &[u8]) -> Vec<(u64, Field)> {
        let (mut at, mut out) = (0, vec![]);
        while at < b.len() {
            let key = varint(b, &mut at);
            let field = match key & 7 {
                0 => Field::Varint(varint(b, &mut at)),
                1 => {
                    at += 8;
                    Field::Fixed64(b[at - 8..at].try_into().unwrap())
                }
                5 => {
                    at += 4;
                    Field::Fixed32(b[at - 4..at].try_into().unwrap())
                }
                2 => {
                    let n = varint(b, &mut at) as usize;
                    at += n;
                    Field::Bytes(b[at - n..at].to_vec())
                }
                w => panic!("wire type {w}"),
            };
            out.push((key >> 3, field));
        }
        out
    }

    /// Checks a record's framing and returns its data.
    fn unframe(record: &[u8]) -> &[u8] {
        let len = u64::from_le_bytes(record[..8].try_into().unwrap()) as usize;
        assert_eq!(record.len(), len + 16);
        let len_crc = u32::from_le_bytes(record[8..12].try_into().unwrap());
        assert_eq!(len_crc, masked_crc32c(&record[..8]));
        let data = &record[12..12 + len];
        let data_crc = u32::from_le_bytes(record[12 + len..].try_into().unwrap());
        assert_eq!(data_crc, masked_crc32c(data));
        data
    }

    #[test]
    fn a_scalar_record_decodes_to_its_event() {
        let scalars = vec![
            ("train/loss".to_string(), 0.25f32),
            ("lr".to_string(), -1.5),
        ];
        let record = encode_record(&encode_event(1.5e9, 300, EventBody::Scalars(&scalars)));
        let event = decode(unframe(&record));
        assert_eq!(event[0], (1, Field::Fixed64(1.5e9f64.to_le_bytes())));
        assert_eq!(event[1], (2, Field::Varint(300)));
        let (5, Field::Bytes(summary)) = &event[2] else {
            panic!("{event:?}")
        };
        assert_eq!(event.len(), 3);
        let values: Vec<(String, f32)> = decode(summary)
            .into_iter()
            .map(|(n, v)| {
                assert_eq!(n, 1);
                let Field::Bytes(v) = v else { panic!() };
                match &decode(&v)[..] {
                    [(1, Field::Bytes(tag)), (2, Field::Fixed32(x))] => (
                        String::from_utf8(tag.clone()).unwrap(),
                        f32::from_le_bytes(*x),
                    ),
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(values, scalars);
    }

    #[test]
    fn the_file_version_record_decodes() {
        let record = encode_record(&encode_event(2.0, 0, EventBody::FileVersion));
        let event = decode(unframe(&record));
        assert_eq!(
            event,
            vec![
                (1, Field::Fixed64(2.0f64.to_le_bytes())),
                (3, Field::Bytes(b"brain.Event:2".to_vec())),
            ]
        );
    }

    #[test]
    fn json_lines_flatten_to_tagged_scalars() {
        let line: Value = serde_json::from_str(
            r#"{"step":7,"loss":0.5,"ig_mean":[1,2.5],"o":{"a":true,"b":null},"s":"x","n":null,"t":3}"#,
        )
        .unwrap();
        let (step, scalars) = scalars_of_json_line("train/", &line);
        assert_eq!(step, Some(7));
        let mut scalars = scalars;
        scalars.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, f32)> = [
            ("train/ig_mean/0", 1.0),
            ("train/ig_mean/1", 2.5),
            ("train/loss", 0.5),
            ("train/o/a", 1.0),
            ("train/t", 3.0),
        ]
        .iter()
        .map(|(t, v)| (t.to_string(), *v))
        .collect();
        assert_eq!(scalars, want);
    }

    #[test]
    fn restart_replaces_earlier_event_files_and_appends_records() {
        let run = std::env::temp_dir().join(format!("igpo-tb-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(run.join(TB_DIR)).unwrap();
        std::fs::write(run.join("tb/events.out.tfevents.1.old.1"), b"old").unwrap();
        std::fs::write(run.join("tb/notes.txt"), b"kept").unwrap();
        let mut w = EventWriter::restart(&run).unwrap();
        w.write_history(&[
            (
                "eval/",
                &[
                    r#"{"step":0,"f1":0.1}"#.to_string(),
                    r#"{"step":2,"f1":0.2}"#.to_string(),
                ],
            ),
            (
                "train/",
                &[
                    r#"{"step":1,"f1":1}"#.to_string(),
                    r#"{"step":2,"f1":2}"#.to_string(),
                ],
            ),
        ])
        .unwrap();
        w.write_json_line("train/", "{\"step\":3,\"f1\":3}\n")
            .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(run.join(TB_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].starts_with("events.out.tfevents.") && names[1] == "notes.txt");
        // Records: file version, then steps 0 (eval), 1, 2 (eval first), 2, 3.
        let bytes = std::fs::read(w.path()).unwrap();
        let (mut at, mut events) = (0, vec![]);
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            events.push(decode(unframe(&bytes[at..at + len + 16])));
            at += len + 16;
        }
        let steps_and_tags: Vec<(u64, String)> = events[1..]
            .iter()
            .map(|e| {
                let step = match e.iter().find(|(n, _)| *n == 2) {
                    Some((_, Field::Varint(s))) => *s,
                    _ => 0,
                };
                let Some((_, Field::Bytes(summary))) = e.iter().find(|(n, _)| *n == 5) else {
                    panic!("{e:?}")
                };
                let Field::Bytes(value) = &decode(summary)[0].1 else {
                    panic!()
                };
                let Field::Bytes(tag) = &decode(value)[0].1 else {
                    panic!()
                };
                (step, String::from_utf8(tag.clone()).unwrap())
            })
            .collect();
        let want: Vec<(u64, String)> = [
            (0, "eval/f1"),
            (1, "train/f1"),
            (2, "eval/f1"),
            (2, "train/f1"),
            (3, "train/f1"),
        ]
        .iter()
        .map(|(s, t)| (*s, t.to_string()))
        .collect();
        assert_eq!(steps_and_tags, want);
        std::fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn an_unwritable_folder_names_the_path() {
        let run = std::env::temp_dir().join(format!("igpo-tb-unit-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join(TB_DIR), b"a file, not a folder").unwrap();
        let err = EventWriter::restart(&run)
            .err()
            .expect("an error")
            .to_string();
        assert!(
            err.contains(&run.join(TB_DIR).display().to_string()),
            "{err}"
        );
        std::fs::remove_dir_all(&run).unwrap();
    }
}
