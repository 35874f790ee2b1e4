//! # omega-gateway
//!
//! An HTTP reverse proxy that puts the Omega Penta layers in front of upstream services, built
//! from a [`GatewayConfig`]. Each request goes through one pipeline:
//!
//! 1. **route**: the longest matching path prefix;
//! 2. **rate limits** of the route (`RateLimitLayer` answering with responses: 429 with
//!    `Retry-After` and the IETF `RateLimit` fields);
//! 3. **shard router** of the route's upstream pool: the node that owns the request's key, or
//!    the next node of the key's preference list while a node's circuit is open;
//! 4. **circuit breaker** of that node (5xx and transport failures count; an open circuit
//!    answers 503 with `Retry-After`);
//! 5. **proxy**: the request forwarded with its streaming body, hop-by-hop headers removed,
//!    `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` set, over pooled connections,
//!    within the route's timeout (502 when the node cannot be reached, 504 when it is late).
//!
//! A new layer joins the pipeline as one more `tower::Layer` in the route builder (`table.rs`),
//! configured by its own section of the route or upstream configuration.
//!
//! Every layer refuses through omega-core's one rejection strategy, `Respond`, so refusals
//! are responses and the pipeline's error type is `Infallible`.
//!
//! State is in memory, or shared through Redis or Redis Cluster (`redis` in the
//! configuration): rate limits, open circuits and shard maps then hold across every gateway
//! instance.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use http::{Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use omega_penta::config::ConfigError;
use omega_penta::core::Backend;
use omega_penta::core::key::http::PeerAddr;
use omega_penta::core::redis::RedisConfig;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

pub mod access_log;
mod admin;
pub mod body;
mod client;
pub mod config;
pub mod demo;
mod discovery;
mod failover;
pub mod guard;
mod headers;
pub mod health;
mod idle;
mod inbound;
pub mod path;
pub mod pool;
mod prometheus;
pub use prometheus::prometheus;
pub mod proxy;
pub mod serve;
mod table;
pub mod tls;
pub mod tunnel;
pub mod wire;

pub use config::GatewayConfig;
pub use proxy::RouteInfo;

use table::{Table, build_table, config_error_at, reload};

/// A service that answers every request (errors already turned into responses).
pub type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// Why the gateway could not start or reload.
#[derive(Debug)]
pub enum GatewayError {
    /// The configuration is invalid; nothing was applied.
    Config(ConfigError),
    /// The configuration file could not be read.
    Io(PathBuf, std::io::Error),
    /// A listener could not be bound.
    Bind(SocketAddr, std::io::Error),
    /// Redis could not be reached at start.
    Redis(String),
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayError::Config(e) => write!(f, "invalid configuration:\n{e}"),
            GatewayError::Io(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            GatewayError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            GatewayError::Redis(e) => write!(f, "cannot reach Redis: {e}"),
        }
    }
}

impl std::error::Error for GatewayError {}

impl From<ConfigError> for GatewayError {
    fn from(e: ConfigError) -> Self {
        GatewayError::Config(e)
    }
}

/// Reads and validates a configuration file: YAML when its name ends in `.yaml` or `.yml`,
/// JSON otherwise.
pub fn load_config(path: &std::path::Path) -> Result<GatewayConfig, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|e| GatewayError::Io(path.to_owned(), e))?;
    Ok(GatewayConfig::from_file_text(path, &text)?)
}

pub(crate) struct Shared {
    pub(crate) backend: Backend,
    /// Breaker OPEN transitions shared through Redis (with `redis` configured).
    pub(crate) breaker_sync: Option<omega_penta::circuit_breaker::shared::RedisSync>,
    /// The HTTP cache of the routes with `cache` (memory, or shared through Redis).
    pub(crate) cache: omega_penta::cache::Cache<Arc<omega_penta::cache::StoredResponse>>,
    pub(crate) table: ArcSwap<Table>,
    pub(crate) config: Mutex<GatewayConfig>,
    pub(crate) config_path: Option<PathBuf>,
    /// Held for a whole reload: SIGHUP and `POST /reload` apply one after the other.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    pub(crate) draining: AtomicBool,
    pub(crate) metrics: PrometheusHandle,
    /// `false` for [`Gateway::proxy_only`]: routes forward with no layer.
    pub(crate) layers: bool,
    /// The access log, when configured.
    pub(crate) access_log: Option<Arc<access_log::AccessLog>>,
    /// Whether requests get an `X-Request-Id`.
    pub(crate) request_id: bool,
    /// Upgraded connections (WebSocket), all closed at shutdown.
    pub(crate) tunnels: Arc<tunnel::Tunnels>,
    /// The proxy listener's TLS, when configured.
    pub(crate) tls: Option<Arc<tls::Acceptor>>,
}

