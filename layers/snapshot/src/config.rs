//! The layer's settings: snapshot triggers, deltas, compression, retention, retries, cache.

use std::time::Duration;

use crate::aggregate::Format;
use omega_core::config::{ConfigError, Issues};

/// When to write a snapshot. Conditions combine with [`Trigger::or`]: a snapshot is written
/// when any of them holds (and the aggregate has events the latest snapshot lacks).
///
/// ```
/// use std::time::Duration;
/// use omega_snapshot::Trigger;
///
/// let t = Trigger::every_events(100)
///     .or(Trigger::every(Duration::from_secs(300)))
///     .or(Trigger::replay_cost(Duration::from_millis(5)));
/// # let _ = t;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trigger {
    pub(crate) every_events: Option<u64>,
    pub(crate) every: Option<Duration>,
    pub(crate) replay_cost: Option<Duration>,
}

impl Trigger {
    /// Never: snapshots are written only by [`Repository::snapshot_now`](crate::Repository::snapshot_now)
    /// (and to heal a corrupt one).
    pub fn never() -> Self {
        Trigger::default()
    }

    /// When `n` events were appended since the latest snapshot.
    pub fn every_events(n: u64) -> Self {
        Trigger {
            every_events: Some(n),
            ..Trigger::default()
        }
    }

    /// When the latest snapshot (or the aggregate's loading) is older than `period` and
    /// events were appended since. Checked when a command arrives, not by a timer.
    pub fn every(period: Duration) -> Self {
        Trigger {
            every: Some(period),
            ..Trigger::default()
        }
    }

    /// When replaying the events after the latest snapshot costs more than `cost`: measured
    /// when the aggregate is loaded, then estimated per event for the events appended since.
    pub fn replay_cost(cost: Duration) -> Self {
        Trigger {
            replay_cost: Some(cost),
            ..Trigger::default()
        }
    }

    /// Either trigger (for each condition both set, the smaller threshold wins).
    pub fn or(self, other: Trigger) -> Self {
        fn min<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Trigger {
            every_events: min(self.every_events, other.every_events),
            every: min(self.every, other.every),
            replay_cost: min(self.replay_cost, other.replay_cost),
        }
    }

    /// `true` when no condition is set.
    pub fn is_never(&self) -> bool {
        *self == Trigger::default()
    }
}

/// Which snapshots to keep (AutoPrune), applied after each snapshot is written.
///
/// A snapshot is deleted when it is not among the newest `keep_last`, or is older than
/// `max_age`, except that the newest snapshot that is known valid (the one just written) and
/// the full snapshot any kept delta is based on are never deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub(crate) keep_last: usize,
    pub(crate) max_age: Option<Duration>,
}

impl Retention {
    /// Keeps the newest `n` snapshots (at least 1).
    pub fn keep_last(n: usize) -> Self {
        Retention {
            keep_last: n,
            max_age: None,
        }
    }

    /// Also deletes snapshots older than `age` (never the last valid one).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention::keep_last(3)
    }
}

/// The settings of a [`Repository`](crate::Repository) and its layer.
///
/// ```
/// use std::time::Duration;
/// use omega_snapshot::{Retention, SnapshotConfig, Trigger};
///
/// let config = SnapshotConfig::default()
///     .trigger(Trigger::every_events(200).or(Trigger::replay_cost(Duration::from_millis(2))))
///     .full_every(10)
///     .retention(Retention::keep_last(4).max_age(Duration::from_secs(7 * 86_400)));
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotConfig {
    pub(crate) trigger: Trigger,
    pub(crate) full_every: u32,
    pub(crate) compress_above: Option<usize>,
    pub(crate) compression_level: i32,
    pub(crate) retention: Retention,
    pub(crate) snapshot_format: Format,
    pub(crate) event_format: Format,
    pub(crate) max_retries: u32,
    pub(crate) retry_backoff: Duration,
    pub(crate) cache_capacity: u64,
    pub(crate) cache_idle: Option<Duration>,
    pub(crate) read_batch: usize,
    pub(crate) queue_capacity: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            trigger: Trigger::every_events(100),
            full_every: 8,
            compress_above: Some(512),
            compression_level: 3,
            retention: Retention::default(),
            snapshot_format: Format::Binary,
            event_format: Format::Json,
            max_retries: 10,
            retry_backoff: Duration::from_millis(2),
            cache_capacity: 10_000,
            cache_idle: Some(Duration::from_secs(600)),
            read_batch: 4096,
            queue_capacity: 1024,
        }
    }
}

