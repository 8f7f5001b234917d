//! A connection's socket with its deadlines: reads fail once the deadline of the connection's
//! current phase (see [`Framing`]) has passed, which makes hyper drop the connection. The
//! deadline is armed whenever a read would wait, so a connection nobody reads from costs no
//! timer wake-ups, and one that dribbles bytes is cut on time all the same.

use super::framing::{CutReason, Framing, Timeouts};
use super::Slot;
use crate::app::metrics::Metrics;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// What a client that sent part of a request is told when its time is up.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

pub struct GuardedIo {
    inner: TcpStream,
    framing: Framing,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    cut: Option<CutReason>,
    metrics: Arc<Metrics>,
    /// Held for the connection's life: its place in the connection counts.
    _slot: Slot,
}

impl GuardedIo {
    pub(super) fn new(
        inner: TcpStream,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
        slot: Slot,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            framing: Framing::new(now),
            timeouts,
            timer: Box::pin(tokio::time::sleep_until(now)),
            armed: None,
            cut: None,
            metrics,
            _slot: slot,
        }
    }

    fn cut(&mut self, reason: CutReason) -> io::Error {
        if self.cut.is_none() {
            self.cut = Some(reason);
            self.metrics.connection_cut(reason.label());
            if self.framing.may_answer_timeout() {
                // Best effort and never waiting: the socket's send buffer is empty here, and
                // a client that does not read it is dropped all the same.
                let _ = self.inner.try_write(REQUEST_TIMEOUT);
            }
            tracing::debug!(reason = reason.label(), "connection cut at its deadline");
        }
        cut_error(self.cut.unwrap_or(reason))
    }

    /// Waits for the current deadline along with the read: `Pending` until it passes.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.framing.deadline(&self.timeouts) {
            Some((at, reason)) if self.passed(at, cx) => Poll::Ready(Err(self.cut(reason))),
            _ => Poll::Pending,
        }
    }

    /// After a write: an answer may have started a deadline (keep-alive) while the read side
    /// sleeps on a socket that will never wake it (hyper reads again only when woken), so the
    /// timer is armed with this task's waker too.
    fn rearm(&mut self, cx: &mut Context<'_>) {
        if let Some((at, _)) = self.framing.deadline(&self.timeouts) {
            if self.passed(at, cx) {
                cx.waker().wake_by_ref();
            }
        }
    }

    /// Whether `at` has passed; if not, the timer wakes `cx` by then. The timer is moved only
    /// to an earlier time: a deadline that moves later with every byte (a body's idle
    /// deadline, keep-alive after each write) costs a reset per expiry, not one per read.
    fn passed(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        loop {
            if self.armed.is_none_or(|armed| at < armed) {
                self.timer.as_mut().reset(at);
                self.armed = Some(at);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.armed.is_some_and(|armed| armed >= at) {
                return true;
            }
            // An earlier deadline that has since moved: wait for the current one.
            self.armed = None;
        }
    }
}

fn cut_error(reason: CutReason) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connection cut: {}", reason.label()),
    )
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(reason) = this.cut {
            return Poll::Ready(Err(cut_error(reason)));
        }
        if this.framing.is_upgraded() {
            // A WebSocket's frames: its own pings and close rules apply, nothing to watch here.
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let now = Instant::now();
                this.framing.on_read(&buf.filled()[before..], now);
                // A client that never lets a read wait still meets its deadline.
                match this.framing.deadline(&this.timeouts) {
                    Some((at, reason)) if at <= now => Poll::Ready(Err(this.cut(reason))),
                    _ => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(reason) = this.cut {
            return Poll::Ready(Err(cut_error(reason)));
        }
        if this.framing.is_upgraded() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.framing.on_write(&buf[..n], Instant::now());
            this.rearm(cx);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(reason) = this.cut {
            return Poll::Ready(Err(cut_error(reason)));
        }
        if this.framing.is_upgraded() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            // Framing only looks at how an answer starts: the first slice is enough.
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                this.framing
                    .on_write(&first[..n.min(first.len())], Instant::now());
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
