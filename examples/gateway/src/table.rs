//! The route table: upstream pools (shard map, breakers, router) and routes (limits,
//! pipeline), built from the configuration and rebuilt on reload with every key's state kept.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use omega_penta::circuit_breaker::{BreakerRegistry, CircuitBreakerLayer};
use omega_penta::config::{ConfigError, RouteConfig, UpstreamConfig};
use omega_penta::core::config::KeyConfig;
use omega_penta::core::key::http::{AnyKey, ClientIp, RouteTemplate};
use omega_penta::core::reject::Respond;
use omega_penta::rate_limit::adaptive::{AdaptiveConcurrencyLayer, AdaptiveLimiter};
use omega_penta::rate_limit::{RateLimitLayer, RateLimiter};
use omega_penta::shard_router::{self as shard, Node, ShardRouter, TopologyHandle};
use tower::Layer;

use crate::config::GatewayConfig;
use crate::failover::{AnswerUnreachable, Failover};
use crate::proxy::{self, RouteInfo};
use crate::{GatewayError, HttpService, Shared, load_config};

/// A pool of upstream nodes: its shard map, its breakers and its router.
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) config: UpstreamConfig,
    /// How client addresses were found when the router was built (a `client_ip` key).
    pub(crate) client_ip: ClientIp,
    pub(crate) topology: TopologyHandle,
    pub(crate) breakers: BreakerRegistry<Arc<str>>,
    pub(crate) router: ShardRouter<NodeService, AnyKey, Failover, Respond>,
    /// The pool's HTTP clients (its own `connect_timeout`), one per thread.
    pub(crate) clients: Arc<proxy::Clients>,
    /// What the pool's health checks know (every node up when they are off).
    pub(crate) health: Arc<crate::health::Health>,
    /// The health checks' task, stopped with the pool.
    _checker: Option<crate::health::Checker>,
    /// The discovery task, stopped with the pool.
    _discovery: Option<crate::discovery::Discovery>,
    /// The topology shared through Redis, and its sync task (with `redis` configured).
    pub(crate) shared_topology: Option<(shard::redis::RedisTopology, shard::redis::SyncTask)>,
}

/// A node behind its breaker, which classifies gRPC calls by the status in their trailers
/// (and everything else by its response head).
type NodeService = tower::util::MapResponse<
    omega_penta::circuit_breaker::GrpcCircuitBreakerService<
        proxy::ProxyNode,
        omega_penta::circuit_breaker::Single,
        Respond,
    >,
    fn(http::Response<omega_penta::circuit_breaker::GrpcBody<Body>>) -> http::Response<Body>,
>;

/// A route, ready to serve.
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    pub(crate) info: Arc<RouteInfo>,
    pub(crate) limiter: Option<RateLimiter<Request<Body>>>,
    /// The adaptive concurrency limit in front of the pool, when configured.
    pub(crate) adaptive: Option<AdaptiveLimiter<Request<Body>>>,
    pub(crate) service: HttpService,
    /// The route's template for `endpoint` keys: its prefix.
    pub(crate) template: RouteTemplate,
    /// `omega_gateway_requests_total` and `omega_gateway_request_seconds` of this route,
    /// registered once so that a request records without allocating labels.
    pub(crate) requests: metrics::Counter,
    pub(crate) seconds: metrics::Histogram,
}

/// The routes and pools in use; replaced as a whole on reload.
pub(crate) struct Table {
    /// Longest prefix first.
    pub(crate) routes: Vec<Route>,
    pub(crate) upstreams: BTreeMap<String, Arc<Upstream>>,
    /// How client addresses are found (trusted proxies, forwarding header, IPv6 prefix).
    pub(crate) client_ip: ClientIp,
}

