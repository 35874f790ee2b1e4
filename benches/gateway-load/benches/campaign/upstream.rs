//! Upstream nodes the campaign controls: they count what reaches them, fail on demand, serve a
//! versioned cacheable body, and can be killed and started again on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What every node shares with the campaign.
#[derive(Debug, Default)]
pub(crate) struct NodeState {
    /// Requests that reached the node.
    pub(crate) hits: AtomicU64,
    /// Answer `/api` requests with 500 (a failing node, for the breaker).
    pub(crate) failing: AtomicBool,
    /// The version the node's `/cached` body carries; bumped to see a purge arrive.
    pub(crate) version: AtomicU64,
}

/// One node: an accept loop and its connections, all in one `JoinSet` so that killing the node
/// closes every socket at once, as a crashed process would.
pub(crate) struct Node {
    pub(crate) id: &'static str,
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<NodeState>,
    tasks: Option<JoinSet<()>>,
}

impl Node {
    /// Starts a node on a free loopback port.
    pub(crate) async fn start(id: &'static str) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(NodeState::default());
        let tasks = Some(serve(listener, id, state.clone()));
        Node {
            id,
            addr,
            state,
            tasks,
        }
    }

    /// The node's URL for a gateway's pool.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the node: its listener and every open connection close.
    pub(crate) fn kill(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.abort_all();
            // Dropping aborted tasks drops their sockets on the next runtime turn.
            drop(tasks);
        }
    }

    /// Starts the node again on its port (within a tokio runtime).
    pub(crate) fn restart(&mut self) {
        self.kill();
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        self.tasks = Some(serve(listener, self.id, self.state.clone()));
    }
}

fn serve(listener: TcpListener, id: &'static str, state: Arc<NodeState>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            connections.spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(id, &state, &req)) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            // Reap finished connections so the set stays small.
            while connections.try_join_next().is_some() {}
        }
    });
    tasks
}

fn answer(
    id: &str,
    state: &NodeState,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    state.hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    if path.starts_with("/cached") {
        let version = state.version.load(Ordering::Relaxed);
        return Response::builder()
            .header("cache-control", "max-age=600")
            .header("surrogate-key", "campaign-items")
            .body(Full::new(Bytes::from(format!("v{version}"))))
            .unwrap();
    }
    if path.starts_with("/api") && state.failing.load(Ordering::Relaxed) {
        return Response::builder()
            .status(500)
            .body(Full::new(Bytes::from_static(b"failing\n")))
            .unwrap();
    }
    Response::new(Full::new(Bytes::from(format!("ok from {id}\n"))))
}
