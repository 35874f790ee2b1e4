//! A tonic gRPC service behind the layers, built without `protoc`: the messages are plain
//! UTF-8 strings through a small codec, and the service is written by hand. A rate-limited
//! call ends with `RESOURCE_EXHAUSTED`; streams that fail after their first messages (the
//! status in the trailers) open the circuit, and a call refused by the open circuit ends with
//! `UNAVAILABLE`.
//!
//! ```text
//! cargo run --example tonic_grpc --features full
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut};
use omega_penta::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, SlidingWindow, State,
};
use omega_penta::core::key::http::Header;
use omega_penta::rate_limit::RateLimitLayer;
use omega_penta::rate_limit::{Limit, Quota, RateLimiter};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status};

/// Strings as gRPC messages.
#[derive(Clone, Copy, Debug, Default)]
struct Utf8Codec;

impl Codec for Utf8Codec {
    type Encode = String;
    type Decode = String;
    type Encoder = Utf8Codec;
    type Decoder = Utf8Codec;
    fn encoder(&mut self) -> Self::Encoder {
        Utf8Codec
    }
    fn decoder(&mut self) -> Self::Decoder {
        Utf8Codec
    }
}

impl Encoder for Utf8Codec {
    type Item = String;
    type Error = Status;
    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Utf8Codec {
    type Item = String;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| Status::invalid_argument("not UTF-8"))
    }
}

/// `demo.Greeter/SayHello`: greets the name it is sent. `demo.Greeter/Countdown`: streams two
/// messages, then fails with `UNAVAILABLE` (in the trailers, after the messages).
#[derive(Clone, Debug, Default)]
struct Greeter;

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "demo.Greeter";
}

struct SayHello;

impl tonic::server::UnaryService<String> for SayHello {
    type Response = String;
    type Future = std::future::Ready<Result<Response<String>, Status>>;
    fn call(&mut self, request: Request<String>) -> Self::Future {
        std::future::ready(Ok(Response::new(format!(
            "hello, {}",
            request.into_inner()
        ))))
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
            Err(Status::unavailable("the backend went away mid-stream")),
        ]));
        std::future::ready(Ok(Response::new(messages)))
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
            let mut grpc = tonic::server::Grpc::new(Utf8Codec);
            match req.uri().path() {
                "/demo.Greeter/SayHello" => Ok(grpc.unary(SayHello, req).await),
                "/demo.Greeter/Countdown" => Ok(grpc.server_streaming(Countdown, req).await),
                _ => Ok(Status::unimplemented("no such method").into_http()),
            }
        })
    }
}

async fn say_hello(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    user: &str,
    name: &str,
) -> Result<String, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let mut request = Request::new(name.to_owned());
    request
        .metadata_mut()
        .insert("x-user", user.parse().expect("ASCII"));
    let path = http::uri::PathAndQuery::from_static("/demo.Greeter/SayHello");
    client
        .unary(request, path, Utf8Codec)
        .await
        .map(Response::into_inner)
}

/// Calls `Countdown` and reads the stream to its end: the messages, then the status.
async fn countdown(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    user: &str,
) -> (Vec<String>, Status) {
    client.ready().await.expect("the channel is up");
    let mut request = Request::new(String::new());
    request
        .metadata_mut()
        .insert("x-user", user.parse().expect("ASCII"));
    let path = http::uri::PathAndQuery::from_static("/demo.Greeter/Countdown");
    let mut stream = match client.server_streaming(request, path, Utf8Codec).await {
        Ok(response) => response.into_inner(),
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 3 calls per minute per user (the `x-user` metadata entry is an HTTP header).
    let limiter = RateLimiter::builder()
        .limit(Limit::keyed(
            "per_user",
            Quota::per_minute(3),
            Header::new("x-user"),
        ))
        .build()?;
    let breaker = CircuitBreaker::with_config(
        "greeter",
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(4))
            .minimum_calls(4)
            .failure_rate_threshold(50.0)
            .wait_duration(Duration::from_secs(30)),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .layer(RateLimitLayer::new(limiter).respond())
        // `grpc()` reads each call's status where gRPC sends it: in the trailers after the
        // reply (OK here), or in the headers of a trailers-only error.
        .layer(CircuitBreakerLayer::new(breaker.clone()).grpc())
        .add_service(Greeter)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = tonic::client::Grpc::new(channel);

    for i in 1..=4 {
        match say_hello(&mut client, "ada", "Ada").await {
            Ok(reply) => println!("call {i} as ada: {reply}"),
            Err(status) => {
                println!("call {i} as ada: {:?}: {}", status.code(), status.message());
                assert_eq!(status.code(), Code::ResourceExhausted);
            }
        }
    }
    // Each stream sends two messages, then UNAVAILABLE in its trailers: the breaker reads it
    // there. With the three OK calls above, the second failed stream makes 2 failures in 4
    // calls (50%): the circuit opens, and the third stream is refused before it starts.
    for i in 1..=3 {
        let (messages, status) = countdown(&mut client, &format!("user{i}")).await;
        println!(
            "stream {i}: {messages:?}, then {:?}: {}",
            status.code(),
            status.message()
        );
        assert_eq!(status.code(), Code::Unavailable);
        if i < 3 {
            assert_eq!(messages, ["2", "1"]);
        } else {
            assert!(messages.is_empty(), "the open circuit refuses the call");
            assert!(status.message().contains("OPEN"), "{}", status.message());
        }
    }
    assert_eq!(breaker.state(), State::Open);
    println!("breaker: {:?}", breaker.state());
    Ok(())
}
