//! RFC 9111's shared cache, rule by rule: each test is named after the rule it checks and
//! cites the section it comes from. Every test runs the cache in front of a real origin (axum
//! on a loopback socket) reached through a real client (hyper), on a clock the test moves.
#![cfg(feature = "http")]

mod coalescing;
mod freshness;
mod invalidation;
mod keys;
#[cfg(feature = "redis")]
mod redis;
mod requests;
mod stale;
mod status;
mod storing;
mod support;
mod validation;
mod vary;
