//! Lingering close, as nginx's `lingering_close`: when hyper gives up on a client
//! that is still sending (431 for an oversized head, 400 for bad framing), closing
//! the socket with unread bytes makes the kernel answer with RST, and an RST can
//! destroy the error response before the client reads it. So the stream is not
//! closed when hyper drops it: a task reads and discards what still arrives, for at
//! most [`LINGER`], then closes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Lingering<S: AsyncRead + Unpin + Send + 'static> {
    inner: Option<S>,
}

impl<S: AsyncRead + Unpin + Send + 'static> Lingering<S> {
    pub fn new(inner: S) -> Self {
        Lingering { inner: Some(inner) }
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        let Some(mut stream) = self.inner.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut sink = tokio::io::sink();
                let drain = tokio::io::copy(&mut stream, &mut sink);
                let _ = tokio::time::timeout(LINGER, drain).await;
            });
        }
    }
}

fn gone() -> io::Error {
    io::ErrorKind::NotConnected.into()
}

impl<S: AsyncRead + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}
