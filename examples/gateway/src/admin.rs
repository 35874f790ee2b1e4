//! The admin API, on its own listener.
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while serving, 503 once draining for shutdown |
//! | `GET /metrics` | Prometheus text format: the gateway's and every layer's metrics |
//! | `GET /breakers` | each node's breaker: state and health snapshot |
//! | `GET /limits` | each route's limits and their current quotas |
//! | `GET /shards/{upstream}` | the pool's epoch, nodes, owned shares and request counters |
//! | `GET /shards/{upstream}/owner?key=K` | the node that owns `K` and its preference list |
//! | `POST /shards/{upstream}/nodes` | adds a node: `{"id": "d", "url": "http://...", "weight": 1}` |
//! | `DELETE /shards/{upstream}/nodes/{id}` | removes a node |
//! | `POST /reload` | re-reads the configuration file (also on SIGHUP) |
//! | `POST /cache/purge?tag=T` | drops the cached responses tagged `T` (`Surrogate-Key`), on every instance sharing the Redis |
//!
//! Changes (`POST`, `DELETE`) need `Authorization: Bearer <admin token>` (401 otherwise); a
//! `Host` other than an IP address or `localhost` gets 421; a node URL must be on an allowed
//! host (403 otherwise). See [`crate::guard`].
//!
//! Nodes added or removed here last until the next reload, which brings each pool back to
//! the file's node list. With Redis, node changes go through the shared topology and reach
//! every gateway instance.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post};
use http::StatusCode;
use omega_penta::config::{NodeConfig, parse_base_url};
use omega_penta::shard_router::Node;
use serde_json::{Value, json};

use crate::Shared;

type Reply = (StatusCode, Json<Value>);

fn error(code: StatusCode, message: impl Into<String>) -> Reply {
    (code, Json(json!({ "error": message.into() })))
}

pub(crate) fn router(shared: Arc<Shared>, token: Arc<str>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/breakers", get(breakers))
        .route("/limits", get(limits))
        .route("/shards/{upstream}", get(shards))
        .route("/shards/{upstream}/owner", get(owner))
        .route("/shards/{upstream}/nodes", post(add_node))
        .route("/shards/{upstream}/nodes/{id}", delete(remove_node))
        .route("/reload", post(reload))
        .route("/cache/purge", post(purge))
        .layer(axum::middleware::from_fn_with_state(
            token,
            crate::guard::check,
        ))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> String {
    shared.metrics.render()
}

async fn breakers(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let table = shared.table.load();
    let mut out = serde_json::Map::new();
    for (name, up) in &table.upstreams {
        let mut nodes = serde_json::Map::new();
        for (id, h) in up.breakers.health() {
            nodes.insert(
                id.to_string(),
                json!({
                    "name": &*h.name,
                    "state": format!("{:?}", h.state),
                    "failure_rate": h.failure_rate,
                    "slow_call_rate": h.slow_call_rate,
                    "calls": h.calls,
                    "failed_calls": h.failed_calls,
                    "slow_calls": h.slow_calls,
                    "rejected_calls": h.rejected_calls,
                    "next_transition_ms": h.next_transition_in.map(|d| d.as_millis() as u64),
                }),
            );
        }
        out.insert(name.clone(), Value::Object(nodes));
    }
    Json(Value::Object(out))
}

async fn limits(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let table = shared.table.load();
    let mut out = serde_json::Map::new();
    for route in &table.routes {
        let limits: Vec<Value> = route
            .config
            .limits
            .iter()
            .map(|l| {
                let quota = route
                    .limiter
                    .as_ref()
                    .and_then(|lim| lim.quotas().into_iter().find(|(n, _)| **n == *l.name))
                    .map(|(_, q)| format!("{q:?}"));
                json!({
                    "name": l.name,
                    "key": l.key,
                    "rate": l.rate,
                    "per": l.per,
                    "burst": l.burst.unwrap_or(l.rate),
                    "shadow": l.shadow,
                    "lease": l.lease,
                    "quota": quota,
                })
            })
            .collect();
        let mut limits = limits;
        if let (Some(config), Some(limiter)) = (&route.config.adaptive, &route.adaptive) {
            let estimate = limiter.estimate("");
            limits.push(json!({
                "name": "adaptive",
                "algorithm": config.algorithm,
                "min": config.min,
                "max": config.max,
                "limit": estimate.map(|e| e.limit()),
                "in_flight": limiter.inflight(""),
                "rtt_ms": estimate.map(|e| e.rtt().as_secs_f64() * 1000.0),
                "baseline_rtt_ms": estimate.map(|e| e.baseline_rtt().as_secs_f64() * 1000.0),
            }));
        }
        out.insert(route.config.prefix.clone(), Value::Array(limits));
    }
    Json(Value::Object(out))
}

async fn shards(State(shared): State<Arc<Shared>>, Path(upstream): Path<String>) -> Reply {
    let table = shared.table.load();
    let Some(up) = table.upstreams.get(&upstream) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}"));
    };
    let topology = up.topology.load();
    let counters = up.router.counters();
    let nodes: Vec<Value> = topology
        .nodes()
        .iter()
        .map(|n| {
            let c = counters.iter().find(|c| &*c.id == n.id());
            json!({
                "id": n.id(),
                "url": n.address(),
                "weight": n.weight(),
                "share": topology.owned_fraction(n.id()),
                "requests": c.map(|c| c.requests),
                "failovers": c.map(|c| c.failovers),
                "breaker": up.breakers.state(n.id_arc()).map(|s| format!("{s:?}")),
                "health": up.health.of(n.id()),
            })
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({ "upstream": upstream, "epoch": topology.epoch(), "nodes": nodes })),
    )
}

