//! Counting heap allocations, to show that a hot path allocates nothing.
//!
//! A test binary installs [`CountingAlloc`] as its global allocator; [`allocations`] then runs
//! a closure and returns how many allocations (and reallocations) the calling thread made
//! during it. Other threads (the test harness, a runtime) are not counted.
//!
//! ```no_run
//! use omega_testkit::alloc::{CountingAlloc, allocations};
//!
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc;
//!
//! assert_eq!(allocations(|| 1 + 1), 0);
//! assert_eq!(allocations(|| drop(vec![1u8; 4])), 1);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the allocations of each thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountingAlloc;

fn count() {
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches only a const-
// initialised thread-local `Cell`, which never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`; `ptr` was allocated by `System` through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// How many allocations the calling thread made while running `f`. Meaningful only in a
/// binary whose global allocator is [`CountingAlloc`].
pub fn allocations<R>(f: impl FnOnce() -> R) -> u64 {
    let before = COUNT.with(Cell::get);
    let result = f();
    let after = COUNT.with(Cell::get);
    drop(result);
    after - before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: CountingAlloc = CountingAlloc;

    #[test]
    fn counts_the_allocations_of_this_thread() {
        assert_eq!(allocations(|| 1 + 1), 0);
        assert_eq!(allocations(|| vec![1u8; 4]), 1);
        let mut v: Vec<u8> = Vec::with_capacity(1);
        assert_eq!(allocations(|| v.extend_from_slice(&[1, 2, 3])), 1);
    }
}
