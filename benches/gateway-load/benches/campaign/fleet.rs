//! What the campaign runs: the shared Redis (one server, or the 3-node harness cluster), each
//! node behind a fault proxy, and the gateway processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use omega_testkit::http::{RawResponse, get, request};
use omega_testkit::{FaultProxy, RedisCluster, RedisServer, free_port};
use tokio::time::Instant;

/// The token of every gateway's admin API in the campaign.
pub(crate) const ADMIN_TOKEN: &str = "campaign";

/// The Redis the gateways share; faults go to one server (the single one, or the cluster's
/// first node).
pub(crate) enum SharedRedis {
    Single {
        server: RedisServer,
        proxy: FaultProxy,
    },
    Cluster {
        cluster: RedisCluster,
        proxies: Vec<FaultProxy>,
    },
}

impl SharedRedis {
    pub(crate) async fn single() -> SharedRedis {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr()).await;
        SharedRedis::Single { server, proxy }
    }

    /// The 3-node harness cluster; each node announces its proxy's port, so the gateways'
    /// cluster clients keep going through the proxies.
    pub(crate) async fn cluster() -> SharedRedis {
        let cluster = tokio::task::block_in_place(RedisCluster::start);
        let mut proxies = Vec::new();
        for (i, node) in cluster.nodes().iter().enumerate() {
            let proxy = FaultProxy::start(node.addr()).await;
            tokio::task::block_in_place(|| cluster.announce_port(i, proxy.addr().port()));
            proxies.push(proxy);
        }
        SharedRedis::Cluster { cluster, proxies }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            SharedRedis::Single { .. } => "one Redis",
            SharedRedis::Cluster { .. } => "3-node Redis Cluster",
        }
    }

    /// The URL the gateways are given.
    pub(crate) fn url(&self) -> String {
        match self {
            SharedRedis::Single { proxy, .. } => proxy.url(),
            SharedRedis::Cluster { proxies, .. } => {
                let seeds: Vec<String> = proxies.iter().map(|p| p.addr().to_string()).collect();
                format!("redis+cluster://{}", seeds.join(","))
            }
        }
    }

    fn server(&self) -> &RedisServer {
        match self {
            SharedRedis::Single { server, .. } => server,
            SharedRedis::Cluster { cluster, .. } => &cluster.nodes()[0],
        }
    }

    fn proxy(&self) -> &FaultProxy {
        match self {
            SharedRedis::Single { proxy, .. } => proxy,
            SharedRedis::Cluster { proxies, .. } => &proxies[0],
        }
    }

    pub(crate) fn pause(&self) {
        self.server().pause();
    }

    pub(crate) fn resume(&self) {
        self.server().resume();
    }

    pub(crate) fn kill(&mut self) {
        match self {
            SharedRedis::Single { server, .. } => server.kill(),
            SharedRedis::Cluster { cluster, .. } => cluster.nodes_mut()[0].kill(),
        }
    }

    /// Starts the killed server again (a cluster node rejoins and announces its proxy again).
    pub(crate) fn restart(&mut self) {
        tokio::task::block_in_place(|| match self {
            SharedRedis::Single { server, .. } => server.restart(),
            SharedRedis::Cluster { cluster, proxies } => {
                cluster.nodes_mut()[0].restart();
                cluster.announce_port(0, proxies[0].addr().port());
            }
        });
    }

    /// The network to the server swallows every byte (connections stay open, nothing answers).
    pub(crate) fn cut(&self) {
        self.proxy().blackhole();
    }

    pub(crate) fn heal(&self) {
        self.proxy().pass();
    }
}

/// One gateway process, killed when dropped.
pub(crate) struct Gateway {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    child: Option<Child>,
}

impl Gateway {
    /// Writes `config` (with this gateway's listen and admin addresses) to `dir` and starts
    /// the binary on it; returns once its admin API answers.
    pub(crate) async fn start(
        binary: &Path,
        dir: &Path,
        index: usize,
        mut config: serde_json::Value,
    ) -> Gateway {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        config["listen"] = addr.to_string().into();
        config["admin"] = admin.to_string().into();
        let file = dir.join(format!("gateway-{index}.json"));
        std::fs::write(&file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join(format!("gateway-{index}.log"))).unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg("--config")
            .arg(&file)
            .env("OMEGA_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        // Killed with the campaign, even when it is interrupted.
        let child = omega_testkit::spawn_long_lived(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let gateway = Gateway {
            addr,
            admin,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !get(admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
        {
            assert!(
                Instant::now() < deadline,
                "gateway {index} did not start; its log: {}",
                std::fs::read_to_string(dir.join(format!("gateway-{index}.log")))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway
    }

    /// SIGKILL, as a crash.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Resident memory of the process, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let Some(child) = &self.child else { return 0 };
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// `GET` on the admin API, as JSON.
    pub(crate) async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = get(self.admin, path, &[]).await.unwrap();
        serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null)
    }

    /// A mutation on the admin API, with the token.
    pub(crate) async fn admin_call(&self, method: &str, path: &str, body: &str) -> RawResponse {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let mut headers = vec![("authorization", bearer.as_str())];
        if !body.is_empty() {
            headers.push(("content-type", "application/json"));
        }
        request(self.admin, method, path, &headers, body.as_bytes())
            .await
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The gateway binary: `OMEGA_GATEWAY_BIN`, else the release build in the target directory.
pub(crate) fn gateway_binary() -> PathBuf {
    if let Ok(path) = std::env::var("OMEGA_GATEWAY_BIN") {
        return path.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_owned());
    let path = PathBuf::from(target).join("release/omega-gateway");
    assert!(
        path.exists(),
        "no gateway binary at {}: run `cargo build --release -p omega-gateway` first (scripts/campaign.sh does), or set OMEGA_GATEWAY_BIN",
        path.display()
    );
    path
}
