//! Helpers the layers share to turn a rejection into an HTTP or gRPC response.
//!
//! A layer that rejects a request answers it itself, so that a stack works on axum or tonic
//! without an error-handling layer. These helpers keep the details the same in every layer:
//! `Retry-After` is a whole number of seconds rounded up (a client that waits exactly that long
//! is not rejected again for being early), and a gRPC request gets a trailers-only response
//! whose `grpc-status` carries the code, as gRPC servers send it.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

/// The `grpc-status` header (or trailer).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The `grpc-message` header (or trailer).
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status code `RESOURCE_EXHAUSTED` (8).
pub const GRPC_RESOURCE_EXHAUSTED: u16 = 8;
/// gRPC status code `UNAVAILABLE` (14).
pub const GRPC_UNAVAILABLE: u16 = 14;

/// A duration as whole seconds, rounded up: 0 stays 0, 1 ns becomes 1 s.
///
/// Saturates at `u64::MAX` seconds (a `Duration::MAX` retry-after means "not within any
/// window").
pub fn seconds_rounded_up(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// The value of a `Retry-After` header for `duration`, in seconds rounded up.
pub fn retry_after_value(duration: Duration) -> HeaderValue {
    HeaderValue::from(seconds_rounded_up(duration))
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, with or without a
/// `+proto` / `+json` suffix).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An empty response with `status` and, when given, a `Retry-After` header.
pub fn rejection<B: Default>(status: StatusCode, retry_after: Option<Duration>) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    if let Some(after) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, retry_after_value(after));
    }
    response
}

/// A trailers-only gRPC response: HTTP 200, `content-type: application/grpc`, and the status in
/// `grpc-status` / `grpc-message`, with no body. `message` is sent as is when it is a valid
/// header value and dropped otherwise (it is informational).
pub fn grpc_rejection<B: Default>(code: u16, message: &str) -> Response<B> {
    let mut response = Response::new(B::default());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert(GRPC_MESSAGE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(seconds_rounded_up(Duration::ZERO), 0);
        assert_eq!(seconds_rounded_up(Duration::from_nanos(1)), 1);
        assert_eq!(seconds_rounded_up(Duration::from_secs(2)), 2);
        assert_eq!(seconds_rounded_up(Duration::from_millis(2001)), 3);
        assert_eq!(seconds_rounded_up(Duration::MAX), u64::MAX);
        assert_eq!(retry_after_value(Duration::from_millis(10)), "1");
    }

    #[test]
    fn grpc_requests_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&headers));
    }

    #[test]
    fn rejections_carry_status_and_headers() {
        let r: Response<()> = rejection(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "2");

        let g: Response<()> = grpc_rejection(GRPC_RESOURCE_EXHAUSTED, "rate limited");
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()[GRPC_STATUS], "8");
        assert_eq!(g.headers()[GRPC_MESSAGE], "rate limited");
        assert_eq!(g.headers()[CONTENT_TYPE], "application/grpc");
    }
}
