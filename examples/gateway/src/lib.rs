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
//! A new layer joins the pipeline as one more `tower::Layer` in [`Gateway`]'s route builder,
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
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use http::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use omega_penta::circuit_breaker::{BreakerRegistry, CircuitBreakerLayer};
use omega_penta::config::{ConfigError, RouteConfig, UpstreamConfig};
use omega_penta::core::Backend;
use omega_penta::core::key::http::{AnyKey, ClientIp, PeerAddr, RouteTemplate};
use omega_penta::core::redis::RedisConfig;
use omega_penta::core::reject::Respond;
use omega_penta::rate_limit::{RateLimitLayer, RateLimiter};
use omega_penta::shard_router::{self as shard, NoRetry, Node, ShardRouter, TopologyHandle};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

mod admin;
pub mod config;
pub mod demo;
pub mod proxy;

pub use config::GatewayConfig;
pub use proxy::RouteInfo;

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

/// How often the Prometheus recorder folds recorded latencies into its summaries. Until it
/// does, every sample is kept: without upkeep, memory grows with every request until the next
/// scrape of `/metrics`.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder, installed on first use (before any layer registers
/// its metrics).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (a test harness); then ours only
            // renders what it sees.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A pool of upstream nodes: its shard map, its breakers and its router.
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) config: UpstreamConfig,
    /// How client addresses were found when the router was built (a `client_ip` key).
    pub(crate) client_ip: ClientIp,
    pub(crate) topology: TopologyHandle,
    pub(crate) breakers: BreakerRegistry<Arc<str>>,
    pub(crate) router: ShardRouter<NodeService, AnyKey, NoRetry, Respond>,
    /// The topology shared through Redis, and its sync task (with `redis` configured).
    pub(crate) shared_topology: Option<(shard::redis::RedisTopology, shard::redis::SyncTask)>,
}

type NodeService = omega_penta::circuit_breaker::CircuitBreakerService<
    proxy::ProxyNode,
    omega_penta::circuit_breaker::Single,
    omega_penta::circuit_breaker::http::HttpClassifier,
    Respond,
>;

/// A route, ready to serve.
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    pub(crate) info: Arc<RouteInfo>,
    pub(crate) limiter: Option<RateLimiter<Request<Body>>>,
    pub(crate) service: HttpService,
    /// The route's template for `endpoint` keys: its prefix.
    template: RouteTemplate,
    /// `omega_gateway_requests_total` and `omega_gateway_request_seconds` of this route,
    /// registered once so that a request records without allocating labels.
    requests: metrics::Counter,
    seconds: metrics::Histogram,
}

/// The routes and pools in use; replaced as a whole on reload.
pub(crate) struct Table {
    /// Longest prefix first.
    pub(crate) routes: Vec<Route>,
    pub(crate) upstreams: BTreeMap<String, Arc<Upstream>>,
}

pub(crate) struct Shared {
    pub(crate) backend: Backend,
    /// Breaker OPEN transitions shared through Redis (with `redis` configured).
    pub(crate) breaker_sync: Option<omega_penta::circuit_breaker::shared::RedisSync>,
    pub(crate) client: proxy::Client,
    pub(crate) table: ArcSwap<Table>,
    pub(crate) config: Mutex<GatewayConfig>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) draining: AtomicBool,
    pub(crate) metrics: PrometheusHandle,
    /// `false` for [`Gateway::proxy_only`]: routes forward with no layer.
    pub(crate) layers: bool,
}

