//! Built-in demo upstream nodes, for the embedded default and for trying the gateway out.
//!
//! A demo node answers every request with a small JSON document naming itself, the method,
//! the path and the forwarding headers it received. A request with `x-demo-fail: 1` gets a
//! 500, so that a node's circuit can be opened on purpose. Paths under `/slow` take 300 ms
//! and may be cached for 30 s (`Cache-Control: public, max-age=30`): the demo's cached route.
//! The [`accounts`] node is the demo's event-sourced service.

pub mod accounts;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};

/// A running demo node.
#[derive(Debug)]
pub struct DemoNode {
    /// Its id.
    pub id: String,
    /// Its address.
    pub addr: SocketAddr,
}

impl DemoNode {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts a demo node named `id` on a free loopback port.
pub async fn start(id: &str) -> std::io::Result<DemoNode> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name = id.to_owned();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let name = name.clone();
        async move { answer(&name, req).await }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(DemoNode {
        id: id.to_owned(),
        addr,
    })
}

/// How long a `/slow` answer takes.
pub const SLOW: Duration = Duration::from_millis(300);

async fn answer(node: &str, req: Request<Body>) -> Response<Body> {
    let slow = crate::proxy::matches("/slow", req.uri().path());
    if slow {
        tokio::time::sleep(SLOW).await;
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fail = header("x-demo-fail").as_deref() == Some("1");
    let generated_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let doc = serde_json::json!({
        "node": node,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "x-forwarded-for": header("x-forwarded-for"),
        "forwarded": header("forwarded"),
        "generated_at_ms": generated_at,
    });
    let mut response = Response::new(Body::from(format!("{doc}\n")));
    if fail {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    } else if slow {
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=30"),
        );
    }
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
