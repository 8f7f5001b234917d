//! The listening socket, guarded: deadlines on every connection (poem 3.1 only has an idle
//! timeout that any byte resets, which a client dribbling one byte at a time never meets),
//! caps on open connections in all and per client address, and an accept loop that a failing
//! `accept` (out of file descriptors) slows down but never stops.

pub mod framing;
mod io;

pub use self::framing::Timeouts;
pub use self::io::GuardedIo;

use crate::adapters::inbound::edge::client::TrustedProxies;
use crate::app::metrics::Metrics;
use crate::domain::address::limit_scope;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The answer to a connection over a cap, before closing it.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Connection: close\r\nContent-Type: text/plain\r\nContent-Length: 32\r\n\r\n\
too many connections; retry soon";
/// Refused connections being answered at once; beyond that they are closed unanswered, so a
/// flood of refusals costs no more than this many sockets.
const REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused connection may take to read its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The connection caps (see `max_connections` and `max_connections_per_address`).
#[derive(Debug, Clone)]
pub struct Caps {
    pub total: usize,
    /// 0: no cap per address.
    pub per_address: usize,
    /// Addresses exempt from the per-address cap: proxies carry many clients.
    pub proxies: TrustedProxies,
}

/// Accepts TCP connections for poem, each wrapped in a [`GuardedIo`].
pub struct GuardedAcceptor {
    listener: TcpListener,
    local_addr: LocalAddr,
    timeouts: Timeouts,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
    refusals: Arc<Semaphore>,
}

impl GuardedAcceptor {
    /// Binds `addr`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        timeouts: Timeouts,
        caps: Caps,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = LocalAddr(listener.local_addr()?.into());
        Ok(Self {
            listener,
            local_addr,
            timeouts,
            counts: Arc::new(Counts {
                caps,
                open: Mutex::new(Open::default()),
                metrics: Arc::clone(&metrics),
            }),
            metrics,
            refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
        })
    }

    pub fn local_socket_addr(&self) -> Option<SocketAddr> {
        self.local_addr.as_socket_addr().copied()
    }

    /// Answers a connection over a cap with `503` and closes it, without holding up accepts.
    fn refuse(&self, mut stream: TcpStream) {
        let Ok(permit) = Arc::clone(&self.refusals).try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let answer = async {
                stream.write_all(OVER_CAPACITY).await?;
                stream.shutdown().await?;
                // Reading what the client sent lets the close be a FIN, not a reset that could
                // destroy the answer before the client reads it.
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            };
            let _ = tokio::time::timeout(REFUSAL_LINGER, answer).await;
        });
    }
}

impl Acceptor for GuardedAcceptor {
    type Io = GuardedIo;

    fn local_addr(&self) -> Vec<LocalAddr> {
        vec![self.local_addr.clone()]
    }

    /// Never fails: a failing `accept` (EMFILE, ENFILE, ENOBUFS…) is logged and retried after
    /// a pause that grows while it keeps failing, since poem's server loop would otherwise
    /// spin on it. Connections over a cap are refused here and never reach poem.
    async fn accept(&mut self) -> std::io::Result<(GuardedIo, LocalAddr, RemoteAddr, Scheme)> {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    self.metrics.accept_errors.inc();
                    tracing::warn!(error = %e, pause = ?backoff, "accept failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            backoff = ACCEPT_BACKOFF_MIN;
            match Counts::admit(&self.counts, peer.ip()) {
                Ok(slot) => {
                    let io = GuardedIo::new(stream, self.timeouts, Arc::clone(&self.metrics), slot);
                    return Ok((
                        io,
                        self.local_addr.clone(),
                        RemoteAddr(peer.into()),
                        Scheme::HTTP,
                    ));
                }
                Err(over) => {
                    self.metrics.connection_refused(over.label());
                    tracing::debug!(%peer, cap = over.label(), "connection refused: over the cap");
                    self.refuse(stream);
                }
            }
        }
    }
}

/// Which cap a refused connection was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    Total,
    PerAddress,
}

