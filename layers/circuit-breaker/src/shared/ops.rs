//! What an instance does in Redis: vote, publish, recover, clear, read an OPEN key. One script
//! or command each, on one node of a cluster (a breaker's vote set and OPEN key share its
//! hash tag).

use std::sync::atomic::Ordering;
use std::time::Duration;

use omega_core::redis::Script;

use super::SyncInner;

/// Votes, and stores the OPEN key once the quorum is reached.
///
/// KEYS: the vote set, the OPEN key. ARGV: this instance's id, the vote window (ms), the
/// quorum, the OPEN wait (ms), the token naming this opening.
///
/// While the OPEN key exists the circuit is already open everywhere: the vote is not recorded
/// (0). Below the quorum: minus the number of votes. At the quorum: the key is stored with the
/// token and the wait as its TTL, and the votes are consumed (an opening needs a fresh quorum
/// after the last one: a vote left from an earlier outage never re-opens anyone); the number of
/// votes is returned. The caller publishes the opening after it (on a cluster the channel's
/// slot is not the keys' slot).
pub(super) const VOTE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
  redis.call('DEL', KEYS[1])
  return n
end
return -n
";

/// A recovery: removes this instance's vote, and deletes the OPEN key only if it still holds
/// the opening this instance knew (compare and delete).
///
/// KEYS: the vote set, the OPEN key. ARGV: this instance's id, the token known ('' for none).
/// Returns 1 if the key was deleted.
pub(super) const RECOVERED: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('DEL', KEYS[2])
end
return 0
";

pub(super) fn scripts() -> (Script, Script) {
    (
        Script::new("circuit_breaker_vote", VOTE),
        Script::new("circuit_breaker_recovered", RECOVERED),
    )
}

/// The answer of a vote.
pub(super) enum Voted {
    /// This vote completed the quorum: the OPEN key holds the token; publish the opening.
    Quorum,
    /// Below the quorum, or the circuit is already open in Redis: nothing more to do.
    Counted,
}

impl SyncInner {
    pub(super) fn open_key(&self, name: &str) -> String {
        self.backend.keyspace().tagged(name, &["cb", "open"])
    }

    pub(super) fn votes_key(&self, name: &str) -> String {
        self.backend.keyspace().tagged(name, &["cb", "votes"])
    }

    /// Casts this instance's vote; `None` when Redis could not be reached.
    pub(super) async fn vote(&self, name: &str, wait: Duration, token: &str) -> Option<Voted> {
        let call = self
            .vote_script
            .call()
            .key(self.votes_key(name))
            .key(self.open_key(name))
            .arg(&self.instance)
            .arg(self.vote_window.as_millis().max(1) as u64)
            .arg(self.quorum)
            .arg(wait_ms(wait))
            .arg(token);
        match self.backend.eval::<i64>(&call).await {
            Ok(n) if n > 0 => Some(Voted::Quorum),
            Ok(_) => Some(Voted::Counted),
            Err(_) => None,
        }
    }

    /// Publishes an opening on the breakers' channel; `false` when Redis could not be reached.
    pub(super) async fn publish(&self, name: &str, wait: Duration, token: &str) -> bool {
        let message = format!("open|{}|{}|{}|{}", self.nonce, wait_ms(wait), token, name);
        let sent = self
            .backend
            .publish(&self.channel, message.as_bytes())
            .await
            .is_ok();
        if sent {
            self.published.fetch_add(1, Ordering::AcqRel);
        }
        sent
    }

    /// A recovery through successful probes; `false` when Redis could not be reached.
    pub(super) async fn recovered(&self, name: &str, token: Option<&str>) -> bool {
        let call = self
            .recovered_script
            .call()
            .key(self.votes_key(name))
            .key(self.open_key(name))
            .arg(&self.instance)
            .arg(token.unwrap_or(""));
        self.backend.eval::<i64>(&call).await.is_ok()
    }

    /// A manual close or reset: the operator's word ends the shared opening and drops every
    /// vote. `false` when Redis could not be reached.
    pub(super) async fn clear(&self, name: &str) -> bool {
        let mut cmd = omega_core::redis::cmd("DEL");
        cmd.arg(self.votes_key(name)).arg(self.open_key(name));
        self.backend.query::<i64>(&cmd).await.is_ok()
    }

    /// The OPEN key of `name`: the token it holds and what is left of its TTL, if it exists;
    /// `Err` when Redis did not answer.
    pub(super) async fn read_open(&self, name: &str) -> Result<Option<(String, Duration)>, ()> {
        let key = self.open_key(name);
        let mut pipe = omega_core::redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let (token, ms) = self
            .backend
            .pipeline::<(Option<String>, i64)>(&pipe)
            .await
            .map_err(|_| ())?;
        Ok(match token {
            Some(token) if ms > 0 => Some((token, Duration::from_millis(ms as u64))),
            _ => None,
        })
    }
}

fn wait_ms(wait: Duration) -> u64 {
    wait.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}
