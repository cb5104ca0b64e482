//! The qa-dataset plugin on `.parquet` files that pyarrow wrote
//! (`tools/reference/write_parquet.py`) in the Search-R1/FlashRAG and verl
//! layouts, from the same real SQuAD questions as a JSONL file: every file
//! gives the JSONL's questions, answers and ids in the same order, also
//! shuffled, split and limited; a file without the answer column, or with a
//! codec the plugin cannot read, is one error line that names the file and
//! the column.

use crate::common;
use crate::plugins_support;

use std::path::{Path, PathBuf};

use igpo::plugins::{DatasetPlugin, PluginError, PluginSpec};
use plugins_support::{host, plugin_dir, scratch};
use serde_json::{json, Value};

/// `(id, question, answers)` of one example: what must survive the format.
type Qa = (String, String, Vec<String>);

/// The plugin dir and the Python with pyarrow, or `None` after saying why
/// the test skips.
fn plugins_and_python(test: &str) -> Option<(PathBuf, PathBuf)> {
    Some((plugin_dir(test)?, common::python(test)?))
}

fn dataset(plugins: &Path, dir: &Path, config: Value) -> Result<DatasetPlugin, PluginError> {
    DatasetPlugin::load(
        &host(plugins),
        &PluginSpec::new(plugins.join("qa-dataset.wasm"))
            .readonly_dir(dir)
            .config(config),
    )
}

/// Every example of `split` (`None`: all) as `(id, question, answers)`.
fn qas(d: &DatasetPlugin, split: Option<&str>) -> Vec<Qa> {
    d.examples(split)
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.question, e.answers))
        .collect()
}

/// The first 20 questions of SQuAD dev (read by the plugin itself), written
/// to `dir/squad-20.jsonl` as Search-R1 records.
fn write_squad_jsonl(plugins: &Path, dir: &Path) {
    let squad = dataset(
        plugins,
        &common::data_dir(),
        json!({"file": "squad-dev-v1.1.json", "limit": 20}),
    )
    .unwrap();
    let mut jsonl = String::new();
    for (id, question, answers) in qas(&squad, None) {
        let record = json!({"id": id, "question": question, "golden_answers": answers});
        jsonl.push_str(&format!("{record}\n"));
    }
    std::fs::write(dir.join("squad-20.jsonl"), jsonl).unwrap();
}

