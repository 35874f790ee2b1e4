//! A local 3-node Redis Cluster.

use std::time::{Duration, Instant};

use crate::port::free_cluster_port;
use crate::redis::{RedisServer, require_redis_server, run_cli};

/// How long the cluster may take to reach `cluster_state:ok` after `--cluster create`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The command line of every node.
const NODE_ARGS: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
];

/// A local Redis Cluster of 3 masters and no replicas (more with
/// [`add_node`](Self::add_node)), each node a [`RedisServer`] in its own directory. Dropping it
/// kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts 3 nodes (`--cluster-enabled yes --cluster-node-timeout 2000`, on ports `p` whose
    /// bus port `p + 10000` is free too), joins them with
    /// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`, and waits until every
    /// node reports `cluster_state:ok` with all 16384 slots assigned and 3 known nodes.
    ///
    /// # Panics
    ///
    /// If Redis is not installed, or the cluster does not form within about 20 s (the message
    /// includes the nodes' log tails).
    pub fn start() -> RedisCluster {
        require_redis_server();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_on(free_cluster_port, &NODE_ARGS))
            .collect();
        let cluster = RedisCluster { nodes };

        let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr().to_string()).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = run_cli(&create);
        if !out.status.success() {
            panic!(
                "`redis-cli {}` failed ({}):\n{}\n{}\n{}",
                create.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                cluster.log_tails()
            );
        }

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let infos: Vec<String> = cluster.nodes.iter().map(cluster_info).collect();
            if infos.iter().all(|info| is_ready(info)) {
                return cluster;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the Redis Cluster on {addrs:?} did not reach cluster_state:ok within {} s; \
                     CLUSTER INFO per node:\n{}\n{}",
                    READY_TIMEOUT.as_secs(),
                    infos.join("\n---\n"),
                    cluster.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes, so a test can kill, pause or restart one.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably (for [`RedisServer::kill`] and [`RedisServer::restart`]).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Starts one more node like the others, joins it to the cluster (`CLUSTER MEET`) as a
    /// primary without slots, waits until every node knows it and reports `cluster_state:ok`
    /// (a node answers `CLUSTERDOWN` for about 2 s after it starts), and returns its index. A
    /// test then moves slots to it (`CLUSTER SETSLOT`, `MIGRATE`) to show a client a node its
    /// topology does not know yet.
    ///
    /// # Panics
    ///
    /// If the node does not start, or the others do not know it within about 20 s.
    pub fn add_node(&mut self) -> usize {
        let node = RedisServer::start_on(free_cluster_port, &NODE_ARGS);
        let seed = self.nodes[0].port().to_string();
        node.cli(&["CLUSTER", "MEET", "127.0.0.1", &seed]);
        self.nodes.push(node);
        let known = self.nodes.len().to_string();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let infos: Vec<String> = self.nodes.iter().map(cluster_info).collect();
            let all_know = infos.iter().all(|info| {
                let has = |want: &str| info.lines().any(|l| l.trim() == want);
                has(&format!("cluster_known_nodes:{known}")) && has("cluster_state:ok")
            });
            if all_know {
                return self.nodes.len() - 1;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the new node was not known to every node within {} s; CLUSTER INFO per \
                     node:\n{}\n{}",
                    READY_TIMEOUT.as_secs(),
                    infos.join("\n---\n"),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes node `index` tell clients to reach it on `port` (`CONFIG SET
    /// cluster-announce-port`), for example the port of a [`FaultProxy`](crate::FaultProxy) in
    /// front of it, so a cluster client that discovers the topology keeps going through the
    /// proxy. The cluster bus keeps the node's real bus port. Waits until every node's
    /// `CLUSTER SLOTS` names the new port (gossip spreads it within about a second).
    ///
    /// The setting is not persisted: a [restarted](RedisServer::restart) node announces its
    /// real port again.
    ///
    /// # Panics
    ///
    /// If `redis-cli` fails, or the nodes do not agree within about 20 s.
    pub fn announce_port(&self, index: usize, port: u16) {
        let node = &self.nodes[index];
        node.cli(&["CONFIG", "SET", "cluster-announce-port", &port.to_string()]);
        let needle = format!("\n{port}\n");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let seen = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .all(|n| format!("\n{}\n", n.cli(&["CLUSTER", "SLOTS"])).contains(&needle));
            if seen {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {} announces port {port}, but not every node's CLUSTER SLOTS says so \
                     within {} s",
                    node.addr(),
                    READY_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed URLs, one `redis://127.0.0.1:<port>` per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- log of node {} ---\n{}", n.addr(), n.log_tail(20)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn cluster_info(node: &RedisServer) -> String {
    let port = node.port().to_string();
    let out = run_cli(&["-h", "127.0.0.1", "-p", &port, "CLUSTER", "INFO"]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn is_ready(info: &str) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("cluster_state") == Some("ok")
        && field("cluster_slots_assigned") == Some("16384")
        && field("cluster_slots_ok") == Some("16384")
        && field("cluster_known_nodes") == Some("3")
}