impl SnapshotConfig {
    /// When to write snapshots (default: every 100 events).
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Every `k`-th snapshot of an aggregate is full, the others are binary deltas against
    /// the latest full one (default 8; 1: always full). Deltas need the `zstd` feature;
    /// without it every snapshot is full.
    pub fn full_every(mut self, k: u32) -> Self {
        self.full_every = k;
        self
    }

    /// Compresses full snapshots whose encoded state has at least `bytes` bytes with zstd
    /// (default 512; needs the `zstd` feature).
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// Never compresses full snapshots.
    pub fn no_compression(mut self) -> Self {
        self.compress_above = None;
        self
    }

    /// The zstd level, 1 to 22 (default 3).
    pub fn compression_level(mut self, level: i32) -> Self {
        self.compression_level = level;
        self
    }

    /// Which snapshots to keep (default: the newest 3).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// How the state is encoded in snapshots (default [`Format::Binary`]).
    pub fn snapshot_format(mut self, format: Format) -> Self {
        self.snapshot_format = format;
        self
    }

    /// How events are encoded (default [`Format::Json`]). Every event of a store must use the
    /// same format: change it only with a new store.
    pub fn event_format(mut self, format: Format) -> Self {
        self.event_format = format;
        self
    }

    /// How many times a command is decided again after a version conflict (default 10)
    /// before it is refused with [`ConcurrencyConflict`](crate::ConcurrencyConflict).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The base of the jittered, doubling pause between retries (default 2 ms).
    pub fn retry_backoff(mut self, base: Duration) -> Self {
        self.retry_backoff = base;
        self
    }

    /// How many aggregates the in-process cache keeps loaded (default 10,000; 0 disables
    /// the cache, so every command loads its aggregate).
    pub fn cache_capacity(mut self, n: u64) -> Self {
        self.cache_capacity = n;
        self
    }

    /// Drops cached aggregates unused for `idle` (default 10 minutes; `None`: never).
    pub fn cache_idle(mut self, idle: Option<Duration>) -> Self {
        self.cache_idle = idle;
        self
    }

    /// How many events one read fetches while loading (default 4096).
    pub fn read_batch(mut self, n: usize) -> Self {
        self.read_batch = n;
        self
    }

    /// How many snapshot writes may wait for the background writer (default 1024); when it
    /// is full, a trigger is skipped (and fires again later), the command never waits.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Checks every value; the error names every field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Issues::new();
        self.check(&mut issues);
        issues.into_result()
    }

    /// Records every mistake at its field, relative to where `issues` stands.
    pub fn check(&self, issues: &mut Issues) {
        let t = &self.trigger;
        if t.every_events == Some(0) {
            issues.push("trigger.every_events", "must be at least 1");
        }
        if t.every == Some(Duration::ZERO) {
            issues.push("trigger.every", "must be longer than 0");
        }
        if t.replay_cost == Some(Duration::ZERO) {
            issues.push("trigger.replay_cost", "must be longer than 0");
        }
        if self.full_every == 0 {
            issues.push("full_every", "must be at least 1");
        }
        if !(1..=22).contains(&self.compression_level) {
            issues.push(
                "compression_level",
                format!("must be 1 to 22, not {}", self.compression_level),
            );
        }
        if self.retention.keep_last == 0 {
            issues.push(
                "retention.keep_last",
                "must be at least 1 (the last valid snapshot is always kept)",
            );
        }
        if self.retention.max_age == Some(Duration::ZERO) {
            issues.push("retention.max_age", "must be longer than 0");
        }
        if self.read_batch == 0 {
            issues.push("read_batch", "must be at least 1");
        }
        if self.queue_capacity == 0 {
            issues.push("queue_capacity", "must be at least 1");
        }
        if self.cache_idle == Some(Duration::ZERO) {
            issues.push("cache_idle", "must be longer than 0");
        }
    }

    /// The trigger.
    pub fn get_trigger(&self) -> Trigger {
        self.trigger
    }

    /// The retention.
    pub fn get_retention(&self) -> Retention {
        self.retention
    }
}

#[cfg(feature = "serde")]
pub use self::section::{RetentionSection, SnapshotSection, TriggerSection};

