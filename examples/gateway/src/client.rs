//! The pools' HTTP clients, one set per thread and pool: keep-alive HTTP/1.1 connections to
//! `http://` nodes ([`crate::pool`]: the gateway's own client, [`crate::wire`], for requests
//! without a body or with one of known length, hyper's connection API for the rest), and
//! hyper-util's pooled client for `https://` nodes, HTTP/2 nodes and health checks.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooled client to `http://` nodes.
pub type Client = HyperClient<HttpConnector, Body>;

/// A pooled client to `https://` nodes.
pub type TlsClient = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// A client with pooled keep-alive connections, waiting at most `connect_timeout` for a new
/// connection.
pub fn client(connect_timeout: Duration) -> Client {
    builder(omega_penta::config::Protocol::Http1).build(connector(connect_timeout))
}

fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector
}

fn builder(protocol: omega_penta::config::Protocol) -> hyper_util::client::legacy::Builder {
    let mut builder = HyperClient::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64);
    if protocol != omega_penta::config::Protocol::Http1 {
        builder
            .http2_only(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30));
    }
    builder
}

/// A pool's clients: one per thread that sends requests, so that a worker's requests go over
/// connections its own runtime drives (no cross-thread wake-up per request), each waiting at
/// most `connect_timeout` for a new connection. Clients to `https://` nodes are made (and the
/// roots they trust loaded) only when such a node gets a request.
pub struct Clients {
    connect_timeout: Duration,
    protocol: omega_penta::config::Protocol,
    ca: Option<std::path::PathBuf>,
    plain: thread_local::ThreadLocal<Client>,
    http1: crate::pool::Http1Pool,
    tls: thread_local::ThreadLocal<TlsClient>,
    tls_config: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("connect_timeout", &self.connect_timeout)
            .field("protocol", &self.protocol)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Clients {
    /// Clients speaking `protocol`, waiting at most `connect_timeout` for a connection,
    /// trusting `ca` (or the system's roots) for `https://` nodes.
    pub fn new(
        connect_timeout: Duration,
        protocol: omega_penta::config::Protocol,
        ca: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Clients {
            connect_timeout,
            protocol,
            ca,
            plain: thread_local::ThreadLocal::new(),
            http1: crate::pool::Http1Pool::new(connect_timeout),
            tls: thread_local::ThreadLocal::new(),
            tls_config: std::sync::OnceLock::new(),
        })
    }

    /// The keep-alive connections to `http://` nodes over HTTP/1.1, per worker thread: the
    /// proxy path's client for such nodes.
    pub fn http1(&self) -> &crate::pool::Http1Pool {
        &self.http1
    }

    /// This thread's client to `http://` nodes (the proxy path uses [`Clients::http1`] for
    /// HTTP/1.1 nodes).
    pub fn get(&self) -> &Client {
        self.plain
            .get_or(|| builder(self.protocol).build(connector(self.connect_timeout)))
    }

    /// The TLS settings for `https://` nodes (read once): an error when the pool's `tls.ca`
    /// cannot be read, or no root certificate is found.
    pub fn tls_config(&self) -> Result<&Arc<rustls::ClientConfig>, &str> {
        self.tls_config
            .get_or_init(|| crate::tls::client_config(self.ca.as_deref()))
            .as_ref()
            .map_err(String::as_str)
    }

    /// This thread's client to `https://` nodes.
    pub fn get_tls(&self) -> Result<&TlsClient, &str> {
        let config = self.tls_config()?;
        Ok(self.tls.get_or(|| {
            let mut http = connector(self.connect_timeout);
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((**config).clone())
                .https_only();
            let https = if self.http2() {
                https.enable_http2().wrap_connector(http)
            } else {
                https.enable_http1().wrap_connector(http)
            };
            builder(self.protocol).build(https)
        }))
    }

    /// Whether the nodes speak HTTP/2.
    pub fn http2(&self) -> bool {
        self.protocol != omega_penta::config::Protocol::Http1
    }
}