impl Upstream {
    async fn build(
        name: &str,
        config: &UpstreamConfig,
        shared: &Shared,
        client_ip: &ClientIp,
    ) -> Result<Self, GatewayError> {
        let clients = proxy::Clients::new(
            config.connect_timeout.0,
            config.protocol,
            config.tls.as_ref().and_then(|t| t.ca.clone()),
        );
        // A pool with `https://` nodes or its own roots: they are read now, so that a bad
        // `tls.ca` is the file's mistake at start or reload, not a 502 later.
        if config.tls.is_some() || config.nodes.iter().any(|n| n.url.starts_with("https://")) {
            clients
                .tls_config()
                .map_err(|e| config_error_at(&format!("upstreams.{name}.tls"), e))?;
        }
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
                // Redis down: the file's map serves; the sync task seeds or adopts the stored
                // one once Redis answers.
                if let Err(e) = stored
                    .join(pool.topology().map_err(|e| nested(&at, e))?)
                    .await
                {
                    eprintln!(
                        "omega-gateway: the shard map of {name} is not shared yet ({e}); \
                         routing on the file's until Redis answers"
                    );
                }
                let task = stored.spawn_sync(Duration::from_secs(1));
                Some((stored, task))
            }
            None => None,
        };
        let discovery = match (&config.discover, &shared_topology) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(config_error_at(
                    &format!("{at}.discover"),
                    "node discovery needs Redis (`redis` in the file, or --redis)",
                ));
            }
            (Some(discover), Some((stored, _))) => {
                let redis = shared
                    .backend
                    .as_redis()
                    .expect("a shared shard map means Redis")
                    .clone();
                let registry = shard::redis::registry::Registry::new(
                    redis,
                    discover.redis_key.as_deref().unwrap_or(name),
                )
                .map_err(|e| config_error_at(&format!("{at}.discover.redis_key"), e.to_string()))?;
                let keep: Vec<Arc<str>> = config
                    .nodes
                    .iter()
                    .map(|n| Arc::from(n.id.as_str()))
                    .collect();
                Some(crate::discovery::Discovery::spawn(
                    name,
                    registry,
                    stored.clone(),
                    discover,
                    keep,
                ))
            }
        };
        // Every node's breaker exists from the start (node services, which hold them, are
        // made on a node's first request): the admin API lists each node's circuit, and an
        // opening shared by another gateway reaches this one before it routes there.
        for node in topology.load().nodes() {
            breakers.get_or_create(node.id_arc());
        }
        let make_breakers = breakers.clone();
        let make_clients = clients.clone();
        let upstream_name: Arc<str> = Arc::from(name);
        let (health, checker) = match &config.health_check {
            Some(check) => {
                let (health, checker) = crate::health::Health::start(
                    name,
                    check.clone(),
                    topology.clone(),
                    breakers.clone(),
                    clients.clone(),
                );
                (health, Some(checker))
            }
            None => (crate::health::Health::off(), None),
        };
        let available = breakers.clone();
        let routable = health.clone();
        let router = pool
            .router(topology.clone(), client_ip)
            .is_available(move |node: &Node| routable.routable(node, &available))
            .retry(Failover::new(&config.retry_budget))
            .respond()
            .build(move |node: &Node| {
                let breaker = make_breakers.get_or_create(node.id_arc());
                let target = proxy::ProxyNode::new(
                    make_clients.clone(),
                    upstream_name.clone(),
                    node.id_arc().clone(),
                    node.address(),
                );
                let unbox: fn(
                    http::Response<omega_penta::circuit_breaker::GrpcBody<Body>>,
                ) -> http::Response<Body> =
                    |r| r.map(|body| body.into_unwatched().unwrap_or_else(Body::new));
                tower::ServiceExt::map_response(
                    CircuitBreakerLayer::new(breaker).grpc().layer(target),
                    unbox,
                )
            });
        Ok(Upstream {
            name: name.to_owned(),
            config: config.clone(),
            client_ip: client_ip.clone(),
            topology,
            breakers,
            router,
            clients,
            health,
            _checker: checker,
            _discovery: discovery,
            shared_topology,
        })
    }

    /// What bringing the pool to `config` takes: the breakers' new thresholds (validated)
    /// and the node changes. Nothing is changed yet.
    fn stage(&self, config: &UpstreamConfig) -> Result<StagedPool, GatewayError> {
        let at = format!("upstreams.{}", self.name);
        let breaker = config
            .breaker
            .circuit_breaker()
            .map_err(|e| nested(&format!("{at}.breaker"), e))?;
        breaker
            .validate()
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
        // The changes must apply to the map as it is (a node id twice, a weight of 0, ...).
        if !changes.is_empty() {
            current
                .preview(&changes)
                .map_err(|e| config_error_at(&format!("{at}.nodes"), e.to_string()))?;
        }
        Ok(StagedPool { breaker, changes })
    }

    /// Applies what [`Upstream::stage`] prepared: node changes first (through Redis they can
    /// still fail), then the thresholds, keeping every breaker's state.
    async fn commit(&self, staged: StagedPool) -> Result<(), GatewayError> {
        let at = format!("upstreams.{}", self.name);
        if !staged.changes.is_empty() {
            self.apply(&staged.changes)
                .await
                .map_err(|e| config_error_at(&format!("{at}.nodes"), e))?;
        }
        self.breakers
            .reconfigure(staged.breaker)
            .map_err(|e| config_error_at(&format!("{at}.breaker"), e.to_string()))
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

/// A reused pool's part of a reload, built before anything changes.
struct StagedPool {
    breaker: omega_penta::circuit_breaker::CircuitBreakerConfig,
    changes: Vec<shard::Change>,
}

pub(crate) fn config_error_at(path: &str, message: impl Into<String>) -> GatewayError {
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
        adaptive: Option<AdaptiveLimiter<Request<Body>>>,
        client_ip: &ClientIp,
        shared: &Shared,
    ) -> Route {
        let info = Arc::new(RouteInfo {
            prefix: config.prefix.clone(),
            upstream: config.upstream.clone(),
            log: shared.access_log.is_some(),
            tunnels: shared.tunnels.clone(),
            strip_prefix: config.strip_prefix,
            timeout: config.timeout.0,
            client_ip: client_ip.clone(),
            max_body: config.max_body,
            body_timeout: shared
                .config
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .server
                .body_timeout
                .0,
        });
        // No node left to try for an unreachable node's request: 502. The adaptive limit
        // sits right in front of the pool, so that it learns from the pool's latency only
        // (cache hits never reach it).
        let unreachable = AnswerUnreachable::new(upstream.router.clone());
        let pool = match &adaptive {
            Some(a) => HttpService::new(
                AdaptiveConcurrencyLayer::new(a.clone())
                    .respond()
                    .layer(unreachable),
            ),
            None => HttpService::new(unreachable),
        };
        let service = if !shared.layers {
            Self::first_node_only(upstream)
        } else {
            // limits → cache → adaptive → router: a cached answer still counts against the
            // limits.
            let cached = config.cache.as_ref().filter(|c| c.enabled).map(|c| {
                HttpService::new(tower::ServiceExt::map_response(
                    c.layer(&shared.cache).layer(pool.clone()),
                    |r: http::Response<_>| r.map(Body::new),
                ))
            });
            let inner = cached.unwrap_or(pool);
            match &limiter {
                Some(l) => HttpService::new(RateLimitLayer::new(l.clone()).respond().layer(inner)),
                None => inner,
            }
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
            adaptive,
            service,
        }
    }
}

