//! Background tasks that follow their owner from runtime to runtime.
//!
//! A layer's background task (a supervisor, an invalidation listener, a periodic exchange)
//! runs on the tokio runtime that spawned it. Its owner (a backend, a cache, a limiter) may
//! outlive that runtime — a test suite sharing one across `#[tokio::test]`s, a program that
//! builds on one runtime and serves on another — and the task then ends with the runtime,
//! without a word. [`spawn_watched`] tells the owner, and [`Lost`] lets it start the task
//! again on the runtime that uses it next:
//!
//! ```
//! use omega_core::task::{Lost, spawn_watched};
//!
//! struct Owner {
//!     sweeper: Lost,
//! }
//!
//! impl Owner {
//!     fn start_sweeper(&self) {
//!         spawn_watched(async { /* sweep, periodically */ }, self.sweeper.setter());
//!     }
//!
//!     /// On a path the owner's users take (cheap: one atomic load while nothing is lost).
//!     fn used(&self) {
//!         if self.sweeper.take() {
//!             self.start_sweeper();
//!         }
//!     }
//! }
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # let owner = Owner { sweeper: Lost::new() };
//! # rt.block_on(async { owner.start_sweeper() });
//! # drop(rt);
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async { assert!(owner.sweeper.take()); });
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;

/// Spawns `task` on the current runtime. `on_lost` runs if the task is dropped before it
/// returns (its runtime shut down, or it panicked), not when it returns.
///
/// # Panics
///
/// Outside a tokio runtime, as `tokio::spawn` does.
pub fn spawn_watched<F>(task: F, on_lost: impl FnOnce() + Send + 'static) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let watch = Watch(Some(on_lost));
    tokio::spawn(async move {
        let mut watch = watch;
        task.await;
        watch.0 = None;
    })
}

struct Watch<L: FnOnce()>(Option<L>);

impl<L: FnOnce()> Drop for Watch<L> {
    fn drop(&mut self) {
        if let Some(on_lost) = self.0.take() {
            on_lost();
        }
    }
}

/// Whether an owner's background task was lost, for the owner to start it again.
#[derive(Debug, Default)]
pub struct Lost(Arc<AtomicBool>);

impl Lost {
    /// Not lost.
    pub fn new() -> Self {
        Lost::default()
    }

    /// Marks the task lost (it ended before its owner asked it to).
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// What [`spawn_watched`] runs when the task is lost: marks it so.
    pub fn setter(&self) -> impl FnOnce() + Send + 'static {
        let lost = self.0.clone();
        move || lost.store(true, Ordering::Release)
    }

    /// `true` once after the task was lost, and only inside a tokio runtime: the caller then
    /// starts it again there. One atomic load while nothing is lost.
    #[inline]
    pub fn take(&self) -> bool {
        self.0.load(Ordering::Acquire) && self.take_slow()
    }

    #[cold]
    fn take_slow(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok() && self.0.swap(false, Ordering::AcqRel)
    }

    /// `true` while the task is lost and not started again.
    pub fn is_lost(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_dropped_with_its_runtime_is_lost_and_one_that_returns_is_not() {
        let (forever, done) = (Lost::new(), Lost::new());
        let rt = omega_testkit::runtime();
        rt.block_on(async {
            spawn_watched(std::future::pending(), forever.setter());
            spawn_watched(async {}, done.setter()).await.unwrap();
        });
        assert!(!forever.is_lost() && !done.is_lost());
        drop(rt);
        assert!(forever.is_lost());
        assert!(!done.is_lost());
        assert!(!forever.take(), "taken only inside a runtime");
        omega_testkit::runtime().block_on(async {
            assert!(forever.take());
            assert!(!forever.take(), "once");
        });
    }
}
