//! gRPC statuses sent in trailers (feature `http`): [`CircuitBreakerLayer::grpc`].
//!
//! A gRPC server answers HTTP 200 and sends the call's status in the trailers, after the
//! messages; only a call that fails before its first message gets a trailers-only response
//! (the status in the headers). A breaker that classifies the response head sees the first
//! kind as a success. This layer classifies the head when it already tells (an HTTP error, a
//! trailers-only status, a response that is not gRPC) and otherwise wraps the body: the call is
//! recorded when the trailers arrive, with the status they carry.
//!
//! - `grpc-status` in the trailers: a failure when the code is in the classifier's gRPC
//!   failure set, else a success;
//! - the body ends without trailers, or without `grpc-status` in them, or with an error: a
//!   failure (the call has no status, as a client sees it);
//! - the body is dropped before its end (the client went away): a cancelled call, not recorded,
//!   and a HALF_OPEN probe gives its permit back.
//!
//! The permit is held until then, so a slow-call threshold measures the whole call, stream
//! included: set one only for unary services.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use omega_core::http::{GRPC_STATUS, is_grpc};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::OwnedPermit;
use crate::classify::Outcome;
use crate::http::{HttpClassifier, rejection_response};
use crate::service::{Selector, acquire};

/// A circuit breaker for gRPC services that reads the status from the trailers; made by
/// [`CircuitBreakerLayer::grpc`](crate::CircuitBreakerLayer::grpc).
#[derive(Clone, Debug)]
pub struct GrpcCircuitBreakerLayer<P> {
    pub(crate) selector: P,
    pub(crate) classify: HttpClassifier,
}

impl<P> GrpcCircuitBreakerLayer<P> {
    /// Classifies with `classify` (its gRPC failure codes and HTTP statuses).
    pub fn classify(mut self, classify: HttpClassifier) -> Self {
        self.classify = classify;
        self
    }
}

impl<S, P: Clone> Layer<S> for GrpcCircuitBreakerLayer<P> {
    type Service = GrpcCircuitBreakerService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCircuitBreakerService {
            inner,
            selector: self.selector.clone(),
            classify: self.classify,
        }
    }
}

/// A gRPC service guarded by a circuit breaker that reads trailers; see
/// [`GrpcCircuitBreakerLayer`]. Rejected calls get a trailers-only `UNAVAILABLE` (a
/// `503` with `Retry-After` for a request that is not gRPC).
#[derive(Clone, Debug)]
pub struct GrpcCircuitBreakerService<S, P> {
    inner: S,
    selector: P,
    classify: HttpClassifier,
}

impl<S, P, ReqB, ResB> Service<Request<ReqB>> for GrpcCircuitBreakerService<S, P>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    P: Selector<Request<ReqB>>,
    ResB: Body + Default,
{
    type Response = Response<GrpcBody<ResB>>;
    type Error = S::Error;
    type Future = GrpcResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let permit = match acquire(&self.selector, &req) {
            Ok(permit) => permit,
            Err(open) => {
                return GrpcResponseFuture {
                    state: State::Rejected {
                        response: Some(rejection_response(req.headers(), &open)),
                    },
                };
            }
        };
        GrpcResponseFuture {
            state: State::Running {
                fut: self.inner.call(req),
                permit,
                classify: self.classify,
            },
        }
    }
}

pin_project! {
    /// The response future of [`GrpcCircuitBreakerService`].
    pub struct GrpcResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Running { #[pin] fut: F, permit: Option<OwnedPermit>, classify: HttpClassifier },
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B> std::fmt::Debug for GrpcResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcResponseFuture")
    }
}

impl<F, B, E> Future for GrpcResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<GrpcBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { response } => Poll::Ready(Ok(response
                .take()
                .expect("polled after completion")
                .map(GrpcBody::plain))),
            StateProj::Running {
                fut,
                permit,
                classify,
            } => {
                let result = std::task::ready!(fut.poll(cx));
                let Some(permit) = permit.take() else {
                    return Poll::Ready(result.map(|r| r.map(GrpcBody::plain)));
                };
                let response = match result {
                    Ok(response) => response,
                    Err(e) => {
                        permit.record(Outcome::Failure);
                        return Poll::Ready(Err(e));
                    }
                };
                let head_tells = response.status() != StatusCode::OK
                    || response.headers().contains_key(GRPC_STATUS)
                    || !is_grpc(response.headers());
                if head_tells {
                    permit
                        .record(classify.classify_response(response.status(), response.headers()));
                    return Poll::Ready(Ok(response.map(GrpcBody::plain)));
                }
                if response.body().is_end_stream() {
                    // No trailers can follow: the call has no status.
                    permit.record(Outcome::Failure);
                    return Poll::Ready(Ok(response.map(GrpcBody::plain)));
                }
                let classify = *classify;
                Poll::Ready(Ok(response.map(|inner| GrpcBody {
                    inner,
                    watch: Some((permit, classify)),
                })))
            }
        }
    }
}

pin_project! {
    /// A response body that records its call's outcome when its trailers arrive (see
    /// [`GrpcCircuitBreakerLayer`]).
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        watch: Option<(OwnedPermit, HttpClassifier)>,
    }
}

impl<B> GrpcBody<B> {
    /// A body whose call is already recorded (or not guarded).
    fn plain(inner: B) -> Self {
        GrpcBody { inner, watch: None }
    }
}

impl<B: Default> Default for GrpcBody<B> {
    fn default() -> Self {
        GrpcBody::plain(B::default())
    }
}

impl<B> std::fmt::Debug for GrpcBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcBody")
            .field("watching", &self.watch.is_some())
            .finish()
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some((permit, classify)) = this.watch.take() {
            match &frame {
                Some(Ok(f)) => match f.trailers_ref() {
                    Some(trailers) => permit.record(classify.classify_trailers(trailers)),
                    // A data frame: keep watching.
                    None => *this.watch = Some((permit, classify)),
                },
                // An error, or the end without trailers: the call has no status.
                Some(Err(_)) | None => permit.record(Outcome::Failure),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
