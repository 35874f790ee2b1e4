//! Keep-alive HTTP/1.1 connections to `http://` nodes, per worker thread, on hyper's
//! connection API.
//!
//! Each worker thread serves its connections on its own single-threaded runtime (see
//! `serve.rs`), so each keeps its own idle connections per node (`idle.rs`), and the
//! connection's task runs on the same runtime as the request. This is
//! what hyper-util's pooled client does for us, minus what a proxy does not need per request:
//! its boxed response future (about 3 KB), its pool's key and checkout machinery and the
//! connection metadata it adds to every request's extensions.
//!
//! A connection goes back to its thread's list as soon as the request is handed to it, and is
//! taken again only once hyper says it is ready for the next request (the previous response's
//! body has been read). A request that a pooled connection could not even send — the node
//! closed it while idle — goes again over a new connection, as hyper-util's client does. TLS
//! and HTTP/2 nodes keep hyper-util's client.
//!
//! Requests without a body or with a body of known length go another way, through the
//! gateway's own HTTP/1.1 client ([`crate::wire`], [`Http1Pool::send_own`]), with connections
//! of their own; this one carries chunked uploads and protocol switches.

use std::time::Duration;

use axum::body::Body;
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::idle::{IdleLists, Usable};

/// A request that got no response from the node.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made within the pool's connect timeout: nothing was sent.
    Connect(std::io::Error),
    /// The connection failed while sending the request or waiting for the response head.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Http(e) => Some(e),
        }
    }
}

/// The idle connections of one pool's nodes, one list per worker thread and node.
pub struct Http1Pool {
    connect_timeout: Duration,
    wire: std::sync::Arc<crate::wire::Idle>,
    idle: IdleLists<SendRequest<Body>>,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    /// A pool waiting at most `connect_timeout` for a new connection.
    pub fn new(connect_timeout: Duration) -> Self {
        Http1Pool {
            connect_timeout,
            wire: std::sync::Arc::default(),
            idle: IdleLists::default(),
        }
    }

    /// Sends `req` to the node at `authority` over an idle connection of this thread, or a
    /// new one. The request's URI is sent in origin form (its path and query).
    pub async fn send(
        &self,
        authority: &Authority,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let origin_form = req
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        *req.uri_mut() = origin_form;
        if let Some(mut sender) = self.checkout(authority) {
            let response = sender.try_send_request(req);
            // Busy until the response's body is read: the next checkout skips it till then.
            self.checkin(authority, sender);
            match response.await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    // Not sent: the node had closed the connection. Go again on a new one.
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(authority).await?;
        let response = sender.send_request(req);
        self.checkin(authority, sender);
        response.await.map_err(SendError::Http)
    }

    /// Sends `head` with `body` (of known length; `None`: no body) to the node at `authority`
    /// with the gateway's own HTTP/1.1 client, in the caller's task.
    pub async fn send_own(
        &self,
        authority: &Authority,
        head: http::request::Parts,
        body: Option<Body>,
    ) -> Result<Response<crate::wire::NodeBody>, crate::wire::Error> {
        crate::wire::send(&self.wire, authority, &head, body, self.connect_timeout).await
    }

    /// A connection to `authority` ready for a request; closed ones are dropped, busy ones (a
    /// response body still being read) stay.
    fn checkout(&self, authority: &Authority) -> Option<SendRequest<Body>> {
        self.idle.take(authority, |sender| {
            if sender.is_closed() {
                Usable::Closed
            } else if sender.is_ready() {
                Usable::Ready
            } else {
                Usable::Busy
            }
        })
    }

    /// Keeps `sender` for the next request to `authority`, unless the list is full.
    fn checkin(&self, authority: &Authority, sender: SendRequest<Body>) {
        self.idle.park(authority, sender);
    }

    /// A new connection to `authority`, driven by a task on this thread's runtime.
    async fn connect(&self, authority: &Authority) -> Result<SendRequest<Body>, SendError> {
        let stream = crate::idle::open(authority, self.connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            // The node closing the connection, or breaking it, ends the task; the request
            // that was on it sees the error.
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }
}