impl Upstream {
    async fn build(
        name: &str,
        config: &UpstreamConfig,
        shared: &Shared,
        client_ip: &ClientIp,
    ) -> Result<Self, GatewayError> {
        let client = &shared.client;
        let at = format!("upstreams.{name}");
        let mut registry = config
            .breaker
            .registry::<Arc<str>>()
            .map_err(|e| nested(&format!("{at}.breaker"), e))?;
        if let Some(sync) = &shared.breaker_sync {
            registry = registry.shared(sync.clone());
        }
        let breakers = registry
            .name_prefix(format!("{name}/"))
            .max_breakers(10_000)
            .idle_timeout(Duration::from_secs(365 * 24 * 3600))
            .build()
            .map_err(|e| config_error_at(&format!("{at}.breaker"), e.to_string()))?;
        let pool = config.pool();
        let topology = TopologyHandle::new(pool.topology().map_err(|e| nested(&at, e))?);
        // With Redis, every gateway instance routes on one stored topology: the first one to
        // start seeds it from its file, the others adopt it, and changes reach all of them
        // (Redis Cluster included).
        let shared_topology = match shared.backend.as_redis() {
            Some(redis) => {
                let stored =
                    shard::redis::RedisTopology::new(redis.clone(), name, topology.clone())
                        .map_err(|e| config_error_at(&at, e.to_string()))?;
                stored
                    .join(pool.topology().map_err(|e| nested(&at, e))?)
                    .await
                    .map_err(|e| GatewayError::Redis(format!("topology of {name}: {e}")))?;
                let task = stored.spawn_sync(Duration::from_secs(1));
                Some((stored, task))
            }
            None => None,
        };
        // Every node's breaker exists from the start (node services, which hold them, are
        // made on a node's first request): the admin API lists each node's circuit, and an
        // opening shared by another gateway reaches this one before it routes there.
        for node in topology.load().nodes() {
            breakers.get_or_create(node.id_arc());
        }
        let make_breakers = breakers.clone();
        let make_client = client.clone();
        let upstream_name: Arc<str> = Arc::from(name);
        let available = breakers.clone();
        let router = pool
            .router(topology.clone(), client_ip)
            .is_available(move |node: &Node| available.is_call_permitted(node.id_arc()))
            .respond()
            .build(move |node: &Node| {
                let breaker = make_breakers.get_or_create(node.id_arc());
                let target = proxy::ProxyNode::new(
                    make_client.clone(),
                    upstream_name.clone(),
                    node.id_arc().clone(),
                    node.address(),
                );
                CircuitBreakerLayer::new(breaker).http().layer(target)
            });
        Ok(Upstream {
            name: name.to_owned(),
            config: config.clone(),
            client_ip: client_ip.clone(),
            topology,
            breakers,
            router,
            shared_topology,
        })
    }

    /// Brings the pool to `config` while serving: nodes added, removed or reweighted (keys
    /// move only to or from them), breaker thresholds changed (state kept).
    async fn reconcile(&self, config: &UpstreamConfig) -> Result<(), GatewayError> {
        let at = format!("upstreams.{}", self.name);
        let breaker = config
            .breaker
            .circuit_breaker()
            .map_err(|e| nested(&format!("{at}.breaker"), e))?;
        self.breakers
            .reconfigure(breaker)
            .map_err(|e| config_error_at(&format!("{at}.breaker"), e.to_string()))?;
        let current = self.topology.load();
        let mut changes = Vec::new();
        for node in current.nodes() {
            match config.nodes.iter().find(|n| n.id == node.id()) {
                None => changes.push(shard::Change::remove(node.id())),
                Some(n) if n.url != node.address() => {
                    changes.push(shard::Change::remove(node.id()));
                    changes.push(shard::Change::Add(
                        Node::new(n.id.as_str(), n.url.as_str()).with_weight(n.weight),
                    ));
                }
                Some(n) if n.weight != node.weight() => {
                    changes.push(shard::Change::reweight(node.id(), n.weight));
                }
                Some(_) => {}
            }
        }
        for n in &config.nodes {
            if current.node(&n.id).is_none() {
                changes.push(shard::Change::Add(
                    Node::new(n.id.as_str(), n.url.as_str()).with_weight(n.weight),
                ));
            }
        }
        if !changes.is_empty() {
            self.apply(&changes)
                .await
                .map_err(|e| config_error_at(&format!("{at}.nodes"), e))?;
        }
        Ok(())
    }

    /// Changes the pool's nodes: through Redis when the topology is shared (every instance
    /// follows), else locally.
    pub(crate) async fn apply(
        &self,
        changes: &[shard::Change],
    ) -> Result<Arc<shard::Topology>, String> {
        match &self.shared_topology {
            Some((stored, _)) => stored.apply(changes).await.map_err(|e| e.to_string()),
            None => self.topology.apply(changes).map_err(|e| e.to_string()),
        }
    }
}

