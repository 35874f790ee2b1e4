//! What is cached, where, for how long and under which tags: the [`Policy`].
//!
//! A policy sees the request twice and the response once:
//!
//! 1. [`Policy::lookup`], on every request, says whether the cache is consulted and under which
//!    key and partition (borrowing the key from the request: no allocation on a hit);
//! 2. [`Policy::context`], only on a miss, keeps what the policy will need from the request
//!    once the response is there (the request itself goes to the inner service);
//! 3. [`Policy::decide`] sees that context and the response, and gives the [`Verdict`]: store
//!    it (with its TTL, stale windows and tags), store it as a negative answer, pass it
//!    through, or count it as a failure (a stale copy may answer instead).
//!
//! A key may hold several **variants** (HTTP's `Vary`): a response stored with
//! [`Rules::vary`] leaves a marker at its key that names what selects a variant (the *spec*),
//! and is stored as the variant its request selects (its *secondary key*). A later request
//! finding the marker is looked up again under the secondary key [`Policy::variant`] computes
//! for it; each variant is loaded once, however many requests ask for it together. Keys without
//! variants cost nothing more: one lookup, no allocation.
//!
//! [`Resolver`] is the policy for most services: a [`KeySource`] (closures and the built-ins
//! `Header`, `Query`, `Path`, ...), a partition, tags from the request, and a closure that
//! judges responses. HTTP's RFC 9111 rules are [`HttpCacheLayer`](crate::HttpCacheLayer)'s
//! (feature `http`), built on the same engine.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use omega_core::key::{Key, KeySource};

/// Where a request is looked up.
#[derive(Debug)]
pub struct Lookup<'a> {
    pub(crate) key: Key<'a>,
    pub(crate) partition: &'a str,
    pub(crate) only_if_cached: bool,
}

impl<'a> Lookup<'a> {
    /// Look `key` up in `partition`.
    #[inline]
    pub fn new(partition: &'a str, key: Key<'a>) -> Self {
        Lookup {
            key,
            partition,
            only_if_cached: false,
        }
    }

    /// Answer only from the cache: a miss is refused with
    /// [`NotCached`](crate::error::NotCached) (504), as HTTP's `only-if-cached` asks.
    pub fn only_if_cached(mut self) -> Self {
        self.only_if_cached = true;
        self
    }

    /// The key.
    pub fn key(&self) -> &Key<'a> {
        &self.key
    }

    /// The partition's name.
    pub fn partition(&self) -> &str {
        self.partition
    }
}

/// A response's variant: its `Vary` spec and the request's secondary key under it.
pub(crate) type VarySpec = (Arc<[u8]>, Box<[u8]>);

/// How a response is stored. Unset durations take the partition's defaults; the TTL is then
/// clamped to the partition's bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub(crate) ttl: Option<Duration>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) keep: Duration,
    pub(crate) tags: Vec<Arc<str>>,
    pub(crate) vary: Option<VarySpec>,
}

impl Rules {
    /// The partition's defaults, no tags.
    pub fn new() -> Self {
        Rules::default()
    }

    /// How long the response is fresh.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long after that it is still served while one background request refreshes it.
    pub fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.stale_while_revalidate = Some(d);
        self
    }

    /// How long after the TTL it may answer when the upstream fails.
    pub fn stale_if_error(mut self, d: Duration) -> Self {
        self.stale_if_error = Some(d);
        self
    }

    /// How long after its TTL (and stale windows) the entry is kept as the base of a
    /// revalidation: never served on its own, it lets a policy that can revalidate (HTTP's
    /// conditional requests) turn a miss into a cheap check. Default zero.
    pub fn keep(mut self, d: Duration) -> Self {
        self.keep = d;
        self
    }

    /// Stores the response as one variant of its key: `spec` says what selects a variant (the
    /// policy reads it back in [`Policy::variant`]), `secondary` is what this response's request
    /// selected. A marker holding `spec` stands at the key; a different spec replaces it, and
    /// with it every variant stored under the old one.
    pub fn vary(mut self, spec: impl Into<Arc<[u8]>>, secondary: impl Into<Box<[u8]>>) -> Self {
        self.vary = Some((spec.into(), secondary.into()));
        self
    }

    /// Adds a tag ([`Cache::invalidate_tag`](crate::Cache::invalidate_tag) drops every entry
    /// that has it, on every instance).
    pub fn tag(mut self, tag: impl Into<Arc<str>>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds tags.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Arc<str>>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// The tags.
    pub fn tag_list(&self) -> &[Arc<str>] {
        &self.tags
    }
}

