//! Logs go to stderr through `tracing`: info by default, `-q` warnings and
//! errors only, `-v` debug with level and target, `RUST_LOG` over both; an
//! error stays one line whatever the level.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

/// Runs `igpo` with `RUST_LOG` as given (unset when `None`, whatever the
/// test's own environment says): (exit code, stdout, stderr).
fn igpo_log(args: &[&str], rust_log: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_igpo"));
    cmd.args(args).env_remove("RUST_LOG");
    if let Some(v) = rust_log {
        cmd.env("RUST_LOG", v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tiny_model() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("igpo-logging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::init_tiny_model(&dir, &["--seed", "5"]);
    dir
}

/// `generate` logs its speed line at info and the model it loaded at debug.
const INFO_LINE: &str = "new tokens in";
const DEBUG_LINE: &str = "loaded ";

#[test]
fn flags_and_rust_log_choose_what_is_logged() {
    let dir = tiny_model();
    let d = dir.to_str().unwrap();
    let generate = |flags: &[&str], rust_log: Option<&str>| {
        let mut args = flags.to_vec();
        args.extend(["generate", "--model", d, "--prompt", "hi"]);
        args.extend(["--max-new-tokens", "2"]);
        let (code, out, err) = igpo_log(&args, rust_log);
        assert_eq!(code, 0, "{flags:?} RUST_LOG={rust_log:?}: {err}");
        assert!(!out.is_empty(), "the reply goes to stdout: {out:?}");
        assert!(!out.contains(INFO_LINE), "logs stay off stdout: {out}");
        err
    };

    // Default: the info line as plain text, as `eprintln!` printed it; no debug.
    let err = generate(&[], None);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("[9 prompt + 2 new tokens in "), "{err}");
    assert!(!err.contains(DEBUG_LINE), "{err}");

    // -q / --quiet and RUST_LOG=warn: silent.
    assert_eq!(generate(&["-q"], None), "");
    assert_eq!(generate(&["--quiet"], None), "");
    assert_eq!(generate(&[], Some("warn")), "");

    // -v: debug too, each line with its level and target.
    let err = generate(&["-v"], None);
    let debug = err.lines().find(|l| l.contains(DEBUG_LINE)).expect(&err);
    assert!(debug.contains("DEBUG igpo::model:"), "{err}");
    assert!(debug.contains(d), "names the folder: {debug}");
    let info = err.lines().find(|l| l.contains(INFO_LINE)).expect(&err);
    assert!(info.contains("INFO igpo::cli:"), "{err}");

    // RUST_LOG overrides the flags: debug without -v, silence despite -v.
    let err = generate(&[], Some("igpo=debug"));
    assert!(err.contains(&format!("debug: {DEBUG_LINE}")), "{err}");
    assert_eq!(generate(&["-v"], Some("error")), "");

    // A bad RUST_LOG: one warning, then the default levels.
    let err = generate(&[], Some("[["));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("warning: RUST_LOG=[["), "{err}");
    assert!(lines[1].contains(INFO_LINE), "{err}");

    // The flags are global: after the subcommand too.
    let (code, _, err) = igpo_log(
        &[
            "generate",
            "-q",
            "--model",
            d,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "1",
        ],
        None,
    );
    assert_eq!((code, err.as_str()), (0, ""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_error_is_one_line_at_every_level() {
    let missing = std::env::temp_dir().join(format!("igpo-logging-none-{}", std::process::id()));
    let m = missing.to_str().unwrap();
    for (flags, rust_log) in [
        (&[][..], None),
        (&["-v"][..], None),
        (&["-vv"][..], None),
        (&["-q"][..], None),
        (&[][..], Some("trace")),
    ] {
        let mut args = flags.to_vec();
        args.extend(["generate", "--model", m, "--prompt", "hi"]);
        let (code, _, err) = igpo_log(&args, rust_log);
        assert_eq!(code, 2, "{flags:?} {rust_log:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{flags:?} {rust_log:?}: {err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(m),
            "{err}"
        );
    }
    // -q and -v together are a usage error (clap's, exit code 2).
    let (code, _, err) = igpo_log(&["-q", "-v", "config", "default"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--quiet"), "{err}");
}
