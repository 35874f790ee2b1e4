//! Redis Cluster: the slot map and the primaries, how they are discovered and kept fresh.
//!
//! The backend talks to each primary over its own [`Node`] (one multiplexed connection,
//! its own health and supervisor), and routes each operation by its key's slot. It does not
//! use redis-rs's cluster client, whose retries send a request again after a dropped
//! connection: a request is sent again only when the node answered that it did not run it
//! (`MOVED`, `ASK`).
//!
//! The topology comes from `CLUSTER SLOTS`, asked of the nodes that are up (or, when none
//! is, of the seeds, each on a fresh connection, all at once): the first answer wins, so one
//! dead or hung node costs nothing. A refresh runs on demand (a `MOVED`, a node lost) and,
//! while some node is down, at the reconnect backoff pace, to notice a failover.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, join_all, select_ok};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use tokio::sync::{Notify, watch};

use super::conn::{bad_url, map_error};
use super::node::Node;
use super::route::Route;
use super::state::{Context, jitter};
use crate::error::{Error, ErrorKind, Result};

/// The number of hash slots.
const SLOTS: usize = 16_384;
/// A slot no node serves.
const NO_NODE: u16 = u16::MAX;

pub(crate) struct Cluster {
    seeds: Vec<(String, ConnectionInfo)>,
    topology: ArcSwapOption<Topology>,
    /// Bumped after each refresh attempt; an operation redirected to a node not known yet
    /// waits for it.
    epoch: watch::Sender<u64>,
    next_any: AtomicUsize,
}

/// The primaries and which one owns each slot.
pub(crate) struct Topology {
    pub(crate) nodes: Vec<Arc<Node>>,
    slots: Box<[u16]>,
}

impl Topology {
    #[inline]
    pub(crate) fn owner(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = *self.slots.get(usize::from(slot))?;
        self.nodes.get(usize::from(i))
    }

    pub(crate) fn node_at(&self, addr: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| &*n.addr == addr)
    }
}

/// One range of `CLUSTER SLOTS`.
struct Range {
    start: u16,
    end: u16,
    host: String,
    port: u16,
}

impl Cluster {
    pub(crate) fn new(seeds: &[String]) -> Result<Self> {
        let seeds = seeds
            .iter()
            .map(|s| {
                let info = s
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| bad_url(s, e))?;
                Ok((s.clone(), info))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cluster {
            seeds,
            topology: ArcSwapOption::empty(),
            epoch: watch::Sender::new(0),
            next_any: AtomicUsize::new(0),
        })
    }

    /// The current topology, once known.
    pub(crate) fn topology(&self) -> Option<Arc<Topology>> {
        self.topology.load_full()
    }

