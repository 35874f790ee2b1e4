//! HTTP and gRPC: classification of responses (feature `http`).
//!
//! Refused requests are answered by the rejection strategy the layer is given
//! ([`Respond`](omega_core::reject::Respond) with `.http()` or `.respond()`), the same way on
//! every Omega Penta layer.

use http::{HeaderMap, Response, StatusCode};
use omega_core::http::GRPC_STATUS;

use crate::classify::{Classify, Outcome};

/// Classifies HTTP responses: a status in the failure set (default: every 5xx) is a failure, a
/// `grpc-status` header (a trailers-only gRPC response) with a code in the gRPC failure set
/// (default: UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS) is a failure, an
/// error of the service (a timeout, a refused connection, ...) is a failure; anything else is a
/// success.
///
/// gRPC statuses sent in trailers after a body are not seen by the head alone: servers send
/// errors before any message as trailers-only responses, which are seen, but a status after
/// messages (a failed stream, or the OK of every successful call) is in the trailers. For gRPC
/// services use [`CircuitBreakerLayer::grpc`](crate::CircuitBreakerLayer::grpc), which reads
/// them.
///
/// ```
/// use omega_circuit_breaker::http::HttpClassifier;
/// use omega_circuit_breaker::{Classify, Outcome};
///
/// let c = HttpClassifier::default().failure_statuses([502, 503, 504]).ignored_statuses([404]);
/// let resp = |s: u16| -> Result<http::Response<()>, ()> {
///     let mut r = http::Response::new(());
///     *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
///     Ok(r)
/// };
/// assert_eq!(c.classify(&resp(503)), Outcome::Failure);
/// assert_eq!(c.classify(&resp(500)), Outcome::Success);
/// assert_eq!(c.classify(&resp(404)), Outcome::Ignored);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpClassifier {
    failure: [u64; 10],
    ignored: [u64; 10],
    grpc_failure: u32,
}

const fn bit(set: &[u64; 10], code: u16) -> bool {
    let c = code as usize;
    c < 640 && set[c / 64] & (1 << (c % 64)) != 0
}

fn set_bits(codes: impl IntoIterator<Item = u16>) -> [u64; 10] {
    let mut set = [0u64; 10];
    for c in codes {
        let c = c as usize;
        if c < 640 {
            set[c / 64] |= 1 << (c % 64);
        }
    }
    set
}

impl Default for HttpClassifier {
    fn default() -> Self {
        HttpClassifier {
            failure: set_bits(500..=599),
            ignored: [0; 10],
            grpc_failure: [2u32, 4, 13, 14, 15].iter().fold(0, |s, c| s | 1 << c),
        }
    }
}

impl HttpClassifier {
    /// The default classifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// The HTTP statuses that count as failures (replaces the default of every 5xx).
    pub fn failure_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.failure = set_bits(statuses);
        self
    }

    /// HTTP statuses that are not recorded at all.
    pub fn ignored_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.ignored = set_bits(statuses);
        self
    }

    /// The gRPC status codes (0-16) that count as failures.
    pub fn grpc_failure_codes(mut self, codes: impl IntoIterator<Item = u16>) -> Self {
        self.grpc_failure = codes
            .into_iter()
            .filter(|c| *c < 32)
            .fold(0, |s, c| s | 1 << c);
        self
    }

    /// Whether the gRPC status `code` counts as a failure.
    pub(crate) fn is_grpc_failure(&self, code: u32) -> bool {
        code < 32 && self.grpc_failure & (1 << code) != 0
    }

    /// How a response with `status` and `headers` counts.
    pub fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        let code = status.as_u16();
        if bit(&self.ignored, code) {
            return Outcome::Ignored;
        }
        if bit(&self.failure, code) {
            return Outcome::Failure;
        }
        if let Some(grpc) = headers
            .get(GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            && self.is_grpc_failure(grpc)
        {
            return Outcome::Failure;
        }
        Outcome::Success
    }
}

impl<B, E> Classify<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(r) => self.classify_response(r.status(), r.headers()),
            Err(_) => Outcome::Failure,
        }
    }
}

impl HttpClassifier {
    /// How a gRPC call whose trailers are `trailers` counts: a failure when `grpc-status` is
    /// missing or in the gRPC failure set, else a success.
    pub fn classify_trailers(&self, trailers: &HeaderMap) -> Outcome {
        match trailers
            .get(GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
        {
            Some(code) if !self.is_grpc_failure(code) => Outcome::Success,
            _ => Outcome::Failure,
        }
    }
}
