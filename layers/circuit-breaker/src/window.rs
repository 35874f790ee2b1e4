//! The sliding windows of CLOSED.
//!
//! The count-based window is a ring of outcome bits (one bit per call for "failed", one for
//! "slow") and two counters. A record takes a slot with one `fetch_add`, flips the slot's bits
//! with `fetch_or` / `fetch_and` and adjusts the counters by what the flips changed, so the
//! counters always equal the number of set bits, whatever the interleaving. No lock, no clock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use omega_core::Nanos;

use crate::settings::SlidingWindow;

/// What a window holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
}

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
    Consecutive(Consecutive),
}

impl Window {
    pub(crate) fn new(kind: SlidingWindow) -> Window {
        match kind {
            SlidingWindow::CountBased(n) => Window::Count(CountWindow::new(n)),
            SlidingWindow::TimeBased(s) => Window::Time(TimeWindow::new(s)),
            SlidingWindow::ConsecutiveFailures(n) => Window::Consecutive(Consecutive::new(n)),
        }
    }

    /// Whether a success would leave the window unchanged (the CLEAN flag may be set).
    pub(crate) fn is_clean(&self) -> bool {
        match self {
            Window::Count(w) => w.is_clean(),
            Window::Time(_) => false,
            Window::Consecutive(c) => c.run.load(Ordering::Acquire) == 0,
        }
    }