#[cfg(feature = "serde")]
mod section {
    use omega_core::config::{ConfigError, Dur, Issues};
    use serde::{Deserialize, Serialize};

    use super::{Retention, SnapshotConfig, Trigger};
    use crate::aggregate::Format;

    /// The `snapshot` section of a configuration file (feature `serde`), in the shapes every
    /// section of the project uses: durations written `250ms`, `5s`, `1m`, `2h`; every field
    /// optional (absent fields keep [`SnapshotConfig::default`]); each mistake reported with
    /// its field.
    ///
    /// ```
    /// use omega_snapshot::SnapshotConfig;
    ///
    /// let config = SnapshotConfig::from_json(r#"{
    ///     "trigger": { "every_events": 200, "replay_cost": "5ms" },
    ///     "full_every": 10,
    ///     "retention": { "keep_last": 4, "max_age": "168h" }
    /// }"#).unwrap();
    /// # let _ = config;
    /// let err = SnapshotConfig::from_json(r#"{ "retention": { "keep_last": 0 } }"#).unwrap_err();
    /// assert_eq!(err.issues()[0].0, "retention.keep_last");
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct SnapshotSection {
        /// When to write snapshots.
        #[serde(default)]
        pub trigger: Option<TriggerSection>,
        /// Every k-th snapshot is full.
        #[serde(default)]
        pub full_every: Option<u32>,
        /// Compress full snapshots of at least this many bytes; 0 never compresses.
        #[serde(default)]
        pub compress_above: Option<usize>,
        /// zstd level, 1 to 22.
        #[serde(default)]
        pub compression_level: Option<i32>,
        /// Which snapshots to keep.
        #[serde(default)]
        pub retention: Option<RetentionSection>,
        /// `"json"` or `"binary"`.
        #[serde(default)]
        pub snapshot_format: Option<Format>,
        /// `"json"` or `"binary"`.
        #[serde(default)]
        pub event_format: Option<Format>,
        /// Retries after a version conflict.
        #[serde(default)]
        pub max_retries: Option<u32>,
        /// Base pause between retries.
        #[serde(default)]
        pub retry_backoff: Option<Dur>,
        /// Aggregates kept loaded; 0 disables the cache.
        #[serde(default)]
        pub cache_capacity: Option<u64>,
        /// Idle time before a cached aggregate is dropped; `0s`: never.
        #[serde(default)]
        pub cache_idle: Option<Dur>,
        /// Events per read while loading.
        #[serde(default)]
        pub read_batch: Option<usize>,
        /// Pending background snapshot writes.
        #[serde(default)]
        pub queue_capacity: Option<usize>,
    }

