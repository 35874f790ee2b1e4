//! Pub/sub that survives its connection: [`RedisBackend::subscribe`] and
//! [`RedisBackend::publish`].
//!
//! A subscription has its own connection (a subscribed connection can run no other command).
//! One task per subscription keeps it: it connects, subscribes, forwards messages, checks the
//! connection with a `PING` every second (a paused server is noticed within the connect
//! timeout), and when the connection breaks it reconnects with the backend's jittered
//! backoff. The consumer sees [`SubscriptionEvent::Lost`] when the subscription drops and
//! [`SubscriptionEvent::Subscribed`] each time it is (re)established: anything published in
//! between was missed, so a consumer catches up on `Subscribed` (re-reads the state, drops
//! what it may have missed).
//!
//! On Redis Cluster, channels are sharded (`SSUBSCRIBE` / `SPUBLISH`, Redis 7): a channel
//! lives on the primary that owns its hash slot. The subscription connects to that primary
//! alone (RESP3 pushes), so a hung or dead other primary does not keep it from being
//! established; it follows slot moves (the node unsubscribes it, or the backend's topology
//! names a new owner) by subscribing again where the slot is.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::route::Route;
use super::{Mode, RedisBackend, jitter};
use crate::error::Result;
use crate::keyspace::hash_slot;

/// How often a subscription checks its connection.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// What a [`Subscription`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// The subscription is established: the first time, and again after each
    /// [`SubscriptionEvent::Lost`]. Messages published while it was lost were missed.
    Subscribed,
    /// A message published on the channel.
    Message(Vec<u8>),
    /// The subscription's connection broke; it is being re-established with backoff.
    Lost,
}

/// Messages of one channel, for as long as this value lives (dropping it unsubscribes).
#[derive(Debug)]
pub struct Subscription {
    channel: Arc<str>,
    events: mpsc::Receiver<SubscriptionEvent>,
    task: tokio::task::JoinHandle<()>,
    backend: RedisBackend,
}

