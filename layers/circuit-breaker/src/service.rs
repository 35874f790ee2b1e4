//! The Tower layer and service.

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{CircuitBreaker, OwnedPermit};
use crate::classify::{Classify, ErrorsAreFailures};
use crate::error::CircuitOpen;
use crate::registry::BreakerRegistry;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Chooses the breaker that guards a request.
pub trait Selector<Req> {
    /// The breaker for `req`; `None` lets the request through unguarded.
    fn select(&self, req: &Req) -> Option<Cow<'_, CircuitBreaker>>;
}

/// One breaker for every request.
#[derive(Clone, Debug)]
pub struct Single(CircuitBreaker);

impl<Req> Selector<Req> for Single {
    #[inline]
    fn select(&self, _req: &Req) -> Option<Cow<'_, CircuitBreaker>> {
        Some(Cow::Borrowed(&self.0))
    }
}

/// One breaker per key, from a [`BreakerRegistry`] and a key extractor.
pub struct KeyFn<K, F> {
    registry: BreakerRegistry<K>,
    key: Arc<F>,
}

impl<K, F> Clone for KeyFn<K, F> {
    fn clone(&self) -> Self {
        KeyFn {
            registry: self.registry.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K: std::fmt::Debug, F> std::fmt::Debug for KeyFn<K, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFn")
            .field("registry", &self.registry)
            .finish()
    }
}

impl<Req, K, F> Selector<Req> for KeyFn<K, F>
where
    K: std::hash::Hash + Eq + Clone + std::fmt::Display + Send + Sync + 'static,
    F: Fn(&Req) -> Option<K>,
{
    fn select(&self, req: &Req) -> Option<Cow<'_, CircuitBreaker>> {
        let key = (self.key)(req)?;
        Some(Cow::Owned(self.registry.get_or_create(&key)))
    }
}

/// A permit for `req` from the breaker `selector` chooses (`None`: no breaker guards it), or
/// the open circuit that refuses it.
#[inline]
pub(crate) fn acquire<Req, P: Selector<Req>>(
    selector: &P,
    req: &Req,
) -> Result<Option<OwnedPermit>, CircuitOpen> {
    match selector.select(req) {
        None => Ok(None),
        Some(breaker) => breaker.try_acquire_owned().map(Some),
    }
}

/// The error type of a [`CircuitBreakerService`] whose inner service fails with `E`.
pub trait MapErr<E> {
    /// The service's error type.
    type Error;

    /// The inner service's error as the service's error.
    fn map(err: E) -> Self::Error;
}

/// What a service answers when the circuit rejects a request.
pub trait OnRejection<Req, Res, E>: MapErr<E> {
    /// The answer to `req`.
    fn reject(&self, req: &Req, open: CircuitOpen) -> Result<Res, Self::Error>;
}

/// Rejected requests fail with [`CircuitOpen`], and errors are boxed, as tower middleware do.
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectWithError;

impl<E: Into<BoxError>> MapErr<E> for RejectWithError {
    type Error = BoxError;

    #[inline]
    fn map(err: E) -> BoxError {
        err.into()
    }
}

impl<Req, Res, E: Into<BoxError>> OnRejection<Req, Res, E> for RejectWithError {
    #[inline]
    fn reject(&self, _req: &Req, open: CircuitOpen) -> Result<Res, BoxError> {
        Err(Box::new(open))
    }
}

/// Rejected HTTP requests get a response: `503 Service Unavailable` with `Retry-After` (when the
/// time to the next probe is known), or a trailers-only gRPC `UNAVAILABLE` for gRPC requests.
/// The inner service's error type is kept (axum's `Infallible`), so the stack works on axum
/// without `HandleErrorLayer`.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectWithResponse;

#[cfg(feature = "http")]
impl<E> MapErr<E> for RejectWithResponse {
    type Error = E;

    #[inline]
    fn map(err: E) -> E {
        err
    }
}

#[cfg(feature = "http")]
impl<ReqB, ResB: Default, E> OnRejection<::http::Request<ReqB>, ::http::Response<ResB>, E>
    for RejectWithResponse
{
    fn reject(
        &self,
        req: &::http::Request<ReqB>,
        open: CircuitOpen,
    ) -> Result<::http::Response<ResB>, E> {
        Ok(crate::http::rejection_response(req.headers(), &open))
    }
}

/// Applies a circuit breaker to a service. Every service it makes shares the breaker (or the
/// registry of per-key breakers).
///
/// ```
/// use omega_circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, CircuitOpen};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let breaker = CircuitBreaker::new("upstream");
/// let svc = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new(breaker.clone()))
///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }));
/// assert_eq!(svc.clone().oneshot(21).await.unwrap(), 42);
///
/// breaker.force_open();
/// let err = svc.oneshot(1).await.unwrap_err();
/// assert!(err.is::<CircuitOpen>());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<P = Single, C = ErrorsAreFailures, R = RejectWithError> {
    selector: P,
    classify: C,
    reject: R,
}

impl CircuitBreakerLayer {
    /// A layer guarding every request with `breaker`.
    pub fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer {
            selector: Single(breaker),
            classify: ErrorsAreFailures,
            reject: RejectWithError,
        }
    }
}

