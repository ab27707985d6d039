//! A global allocator chosen per process by an environment variable, so one
//! harness binary can measure the engine under the system allocator (the
//! `offload` program's) and under mimalloc in the same run.
//!
//! The choice is made once, at the first allocation, from
//! [`ALLOCATOR_ENV`] read with `libc::getenv` (which does not allocate: the
//! allocator cannot call anything that allocates) and never changes after:
//! every block is freed by the allocator that handed it out.
//!
//! ```no_run
//! // In a benchmark binary (the harness does this):
//! #[global_allocator]
//! static GLOBAL: offload_benches::alloc::Selectable = offload_benches::alloc::Selectable;
//!
//! // A child started with OFFLOAD_BENCH_ALLOCATOR=mimalloc runs on mimalloc.
//! let child = std::process::Command::new(std::env::current_exe()?)
//!     .env(offload_benches::alloc::ALLOCATOR_ENV, "mimalloc")
//!     .spawn()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable naming the allocator: `mimalloc` for mimalloc;
/// anything else, or unset, for the system allocator (glibc malloc).
pub const ALLOCATOR_ENV: &str = "OFFLOAD_BENCH_ALLOCATOR";
/// [`ALLOCATOR_ENV`] as the C string `getenv` takes.
const ALLOCATOR_ENV_C: &std::ffi::CStr = c"OFFLOAD_BENCH_ALLOCATOR";

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// Which allocator a [`Selectable`] uses in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Choice {
    /// `std::alloc::System` (glibc malloc on Linux).
    System,
    /// mimalloc (`mimalloc::MiMalloc`).
    Mimalloc,
}

impl Choice {
    /// Its name in reports and in [`ALLOCATOR_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Choice::System => "system",
            Choice::Mimalloc => "mimalloc",
        }
    }
}

/// The allocator this process uses (deciding it now if nothing allocated yet).
pub fn choice() -> Choice {
    match decide() {
        MIMALLOC => Choice::Mimalloc,
        _ => Choice::System,
    }
}

fn decide() -> u8 {
    let c = CHOICE.load(Ordering::Acquire);
    if c != UNDECIDED {
        return c;
    }
    // SAFETY: getenv reads the environment without allocating; the pointer is
    // only read here, before anything in this process could call setenv
    // (this is the process's first allocation, or a race with another thread's
    // first allocation reading the same environment).
    let wanted = unsafe {
        let v = libc::getenv(ALLOCATOR_ENV_C.as_ptr());
        if !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == b"mimalloc" {
            MIMALLOC
        } else {
            SYSTEM
        }
    };
    // The first thread to decide wins; a racing one takes its answer, so the
    // choice is made exactly once.
    match CHOICE.compare_exchange(UNDECIDED, wanted, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => wanted,
        Err(decided) => decided,
    }
}

/// The global allocator: System or mimalloc, see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selectable;

// SAFETY: every method forwards to one of two sound allocators, the same one
// for the whole life of the process (the choice never changes once made), so
// each block is reallocated and freed by the allocator that allocated it.
unsafe impl GlobalAlloc for Selectable {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        unsafe {
            match decide() {
                MIMALLOC => mimalloc::MiMalloc.alloc(layout),
                _ => System.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe {
            match decide() {
                MIMALLOC => mimalloc::MiMalloc.alloc_zeroed(layout),
                _ => System.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above; `ptr` came from the same allocator.
        unsafe {
            match decide() {
                MIMALLOC => mimalloc::MiMalloc.dealloc(ptr, layout),
                _ => System.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        unsafe {
            match decide() {
                MIMALLOC => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
                _ => System.realloc(ptr, layout, new_size),
            }
        }
    }
}
