//! Every `igpo` command x bad input: a missing file, a folder where a file
//! belongs (and a file where a folder belongs), a truncated file, a file of
//! another format, a non-UTF-8 path and an output that cannot be written.
//! Each row: exit code 2, exactly one stderr line `error: ...` naming the
//! path or flag, no panic, and no output (nor temporary file) left behind.
//! Bad values of `IGPO_CPU_MATMUL` / `IGPO_CPU_ISA` are such errors too.
//!
//! Rows that need the built plugins run when `IGPO_PLUGIN_DIR` is set.

use crate::common;
use crate::plugins_support;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One command with one bad input.
struct Row {
    /// What the row is, for failure messages.
    what: String,
    args: Vec<OsString>,
    /// Must appear in the error line (a path as `display()` shows it, or a flag).
    named: String,
    /// Outputs that must not exist afterwards.
    outputs: Vec<PathBuf>,
    env: Vec<(&'static str, &'static str)>,
}

fn row(what: &str, args: &[&OsStr], named: impl AsRef<OsStr>) -> Row {
    Row {
        what: what.to_string(),
        args: args.iter().map(|a| a.to_os_string()).collect(),
        named: Path::new(named.as_ref()).display().to_string(),
        outputs: vec![],
        env: vec![],
    }
}

impl Row {
    fn outputs(mut self, o: &[&Path]) -> Row {
        self.outputs = o.iter().map(|p| p.to_path_buf()).collect();
        self
    }

    /// The error names `p` instead.
    fn naming(mut self, p: impl AsRef<OsStr>) -> Row {
        self.named = Path::new(p.as_ref()).display().to_string();
        self
    }
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The fixtures every row draws on, in one scratch folder.
struct World {
    d: PathBuf,
    /// A tiny f32 model folder that works.
    model: PathBuf,
    /// A regular file: where a folder is expected, and as the parent of an
    /// output that therefore cannot be written. The tests run as root (here
    /// and in CI), and root ignores permission bits, so a 0o555 folder would
    /// still be writable; a path under a file fails for everyone.
    file: PathBuf,
    /// An empty folder: where a file is expected.
    dir: PathBuf,
    /// A PNG header: a file of another format.
    png: PathBuf,
    /// A path whose name is not UTF-8 (does not exist).
    non_utf8: PathBuf,
    plugins: Option<PathBuf>,
}

fn world() -> World {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-bad-input");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let model = d.join("model");
    common::init_tiny_model(&model, &["--dtype", "f32"]);
    let file = d.join("a-file");
    std::fs::write(&file, "just text\n").unwrap();
    let dir = d.join("a-dir");
    std::fs::create_dir(&dir).unwrap();
    let png = d.join("image.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    let non_utf8 = d.join(OsStr::from_bytes(b"bad\xff-name"));
    let plugins = plugins_support::plugin_dir("cli_bad_input (plugin rows)");
    World {
        d,
        model,
        file,
        dir,
        png,
        non_utf8,
        plugins,
    }
}

/// Writes `bytes` cut to half their length at `path`.
fn truncated(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    path.to_path_buf()
}

/// A copy of the model folder with `file` replaced by `bytes`.
fn model_with(w: &World, name: &str, file: &str, bytes: &[u8]) -> PathBuf {
    let m = w.d.join(name);
    std::fs::create_dir_all(&m).unwrap();
    for e in std::fs::read_dir(&w.model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), m.join(e.file_name())).unwrap();
    }
    std::fs::write(m.join(file), bytes).unwrap();
    m
}

/// The five bad inputs of one file or folder argument: (case, path, what
/// the error names).
fn bad_inputs(
    w: &World,
    truncated: &Path,
    other_format: &Path,
    want_dir: bool,
) -> Vec<(String, PathBuf)> {
    let missing = w.d.join("does-not-exist");
    let wrong_kind = if want_dir { &w.file } else { &w.dir };
    vec![
        ("missing".into(), missing),
        (
            if want_dir {
                "a file for a folder"
            } else {
                "a folder for a file"
            }
            .into(),
            wrong_kind.clone(),
        ),
        ("truncated".into(), truncated.to_path_buf()),
        ("another format".into(), other_format.to_path_buf()),
        ("non-UTF-8 path".into(), w.non_utf8.clone()),
    ]
}

