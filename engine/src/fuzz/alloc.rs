//! A global allocator for fuzz binaries that refuses absurd requests with a
//! reproducer instead of a bare abort.
//!
//! A hostile header that declares 2^40 elements must be an error, not a
//! multi-terabyte `Vec`. Such a request would abort the process
//! (`handle_alloc_error`) or, worse, succeed lazily and swap; an allocator
//! cannot unwind either. So while the driver runs an input, any single
//! request above [`MAX_REQUEST`] saves the input (see
//! [`driver::on_oversized_allocation`](super::driver)) and aborts with a
//! message naming the size. Install it in a test binary:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: igpo::fuzz::alloc::CountingAlloc = igpo::fuzz::alloc::CountingAlloc;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The largest single allocation an input may ask for (1 GiB): every
/// target's seeds need a few MB at most.
pub const MAX_REQUEST: usize = 1 << 30;

/// Workers running an input right now (rayon threads they use are checked
/// too, so this is process-wide, not per thread).
static ARMED: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static TRIPPED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Passes everything to the system allocator; checks request sizes while
/// armed.
pub struct CountingAlloc;

/// Whether a [`CountingAlloc`] is the global allocator of this process (the
/// driver says so in its report: without it, allocations are not bounded).
pub fn installed() -> bool {
    // A zero-cost probe: allocating anything marks it.
    drop(Box::new(0u8));
    INSTALLED.load(Ordering::Relaxed)
}

pub(crate) fn arm(on: bool) {
    match on {
        true => ARMED.fetch_add(1, Ordering::SeqCst),
        false => ARMED.fetch_sub(1, Ordering::SeqCst),
    };
}

/// The largest request seen while armed, in bytes.
pub fn largest_request() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

#[inline]
fn check(size: usize) {
    if ARMED.load(Ordering::Relaxed) == 0 {
        return;
    }
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size > MAX_REQUEST && !TRIPPED.swap(true, Ordering::SeqCst) {
        // The hook allocates (small requests, passed through): fine, the
        // allocator holds no lock.
        super::driver::on_oversized_allocation(size);
        std::process::abort();
    }
}

// SAFETY: every call is forwarded unchanged to `System`; `check` only reads
// and writes atomics (and, once, aborts the process).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        check(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        check(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}
