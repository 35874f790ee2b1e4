//! HTTP (feature `http`): RFC 9111's shared cache, [`HttpCacheLayer`].
//!
//! The layer goes in front of any HTTP service (`http::Request<B>` to `http::Response<ResB>`,
//! axum's routers and hyper's clients among them) and behaves as RFC 9111 says a *shared*
//! cache does: what is stored, for how long and for whom is the responses' and requests' own
//! say; [`HttpPolicy`] holds the few choices the RFC leaves to the cache.
//!
//! - **Keys** (§2): scheme, host (the URI's authority or `Host`) and target; one host's
//!   responses never answer another's. `Vary` (§4.1) stores variants under secondary keys;
//!   `Vary: *` never matches.
//! - **Storing** (§3): not with `no-store` (unless `must-understand` with an understood
//!   status), an unqualified `private`, a request's `Authorization` (unless `public`,
//!   `s-maxage` or `must-revalidate`), `Set-Cookie` ([`SetCookie`]), `206` or a `Range`
//!   request; without explicit freshness only heuristically cacheable statuses
//!   ([`HEURISTIC_STATUSES`]) or `public`. Fields named by `private=` and `no-cache=`,
//!   hop-by-hop and proxy fields are left out (§3.1).
//! - **Freshness** (§4.2): `s-maxage`, `max-age`, `Expires` minus `Date`, else a heuristic
//!   (10% of the time since `Last-Modified`); the age it arrives with (`Age`, `Date`) counts;
//!   `Age` is generated on every reuse. Invalid values are read as §1.2.2, §4.2.1, §5.3 say.
//! - **Reuse** (§4, §5.2.1): request `max-age`, `min-fresh`, `max-stale`, `no-cache` (and
//!   `Pragma: no-cache`), `no-store`, `only-if-cached` (504 on a miss). Stale responses are
//!   served only when allowed: `max-stale`, `stale-while-revalidate` (one background
//!   revalidation), `stale-if-error` (RFC 5861), never past `must-revalidate`,
//!   `proxy-revalidate` or `s-maxage`. A fresh `immutable` response is not revalidated.
//! - **Validation** (§4.3): stale responses are revalidated with `If-None-Match` /
//!   `If-Modified-Since`; a `304` updates the stored fields, one for another representation
//!   (another `ETag`) is not used: the GET goes again, unconditional; clients' own conditional
//!   requests, `HEAD` and single byte ranges are answered from a stored `GET`.
//! - **Invalidation** (§4.4): a non-error response to an unsafe method drops its target, and
//!   its `Location` / `Content-Location` on the same origin; tags from a response field
//!   (`Surrogate-Key`, [`HttpPolicy::tags_from`]) for [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
//! - **`Cache-Status`** (RFC 9211) on every response: `omega; hit; ttl=57`,
//!   `omega; fwd=uri-miss; fwd-status=200; ttl=60; stored`, `...; detail=private`.
//! - **Concurrent misses** for one URL reach the origin once; a response that may not be
//!   shared (private, authorized, with a cookie) is never handed to another request.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), omega_cache::BoxError> {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use omega_cache::{Cache, Clock, HttpCacheLayer, HttpCodec, HttpPolicy, Partition, StoredResponse};
//! use tower::{Layer, ServiceExt};
//!
//! let cache: Cache<Arc<StoredResponse>> = Cache::builder()
//!     .codec(HttpCodec)
//!     .clock(Clock::manual()) // a clock that stands still: the TTLs below are exact
//!     .partition(Partition::new("pages"))
//!     .build()?;
//! let origin = tower::service_fn(|_req: http::Request<()>| async {
//!     let res = http::Response::builder()
//!         .header("cache-control", "max-age=60")
//!         .body(Full::new(Bytes::from("hello")))?;
//!     Ok::<_, http::Error>(res)
//! });
//! let svc = HttpCacheLayer::new(cache, HttpPolicy::new("pages").name("edge")).layer(origin);
//! let get = || http::Request::get("http://shop/hello").body(()).unwrap();
//!
//! let miss = svc.clone().oneshot(get()).await?;
//! assert_eq!(miss.headers()["cache-status"], "edge; fwd=uri-miss; fwd-status=200; ttl=60; stored");
//! let hit = svc.oneshot(get()).await?;
//! assert_eq!(hit.headers()["cache-status"], "edge; hit; ttl=60");
//! assert_eq!(hit.headers()["age"], "0");
//! assert_eq!(hit.into_body().collect().await?.to_bytes(), "hello");
//! # Ok(()) }
//! ```

mod body;
mod date;
mod directives;
mod fetch;
mod freshness;
mod policy;
mod range;
mod request;
mod respond;
mod reuse;
mod service;
mod status;
mod stored;
mod validation;
mod vary;

pub use body::CacheBody;
pub use freshness::HEURISTIC_STATUSES;
pub use policy::{HttpPolicy, SetCookie};
pub use service::{HttpCache, HttpCacheLayer};
pub use stored::{HttpCodec, HttpStorage, StoredResponse};