/// What to do with a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Store it.
    Store(Rules),
    /// Store it as a negative answer ("not found"): the partition's negative TTL applies
    /// unless the rules set one.
    Negative(Rules),
    /// Pass it on without storing it.
    Pass,
    /// It is a failure (a 5xx): a copy within its stale-if-error window answers instead, if
    /// there is one; else it is passed on.
    Failure,
}

/// Decides what is cached, where, for how long and under which tags.
///
/// A policy sees the request twice and the response once:
///
/// 1. [`Policy::lookup`], on every request, says whether the cache is consulted and under which
///    key and partition (borrowing the key from the request: no allocation on a hit);
/// 2. [`Policy::context`], only on a miss, keeps what the policy will need from the request
///    once the response is there (the request itself goes to the inner service);
/// 3. [`Policy::decide`] sees that context and the response, and gives the [`Verdict`]: store
///    it (with its TTL, stale windows and tags), store it as a negative answer, pass it
///    through, or count it as a failure (a stale copy may answer instead).
///
/// A key may hold several variants (HTTP's `Vary`): [`Policy::variant`] gives a
/// request's secondary key under a variant spec the policy stored with [`Rules::vary`].
///
/// [`Resolver`] is the policy for most services. HTTP's RFC 9111 rules (revalidation, `Vary`,
/// `Age`, `Cache-Status`, ...) are [`HttpCacheLayer`](crate::HttpCacheLayer)'s (feature
/// `http`).
pub trait Policy<Req, Res>: Send + Sync + 'static {
    /// What the policy keeps from a request that missed, for [`Policy::decide`].
    type Context: Send + 'static;

    /// Where `req` is looked up, or `None` to pass it to the inner service untouched.
    fn lookup<'a>(&'a self, req: &'a Req) -> Option<Lookup<'a>>;

    /// What [`Policy::decide`] will need from `req` (called on a miss only).
    fn context(&self, req: &Req) -> Self::Context;

    /// What to do with `res`, the answer to the request `context` came from.
    fn decide(&self, context: &Self::Context, res: &Res) -> Verdict;

    /// The secondary key of `req` under `spec`, the variant spec a response was stored with
    /// ([`Rules::vary`]); called only for keys that hold variants. `None`: `req` matches no
    /// variant; it is loaded on its own (not coalesced) and its response stored as decided.
    /// The default is `None` (a policy that never stores variants).
    fn variant<'a>(&self, spec: &[u8], req: &'a Req) -> Option<Key<'a>> {
        let _ = (spec, req);
        None
    }
}

/// A policy built from a key source, a partition, tags from the request and a judgement of
/// responses.
///
/// ```
/// use omega_cache::{Resolver, Rules, Verdict};
/// use std::time::Duration;
///
/// struct Query { user: u64, text: String }
///
/// let policy = Resolver::new(|q: &Query| Some(format!("{}:{}", q.user, q.text)))
///     .partition("search")
///     .tags(|q: &Query| vec![format!("user:{}", q.user)])
///     .judge(|answer: &Vec<String>| {
///         if answer.is_empty() {
///             Verdict::Negative(Rules::new())
///         } else {
///             Verdict::Store(Rules::new().ttl(Duration::from_secs(30)))
///         }
///     });
/// # let _ = policy;
/// ```
pub struct Resolver<K, T = NoTags, D = StoreAll> {
    key: K,
    partition: Cow<'static, str>,
    tags: T,
    decide: D,
}

impl<K: std::fmt::Debug, T, D> std::fmt::Debug for Resolver<K, T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("key", &self.key)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

/// No tags from the request.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTags;

/// Every response is stored with the partition's defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreAll;

/// The name of the partition a [`Resolver`] uses unless told otherwise.
pub const DEFAULT_PARTITION: &str = "default";

impl<K> Resolver<K> {
    /// Keys from `key`, the [`DEFAULT_PARTITION`], no tags, every response stored.
    pub fn new(key: K) -> Self {
        Resolver {
            key,
            partition: Cow::Borrowed(DEFAULT_PARTITION),
            tags: NoTags,
            decide: StoreAll,
        }
    }
}

impl<K, T, D> Resolver<K, T, D> {
    /// Looks requests up in `partition`.
    pub fn partition(mut self, partition: impl Into<Cow<'static, str>>) -> Self {
        self.partition = partition.into();
        self
    }

