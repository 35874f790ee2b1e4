//! # omega-circuit-breaker
//!
//! `CircuitBreakerLayer`: resilience4j's circuit breaker model for Tower. Being built; see
//! the README for its status.

#![cfg_attr(docsrs, feature(doc_cfg))]
