//! A real origin (axum on a loopback socket) whose answers each test scripts, a real client
//! (hyper) that forwards to it, and the cache in between, on a clock the test moves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use omega_cache::{
    Cache, CacheBody, HttpCache, HttpCacheLayer, HttpCodec, HttpPolicy, Partition, StoredResponse,
};
use omega_core::Clock;
use tower::{Layer, Service, ServiceExt};

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: Method,
    /// Path and query.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
}

type Script = dyn Fn(&Seen, usize) -> Response<Body> + Send + Sync;

#[derive(Clone)]
struct OriginState {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Script>,
    delay: Duration,
}

/// The origin: answers each request with the script's response for it and its number among
/// the requests for the same path (from 1).
pub(crate) struct Origin {
    pub(crate) addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Origin {
    pub(crate) async fn start(
        script: impl Fn(&Seen, usize) -> Response<Body> + Send + Sync + 'static,
    ) -> Origin {
        Origin::with_delay(Duration::ZERO, script).await
    }

    /// An origin that takes `delay` to answer (for concurrent misses).
    pub(crate) async fn with_delay(
        delay: Duration,
        script: impl Fn(&Seen, usize) -> Response<Body> + Send + Sync + 'static,
    ) -> Origin {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = OriginState {
            seen: seen.clone(),
            script: Arc::new(script),
            delay,
        };
        let app = Router::new().fallback(answer).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Origin {
            addr,
            seen,
            task: Mutex::new(Some(task)),
        }
    }

    /// How many requests for `path` reached the origin.
    pub(crate) fn calls(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    /// The last request for `path`.
    pub(crate) fn last(&self, path: &str) -> Seen {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .rev()
            .find(|s| s.path == path)
            .cloned()
            .expect("a request for the path")
    }

    /// Stops answering: connections are refused from now on (the client keeps none open).
    pub(crate) async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn answer(State(state): State<OriginState>, req: Request<Body>) -> Response<Body> {
    let seen = Seen {
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers: req.headers().clone(),
    };
    let n = {
        let mut all = state.seen.lock().unwrap();
        all.push(seen.clone());
        all.iter().filter(|s| s.path == seen.path).count()
    };
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    (state.script)(&seen, n)
}

/// A response with `status`, `fields` and `body`.
pub(crate) fn res(status: u16, fields: &[(&str, &str)], body: impl Into<Body>) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in fields {
        b = b.header(*k, *v);
    }
    b.body(body.into()).unwrap()
}

/// An HTTP-date `offset` seconds from now.
pub(crate) fn date(offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    httpdate(now + offset)
}

fn httpdate(secs: i64) -> String {
    // IMF-fixdate, by hand (the crate's own formatter is private).
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mo = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][month as usize - 1];
    format!(
        "{wd}, {day:02} {mo} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Forwards requests to an origin over a pooled HTTP/1.1 client.
#[derive(Clone)]
pub(crate) struct Forward {
    client: Client<HttpConnector, Body>,
    addr: SocketAddr,
}

impl Forward {
    pub(crate) fn to(addr: SocketAddr) -> Self {
        Forward {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
            addr,
        }
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *req.uri_mut() = format!("http://{}{pq}", self.addr).parse().unwrap();
        self.client.request(req)
    }
}

pub(crate) type Svc = HttpCache<Forward>;

/// The cache of a test: partition `pages` (64 KiB entries at most), on a manual clock.
pub(crate) fn cache(clock: &Clock) -> Cache<Arc<StoredResponse>> {
    Cache::builder()
        .name("omega")
        .codec(HttpCodec)
        .clock(clock.clone())
        .partition(Partition::new("pages").max_entry_bytes(64 * 1024))
        .build()
        .unwrap()
}

/// The cache in front of `origin` with `policy` over partition `pages`.
pub(crate) struct Rig {
    pub(crate) svc: Svc,
    pub(crate) cache: Cache<Arc<StoredResponse>>,
    pub(crate) clock: Clock,
}

impl Rig {
    pub(crate) fn new(origin: &Origin) -> Rig {
        Rig::with(origin, HttpPolicy::new("pages"))
    }

    pub(crate) fn with(origin: &Origin, policy: HttpPolicy) -> Rig {
        let clock = Clock::manual();
        let cache = cache(&clock);
        let svc = HttpCacheLayer::new(cache.clone(), policy).layer(Forward::to(origin.addr));
        Rig { svc, cache, clock }
    }

    /// Moves the cache's clock on.
    pub(crate) fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> Answer {
        let res = self
            .svc
            .clone()
            .oneshot(req)
            .await
            .expect("the cache answers");
        Answer::read(res).await
    }

    /// GET `path` on host `shop` with `fields`.
    pub(crate) async fn get(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        self.send(get(path, fields)).await
    }
}

/// A GET of `http://shop{path}` with `fields`.
pub(crate) fn get(path: &str, fields: &[(&str, &str)]) -> Request<Body> {
    request(Method::GET, path, fields)
}

pub(crate) fn request(method: Method, path: &str, fields: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://shop{path}"));
    for (k, v) in fields {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// A response as the client got it.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) async fn read(res: Response<CacheBody<Incoming>>) -> Answer {
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A field's value ("" when absent).
    pub(crate) fn field(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// The `Cache-Status` member of this cache (the last one).
    pub(crate) fn cache_status(&self) -> &str {
        self.headers
            .get_all("cache-status")
            .iter()
            .next_back()
            .map_or("", |v| v.to_str().unwrap())
    }

    /// `true` when the cache answered without the origin.
    pub(crate) fn hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// An origin answering every request with a counter in the body: `n` for the n-th request
/// to the path, and `fields`.
pub(crate) async fn counting(
    status: u16,
    fields: &'static [(&'static str, &'static str)],
) -> Origin {
    Origin::start(move |_, n| res(status, fields, format!("{n}"))).await
}
