//! Which outcomes count as failures.

use std::marker::PhantomData;
use std::sync::Arc;

/// How one call counts in the breaker's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A success (it may still be a slow call).
    Success,
    /// A failure.
    Failure,
    /// Neither: not recorded. In HALF_OPEN, the probe's permit is given back.
    Ignored,
}

/// Classifies the result of a call.
///
/// Timeouts: put the deadline inside the breaker (tower's `TimeoutLayer` under the
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer), or `tokio::time::timeout` inside the
/// guarded future); the timeout's error then counts as a failure, as every error does by
/// default. Calls that succeed but take too long are slow calls
/// ([`slow_call_duration`](crate::CircuitBreakerConfig::slow_call_duration)).
///
/// Implemented by [`ErrorsAreFailures`] (the default), by closures
/// `Fn(&Result<T, E>) -> Outcome`, and with the `http` feature by
/// [`HttpClassifier`](crate::http::HttpClassifier).
pub trait Classify<T, E> {
    /// How `result` counts.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

/// The default classification: an `Err` is a failure, an `Ok` a success.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorsAreFailures;

impl<T, E> Classify<T, E> for ErrorsAreFailures {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// A classifier from a closure, shared cheaply between clones of a service.
///
/// ```
/// use omega_circuit_breaker::{ClassifyFn, Outcome};
///
/// // 4xx-like errors are the caller's fault: ignore them.
/// let classify = ClassifyFn::new(|r: &Result<u16, u16>| match r {
///     Ok(_) => Outcome::Success,
///     Err(code) if *code < 500 => Outcome::Ignored,
///     Err(_) => Outcome::Failure,
/// });
/// # let _ = classify;
/// ```
pub struct ClassifyFn<F, T, E> {
    f: Arc<F>,
    _types: PhantomData<fn(&T, &E)>,
}

impl<F, T, E> ClassifyFn<F, T, E>
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        ClassifyFn {
            f: Arc::new(f),
            _types: PhantomData,
        }
    }
}

impl<F, T, E> Clone for ClassifyFn<F, T, E> {
    fn clone(&self) -> Self {
        ClassifyFn {
            f: self.f.clone(),
            _types: PhantomData,
        }
    }
}

impl<F, T, E> std::fmt::Debug for ClassifyFn<F, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClassifyFn")
    }
}

impl<F, T, E> Classify<T, E> for ClassifyFn<F, T, E>
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        (self.f)(result)
    }
}