/// A gateway built from a configuration, not yet listening.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self.shared.table.load();
        f.debug_struct("Gateway")
            .field("routes", &table.routes.len())
            .field("upstreams", &table.upstreams.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A gateway that is serving.
#[derive(Debug)]
pub struct Running {
    /// The proxy's address.
    pub addr: SocketAddr,
    /// The admin API's address.
    pub admin_addr: SocketAddr,
    admin_token: guard::AdminToken,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within the configured grace period,
    /// and returns when the gateway has stopped.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.done).await;
        if let Some(file) = &self.admin_token.file {
            let _ = std::fs::remove_file(file);
        }
    }

    /// Waits until the gateway stops (after [`Running::shutdown`] or a signal handled by the
    /// caller).
    pub async fn wait(self) {
        let _ = self.done.await;
    }

    /// The bearer token the admin API's changes need ([`guard`]).
    pub fn admin_token(&self) -> &str {
        &self.admin_token.token
    }

    /// The file a generated admin token was written to (`None` when the token came from
    /// `OMEGA_ADMIN_TOKEN` or the configuration).
    pub fn admin_token_file(&self) -> Option<&std::path::Path> {
        self.admin_token.file.as_deref()
    }
}

impl Gateway {
    /// Builds every route and pool of `config`. `redis` overrides the configuration's Redis.
    pub async fn new(
        config: GatewayConfig,
        config_path: Option<PathBuf>,
        redis: Option<String>,
    ) -> Result<Gateway, GatewayError> {
        Gateway::build(config, config_path, redis, true).await
    }

    /// The same gateway with every layer left out: each route forwards straight to the first
    /// node of its pool, with no rate limit, shard routing or circuit breaker. This is the
    /// baseline of the load benchmark (`cargo bench -p omega-gateway-load`),
    /// which measures what the layers cost; it is not meant to serve.
    pub async fn proxy_only(mut config: GatewayConfig) -> Result<Gateway, GatewayError> {
        config.stack.redis = None;
        Gateway::build(config, None, None, false).await
    }

