//! The plugin pool under a long mixed load: 200,000 calls of the hostile
//! tool from four threads over three pooled instances, with traps, timeouts,
//! memory-cap hits and refused arguments mixed in. Every call must get its
//! answer, instances are replaced as they fail (never more than the limit),
//! and the host's memory, file descriptors and threads stay flat. Alone in
//! its test binary so the process measurements are its own.

mod plugins_support;

use std::time::{Duration, Instant};

use igpo::plugins::{PluginError, PluginSpec, SandboxLimits, ToolError, ToolPlugin};
use plugins_support::{host, plugin_dir};
use serde_json::json;

/// Resident memory, open file descriptors and threads of this process.
fn process_footprint() -> (u64, usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let count = |dir: &str| std::fs::read_dir(dir).unwrap().count();
    (
        rss_kib << 10,
        count("/proc/self/fd"),
        count("/proc/self/task"),
    )
}

#[test]
fn pooled_tool_soak_200k_calls_with_traps_timeouts_and_memory_hits() {
    let Some(plugins) =
        plugin_dir("pooled_tool_soak_200k_calls_with_traps_timeouts_and_memory_hits")
    else {
        return;
    };
    const CALLS: usize = 200_000;
    const THREADS: usize = 4;
    const INSTANCES: usize = 3;
    let limits = SandboxLimits {
        instances: INSTANCES,
        // A bomb takes 30-160 ms to reach the cap on two busy cores.
        call_timeout: Duration::from_millis(500),
        // Two of the bomb's 16 MiB blocks do not fit.
        memory_bytes: 24 << 20,
        ..SandboxLimits::default()
    };
    let tool = ToolPlugin::load(
        &host(&plugins),
        &PluginSpec::new(plugins.join("hostile-tool.wasm")).limits(limits),
    )
    .unwrap();
    // What call i asks for, from a fixed LCG: 1 % panics, 0.02 % infinite
    // loops (each holds an instance for the whole time limit), 0.2 % memory
    // bombs, 5 % arguments the host refuses, the rest echoes.
    let mode = |i: usize| {
        let r = (i as u64)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 33;
        match r % 10_000 {
            0..=99 => "panic",
            100..=101 => "loop",
            105..=124 => "bomb",
            125..=624 => "badargs",
            _ => "echo",
        }
    };
    let run = |range: std::ops::Range<usize>| -> [usize; 6] {
        let next = std::sync::atomic::AtomicUsize::new(range.start);
        let counts: Vec<[usize; 6]> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        let mut c = [0usize; 6];
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= range.end {
                                return c;
                            }
                            let m = mode(i);
                            let args = match m {
                                "badargs" => json!({"mode": i}).to_string(),
                                _ => json!({ "mode": m, "i": i }).to_string(),
                            };
                            let got = tool.call(&args);
                            let k = match (m, &got) {
                                ("echo", Ok(out)) if *out == args => 0,
                                ("panic", Err(ToolError::Plugin(PluginError::Trap { .. }))) => 1,
                                ("loop", Err(ToolError::Plugin(PluginError::Timeout { .. }))) => 2,
                                (
                                    "bomb",
                                    Err(ToolError::Plugin(PluginError::MemoryLimit { .. })),
                                ) => 3,
                                ("badargs", Err(ToolError::InvalidArguments { .. })) => 4,
                                _ => panic!("call {i} ({m}): {got:?}"),
                            };
                            c[k] += 1;
                            assert!(tool.live_instances() <= INSTANCES);
                        }
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut total = [0usize; 6];
        for c in counts {
            for (t, n) in total.iter_mut().zip(c) {
                *t += n;
            }
        }
        total
    };
    // Warm up (the pool at full size, the allocator's arenas), then measure.
    let warm = run(0..CALLS / 10);
    let (rss0, fds0, threads0) = process_footprint();
    let t0 = Instant::now();
    let rest = run(CALLS / 10..CALLS);
    let took = t0.elapsed();
    // Joined threads can linger in /proc for a moment: let it settle.
    let mut after = process_footprint();
    for _ in 0..100 {
        if (after.1, after.2) == (fds0, threads0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        after = process_footprint();
    }
    let (rss1, fds1, threads1) = after;
    let total: Vec<usize> = (0..6).map(|k| warm[k] + rest[k]).collect();
    eprintln!(
        "soak: {CALLS} calls, the last {} in {:.1} s (echo, trap, timeout, memory cap, refused, bomb timed out: {total:?}); \
         RSS {:.1} -> {:.1} MiB, fds {fds0} -> {fds1}, threads {threads0} -> {threads1}, {} instances live",
        CALLS - CALLS / 10,
        took.as_secs_f64(),
        rss0 as f64 / (1 << 20) as f64,
        rss1 as f64 / (1 << 20) as f64,
        tool.live_instances()
    );
    // Every call answered, each kind as expected.
    assert_eq!(total.iter().sum::<usize>(), CALLS);
    assert!(
        total[1] > 1000 && total[2] > 20 && total[3] > 10 * total[5] && total[4] > 5000,
        "{total:?}"
    );
    // No leak: memory within one instance's cap of where it was, and the
    // same descriptors and threads (this binary runs this test alone).
    assert!(rss1 < rss0 + (24 << 20), "RSS grew {rss0} -> {rss1}");
    assert_eq!(fds1, fds0, "file descriptors");
    assert_eq!(threads1, threads0, "threads");
    assert!(tool.live_instances() <= INSTANCES);
    let args = r#"{"mode":"echo"}"#;
    assert_eq!(tool.call(args).unwrap(), args);
}
