//! `--cache` in the quick mode: RFC 9111's shared cache (`omega_penta::cache::HttpCacheLayer`)
//! in front of everything. It listens on `--listen` and sends what it cannot answer to the
//! gateway's own pipeline (limits, breaker, routing) on a loopback port; memory only unless
//! `--redis` is given, then shared with every gateway on the same Redis.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use omega_gateway::GatewayError;
use omega_gateway::proxy::{Client, client};
use omega_penta::cache::config::RouteCache;
use omega_penta::cache::{Cache, HttpCodec, Partition, StoredResponse};
use omega_penta::core::Backend;
use tower::Layer;

/// The front cache, serving.
pub(crate) struct Front {
    pub(crate) addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Front {
    /// Stops accepting and lets in-flight requests finish.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

/// Forwards every request to the gateway at `to`; a failure to reach it is a `502`.
#[derive(Clone)]
struct ToGateway {
    client: Client,
    to: SocketAddr,
}

impl tower::Service<Request<Body>> for ToGateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        // The client's `Host` stays: the gateway and the upstream see the request as sent.
        if let Ok(uri) = format!("http://{}{pq}", self.to).parse() {
            *req.uri_mut() = uri;
        }
        let fut = self.client.request(req);
        Box::pin(async move {
            Ok(match fut.await {
                Ok(res) => res.map(Body::new),
                Err(e) => {
                    let mut res = Response::new(Body::from(format!("gateway unreachable: {e}\n")));
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    res
                }
            })
        })
    }
}

/// Starts the shared cache on `listen` in front of the gateway at `gateway`, over Redis at
/// `redis` when given.
pub(crate) async fn start(
    listen: SocketAddr,
    gateway: SocketAddr,
    redis: Option<&str>,
) -> Result<Front, GatewayError> {
    let backend = Backend::connect(redis)
        .await
        .map_err(|e| GatewayError::Redis(e.to_string()))?;
    let cache: Cache<Arc<StoredResponse>> = Cache::builder()
        .name("omega-gateway")
        .codec(HttpCodec)
        .partition(Partition::new(omega_penta::cache::DEFAULT_PARTITION).capacity(64 << 20))
        .backend(&backend)
        .build()
        .map_err(|e| GatewayError::Redis(format!("the cache: {e}")))?;
    // The same policy a route's `cache: {}` gets: RFC 9111's shared cache, nothing overridden.
    let svc = RouteCache::rfc9111().layer(&cache).layer(ToGateway {
        client: client(std::time::Duration::from_secs(5)),
        to: gateway,
    });
    let app = axum::Router::new().fallback_service(svc);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| GatewayError::Bind(listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| GatewayError::Bind(listen, e))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Front { addr, stop, done })
}