impl Route {
    /// [`Gateway::proxy_only`]'s pipeline: the proxy to the pool's first node, no layer.
    fn first_node_only(upstream: &Upstream) -> HttpService {
        match upstream.topology.load().nodes().first() {
            Some(node) => HttpService::new(AnswerUnreachable::new(proxy::ProxyNode::new(
                upstream.clients.clone(),
                Arc::from(upstream.name.as_str()),
                node.id_arc().clone(),
                node.address(),
            ))),
            None => HttpService::new(tower::service_fn(|_| async {
                Ok(proxy::status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no upstream node",
                ))
            })),
        }
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
    // One reload at a time (SIGHUP and `POST /reload` cannot interleave).
    let _one_at_a_time = shared.reload_lock.lock().await;
    let mut config = load_config(path)?;
    // The listen addresses and Redis are fixed for the life of the process.
    {
        let old = shared.config.lock().unwrap_or_else(PoisonError::into_inner);
        config.listen = old.listen;
        config.admin = old.admin;
        config.stack.redis = old.stack.redis.clone();
    }
    // A renewed certificate is read with the rest, and used once everything else is built.
    let certificate = match &shared.tls {
        Some(tls) => Some(tls.read().map_err(|e| config_error_at("tls", e))?),
        None => None,
    };
    let current = shared.table.load_full();
    let table = build_table(shared, &config, Some(&current)).await?;
    if let (Some(tls), Some(certificate)) = (&shared.tls, certificate) {
        tls.store(certificate);
    }
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
/// their state carries over. Stage, then commit: every new piece is built and every change
/// checked first; only then are reused pools and limiters changed, so a mistake anywhere
/// changes nothing.
pub(crate) async fn build_table(
    shared: &Arc<Shared>,
    config: &GatewayConfig,
    current: Option<&Table>,
) -> Result<Table, GatewayError> {
    let config = &config.stack;
    let client_ip = config.client_ip();
    let same_client_ip = current.is_some_and(|t| t.client_ip == client_ip);
    let mut upstreams = BTreeMap::new();
    let mut staged_pools = Vec::new();
    for (name, up) in &config.upstreams {
        let pool = match current.and_then(|t| t.upstreams.get(name)) {
            Some(existing)
                if existing.config.key == up.key
                    && existing.config.failover == up.failover
                    && existing.config.connect_timeout == up.connect_timeout
                    && existing.config.retry_budget == up.retry_budget
                    && existing.config.health_check == up.health_check
                    && existing.config.protocol == up.protocol
                    && existing.config.tls == up.tls
                    && existing.config.discover == up.discover
                    && existing.client_ip == client_ip =>
            {
                staged_pools.push((existing.clone(), existing.stage(up)?));
                existing.clone()
            }
            _ => Arc::new(Upstream::build(name, up, shared, &client_ip).await?),
        };
        upstreams.insert(name.clone(), pool);
    }
    let mut staged_quotas = Vec::new();
    let mut limiters = Vec::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}].limits");
        // A limiter keeps its buckets when its limits keep their names and keys (and client
        // addresses are still found the same way, for a limit keyed by them).
        let reusable = current.and_then(|t| {
            t.routes.iter().find(|r| {
                r.config.prefix == rc.prefix
                    && r.config.limits.len() == rc.limits.len()
                    && r.config.limits.iter().zip(&rc.limits).all(|(a, b)| {
                        a.name == b.name
                            && a.key == b.key
                            && a.lease == b.lease
                            && a.shadow == b.shadow
                            && a.on_redis_failure == b.on_redis_failure
                            && (same_client_ip || a.key != KeyConfig::ClientIp)
                    })
            })
        });
        let limiter = match reusable.and_then(|r| r.limiter.clone()) {
            Some(limiter) => {
                for l in &rc.limits {
                    let quota = l.quota().map_err(|e| config_error_at(&at, e.to_string()))?;
                    staged_quotas.push((limiter.clone(), l.name.clone(), quota, at.clone()));
                }
                Some(limiter)
            }
            None => rc
                .rate_limiter(&shared.backend, &client_ip)
                .map_err(|e| nested(&at, e))?,
        };
        limiters.push(limiter);
    }
    // Commit: everything above was built or checked.
    for (pool, staged) in staged_pools {
        pool.commit(staged).await?;
    }
    for (limiter, name, quota, at) in staged_quotas {
        limiter
            .set_quota(&name, quota)
            .map_err(|e| config_error_at(&at, e.to_string()))?;
    }
    let mut routes = Vec::new();
    for (rc, limiter) in config.routes.iter().zip(limiters) {
        // A route keeps its learnt limit while its settings stay.
        let adaptive = match &rc.adaptive {
            None => None,
            Some(a) => match current
                .and_then(|t| t.routes.iter().find(|r| r.config.prefix == rc.prefix))
                .filter(|r| r.config.adaptive.as_ref() == Some(a))
                .and_then(|r| r.adaptive.clone())
            {
                Some(kept) => Some(kept),
                None => Some(
                    a.limiter()
                        .map_err(|e| nested(&format!("routes.{}.adaptive", rc.prefix), e))?,
                ),
            },
        };
        routes.push(Route::build(
            rc,
            &upstreams[&rc.upstream],
            limiter,
            adaptive,
            &client_ip,
            shared,
        ));
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.config.prefix.len()));
    Ok(Table {
        routes,
        upstreams,
        client_ip,
    })
}
