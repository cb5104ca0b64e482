//! Runs a target on generated inputs: catches panics, times every input out
//! (hang detection), bounds allocations (with [`super::alloc::CountingAlloc`]
//! installed) and saves the input of the first failure.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Once;
use std::time::{Duration, Instant};

use super::mutate::Mutator;
use super::Target;

/// How long to fuzz and where failures go.
#[derive(Clone, Debug)]
pub struct Config {
    /// Stop after this many inputs...
    pub cases: Option<u64>,
    /// ...or after this long, whichever comes first (one of the two is needed).
    pub seconds: Option<f64>,
    pub seed: u64,
    /// An input running longer than this is a hang.
    pub time_limit: Duration,
    /// Failing inputs are saved as `<crash_dir>/<target>/crash-<hash>`.
    pub crash_dir: PathBuf,
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    /// Inputs run to completion (the failing one not counted).
    pub inputs: u64,
    pub elapsed: Duration,
    pub failure: Option<Failure>,
}

#[derive(Debug)]
pub struct Failure {
    /// The panic message with its location, or the hang.
    pub what: String,
    pub input: Vec<u8>,
    /// Where the input was saved (None if saving failed).
    pub saved: Option<PathBuf>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} inputs in {:.1} s",
            self.target,
            self.inputs,
            self.elapsed.as_secs_f64()
        )?;
        if let Some(fail) = &self.failure {
            write!(f, "; FAILED: {}", fail.what)?;
            match &fail.saved {
                Some(p) => write!(
                    f,
                    "\n  input saved to {} (replay: cargo xtask fuzz {} --replay {})",
                    p.display(),
                    self.target,
                    p.display()
                )?,
                None => write!(
                    f,
                    "\n  input (not saved): {:?}",
                    String::from_utf8_lossy(&fail.input)
                )?,
            }
        }
        Ok(())
    }
}

/// The input being run, for the allocator's hook.
struct Current {
    target: &'static str,
    input: Vec<u8>,
    crash_dir: PathBuf,
}

thread_local! {
    /// The input this worker thread is running.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Called by the allocator (once) when an input asks for more than
/// [`super::alloc::MAX_REQUEST`] bytes: saves the input, then the process
/// aborts.
pub(crate) fn on_oversized_allocation(size: usize) {
    // On a rayon thread there is no current input: the message still names
    // the size, and the test that ran says which target it was.
    let current = CURRENT
        .try_with(|c| c.try_borrow_mut().ok().and_then(|mut c| c.take()))
        .ok()
        .flatten();
    eprintln!(
        "fuzz: an input asked for one allocation of {size} bytes (limit {}): unbounded allocation",
        super::alloc::MAX_REQUEST
    );
    if let Some(c) = current {
        match save(&c.crash_dir, c.target, &c.input) {
            Some(p) => eprintln!(
                "fuzz {}: input saved to {} (replay: cargo xtask fuzz {} --replay {})",
                c.target,
                p.display(),
                c.target,
                p.display()
            ),
            None => eprintln!("fuzz {}: input {:?}", c.target, c.input),
        }
    }
}

thread_local! {
    /// The last panic on this thread, with its location.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Fuzz worker threads record panics instead of printing them; other
/// threads keep the default hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("fuzz-"));
            if on_worker {
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
            } else {
                default(info);
            }
        }));
    });
}

type Job = (Vec<u8>, mpsc::Sender<Result<(), String>>);

/// A thread that runs inputs one at a time in its own scratch folder.
struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    fn spawn(target: &'static Target, scratch: PathBuf, crash_dir: PathBuf) -> Worker {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("fuzz-{}", target.name))
            .spawn(move || {
                for (input, done) in rx {
                    CURRENT.with(|c| {
                        *c.borrow_mut() = Some(Current {
                            target: target.name,
                            input: input.clone(),
                            crash_dir: crash_dir.clone(),
                        })
                    });
                    let _ = done.send(run_one(target, &input, &scratch));
                }
                let _ = std::fs::remove_dir_all(&scratch);
            })
            .expect("spawn fuzz worker");
        Worker { jobs }
    }

    /// Ok, the panic, or a hang after `limit` (the worker is then stuck and
    /// must not be used again).
    fn run(&self, input: Vec<u8>, limit: Duration) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send((input, tx))
            .map_err(|_| "the worker thread died".to_string())?;
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "hang: the input ran longer than {:.1} s",
                limit.as_secs_f64()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("the worker thread died".into()),
        }
    }
}

fn run_one(target: &Target, input: &[u8], scratch: &Path) -> Result<(), String> {
    // Each input starts from an empty scratch folder.
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).map_err(|e| format!("scratch {}: {e}", scratch.display()))?;
    super::alloc::arm(true);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (target.run)(input, scratch)
    }));
    super::alloc::arm(false);
    r.map_err(|payload| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| match payload.downcast_ref::<&str>() {
                Some(s) => s.to_string(),
                None => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panic".into()),
            })
    })
}

fn scratch_dir(target: &Target) -> PathBuf {
    std::env::temp_dir().join(format!(
        "igpo-fuzz-{}-{}-{:?}",
        std::process::id(),
        target.name,
        std::thread::current().id()
    ))
}

/// Saves a failing input; the name is a hash of its bytes.
fn save(crash_dir: &Path, target: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = crash_dir.join(target);
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("crash-{:016x}", fnv1a(input)));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// FNV-1a, 64 bits: names crash files and seeds per-input choices.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fuzzes `target` within the budget of `cfg`; stops at the first failure.
pub fn fuzz(target: &'static Target, cfg: &Config) -> Report {
    assert!(
        cfg.cases.is_some() || cfg.seconds.is_some(),
        "a fuzz run needs --cases or --seconds"
    );
    install_panic_hook();
    let start = Instant::now();
    let seeds = (target.seeds)();
    let mut mutator = Mutator::new(cfg.seed, target.dict, target.max_len);
    let worker = Worker::spawn(target, scratch_dir(target), cfg.crash_dir.clone());
    let mut inputs = 0u64;
    let mut failure = None;
    // Seeds first, as they are: a seed that fails is a bug too.
    let mut pending = seeds.clone();
    pending.reverse();
    loop {
        if cfg.cases.is_some_and(|n| inputs >= n)
            || cfg
                .seconds
                .is_some_and(|s| start.elapsed().as_secs_f64() >= s)
        {
            break;
        }
        let input = match pending.pop() {
            Some(seed) => seed,
            None => mutator.generate(&seeds, target.structured),
        };
        if let Err(what) = worker.run(input.clone(), cfg.time_limit) {
            let saved = save(&cfg.crash_dir, target.name, &input);
            failure = Some(Failure { what, input, saved });
            break;
        }
        inputs += 1;
    }
    Report {
        target: target.name,
        inputs,
        elapsed: start.elapsed(),
        failure,
    }
}

/// Runs one saved input again (with the same panic, hang and allocation
/// checks).
pub fn replay(target: &'static Target, input: &[u8], time_limit: Duration) -> Result<(), String> {
    install_panic_hook();
    let crash_dir = std::env::temp_dir().join("igpo-fuzz-replay");
    let worker = Worker::spawn(target, scratch_dir(target), crash_dir);
    worker.run(input.to_vec(), time_limit)
}