/// Rows for `before PATH after` over the five bad inputs.
#[allow(clippy::too_many_arguments)]
fn input_rows(
    rows: &mut Vec<Row>,
    w: &World,
    cmd: &str,
    before: &[&OsStr],
    after: &[&OsStr],
    (trunc, other): (&Path, &Path),
    want_dir: bool,
    outputs: &[&Path],
) {
    for (case, path) in bad_inputs(w, trunc, other, want_dir) {
        let mut args: Vec<&OsStr> = before.to_vec();
        args.push(path.as_os_str());
        args.extend_from_slice(after);
        rows.push(row(&format!("{cmd}: {case}"), &args, &path).outputs(outputs));
    }
}

/// Rows for `before OUT after` over the two outputs OUT that cannot be
/// written: one under a regular file, and a file where a folder belongs
/// (`want_dir`) or a folder where a file belongs. Each error names OUT.
fn output_rows(
    w: &World,
    cmd: &str,
    before: &[&OsStr],
    after: &[&OsStr],
    want_dir: bool,
) -> [Row; 2] {
    let (wrong_kind, wrong) = if want_dir {
        ("a file for the output folder", &w.file)
    } else {
        ("a folder for the output file", &w.dir)
    };
    [
        ("unwritable output", w.file.join("out")),
        (wrong_kind, wrong.clone()),
    ]
    .map(|(case, out)| {
        let mut args = before.to_vec();
        args.push(out.as_os_str());
        args.extend_from_slice(after);
        row(&format!("{cmd}: {case}"), &args, &out)
    })
}

fn run(r: &Row, cache: &Path) -> (i32, String, String) {
    common::output(
        common::igpo_command()
            .arg("-q")
            .args(&r.args)
            .env_remove("IGPO_CPU_MATMUL")
            .env_remove("IGPO_CPU_ISA")
            .env_remove("RUST_LOG")
            .env("IGPO_CACHE_DIR", cache)
            .envs(r.env.iter().copied())
            .current_dir(cache.parent().unwrap()),
    )
}

/// Temporary files a writer may leave (`.NAME.tmp-PID`, `.probe-`, `.building-`).
fn leftovers(dir: &Path, found: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            && (name.contains(".tmp-") || name.contains(".probe-") || name.contains(".building-"))
        {
            found.push(e.path());
        }
        if e.file_type().unwrap().is_dir() {
            leftovers(&e.path(), found);
        }
    }
}

