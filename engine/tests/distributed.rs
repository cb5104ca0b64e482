//! Data-parallel SFT over MPI: `mpirun -np 2 igpo sft` against one process
//! with the same global batch, a 2-rank run resumed from its checkpoint (by
//! 2 ranks and by 1), a rank killed mid-run, and a step that does not split
//! over the ranks.
//! Needs the `mpi` feature and Open MPI's `mpirun` (`cargo xtask test`
//! installs it and enables the feature).

mod common;

#[cfg(not(feature = "mpi"))]
#[test]
fn data_parallel_needs_the_mpi_feature() {
    eprintln!(
        "not run: this test binary was built without the `mpi` feature \
         (`cargo xtask test` builds with it; by hand: `cargo test --features igpo/mpi`)"
    );
}

#[cfg(feature = "mpi")]
mod mpi {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use igpo::backend::Cpu;
    use igpo::model::init::{random_weights, write_model_dir};
    use igpo::tensor::DType;

    use super::common;

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

    /// `igpo sft` with `args`, as `ranks` MPI ranks (1: a plain process).
    fn sft(ranks: usize, config: &Path, args: &[&str]) -> std::process::Output {
        let igpo = env!("CARGO_BIN_EXE_igpo");
        let mut cmd = if ranks == 1 {
            Command::new(igpo)
        } else {
            mpirun(ranks)
        };
        cmd.args(["sft", "--config"]).arg(config).args(args);
        cmd.output().expect("mpirun runs (Open MPI installed?)")
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

    #[test]
    fn a_rank_killed_mid_run_stops_the_job_and_the_last_checkpoint_resumes() {
        let dir = scratch("killed");
        let config = setup(&dir);
        let job = mpirun(2)
            .args(["sft", "--config"])
            .arg(&config)
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
}
