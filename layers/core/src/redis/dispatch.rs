//! How one operation is carried out: one attempt on a node within the operation's deadline,
//! the redirects a cluster answers, and the fan-out to every primary.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use redis::RedisResult;
use tokio::time::Instant;

use super::cluster::{self, Cluster};
use super::conn::{Conn, Redirect, redirect_of};
use super::node::Node;
use super::route::Route;
use super::state::Context;
use crate::error::{Error, ErrorKind, Result};

/// How many `MOVED` / `ASK` redirects one operation follows.
pub const MAX_REDIRECTS: usize = 3;

/// What kind of operation a Redis call is, for the latency metric's `op` label.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Command = 0,
    Pipeline = 1,
    Script = 2,
}

impl Op {
    #[cfg(feature = "metrics")]
    fn label(self) -> &'static str {
        ["command", "pipeline", "script"][self as usize]
    }
}

/// How an attempt on one node ended.
pub(crate) enum Outcome<T> {
    Done(Result<T>),
    Redirect(Redirect),
}

/// One attempt on `node`, bounded by `deadline`; `redirects` is `Some(replies)` on a cluster.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn attempt<T, F, Fut>(
    ctx: &Context,
    node: &Node,
    conn: Conn,
    generation: u64,
    deadline: Instant,
    redirects: Option<usize>,
    op: &impl Fn() -> Cow<'static, str>,
    f: &F,
) -> Outcome<T>
where
    F: Fn(Conn) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    match tokio::time::timeout_at(deadline, f(conn)).await {
        Ok(Ok(value)) => {
            node.on_success(ctx);
            Outcome::Done(Ok(value))
        }
        Ok(Err(e)) => {
            if let Some(redirect) = redirects.and_then(|n| redirect_of(&e, n)) {
                node.on_success(ctx);
                return Outcome::Redirect(redirect);
            }
            Outcome::Done(Err(node.on_error(ctx, e, generation).during(op())))
        }
        Err(_elapsed) => {
            let err = Error::timeout(ctx.cfg.op_timeout)
                .at(&node.addr)
                .during(op());
            node.on_timeout(ctx, &err, generation);
            Outcome::Done(Err(err))
        }
    }
}

/// An operation on the node of `route`, following up to [`MAX_REDIRECTS`] redirects.
pub(crate) async fn routed<T, F, Fut>(
    ctx: &Context,
    cluster: &Cluster,
    route: Route,
    replies: usize,
    deadline: Instant,
    op: &impl Fn() -> Cow<'static, str>,
    f: &F,
) -> Result<T>
where
    F: Fn(Conn) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let Some(mut node) = cluster.node_for(route) else {
        ctx.refresh.notify_one();
        return Err(cluster::unrouted(ctx, route).during(op()));
    };
    let mut asking = false;
    for hop in 0..=MAX_REDIRECTS {
        let Some((conn, generation)) = node.live() else {
            return Err(node.unavailable().during(op()));
        };
        let conn = if asking {
            Conn::Asking(conn)
        } else {
            Conn::Plain(conn)
        };
        let redirect =
            match attempt(ctx, &node, conn, generation, deadline, Some(replies), op, f).await {
                Outcome::Done(r) => return r,
                Outcome::Redirect(r) => r,
            };
        let what = if redirect.ask { "ASK" } else { "MOVED" };
        if hop == MAX_REDIRECTS {
            let detail = format!(
                "still redirected after {MAX_REDIRECTS} redirects (last: {what} {} {}); \
                 nothing ran",
                redirect.slot, redirect.addr
            );
            return Err(Error::new(ErrorKind::Cluster, detail)
                .at(&node.addr)
                .during(op()));
        }
        if !redirect.ask {
            ctx.refresh.notify_one();
        }
        asking = redirect.ask;
        node = match find(cluster, &redirect) {
            Some(n) => n,
            None => {
                // A node the topology does not know yet: wait for a refresh, within the bound.
                let mut epoch = cluster.epoch();
                epoch.borrow_and_update();
                ctx.refresh.notify_one();
                let refreshed = tokio::time::timeout_at(deadline, epoch.changed()).await;
                match refreshed.ok().and_then(|_| find(cluster, &redirect)) {
                    Some(n) => n,
                    None => {
                        let detail = format!(
                            "{what} {} {} names a node the topology does not know; nothing ran",
                            redirect.slot, redirect.addr
                        );
                        return Err(Error::new(ErrorKind::Cluster, detail)
                            .at(&node.addr)
                            .during(op()));
                    }
                }
            }
        };
    }
    unreachable!("the last hop returns")
}

fn find(cluster: &Cluster, redirect: &Redirect) -> Option<Arc<Node>> {
    cluster.topology()?.node_at(&redirect.addr).cloned()
}

/// An operation on every primary, at once: the first answer when all succeed, else the first
/// error.
pub(crate) async fn fan_out<T, F, Fut>(
    ctx: &Context,
    cluster: &Cluster,
    deadline: Instant,
    op: &impl Fn() -> Cow<'static, str>,
    f: &F,
) -> Result<T>
where
    F: Fn(Conn) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let Some(topology) = cluster.topology() else {
        return Err(cluster::unrouted(ctx, Route::AllPrimaries).during(op()));
    };
    let results = join_all(topology.nodes.iter().map(|node| async move {
        let Some((conn, generation)) = node.live() else {
            return Err(node.unavailable().during(op()));
        };
        match attempt(
            ctx,
            node,
            Conn::Plain(conn),
            generation,
            deadline,
            None,
            op,
            f,
        )
        .await
        {
            Outcome::Done(r) => r,
            Outcome::Redirect(_) => unreachable!("redirects are not followed here"),
        }
    }))
    .await;
    let mut first = None;
    for r in results {
        match r {
            Err(e) => return Err(e),
            Ok(v) if first.is_none() => first = Some(v),
            Ok(_) => {}
        }
    }
    first.ok_or_else(|| cluster::unrouted(ctx, Route::AllPrimaries).during(op()))
}

/// Counts a failed operation (feature `metrics`) and hands its error back.
pub(crate) fn failed(ctx: &Context, class: Op, err: Error) -> Error {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        crate::metrics::BACKEND_ERRORS,
        "target" => ctx.target.to_string(),
        "op" => class.label(),
        "kind" => err.kind().label()
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (ctx, class);
    err
}
