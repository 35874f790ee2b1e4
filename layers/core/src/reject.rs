//! How every layer refuses a request: one strategy, the same on each layer.
//!
//! A layer that refuses a request (the rate limiter denies it, the circuit is open, no shard
//! can take it, ...) describes the refusal with a typed error that implements [`Refusal`]:
//! what HTTP status and gRPC code it means, when the client may try again, and which header
//! fields go with it. What the service then answers is the choice of an [`OnRejection`]
//! strategy, a type parameter of every layer's service:
//!
//! - [`KeepError`] (the default): the refusal is the service's error, boxed, as tower's own
//!   middleware do: `err.downcast_ref::<RateLimited>()`. Inner errors are boxed too.
//! - [`Respond`] (feature `http`): an HTTP service answers the refusal itself: the status with
//!   `Retry-After` and the layer's fields (`RateLimit`, ...), or a trailers-only gRPC response
//!   with its `grpc-status` when the request is a gRPC call. The inner service's error type is
//!   kept, so a stack of layers works on axum without `HandleErrorLayer`. Responses the layer
//!   lets through carry the layer's fields too (the rate limiter's `RateLimit` headers).
//! - A closure `Fn(&Req, &dyn Refusal) -> Res` builds the answer itself; inner errors pass
//!   through unchanged.
//!
//! Every layer switches with the same builder call: `.respond()` for [`Respond`], or
//! `.on_rejection(strategy)` for any strategy.
//!
//! ```
//! use std::time::Duration;
//! use omega_core::reject::{KeepError, OnRejection, Refusal};
//!
//! #[derive(Debug)]
//! struct Busy;
//! impl std::fmt::Display for Busy {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("busy") }
//! }
//! impl std::error::Error for Busy {}
//! impl Refusal for Busy {
//!     fn status(&self) -> u16 { 503 }
//!     fn grpc_code(&self) -> u16 { omega_core::reject::grpc::UNAVAILABLE }
//!     fn retry_after(&self) -> Option<Duration> { Some(Duration::from_secs(1)) }
//! }
//!
//! // The default keeps the refusal as the (boxed) error.
//! let answer: Result<&str, _> =
//!     <KeepError as OnRejection<(), &str, std::io::Error>>::reject(&KeepError, &(), Busy);
//! assert!(answer.unwrap_err().is::<Busy>());
//!
//! // A closure answers with a value of the service's response type.
//! let fallback = |_: &(), refusal: &dyn Refusal| format!("try later ({})", refusal.status());
//! let answer: Result<String, std::io::Error> = fallback.reject(&(), Busy);
//! assert_eq!(answer.unwrap(), "try later (503)");
//! ```

use std::time::Duration;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// gRPC status codes the layers answer with.
pub mod grpc {
    /// `INVALID_ARGUMENT` (3).
    pub const INVALID_ARGUMENT: u16 = 3;
    /// `NOT_FOUND` (5).
    pub const NOT_FOUND: u16 = 5;
    /// `FAILED_PRECONDITION` (9).
    pub const FAILED_PRECONDITION: u16 = 9;
    /// `ABORTED` (10).
    pub const ABORTED: u16 = 10;
    /// `RESOURCE_EXHAUSTED` (8).
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    /// `UNAVAILABLE` (14).
    pub const UNAVAILABLE: u16 = 14;
}

/// A layer's typed reason for refusing a request.
///
/// Implemented by each layer's rejection error (`RateLimited`, `CircuitOpen`, `ShardError`,
/// ...). Only the layer builds these errors; a strategy ([`OnRejection`]) decides whether they
/// stay errors or become responses.
pub trait Refusal: std::error::Error + Send + Sync + 'static {
    /// The HTTP status that answers the refusal (429, 503, 400, ...).
    fn status(&self) -> u16;

    /// The gRPC status code that answers the refusal in a gRPC call ([`grpc`]).
    fn grpc_code(&self) -> u16;

    /// How long the client should wait before trying again, when the layer knows
    /// (`Retry-After`, rounded up to whole seconds).
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Adds the layer's own header fields to the answer (the rate limiter's `RateLimit`
    /// fields, ...). `Retry-After` is written by the strategy from [`Refusal::retry_after`].
    #[cfg(feature = "http")]
    fn write_headers(&self, headers: &mut ::http::HeaderMap) {
        let _ = headers;
    }

    /// The error a service returns when the refusal stays an error ([`KeepError`]): the
    /// refusal itself, boxed, unless a layer keeps private details out of it.
    fn into_error(self) -> BoxError
    where
        Self: Sized,
    {
        Box::new(self)
    }
}

