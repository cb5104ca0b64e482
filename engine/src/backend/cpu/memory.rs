//! The CPU backend's memory figure. The `igpo` binary installs
//! [`CountingAllocator`] as its global allocator: bytes handed out and not yet
//! freed, and their peak, exactly. Elsewhere (library tests, other programs)
//! the process's resident set from `/proc/self/status` stands in; it misses
//! memory the C allocator reuses without returning it to the system.
//! Process-wide either way: a benchmark takes the difference around one op.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Asks glibc's allocator to keep freed memory for reuse instead of
/// returning it to the system: activations of tens of MiB are freed and
/// allocated again every layer, and each fresh mapping costs a page fault per
/// 4 KiB plus the kernel zeroing it (measured with `igpo bench forward`:
/// prefill +6-10 %, decode +10-13 %). Allocations up to 32 MiB (glibc's
/// cap) come from the heap, and the heap is trimmed only past 1 GiB free.
/// Called once by the `igpo` binary; a no-op elsewhere than glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator parameters; called before any
        // thread is spawned. A rejected value leaves glibc's default.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// The system allocator, counting live bytes and their high-water mark
/// (two relaxed atomics per allocation).
pub struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static IN_USE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn grew(by: usize) {
    let now = IN_USE.fetch_add(by as u64, Relaxed) + by as u64;
    PEAK.fetch_max(now, Relaxed);
}

/// Counts a fresh allocation of `size` bytes at `p` (none when it failed).
fn counted(p: *mut u8, size: usize) -> *mut u8 {
    if !p.is_null() {
        if !COUNTING.load(Relaxed) {
            COUNTING.store(true, Relaxed);
        }
        grew(size);
    }
    p
}

// SAFETY: every call goes to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(System.alloc(layout), layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(System.alloc_zeroed(layout), layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        IN_USE.fetch_sub(layout.size() as u64, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                IN_USE.fetch_sub((layout.size() - new_size) as u64, Relaxed);
            }
        }
        p
    }
}

/// Live heap bytes and their peak when [`CountingAllocator`] is the global
/// allocator, else `VmRSS` and `VmHWM` (peak resident since start or the
/// last reset).
pub(super) fn process_memory() -> Option<super::MemoryUsage> {
    if COUNTING.load(Relaxed) {
        return Some(super::MemoryUsage {
            in_use: IN_USE.load(Relaxed),
            peak: PEAK.load(Relaxed),
        });
    }
    resident_memory()
}

fn resident_memory() -> Option<super::MemoryUsage> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(super::MemoryUsage {
        in_use: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// The peak becomes what is in use now. Resident set: writing 5 to
/// `clear_refs` sets `VmHWM` to the current `VmRSS` (Linux >= 4.0; elsewhere
/// the peak keeps counting from the start).
pub(super) fn reset_process_peak() {
    if COUNTING.load(Relaxed) {
        PEAK.store(IN_USE.load(Relaxed), Relaxed);
    } else {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_allocation_raises_the_resident_peak_over_the_baseline() {
        let Some(before) = resident_memory() else {
            println!("SKIPPED: no /proc/self/status on this system");
            return;
        };
        assert!(before.in_use > 0 && before.peak >= before.in_use);
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let base = resident_memory().unwrap().in_use;
        // 64 MiB, touched so that it is resident.
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let during = resident_memory().unwrap();
        drop(block);
        assert!(
            during.peak >= base + (60 << 20),
            "peak {} should be >= baseline {} + 60 MiB",
            during.peak,
            base
        );
    }
}