    pub(crate) fn counts(&self, now: impl FnOnce() -> Nanos) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now()),
            Window::Consecutive(c) => {
                let run = u64::from(c.run.load(Ordering::Acquire));
                Counts {
                    calls: run,
                    failed: run,
                    slow: 0,
                }
            }
        }
    }

    /// A new window of `kind` that keeps what it can of this one: the most recent outcomes for
    /// count windows, the aggregate counts otherwise.
    pub(crate) fn migrate(&self, kind: SlidingWindow, now: Nanos) -> Window {
        match (self, kind) {
            (Window::Count(old), SlidingWindow::CountBased(n)) => {
                let new = CountWindow::new(n);
                for (failed, slow) in old.recent(n as usize) {
                    new.record(failed, slow);
                }
                Window::Count(new)
            }
            (Window::Time(old), SlidingWindow::TimeBased(s)) => Window::Time(old.resized(s, now)),
            (Window::Consecutive(old), SlidingWindow::ConsecutiveFailures(n)) => {
                let new = Consecutive::new(n);
                new.run
                    .store(old.run.load(Ordering::Acquire), Ordering::Release);
                Window::Consecutive(new)
            }
            (old, kind) => {
                let c = old.counts(|| now);
                let new = Window::new(kind);
                match &new {
                    Window::Count(w) => {
                        // Spread the failures over the kept calls, oldest first.
                        let keep = c.calls.min(w.size);
                        for i in 0..keep {
                            let f =
                                c.failed * (i + 1) / c.calls.max(1) > c.failed * i / c.calls.max(1);
                            let s = c.slow * (i + 1) / c.calls.max(1) > c.slow * i / c.calls.max(1);
                            w.record(f, s);
                        }
                    }
                    Window::Time(w) => w.add_bulk(now, c),
                    Window::Consecutive(_) => {}
                }
                new
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    size: u64,
    failed_bits: Box<[AtomicU64]>,
    slow_bits: Box<[AtomicU64]>,
    seq: AtomicU64,
    failed: AtomicI64,
    slow: AtomicI64,
}

#[inline]
fn flip(word: &AtomicU64, bit: u64, set: bool) -> i64 {
    if set {
        i64::from(word.fetch_or(bit, Ordering::AcqRel) & bit == 0)
    } else if word.load(Ordering::Relaxed) & bit == 0 {
        0
    } else {
        -i64::from(word.fetch_and(!bit, Ordering::AcqRel) & bit != 0)
    }
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> CountWindow {
        let words = (size as usize).div_ceil(64);
        let zeros = |n| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        CountWindow {
            size: u64::from(size),
            failed_bits: zeros(words),
            slow_bits: zeros(words),
            seq: AtomicU64::new(0),
            failed: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    /// Records one outcome; returns the counts after it.
    pub(crate) fn record(&self, failed: bool, slow: bool) -> Counts {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel);
        let slot = seq % self.size;
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        let df = flip(&self.failed_bits[word], bit, failed);
        let ds = flip(&self.slow_bits[word], bit, slow);
        let f = if df != 0 {
            self.failed.fetch_add(df, Ordering::AcqRel) + df
        } else {
            self.failed.load(Ordering::Acquire)
        };
        let s = if ds != 0 {
            self.slow.fetch_add(ds, Ordering::AcqRel) + ds
        } else {
            self.slow.load(Ordering::Acquire)
        };
        Counts {
            calls: (seq + 1).min(self.size),
            failed: f.max(0) as u64,
            slow: s.max(0) as u64,
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            calls: self.seq.load(Ordering::Acquire).min(self.size),
            failed: self.failed.load(Ordering::Acquire).max(0) as u64,
            slow: self.slow.load(Ordering::Acquire).max(0) as u64,
        }
    }

    fn is_clean(&self) -> bool {
        self.seq.load(Ordering::Acquire) >= self.size
            && self.failed.load(Ordering::Acquire) <= 0
            && self.slow.load(Ordering::Acquire) <= 0
    }

    /// The last `n` outcomes (at most the window's calls), oldest first.
    fn recent(&self, n: usize) -> Vec<(bool, bool)> {
        let seq = self.seq.load(Ordering::Acquire);
        let held = seq.min(self.size);
        let keep = held.min(n as u64);
        (seq - keep..seq)
            .map(|s| {
                let slot = s % self.size;
                let (w, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
                (
                    self.failed_bits[w].load(Ordering::Acquire) & bit != 0,
                    self.slow_bits[w].load(Ordering::Acquire) & bit != 0,
                )
            })
            .collect()
    }
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    inner: Mutex<TimeInner>,
}

#[derive(Debug)]
struct TimeInner {
    buckets: Vec<(u64, Counts)>,
    total: Counts,
    last_sec: u64,
}

const SEC: u64 = 1_000_000_000;

impl TimeWindow {
    pub(crate) fn new(seconds: u32) -> TimeWindow {
        TimeWindow {
            inner: Mutex::new(TimeInner {
                buckets: vec![(0, Counts::default()); seconds as usize],
                total: Counts::default(),
                last_sec: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TimeInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn record(&self, now: Nanos, failed: bool, slow: bool) -> Counts {
        let mut t = self.lock();
        // A thread that read the clock just before another one advanced the window counts in
        // the newest second.
        let sec = (now / SEC).max(t.last_sec);
        t.advance(sec);
        let n = t.buckets.len();
        let b = &mut t.buckets[(sec % n as u64) as usize];
        b.0 = sec;
        b.1.calls += 1;
        b.1.failed += u64::from(failed);
        b.1.slow += u64::from(slow);
        t.total.calls += 1;
        t.total.failed += u64::from(failed);
        t.total.slow += u64::from(slow);
        t.total
    }

    pub(crate) fn counts(&self, now: Nanos) -> Counts {
        let mut t = self.lock();
        t.advance(now / SEC);
        t.total
    }

    fn add_bulk(&self, now: Nanos, c: Counts) {
        let mut t = self.lock();
        let sec = now / SEC;
        t.advance(sec);
        let n = t.buckets.len() as u64;
        let b = &mut t.buckets[(sec % n) as usize];
        b.0 = sec;
        b.1.calls += c.calls;
        b.1.failed += c.failed;
        b.1.slow += c.slow;
        t.total.calls += c.calls;
        t.total.failed += c.failed;
        t.total.slow += c.slow;
    }

    fn resized(&self, seconds: u32, now: Nanos) -> TimeWindow {
        let new = TimeWindow::new(seconds);
        let mut old = self.lock();
        let sec = now / SEC;
        old.advance(sec);
        {
            let mut t = new.lock();
            t.last_sec = sec;
            let n = u64::from(seconds);
            for &(s, c) in &old.buckets {
                if c.calls > 0 && s + n > sec {
                    let b = &mut t.buckets[(s % n) as usize];
                    b.0 = s;
                    b.1.calls += c.calls;
                    b.1.failed += c.failed;
                    b.1.slow += c.slow;
                    t.total.calls += c.calls;
                    t.total.failed += c.failed;
                    t.total.slow += c.slow;
                }
            }
        }
        new
    }
}

impl TimeInner {
    /// Empties the buckets of the seconds that left the window.
    fn advance(&mut self, sec: u64) {
        if sec <= self.last_sec {
            return;
        }
        let n = self.buckets.len() as u64;
        for b in &mut self.buckets {
            if b.1.calls > 0 && b.0 + n <= sec {
                self.total.calls -= b.1.calls;
                self.total.failed -= b.1.failed;
                self.total.slow -= b.1.slow;
                b.1 = Counts::default();
            }
        }
        self.last_sec = sec;
    }
}

#[derive(Debug)]
pub(crate) struct Consecutive {
    pub(crate) threshold: u32,
    pub(crate) run: AtomicU32,
}

impl Consecutive {
    fn new(threshold: u32) -> Consecutive {
        Consecutive {
            threshold,
            run: AtomicU32::new(0),
        }
    }

    /// Records one outcome; returns the run of failures after it.
    pub(crate) fn record(&self, failed: bool) -> u32 {
        if failed {
            self.run.fetch_add(1, Ordering::AcqRel).saturating_add(1)
        } else {
            if self.run.load(Ordering::Relaxed) != 0 {
                self.run.store(0, Ordering::Release);
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_evicts_the_oldest_outcome() {
        let w = CountWindow::new(4);
        w.record(true, false);
        w.record(false, true);
        w.record(false, false);
        let c = w.record(false, false);
        assert_eq!(
            c,
            Counts {
                calls: 4,
                failed: 1,
                slow: 1
            }
        );
        assert!(!w.is_clean());
        let c = w.record(false, false); // evicts the failure
        assert_eq!((c.failed, c.slow), (0, 1));
        let c = w.record(false, false); // evicts the slow call
        assert_eq!((c.calls, c.failed, c.slow), (4, 0, 0));
        assert!(w.is_clean());
        assert_eq!(w.recent(3).len(), 3);
    }

    #[test]
    fn count_window_stays_exact_under_concurrency() {
        let w = std::sync::Arc::new(CountWindow::new(100));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        w.record((i + t) % 3 == 0, i % 5 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let bits = |words: &[AtomicU64]| {
            words
                .iter()
                .map(|x| x.load(Ordering::Relaxed).count_ones() as u64)
                .sum::<u64>()
        };
        let c = w.counts();
        assert_eq!(c.failed, bits(&w.failed_bits));
        assert_eq!(c.slow, bits(&w.slow_bits));
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let w = TimeWindow::new(2);
        w.record(0, true, false);
        w.record(SEC / 2, false, false);
        assert_eq!(w.counts(SEC).calls, 2);
        assert_eq!(w.counts(SEC + 1).failed, 1);
        let c = w.record(2 * SEC, false, false);
        assert_eq!((c.calls, c.failed), (1, 0));
        assert_eq!(w.counts(10 * SEC).calls, 0);
    }

    #[test]
    fn migration_keeps_recent_outcomes() {
        let w = Window::new(SlidingWindow::CountBased(10));
        if let Window::Count(c) = &w {
            for i in 0..10 {
                c.record(i >= 7, false);
            }
        }
        let small = w.migrate(SlidingWindow::CountBased(4), 0);
        assert_eq!(small.counts(|| 0).calls, 4);
        assert_eq!(small.counts(|| 0).failed, 3);
        let big = w.migrate(SlidingWindow::CountBased(20), 0);
        assert_eq!(big.counts(|| 0).calls, 10);
        assert_eq!(big.counts(|| 0).failed, 3);
        let time = w.migrate(SlidingWindow::TimeBased(5), 0);
        assert_eq!(time.counts(|| 0).failed, 3);
        assert_eq!(time.counts(|| 0).calls, 10);
    }
}
