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
//! lives on the node that owns its hash slot, and the subscription follows slot moves and
//! reconnects through redis-rs's cluster connection (RESP3 pushes).

use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{RedisBackend, jitter};
use crate::error::Result;

/// How often a standalone subscription checks its connection.
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
}

impl Subscription {
    /// The next event; `None` only if the subscription task ended (it ends when the runtime
    /// shuts down).
    pub async fn next(&mut self) -> Option<SubscriptionEvent> {
        self.events.recv().await
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
    let cfg = backend.shared.cfg.clone();
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
    let super::Connector::Single(client) = &backend.shared.connector else {
        return false;
    };
    let connect_timeout = backend.shared.cfg.connect_timeout;
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

/// One cluster connection's life (RESP3 pushes, sharded channel); `true` if the consumer was
/// last told `Subscribed`. A session whose connection stays unsubscribed for a few seconds
/// (redis-rs did not re-subscribe) ends, and a fresh one starts.
async fn cluster_session(
    backend: &RedisBackend,
    channel: &str,
    tx: &mpsc::Sender<SubscriptionEvent>,
) -> bool {
    let cfg = &backend.shared.cfg;
    let (push_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let client = redis::cluster::ClusterClient::builder(cfg.seeds().iter().map(String::as_str))
        .connection_timeout(cfg.connect_timeout)
        .response_timeout(cfg.connect_timeout)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .build();
    let Ok(client) = client else { return false };
    let attempt = async {
        let mut conn = client.get_async_connection().await?;
        conn.ssubscribe(channel).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    let Ok(Ok(mut conn)) = tokio::time::timeout(cfg.connect_timeout, attempt).await else {
        return false;
    };
    let mut subscribed = false;
    let mut unsubscribed_since = Some(tokio::time::Instant::now());
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return subscribed };

                let event = match push.kind {
                    PushKind::SMessage | PushKind::Message => match push.data.get(1) {
                        Some(Value::BulkString(b)) => SubscriptionEvent::Message(b.clone()),
                        _ => continue,
                    },
                    PushKind::SSubscribe | PushKind::Subscribe => SubscriptionEvent::Subscribed,
                    // The cluster connection re-subscribes by itself once the node is back.
                    PushKind::Disconnection if subscribed => SubscriptionEvent::Lost,
                    _ => continue,
                };
                match event {
                    SubscriptionEvent::Subscribed => {
                        subscribed = true;
                        unsubscribed_since = None;
                    }
                    SubscriptionEvent::Lost => {
                        subscribed = false;
                        unsubscribed_since = Some(tokio::time::Instant::now());
                    }
                    SubscriptionEvent::Message(_) => {}
                }
                if tx.send(event).await.is_err() {
                    return true;
                }
            }
            _ = keepalive.tick() => {
                // A command through the connection makes it notice a dead node (and reconnect
                // and re-subscribe). `EXISTS channel` reads nothing of ours: it is routed by
                // the channel's slot (keys and shard channels hash alike) to the channel's node.
                let mut probe = redis::cmd("EXISTS");
                probe.arg(channel);
                let ping = probe.query_async::<Value>(&mut conn);
                let alive = matches!(tokio::time::timeout(cfg.connect_timeout, ping).await, Ok(Ok(_)));
                if !alive && subscribed {
                    subscribed = false;
                    unsubscribed_since = Some(tokio::time::Instant::now());
                    if tx.send(SubscriptionEvent::Lost).await.is_err() {
                        return true;
                    }
                }
                if unsubscribed_since.is_some_and(|t| t.elapsed() > 5 * KEEPALIVE) {
                    return false;
                }
            }
            () = tx.closed() => return true,
        }
    }
}
