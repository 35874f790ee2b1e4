//! Permits for single calls, and the decorators that guard a future or a function.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::admission::{Ticket, UNTRACKED};
use crate::breaker::CircuitBreaker;
use crate::classify::{Classify, ErrorsAreFailures, Outcome};
use crate::error::{CallError, CircuitOpen};

impl CircuitBreaker {
    /// Takes a permit for one call, or says why not. Record the outcome on the permit; a permit
    /// dropped without an outcome counts as a cancelled call (a HALF_OPEN probe gives its
    /// permit back).
    ///
    /// ```
    /// use omega_circuit_breaker::CircuitBreaker;
    ///
    /// let breaker = CircuitBreaker::new("db");
    /// match breaker.try_acquire() {
    ///     Ok(permit) => permit.success(),
    ///     Err(open) => eprintln!("{open}"),
    /// }
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, CircuitOpen> {
        let ticket = self.admit()?;
        Ok(Permit {
            breaker: self,
            ticket,
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns a handle on the breaker
    /// (for futures that must be `'static`).
    #[inline]
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, CircuitOpen> {
        let ticket = self.admit()?;
        Ok(OwnedPermit {
            breaker: self.clone(),
            ticket,
        })
    }

    /// Runs `fut` if the circuit admits it, and records its outcome (`Err` is a failure).
    ///
    /// The permit is taken when the returned future is first polled, not when it is built:
    /// a call built in advance (queued, or one of many collected before they run) is decided
    /// by the state it starts in, holds no HALF_OPEN permit while it waits, and is timed (for
    /// slow calls) from its start.
    pub fn call<F, T, E>(&self, fut: F) -> Call<'_, F, ErrorsAreFailures>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_with(fut, ErrorsAreFailures)
    }

    /// Runs `fut` if the circuit admits it, and records its outcome as `classify` says. The
    /// permit is taken when the returned future is first polled (see [`call`](Self::call)).
    pub fn call_with<F, C, T, E>(&self, fut: F, classify: C) -> Call<'_, F, C>
    where
        F: Future<Output = Result<T, E>>,
        C: Classify<T, E>,
    {
        Call {
            fut,
            breaker: self,
            permit: None,
            step: Step::Unpolled,
            classify,
        }
    }

    /// Runs the synchronous `f` if the circuit admits it, and records its outcome.
    #[inline]
    pub fn call_sync<T, E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, CallError<E>> {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        let result = f();
        permit.record(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result.map_err(CallError::Inner)
    }
}

/// Permission for one call. Record its outcome with [`record`](Self::record) (or
/// [`success`](Self::success) / [`failure`](Self::failure)); dropping it unrecorded counts as
/// a cancelled call: nothing is recorded, and a HALF_OPEN probe gives its permit back.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Ticket,
}

impl Permit<'_> {
    /// Records the call's outcome. Outcomes of calls admitted before the breaker's last
    /// transition are ignored.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        let t = self.ticket;
        self.ticket.tag = UNTRACKED;
        self.breaker.complete(t, outcome);
    }

    /// Records a success.
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success)
    }

    /// Records a failure.
    pub fn failure(self) {
        self.record(Outcome::Failure)
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.breaker.release(self.ticket);
    }
}

/// A [`Permit`] that owns a handle on its breaker.
#[derive(Debug)]
pub struct OwnedPermit {
    breaker: CircuitBreaker,
    ticket: Ticket,
}

impl OwnedPermit {
    /// Records the call's outcome (see [`Permit::record`]).
    pub fn record(mut self, outcome: Outcome) {
        let t = self.ticket;
        self.ticket.tag = UNTRACKED;
        self.breaker.complete(t, outcome);
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.breaker.release(self.ticket);
    }
}

pin_project! {
    /// The future of [`CircuitBreaker::call`]: it asks the breaker for a permit when first
    /// polled, then runs the guarded future.
    pub struct Call<'a, F, C> {
        #[pin]
        fut: F,
        breaker: &'a CircuitBreaker,
        permit: Option<Permit<'a>>,
        step: Step,
        classify: C,
    }
}

/// Where a [`Call`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Unpolled,
    Running,
    Done,
}

impl<F, C> std::fmt::Debug for Call<'_, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("step", &self.step)
            .field("admitted", &self.permit.is_some())
            .finish()
    }
}

impl<F, C, T, E> Future for Call<'_, F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match *this.step {
            Step::Unpolled => match this.breaker.try_acquire() {
                Ok(permit) => {
                    *this.permit = Some(permit);
                    *this.step = Step::Running;
                }
                Err(open) => {
                    *this.step = Step::Done;
                    return Poll::Ready(Err(CallError::Rejected(open)));
                }
            },
            Step::Running => {}
            Step::Done => panic!("`Call` polled after completion"),
        }
        let result = std::task::ready!(this.fut.poll(cx));
        *this.step = Step::Done;
        if let Some(permit) = this.permit.take() {
            permit.record(this.classify.classify(&result));
        }
        Poll::Ready(result.map_err(CallError::Inner))
    }
}
