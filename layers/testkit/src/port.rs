//! Free loopback ports, never handed out twice in one process.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, MutexGuard};

/// Ports handed out earlier in this process (tests run in parallel threads).
static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn used() -> MutexGuard<'static, Option<HashSet<u16>>> {
    USED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ephemeral_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("cannot bind a loopback TCP port: {err}"))
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Returns a free loopback TCP port that no earlier call in this process returned.
///
/// The port is free when this returns; bind it soon, another process may take it.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = ephemeral_port();
        let mut used = used();
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback TCP port in 1000 attempts");
}

/// Returns a free port `p` such that `p + 10000` (the Redis Cluster bus port) is free too;
/// both are reserved.
pub(crate) fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = ephemeral_port();
        let Some(bus) = port.checked_add(10_000) else {
            continue;
        };
        let mut used = used();
        let used = used.get_or_insert_with(HashSet::new);
        if used.contains(&port) || used.contains(&bus) || !is_free(bus) {
            continue;
        }
        used.insert(port);
        used.insert(bus);
        return port;
    }
    panic!("could not find a free loopback TCP port pair (p, p + 10000) in 1000 attempts");
}
