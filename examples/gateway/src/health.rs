//! Active health checks of a pool's nodes (`health_check` on a pool).
//!
//! One task per pool checks every node of its current shard map each `interval` (`GET path`
//! within `timeout`). A node failing `unhealthy_threshold` checks in a row is down: routing
//! skips it (its keys go to the next node of their preference list) until it passes
//! `healthy_threshold` in a row. The checks also probe open circuits: routing sends users only
//! to nodes whose breaker is CLOSED, and once a breaker's wait is over (HALF_OPEN) the next
//! check decides: passing closes the circuit, failing opens it for another wait. No user
//! request is a probe.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use http::Request;
use omega_penta::circuit_breaker::{BreakerRegistry, State};
use omega_penta::config::HealthCheck;
use omega_penta::shard_router::{Node, TopologyHandle};

use crate::proxy::Clients;

/// What the checks know of a pool's nodes.
#[derive(Debug, Default)]
pub struct Health {
    /// The nodes that are down (empty while all pass, so routing pays one pointer load).
    down: ArcSwap<HashSet<Arc<str>>>,
    /// Whether checks run at all.
    on: bool,
}

impl Health {
    /// No checks: every node counts as up.
    pub fn off() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// Whether routing may send users to `node` whose breaker is `breaker`: with checks on,
    /// only to a node that is up and whose circuit is CLOSED (HALF_OPEN probes are the
    /// checks'); without, what the breaker permits.
    pub fn routable(&self, node: &Node, breakers: &BreakerRegistry<Arc<str>>) -> bool {
        if !self.on {
            return breakers.is_call_permitted(node.id_arc());
        }
        let closed = match breakers.state(node.id_arc()) {
            Some(State::Closed | State::Disabled | State::MetricsOnly) | None => true,
            Some(_) => false,
        };
        closed && !self.down.load().contains(node.id())
    }

    /// `"up"`, `"down"` or `"unchecked"`, for the admin API.
    pub fn of(&self, node: &str) -> &'static str {
        match (self.on, self.down.load().contains(node)) {
            (false, _) => "unchecked",
            (true, true) => "down",
            (true, false) => "up",
        }
    }

    /// Starts checking the nodes of `topology` as `check` says; the task ends when the
    /// returned guard is dropped.
    pub fn start(
        pool: &str,
        check: HealthCheck,
        topology: TopologyHandle,
        breakers: BreakerRegistry<Arc<str>>,
        clients: Arc<Clients>,
    ) -> (Arc<Self>, Checker) {
        let health = Arc::new(Health {
            down: ArcSwap::default(),
            on: true,
        });
        let this = health.clone();
        let pool = pool.to_owned();
        let task = tokio::spawn(async move {
            // Checks in a row per node: positive passing, negative failing.
            let mut streaks: HashMap<Arc<str>, i64> = HashMap::new();
            let mut every = tokio::time::interval(check.interval.0);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let nodes: Vec<Node> = topology.load().nodes().to_vec();
                let results = futures_util::future::join_all(
                    nodes.iter().map(|n| probe(&clients, n, &check)),
                )
                .await;
                let mut down = (**this.down.load()).clone();
                down.retain(|id| nodes.iter().any(|n| n.id_arc() == id));
                streaks.retain(|id, _| nodes.iter().any(|n| n.id_arc() == id));
                for (node, passed) in nodes.iter().zip(results) {
                    let id = node.id_arc();
                    let streak = streaks.entry(id.clone()).or_default();
                    *streak = match (passed, *streak) {
                        (true, s) if s > 0 => s + 1,
                        (true, _) => 1,
                        (false, s) if s < 0 => s - 1,
                        (false, _) => -1,
                    };
                    if *streak >= i64::from(check.healthy_threshold) && down.remove(id) {
                        eprintln!("omega-gateway: node {id} of {pool} passes its health checks");
                    }
                    if -*streak >= i64::from(check.unhealthy_threshold) && down.insert(id.clone()) {
                        eprintln!("omega-gateway: node {id} of {pool} fails its health checks");
                    }
                    metrics::counter!(
                        "omega_gateway_health_checks_total",
                        "upstream" => pool.clone(),
                        "node" => id.to_string(),
                        "result" => if passed { "pass" } else { "fail" }
                    )
                    .increment(1);
                    // The breaker's wait is over: this check is its probe.
                    let breaker = breakers.get_or_create(id);
                    if breaker.state() == State::HalfOpen {
                        if passed {
                            breaker.transition_to_closed();
                        } else {
                            breaker.transition_to_open();
                        }
                    }
                }
                if down != **this.down.load() {
                    this.down.store(Arc::new(down));
                }
            }
        });
        (health, Checker(task))
    }
}

/// Stops a pool's checks when dropped.
#[derive(Debug)]
pub struct Checker(tokio::task::JoinHandle<()>);

impl Drop for Checker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One check of one node: whether it answered `check.path` as expected within its timeout.
async fn probe(clients: &Clients, node: &Node, check: &HealthCheck) -> bool {
    let Ok(uri) =
        format!("{}{}", node.address().trim_end_matches('/'), check.path).parse::<http::Uri>()
    else {
        return false;
    };
    let Ok(req) = Request::get(uri)
        .header(http::header::USER_AGENT, "omega-gateway-health-check")
        .body(Body::empty())
    else {
        return false;
    };
    match tokio::time::timeout(check.timeout.0, clients.get().request(req)).await {
        Ok(Ok(response)) => check.passes(response.status().as_u16()),
        _ => false,
    }
}
