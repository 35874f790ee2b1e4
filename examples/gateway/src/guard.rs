//! Who may use the admin API.
//!
//! - **A bearer token for every change.** Any method but `GET`, `HEAD` and `OPTIONS` needs
//!   `Authorization: Bearer <token>`; reads (`/metrics`, `/breakers`, ...) stay open for
//!   scrapers and probes. The token is `OMEGA_ADMIN_TOKEN`, `admin_api.token`, or one
//!   generated at start and written to a file only its user can read (as Jupyter does); a
//!   generated token needs the admin API on loopback, and a gateway told to listen elsewhere
//!   without a token refuses to start.
//! - **No DNS rebinding.** A request whose `Host` is a name other than `localhost` (a page on
//!   `evil.example` whose name now resolves to 127.0.0.1) gets 421: the admin API answers to
//!   its addresses only.
//! - **No SSRF through new nodes.** A node added through the API must be on a host the file
//!   names (`admin_api.node_hosts`, by default the hosts of the file's pools): nobody can send
//!   user traffic to a metadata endpoint.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::middleware::Next;
use http::header::{AUTHORIZATION, HOST, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use omega_penta::config::ConfigError;

use crate::GatewayError;
use crate::config::GatewayConfig;

/// The environment variable that gives the admin token.
pub const TOKEN_ENV: &str = "OMEGA_ADMIN_TOKEN";

/// The admin token, and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct AdminToken {
    pub(crate) token: Arc<str>,
    /// The file a generated token was written to.
    pub(crate) file: Option<PathBuf>,
}

/// The token the admin API listening on `admin` accepts: from the environment, the file's
/// `admin_api.token`, or generated and written to a file readable by this user only.
pub(crate) fn admin_token(
    config: &GatewayConfig,
    admin: SocketAddr,
) -> Result<AdminToken, GatewayError> {
    let given = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| config.admin_api.token.clone());
    if let Some(token) = given {
        return Ok(AdminToken {
            token: token.into(),
            file: None,
        });
    }
    if !admin.ip().is_loopback() {
        return Err(GatewayError::Config(ConfigError::new(
            "admin_api.token",
            format!(
                "the admin API listens on {admin}, off loopback, with no token: set \
                 admin_api.token or {TOKEN_ENV}, or listen on 127.0.0.1"
            ),
        )));
    }
    let token: String = (0..24)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let file = config.admin_api.token_file.clone().unwrap_or_else(|| {
        std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("omega-gateway-{}.token", admin.port()))
    });
    write_private(&file, &token).map_err(|e| GatewayError::Io(file.clone(), e))?;
    Ok(AdminToken {
        token: token.into(),
        file: Some(file),
    })
}

/// Writes `text` to a new file at `path` that only this user may read. An existing file is
/// removed first, so a file (or a link) planted there by someone else is never written through.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")
}

/// The hosts nodes added through the admin API may point at: `admin_api.node_hosts`, or the
/// hosts of the file's pools. Lower case, IPv6 without brackets.
pub(crate) fn allowed_node_hosts(config: &GatewayConfig) -> Vec<String> {
    if let Some(hosts) = &config.admin_api.node_hosts {
        return hosts.iter().map(|h| normal_host(h)).collect();
    }
    let mut hosts: Vec<String> = config
        .stack
        .upstreams
        .values()
        .flat_map(|up| up.nodes.iter())
        .filter_map(|n| n.url.parse::<http::Uri>().ok())
        .filter_map(|u| u.host().map(normal_host))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

fn normal_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Whether a node at `url` may be added: its host is allowed.
pub(crate) fn node_allowed(allowed: &[String], url: &http::Uri) -> bool {
    url.host()
        .map(normal_host)
        .is_some_and(|h| allowed.contains(&h))
}

/// The admin API's checks, before any handler: `Host`, then the token for a change.
pub(crate) async fn check(
    State(token): State<Arc<str>>,
    req: Request<Body>,
    next: Next,
) -> Response<Body> {
    if !host_is_an_address(&req) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "the admin API answers to its addresses only (Host: an IP address or localhost)",
        );
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads && !bearer_matches(&req, &token) {
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "changes need Authorization: Bearer <the admin token>",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"omega-gateway admin\""),
        );
        return r;
    }
    next.run(req).await
}

/// `Host` (or the URI's authority) is absent, an IP address or `localhost`, with any port.
fn host_is_an_address(req: &Request<Body>) -> bool {
    let host = match req.headers().get(HOST) {
        Some(v) => match v.to_str() {
            Ok(h) => h,
            Err(_) => return false,
        },
        None => match req.uri().host() {
            Some(h) => h,
            None => return true,
        },
    };
    let name = match host.strip_prefix('[') {
        // `[::1]:9090`
        Some(rest) => match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(req: &Request<Body>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refuse(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> Request<Body> {
        Request::builder()
            .header(HOST, host)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn host_names_other_than_localhost_are_not_the_admin_api() {
        for ok in [
            "127.0.0.1:9090",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9090",
            "10.0.0.7",
        ] {
            assert!(host_is_an_address(&with_host(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "127.0.0.1.nip.io",
            "[::1",
        ] {
            assert!(!host_is_an_address(&with_host(bad)), "{bad}");
        }
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let req = |v: &str| {
            Request::builder()
                .header(AUTHORIZATION, v)
                .body(Body::empty())
                .unwrap()
        };
        assert!(bearer_matches(&req("Bearer abc"), "abc"));
        assert!(bearer_matches(&req("bearer abc"), "abc"));
        assert!(!bearer_matches(&req("Bearer abd"), "abc"));
        assert!(!bearer_matches(&req("Bearer ab"), "abc"));
        assert!(!bearer_matches(&req("Basic abc"), "abc"));
    }
}
