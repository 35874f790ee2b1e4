//! gRPC through the gateway to a tonic server over an `h2c` pool, with a tonic client: unary
//! calls, a server stream whose status comes in the trailers after its messages, the call's
//! `grpc-timeout` respected by the gateway, and the node's breaker counting the statuses the
//! trailers carry.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use omega_gateway::{Gateway, GatewayConfig};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status};

/// Strings as gRPC messages (no protoc needed).
#[derive(Clone, Copy, Debug, Default)]
struct Utf8;

impl Codec for Utf8 {
    type Encode = String;
    type Decode = String;
    type Encoder = Utf8;
    type Decoder = Utf8;
    fn encoder(&mut self) -> Utf8 {
        Utf8
    }
    fn decoder(&mut self) -> Utf8 {
        Utf8
    }
}

impl Encoder for Utf8 {
    type Item = String;
    type Error = Status;
    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Utf8 {
    type Item = String;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| Status::invalid_argument("not UTF-8"))
    }
}

/// `test.Greeter`: `SayHello` greets, `Countdown` streams "2", "1" then fails with
/// `UNAVAILABLE` in its trailers, `Slow` answers after two seconds.
#[derive(Clone, Debug, Default)]
struct Greeter;

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "test.Greeter";
}

struct SayHello;

impl tonic::server::UnaryService<String> for SayHello {
    type Response = String;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Status>> + Send>>;
    fn call(&mut self, request: Request<String>) -> Self::Future {
        let slow = request.get_ref() == "slow";
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(Response::new(format!("hello, {}", request.into_inner())))
        })
    }
}

struct Countdown;

type Messages = Pin<Box<dyn tokio_stream::Stream<Item = Result<String, Status>> + Send>>;

impl tonic::server::ServerStreamingService<String> for Countdown {
    type Response = String;
    type ResponseStream = Messages;
    type Future = std::future::Ready<Result<Response<Messages>, Status>>;
    fn call(&mut self, _request: Request<String>) -> Self::Future {
        let messages: Messages = Box::pin(tokio_stream::iter([
            Ok("2".to_owned()),
            Ok("1".to_owned()),
            Err(Status::unavailable("gone mid-stream")),
        ]));
        std::future::ready(Ok(Response::new(messages)))
    }
}

/// `Concat`: reads the client's whole stream, answers its messages joined.
struct Concat;

impl tonic::server::ClientStreamingService<String> for Concat {
    type Response = String;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Status>> + Send>>;
    fn call(&mut self, request: Request<tonic::Streaming<String>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut parts = Vec::new();
            while let Some(part) = stream.message().await? {
                parts.push(part);
            }
            Ok(Response::new(parts.join("+")))
        })
    }
}

impl tower::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Utf8);
            match req.uri().path() {
                "/test.Greeter/SayHello" => Ok(grpc.unary(SayHello, req).await),
                "/test.Greeter/Countdown" => Ok(grpc.server_streaming(Countdown, req).await),
                "/test.Greeter/Concat" => Ok(grpc.client_streaming(Concat, req).await),
                _ => Ok(Status::unimplemented("no such method").into_http()),
            }
        })
    }
}

async fn tonic_node() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(Greeter)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

async fn gateway(node: SocketAddr) -> omega_gateway::Running {
    let doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "upstreams": {
            "greeter": {
                "protocol": "h2c",
                "nodes": [{ "id": "g1", "url": format!("http://{node}") }],
                "breaker": { "failure_rate": 50, "window": 4, "minimum_calls": 4, "wait": "60s" }
            }
        },
        "routes": [{ "prefix": "/test.Greeter", "upstream": "greeter", "timeout": "10s" }]
    });
    Gateway::new(
        GatewayConfig::from_json(&doc.to_string()).unwrap(),
        None,
        None,
    )
    .await
    .unwrap()
    .start()
    .await
    .unwrap()
}

async fn client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn say_hello(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    name: &str,
) -> Result<String, Status> {
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/test.Greeter/SayHello");
    client
        .unary(Request::new(name.to_owned()), path, Utf8)
        .await
        .map(Response::into_inner)
}

async fn countdown(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
) -> (Vec<String>, Status) {
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/test.Greeter/Countdown");
    let mut stream = match client
        .server_streaming(Request::new(String::new()), path, Utf8)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return (Vec::new(), status),
    };
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => messages.push(m),
            Ok(None) => return (messages, Status::ok("")),
            Err(status) => return (messages, status),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_an_h2c_pool_with_their_trailers() {
    let node = tonic_node().await;
    let gw = gateway(node).await;
    let mut c = client(gw.addr).await;
    assert_eq!(say_hello(&mut c, "ada").await.unwrap(), "hello, ada");

    // A stream's messages, then its status from the trailers.
    let (messages, status) = countdown(&mut c).await;
    assert_eq!(messages, ["2", "1"]);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "gone mid-stream");

    // A client stream: the messages go up one by one, the answer comes when it ends.
    c.ready().await.unwrap();
    let parts = tokio_stream::iter(["a", "b", "c"].map(str::to_owned));
    let path = http::uri::PathAndQuery::from_static("/test.Greeter/Concat");
    let joined = c
        .client_streaming(Request::new(parts), path, Utf8)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined, "a+b+c");

    // The breaker reads those trailers: four failed streams open the node's circuit, and
    // calls are refused with UNAVAILABLE from then on.
    for _ in 0..3 {
        countdown(&mut c).await;
    }
    let breakers: serde_json::Value = serde_json::from_slice(
        &omega_testkit::http::get(gw.admin_addr, "/breakers", &[])
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(breakers["greeter"]["g1"]["state"], "Open", "{breakers}");
    let refused = say_hello(&mut c, "bob").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    gw.shutdown().await;
}

/// tonic's client gives up at its own deadline, so this call goes out as a plain HTTP/2
/// request: what answers it at the deadline is the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_grpc_timeout_bounds_the_gateways_wait() {
    let node = tonic_node().await;
    let gw = gateway(node).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // One length-prefixed message: not compressed, 4 bytes, "slow".
    let mut frame = vec![0u8, 0, 0, 0, 4];
    frame.extend_from_slice(b"slow");
    let req = http::Request::post(format!("http://{}/test.Greeter/SayHello", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let started = Instant::now();
    let response = sender.send_request(req).await.unwrap();
    let took = started.elapsed();
    println!(
        "a call with grpc-timeout 300m (the route's timeout is 10 s) was answered after {took:?}: {:?}",
        response.headers()
    );
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert!(took < Duration::from_millis(1800), "{took:?}");
    gw.shutdown().await;
}