impl OverCap {
    pub fn label(self) -> &'static str {
        match self {
            Self::Total => "max_connections",
            Self::PerAddress => "max_connections_per_address",
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Open connections, in all and per address.
struct Counts {
    caps: Caps,
    open: Mutex<Open>,
    metrics: Arc<Metrics>,
}

impl Counts {
    fn admit(this: &Arc<Self>, ip: IpAddr) -> Result<Slot, OverCap> {
        let capped = this.caps.per_address > 0 && !this.caps.proxies.contains(ip);
        // Counted per client: an IPv6 client by its /64 (see `domain::address`).
        let ip = limit_scope(ip);
        let mut open = this.lock();
        if open.total >= this.caps.total {
            return Err(OverCap::Total);
        }
        let mine = open.by_address.entry(ip).or_insert(0);
        if capped && *mine >= this.caps.per_address {
            if *mine == 0 {
                open.by_address.remove(&ip);
            }
            return Err(OverCap::PerAddress);
        }
        *mine += 1;
        open.total += 1;
        this.metrics.connections.set(gauge(open.total));
        Ok(Slot {
            counts: Arc::clone(this),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&ip);
            }
        }
        self.metrics.connections.set(gauge(open.total));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The counts stay consistent even if a holder panicked: every update is one step.
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One open connection's place in the counts, given back when the connection is dropped.
pub struct Slot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: usize, per_address: usize, proxies: &[&str]) -> Arc<Counts> {
        let proxies: Vec<String> = proxies.iter().map(|p| (*p).to_owned()).collect();
        Arc::new(Counts {
            caps: Caps {
                total,
                per_address,
                proxies: TrustedProxies::parse(&proxies).unwrap(),
            },
            open: Mutex::new(Open::default()),
            metrics: Arc::new(Metrics::new()),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn the_per_address_cap_leaves_other_addresses_alone() {
        let c = counts(10, 2, &[]);
        let _a1 = Counts::admit(&c, A).unwrap();
        let a2 = Counts::admit(&c, A).unwrap();
        assert_eq!(Counts::admit(&c, A).err(), Some(OverCap::PerAddress));
        let _b = Counts::admit(&c, B).unwrap();
        drop(a2);
        assert!(
            Counts::admit(&c, A).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn the_total_cap_counts_every_address() {
        let c = counts(2, 0, &[]);
        let _a = Counts::admit(&c, A).unwrap();
        let _b = Counts::admit(&c, B).unwrap();
        assert_eq!(Counts::admit(&c, A).err(), Some(OverCap::Total));
        assert_eq!(c.lock().by_address.len(), 2);
    }

    #[test]
    fn trusted_proxies_are_exempt_from_the_per_address_cap_only() {
        let c = counts(3, 1, &["192.0.2.0/24"]);
        let slots: Vec<_> = (0..3).map(|_| Counts::admit(&c, A).unwrap()).collect();
        assert_eq!(Counts::admit(&c, A).err(), Some(OverCap::Total));
        drop(slots);
        assert_eq!(c.lock().total, 0);
        assert!(c.lock().by_address.is_empty());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_network() {
        let c = counts(10, 2, &[]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = Counts::admit(&c, ip("2001:db8:1:2::1")).unwrap();
        let b = Counts::admit(&c, ip("2001:db8:1:2::2")).unwrap();
        assert_eq!(
            Counts::admit(&c, ip("2001:db8:1:2:ffff::3")).err(),
            Some(OverCap::PerAddress),
            "a third address of the same /64"
        );
        let _other = Counts::admit(&c, ip("2001:db8:1:3::1")).unwrap();
        drop(b);
        assert!(Counts::admit(&c, ip("2001:db8:1:2::9")).is_ok());
        assert_eq!(c.lock().by_address.len(), 2);
    }

    #[test]
    fn mapped_ipv6_counts_as_its_ipv4_address() {
        let c = counts(10, 1, &[]);
        let _a = Counts::admit(&c, A).unwrap();
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(Counts::admit(&c, mapped).err(), Some(OverCap::PerAddress));
    }
}