/// What a service answers when its layer refuses a request, and what its error type is.
///
/// `Req` is the request type, `Res` the inner service's response type and `E` its error type.
/// See the [module docs](self) for the strategies this crate provides.
pub trait OnRejection<Req, Res, E>: Clone + Send + Sync + 'static {
    /// The service's error type.
    type Error;

    /// Whether responses that pass the layer are handed to [`OnRejection::advise`], so that
    /// a layer computes its header fields only for strategies that send them.
    const ADVISES: bool = false;

    /// The answer to `req`, which the layer refuses for `refusal`.
    fn reject<R: Refusal>(&self, req: &Req, refusal: R) -> Result<Res, Self::Error>;

    /// The inner service's error as the service's error.
    fn map_err(err: E) -> Self::Error;

    /// Whether the inner service's `result` is a failure, for layers that learn from
    /// failures (the adaptive concurrency limit). An error by default; with [`Respond`] —
    /// where the stack answers failures as responses — also a `5xx` response. (A gRPC
    /// failure carried in trailers is not visible here: its head says `200`.)
    #[inline]
    fn is_failure(result: &Result<Res, E>) -> bool {
        result.is_err()
    }

    /// Lets a response that passed the layer carry the layer's header fields (`write` adds
    /// them). Called only when [`OnRejection::ADVISES`] is `true`.
    #[cfg(feature = "http")]
    fn advise(response: &mut Res, write: impl FnOnce(&mut ::http::HeaderMap)) {
        let _ = (response, write);
    }
}

/// Refusals stay errors: the service fails with the layer's typed error, boxed
/// ([`Refusal::into_error`]), and inner errors are boxed too, as tower's middleware do.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeepError;

impl<Req, Res, E: Into<BoxError>> OnRejection<Req, Res, E> for KeepError {
    type Error = BoxError;

    #[inline]
    fn reject<R: Refusal>(&self, _req: &Req, refusal: R) -> Result<Res, BoxError> {
        Err(refusal.into_error())
    }

    #[inline]
    fn map_err(err: E) -> BoxError {
        err.into()
    }
}

/// A closure builds the answer from the request and the refusal; inner errors pass through.
impl<F, Req, Res, E> OnRejection<Req, Res, E> for F
where
    F: Fn(&Req, &dyn Refusal) -> Res + Clone + Send + Sync + 'static,
{
    type Error = E;

    fn reject<R: Refusal>(&self, req: &Req, refusal: R) -> Result<Res, E> {
        Ok(self(req, &refusal))
    }

    #[inline]
    fn map_err(err: E) -> E {
        err
    }
}

#[cfg(feature = "http")]
pub use self::http_strategy::Respond;

#[cfg(feature = "http")]
mod http_strategy {
    use ::http::header::RETRY_AFTER;
    use ::http::{Request, Response, StatusCode};

    use super::{OnRejection, Refusal};
    use crate::http::{grpc_rejection, is_grpc, retry_after_value};

    /// HTTP services answer refusals themselves (feature `http`).
    ///
    /// A refused request gets an empty response with the refusal's status, `Retry-After` in
    /// whole seconds (rounded up) when the layer knows when to come back, and the layer's
    /// header fields; a gRPC call (`content-type: application/grpc...`) gets a trailers-only
    /// response with the refusal's `grpc-status`, its message in `grpc-message`, and the same
    /// `Retry-After` and fields. The inner service's error type is kept, so the stack works on
    /// axum without `HandleErrorLayer`; responses that pass carry the layer's fields.
    /// Response bodies need `Default` (an empty body), as in tower-http.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Respond;