impl Subscription {
    /// The next event. The subscription's task runs on the runtime it was made on; when that
    /// runtime has shut down, the task is started again on the caller's, which hears
    /// [`SubscriptionEvent::Lost`] first (what was published meanwhile was missed). `None`
    /// only outside a runtime, after the task ended.
    pub async fn next(&mut self) -> Option<SubscriptionEvent> {
        match self.events.recv().await {
            Some(event) => Some(event),
            None => {
                tokio::runtime::Handle::try_current().ok()?;
                *self = self.backend.subscribe(self.channel.clone());
                Some(SubscriptionEvent::Lost)
            }
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RedisBackend {
    /// Subscribes to `channel` (sharded on Redis Cluster, `SSUBSCRIBE`).
    ///
    /// The subscription has its own connection, checked with a `PING` every second, and is
    /// re-established with the backend's jittered backoff whenever it breaks. The consumer
    /// hears [`SubscriptionEvent::Lost`] when it drops and [`SubscriptionEvent::Subscribed`]
    /// each time it is (re)established: messages published in between were missed, so a
    /// consumer catches up (re-reads its state) on every `Subscribed`.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// ```no_run
    /// # async fn f(backend: omega_core::redis::RedisBackend) {
    /// use omega_core::redis::SubscriptionEvent;
    ///
    /// let mut events = backend.subscribe("omega:{cache}:invalidations");
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         SubscriptionEvent::Message(payload) => println!("{payload:?}"),
    ///         SubscriptionEvent::Subscribed => println!("catch up on what was missed"),
    ///         SubscriptionEvent::Lost | _ => println!("until it is back, trust nothing cached"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn subscribe(&self, channel: impl Into<Arc<str>>) -> Subscription {
        let channel: Arc<str> = channel.into();
        let (tx, events) = mpsc::channel(256);
        let task = tokio::spawn(keep_subscribed(self.clone(), channel.clone(), tx));
        Subscription {
            channel,
            events,
            task,
            backend: self.clone(),
        }
    }

    /// Publishes `payload` on `channel` (`SPUBLISH` on Redis Cluster, where the channel's
    /// slot decides which node carries it); returns how many subscribers received it (on a
    /// cluster, those of that node).
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<u64> {
        let command = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        self.query(redis::cmd(command).arg(channel).arg(payload))
            .await
    }
}

/// The subscription task: (re)connects until the consumer is gone.
async fn keep_subscribed(
    backend: RedisBackend,
    channel: Arc<str>,
    tx: mpsc::Sender<SubscriptionEvent>,
) {
    let cfg = backend.shared.ctx.cfg.clone();
    let mut backoff = cfg.backoff_min;
    loop {
        let connected = if backend.is_cluster() {
            cluster_session(&backend, &channel, &tx).await
        } else {
            single_session(&backend, &channel, &tx).await
        };
        if tx.is_closed() {
            return;
        }
        if connected {
            backoff = cfg.backoff_min;
            if tx.send(SubscriptionEvent::Lost).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// One standalone connection's life; `true` if the consumer was last told `Subscribed` (so it
/// must hear `Lost`).
async fn single_session(
    backend: &RedisBackend,
    channel: &str,
    tx: &mpsc::Sender<SubscriptionEvent>,
) -> bool {
    let Mode::Single(node) = &backend.shared.mode else {
        return false;
    };
    let client = node.client();
    let connect_timeout = backend.shared.ctx.cfg.connect_timeout;
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let Ok(Ok(pubsub)) = tokio::time::timeout(connect_timeout, attempt).await else {
        return false;
    };
    if tx.send(SubscriptionEvent::Subscribed).await.is_err() {
        return true;
    }
    let (mut sink, mut stream) = pubsub.split();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    loop {
        tokio::select! {
            message = futures_util::StreamExt::next(&mut stream) => {
                let Some(message) = message else { return true };
                let payload = message.get_payload_bytes().to_vec();
                if tx.send(SubscriptionEvent::Message(payload)).await.is_err() {
                    return true;
                }
            }
            _ = keepalive.tick() => {
                let ping = sink.ping::<Value>();
                if !matches!(tokio::time::timeout(connect_timeout, ping).await, Ok(Ok(_))) {
                    return true;
                }
            }
            () = tx.closed() => return true,
        }
    }
}

/// One sharded subscription's life on a cluster: a RESP3 connection of its own to the primary
/// that owns the channel's slot (from the backend's topology), so the other primaries' state
/// does not matter; `true` if the consumer was last told `Subscribed`. It ends when the
/// connection breaks or stops answering the keepalive `PING`, when the node unsubscribes it
/// (its slot moved away), or when the topology names another owner; the next session
/// subscribes where the slot is then.
async fn cluster_session(
    backend: &RedisBackend,
    channel: &str,
    tx: &mpsc::Sender<SubscriptionEvent>,
) -> bool {
    let Mode::Cluster(cluster) = &backend.shared.mode else {
        return false;
    };
    let ctx = &backend.shared.ctx;
    let timeout = ctx.cfg.connect_timeout;
    let route = Route::Slot(hash_slot(channel.as_bytes()));
    let Some(node) = cluster.node_for(route) else {
        ctx.refresh.notify_one();
        return false;
    };
    let info = node.client().get_connection_info().clone();
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(resp3);
    let (push_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let attempt = async {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None)
            .set_push_sender(push_tx);
        let mut conn = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        // SSUBSCRIBE is confirmed by a push; the PING after it is the reply the pipeline waits
        // for, unless SSUBSCRIBE itself fails (MOVED: the topology is stale).
        let mut subscribe = redis::pipe();
        subscribe.cmd("SSUBSCRIBE").arg(channel).cmd("PING");
        let reply = conn.req_packed_commands(&subscribe, 0, 1).await?;
        if let Some(Value::ServerError(e)) = reply.first() {
            return Err(redis::RedisError::from(e.clone()));
        }
        loop {
            match pushes.recv().await.map(|p| p.kind) {
                Some(PushKind::SSubscribe) => return Ok(conn),
                Some(_) => continue,
                None => return Err(redis::RedisError::from((redis::ErrorKind::Io, "closed"))),
            }
        }
    };
    let mut conn = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(conn)) => conn,
        _ => {
            ctx.refresh.notify_one();
            return false;
        }
    };
    if tx.send(SubscriptionEvent::Subscribed).await.is_err() {
        return true;
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return true };
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let Some(Value::BulkString(b)) = push.data.get(1) else { continue };
                        if tx.send(SubscriptionEvent::Message(b.clone())).await.is_err() {
                            return true;
                        }
                    }
                    // The slot moved away, or the connection closed.
                    PushKind::SUnsubscribe | PushKind::Disconnection => {
                        ctx.refresh.notify_one();
                        return true;
                    }
                    _ => {}
                }
            }
            _ = keepalive.tick() => {
                let ping = redis::cmd("PING");
                let ping = ping.query_async::<Value>(&mut conn);
                let alive = matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_)));
                let moved = cluster.node_for(route).is_some_and(|n| !Arc::ptr_eq(&n, &node));
                if !alive || moved {
                    return true;
                }
            }
            () = tx.closed() => return true,
        }
    }
}