fn config_error_at(path: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::Config(ConfigError::new(path, message))
}

/// A section's own errors, placed under `path`.
fn nested(path: &str, error: ConfigError) -> GatewayError {
    let mut issues = omega_penta::config::Issues::new();
    issues.absorb(path, error);
    GatewayError::Config(issues.into_result().expect_err("an error was absorbed"))
}

impl Route {
    fn build(
        config: &RouteConfig,
        upstream: &Upstream,
        limiter: Option<RateLimiter<Request<Body>>>,
        shared: &Shared,
    ) -> Route {
        let info = Arc::new(RouteInfo {
            prefix: config.prefix.clone(),
            strip_prefix: config.strip_prefix,
            timeout: config.timeout.0,
        });
        let pool = upstream.router.clone();
        let service = if !shared.layers {
            Self::first_node_only(upstream, shared)
        } else if let Some(l) = &limiter {
            HttpService::new(RateLimitLayer::new(l.clone()).respond().layer(pool))
        } else {
            HttpService::new(pool)
        };
        let labels = [
            ("route", config.prefix.clone()),
            ("upstream", upstream.name.clone()),
        ];
        Route {
            template: RouteTemplate(Arc::from(config.prefix.as_str())),
            requests: metrics::counter!("omega_gateway_requests_total", &labels),
            seconds: metrics::histogram!("omega_gateway_request_seconds", &labels),
            config: config.clone(),
            info,
            limiter,
            service,
        }
    }
}

