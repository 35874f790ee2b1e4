//! A connection handed to hyper with the bytes the gateway already read from it, and the
//! lingering close every plain connection gets.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The longest wait for the next bytes of a client that is still sending after the gateway
/// answered and closed (nginx's `lingering_timeout`).
const LINGER_WAIT: Duration = Duration::from_secs(5);
/// The longest a closed connection is drained (nginx's `lingering_time`).
const LINGER_MAX: Duration = Duration::from_secs(30);
/// How long a connection closed while its client is silent waits for the client's close, or
/// for more of an upload that paused just then.
const QUIET_WAIT: Duration = Duration::from_secs(1);

/// Closes a client's connection without losing the answer just written to it. A client still
/// sending (an upload answered early with 413, requests pipelined behind a `close`) would get
/// a reset from a socket closed with its bytes unread: the rest of its upload fails to send,
/// and many clients (hyper's among them) report that failure instead of reading the answer.
/// So such a connection sends its FIN and is drained until the client closes too (at most
/// 30 s, 5 s between reads), as nginx does. A client that is silent when the connection
/// closes may be between two writes of an upload (the gateway read all it had sent): it gets
/// [`QUIET_WAIT`] to close or to go on sending.
pub(crate) fn close(stream: TcpStream) {
    let mut probe = [0u8; 1];
    let first_wait = match stream.try_read(&mut probe) {
        Ok(0) => return, // closed by the client: nothing to wait for
        Ok(_) => LINGER_WAIT,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => QUIET_WAIT,
        Err(_) => return, // broken
    };
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(linger(stream, first_wait));
    }
}

async fn linger(mut stream: TcpStream, first_wait: Duration) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut wait = first_wait;
    let _ = tokio::time::timeout(LINGER_MAX, async {
        while let Ok(Ok(n)) = tokio::time::timeout(wait, stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
            wait = LINGER_WAIT;
        }
    })
    .await;
}

/// A stream whose reads yield `read[at..]` first, then the stream's own bytes; closed with
/// [`close`] when hyper is done with it.
pub(crate) struct Replay {
    read: Vec<u8>,
    at: usize,
    stream: Option<TcpStream>,
}

impl Replay {
    pub(crate) fn new(read: Vec<u8>, stream: TcpStream) -> Self {
        Replay {
            read,
            at: 0,
            stream: Some(stream),
        }
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        let stream = self.get_mut().stream.as_mut();
        Pin::new(stream.expect("the stream is taken only on drop"))
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            close(stream);
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(this).stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_was_read_comes_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut replay = Replay::new(b"GET / HT".to_vec(), server);
        client.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }
}
