//! Any tool plugin through the sandbox (`igpo plugin bench FILE.wasm`): what
//! its first load costs (a cold compile, a load from the compile cache, the
//! first instance's `init`), the linear memory of an instance, and calls/s
//! with p50/p99 latency on one thread and on several threads sharing one
//! pooled plugin.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::plugins::{PluginError, PluginHost, PluginSpec, SandboxLimits, ToolError, ToolPlugin};

/// Why the plugin bench stopped.
#[derive(Debug, thiserror::Error)]
pub enum PluginBenchError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("a call with arguments {arguments} failed: {error}")]
    Call { arguments: String, error: ToolError },
    #[error("{0}")]
    Input(String),
}

/// What to measure: one tool, its config and grant, the arguments its calls
/// rotate through.
#[derive(Debug, Clone)]
pub struct PluginBenchSpec {
    pub file: PathBuf,
    pub config: serde_json::Value,
    pub readonly_dir: Option<PathBuf>,
    pub allow_http: Vec<String>,
    /// Call arguments, used round-robin (at least one).
    pub arguments: Vec<String>,
    /// Calls per measurement (single, then pooled).
    pub calls: usize,
    /// Instances (and calling threads) of the pooled measurement.
    pub instances: usize,
}

/// What `igpo plugin bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PluginBenchReport {
    pub file: String,
    /// The tool's name, from its `describe`.
    pub tool: String,
    pub component_bytes: u64,
    /// Compiling the component to machine code, no cache: the first load of
    /// these bytes on a machine.
    pub compile_s: f64,
    /// Loading it back from the compile cache: every later process.
    pub cached_load_s: f64,
    /// The first instance: instantiate, `describe`, `init` with the config.
    pub first_instance_s: f64,
    /// Linear memory of one instance after its calls (the largest of the
    /// pool).
    pub instance_memory_bytes: u64,
    /// One thread, one instance.
    pub single: CallStats,
    /// `instances` threads sharing `instances` pooled instances.
    pub pooled: CallStats,
}

/// Measures the tool of `spec` (compile costs without any cache, whose
/// result `host` then keeps; calls through `host`).
pub fn plugin_bench(
    host: &PluginHost,
    spec: &PluginBenchSpec,
) -> Result<PluginBenchReport, PluginBenchError> {
    if spec.arguments.is_empty() {
        return Err(PluginBenchError::Input("no call arguments given".into()));
    }
    if spec.calls == 0 || spec.instances == 0 {
        return Err(PluginBenchError::Input(
            "--calls and --instances must be at least 1".into(),
        ));
    }
    let component_bytes = std::fs::metadata(&spec.file)
        .map_err(|source| PluginError::Io {
            path: spec.file.clone(),
            source,
        })?
        .len();
    let costs = host.compile_costs(&spec.file)?;
    let mut plugin = PluginSpec::new(&spec.file)
        .config(spec.config.clone())
        .allow_http(spec.allow_http.clone())
        .limits(SandboxLimits {
            instances: spec.instances,
            ..SandboxLimits::default()
        });
    plugin.readonly_dir = spec.readonly_dir.clone();
    // The host now holds the compiled component: the timing below is the
    // instance alone.
    let t0 = Instant::now();
    let tool = ToolPlugin::load(host, &plugin)?;
    let first_instance_s = t0.elapsed().as_secs_f64();
    tool.fill(spec.instances)?;
    let single = bench_tool(&tool, &spec.arguments, 1, Stop::Calls(spec.calls))?;
    let pooled = bench_tool(
        &tool,
        &spec.arguments,
        spec.instances,
        Stop::Calls(spec.calls),
    )?;
    Ok(PluginBenchReport {
        file: spec.file.display().to_string(),
        tool: tool.info().name.clone(),
        component_bytes,
        compile_s: costs.compile_s,
        cached_load_s: costs.cached_load_s,
        first_instance_s,
        instance_memory_bytes: tool.instance_memory_bytes(),
        single,
        pooled,
    })
}

