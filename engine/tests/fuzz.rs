//! Every fuzz target (`igpo::fuzz`) for a fixed number of inputs from a fixed
//! seed: part of `cargo test`. No input may panic, run past the time limit
//! or ask for more than 1 GiB at once (this binary's allocator checks).
//!
//! `cargo xtask fuzz` runs the same tests for longer through environment
//! variables: `IGPO_FUZZ_CASES`, `IGPO_FUZZ_SECONDS`, `IGPO_FUZZ_SEED`,
//! `IGPO_FUZZ_CRASH_DIR`, and `IGPO_FUZZ_REPLAY` (a saved input to run
//! again instead). See docs/fuzzing.md.

use std::path::PathBuf;
use std::time::Duration;

use igpo::fuzz::{alloc::CountingAlloc, driver, target};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Inputs per target in `cargo test` (debug build): about 40 s for all on
/// two busy cores.
const CI_CASES: &[(&str, u64)] = &[
    ("protocol", 10000),
    ("gguf", 2000),
    ("dequant", 10000),
    ("safetensors", 6000),
    ("model_config", 6000),
    ("runfile", 3000),
    ("tokenizer", 1500),
    ("report", 2000),
    ("plugin_args", 6000),
    ("plugin_results", 10000),
    ("plugin_call", 3000),
];

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a valid value"))
    })
}

fn run(name: &str) {
    assert!(
        igpo::fuzz::alloc::installed(),
        "the counting allocator is not installed"
    );
    let t = target(name).expect("a known target");
    let time_limit = Duration::from_secs_f64(env("IGPO_FUZZ_TIME_LIMIT").unwrap_or(5.0));
    if let Some(file) = env::<PathBuf>("IGPO_FUZZ_REPLAY") {
        let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let r = driver::replay(t, &input, time_limit);
        eprintln!(
            "fuzz {name}: replayed {} ({} bytes): {r:?}",
            file.display(),
            input.len()
        );
        assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
        return;
    }
    let seconds: Option<f64> = env("IGPO_FUZZ_SECONDS");
    let cases: Option<u64> = env("IGPO_FUZZ_CASES").or(match seconds {
        Some(_) => None,
        None => CI_CASES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c),
    });
    let cfg = driver::Config {
        cases,
        seconds,
        seed: env("IGPO_FUZZ_SEED").unwrap_or(1),
        time_limit,
        crash_dir: env("IGPO_FUZZ_CRASH_DIR")
            .unwrap_or_else(|| std::env::temp_dir().join("igpo-fuzz-crashes")),
    };
    let report = driver::fuzz(t, &cfg);
    eprintln!("{report}");
    assert!(report.failure.is_none(), "{report}");
    if let Some(n) = cfg.cases {
        assert_eq!(report.inputs, n, "{name}: every input ran");
    }
}

#[test]
fn every_target_has_a_ci_budget() {
    for t in igpo::fuzz::TARGETS {
        assert!(
            CI_CASES.iter().any(|(n, _)| *n == t.name),
            "{} has no CI budget",
            t.name
        );
    }
}

macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
    };
}

fuzz_tests!(
    protocol,
    gguf,
    dequant,
    safetensors,
    model_config,
    runfile,
    tokenizer,
    report,
    plugin_args,
    plugin_results,
    plugin_call,
);

/// Every input a fuzz run once failed on (`engine/tests/fuzz_regressions/
/// <target>/`), run again: each was a bug, fixed since.
#[test]
fn regressions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for dir in std::fs::read_dir(&root).expect("tests/fuzz_regressions") {
        let dir = dir.expect("entry").path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let t = target(&name).unwrap_or_else(|| panic!("{}: no such target", dir.display()));
        for file in std::fs::read_dir(&dir).expect("target folder") {
            let file = file.expect("entry").path();
            let input = std::fs::read(&file).expect("read input");
            let r = driver::replay(t, &input, Duration::from_secs(20));
            assert!(r.is_ok(), "{}: {}", file.display(), r.unwrap_err());
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} regression inputs found");
}

#[test]
fn seeds_are_valid_inputs() {
    igpo::fuzz::check_seeds().unwrap();
}
