//! [`CircuitBreakerLayer`]: applies a breaker (or a registry of per-key breakers) to a service.

use omega_core::reject::KeepError;
use tower_layer::Layer;

use crate::breaker::CircuitBreaker;
use crate::classify::ErrorsAreFailures;
use crate::registry::BreakerRegistry;
use crate::select::{Keyed, Single};
use crate::service::CircuitBreakerService;

/// Applies a circuit breaker to a service. Every service it makes shares the breaker (or the
/// registry of per-key breakers).
///
/// The type parameters are the service's ([`CircuitBreakerService`]): the breaker selector,
/// the classifier and the rejection strategy. Refused requests fail with
/// [`CircuitOpen`](crate::CircuitOpen) in a `BoxError` by default; `.respond()` (feature
/// `http`) or `.on_rejection(..)` changes that, the same way on every Omega Penta layer.
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
pub struct CircuitBreakerLayer<P = Single, C = ErrorsAreFailures, Rj = KeepError> {
    selector: P,
    classify: C,
    reject: Rj,
}

impl CircuitBreakerLayer {
    /// A layer guarding every request with `breaker`.
    pub fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer {
            selector: Single(breaker),
            classify: ErrorsAreFailures,
            reject: KeepError,
        }
    }
}

impl<K, KS> CircuitBreakerLayer<Keyed<K, KS>> {
    /// A layer with one breaker per key: `key` reads it from the request (any
    /// [`KeySource`](omega_core::key::KeySource): a closure `Fn(&Req) -> Option<K>`, or a
    /// built-in such as `Header` or `PathSegment`), `registry` holds the breakers, found by
    /// the key's text (a `BreakerRegistry<String>` or `<Arc<str>>`) and created on first use.
    ///
    /// A request without a key (the source gives `None`) passes unguarded: no breaker sees
    /// it, and it is never refused.
    ///
    /// ```
    /// use omega_circuit_breaker::{BreakerRegistry, CircuitBreakerConfig, CircuitBreakerLayer};
    ///
    /// let registry = BreakerRegistry::<String>::new(CircuitBreakerConfig::default()).unwrap();
    /// let layer = CircuitBreakerLayer::keyed(registry, |job: &(String, u32)| Some(job.0.clone()));
    /// # let _ = layer;
    /// ```
    pub fn keyed(registry: BreakerRegistry<K>, key: KS) -> Self {
        CircuitBreakerLayer {
            selector: Keyed::new(registry, key),
            classify: ErrorsAreFailures,
            reject: KeepError,
        }
    }
}

impl<P, C, Rj> CircuitBreakerLayer<P, C, Rj> {
    /// Classifies outcomes with `classify` (see [`Classify`](crate::Classify)).
    pub fn classify<C2>(self, classify: C2) -> CircuitBreakerLayer<P, C2, Rj> {
        CircuitBreakerLayer {
            selector: self.selector,
            classify,
            reject: self.reject,
        }
    }

    /// Answers refused requests with `strategy` (see
    /// [`OnRejection`](omega_core::reject::OnRejection)): [`KeepError`] (the default),
    /// `Respond`, or a closure `Fn(&Req, &dyn Refusal) -> Response`.
    pub fn on_rejection<R2>(self, strategy: R2) -> CircuitBreakerLayer<P, C, R2> {
        CircuitBreakerLayer {
            selector: self.selector,
            classify: self.classify,
            reject: strategy,
        }
    }

    /// HTTP services answer refused requests themselves
    /// ([`Respond`](omega_core::reject::Respond)): a 503 with `Retry-After` (the time to the
    /// next probe, when known), or a trailers-only gRPC `UNAVAILABLE` to a gRPC call; the inner
    /// service's error type is kept (axum's `Infallible`).
    #[cfg(feature = "http")]
    pub fn respond(self) -> CircuitBreakerLayer<P, C, omega_core::reject::Respond> {
        self.on_rejection(omega_core::reject::Respond)
    }

    /// The shorthand for HTTP services: exactly
    /// `.classify(HttpClassifier::default()).respond()`. Responses are classified by
    /// [`HttpClassifier`](crate::http::HttpClassifier) (5xx and gRPC failure codes in the
    /// headers are failures), and refused requests get a 503 with `Retry-After` (a
    /// trailers-only gRPC `UNAVAILABLE` to a gRPC call).
    #[cfg(feature = "http")]
    pub fn http(
        self,
    ) -> CircuitBreakerLayer<P, crate::http::HttpClassifier, omega_core::reject::Respond> {
        self.classify(crate::http::HttpClassifier::default())
            .respond()
    }

    /// gRPC services: like [`http`](Self::http) (the [`HttpClassifier`](crate::http::HttpClassifier)
    /// and [`Respond`](omega_core::reject::Respond)), and the status a call sends in its
    /// trailers (after its messages) is classified too, when the trailers arrive. The response
    /// body is wrapped in a [`GrpcBody`](crate::GrpcBody) that does it; see
    /// [`GrpcCircuitBreakerLayer`](crate::GrpcCircuitBreakerLayer).
    #[cfg(feature = "http")]
    pub fn grpc(self) -> crate::grpc::GrpcCircuitBreakerLayer<P, omega_core::reject::Respond> {
        crate::grpc::GrpcCircuitBreakerLayer::new(self.selector, omega_core::reject::Respond)
    }
}

impl<S, P: Clone, C: Clone, Rj: Clone> Layer<S> for CircuitBreakerLayer<P, C, Rj> {
    type Service = CircuitBreakerService<S, P, C, Rj>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            selector: self.selector.clone(),
            classify: self.classify.clone(),
            reject: self.reject.clone(),
            refused: None,
        }
    }
}
