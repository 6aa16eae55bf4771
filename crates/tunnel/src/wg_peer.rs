//! One WireGuard peer's protocol state, as the peer table holds it: its boringtun `Tunn`
//! behind a lock, and its endpoint (configured, then roaming on authenticated packets, of
//! either underlay family). Kept apart from `wg` so that the peer table can hold it without
//! depending on the carrier.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use boringtun::noise::Tunn;

use crate::wg_keys::PublicKey;

/// One WireGuard peer.
pub(crate) struct WgPeer {
    pub key: PublicKey,
    /// Ours for this peer; its receiver index in the messages it sends us, shifted left 8.
    pub index: u32,
    /// Empty once the peer is removed.
    tunn: Mutex<Option<Tunn>>,
    /// Where to send: `underlay:port` at first, then wherever the last authenticated packet
    /// came from (IPv4 or IPv6: a peer may roam across families, as WireGuard allows). Read
    /// lock-free by every send batch; written only when it changes.
    endpoint: ArcSwap<SocketAddr>,
    configured: ArcSwap<SocketAddr>,
    created: Instant,
    /// Milliseconds after `created` of the last handshake started on a hint (see
    /// `ingress::stale_session_hint`), plus one; 0 for never.
    hinted_at: AtomicU64,
}

impl WgPeer {
    pub(crate) fn new(key: PublicKey, index: u32, tunn: Tunn, at: SocketAddr) -> WgPeer {
        WgPeer {
            key,
            index,
            tunn: Mutex::new(Some(tunn)),
            endpoint: ArcSwap::from_pointee(at),
            configured: ArcSwap::from_pointee(at),
            created: Instant::now(),
            hinted_at: AtomicU64::new(0),
        }
    }

    /// Whether a handshake may be started on an unauthenticated hint now (once a second).
    pub(crate) fn may_hint(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64 + 1;
        let last = self.hinted_at.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .hinted_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Tunn>> {
        self.tunn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn endpoint(&self) -> SocketAddr {
        **self.endpoint.load()
    }

    /// Standard WireGuard roaming: called only after a packet authenticated by the peer.
    pub(crate) fn authenticated_from(&self, src: SocketAddr) {
        if **self.endpoint.load() != src {
            self.endpoint.store(Arc::new(src));
        }
    }

    /// A new configured address replaces a roamed endpoint; the same one keeps it.
    pub(crate) fn configure(&self, addr: SocketAddr) {
        if *self.configured.swap(Arc::new(addr)) != addr {
            self.endpoint.store(Arc::new(addr));
        }
    }

    /// Seconds since the current session's handshake, if there is one.
    pub(crate) fn last_handshake_secs(&self) -> Option<u64> {
        self.lock()
            .as_ref()
            .and_then(|t| t.stats().0)
            .map(|d| d.as_secs())
    }
}