/// `write_parquet.py dir/squad-20.jsonl dir/out ARGS` (`args` split at
/// spaces).
fn write_parquet(python: &Path, dir: &Path, out: &str, args: &str) {
    let script = common::workspace().join("tools/reference/write_parquet.py");
    let run = std::process::Command::new(python)
        .arg(&script)
        .arg(dir.join("squad-20.jsonl"))
        .arg(dir.join(out))
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "write_parquet.py {out} {args} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The `init` error of loading `file` from `dir`, as one string.
fn load_error(plugins: &Path, dir: &Path, file: &str) -> String {
    match dataset(plugins, dir, json!({"file": file})) {
        Ok(_) => panic!("{file} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn qa_dataset_parquet_layouts_and_codecs_give_the_jsonl_examples() {
    let test = "qa_dataset_parquet_layouts_and_codecs_give_the_jsonl_examples";
    let Some((plugins, python)) = plugins_and_python(test) else {
        return;
    };
    let dir = scratch("qa-parquet");
    write_squad_jsonl(&plugins, &dir);
    // (file, write_parquet.py arguments): both layouts with pyarrow's
    // default snappy, then the other codecs the plugin reads, several row
    // groups, and a verl prompt with a few-shot pair before the question.
    let files = [
        ("search-r1.parquet", "--layout search-r1"),
        ("verl.parquet", "--layout verl"),
        (
            "search-r1-gzip.parquet",
            "--layout search-r1 --compression gzip --row-group-size 7",
        ),
        (
            "verl-lz4.parquet",
            "--layout verl --compression lz4 --few-shot --row-group-size 6",
        ),
        ("verl-plain.parquet", "--layout verl --compression none"),
    ];
    for (file, args) in files {
        write_parquet(&python, &dir, file, args);
    }

    let configs = [
        json!({}),
        json!({"shuffle": true, "seed": 7, "dev_size": 5}),
        json!({"shuffle": true, "seed": 3, "dev_fraction": 0.25, "limit": 16}),
    ];
    for extra in &configs {
        let config = |file: &str| {
            let mut c = extra.clone();
            c["file"] = json!(file);
            c
        };
        let jsonl = dataset(&plugins, &dir, config("squad-20.jsonl")).unwrap();
        let splits: Vec<Option<&str>> = std::iter::once(None)
            .chain(jsonl.splits().iter().map(|s| Some(s.as_str())))
            .collect();
        for (file, _) in files {
            let parquet = dataset(&plugins, &dir, config(file)).unwrap();
            assert_eq!(parquet.splits(), jsonl.splits(), "{file} {extra}");
            for split in &splits {
                assert_eq!(
                    qas(&parquet, *split),
                    qas(&jsonl, *split),
                    "{file} {extra} split {split:?}"
                );
            }
        }
    }

    // The examples are the real ones, in file order.
    let search_r1 = dataset(&plugins, &dir, json!({"file": "search-r1.parquet"})).unwrap();
    let all = qas(&search_r1, None);
    assert_eq!(all.len(), 20);
    assert_eq!(
        all[0],
        (
            "56be4db0acb8001400a502ec".to_string(),
            "Which NFL team represented the AFC at Super Bowl 50?".to_string(),
            vec!["Denver Broncos".to_string()]
        )
    );
    let several = all.iter().filter(|(_, _, a)| a.len() > 1).count();
    assert!(several > 0, "some questions have several answers");
    // The other columns are the metadata, as for a JSONL line.
    let e = search_r1.get(None, 0).unwrap();
    assert_eq!(e.metadata, json!({"data_source": "squad"}));
    let verl = dataset(&plugins, &dir, json!({"file": "verl.parquet"})).unwrap();
    let e = verl.get(None, 1).unwrap();
    assert_eq!(e.metadata["data_source"], "squad");
    assert_eq!(e.metadata["extra_info"]["index"], 1);
    assert_eq!(e.metadata["extra_info"]["question"], all[1].1.as_str());

    // verl's `target` may be one string: that is the one answer.
    write_parquet(
        &python,
        &dir,
        "verl-string.parquet",
        "--layout verl --target-string",
    );
    let one = dataset(&plugins, &dir, json!({"file": "verl-string.parquet"})).unwrap();
    let firsts: Vec<Qa> = all
        .iter()
        .map(|(id, q, a)| (id.clone(), q.clone(), vec![a[0].clone()]))
        .collect();
    assert_eq!(qas(&one, None), firsts);
}

#[test]
fn qa_dataset_parquet_missing_column_or_codec_is_one_error_line() {
    let test = "qa_dataset_parquet_missing_column_or_codec_is_one_error_line";
    let Some((plugins, python)) = plugins_and_python(test) else {
        return;
    };
    let dir = scratch("qa-parquet-errors");
    write_squad_jsonl(&plugins, &dir);
    let one_line = |e: &str| assert!(!e.contains('\n'), "one line: {e}");

    let no_answers = "no column `golden_answers` (Search-R1/FlashRAG layout) or \
                      `reward_model.ground_truth.target` (verl layout)";
    for (file, args) in [
        ("train.parquet", "--layout search-r1 --drop golden_answers"),
        ("verl-train.parquet", "--layout verl --drop reward_model"),
    ] {
        write_parquet(&python, &dir, file, args);
        let e = load_error(&plugins, &dir, file);
        assert!(e.contains(&format!("`{file}`: {no_answers}")), "{e}");
        one_line(&e);
    }

    write_parquet(
        &python,
        &dir,
        "no-question.parquet",
        "--layout search-r1 --drop question",
    );
    let e = load_error(&plugins, &dir, "no-question.parquet");
    assert!(
        e.contains("`no-question.parquet`: no column `question`"),
        "{e}"
    );
    one_line(&e);
    write_parquet(
        &python,
        &dir,
        "no-prompt.parquet",
        "--layout verl --drop prompt",
    );
    let e = load_error(&plugins, &dir, "no-prompt.parquet");
    assert!(e.contains("`no-prompt.parquet`: no column `prompt`"), "{e}");
    one_line(&e);

    // zstd (C code, not built into the guest): the codec, the column and
    // what to do.
    write_parquet(
        &python,
        &dir,
        "zstd.parquet",
        "--layout search-r1 --compression zstd",
    );
    let e = load_error(&plugins, &dir, "zstd.parquet");
    assert!(
        e.contains("`zstd.parquet`: column `id` is compressed with zstd")
            && e.contains("rewrite the file with snappy"),
        "{e}"
    );
    one_line(&e);

    // Not parquet at all, by its name.
    std::fs::write(dir.join("fake.parquet"), "{\"question\": \"q\"}\n").unwrap();
    let e = load_error(&plugins, &dir, "fake.parquet");
    assert!(
        e.contains("`fake.parquet`: not a readable parquet file"),
        "{e}"
    );
    one_line(&e);
}