#[test]
fn every_command_x_bad_input_is_one_error_line_and_exit_code_2() {
    let w = world();
    let d = &w.d;
    let cache = d.join("cache");
    let m = w.model.as_os_str();
    let tok_bytes = std::fs::read(w.model.join("tokenizer.json")).unwrap();
    let st_bytes = std::fs::read(w.model.join("model.safetensors")).unwrap();
    let trunc_model = model_with(
        &w,
        "trunc-model",
        "model.safetensors",
        &st_bytes[..st_bytes.len() / 2],
    );
    let png_model = model_with(
        &w,
        "png-model",
        "model.safetensors",
        &std::fs::read(&w.png).unwrap(),
    );
    let trunc_tok = truncated(&d.join("trunc-tokenizer.json"), &tok_bytes);
    let unwritable = w.file.join("out"); // under a regular file: fails even as root
    let mut rows: Vec<Row> = vec![];
    let models = (trunc_model.as_path(), png_model.as_path());

    // generate, model inspect, bench forward: a model folder.
    input_rows(
        &mut rows,
        &w,
        "generate",
        &[os("generate"), os("--model")],
        &[os("--prompt"), os("hi")],
        models,
        true,
        &[],
    );
    input_rows(
        &mut rows,
        &w,
        "model inspect",
        &[os("model"), os("inspect")],
        &[],
        models,
        true,
        &[],
    );
    let bench_out = d.join("bench.json");
    let bf = [
        os("--prefill-tokens"),
        os("8"),
        os("--decode-prompt-tokens"),
        os("4"),
        os("--decode-tokens"),
        os("2"),
        os("--batches"),
        os("1"),
        os("--repeats"),
        os("1"),
        os("--train-seq"),
        os("8"),
    ];
    let mut after = bf.to_vec();
    after.extend([os("--out"), bench_out.as_os_str()]);
    input_rows(
        &mut rows,
        &w,
        "bench forward",
        &[os("bench"), os("forward"), os("--model")],
        &after,
        models,
        true,
        &[&bench_out],
    );
    let mut args = vec![os("bench"), os("forward"), os("--model"), m];
    args.extend_from_slice(&bf);
    args.extend([os("--out"), unwritable.as_os_str()]);
    rows.push(row("bench forward: unwritable --out", &args, &unwritable));
    rows.push(
        row(
            "bench retrieval: unwritable --out",
            &[
                os("bench"),
                os("retrieval"),
                os("--work"),
                d.join("work").as_os_str(),
                os("--plugins"),
                w.dir.as_os_str(),
                os("--out"),
                unwritable.as_os_str(),
            ],
            &unwritable,
        )
        .outputs(&[&d.join("work")]),
    );

    // model init: --vocab-from a tokenizer.json; the output folder.
    let init_out = d.join("init-out");
    for (case, path) in bad_inputs(&w, &trunc_tok, &w.png, false) {
        let mut a = common::tiny_model_args("qwen2", &path);
        a.push(init_out.clone().into());
        let refs: Vec<&OsStr> = a.iter().map(OsString::as_os_str).collect();
        rows.push(
            row(&format!("model init --vocab-from: {case}"), &refs, &path).outputs(&[&init_out]),
        );
    }
    let real_tok = common::tiny_model_args("qwen2", &w.model.join("tokenizer.json"));
    let refs: Vec<&OsStr> = real_tok.iter().map(OsString::as_os_str).collect();
    rows.extend(output_rows(&w, "model init", &refs, &[], true));

    // model import-gguf: a GGUF file.
    let gguf_out = d.join("gguf-out");
    let trunc_gguf = d.join("trunc.gguf");
    std::fs::write(&trunc_gguf, b"GGUF\x03\x00\x00\x00\x05").unwrap();
    input_rows(
        &mut rows,
        &w,
        "model import-gguf",
        &[os("model"), os("import-gguf")],
        &[gguf_out.as_os_str()],
        (&trunc_gguf, &w.png),
        false,
        &[&gguf_out],
    );

    // model export: a model folder or checkpoint; the new folder.
    let export_out = d.join("export-out");
    input_rows(
        &mut rows,
        &w,
        "model export",
        &[os("model"), os("export")],
        &[export_out.as_os_str()],
        models,
        true,
        &[&export_out],
    );
    rows.extend(output_rows(
        &w,
        "model export",
        &[os("model"), os("export"), m],
        &[],
        true,
    ));

    // sft: the run file, the data file it names, its run folder.
    let sft_jsonl = common::SFT_LINE;
    std::fs::write(d.join("sft.jsonl"), format!("{sft_jsonl}\n")).unwrap();
    let sft_toml = common::SFT_TOML;
    // Cut inside a quoted string, so that the rest is not valid TOML either.
    let cut = |text: &str, at: &str| text[..text.find(at).unwrap() + at.len() / 2].to_string();
    let sft_trunc = d.join("sft-trunc.toml");
    std::fs::write(&sft_trunc, cut(sft_toml, "\"sft.jsonl\"")).unwrap();
    let sft_run = d.join("sft-run");
    input_rows(
        &mut rows,
        &w,
        "sft --config",
        &[os("sft"), os("--config")],
        &[],
        (&sft_trunc, &w.png),
        false,
        &[&sft_run],
    );
    let variant = |name: &str, text: String| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    truncated(&d.join("sft-half.jsonl"), sft_jsonl.as_bytes());
    for (case, from, to, named) in [
        (
            "data file truncated",
            "\"sft.jsonl\"",
            "\"sft-half.jsonl\"",
            d.join("sft-half.jsonl"),
        ),
        (
            "data file missing",
            "\"sft.jsonl\"",
            "\"nope.jsonl\"",
            d.join("nope.jsonl"),
        ),
        (
            "truncated model",
            "\"model\"",
            "\"trunc-model\"",
            trunc_model.join("model.safetensors"),
        ),
        (
            "unwritable run folder",
            "\"sft-run\"",
            "\"a-file/run\"",
            unwritable.with_file_name("run"),
        ),
    ] {
        let p = variant(
            &format!("sft-{}.toml", case.replace(' ', "-")),
            sft_toml.replace(from, to),
        );
        rows.push(
            row(
                &format!("sft: {case}"),
                &[os("sft"), os("--config"), p.as_os_str()],
                &named,
            )
            .outputs(&[&sft_run]),
        );
    }

    // report: run folders; the HTML file.
    let fixture = common::workspace().join("tests/fixtures/report/igpo");
    let report_out = d.join("report.html");
    let run_with = |name: &str, file: &str, bytes: &[u8]| {
        let r = d.join(name);
        std::fs::create_dir_all(&r).unwrap();
        for e in std::fs::read_dir(&fixture).unwrap().flatten() {
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), r.join(e.file_name())).unwrap();
            }
        }
        std::fs::write(r.join(file), bytes).unwrap();
        r
    };
    let metrics = std::fs::read(fixture.join("metrics.jsonl")).unwrap();
    let trunc_run = run_with(
        "trunc-run",
        "metrics.jsonl",
        &metrics[..metrics.len() / 2 + 7],
    );
    let png_run = run_with("png-run", "metrics.jsonl", &std::fs::read(&w.png).unwrap());
    input_rows(
        &mut rows,
        &w,
        "report",
        &[os("report")],
        &[os("--out"), report_out.as_os_str()],
        (&trunc_run, &png_run),
        true,
        &[&report_out],
    );
    rows.extend(output_rows(
        &w,
        "report",
        &[os("report"), fixture.as_os_str(), os("--out")],
        &[],
        false,
    ));

    // data corpus: SQuAD / wiki JSON files; the JSONL written.
    let squad = serde_json::json!({"data": [{"title": "T", "paragraphs": [{"context": "Paris is the capital of France.", "qas": []}]}]}).to_string();
    std::fs::write(d.join("squad.json"), &squad).unwrap();
    let trunc_squad = truncated(&d.join("squad-half.json"), squad.as_bytes());
    let corpus_out = d.join("corpus-out.jsonl");
    input_rows(
        &mut rows,
        &w,
        "data corpus --squad",
        &[os("data"), os("corpus"), os("--squad")],
        &[os("--out"), corpus_out.as_os_str()],
        (&trunc_squad, &w.png),
        false,
        &[&corpus_out],
    );
    rows.push(
        row(
            "data corpus --wiki: SQuAD JSON",
            &[
                os("data"),
                os("corpus"),
                os("--wiki"),
                d.join("squad.json").as_os_str(),
                os("--out"),
                corpus_out.as_os_str(),
            ],
            d.join("squad.json"),
        )
        .outputs(&[&corpus_out]),
    );
    let [unwritable_corpus, folder_corpus] = output_rows(
        &w,
        "data corpus",
        &[
            os("data"),
            os("corpus"),
            os("--squad"),
            d.join("squad.json").as_os_str(),
            os("--out"),
        ],
        &[],
        false,
    );
    rows.extend([unwritable_corpus.naming(&w.file), folder_corpus]);

    // data index: corpus JSONL files; the index folder. serve retrieval: the index.
    let corpus = "{\"id\":\"p0\",\"title\":\"France\",\"text\":\"Paris is the capital of France.\"}\n{\"id\":\"p1\",\"title\":\"Italy\",\"text\":\"Rome is the capital of Italy.\"}\n";
    std::fs::write(d.join("corpus.jsonl"), corpus).unwrap();
    let trunc_corpus = truncated(&d.join("corpus-half.jsonl"), corpus.as_bytes());
    let index_out = d.join("index-out");
    input_rows(
        &mut rows,
        &w,
        "data index",
        &[os("data"), os("index")],
        &[os("--out"), index_out.as_os_str()],
        (&trunc_corpus, &d.join("squad.json")),
        false,
        &[&index_out],
    );
    let corpus_path = d.join("corpus.jsonl");
    rows.extend(output_rows(
        &w,
        "data index",
        &[
            os("data"),
            os("index"),
            corpus_path.as_os_str(),
            os("--out"),
        ],
        &[],
        true,
    ));
    let index = d.join("index");
    let (code, _, err) = common::igpo(&[
        "-q",
        "data",
        "index",
        corpus_path.to_str().unwrap(),
        "--out",
        index.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let index_with = |name: &str, file: &str, bytes: &[u8]| {
        let ix = d.join(name);
        std::fs::create_dir_all(&ix).unwrap();
        for e in std::fs::read_dir(&index).unwrap().flatten() {
            std::fs::copy(e.path(), ix.join(e.file_name())).unwrap();
        }
        std::fs::write(ix.join(file), bytes).unwrap();
        ix
    };
    let docs = std::fs::read(index.join("docs.jsonl")).unwrap();
    let terms = std::fs::read(index.join("terms.bin")).unwrap();
    let trunc_docs = index_with("index-trunc-docs", "docs.jsonl", &docs[..docs.len() / 2]);
    let trunc_terms = index_with("index-trunc-terms", "terms.bin", &terms[..terms.len() / 2]);
    let png_index = index_with("index-png", "index.json", &std::fs::read(&w.png).unwrap());
    let serve = [os("--addr"), os("127.0.0.1:0")];
    input_rows(
        &mut rows,
        &w,
        "serve retrieval",
        &[os("serve"), os("retrieval"), os("--index")],
        &serve,
        (&trunc_docs, &png_index),
        true,
        &[],
    );
    rows.push(row(
        "serve retrieval: truncated terms.bin",
        &[
            os("serve"),
            os("retrieval"),
            os("--index"),
            trunc_terms.as_os_str(),
            os("--addr"),
            os("127.0.0.1:0"),
        ],
        trunc_terms.join("terms.bin"),
    ));

    // plugin new: the project folder.
    let [unwritable_new, file_new] = output_rows(
        &w,
        "plugin new",
        &[
            os("plugin"),
            os("new"),
            os("my-tool"),
            os("--lang"),
            os("rust"),
            os("--out"),
        ],
        &[],
        true,
    );
    rows.extend([unwritable_new.naming(&w.file), file_new]);

    // The CPU kernels' environment variables.
    for (var, value) in [("IGPO_CPU_MATMUL", "fastest"), ("IGPO_CPU_ISA", "sse4")] {
        for args in [
            vec![os("model"), os("inspect"), m],
            vec![os("generate"), os("--model"), m, os("--prompt"), os("hi")],
        ] {
            let mut r = row(&format!("{var}={value} {:?}", args[0]), &args, var);
            r.env = vec![(var, value)];
            r.named = format!("{var}=\"{value}\"");
            rows.push(r);
        }
    }

    if let Some(p) = &w.plugins {
        plugin_rows(&mut rows, &w, p, models);
    }

    let t0 = std::time::Instant::now();
    let mut failures = vec![];
    for r in &rows {
        let (code, out, err) = run(r, &cache);
        let lines: Vec<&str> = err.lines().collect();
        let mut why = vec![];
        if code != 2 {
            why.push(format!("exit code {code}"));
        }
        if lines.len() != 1 || !lines[0].starts_with("error: ") {
            why.push("not exactly one `error: ` line".to_string());
        } else if !lines[0].contains(&r.named) {
            why.push(format!("does not name `{}`", r.named));
        }
        if err.contains("panicked") {
            why.push("panicked".into());
        }
        for o in &r.outputs {
            if o.exists() {
                why.push(format!("left {}", o.display()));
                let _ = std::fs::remove_dir_all(o);
                let _ = std::fs::remove_file(o);
            }
        }
        let mut left = vec![];
        leftovers(d, &mut left);
        for l in &left {
            why.push(format!("left temporary {}", l.display()));
            let _ = std::fs::remove_dir_all(l);
            let _ = std::fs::remove_file(l);
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {}  stdout: {}",
                r.what,
                why.join("; "),
                err,
                out
            ));
        }
    }
    eprintln!("{} rows in {:.1} s", rows.len(), t0.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(d);
}