    async fn build(
        mut config: GatewayConfig,
        config_path: Option<PathBuf>,
        redis: Option<String>,
        layers: bool,
    ) -> Result<Gateway, GatewayError> {
        if redis.is_some() {
            config.stack.redis = redis;
        }
        let metrics = prometheus();
        // One Redis handle (standalone or cluster, from one URL) for every layer.
        let backend = match &config.stack.redis {
            None => Backend::memory(),
            Some(url) => {
                let cfg =
                    RedisConfig::parse(url).map_err(|e| config_error_at("redis", e.to_string()))?;
                match Backend::redis(cfg.clone()).await {
                    Ok(backend) => backend,
                    // A bad URL or setting is the file's mistake; a server that does not answer
                    // is not: the gateway starts, each layer's failure policy applies, and the
                    // backend connects in the background.
                    Err(e)
                        if !matches!(
                            e.kind(),
                            omega_penta::core::ErrorKind::BadUrl
                                | omega_penta::core::ErrorKind::Config
                        ) =>
                    {
                        eprintln!(
                            "omega-gateway: Redis is unreachable ({e}); starting without it: \
                             limits, breakers and shard maps follow their failure policies, \
                             and share again once it answers"
                        );
                        Backend::Redis(
                            omega_penta::core::redis::RedisBackend::connect_lazy(cfg)
                                .map_err(|e| GatewayError::Redis(e.to_string()))?,
                        )
                    }
                    Err(e) => return Err(GatewayError::Redis(e.to_string())),
                }
            }
        };
        let breaker_sync = match backend.as_redis() {
            Some(redis) => Some({
                let mut sync =
                    omega_penta::circuit_breaker::shared::RedisSync::builder(redis.clone());
                if let Some(q) = config.shared_breakers.quorum {
                    sync = sync.quorum(q);
                }
                if let Some(id) = &config.shared_breakers.instance_id {
                    sync = sync.instance_id(id.clone());
                }
                sync.build()
                    .map_err(|e| GatewayError::Redis(e.to_string()))?
            }),
            None => None,
        };
        let cache = omega_penta::cache::Cache::builder()
            .name("omega-gateway")
            .codec(omega_penta::cache::HttpCodec)
            .partition(
                omega_penta::cache::Partition::new(omega_penta::cache::DEFAULT_PARTITION)
                    .capacity(64 << 20),
            )
            .backend(&backend)
            .build()
            .map_err(|e| config_error_at("routes", format!("the cache: {e}")))?;
        let access_log = match &config.access_log {
            Some(c) => Some(access_log::AccessLog::open(c).map_err(|e| {
                config_error_at(
                    "access_log.path",
                    format!("{} cannot be opened: {e}", c.path.display()),
                )
            })?),
            None => None,
        };
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(
                tls::Acceptor::new(files).map_err(|e| config_error_at("tls", e))?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            tls,
            access_log,
            request_id: config.request_id,
            tunnels: tunnel::Tunnels::new(config.server.tunnel_idle_timeout.0),
            cache,
            backend,
            breaker_sync,
            table: ArcSwap::from_pointee(Table {
                routes: Vec::new(),
                upstreams: BTreeMap::new(),
                client_ip: config.stack.client_ip(),
            }),
            reload_lock: tokio::sync::Mutex::new(()),
            config: Mutex::new(config.clone()),
            config_path,
            draining: AtomicBool::new(false),
            metrics,
            layers,
        });
        let table = build_table(&shared, &config, None).await?;
        shared.table.store(Arc::new(table));
        Ok(Gateway { shared })
    }

    /// The current configuration.
    pub fn config(&self) -> GatewayConfig {
        self.shared
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node that owns `key` in pool `upstream`.
    pub fn owner(&self, upstream: &str, key: &str) -> Option<String> {
        let table = self.shared.table.load();
        let up = table.upstreams.get(upstream)?;
        up.router.owner(key).map(|n| n.id().to_owned())
    }

    /// Another handle on the same gateway (for reloads and queries while it serves).
    pub fn handle(&self) -> Gateway {
        Gateway {
            shared: self.shared.clone(),
        }
    }

    /// Starts serving on the configured addresses (port 0 picks a free port).
    pub async fn start(self) -> Result<Running, GatewayError> {
        let (listen, admin) = {
            let c = self
                .shared
                .config
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (c.listen, c.admin)
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| GatewayError::Bind(listen, e))?;
        let admin_listener = tokio::net::TcpListener::bind(admin)
            .await
            .map_err(|e| GatewayError::Bind(admin, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| GatewayError::Bind(listen, e))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|e| GatewayError::Bind(admin, e))?;
        let admin_token = {
            let config = self
                .shared
                .config
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            guard::admin_token(&config, admin_addr)?
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = self.shared.clone();
        let admin_app = admin::router(shared.clone(), admin_token.token.clone());
        let done = tokio::spawn(serve(shared, listener, admin_listener, admin_app, rx));
        Ok(Running {
            addr,
            admin_addr,
            admin_token,
            shutdown: Some(tx),
            done,
        })
    }

    /// Re-reads the configuration file and applies it while serving: new quotas, thresholds
    /// and nodes take effect on the next request, and every key keeps its state. A route whose
    /// limits changed in kind (another key, a new or removed limit) gets new buckets. An
    /// invalid file changes nothing.
    pub async fn reload(&self) -> Result<String, GatewayError> {
        reload(&self.shared).await
    }
}

/// Answers one request: route, then the route's pipeline.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    via_tls: bool,
    mut req: Request<Body>,
) -> Response<Body> {
    if via_tls {
        req.extensions_mut().insert(tls::ViaTls);
    }
    let id = shared
        .request_id
        .then(|| access_log::request_id(req.headers_mut()));
    let Some(log) = &shared.access_log else {
        let mut response = route_request(&shared, peer, req).await.0;
        if let Some(id) = id {
            response
                .headers_mut()
                .entry(access_log::X_REQUEST_ID)
                .or_insert(id);
        }
        return response;
    };
    let mut entry = access_log::Entry {
        started: std::time::Instant::now(),
        request_id: id.clone().unwrap_or(http::HeaderValue::from_static("-")),
        client: peer.ip(),
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        route: None,
        upstream: None,
    };
    let (mut response, route) = route_request(&shared, peer, req).await;
    if let Some(id) = id {
        response
            .headers_mut()
            .entry(access_log::X_REQUEST_ID)
            .or_insert(id);
    }
    if let Some(route) = route {
        entry.route = Some(route.prefix.clone());
        entry.upstream = Some(route.upstream.clone());
    }
    entry.finish(log, response)
}

