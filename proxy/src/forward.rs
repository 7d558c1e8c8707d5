//! Copies bytes both ways until both directions end, counting them as they pass so a
//! long flow can be reported before it ends. Half-close: when one side finishes
//! sending, the other side's write half is shut down and the reverse direction goes on.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes from the source to the destination, and back.
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub to_destination: AtomicU64,
    pub to_source: AtomicU64,
}

impl ByteCounters {
    pub fn get(&self) -> (u64, u64) {
        (
            self.to_destination.load(Ordering::Relaxed),
            self.to_source.load(Ordering::Relaxed),
        )
    }
}

/// The source-facing stream: what is read from it goes to the destination, what is
/// written to it came back from the destination.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counters: Arc<ByteCounters>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counters: Arc<ByteCounters>) -> Self {
        Counted { inner, counters }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        self.counters.to_destination.fetch_add(n, Ordering::Relaxed);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            self.counters
                .to_source
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies until both directions are done (tokio's copy_bidirectional: EOF on one side
/// shuts down the other's write half).
pub async fn copy_both_ways<A, B>(source: &mut Counted<A>, destination: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(source, destination)
        .await
        .map(|_| ())
}
