//! `.parquet` files in the two layouts users bring, told apart by their
//! columns:
//!
//! - **Search-R1 / FlashRAG**: `question` (string) and `golden_answers`
//!   (list of strings), optionally `id`. Each row goes through the same
//!   record reader as a JSONL line (`from_record`), so a parquet file and
//!   the JSONL it was made from give the same examples, ids and metadata.
//! - **verl**: `prompt` (chat messages, a list of `{role, content}`) and
//!   `reward_model.ground_truth.target` (a list of strings or one string).
//!   The question is the content of the *last* `user` message, verbatim
//!   (as the JSONL `question` is taken as it is): system messages and
//!   earlier few-shot turns are not part of it, since the engine renders its
//!   own system prompt and protocol around the question. Where a
//!   preprocessing script wrapped the question in an instruction (verl's
//!   Search-R1 and GSM8K scripts do), the question is that whole text; those
//!   scripts keep the bare question in `extra_info.question`, which stays in
//!   the metadata. Search-R1's own files carry `question` + `golden_answers`
//!   beside the verl columns and are read in the Search-R1 layout (checked
//!   first), which gives the bare question. A plain string or list
//!   `reward_model.ground_truth` (verl's math sets) is read as the answers
//!   too. `id` is the `id` column when there is one, else the row number;
//!   the other columns (`data_source`, `extra_info`, ...) are the metadata.
//!
//! Rows are read with the record API (no arrow: a much lighter build).
//! Codecs: uncompressed, snappy (pyarrow's default), gzip and lz4 — the
//! pure-Rust ones; zstd needs a C library that does not build for
//! wasm32-wasip2, so such files get an error that says to rewrite them with
//! snappy.

use bytes::Bytes;
use parquet::basic::{Compression, ConvertedType, LogicalType};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::Type;
use serde_json::Value;

use crate::{answers_of, example, from_record, Example};

/// How a parquet file lays out its questions and answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    SearchR1,
    Verl,
}

/// What a file without either layout's answer column is told.
const NO_ANSWER_COLUMN: &str = "no column `golden_answers` (Search-R1/FlashRAG layout) or `reward_model.ground_truth.target` (verl layout)";

/// The examples of the parquet file `file` (its bytes), in row order.
pub fn read(file: &str, bytes: Vec<u8>) -> Result<Vec<Example>, String> {
    let reader = SerializedFileReader::new(Bytes::from(bytes))
        .map_err(|e| format!("`{file}`: not a readable parquet file: {e}"))?;
    let layout = layout(file, reader.metadata().file_metadata().schema())?;
    check_codecs(file, reader.metadata())?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| format!("`{file}`: {e}"))?;
    let mut out = vec![];
    for (i, row) in rows.enumerate() {
        let record = row
            .map_err(|e| format!("`{file}` row {i}: {e}"))?
            .to_json_value();
        let where_ = format!("row {i}");
        out.push(match layout {
            Layout::SearchR1 => from_record(file, &where_, i, record)?,
            Layout::Verl => from_verl_record(file, &where_, i, record)?,
        });
    }
    Ok(out)
}

/// The layout of a file with top-level schema `root`: Search-R1 when it has
/// `golden_answers`, else verl when it has `reward_model.ground_truth`; the
/// chosen layout's question column must be there too.
fn layout(file: &str, root: &Type) -> Result<Layout, String> {
    let layout = if child(root, "golden_answers").is_some() {
        Layout::SearchR1
    } else if has_verl_answers(root) {
        Layout::Verl
    } else {
        return Err(format!("`{file}`: {NO_ANSWER_COLUMN}"));
    };
    let (question, why) = match layout {
        Layout::SearchR1 => (
            "question",
            "Search-R1/FlashRAG layout, chosen by its `golden_answers` column",
        ),
        Layout::Verl => (
            "prompt",
            "verl layout, chosen by its `reward_model.ground_truth` column",
        ),
    };
    if child(root, question).is_none() {
        return Err(format!("`{file}`: no column `{question}` ({why})"));
    }
    Ok(layout)
}

/// Whether `root` has the verl answers: `reward_model.ground_truth.target`,
/// or `reward_model.ground_truth` itself when it is a string or a list
/// rather than a struct.
fn has_verl_answers(root: &Type) -> bool {
    let Some(truth) = child(root, "reward_model").and_then(|r| child(r, "ground_truth")) else {
        return false;
    };
    child(truth, "target").is_some() || !is_struct(truth)
}

/// The field `name` of the group `ty` (`None` for a primitive `ty`).
fn child<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    if !ty.is_group() {
        return None;
    }
    ty.get_fields()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.as_ref())
}

/// A group that is a struct, not a list or map in parquet's nested
/// encoding (both of which are groups too).
fn is_struct(ty: &Type) -> bool {
    let info = ty.get_basic_info();
    let annotated_collection = matches!(
        info.logical_type_ref(),
        Some(LogicalType::List | LogicalType::Map)
    ) || matches!(
        info.converted_type(),
        ConvertedType::LIST | ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE
    );
    ty.is_group() && !annotated_collection
}

/// Fails on the first column chunk whose codec this build cannot read,
/// naming the column and the codec, before any row is decoded.
fn check_codecs(file: &str, meta: &ParquetMetaData) -> Result<(), String> {
    for column in meta.row_groups().iter().flat_map(|g| g.columns()) {
        let codec = match column.compression() {
            Compression::UNCOMPRESSED
            | Compression::SNAPPY
            | Compression::GZIP(_)
            | Compression::LZ4
            | Compression::LZ4_RAW => continue,
            Compression::ZSTD(_) => "zstd",
            Compression::BROTLI(_) => "brotli",
            Compression::LZO => "lzo",
        };
        return Err(format!(
            "`{file}`: column `{}` is compressed with {codec}, which this plugin cannot read \
             (it reads snappy, gzip, lz4 and uncompressed parquet); rewrite the file with snappy, \
             e.g. pyarrow.parquet.write_table(table, path, compression=\"snappy\")",
            column.column_path().string()
        ));
    }
    Ok(())
}

/// One verl row (as JSON): the question from the chat messages, the
/// answers from `reward_model`, the other columns as metadata.
fn from_verl_record(file: &str, where_: &str, n: usize, record: Value) -> Result<Example, String> {
    let Value::Object(mut m) = record else {
        return Err(format!("`{file}` {where_}: not a record"));
    };
    let prompt = m.remove("prompt").unwrap_or(Value::Null);
    let question = last_user_content(&prompt).ok_or(format!(
        "`{file}` {where_}: `prompt` has no `user` message with a string `content`"
    ))?;
    let reward_model = m.remove("reward_model").unwrap_or(Value::Null);
    let truth = &reward_model["ground_truth"];
    let target = match truth {
        Value::Object(t) => t.get("target").unwrap_or(&Value::Null),
        other => other,
    };
    if target.is_null() {
        return Err(format!(
            "`{file}` {where_}: `reward_model.ground_truth.target` is null"
        ));
    }
    Ok(example(m, n, question, answers_of(target)))
}

/// The content of the last `user` message of a chat (`[{role, content}]`);
/// a plain string prompt is its own question.
fn last_user_content(prompt: &Value) -> Option<String> {
    match prompt {
        Value::String(s) => Some(s.clone()),
        Value::Array(messages) => messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .map(str::to_string),
        _ => None,
    }
}
