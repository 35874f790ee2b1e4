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
//!
//! [`CircuitBreakerLayer::grpc`]: crate::CircuitBreakerLayer::grpc

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use omega_core::http::{GRPC_STATUS, is_grpc};
use omega_core::reject::{KeepError, OnRejection, Respond};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::Outcome;
use crate::error::CircuitOpen;
use crate::http::HttpClassifier;
use crate::permit::OwnedPermit;
use crate::select::{Selector, Single};

/// A circuit breaker for gRPC services that reads the status from the trailers; made by
/// [`CircuitBreakerLayer::grpc`](crate::CircuitBreakerLayer::grpc), which answers refused calls
/// with [`Respond`] (a trailers-only `UNAVAILABLE`; a 503 with `Retry-After` to a request that
/// is not gRPC). `.on_rejection(..)` chooses another strategy.
#[derive(Clone, Debug)]
pub struct GrpcCircuitBreakerLayer<P = Single, Rj = KeepError> {
    selector: P,
    classify: HttpClassifier,
    reject: Rj,
}

impl<P, Rj> GrpcCircuitBreakerLayer<P, Rj> {
    pub(crate) fn new(selector: P, reject: Rj) -> Self {
        GrpcCircuitBreakerLayer {
            selector,
            classify: HttpClassifier::default(),
            reject,
        }
    }

    /// Classifies with `classify` (its gRPC failure codes and HTTP statuses).
    pub fn classify(mut self, classify: HttpClassifier) -> Self {
        self.classify = classify;
        self
    }

    /// Answers refused calls with `strategy` (see [`OnRejection`]).
    pub fn on_rejection<R2>(self, strategy: R2) -> GrpcCircuitBreakerLayer<P, R2> {
        GrpcCircuitBreakerLayer {
            selector: self.selector,
            classify: self.classify,
            reject: strategy,
        }
    }

    /// Answers refused calls with [`Respond`] (what [`CircuitBreakerLayer::grpc`] chooses).
    ///
    /// [`CircuitBreakerLayer::grpc`]: crate::CircuitBreakerLayer::grpc
    pub fn respond(self) -> GrpcCircuitBreakerLayer<P, Respond> {
        self.on_rejection(Respond)
    }
}

impl<S, P: Clone, Rj: Clone> Layer<S> for GrpcCircuitBreakerLayer<P, Rj> {
    type Service = GrpcCircuitBreakerService<S, P, Rj>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCircuitBreakerService {
            inner,
            selector: self.selector.clone(),
            classify: self.classify,
            reject: self.reject.clone(),
            refused: None,
        }
    }
}

/// A gRPC service guarded by a circuit breaker that reads trailers; see
/// [`GrpcCircuitBreakerLayer`]. Readiness and admission work as on
/// [`CircuitBreakerService`](crate::CircuitBreakerService): ready at once when the circuit
/// will refuse whatever the request, the inner service's readiness otherwise.
#[derive(Debug)]
pub struct GrpcCircuitBreakerService<S, P = Single, Rj = KeepError> {
    inner: S,
    selector: P,
    classify: HttpClassifier,
    reject: Rj,
    refused: Option<CircuitOpen>,
}

impl<S: Clone, P: Clone, Rj: Clone> Clone for GrpcCircuitBreakerService<S, P, Rj> {
    fn clone(&self) -> Self {
        GrpcCircuitBreakerService {
            inner: self.inner.clone(),
            selector: self.selector.clone(),
            classify: self.classify,
            reject: self.reject.clone(),
            refused: None,
        }
    }
}

impl<S, P, Rj> GrpcCircuitBreakerService<S, P, Rj> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, Rj, ReqB, ResB> Service<Request<ReqB>> for GrpcCircuitBreakerService<S, P, Rj>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    P: Selector<Request<ReqB>>,
    ResB: Body,
    Rj: OnRejection<Request<ReqB>, Response<GrpcBody<ResB>>, S::Error>,
{
    type Response = Response<GrpcBody<ResB>>;
    type Error = Rj::Error;
    type Future = GrpcResponseFuture<S::Future, ResB, Rj, Request<ReqB>, Rj::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.refused.is_none() {
            self.refused = self.selector.refuse_all();
            if self.refused.is_none() {
                return self.inner.poll_ready(cx).map_err(Rj::map_err);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let acquired = match self.refused.take() {
            Some(open) => Err(open),
            None => self.selector.acquire(&req),
        };
        let state = match acquired {
            Ok(permit) => State::Running {
                fut: self.inner.call(req),
                permit,
                classify: self.classify,
            },
            Err(open) => State::Rejected {
                result: Some(self.reject.reject(&req, open)),
            },
        };
        GrpcResponseFuture {
            state,
            _strategy: PhantomData,
        }
    }
}

pin_project! {
    /// The response future of [`GrpcCircuitBreakerService`]. `F` is the inner future, `B` the
    /// response body, `Rj` the rejection strategy, `Req` the request type and `Er` the
    /// service's error type.
    pub struct GrpcResponseFuture<F, B, Rj, Req, Er> {
        #[pin]
        state: State<F, B, Er>,
        _strategy: PhantomData<fn() -> (Rj, Req)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, Er> {
        Running { #[pin] fut: F, permit: Option<OwnedPermit>, classify: HttpClassifier },
        Rejected { result: Option<Result<Response<GrpcBody<B>>, Er>> },
    }
}

impl<F, B, Rj, Req, Er> std::fmt::Debug for GrpcResponseFuture<F, B, Rj, Req, Er> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcResponseFuture")
    }
}

impl<F, B, E, Rj, Req> Future for GrpcResponseFuture<F, B, Rj, Req, Rj::Error>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    Rj: OnRejection<Req, Response<GrpcBody<B>>, E>,
{
    type Output = Result<Response<GrpcBody<B>>, Rj::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { result } => {
                Poll::Ready(result.take().expect("polled after completion"))
            }
            StateProj::Running {
                fut,
                permit,
                classify,
            } => {
                let result = std::task::ready!(fut.poll(cx));
                let Some(permit) = permit.take() else {
                    return Poll::Ready(
                        result.map(|r| r.map(GrpcBody::plain)).map_err(Rj::map_err),
                    );
                };
                let response = match result {
                    Ok(response) => response,
                    Err(e) => {
                        permit.record(Outcome::Failure);
                        return Poll::Ready(Err(Rj::map_err(e)));
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

    /// The inner body when this one watches nothing (the call's outcome was recorded from the
    /// response head, as for every non-gRPC answer); otherwise `Err(self)`. A caller that boxes
    /// bodies can skip the wrapper for those answers.
    #[allow(clippy::result_large_err)] // `Err` hands the body back unchanged: no error to box
    pub fn into_unwatched(self) -> Result<B, Self> {
        match self.watch {
            None => Ok(self.inner),
            Some(_) => Err(self),
        }
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
