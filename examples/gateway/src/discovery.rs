//! A pool's node discovery (`discover` on a pool): the shard router's registry in Redis is read
//! every `poll`, and what changed goes into the pool's shared shard map, so every gateway over
//! that Redis follows. Announced nodes join once seen alive in `stable_polls` reads in a row and
//! leave when their heartbeat stops; the file's nodes stay. `omega-gateway announce` announces a
//! service that is not written in Rust.

use std::sync::Arc;

use omega_penta::config::Discover;
use omega_penta::shard_router::redis::RedisTopology;
use omega_penta::shard_router::redis::registry::{Damper, Registry};

/// The discovery task of a pool; it stops when dropped.
#[derive(Debug)]
pub(crate) struct Discovery(tokio::task::JoinHandle<()>);

impl Discovery {
    /// Follows `registry` into `stored`, keeping the nodes `keep` (the file's).
    pub(crate) fn spawn(
        pool: &str,
        registry: Registry,
        stored: RedisTopology,
        discover: &Discover,
        keep: Vec<Arc<str>>,
    ) -> Self {
        let mut damper = Damper::managing_all_but(discover.stable_polls, keep);
        let poll = discover.poll.0;
        let pool = pool.to_owned();
        Discovery(tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Redis down: nothing is known, so nothing changes.
                let Ok(live) = registry.live().await else {
                    continue;
                };
                let changes = damper.changes(&live, &stored.handle().load());
                if changes.is_empty() {
                    continue;
                }
                match stored.apply(&changes).await {
                    Ok(_) => {
                        damper.applied(&changes);
                        eprintln!("omega-gateway: {pool}: discovered {changes:?}");
                    }
                    // Another gateway made the same change first: read again next time.
                    Err(e) => eprintln!("omega-gateway: {pool}: discovery not applied: {e}"),
                }
            }
        }))
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.0.abort();
    }
}