    /// The node an operation on `route` goes to (`None` while the topology is unknown or
    /// the slot is not served). [`Route::AllPrimaries`] is the caller's to fan out.
    #[inline]
    pub(crate) fn node_for(&self, route: Route) -> Option<Arc<Node>> {
        let guard = self.topology.load();
        let topology = guard.as_deref()?;
        match route {
            Route::Slot(slot) => topology.owner(slot).cloned(),
            Route::Any | Route::AllPrimaries => {
                let n = topology.nodes.len();
                let start = self.next_any.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &topology.nodes[(start + i) % n])
                    .find(|node| node.is_up())
                    .or_else(|| topology.nodes.get(start % n.max(1)))
                    .cloned()
            }
        }
    }

    /// Changes after each refresh attempt.
    pub(crate) fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Wakes every node (the backend is gone: their supervisors end).
    pub(crate) fn wake_all(&self) {
        if let Some(t) = self.topology.load_full() {
            t.nodes.iter().for_each(|n| n.wake());
        }
    }

    /// `true` while the topology is unknown or some node is down.
    fn needs_attention(&self) -> bool {
        self.topology
            .load()
            .as_deref()
            .is_none_or(|t| t.nodes.iter().any(|n| !n.is_up()))
    }

    /// Reads the slot map and installs it: new nodes are connected (all at once, within the
    /// connect timeout; those that fail are retried by their supervisors), nodes that left
    /// are retired.
    pub(crate) async fn refresh(&self, ctx: &Arc<Context>) -> Result<()> {
        let outcome = match self.discover(ctx).await {
            Ok(ranges) if ranges.is_empty() => Err(Error::new(
                ErrorKind::Cluster,
                "CLUSTER SLOTS lists no slot: the cluster has no slot assigned yet",
            )
            .at(&ctx.target)),
            Ok(ranges) => {
                self.apply(ctx, ranges).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.epoch.send_modify(|e| *e += 1);
        outcome
    }

    async fn discover(&self, ctx: &Context) -> Result<Vec<Range>> {
        let timeout = ctx.cfg.connect_timeout;
        let ask = |mut conn: redis::aio::MultiplexedConnection, host: String| async move {
            let v: Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await?;
            parse_slots(v, &host).ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "CLUSTER SLOTS answered an unexpected reply",
                ))
            })
        };
        // The nodes that are up, on their own connections.
        let live: Vec<BoxFuture<'_, redis::RedisResult<Vec<Range>>>> = self
            .topology()
            .map(|t| {
                t.nodes
                    .iter()
                    .filter(|n| n.is_up())
                    .filter_map(|n| {
                        let host = n.addr.rsplit_once(':').map_or("", |(h, _)| h).to_owned();
                        n.live()
                            .map(|(conn, _)| Box::pin(ask(conn, host)) as BoxFuture<'_, _>)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !live.is_empty()
            && let Ok(Ok((ranges, _))) = tokio::time::timeout(timeout, select_ok(live)).await
        {
            return Ok(ranges);
        }
        // The seeds, each on a fresh connection.
        let fresh: Vec<BoxFuture<'_, redis::RedisResult<Vec<Range>>>> = self
            .seeds
            .iter()
            .map(|(_, info)| {
                ctx.count_attempt();
                let info = info.clone();
                Box::pin(async move {
                    let host = match info.addr() {
                        ConnectionAddr::Tcp(h, _) | ConnectionAddr::TcpTls { host: h, .. } => {
                            h.clone()
                        }
                        _ => String::new(),
                    };
                    let cfg = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(None);
                    let conn = redis::Client::open(info)?
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?;
                    ask(conn, host).await
                }) as BoxFuture<'_, _>
            })
            .collect();
        match tokio::time::timeout(timeout, select_ok(fresh)).await {
            Ok(Ok((ranges, _))) => Ok(ranges),
            Ok(Err(e)) => Err(map_error(e).at(&ctx.target).during("CLUSTER SLOTS")),
            Err(_) => Err(Error::timeout(timeout)
                .at(&ctx.target)
                .during("CLUSTER SLOTS")),
        }
    }

    async fn apply(&self, ctx: &Arc<Context>, ranges: Vec<Range>) {
        let old = self.topology();
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        let mut fresh: Vec<Arc<Node>> = Vec::new();
        let mut slots = vec![NO_NODE; SLOTS].into_boxed_slice();
        for r in &ranges {
            let addr = format!("{}:{}", r.host, r.port);
            let i = match nodes.iter().position(|n| *n.addr == *addr) {
                Some(i) => i,
                None => {
                    let node = match old.as_deref().and_then(|t| t.node_at(&addr)) {
                        Some(node) => node.clone(),
                        None => {
                            let node =
                                Node::new(ctx, Arc::from(addr), self.client(&r.host, r.port));
                            fresh.push(node.clone());
                            node
                        }
                    };
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            for slot in r.start..=r.end.min(SLOTS as u16 - 1) {
                slots[usize::from(slot)] = i as u16;
            }
        }
        if let Some(old) = &old {
            let same = old.slots == slots
                && old.nodes.len() == nodes.len()
                && old.nodes.iter().zip(&nodes).all(|(a, b)| Arc::ptr_eq(a, b));
            if same {
                return;
            }
        }
        // New nodes connect before they take slots; each gets its supervisor.
        join_all(fresh.iter().map(|n| async move {
            if let Err(e) = n.open(ctx).await {
                n.mark_down(ctx, &e);
            }
        }))
        .await;
        for n in &fresh {
            n.spawn_supervisor(ctx);
        }
        self.topology
            .store(Some(Arc::new(Topology { nodes, slots })));
        match old {
            None => ctx.ready(),
            Some(old) => {
                let current = self.topology().expect("just stored");
                for n in &old.nodes {
                    if !current.nodes.iter().any(|c| Arc::ptr_eq(c, n)) {
                        n.retire(ctx);
                    }
                }
            }
        }
    }

    /// A client for a node, with the seeds' credentials and TLS settings.
    fn client(&self, host: &str, port: u16) -> redis::Client {
        let base = self.seeds[0].1.clone();
        let addr = match base.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        redis::Client::open(base.set_addr(addr)).expect("a seed's settings with another address")
    }
}

/// Parses `CLUSTER SLOTS`: primaries only. A node that does not know its own address (an
/// empty or `?` endpoint) is the one asked, `queried`.
fn parse_slots(v: Value, queried: &str) -> Option<Vec<Range>> {
    let Value::Array(entries) = v else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Array(items) = entry else {
                return None;
            };
            let Value::Array(primary) = items.get(2)? else {
                return None;
            };
            let host = text(primary.first()?)?;
            let host = if host.is_empty() || host == "?" {
                queried.to_owned()
            } else {
                host
            };
            Some(Range {
                start: int(items.first()?)?,
                end: int(items.get(1)?)?,
                host,
                port: int(primary.get(1)?)?,
            })
        })
        .collect()
}

/// The one task per cluster backend that refreshes the topology: when asked (`wake`), and
/// while the topology is unknown or a node is down, at the reconnect backoff pace. It ends
/// when the backend is dropped (which wakes it), and when the backend's tasks moved to
/// another runtime (a newer `epoch`).
pub(crate) async fn keep_topology(
    ctx: Weak<Context>,
    cluster: Weak<Cluster>,
    wake: Arc<Notify>,
    epoch: u64,
) {
    let mut backoff: Option<Duration> = None;
    loop {
        let attention = match cluster.upgrade() {
            Some(c) => c.needs_attention(),
            None => return,
        };
        match backoff {
            Some(delay) if attention => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(jitter(delay)) => {}
                }
            }
            _ => wake.notified().await,
        }
        let (Some(ctx), Some(cluster)) = (ctx.upgrade(), cluster.upgrade()) else {
            return;
        };
        if ctx.is_closed() {
            return;
        }
        if ctx.epoch() != epoch {
            // The wake-up may have been meant for the newer task: pass it on.
            wake.notify_one();
            return;
        }
        let (min, max) = (ctx.cfg.backoff_min, ctx.cfg.backoff_max);
        match cluster.refresh(&ctx).await {
            Ok(()) if !cluster.needs_attention() => backoff = None,
            Ok(()) => backoff = Some(backoff.map_or(min, |d| (d * 2).min(max))),
            Err(e) => {
                ctx.record(&e);
                backoff = Some(backoff.map_or(min, |d| (d * 2).min(max)));
            }
        }
    }
}

/// The error of an operation whose slot no node serves (or whose topology is unknown).
pub(crate) fn unrouted(ctx: &Context, route: Route) -> Error {
    let detail = match route {
        Route::Slot(slot) => format!("no known node serves slot {slot}; refreshing the topology"),
        _ => "the cluster's topology is not known yet".to_owned(),
    };
    Error::new(ErrorKind::Unavailable, detail).at(&ctx.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_parsed_with_the_asked_host_for_unknown_endpoints() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(99), node("10.0.0.1", 7000)]),
            Value::Array(vec![Value::Int(100), Value::Int(16383), node("?", 7001)]),
        ]);
        let r = parse_slots(v, "10.0.0.9").unwrap();
        assert_eq!((r[0].start, r[0].end, r[0].port), (0, 99, 7000));
        assert_eq!(r[0].host, "10.0.0.1");
        assert_eq!((r[1].host.as_str(), r[1].port), ("10.0.0.9", 7001));
        assert!(parse_slots(Value::Int(1), "h").is_none());
    }
}