impl PluginBenchReport {
    /// The report as lines of text.
    pub fn lines(&self) -> Vec<String> {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        vec![
            format!(
                "{} (`{}`): {:.2} MiB component; compile {:.2} s (first load on a machine), \
                 {:.1} ms from the cache; first instance {:.1} ms; {:.2} MiB linear memory per instance",
                self.file,
                self.tool,
                mib(self.component_bytes),
                self.compile_s,
                self.cached_load_s * 1e3,
                self.first_instance_s * 1e3,
                mib(self.instance_memory_bytes)
            ),
            self.single.line("single"),
            self.pooled.line("pooled"),
        ]
    }
}

/// When a measurement ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many calls (all threads together).
    Calls(usize),
    /// After about this long (each thread).
    Time(Duration),
}

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

impl CallStats {
    /// The measurement as one line of text.
    pub fn line(&self, what: &str) -> String {
        let t = self.threads;
        format!(
            "{what:<8} {t} thread(s): {:>10.0} calls/s  p50 {:>8.1} us  p99 {:>8.1} us  (got {:.0}% of {t} core(s); {:.0} calls per CPU-s)",
            self.calls_per_s,
            self.p50_us,
            self.p99_us,
            self.cpu_share * 100.0,
            self.calls_per_cpu_s
        )
    }
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

/// Calls `tool` with `args` round-robin from `threads` threads until
/// `stop`, after one warm-up call per thread (fill the pool first with
/// [`ToolPlugin::fill`] so no instance is made while timing). Returns the
/// first failed call instead of timing it.
pub fn bench_tool(
    tool: &ToolPlugin,
    args: &[String],
    threads: usize,
    stop: Stop,
) -> Result<CallStats, PluginBenchError> {
    assert!(!args.is_empty() && threads > 0);
    let call = |i: usize| {
        let a = &args[i % args.len()];
        tool.call(a)
            .map(drop)
            .map_err(|error| PluginBenchError::Call {
                arguments: a.clone(),
                error,
            })
    };
    let barrier = std::sync::Barrier::new(threads);
    // (latencies, CPU seconds, wall seconds) of one thread.
    type PerThread = (Vec<Duration>, f64, f64);
    let results: Vec<Result<PerThread, PluginBenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, call) = (&barrier, &call);
                s.spawn(move || {
                    let warm = call(t);
                    barrier.wait();
                    warm?;
                    let mut lat = Vec::new();
                    let cpu0 = thread_cpu_s();
                    let start = Instant::now();
                    let mut i = t;
                    loop {
                        let more = match stop {
                            Stop::Calls(n) => i < n,
                            Stop::Time(d) => start.elapsed() < d,
                        };
                        if !more {
                            break;
                        }
                        let t0 = Instant::now();
                        call(i)?;
                        lat.push(t0.elapsed());
                        i += threads;
                    }
                    let wall = start.elapsed().as_secs_f64();
                    let cpu = match (cpu0, thread_cpu_s()) {
                        (Some(a), Some(b)) => b - a,
                        _ => f64::NAN,
                    };
                    Ok((lat, cpu, wall))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let (mut all, mut cpu, mut wall) = (Vec::new(), 0.0, 0.0f64);
    for r in results {
        let (lat, c, w) = r?;
        all.extend(lat);
        cpu += c;
        wall = wall.max(w);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all.get(i)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(f64::NAN)
    };
    // Too short a run for /proc's 10 ms CPU clock says nothing.
    if cpu <= 0.0 {
        cpu = f64::NAN;
    }
    Ok(CallStats {
        threads,
        calls: all.len(),
        calls_per_s: all.len() as f64 / wall,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        cpu_share: cpu / (threads as f64 * wall),
        calls_per_cpu_s: all.len() as f64 / cpu,
    })
}