    impl<B, ResB, E> OnRejection<Request<B>, Response<ResB>, E> for Respond
    where
        ResB: Default,
    {
        type Error = E;

        const ADVISES: bool = true;

        fn reject<R: Refusal>(&self, req: &Request<B>, refusal: R) -> Result<Response<ResB>, E> {
            Ok(response(req, &refusal))
        }

        #[inline]
        fn map_err(err: E) -> E {
            err
        }

        #[inline]
        fn advise(response: &mut Response<ResB>, write: impl FnOnce(&mut ::http::HeaderMap)) {
            write(response.headers_mut());
        }

        #[inline]
        fn is_failure(result: &Result<Response<ResB>, E>) -> bool {
            match result {
                Ok(response) => response.status().is_server_error(),
                Err(_) => true,
            }
        }
    }

    /// The response [`Respond`] gives to `req` for `refusal`.
    pub(crate) fn response<B, ResB: Default, R: Refusal + ?Sized>(
        req: &Request<B>,
        refusal: &R,
    ) -> Response<ResB> {
        let mut response = if is_grpc(req.headers()) {
            grpc_rejection(refusal.grpc_code(), &refusal.to_string())
        } else {
            let mut r = Response::new(ResB::default());
            *r.status_mut() =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            r
        };
        if let Some(after) = refusal.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, retry_after_value(after));
        }
        refusal.write_headers(response.headers_mut());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Limited;

    impl std::fmt::Display for Limited {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("limited")
        }
    }

    impl std::error::Error for Limited {}

    impl Refusal for Limited {
        fn status(&self) -> u16 {
            429
        }

        fn grpc_code(&self) -> u16 {
            grpc::RESOURCE_EXHAUSTED
        }

        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_millis(1500))
        }

        #[cfg(feature = "http")]
        fn write_headers(&self, headers: &mut ::http::HeaderMap) {
            headers.insert(
                "ratelimit",
                ::http::HeaderValue::from_static("\"l\";r=0;t=2"),
            );
        }
    }

    #[test]
    fn keep_error_boxes_the_refusal_and_inner_errors() {
        let r: Result<(), BoxError> =
            <KeepError as OnRejection<(), (), std::io::Error>>::reject(&KeepError, &(), Limited);
        assert!(r.unwrap_err().is::<Limited>());
        let e = <KeepError as OnRejection<(), (), std::io::Error>>::map_err(std::io::Error::other(
            "inner",
        ));
        assert_eq!(e.to_string(), "inner");
    }

    #[test]
    fn a_closure_answers_and_passes_inner_errors_through() {
        let answer = |req: &u32, refusal: &dyn Refusal| {
            let limited = (refusal as &dyn std::error::Error).is::<Limited>();
            (*req, refusal.status(), limited)
        };
        let r: Result<_, std::io::Error> = answer.reject(&7, Limited);
        assert_eq!(r.unwrap(), (7, 429, true));
    }

    #[cfg(feature = "http")]
    #[test]
    fn respond_answers_http_and_grpc_requests() {
        use ::http::{Request, Response};
        let plain = Request::get("/").body(()).unwrap();
        let r: Response<()> = <Respond as OnRejection<_, _, std::convert::Infallible>>::reject(
            &Respond, &plain, Limited,
        )
        .unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["ratelimit"], "\"l\";r=0;t=2");

        let grpc = Request::post("/svc/M")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let r: Response<()> = <Respond as OnRejection<_, _, std::convert::Infallible>>::reject(
            &Respond, &grpc, Limited,
        )
        .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(r.headers()["grpc-message"], "limited");
        assert_eq!(r.headers()["retry-after"], "2");

        let mut passed: Response<()> = Response::new(());
        <Respond as OnRejection<Request<()>, Response<()>, std::convert::Infallible>>::advise(
            &mut passed,
            |h| {
                h.insert("ratelimit", ::http::HeaderValue::from_static("x"));
            },
        );
        assert_eq!(passed.headers()["ratelimit"], "x");
    }
}