/// Rows over the built plugins: plugin check/describe/call/prompt/bench,
/// bench agent, rollout, eval, train, data synth.
fn plugin_rows(rows: &mut Vec<Row>, w: &World, p: &Path, models: (&Path, &Path)) {
    let d = &w.d;
    let m = w.model.as_os_str();
    let unwritable = w.file.join("out");
    let wasm = std::fs::read(p.join("echo-tool.wasm")).unwrap();
    let trunc_wasm = truncated(&d.join("trunc.wasm"), &wasm);
    let wasms = (trunc_wasm.as_path(), w.png.as_path());
    let echo = p.join("echo-tool.wasm");
    for sub in ["check", "describe", "call", "prompt"] {
        input_rows(
            rows,
            w,
            &format!("plugin {sub}"),
            &[os("plugin"), os(sub)],
            &[],
            wasms,
            false,
            &[],
        );
    }
    let bench = [os("--calls"), os("3"), os("--instances"), os("1")];
    let bench_out = d.join("plugin-bench.json");
    let mut after = vec![
        os("--args"),
        os("{\"text\":\"x\"}"),
        os("--out"),
        bench_out.as_os_str(),
    ];
    after.extend_from_slice(&bench);
    input_rows(
        rows,
        w,
        "plugin bench",
        &[os("plugin"), os("bench")],
        &after,
        wasms,
        false,
        &[&bench_out],
    );
    let half_args = d.join("args-half.jsonl");
    std::fs::write(&half_args, "{\"text\": \"ab").unwrap();
    let mut before = vec![os("plugin"), os("bench"), echo.as_os_str()];
    before.extend_from_slice(&bench);
    before.push(os("--args-file"));
    input_rows(
        rows,
        w,
        "plugin bench --args-file",
        &before,
        &[],
        (&half_args, &w.png),
        false,
        &[],
    );
    let mut args = vec![
        os("plugin"),
        os("bench"),
        echo.as_os_str(),
        os("--args"),
        os("{}"),
        os("--out"),
        unwritable.as_os_str(),
    ];
    args.extend_from_slice(&bench);
    rows.push(row("plugin bench: unwritable --out", &args, &unwritable));
    rows.push(row(
        "plugin call: a file for --dir",
        &[
            os("plugin"),
            os("call"),
            echo.as_os_str(),
            os("--dir"),
            w.file.as_os_str(),
        ],
        &w.file,
    ));

    // bench agent: the model folder, the tool.
    let ba = [
        os("--rollouts"),
        os("2"),
        os("--group-size"),
        os("2"),
        os("--max-new-tokens"),
        os("2"),
    ];
    let mut after = vec![os("--tool"), echo.as_os_str()];
    after.extend_from_slice(&ba);
    input_rows(
        rows,
        w,
        "bench agent --model",
        &[os("bench"), os("agent"), os("--model")],
        &after,
        models,
        true,
        &[],
    );
    let mut after = ba.to_vec();
    after.extend([os("--out"), d.join("agent.json").leak_os()]);
    input_rows(
        rows,
        w,
        "bench agent --tool",
        &[os("bench"), os("agent"), os("--model"), m, os("--tool")],
        &after,
        wasms,
        false,
        &[&d.join("agent.json")],
    );
    let mut args = vec![
        os("bench"),
        os("agent"),
        os("--model"),
        m,
        os("--tool"),
        echo.as_os_str(),
        os("--out"),
        unwritable.as_os_str(),
    ];
    args.extend_from_slice(&ba);
    rows.push(row("bench agent: unwritable --out", &args, &unwritable));

    // rollout, eval, train: run files; their outputs.
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::write(d.join("data/qa.jsonl"), common::QA_JSONL).unwrap();
    let pd = p.display();
    let agent = format!(
        "model = \"model\"\nbatch = 1\n[agent]\nmax_turns = 1\nmax_new_tokens_per_turn = 4\nmax_new_tokens_per_rollout = 4\n\n\
         [dataset]\nsplit = \"train\"\n[dataset.plugin]\npath = \"{pd}/qa-dataset.wasm\"\nreadonly_dir = \"data\"\n\
         config = {{ file = \"qa.jsonl\", dev_size = 1 }}\n\n[reward]\npath = \"{pd}/qa-reward.wasm\"\n"
    );
    let agent_path = d.join("agent.toml");
    std::fs::write(&agent_path, &agent).unwrap();
    let agent_trunc = d.join("agent-trunc.toml");
    std::fs::write(&agent_trunc, &agent[..agent.find("qa-dataset").unwrap()]).unwrap();
    let roll_out = d.join("trajs.jsonl");
    let stats = d.join("stats.json");
    input_rows(
        rows,
        w,
        "rollout --config",
        &[os("rollout"), os("--config")],
        &[os("--out"), roll_out.as_os_str()],
        (&agent_trunc, &w.png),
        false,
        &[&roll_out],
    );
    let ap = agent_path.as_os_str();
    rows.extend(output_rows(
        w,
        "rollout",
        &[os("rollout"), os("--config"), ap, os("--out")],
        &[],
        false,
    ));
    rows.push(
        row(
            "rollout: unwritable --stats",
            &[
                os("rollout"),
                os("--config"),
                ap,
                os("--out"),
                roll_out.as_os_str(),
                os("--stats"),
                unwritable.as_os_str(),
            ],
            &unwritable,
        )
        .outputs(&[&roll_out, &stats]),
    );
    let eval_out = d.join("eval-out");
    input_rows(
        rows,
        w,
        "eval --config",
        &[os("eval"), os("--config")],
        &[os("--out-dir"), eval_out.as_os_str()],
        (&agent_trunc, &w.png),
        false,
        &[&eval_out],
    );
    rows.extend(output_rows(
        w,
        "eval",
        &[os("eval"), os("--config"), ap, os("--out-dir")],
        &[],
        true,
    ));
    // A second run file that fails: no trajectories of the first are written.
    rows.push(
        row(
            "eval: second run file missing",
            &[
                os("eval"),
                os("--config"),
                ap,
                d.join("nope.toml").leak_os(),
                os("--out-dir"),
                eval_out.as_os_str(),
            ],
            d.join("nope.toml"),
        )
        .outputs(&[&eval_out]),
    );

    let train = agent.replace("batch = 1\n", "")
        + "\n[rl]\ngroup_size = 2\nprompts_per_step = 1\n\n[train]\nrun_dir = \"train-run\"\nsteps = 1\nmicro_batch = 2\nlogprob_chunk = 40000\n";
    let train_trunc = d.join("train-trunc.toml");
    std::fs::write(&train_trunc, &train[..train.find("qa-dataset").unwrap()]).unwrap();
    let train_run = d.join("train-run");
    input_rows(
        rows,
        w,
        "train --config",
        &[os("train"), os("--config")],
        &[],
        (&train_trunc, &p.join("echo-tool.wasm")),
        false,
        &[&train_run],
    );
    for (case, from, to, named) in [
        (
            "truncated model",
            "model = \"model\"",
            "model = \"trunc-model\"",
            models.0.join("model.safetensors"),
        ),
        (
            "unwritable run folder",
            "\"train-run\"",
            "\"a-file/run\"",
            w.file.join("run"),
        ),
    ] {
        let path = d.join(format!("train-{}.toml", case.replace(' ', "-")));
        std::fs::write(&path, train.replace(from, to)).unwrap();
        rows.push(
            row(
                &format!("train: {case}"),
                &[os("train"), os("--config"), path.as_os_str()],
                &named,
            )
            .outputs(&[&train_run]),
        );
    }

    // sweep: the run file (checked before any run starts: nothing is
    // written); the sweep folder.
    let sweep_out = d.join("sweep-out");
    input_rows(
        rows,
        w,
        "sweep --config",
        &[os("sweep"), os("--config")],
        &[os("--out"), sweep_out.as_os_str()],
        (&train_trunc, &p.join("echo-tool.wasm")),
        false,
        &[&sweep_out, &train_run],
    );
    let sweep_ok = d.join("sweep-ok.toml");
    std::fs::write(&sweep_ok, &train).unwrap();
    rows.extend(output_rows(
        w,
        "sweep --out",
        &[
            os("sweep"),
            os("--config"),
            sweep_ok.as_os_str(),
            os("--out"),
        ],
        &[],
        true,
    ));

    // data synth: the agent run file; the output folder.
    let synth = format!(
        "model = \"model\"\n[agent]\nmax_turns = 2\nsystem_prompt = \"Answer.\"\n[[tools]]\npath = \"{pd}/bm25-search.wasm\"\n\
         readonly_dir = \".\"\nconfig = {{ k = 1 }}\n[dataset.plugin]\npath = \"{pd}/qa-dataset.wasm\"\n[reward]\npath = \"{pd}/qa-reward.wasm\"\n"
    );
    let synth_path = d.join("synth.toml");
    std::fs::write(&synth_path, &synth).unwrap();
    let synth_trunc = d.join("synth-trunc.toml");
    std::fs::write(&synth_trunc, &synth[..synth.find("bm25").unwrap()]).unwrap();
    let small = [
        os("--people"),
        os("10"),
        os("--cities"),
        os("4"),
        os("--companies"),
        os("3"),
        os("--countries"),
        os("2"),
        os("--train"),
        os("4"),
        os("--dev"),
        os("2"),
        os("--vocab-size"),
        os("300"),
    ];
    let synth_out = d.join("synth-out");
    let mut before = vec![os("data"), os("synth"), os("--out"), synth_out.as_os_str()];
    before.extend_from_slice(&small);
    before.push(os("--agent-config"));
    input_rows(
        rows,
        w,
        "data synth --agent-config",
        &before,
        &[],
        (&synth_trunc, &w.png),
        false,
        &[&synth_out],
    );
    rows.extend(output_rows(
        w,
        "data synth",
        &[
            os("data"),
            os("synth"),
            os("--agent-config"),
            synth_path.as_os_str(),
            os("--out"),
        ],
        &small,
        true,
    ));
}

