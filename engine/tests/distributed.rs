//! Data-parallel SFT and RL over MPI: `mpirun -np 2 igpo sft` and `igpo
//! train` against one process with the same global batch, 2-rank runs
//! resumed from their checkpoints (SFT by 2 ranks and by 1), a rank killed
//! mid-run, and steps that do not split over the ranks.
//! Needs the `mpi` feature and Open MPI's `mpirun` (`cargo xtask test`
//! installs it and enables the feature).

use crate::common;
#[cfg(feature = "mpi")]
use crate::plugins_support;
#[cfg(feature = "mpi")]
use crate::rl_support;

#[cfg(not(feature = "mpi"))]
#[test]
fn data_parallel_needs_the_mpi_feature() {
    eprintln!(
        "not run: this test binary was built without the `mpi` feature \
         (`cargo xtask test` builds with it; by hand: `cargo test --features igpo/mpi`)"
    );
}

/// `igpo model inspect --ranks N`: the training state per rank, whole and
/// with AdamW's moments sharded (no MPI needed to plan a job).
#[test]
fn inspect_reports_the_training_state_per_rank() {
    let d = std::env::temp_dir().join(format!("igpo-inspect-ranks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    common::init_tiny_model(&d, &[]);
    let dir = d.to_str().unwrap();
    let gib = |line: &str, after: &str| -> f64 {
        let rest = line
            .split(after)
            .nth(1)
            .unwrap_or_else(|| panic!("{after}: {line}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let (code, out, err) = common::igpo(&["model", "inspect", dir, "--ranks", "4"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("per rank:"))
        .unwrap_or_else(|| panic!("no per-rank line: {out}"));
    let (whole, sharded) = (gib(line, "ranks: "), gib(line, "zero_stage = 0); "));
    assert!(sharded < whole, "{line}");
    assert!(line.contains("1/4 = "), "{line}");
    // ZeRO-2: the tiny model's tied embedding is nearly all of it, and it
    // is live during the backward: at most stage 1's.
    let gradients_too = gib(line, " M); ");
    assert!(gradients_too <= sharded, "{line}");
    assert!(line.contains("optim.zero_stage = 2"), "{line}");
    let fit = out.lines().find(|l| l.starts_with("fits on cpu")).unwrap();
    assert!(
        fit.contains("one of 4 ranks with optim.zero_stage = 1"),
        "{fit}"
    );
    // One rank: no per-rank line, the single-process check.
    let (code, out, _) = common::igpo(&["model", "inspect", dir]);
    assert_eq!(code, 0);
    assert!(!out.contains("per rank:"), "{out}");
    let (code, _, err) = common::igpo(&["model", "inspect", dir, "--ranks", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ranks"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[cfg(feature = "mpi")]
mod mpi {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use igpo::backend::Cpu;
    use igpo::model::init::{random_weights, write_model_dir};
    use igpo::tensor::DType;

    use super::{common, plugins_support, rl_support};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("igpo-dist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A tiny random Qwen2 with the real Qwen2.5 tokenizer, and a run file
    /// of 6 steps of 4 micro-batches of 1 conversation.
    fn setup(dir: &Path) -> PathBuf {
        let config = common::tiny_qwen2(512);
        let tok = common::data_dir().join("qwen2.5-tokenizer.json");
        let weights = random_weights(&config, 7);
        write_model_dir(
            &dir.join("model"),
            &config,
            &weights,
            DType::F32,
            Some(&tok),
        )
        .unwrap();
        let lines = [
            ("Capital of France?", "Paris."),
            ("Capital of Italy?", "Rome."),
            ("2+2?", "4"),
            ("Color of the sky?", "Blue."),
            ("Largest ocean?", "The Pacific."),
        ];
        let data: String = lines
            .iter()
            .map(|(q, a)| {
                format!(
                    "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{q}\"}},\
                     {{\"role\":\"assistant\",\"content\":\"{a}\"}}]}}\n"
                )
            })
            .collect();
        std::fs::write(dir.join("train.jsonl"), data).unwrap();
        let run = "model = \"model\"\n[data]\ntrain = \"train.jsonl\"\nmax_seq_len = 64\n\n\
                   [train]\nrun_dir = \"run\"\nsteps = 6\nmicro_batch = 1\ngrad_accum = 4\n\
                   checkpoint_every = 2\nkeep_last = 5\nlogprob_chunk = 40000\n\n\
                   [optim]\nlr = 0.01\nweight_decay = 0.0\n";
        let path = dir.join("run.toml");
        std::fs::write(&path, run).unwrap();
        path
    }

    /// `mpirun -np <ranks> igpo`: more ranks than cores, as root (CI
    /// containers), shared memory without the cross-process copy that
    /// containers often forbid.
    fn mpirun(ranks: usize) -> Command {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "-np", &ranks.to_string()])
            .arg(env!("CARGO_BIN_EXE_igpo"))
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        c
    }

    /// `igpo <command> --config <config>` with `args`, as `ranks` MPI
    /// ranks (1: a plain process).
    fn igpo(ranks: usize, command: &str, config: &Path, args: &[&str]) -> std::process::Output {
        let igpo = env!("CARGO_BIN_EXE_igpo");
        let mut cmd = if ranks == 1 {
            Command::new(igpo)
        } else {
            mpirun(ranks)
        };
        cmd.args([command, "--config"]).arg(config).args(args);
        if let Some(plugins) = std::env::var_os("IGPO_PLUGIN_DIR") {
            // Plugins compiled once, not once per rank and run.
            cmd.env("IGPO_CACHE_DIR", Path::new(&plugins).join(".cache"));
        }
        cmd.output().expect("mpirun runs (Open MPI installed?)")
    }

    fn sft(ranks: usize, config: &Path, args: &[&str]) -> std::process::Output {
        igpo(ranks, "sft", config, args)
    }

    fn ok(out: std::process::Output, what: &str) {
        assert!(
            out.status.success(),
            "{what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// (loss, grad_norm) of every step of a run's `metrics.jsonl`.
    fn metrics(run: &Path) -> Vec<(f64, f64)> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["loss"].as_f64().unwrap(),
                    v["grad_norm"].as_f64().unwrap(),
                )
            })
            .collect()
    }

    /// Every parameter of a checkpoint's f32 master weights, flattened.
    fn weights(checkpoint: &Path) -> Vec<f32> {
        let m = igpo::model::load(checkpoint, Cpu).unwrap();
        m.params().iter().flat_map(|p| p.data().to_vec()).collect()
    }

    /// Final weights of runs whose sums add in another order: see the test.
    const WEIGHT_TOLERANCE: f64 = 1e-3;

    fn largest_difference(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn two_ranks_equal_one_process_and_resume_exactly() {
        let solo = scratch("solo");
        let duo = scratch("duo");
        let cut = scratch("cut");
        ok(sft(1, &setup(&solo), &[]), "1 process");
        ok(sft(2, &setup(&duo), &[]), "2 ranks");
        // Same global batch: per-step loss and gradient norm, final weights
        // within float-summation tolerance (the ranks' partial sums add in
        // another order).
        let (a, b) = (metrics(&solo.join("run")), metrics(&duo.join("run")));
        assert_eq!(a.len(), 6, "one metrics line a step, written once");
        assert_eq!(b.len(), 6, "rank 0 alone writes the metrics");
        let mut worst = (0.0f64, 0.0f64);
        for (s, d) in a.iter().zip(&b) {
            worst.0 = worst.0.max((s.0 - d.0).abs() / s.0.abs());
            worst.1 = worst.1.max((s.1 - d.1).abs() / s.1.abs());
        }
        let final_of = |d: &Path| d.join("run/checkpoints/step-6");
        let dw = largest_difference(&weights(&final_of(&solo)), &weights(&final_of(&duo)));
        eprintln!(
            "2 ranks vs 1 process: largest relative difference loss {:.1e}, grad norm {:.1e}; \
             largest weight difference {dw:.1e}",
            worst.0, worst.1
        );
        assert!(
            worst.0 < 1e-5 && worst.1 < 1e-4,
            "metrics differ: {worst:?}"
        );
        // AdamW divides by sqrt(v): a weight whose gradient is near 0 turns
        // a last-bit difference into a visible one. Each step moves a weight
        // by about lr (0.01) at most; 1e-3 is a sixtieth of 6 steps' reach.
        assert!(dw < WEIGHT_TOLERANCE, "final weights differ by {dw}");

        // Stopped after step 3 (between checkpoints 2 and 4) and resumed by
        // 2 ranks: the uninterrupted 2-rank run, bit for bit.
        let config = setup(&cut);
        ok(sft(2, &config, &["--stop-after", "3"]), "2 ranks, stopped");
        ok(sft(2, &config, &["--resume"]), "2 ranks, resumed");
        assert_eq!(metrics(&cut.join("run")), b, "resumed metrics");
        assert!(
            weights(&final_of(&cut)) == weights(&final_of(&duo)),
            "resumed weights"
        );

        // The 2-rank checkpoint of step 4 resumed by 1 process: the rest of
        // the 1-process run, within the same tolerance.
        std::fs::remove_dir_all(cut.join("run/checkpoints/step-6")).unwrap();
        ok(
            sft(1, &config, &["--resume"]),
            "1 process resuming 2 ranks' checkpoint",
        );
        let dw = largest_difference(&weights(&final_of(&cut)), &weights(&final_of(&solo)));
        eprintln!("1 process resuming 2 ranks' step 4: largest weight difference {dw:.1e}");
        assert!(
            dw < WEIGHT_TOLERANCE,
            "resumed by 1 process: weights differ by {dw}"
        );
        for d in [solo, duo, cut] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// A file of the `state/` of a 6-step run's last checkpoint.
    fn final_state(dir: &Path, file: &str) -> Vec<u8> {
        std::fs::read(dir.join("run/checkpoints/step-6/state").join(file)).unwrap()
    }

    /// A 2-rank SFT run with `args` in the fresh folder `dir`, stopped
    /// after step 3 and resumed: `whole`'s metrics and final state, bit for
    /// bit.
    fn stop_and_resume_equals(dir: &Path, args: &[&str], whole: &Path, what: &str) {
        let config = setup(dir);
        let stopped = [args, &["--stop-after", "3"]].concat();
        ok(sft(2, &config, &stopped), &format!("{what}, stopped"));
        let resumed = [args, &["--resume"]].concat();
        ok(sft(2, &config, &resumed), &format!("{what}, resumed"));
        assert_eq!(metrics(&dir.join("run")), metrics(&whole.join("run")));
        for f in ["master.safetensors", "optimizer.safetensors"] {
            let same = final_state(dir, f) == final_state(whole, f);
            assert!(same, "{what}, resumed: {f} differs");
        }
    }

    #[test]
    fn zero_1_equals_plain_data_parallel_and_resumes_exactly() {
        let plain = scratch("zero-plain");
        let zero = scratch("zero-1");
        let cut = scratch("zero-cut");
        // Plain: the gradients summed in one piece after the backward;
        // ZeRO-1: in buckets of 1 KiB while the backward runs.
        ok(
            sft(2, &setup(&plain), &["--set", "optim.bucket_mb=0"]),
            "2 ranks",
        );
        let stage_1 = [
            "--set",
            "optim.zero_stage=1",
            "--set",
            "optim.bucket_mb=0.001",
        ];
        let out = sft(2, &setup(&zero), &stage_1);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ok(out, "2 ranks, ZeRO-1");
        let buckets = buckets_per_rank(&err);
        eprintln!("ZeRO-1 run, gradient buckets per rank: {buckets:?}");
        assert!(
            buckets.len() == 2 && buckets.iter().all(|&n| n > 2),
            "{err}"
        );
        // Each rank keeps the AdamW state of its share of the parameters.
        let kept: Vec<(u64, u64)> = err
            .lines()
            .filter_map(|l| {
                let rest = l.split("keeps the AdamW state of ").nth(1)?;
                let mut w = rest.split_whitespace();
                let kept = w.next()?.parse().ok()?;
                let all = w.nth(1)?.parse().ok()?;
                Some((kept, all))
            })
            .collect();
        eprintln!("ZeRO-1 shares (values kept, of): {kept:?}");
        assert_eq!(kept.len(), 2, "one line a rank: {err}");
        assert_eq!(
            kept[0].0 + kept[1].0,
            kept[0].1,
            "the shares cover the model once"
        );
        assert!(kept.iter().all(|&(k, all)| k > 0 && k < all));
        // The same sums, the same AdamW arithmetic per element: plain data
        // parallelism's metrics, weights and moments, bit for bit.
        assert_eq!(metrics(&zero.join("run")), metrics(&plain.join("run")));
        for f in ["master.safetensors", "optimizer.safetensors"] {
            assert!(
                final_state(&zero, f) == final_state(&plain, f),
                "{f} differs"
            );
        }
        // Stopped after step 3 and resumed (each rank loads its share of
        // the moments): the uninterrupted run, bit for bit.
        stop_and_resume_equals(&cut, &stage_1, &plain, "ZeRO-1");
        for d in [plain, zero, cut] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// The bucket counts the ranks report (`gradients summed in N bucket(s)`).
    fn buckets_per_rank(stderr: &str) -> Vec<usize> {
        stderr
            .lines()
            .filter_map(|l| {
                l.split("gradients summed in ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// ZeRO-2 (each rank receives the summed gradients of its own rows
    /// only): the plain run's losses and weights but for the order in which
    /// the gradient norm adds the ranks' sums of squares; stopped and
    /// resumed, its own uninterrupted run bit for bit.
    #[test]
    fn zero_2_equals_plain_data_parallel_within_rounding_and_resumes_exactly() {
        let plain = scratch("zero2-plain");
        let zero = scratch("zero-2");
        let cut = scratch("zero2-cut");
        ok(sft(2, &setup(&plain), &[]), "2 ranks");
        // Reduce-scattered in buckets of 1 KiB while the backward runs.
        let stage_2 = [
            "--set",
            "optim.zero_stage=2",
            "--set",
            "optim.bucket_mb=0.001",
        ];
        let out = sft(2, &setup(&zero), &stage_2);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ok(out, "2 ranks, ZeRO-2");
        assert!(buckets_per_rank(&err).iter().all(|&n| n > 2), "{err}");
        let said = "and receives the summed gradients of those only";
        assert_eq!(err.matches(said).count(), 2, "one line a rank: {err}");
        let (got, want) = (metrics(&zero.join("run")), metrics(&plain.join("run")));
        let rel = |x: f64, y: f64| (x - y).abs() / y.abs().max(1e-12);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| rel(g.0, w.0).max(rel(g.1, w.1)))
            .fold(0.0, f64::max);
        let last = |d: &Path| weights(&d.join("run/checkpoints/step-6"));
        let w = largest_difference(&last(&zero), &last(&plain));
        eprintln!("ZeRO-2 vs plain data parallel: metrics {worst:.1e} relative, weights {w:.1e}");
        assert_eq!(got.len(), 6);
        assert!(worst < 1e-5, "metrics {worst}");
        assert!(w < 1e-5, "weights {w}");
        stop_and_resume_equals(&cut, &stage_2, &zero, "ZeRO-2");
        for d in [plain, zero, cut] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// The pids of the ranks of `igpo sft --config <config>` with rank
    /// `rank` in their environment (Open MPI's `OMPI_COMM_WORLD_RANK`).
    fn rank_pids(config: &Path, rank: usize) -> Vec<u32> {
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        let config = config.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&read("cmdline")).into_owned();
                cmdline.contains(&config)
                    && !cmdline.starts_with("mpirun")
                    && read("environ")
                        .split(|&b| b == 0)
                        .any(|v| v == want.as_bytes())
            })
            .collect()
    }

    /// A 2-rank SFT job of endless steps, a checkpoint each, with `envs`,
    /// once it has written two checkpoints; and its checkpoint folder.
    fn endless_sft(
        dir: &Path,
        config: &Path,
        envs: &[(&str, &str)],
    ) -> (std::process::Child, PathBuf) {
        let job = mpirun(2)
            .envs(envs.iter().copied())
            .args(["sft", "--config"])
            .arg(config)
            .args([
                "--set",
                "train.steps=100000",
                "--set",
                "train.checkpoint_every=1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let checkpoints = dir.join("run/checkpoints");
        let started = std::time::Instant::now();
        while std::fs::read_dir(&checkpoints).map_or(0, |d| d.count()) < 2 {
            assert!(
                started.elapsed().as_secs() < 120,
                "no checkpoint in 2 minutes"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        (job, checkpoints)
    }

    #[test]
    fn a_rank_killed_mid_run_stops_the_job_and_the_last_checkpoint_resumes() {
        let dir = scratch("killed");
        let config = setup(&dir);
        let (job, checkpoints) = endless_sft(&dir, &config, &[]);
        let victims = rank_pids(&config, 1);
        assert_eq!(victims.len(), 1, "rank 1's process");
        Command::new("kill")
            .args(["-9", &victims[0].to_string()])
            .status()
            .unwrap();
        let killed = std::time::Instant::now();
        let out = job.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "job ended {:.1} s after the kill:\n{err}",
            killed.elapsed().as_secs_f64()
        );
        assert!(!out.status.success(), "the job must fail");
        assert!(
            killed.elapsed().as_secs() < 30,
            "the job outlived its rank by 30 s"
        );
        assert!(err.contains("rank 1"), "the error names the rank: {err}");
        assert!(rank_pids(&config, 0).is_empty(), "rank 0 is gone too");
        // The newest complete checkpoint resumes (2 more steps, 2 ranks).
        let newest = std::fs::read_dir(&checkpoints)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap();
        let steps = format!("train.steps={}", newest + 2);
        ok(
            sft(2, &config, &["--resume", "--set", &steps]),
            "resume after the kill",
        );
        let last = metrics(&dir.join("run"));
        assert_eq!(last.len() as u64, newest + 2, "steps up to the resumed end");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_hung_rank_stops_the_job_after_the_collective_timeout() {
        let dir = scratch("hung");
        let config = setup(&dir);
        let (job, _) = endless_sft(&dir, &config, &[("IGPO_COLLECTIVE_TIMEOUT_S", "3")]);
        // Rank 1 stops (as a process stuck in the kernel would): alive, in
        // no collective. Rank 0 waits in its next one.
        let victims = rank_pids(&config, 1);
        assert_eq!(victims.len(), 1, "rank 1's process");
        let signal = |sig: &str| {
            Command::new("kill")
                .args([sig, &victims[0].to_string()])
                .status()
                .unwrap()
        };
        signal("-STOP");
        let stopped = std::time::Instant::now();
        let out = job.wait_with_output().unwrap();
        let waited = stopped.elapsed().as_secs_f64();
        let _ = signal("-KILL");
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("job ended {waited:.1} s after rank 1 stopped:\n{err}");
        assert!(!out.status.success(), "the job must fail");
        assert!(
            waited < 60.0,
            "the job outlived the 3 s timeout by a minute"
        );
        assert!(
            err.contains("error: rank 0: ") && err.contains("hung or gone"),
            "one line from the rank that waited: {err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_step_that_does_not_split_over_the_ranks_is_one_error_line() {
        let dir = scratch("split");
        let config = setup(&dir);
        let out = sft(2, &config, &["--set", "train.grad_accum=3"]);
        assert!(
            !out.status.success(),
            "3 micro-batches over 2 ranks must fail"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("train.grad_accum") && err.contains("multiple of 2"),
            "{err}"
        );
        assert!(
            !dir.join("run/metrics.jsonl").exists(),
            "nothing written before the error"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Every number of an RL run's `metrics.jsonl` (wall times left out),
    /// a step per entry, by field name (list fields numbered).
    fn rl_numbers(run: &Path, file: &str) -> Vec<Vec<(String, f64)>> {
        std::fs::read_to_string(run.join(file))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let mut out = vec![];
                for (k, v) in v.as_object().unwrap() {
                    if k.ends_with("_s") {
                        continue;
                    }
                    match v {
                        serde_json::Value::Array(a) => {
                            for (i, x) in a.iter().enumerate() {
                                out.push((format!("{k}[{i}]"), x.as_f64().unwrap()));
                            }
                        }
                        v => out.push((k.clone(), v.as_f64().unwrap_or(f64::NAN))),
                    }
                }
                out
            })
            .collect()
    }

    /// The largest relative difference between two runs' numbers (the
    /// same fields in the same steps), and where.
    fn largest_relative(a: &[Vec<(String, f64)>], b: &[Vec<(String, f64)>]) -> (f64, String) {
        assert_eq!(a.len(), b.len(), "steps");
        let mut worst = (0.0f64, String::new());
        for (step, (x, y)) in a.iter().zip(b).enumerate() {
            let names = |v: &[(String, f64)]| v.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
            assert_eq!(names(x), names(y), "fields of step {}", step + 1);
            for ((k, u), (_, v)) in x.iter().zip(y) {
                let d = (u - v).abs() / u.abs().max(v.abs()).max(1e-12);
                if d > worst.0 {
                    worst = (d, format!("{k} of line {}", step + 1));
                }
            }
        }
        worst
    }

    /// The text of every rollout of a step's samples file.
    fn sample_texts(run: &Path, step: u64) -> Vec<String> {
        std::fs::read_to_string(run.join(format!("samples/step-{step}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["text"].as_str().unwrap().to_string()
            })
            .collect()
    }

    /// The tiny RL world of `rl_train.rs` (IGPO with KL and an entropy
    /// bonus, 2 prompts x 3 rollouts a step, a dev split of 2 questions),
    /// 3 steps of 2 mini-batches each.
    fn rl_setup(dir: &Path, plugins: &Path) -> PathBuf {
        rl_support::setup(dir);
        let path = rl_support::run_file(dir, plugins, "", "mini_batches = 2");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("steps = 2", "steps = 3")).unwrap();
        path
    }

    /// `from` copied into `to`, recursively.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let (src, dst) = (e.path(), to.join(e.file_name()));
            if src.is_dir() {
                copy_dir(&src, &dst);
            } else {
                std::fs::copy(&src, &dst).unwrap();
            }
        }
    }

    /// Each step of a 2-rank RL run against the same step of one process
    /// from the same weights (the random model never answers, so only the KL
    /// and entropy terms have gradients; see the SmolLM2 test for
    /// advantages): after a step the two hold weights that differ
    /// in their last bits (the ranks' gradient sums add in another order),
    /// and a random model's nearly flat next-token distribution turns such a
    /// difference into another sampled token within a few dozen. So step
    /// `k` of one process starts from the 2-rank run's checkpoint of step
    /// `k - 1` (`--resume --stop-after k`).
    #[test]
    fn rl_two_ranks_equal_one_process_and_resume_exactly() {
        let name = "rl_two_ranks_equal_one_process_and_resume_exactly";
        let Some(plugins) = plugins_support::plugin_dir(name) else {
            return;
        };
        let duo = scratch("rl-duo");
        ok(igpo(2, "train", &rl_setup(&duo, &plugins), &[]), "2 ranks");
        let d = duo.join("run");
        let b = rl_numbers(&d, "metrics.jsonl");
        assert_eq!(b.len(), 3, "rank 0 alone writes the metrics, a line a step");
        let (mut worst, mut worst_eval, mut worst_w) = ((0.0f64, String::new()), 0.0f64, 0.0f64);
        for step in 1..=3u64 {
            let solo = scratch(&format!("rl-solo-{step}"));
            let config = rl_setup(&solo, &plugins);
            let s = solo.join("run");
            let mut args = vec!["--stop-after".to_string(), step.to_string()];
            if step > 1 {
                copy_dir(&d, &s);
                for later in step..=3 {
                    std::fs::remove_dir_all(s.join(format!("checkpoints/step-{later}"))).unwrap();
                }
                args.push("--resume".into());
            }
            let args: Vec<&str> = args.iter().map(|a| &a[..]).collect();
            ok(igpo(1, "train", &config, &args), "1 process");
            let a = rl_numbers(&s, "metrics.jsonl");
            assert_eq!(a.len() as u64, step);
            let k = step as usize - 1;
            // Each rank rolled out its own groups, each rollout from its own
            // stream, GEMM rows batch invariant: one process's rollouts, so
            // the counts agree exactly and the rest within float-summation
            // tolerance.
            assert_eq!(
                sample_texts(&s, step),
                sample_texts(&d, step),
                "rollouts of step {step}"
            );
            for ((k, u), (_, v)) in a[k].iter().zip(&b[k]) {
                if ["generated_tokens", "grad_tokens", "step", "reward_failures"].contains(&&k[..])
                {
                    assert_eq!(u, v, "{k} of step {step}");
                }
            }
            let w = largest_relative(&a[k..], &b[k..k + 1]);
            if w.0 >= worst.0 {
                worst = (
                    w.0,
                    format!("{} of step {step}", w.1.split(" of").next().unwrap()),
                );
            }
            let e = largest_relative(
                &rl_numbers(&s, "eval.jsonl"),
                &rl_numbers(&d, "eval.jsonl")[..rl_numbers(&s, "eval.jsonl").len()],
            );
            worst_eval = worst_eval.max(e.0);
            let ckpt = |r: &Path| r.join(format!("checkpoints/step-{step}"));
            worst_w = worst_w.max(largest_difference(&weights(&ckpt(&s)), &weights(&ckpt(&d))));
            let _ = std::fs::remove_dir_all(solo);
        }
        eprintln!(
            "RL, each step of 2 ranks vs 1 process from the same weights: largest relative \
             difference of the metrics {:.1e} ({}), of the evaluations {worst_eval:.1e}; largest \
             weight difference {worst_w:.1e}",
            worst.0, worst.1
        );
        assert!(
            worst.0 < 1e-4,
            "metrics differ: {:e} at {}",
            worst.0,
            worst.1
        );
        assert!(worst_eval < 1e-9, "evaluations differ: {worst_eval:e}");
        assert!(worst_w < 1e-5, "weights after a step differ by {worst_w}");

        // ZeRO-1 (AdamW state sharded), its gradients summed in buckets of
        // 1 KiB while the backward runs: plain data parallelism (one
        // bucket), bit for bit.
        let zero = scratch("rl-zero");
        let config = rl_setup(&zero, &plugins);
        let args = [
            "--set",
            "optim.zero_stage=1",
            "--set",
            "optim.bucket_mb=0.001",
        ];
        ok(igpo(2, "train", &config, &args), "2 ranks, ZeRO-1");
        assert_eq!(
            rl_numbers(&zero.join("run"), "metrics.jsonl"),
            b,
            "ZeRO-1 metrics"
        );
        let last = |r: &Path| weights(&r.join("run/checkpoints/step-3"));
        assert!(last(&zero) == last(&duo), "ZeRO-1 weights");

        // Stopped after step 1 and resumed by 2 ranks: the uninterrupted
        // 2-rank run, bit for bit.
        let cut = scratch("rl-cut");
        let config = rl_setup(&cut, &plugins);
        ok(
            igpo(2, "train", &config, &["--stop-after", "1"]),
            "2 ranks, stopped",
        );
        ok(igpo(2, "train", &config, &["--resume"]), "2 ranks, resumed");
        assert_eq!(
            rl_numbers(&cut.join("run"), "metrics.jsonl"),
            b,
            "resumed metrics"
        );
        assert!(last(&cut) == last(&duo), "resumed weights");
        for d in [duo, zero, cut] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// The tool-tuned SmolLM2-135M on SQuAD with the real plugins: it
    /// searches and sometimes answers, so its groups have advantages (the
    /// tiny random model's never do). One IGPO step of 2 prompts x 3
    /// rollouts in 2 mini-batches, by one process and by 2 ranks.
    #[test]
    fn rl_with_advantages_two_ranks_equal_one_process() {
        let name = "rl_with_advantages_two_ranks_equal_one_process";
        let (Some(model), Some(plugins)) = (
            common::smollm2_tool_dir(name),
            plugins_support::plugin_dir(name),
        ) else {
            return;
        };
        // 400 passages: enough to search, quick to index twice per run.
        let mut passages = igpo::data::build_corpus(
            Some(&common::data_dir().join("squad-dev-v1.1.json")),
            Some(&common::data_dir().join("wiki-summaries-en.json")),
        )
        .unwrap();
        passages.truncate(400);
        let run_file = |dir: &Path| {
            std::fs::create_dir_all(dir.join("corpus")).unwrap();
            igpo::data::write_jsonl(&dir.join("corpus/corpus.jsonl"), &passages).unwrap();
            let text = format!(
                r#"model = "{model}"

[agent]
max_turns = 2
max_new_tokens_per_turn = 32
max_new_tokens_per_rollout = 64
max_tool_result_tokens = 48

[[tools]]
path = "{p}/bm25-search.wasm"
readonly_dir = "corpus"
config = {{ k = 1, max_chars = 150 }}

[dataset]
limit = 2
[dataset.plugin]
path = "{p}/qa-dataset.wasm"
readonly_dir = "{data}"
config = {{ file = "squad-dev-v1.1.json", shuffle = true, seed = 7 }}

[reward]
path = "{p}/qa-reward.wasm"

[rl]
group_size = 3
prompts_per_step = 2

[loss]
kl_beta = 0.0

[optim]
lr = 1e-5

[train]
run_dir = "run"
steps = 1
micro_batch = 2
mini_batches = 2
checkpoint_every = 1
samples_per_step = 6
"#,
                model = model.display(),
                p = plugins.display(),
                data = common::data_dir().display(),
            );
            std::fs::write(dir.join("run.toml"), text).unwrap();
            dir.join("run.toml")
        };
        let (solo, duo) = (scratch("rl-adv-solo"), scratch("rl-adv-duo"));
        ok(igpo(1, "train", &run_file(&solo), &[]), "1 process");
        ok(igpo(2, "train", &run_file(&duo), &[]), "2 ranks");
        let (s, d) = (solo.join("run"), duo.join("run"));
        assert_eq!(sample_texts(&s, 1), sample_texts(&d, 1), "rollouts");
        let (a, b) = (
            rl_numbers(&s, "metrics.jsonl"),
            rl_numbers(&d, "metrics.jsonl"),
        );
        let field = |name: &str| b[0].iter().find(|p| p.0 == name).expect("field").1;
        assert!(
            field("zero_adv_ratio") < 1.0 && field("pg_loss") != 0.0,
            "the step has advantages: {b:?}"
        );
        let (worst, at) = largest_relative(&a, &b);
        let ckpt = |r: &Path| weights(&r.join("checkpoints/step-1"));
        let dw = largest_difference(&ckpt(&s), &ckpt(&d));
        eprintln!(
            "RL with advantages (SmolLM2), 2 ranks vs 1 process: largest relative difference \
             of the metrics {worst:.1e} ({at}); largest weight difference {dw:.1e}"
        );
        assert!(worst < 1e-4, "metrics differ: {worst:e} at {at}");
        assert!(dw < 1e-6, "weights differ by {dw}");
        for d in [solo, duo] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn rl_prompts_that_do_not_split_over_the_ranks_are_one_error_line() {
        let name = "rl_prompts_that_do_not_split_over_the_ranks_are_one_error_line";
        let Some(plugins) = plugins_support::plugin_dir(name) else {
            return;
        };
        let dir = scratch("rl-split");
        let config = rl_setup(&dir, &plugins);
        let out = igpo(2, "train", &config, &["--set", "rl.prompts_per_step=3"]);
        assert!(!out.status.success(), "3 prompts over 2 ranks must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("rl.prompts_per_step") && err.contains("multiple of 2"),
            "{err}"
        );
        assert!(
            !dir.join("run/metrics.jsonl").exists(),
            "nothing written before the error"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
