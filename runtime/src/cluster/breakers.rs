//! Circuit breakers, as Envoy's and with Istio's mapping: `http2MaxRequests` bounds the
//! requests in flight to a cluster, `tcp.maxConnections` the connections in use by its
//! HTTP/1.1 requests and TCP routes, `http1MaxPendingRequests` the requests waiting
//! for one of those connections, and `maxRetries` the retries in flight. Past a limit
//! the request is answered at once with 503 and flag `UO` (Envoy's overflow); a retry
//! past `maxRetries` is not made. Counts are the gateway's, across its workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::limits::{One, take, within};
use wasmgate_config::model::traffic::PoolLimits;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Requests,
    Pending,
    Connections,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overflow::Requests => "http2MaxRequests",
            Overflow::Pending => "http1MaxPendingRequests",
            Overflow::Connections => "maxConnections",
        })
    }
}

#[derive(Debug)]
pub struct Breakers {
    max_requests: u32,
    max_pending: u32,
    max_retries: u32,
    requests: Arc<AtomicUsize>,
    retries: Arc<AtomicUsize>,
    /// Connections in use and their limit; `None` when unlimited.
    connections: Option<Arc<Connections>>,
}

/// Connections in use against `tcp.maxConnections`: an atomic count on the fast path;
/// requests that find none free wait on `freed`, at most `http1MaxPendingRequests`.
#[derive(Debug)]
struct Connections {
    max: u32,
    in_use: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

impl Breakers {
    /// `limit_connections`: whether each request holds a connection of its own
    /// (HTTP/1.1; an HTTP/2 cluster multiplexes one connection per endpoint).
    pub fn new(limits: &PoolLimits, limit_connections: bool) -> Breakers {
        let connections = (limit_connections && limits.max_connections < u32::MAX).then(|| {
            Arc::new(Connections {
                max: limits.max_connections,
                in_use: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                freed: Notify::new(),
            })
        });
        Breakers {
            max_requests: limits.max_requests,
            max_pending: limits.max_pending_requests,
            max_retries: limits.max_retries,
            requests: Arc::new(AtomicUsize::new(0)),
            retries: Arc::new(AtomicUsize::new(0)),
            connections,
        }
    }

    pub fn admit(&self) -> Result<Admitted, Overflow> {
        if self.max_requests == u32::MAX {
            return Ok(Admitted(None));
        }
        take(&self.requests, bound(self.max_requests))
            .map(|c| Admitted(Some(c)))
            .ok_or(Overflow::Requests)
    }

    pub async fn connection(&self) -> Result<Option<ConnectionSlot>, Overflow> {
        let Some(c) = &self.connections else {
            return Ok(None);
        };
        if let Some(slot) = c.try_take() {
            return Ok(Some(slot));
        }
        // Wait in line, if the line has room; the place is given back however the wait
        // ends (a slot, or the request dropped by its timeout or its client).
        if !within(&c.waiting, bound(self.max_pending)) {
            return Err(Overflow::Pending);
        }
        let _in_line = InLine(c.clone());
        loop {
            let freed = c.freed.notified();
            tokio::pin!(freed);
            // Registered before trying, so a slot freed in between wakes us.
            freed.as_mut().enable();
            if let Some(slot) = c.try_take() {
                return Ok(Some(slot));
            }
            freed.await;
        }
    }

    pub fn connection_now(&self) -> Result<Option<ConnectionSlot>, Overflow> {
        match &self.connections {
            None => Ok(None),
            Some(c) => c.try_take().map(Some).ok_or(Overflow::Connections),
        }
    }

    pub fn retry(&self) -> Option<RetrySlot> {
        if self.max_retries == u32::MAX {
            return Some(RetrySlot(None));
        }
        take(&self.retries, bound(self.max_retries)).map(|c| RetrySlot(Some(c)))
    }
}

impl Connections {
    fn try_take(self: &Arc<Self>) -> Option<ConnectionSlot> {
        within(&self.in_use, bound(self.max)).then(|| ConnectionSlot(self.clone()))
    }
}

/// A place in the line for a connection, given back on drop.
struct InLine(Arc<Connections>);

impl Drop for InLine {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A limit from the DestinationRule, as a count's bound.
fn bound(limit: u32) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// A request in flight (`http2MaxRequests`), until dropped.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] Option<One>);

/// A retry in flight (`maxRetries`), until dropped.
#[derive(Debug)]
pub struct RetrySlot(#[allow(dead_code)] Option<One>);

/// A connection in use (`maxConnections`), until dropped: then one waiting request, if
/// any, is woken to take it.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Connections>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.0.waiting.load(Ordering::Acquire) > 0 {
            self.0.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: u32, connections: u32, pending: u32, retries: u32) -> PoolLimits {
        PoolLimits {
            max_requests: requests,
            max_connections: connections,
            max_pending_requests: pending,
            max_retries: retries,
            ..PoolLimits::default()
        }
    }

    #[tokio::test]
    async fn pending_line_overflows_past_its_limit() {
        let b = Arc::new(Breakers::new(&limits(u32::MAX, 1, 1, u32::MAX), true));
        let first = b.connection().await.expect("free").expect("limited");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.connection().await.map(|s| s.is_some()) })
        };
        tokio::task::yield_now().await;
        let waiting = || {
            b.connections
                .as_ref()
                .map_or(0, |c| c.waiting.load(Ordering::Acquire))
        };
        while waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.connection().await.err(), Some(Overflow::Pending));
        drop(first);
        assert_eq!(waiter.await.ok(), Some(Ok(true)), "the waiter gets it");
        assert_eq!(waiting(), 0);
        // A waiter that gives up leaves the line.
        let held = b.connection().await.expect("free").expect("limited");
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), b.connection()).await;
        assert!(gave_up.is_err(), "still waiting");
        assert_eq!(waiting(), 0, "its place was given back");
        drop(held);
    }

    #[test]
    fn retries_and_requests_count_while_held() {
        let b = Breakers::new(&limits(2, u32::MAX, u32::MAX, 1), true);
        let r = b.retry();
        assert!(r.is_some());
        assert!(b.retry().is_none());
        drop(r);
        assert!(b.retry().is_some());
        assert!(
            b.connections.is_none(),
            "unlimited connections need no permits"
        );
        let (one, two) = (b.admit(), b.admit());
        assert!(one.is_ok() && two.is_ok());
        assert_eq!(b.admit().err(), Some(Overflow::Requests));
        drop(one);
        assert!(b.admit().is_ok());
        let unlimited = Breakers::new(&PoolLimits::default(), true);
        assert!(unlimited.retry().is_some());
    }
}