/// A `&'static OsStr` of a path built inline (the test process is short).
trait LeakOs {
    fn leak_os(self) -> &'static OsStr;
}

impl LeakOs for PathBuf {
    fn leak_os(self) -> &'static OsStr {
        Box::leak(self.into_os_string().into_boxed_os_str())
    }
}

/// A model folder, a run file, an output file and an output folder whose
/// names are not UTF-8 work like any other.
#[test]
fn non_utf8_paths_work() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-non-utf8");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let model = d.join(OsStr::from_bytes(b"model-\xff"));
    common::init_tiny_model(&model, &[]);
    let exported = d.join(OsStr::from_bytes(b"export-\xfe"));
    for args in [
        vec![os("model"), os("inspect"), model.as_os_str()],
        vec![
            os("generate"),
            os("--model"),
            model.as_os_str(),
            os("--prompt"),
            os("hi"),
            os("--max-new-tokens"),
            os("2"),
        ],
        vec![
            os("model"),
            os("export"),
            model.as_os_str(),
            exported.as_os_str(),
        ],
    ] {
        let (code, _, err) = common::output(common::igpo_command().arg("-q").args(&args));
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert!(exported.join("config.json").is_file());
    let _ = std::fs::remove_dir_all(&d);
}

/// An output under folders that do not exist yet makes them (`mkdir -p`),
/// as the README's `igpo model export ... target/models/NAME` needs.
#[test]
fn outputs_under_missing_folders_are_made() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-missing-parents");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let model = d.join("model");
    common::init_tiny_model(&model, &[]);
    let corpus = d.join("corpus.jsonl");
    std::fs::write(
        &corpus,
        "{\"id\":\"p0\",\"title\":\"T\",\"text\":\"Paris is in France.\"}\n",
    )
    .unwrap();
    let exported = d.join("new/models/export");
    let index = d.join("new/corpus/index");
    for args in [
        vec![
            os("model"),
            os("export"),
            model.as_os_str(),
            exported.as_os_str(),
        ],
        vec![
            os("data"),
            os("index"),
            corpus.as_os_str(),
            os("--out"),
            index.as_os_str(),
        ],
    ] {
        let (code, _, err) = common::output(common::igpo_command().arg("-q").args(&args));
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert!(exported.join("config.json").is_file());
    assert!(index.is_dir());
    let _ = std::fs::remove_dir_all(&d);
}
