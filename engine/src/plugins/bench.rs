//! Throughput of calls through the host: calls/s and latency percentiles,
//! on one thread and on several threads sharing one pooled plugin.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{ToolError, ToolPlugin};

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct CallStats {
    pub threads: usize,
    pub calls: usize,
    pub calls_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU time the calling threads got, as a fraction of `threads` cores
    /// over the run (Linux; NaN elsewhere). Below 1 means other processes
    /// took the cores and `calls_per_s` understates the host.
    pub cpu_share: f64,
    /// Calls per second of CPU time the calling threads used: a rate that
    /// does not depend on how busy the machine was.
    pub calls_per_cpu_s: f64,
}

/// CPU seconds (user + system) of the calling thread, from /proc.
fn thread_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// Calls `tool` with `args` round-robin from `threads` threads for about
/// `duration` (after one warm-up call per thread, which also makes the
/// pool's instances). Returns the first error instead of timing it.
pub fn bench_tool(
    tool: &ToolPlugin,
    args: &[String],
    threads: usize,
    duration: Duration,
) -> Result<CallStats, ToolError> {
    assert!(!args.is_empty() && threads > 0);
    let barrier = std::sync::Barrier::new(threads);
    type PerThread = (Vec<Duration>, f64);
    let results: Vec<Result<PerThread, ToolError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let warm = tool.call(&args[t % args.len()]);
                    barrier.wait();
                    warm?;
                    let mut lat = Vec::new();
                    let cpu0 = thread_cpu_s();
                    let start = Instant::now();
                    let mut i = t;
                    while start.elapsed() < duration {
                        let t0 = Instant::now();
                        tool.call(&args[i % args.len()])?;
                        lat.push(t0.elapsed());
                        i += threads;
                    }
                    let cpu = match (cpu0, thread_cpu_s()) {
                        (Some(a), Some(b)) => b - a,
                        _ => f64::NAN,
                    };
                    Ok((lat, cpu))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let mut all = Vec::new();
    let mut cpu = 0.0;
    for r in results {
        let (lat, c) = r?;
        all.extend(lat);
        cpu += c;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all.get(i)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(f64::NAN)
    };
    Ok(CallStats {
        threads,
        calls: all.len(),
        // Each thread ran for `duration`; wall time is about the same.
        calls_per_s: all.len() as f64 / duration.as_secs_f64(),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        cpu_share: cpu / (threads as f64 * duration.as_secs_f64()),
        calls_per_cpu_s: all.len() as f64 / cpu,
    })
}