    /// Tags every stored response with what `tags` gives for its request.
    pub fn tags<Req, I>(
        self,
        tags: impl Fn(&Req) -> I + Send + Sync + 'static,
    ) -> Resolver<K, TagFn<Req>, D>
    where
        I: IntoIterator,
        I::Item: Into<Arc<str>>,
    {
        Resolver {
            key: self.key,
            partition: self.partition,
            tags: TagFn(Arc::new(move |req| {
                tags(req).into_iter().map(Into::into).collect()
            })),
            decide: self.decide,
        }
    }

    /// Judges each response with `judge` (the tags of its rules are added to the request's).
    pub fn judge<Res, F>(self, judge: F) -> Resolver<K, T, F>
    where
        F: Fn(&Res) -> Verdict + Send + Sync + 'static,
    {
        Resolver {
            key: self.key,
            partition: self.partition,
            tags: self.tags,
            decide: judge,
        }
    }

    /// The partition's name.
    pub fn partition_name(&self) -> &str {
        &self.partition
    }
}

/// Tags computed from the request (see [`Resolver::tags`]).
pub struct TagFn<Req>(Arc<TagsOf<Req>>);

type TagsOf<Req> = dyn Fn(&Req) -> Vec<Arc<str>> + Send + Sync;

impl<Req> Clone for TagFn<Req> {
    fn clone(&self) -> Self {
        TagFn(self.0.clone())
    }
}

impl<Req> std::fmt::Debug for TagFn<Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TagFn")
    }
}

/// Where a [`Resolver`]'s request tags come from.
pub trait RequestTags<Req>: Send + Sync + 'static {
    /// The tags of `req`.
    fn tags(&self, req: &Req) -> Vec<Arc<str>>;
}

impl<Req> RequestTags<Req> for NoTags {
    fn tags(&self, _req: &Req) -> Vec<Arc<str>> {
        Vec::new()
    }
}

impl<Req: 'static> RequestTags<Req> for TagFn<Req> {
    fn tags(&self, req: &Req) -> Vec<Arc<str>> {
        (self.0)(req)
    }
}

/// How a [`Resolver`] judges responses.
pub trait Judge<Res>: Send + Sync + 'static {
    /// The verdict on `res`.
    fn judge(&self, res: &Res) -> Verdict;
}

impl<Res> Judge<Res> for StoreAll {
    fn judge(&self, _res: &Res) -> Verdict {
        Verdict::Store(Rules::new())
    }
}

impl<Res, F> Judge<Res> for F
where
    F: Fn(&Res) -> Verdict + Send + Sync + 'static,
{
    fn judge(&self, res: &Res) -> Verdict {
        self(res)
    }
}

impl<Req, Res, K, T, D> Policy<Req, Res> for Resolver<K, T, D>
where
    K: KeySource<Req>,
    T: RequestTags<Req>,
    D: Judge<Res>,
{
    type Context = Vec<Arc<str>>;

    #[inline]
    fn lookup<'a>(&'a self, req: &'a Req) -> Option<Lookup<'a>> {
        let key = self.key.key(req)?;
        Some(Lookup::new(&self.partition, key))
    }

    fn context(&self, req: &Req) -> Vec<Arc<str>> {
        self.tags.tags(req)
    }

    fn decide(&self, tags: &Vec<Arc<str>>, res: &Res) -> Verdict {
        let add = |mut rules: Rules| {
            rules.tags.extend(tags.iter().cloned());
            rules
        };
        match self.decide.judge(res) {
            Verdict::Store(r) => Verdict::Store(add(r)),
            Verdict::Negative(r) => Verdict::Negative(add(r)),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolver_keys_tags_and_judges() {
        let r = Resolver::new(|n: &u32| (*n > 0).then(|| format!("n{n}")))
            .partition("numbers")
            .tags(|n: &u32| [format!("parity:{}", n % 2)])
            .judge(|res: &String| {
                if res.is_empty() {
                    Verdict::Negative(Rules::new())
                } else {
                    Verdict::Store(Rules::new().tag("answer"))
                }
            });
        let l = Policy::<u32, String>::lookup(&r, &7).unwrap();
        assert_eq!(l.key().as_str(), Some("n7"));
        assert_eq!(l.partition(), "numbers");
        assert!(Policy::<u32, String>::lookup(&r, &0).is_none());
        let ctx = Policy::<u32, String>::context(&r, &7);
        let Verdict::Store(rules) = r.decide(&ctx, &"x".to_owned()) else {
            panic!()
        };
        assert_eq!(
            rules.tag_list(),
            [Arc::from("answer"), Arc::from("parity:1")]
        );
        assert!(matches!(
            r.decide(&ctx, &String::new()),
            Verdict::Negative(_)
        ));
    }
}
