//! `ShardRouterLayer`: one inner service (an HTTP client, say) for every node, with the chosen
//! node handed over with each request.

use std::fmt;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use omega_core::reject::KeepError;

use crate::builder::ShardRouterBuilder;
use crate::node::Node;
use crate::retry::NoRetry;
use crate::service::ShardRouter;

/// A request that can carry the node it was routed to, for [`ShardRouterLayer`].
///
/// With the `http` feature, `http::Request<B>` implements it by inserting the [`Node`] into
/// the request's extensions; a proxy's client reads it there
/// (`req.extensions().get::<Node>()`) and sends the request to `node.address()`.
pub trait NodeTarget {
    /// Records the node this request is routed to.
    fn set_node(&mut self, node: &Node);
}

#[cfg(feature = "http")]
impl<B> NodeTarget for http::Request<B> {
    fn set_node(&mut self, node: &Node) {
        self.extensions_mut().insert(node.clone());
    }
}

/// Makes a [`ShardRouter`] whose every node uses a clone of the wrapped service, the chosen
/// [`Node`] travelling with the request ([`NodeTarget`]). Build it with
/// [`ShardRouterBuilder::into_layer`].
///
/// Each call of [`Layer::layer`] makes a separate router (its own counters) over the same
/// topology handle; clones of one router share everything.
///
/// ```
/// use omega_shard_router::{Algorithm, Node, NodeTarget, ShardRouter, Topology, TopologyHandle};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// struct Req { user: u64, node: Option<Node> }
/// impl NodeTarget for Req {
///     fn set_node(&mut self, node: &Node) { self.node = Some(node.clone()); }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
/// let handle = TopologyHandle::new(Topology::new(Algorithm::table(), [
///     Node::new("a", "10.0.0.1:80"),
///     Node::new("b", "10.0.0.2:80"),
/// ])?);
/// let layer = ShardRouter::builder(handle).key(|r: &Req| Some(r.user)).into_layer();
/// let client = service_fn(|r: Req| async move {
///     Ok::<_, tower::BoxError>(r.node.unwrap().address().to_owned())
/// });
/// let svc = ServiceBuilder::new().layer(layer).service(client);
/// let address = svc.oneshot(Req { user: 7, node: None }).await?;
/// assert!(address == "10.0.0.1:80" || address == "10.0.0.2:80");
/// # Ok(()) }
/// ```
pub struct ShardRouterLayer<K, P = NoRetry, Rj = KeepError> {
    builder: ShardRouterBuilder<K, P, Rj>,
}

impl<K: Clone, P: Clone, Rj: Clone> Clone for ShardRouterLayer<K, P, Rj> {
    fn clone(&self) -> Self {
        ShardRouterLayer {
            builder: self.builder.clone(),
        }
    }
}

impl<K, P, Rj> fmt::Debug for ShardRouterLayer<K, P, Rj> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouterLayer")
            .field("builder", &self.builder)
            .finish()
    }
}

impl<K, P, Rj> ShardRouterBuilder<K, P, Rj> {
    /// A layer that builds this router around one inner service shared by every node.
    pub fn into_layer(self) -> ShardRouterLayer<K, P, Rj> {
        ShardRouterLayer { builder: self }
    }
}

impl<K, P, Rj> ShardRouterLayer<K, P, Rj> {
    /// Answers refusals with HTTP responses (feature `http`); see
    /// [`ShardRouterBuilder::respond`].
    #[cfg(feature = "http")]
    pub fn respond(self) -> ShardRouterLayer<K, P, omega_core::reject::Respond> {
        self.on_rejection(omega_core::reject::Respond)
    }

    /// How refusals are answered; see [`ShardRouterBuilder::on_rejection`].
    pub fn on_rejection<Rj2>(self, strategy: Rj2) -> ShardRouterLayer<K, P, Rj2> {
        ShardRouterLayer {
            builder: self.builder.on_rejection(strategy),
        }
    }
}

impl<S, K, P, Rj> Layer<S> for ShardRouterLayer<K, P, Rj>
where
    S: Clone + Send + Sync + 'static,
    K: Clone,
    P: Clone,
    Rj: Clone,
{
    type Service = ShardRouter<ForNode<S>, K, P, Rj>;

    fn layer(&self, inner: S) -> Self::Service {
        self.builder.clone().build(move |node: &Node| ForNode {
            inner: inner.clone(),
            node: node.clone(),
        })
    }
}

/// The per-node service of a [`ShardRouterLayer`]: the shared inner service, told the node.
#[derive(Clone, Debug)]
pub struct ForNode<S> {
    inner: S,
    node: Node,
}

impl<S> ForNode<S> {
    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for ForNode<S>
where
    S: Service<Req>,
    Req: NodeTarget,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> S::Future {
        req.set_node(&self.node);
        self.inner.call(req)
    }
}