async fn owner(
    State(shared): State<Arc<Shared>>,
    Path(upstream): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let table = shared.table.load();
    let Some(up) = table.upstreams.get(&upstream) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}"));
    };
    let Some(key) = q.get("key") else {
        return error(StatusCode::BAD_REQUEST, "give the key as ?key=...");
    };
    let topology = up.topology.load();
    let preference: Vec<&str> = topology
        .preference_list(key.as_str(), up.config.failover.max(1))
        .into_iter()
        .map(|n| n.id())
        .collect();
    let owner = up.router.owner(key.as_str()).map(|n| n.id().to_owned());
    (
        StatusCode::OK,
        Json(json!({ "key": key, "owner": owner, "preference": preference })),
    )
}

async fn add_node(
    State(shared): State<Arc<Shared>>,
    Path(upstream): Path<String>,
    Json(node): Json<NodeConfig>,
) -> Reply {
    let table = shared.table.load();
    let Some(up) = table.upstreams.get(&upstream) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}"));
    };
    let url = match parse_base_url(&node.url) {
        Ok(url) => url,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("url: {e}")),
    };
    let allowed = {
        let config = shared.config.lock().unwrap_or_else(PoisonError::into_inner);
        crate::guard::allowed_node_hosts(&config)
    };
    if !crate::guard::node_allowed(&allowed, &url) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "url: {:?} is not a host of this gateway's pools; list it in \
                 admin_api.node_hosts",
                url.host().unwrap_or_default()
            ),
        );
    }
    if node.weight == 0 {
        return error(StatusCode::BAD_REQUEST, "weight: must be at least 1");
    }
    let before = up.topology.load();
    let new = Node::new(node.id.as_str(), node.url.as_str()).with_weight(node.weight);
    let moved = before
        .preview(&[omega_penta::shard_router::Change::Add(new.clone())])
        .map(|m| m.fraction());
    match up
        .apply(&[omega_penta::shard_router::Change::Add(new)])
        .await
    {
        Ok(t) => (
            StatusCode::OK,
            Json(json!({ "epoch": t.epoch(), "moved_fraction": moved.ok() })),
        ),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn remove_node(
    State(shared): State<Arc<Shared>>,
    Path((upstream, id)): Path<(String, String)>,
) -> Reply {
    let table = shared.table.load();
    let Some(up) = table.upstreams.get(&upstream) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {upstream:?}"));
    };
    match up
        .apply(&[omega_penta::shard_router::Change::remove(&id)])
        .await
    {
        Ok(t) => (StatusCode::OK, Json(json!({ "epoch": t.epoch() }))),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn reload(State(shared): State<Arc<Shared>>) -> Reply {
    match crate::table::reload(&shared).await {
        Ok(summary) => (StatusCode::OK, Json(json!({ "reloaded": summary }))),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn purge(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let Some(tag) = q.get("tag").filter(|t| !t.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "give the tag to purge: ?tag=T");
    };
    match shared.cache.invalidate_tag(tag).await {
        Ok(()) => (StatusCode::OK, Json(json!({ "purged_tag": tag }))),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