impl Route {
    /// [`Gateway::proxy_only`]'s pipeline: the proxy to the pool's first node, no layer.
    fn first_node_only(upstream: &Upstream, shared: &Shared) -> HttpService {
        match upstream.topology.load().nodes().first() {
            Some(node) => HttpService::new(proxy::ProxyNode::new(
                shared.client.clone(),
                Arc::from(upstream.name.as_str()),
                node.id_arc().clone(),
                node.address(),
            )),
            None => HttpService::new(tower::service_fn(|_| async {
                Ok(proxy::status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no upstream node",
                ))
            })),
        }
    }
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
    }

    /// Waits until the gateway stops (after [`Running::shutdown`] or a signal handled by the
    /// caller).
    pub async fn wait(self) {
        let _ = self.done.await;
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
                Backend::redis(cfg)
                    .await
                    .map_err(|e| GatewayError::Redis(e.to_string()))?
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
        let shared = Arc::new(Shared {
            backend,
            breaker_sync,
            client: proxy::client(),
            table: ArcSwap::from_pointee(Table {
                routes: Vec::new(),
                upstreams: BTreeMap::new(),
            }),
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
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = self.shared.clone();
        let done = tokio::spawn(serve(shared, listener, admin_listener, rx));
        Ok(Running {
            addr,
            admin_addr,
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

/// Re-reads the configuration file and applies it: new quotas, thresholds and nodes take
/// effect on the next request, and every key keeps its state. A route whose limits changed
/// in kind (another key, a new or removed limit) gets new buckets. An invalid file changes
/// nothing.
pub(crate) async fn reload(shared: &Arc<Shared>) -> Result<String, GatewayError> {
    let Some(path) = &shared.config_path else {
        return Err(config_error_at(
            "",
            "the gateway was not started from a configuration file",
        ));
    };
    let mut config = load_config(path)?;
    // The listen addresses and Redis are fixed for the life of the process.
    {
        let old = shared.config.lock().unwrap_or_else(PoisonError::into_inner);
        config.listen = old.listen;
        config.admin = old.admin;
        config.stack.redis = old.stack.redis.clone();
    }
    let current = shared.table.load_full();
    let table = build_table(shared, &config, Some(&current)).await?;
    let summary = format!(
        "reloaded {}: {} routes, {} upstreams",
        path.display(),
        table.routes.len(),
        table.upstreams.len()
    );
    shared.table.store(Arc::new(table));
    *shared.config.lock().unwrap_or_else(PoisonError::into_inner) = config;
    Ok(summary)
}

/// Builds the route table of `config`, reusing the pools and limiters of `current` so that
/// their state carries over.
async fn build_table(
    shared: &Arc<Shared>,
    config: &GatewayConfig,
    current: Option<&Table>,
) -> Result<Table, GatewayError> {
    let config = &config.stack;
    let client_ip = config.client_ip();
    let mut upstreams = BTreeMap::new();
    for (name, up) in &config.upstreams {
        let pool = match current.and_then(|t| t.upstreams.get(name)) {
            Some(existing)
                if existing.config.key == up.key
                    && existing.config.failover == up.failover
                    && existing.client_ip == client_ip =>
            {
                existing.reconcile(up).await?;
                existing.clone()
            }
            _ => Arc::new(Upstream::build(name, up, shared, &client_ip).await?),
        };
        upstreams.insert(name.clone(), pool);
    }
    let mut routes = Vec::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let upstream = &upstreams[&rc.upstream];
        let reusable = current.and_then(|t| {
            t.routes.iter().find(|r| {
                r.config.prefix == rc.prefix
                    && r.config.limits.len() == rc.limits.len()
                    && r.config.limits.iter().zip(&rc.limits).all(|(a, b)| {
                        a.name == b.name
                            && a.key == b.key
                            && a.lease == b.lease
                            && a.shadow == b.shadow
                    })
            })
        });
        let limiter = match reusable.and_then(|r| r.limiter.clone()) {
            Some(limiter) => {
                for l in &rc.limits {
                    let quota = l.quota().map_err(|e| {
                        config_error_at(&format!("routes[{i}].limits"), e.to_string())
                    })?;
                    limiter.set_quota(&l.name, quota).map_err(|e| {
                        config_error_at(&format!("routes[{i}].limits"), e.to_string())
                    })?;
                }
                Some(limiter)
            }
            None => rc
                .rate_limiter(&shared.backend, &client_ip)
                .map_err(|e| nested(&format!("routes[{i}].limits"), e))?,
        };
        routes.push(Route::build(rc, upstream, limiter, shared));
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.config.prefix.len()));
    Ok(Table { routes, upstreams })
}

/// Answers one request: route, then the route's pipeline.
async fn handle(shared: Arc<Shared>, peer: SocketAddr, mut req: Request<Body>) -> Response<Body> {
    let table = shared.table.load_full();
    let path = req.uri().path();
    let Some(route) = table
        .routes
        .iter()
        .find(|r| proxy::matches(&r.config.prefix, path))
    else {
        return proxy::status(StatusCode::NOT_FOUND, "no route for this path");
    };
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
    response
}

async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    admin_listener: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let grace = shared
        .config
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .shutdown_grace
        .0;
    let proxy_shared = shared.clone();
    let app = axum::Router::new().fallback(
        move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
              req: Request<Body>| {
            let shared = proxy_shared.clone();
            async move { handle(shared, peer, req).await }
        },
    );
    let admin_app = admin::router(shared.clone());
    let upkeep = shared.metrics.clone();
    let upkeep = tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut stop_proxy = stop_tx.subscribe();
    let mut stop_admin = stop_tx.subscribe();
    // A proxy writes each part of a response as it arrives: with Nagle's algorithm on, a part
    // written while the previous one is unacknowledged waits for the client's delayed ACK
    // (40 ms on Linux) on every keep-alive request whose response comes in several writes.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let proxy = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_proxy.recv().await;
        })
        .await;
    });
    let admin = tokio::spawn(async move {
        let _ = axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(async move {
                let _ = stop_admin.recv().await;
            })
            .await;
    });
    let _ = stop.await;
    shared.draining.store(true, Ordering::Release);
    let _ = stop_tx.send(());
    // In-flight requests get `grace` to finish; then the gateway stops regardless.
    let abort_proxy = proxy.abort_handle();
    if tokio::time::timeout(grace, proxy).await.is_err() {
        abort_proxy.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    upkeep.abort();
}
