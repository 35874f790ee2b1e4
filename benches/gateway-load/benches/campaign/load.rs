//! The load generator: keep-alive connections spread over every gateway, each moving on to the
//! next gateway when its own stops answering (as a client-side balancer would), and a tally of
//! every request's outcome.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// Which user each request names (`x-user-id`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keys {
    /// `user-0` … `user-{n-1}`, in turn.
    Users(u64),
    /// A new key for every request, counted across all connections.
    Distinct,
}

/// One load run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) path: &'static str,
    pub(crate) connections_per_gateway: usize,
    /// The run ends after this long …
    pub(crate) duration: Duration,
    /// … or after this many requests in all, whichever comes first.
    pub(crate) max_requests: u64,
    pub(crate) keys: Keys,
    /// A request still unanswered after this long is abandoned and counted as timed out.
    pub(crate) deadline: Duration,
}

/// Outcomes of a run.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ok: u64,
    pub(crate) limited: u64,
    pub(crate) unavailable: u64,
    pub(crate) other_status: u64,
    /// Connections refused or broken (the request got no response).
    pub(crate) connection_errors: u64,
    /// Requests unanswered within the plan's deadline.
    pub(crate) timeouts: u64,
    pub(crate) micros: Vec<u32>,
    pub(crate) elapsed: Duration,
}

impl Tally {
    pub(crate) fn requests(&self) -> u64 {
        self.ok
            + self.limited
            + self.unavailable
            + self.other_status
            + self.connection_errors
            + self.timeouts
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.limited += other.limited;
        self.unavailable += other.unavailable;
        self.other_status += other.other_status;
        self.connection_errors += other.connection_errors;
        self.timeouts += other.timeouts;
        self.micros.extend(other.micros);
    }

    /// The latency at quantile `q` (0..=1) of the answered requests, in milliseconds.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let i = ((self.micros.len() - 1) as f64 * q).round() as usize;
        f64::from(self.micros[i]) / 1000.0
    }
}

/// Runs `plan` against `gateways` and returns the outcomes.
pub(crate) async fn run(gateways: &[SocketAddr], plan: &Plan) -> Tally {
    let started = Instant::now();
    let end = started + plan.duration;
    let sent = Arc::new(AtomicU64::new(0));
    let gateways: Arc<[SocketAddr]> = gateways.into();
    let mut tasks = Vec::new();
    for c in 0..plan.connections_per_gateway * gateways.len() {
        let (gateways, plan, sent) = (gateways.clone(), plan.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            connection(
                &gateways,
                c % gateways.len(),
                c as u64 * 7919,
                &plan,
                &sent,
                end,
            )
            .await
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        tally.add(t.await.unwrap());
    }
    tally.elapsed = started.elapsed();
    tally.micros.sort_unstable();
    tally
}

enum Outcome {
    Status(u16),
    Broken,
    TimedOut,
}

async fn connection(
    gateways: &[SocketAddr],
    mut home: usize,
    mut user: u64,
    plan: &Plan,
    sent: &AtomicU64,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    'connect: while Instant::now() < end {
        let addr = gateways[home];
        let connected = tokio::time::timeout(plan.deadline, async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)
        })
        .await;
        let Ok(Ok((mut sender, conn))) = connected else {
            // This gateway does not answer: count the attempt and try the next one.
            tally.connection_errors += 1;
            home = (home + 1) % gateways.len();
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(conn);
        let host = addr.to_string();
        loop {
            let number = sent.fetch_add(1, Ordering::Relaxed);
            if Instant::now() >= end || number >= plan.max_requests {
                break 'connect;
            }
            let key = match plan.keys {
                Keys::Users(n) => {
                    user += 1;
                    format!("user-{}", user % n)
                }
                Keys::Distinct => format!("key-{number}"),
            };
            let req = Request::get(plan.path)
                .header(hyper::header::HOST, host.as_str())
                .header("x-user-id", key)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let started = Instant::now();
            let outcome = tokio::time::timeout(plan.deadline, async {
                if sender.ready().await.is_err() {
                    return Outcome::Broken;
                }
                match sender.send_request(req).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.into_body().collect().await {
                            Ok(_) => Outcome::Status(status),
                            Err(_) => Outcome::Broken,
                        }
                    }
                    Err(_) => Outcome::Broken,
                }
            })
            .await
            .unwrap_or(Outcome::TimedOut);
            match outcome {
                Outcome::Status(status) => {
                    tally
                        .micros
                        .push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                    match status {
                        200..=399 => tally.ok += 1,
                        429 => tally.limited += 1,
                        503 => tally.unavailable += 1,
                        _ => tally.other_status += 1,
                    }
                }
                Outcome::Broken => {
                    tally.connection_errors += 1;
                    continue 'connect;
                }
                Outcome::TimedOut => {
                    tally.timeouts += 1;
                    continue 'connect;
                }
            }
        }
    }
    tally
}
