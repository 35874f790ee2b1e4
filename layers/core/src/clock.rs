//! Time for the layers: cheap to read, and under test control.
//!
//! Every layer reads time through a [`Clock`] instead of calling `Instant::now()` itself, so
//! tests can drive time: [`Clock::system`] follows tokio's clock (and therefore
//! `tokio::time::pause` / `advance`), and [`Clock::manual`] only moves when the test says so,
//! which suits property tests that run outside a runtime. [`Clock::fast`] reads the CPU's
//! time-stamp counter through `quanta` (a few nanoseconds, against tens for the OS clock on a
//! VM): the default of the layers' hot paths.
//!
//! Readings are plain nanosecond counts ([`Nanos`]) since the clock's origin: they fit in one
//! `u64` (584 years), so the layers can keep them in atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A reading of a [`Clock`]: nanoseconds since the clock's origin.
pub type Nanos = u64;

/// A monotonic clock shared by clones.
///
/// ```
/// use std::time::Duration;
/// use omega_core::Clock;
///
/// let clock = Clock::manual();
/// let t0 = clock.now();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now() - t0, 5_000_000);
/// ```
#[derive(Clone, Debug)]
pub struct Clock {
    kind: Kind,
}

// An explicit tag: `now` dispatches on one byte instead of decoding a niche.
#[derive(Clone, Debug)]
#[repr(u8)]
enum Kind {
    Tokio(tokio::time::Instant),
    Manual(Arc<AtomicU64>),
    Fast(quanta::Clock, u64),
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The process clock, read through `tokio::time::Instant`: monotonic, and paused or
    /// advanced together with tokio's clock in tests that call `tokio::time::pause`.
    /// Outside a runtime it reads the OS monotonic clock.
    pub fn system() -> Self {
        Clock {
            kind: Kind::Tokio(tokio::time::Instant::now()),
        }
    }

    /// The process clock read through the CPU's time-stamp counter (`quanta`, which falls back
    /// to the OS clock where the counter is not reliable). Cheapest to read; does not follow
    /// `tokio::time::pause`: tests that pause tokio's clock use [`Clock::system`].
    pub fn fast() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Clock {
            kind: Kind::Fast(clock, origin),
        }
    }

    /// A clock that starts at zero and only moves through [`Clock::advance`] or
    /// [`Clock::set`]. Clones share the same time.
    pub fn manual() -> Self {
        Clock {
            kind: Kind::Manual(Arc::new(AtomicU64::new(0))),
        }
    }

    /// The current reading.
    #[inline(always)]
    pub fn now(&self) -> Nanos {
        match &self.kind {
            Kind::Tokio(origin) => duration_nanos(origin.elapsed()),
            Kind::Manual(t) => t.load(Ordering::Acquire),
            Kind::Fast(clock, origin) => clock.delta_as_nanos(*origin, clock.raw()),
        }
    }

    /// The reading as a [`Duration`] since the origin.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now())
    }

    /// `true` for a clock made by [`Clock::manual`].
    pub fn is_manual(&self) -> bool {
        matches!(self.kind, Kind::Manual(_))
    }

    /// Moves a manual clock forward.
    ///
    /// # Panics
    /// On a system clock: use `tokio::time::advance` there.
    pub fn advance(&self, by: Duration) {
        match &self.kind {
            Kind::Manual(t) => {
                t.fetch_add(duration_nanos(by), Ordering::AcqRel);
            }
            Kind::Tokio(_) | Kind::Fast(..) => {
                panic!("Clock::advance on a system clock; use tokio::time::advance")
            }
        }
    }

    /// Sets a manual clock to `at` nanoseconds. Time may not go backwards.
    ///
    /// # Panics
    /// On a system clock, or when `at` is earlier than the current reading.
    pub fn set(&self, at: Nanos) {
        match &self.kind {
            Kind::Manual(t) => {
                let prev = t.fetch_max(at, Ordering::AcqRel);
                assert!(
                    prev <= at,
                    "a manual clock cannot go back from {prev} to {at}"
                );
            }
            Kind::Tokio(_) | Kind::Fast(..) => panic!("Clock::set on a system clock"),
        }
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX`.
#[inline]
pub fn duration_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_is_shared_by_clones() {
        let a = Clock::manual();
        let b = a.clone();
        a.advance(Duration::from_secs(2));
        assert_eq!(b.now(), 2_000_000_000);
        b.set(3_000_000_000);
        assert_eq!(a.elapsed(), Duration::from_secs(3));
    }

    #[test]
    #[should_panic(expected = "cannot go back")]
    fn manual_clock_refuses_to_go_back() {
        let c = Clock::manual();
        c.set(10);
        c.set(5);
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_paused_tokio_time() {
        let c = Clock::system();
        let t0 = c.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now() - t0, 1_500_000_000);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(c.now() - t0, 61_500_000_000);
    }

    #[test]
    fn fast_clock_is_monotonic_and_tracks_real_time() {
        let c = Clock::fast();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.now();
        assert!(b >= a + 4_000_000, "{a} -> {b}");
    }

    #[test]
    fn system_clock_is_monotonic_outside_a_runtime() {
        let c = Clock::system();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.now() >= a + 2_000_000);
    }
}