/// Routes a request and answers it; the route it matched, if any.
async fn route_request(
    shared: &Shared,
    peer: SocketAddr,
    mut req: Request<Body>,
) -> (Response<Body>, Option<Arc<proxy::RouteInfo>>) {
    // A `Host` (or HTTP/2 `:authority`) that is not a host name or address is refused, as
    // nginx does, before it can reach a forwarding header; so is an HTTP/1.1 request without
    // one `Host` line (RFC 9112 §3.2: a next tier could read another host than ours).
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (Some(h), None) => proxy::valid_host(h.as_bytes()),
        (Some(_), Some(_)) => false,
        (None, _) => match req.uri().authority() {
            Some(a) => proxy::valid_host(a.as_str().as_bytes()),
            None => req.version() != http::Version::HTTP_11,
        },
    };
    if !host_ok {
        return (proxy::status(StatusCode::BAD_REQUEST, "invalid Host"), None);
    }
    // A reverse proxy is no forward proxy (HTTP/2's extended CONNECT is not enabled either).
    if req.method() == http::Method::CONNECT {
        let mut r = proxy::status(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied");
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return (r, None);
    }
    // Routes, limits and nodes see the path in normal form (`/x/../users` is `/users`).
    match path::normalize(req.uri().path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => {}
        Ok(std::borrow::Cow::Owned(normal)) => {
            let with_query = match req.uri().query() {
                Some(q) => format!("{normal}?{q}"),
                None => normal,
            };
            let mut parts = req.uri().clone().into_parts();
            match with_query.parse() {
                Ok(pq) => parts.path_and_query = Some(pq),
                Err(_) => return (proxy::status(StatusCode::BAD_REQUEST, "invalid path"), None),
            }
            match http::Uri::from_parts(parts) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return (proxy::status(StatusCode::BAD_REQUEST, "invalid path"), None),
            }
        }
        Err(path::PathError::EncodedSeparator) => {
            return (
                proxy::status(
                    StatusCode::BAD_REQUEST,
                    "an encoded / or \\ in the path is ambiguous",
                ),
                None,
            );
        }
        Err(path::PathError::NotAbsolute) => {
            return (
                proxy::status(StatusCode::BAD_REQUEST, "the path must start with /"),
                None,
            );
        }
    }
    let table = shared.table.load_full();
    let path = req.uri().path();
    let Some(route) = table
        .routes
        .iter()
        .find(|r| proxy::matches(&r.config.prefix, path))
    else {
        return (
            proxy::status(StatusCode::NOT_FOUND, "no route for this path"),
            None,
        );
    };
    let mut req = match proxy::limit_body(req, route.info.max_body) {
        Ok(req) => req,
        Err(too_large) => return (too_large.into_response(), Some(route.info.clone())),
    };
    if axum::body::HttpBody::size_hint(req.body()).exact() != Some(0) {
        // A body stalls no longer than `body_timeout`, and stays where a second attempt finds
        // it until one reads it (failover of a request whose node could not be reached).
        let incoming = Body::new(body::IdleTimeout::new(
            std::mem::take(req.body_mut()),
            body::Side::Client,
            route.info.body_timeout,
        ));
        let (slot, reader) = body::BodySlot::keep(incoming);
        *req.body_mut() = reader;
        req.extensions_mut().insert(slot);
    }
    let extensions = req.extensions_mut();
    extensions.insert(route.info.clone());
    extensions.insert(PeerAddr(peer));
    extensions.insert(route.template.clone());
    let started = std::time::Instant::now();
    let response = route
        .service
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|never| match never {});
    route.requests.increment(1);
    route.seconds.record(started.elapsed().as_secs_f64());
    (response, Some(route.info.clone()))
}

async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    admin_listener: tokio::net::TcpListener,
    admin_app: axum::Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (grace, pre_drain, limits) = {
        let c = shared.config.lock().unwrap_or_else(PoisonError::into_inner);
        (c.shutdown_grace.0, c.pre_drain.0, c.server.clone())
    };
    let upkeep = tokio::spawn(prometheus::upkeep(shared.metrics.clone()));
    let (stop_proxy_tx, stop_proxy) = tokio::sync::oneshot::channel::<()>();
    let (stop_admin_tx, stop_admin) = tokio::sync::oneshot::channel::<()>();
    // A proxy writes each part of a response as it arrives: with Nagle's algorithm on, a part
    // written while the previous one is unacknowledged waits for the client's delayed ACK
    // (40 ms on Linux) on every keep-alive request whose response comes in several writes.
    let proxy = tokio::spawn(serve::proxy(
        shared.clone(),
        listener,
        limits,
        stop_proxy,
        grace,
    ));
    let admin = tokio::spawn(async move {
        let _ = axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(async move {
                let _ = stop_admin.await;
            })
            .await;
    });
    let _ = stop.await;
    // Not ready from now on; during the pre-drain delay the proxy still serves, so that load
    // balancers polling `/readyz` stop sending before the listener closes.
    shared.draining.store(true, Ordering::Release);
    tokio::time::sleep(pre_drain).await;
    let _ = stop_proxy_tx.send(());
    // Upgraded connections are not requests that finish: they close now.
    shared.tunnels.close_all();
    // In-flight requests get `grace` to finish; then the gateway stops regardless (the proxy
    // ends its connections at the deadline). The admin API outlives the proxy, answering 503
    // on `/readyz` until the end.
    let _ = proxy.await;
    let _ = stop_admin_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    upkeep.abort();
}