impl<K, F> CircuitBreakerLayer<KeyFn<K, F>> {
    /// A layer with one breaker per key: `key` extracts it from the request (`None`: no
    /// breaker), `registry` holds the breakers.
    pub fn keyed<Req>(registry: BreakerRegistry<K>, key: F) -> Self
    where
        F: Fn(&Req) -> Option<K>,
    {
        CircuitBreakerLayer {
            selector: KeyFn {
                registry,
                key: Arc::new(key),
            },
            classify: ErrorsAreFailures,
            reject: RejectWithError,
        }
    }
}

impl<P, C, R> CircuitBreakerLayer<P, C, R> {
    /// Classifies outcomes with `classify` (see [`Classify`]).
    pub fn classify<C2>(self, classify: C2) -> CircuitBreakerLayer<P, C2, R> {
        CircuitBreakerLayer {
            selector: self.selector,
            classify,
            reject: self.reject,
        }
    }

    /// Answers rejected requests with `reject` (see [`OnRejection`]).
    pub fn on_rejection<R2>(self, reject: R2) -> CircuitBreakerLayer<P, C, R2> {
        CircuitBreakerLayer {
            selector: self.selector,
            classify: self.classify,
            reject,
        }
    }

    /// HTTP services: rejected requests get a 503 with `Retry-After` (gRPC requests a
    /// trailers-only `UNAVAILABLE`), and responses are classified by
    /// [`HttpClassifier`](crate::http::HttpClassifier) (5xx and gRPC failure codes).
    #[cfg(feature = "http")]
    pub fn http(self) -> CircuitBreakerLayer<P, crate::http::HttpClassifier, RejectWithResponse> {
        CircuitBreakerLayer {
            selector: self.selector,
            classify: crate::http::HttpClassifier::default(),
            reject: RejectWithResponse,
        }
    }
}

impl<P, C, R> CircuitBreakerLayer<P, C, R> {
    /// gRPC services: like [`http`](Self::http), and the status a call sends in its
    /// trailers (after its messages) is classified too, when the trailers arrive. The
    /// response body is wrapped in a [`GrpcBody`](crate::GrpcBody) that does it; see
    /// [`GrpcCircuitBreakerLayer`](crate::GrpcCircuitBreakerLayer).
    #[cfg(feature = "http")]
    pub fn grpc(self) -> crate::GrpcCircuitBreakerLayer<P> {
        crate::GrpcCircuitBreakerLayer {
            selector: self.selector,
            classify: crate::http::HttpClassifier::default(),
        }
    }
}

impl<S, P: Clone, C: Clone, R: Clone> Layer<S> for CircuitBreakerLayer<P, C, R> {
    type Service = CircuitBreakerService<S, P, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            selector: self.selector.clone(),
            classify: self.classify.clone(),
            reject: self.reject.clone(),
        }
    }
}

/// A service guarded by a circuit breaker; made by [`CircuitBreakerLayer`].
///
/// Readiness is the inner service's; admission is decided in `call` (axum treats services as
/// always ready). Clones share the breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<S, P = Single, C = ErrorsAreFailures, R = RejectWithError> {
    inner: S,
    selector: P,
    classify: C,
    reject: R,
}

impl<S> CircuitBreakerService<S> {
    /// Wraps `inner` with `breaker`.
    pub fn new(inner: S, breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer::new(breaker).layer(inner)
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.selector.0
    }
}

impl<S, P, C, R> CircuitBreakerService<S, P, C, R> {
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

impl<S, Req, P, C, R> Service<Req> for CircuitBreakerService<S, P, C, R>
where
    S: Service<Req>,
    P: Selector<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    R: OnRejection<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, C, R, S::Response, R::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(R::map)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match acquire(&self.selector, &req) {
            Ok(permit) => permit,
            Err(open) => {
                return ResponseFuture {
                    kind: Kind::Ready {
                        result: Some(self.reject.reject(&req, open)),
                    },
                    _map: PhantomData,
                };
            }
        };
        ResponseFuture {
            kind: Kind::Running {
                fut: self.inner.call(req),
                permit,
                classify: self.classify.clone(),
            },
            _map: PhantomData,
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreakerService`].
    pub struct ResponseFuture<F, C, R, T, Er> {
        #[pin]
        kind: Kind<F, C, T, Er>,
        _map: PhantomData<fn() -> R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C, T, Er> {
        Running { #[pin] fut: F, permit: Option<OwnedPermit>, classify: C },
        Ready { result: Option<Result<T, Er>> },
    }
}

impl<F, C, R, T, Er> std::fmt::Debug for ResponseFuture<F, C, R, T, Er> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, C, R, T, E> Future for ResponseFuture<F, C, R, T, R::Error>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    R: MapErr<E>,
{
    type Output = Result<T, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Running {
                fut,
                permit,
                classify,
            } => {
                let result = std::task::ready!(fut.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record(classify.classify(&result));
                }
                Poll::Ready(result.map_err(R::map))
            }
            KindProj::Ready { result } => {
                Poll::Ready(result.take().expect("polled after completion"))
            }
        }
    }
}