    /// `trigger`: any of the conditions (they combine with "or").
    #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct TriggerSection {
        /// Every n events.
        #[serde(default)]
        pub every_events: Option<u64>,
        /// Every so long.
        #[serde(default)]
        pub every: Option<Dur>,
        /// When replaying the events since the last snapshot costs more than this.
        #[serde(default)]
        pub replay_cost: Option<Dur>,
    }

    /// `retention`.
    #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct RetentionSection {
        /// Keep the newest n (default 3).
        #[serde(default)]
        pub keep_last: Option<usize>,
        /// Delete snapshots older than this (never the last valid one).
        #[serde(default)]
        pub max_age: Option<Dur>,
    }

    impl SnapshotSection {
        /// The configuration this section describes, unchecked.
        fn config(&self) -> SnapshotConfig {
            let mut c = SnapshotConfig::default();
            if let Some(t) = &self.trigger {
                let mut trigger = Trigger::never();
                if let Some(n) = t.every_events {
                    trigger = trigger.or(Trigger::every_events(n));
                }
                if let Some(d) = t.every {
                    trigger = trigger.or(Trigger::every(d.0));
                }
                if let Some(d) = t.replay_cost {
                    trigger = trigger.or(Trigger::replay_cost(d.0));
                }
                c.trigger = trigger;
            }
            if let Some(k) = self.full_every {
                c.full_every = k;
            }
            match self.compress_above {
                Some(0) => c.compress_above = None,
                Some(n) => c.compress_above = Some(n),
                None => {}
            }
            if let Some(l) = self.compression_level {
                c.compression_level = l;
            }
            if let Some(r) = &self.retention {
                let mut retention = Retention::keep_last(r.keep_last.unwrap_or(3));
                if let Some(d) = r.max_age {
                    retention = retention.max_age(d.0);
                }
                c.retention = retention;
            }
            if let Some(f) = self.snapshot_format {
                c.snapshot_format = f;
            }
            if let Some(f) = self.event_format {
                c.event_format = f;
            }
            if let Some(n) = self.max_retries {
                c.max_retries = n;
            }
            if let Some(d) = self.retry_backoff {
                c.retry_backoff = d.0;
            }
            if let Some(n) = self.cache_capacity {
                c.cache_capacity = n;
            }
            match self.cache_idle {
                Some(d) if d.0.is_zero() => c.cache_idle = None,
                Some(d) => c.cache_idle = Some(d.0),
                None => {}
            }
            if let Some(n) = self.read_batch {
                c.read_batch = n;
            }
            if let Some(n) = self.queue_capacity {
                c.queue_capacity = n;
            }
            c
        }

        /// Records every mistake at its field, relative to where `issues` stands.
        pub fn validate(&self, issues: &mut Issues) {
            self.config().check(issues);
        }

        /// The configuration this section describes, validated.
        pub fn build(&self) -> Result<SnapshotConfig, ConfigError> {
            let c = self.config();
            c.validate()?;
            Ok(c)
        }
    }

    impl SnapshotConfig {
        /// Reads and validates a JSON section; every mistake names its field
        /// (`retention.keep_last: must be at least 1 ...`, `trigger.every_events: invalid type ...`).
        pub fn from_json(json: &str) -> Result<SnapshotConfig, ConfigError> {
            omega_core::config::from_json::<SnapshotSection>(json)?.build()
        }
    }

    impl<'de> Deserialize<'de> for SnapshotConfig {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            SnapshotSection::deserialize(d)?
                .build()
                .map_err(serde::de::Error::custom)
        }
    }

    #[cfg(test)]
    mod tests {
        use std::time::Duration;

        use super::*;

        #[test]
        fn sections_build_and_name_bad_fields() {
            let c = SnapshotConfig::from_json(
                r#"{"trigger":{"every_events":50,"every":"1s"},"compress_above":0,
                    "snapshot_format":"json","cache_idle":"0s"}"#,
            )
            .unwrap();
            assert_eq!(c.trigger.every_events, Some(50));
            assert_eq!(c.trigger.every, Some(Duration::from_secs(1)));
            assert_eq!(c.compress_above, None);
            assert_eq!(c.snapshot_format, Format::Json);
            assert_eq!(c.cache_idle, None);

            let e = SnapshotConfig::from_json(r#"{"trigger":{"every_events":"x"}}"#).unwrap_err();
            assert_eq!(e.issues()[0].0, "trigger.every_events");
            let e = SnapshotConfig::from_json(r#"{"trigger":{"every":"0s"}}"#).unwrap_err();
            assert_eq!(e.issues()[0].0, "trigger.every");
            let e = SnapshotConfig::from_json(r#"{"trigger":{"every":"5d"}}"#).unwrap_err();
            assert!(e.to_string().contains("unknown unit"), "{e}");
            let e = SnapshotConfig::from_json(r#"{"full_evry":3}"#).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{e}");
            let e = SnapshotConfig::from_json(r#"{"compression_level":40,"full_every":0}"#)
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "full_every: must be at least 1\ncompression_level: must be 1 to 22, not 40"
            );
            let c: SnapshotConfig = serde_json::from_str(r#"{"full_every":1}"#).unwrap();
            assert_eq!(c.full_every, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_combine_with_the_smaller_threshold() {
        let t = Trigger::every_events(100)
            .or(Trigger::every_events(50))
            .or(Trigger::every(Duration::from_secs(1)));
        assert_eq!(t.every_events, Some(50));
        assert_eq!(t.every, Some(Duration::from_secs(1)));
        assert!(Trigger::never().is_never());
        assert!(!t.is_never());
    }

    #[test]
    fn validation_names_the_field() {
        let e = SnapshotConfig::default()
            .retention(Retention::keep_last(0))
            .validate()
            .unwrap_err();
        assert_eq!(e.issues()[0].0, "retention.keep_last");
        let e = SnapshotConfig::default()
            .trigger(Trigger::every_events(0))
            .validate()
            .unwrap_err();
        assert_eq!(e.issues()[0].0, "trigger.every_events");
        assert!(SnapshotConfig::default().validate().is_ok());
    }
}
