//! One WireGuard peer's protocol state, as the peer table holds it: its boringtun `Tunn`
//! behind a lock, and its endpoint (configured, then roaming on authenticated packets). Kept
//! apart from `wg` so that the peer table can hold it without depending on the carrier.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

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
    /// came from.
    endpoint: AtomicU64,
    configured: AtomicU64,
    created: Instant,
    /// Milliseconds after `created` of the last handshake started on a hint (see
    /// `ingress::stale_session_hint`), plus one; 0 for never.
    hinted_at: AtomicU64,
}

impl WgPeer {
    pub(crate) fn new(key: PublicKey, index: u32, tunn: Tunn, at: SocketAddrV4) -> WgPeer {
        WgPeer {
            key,
            index,
            tunn: Mutex::new(Some(tunn)),
            endpoint: AtomicU64::new(pack(at)),
            configured: AtomicU64::new(pack(at)),
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

    pub(crate) fn endpoint(&self) -> SocketAddrV4 {
        unpack(self.endpoint.load(Ordering::Relaxed))
    }

    /// Standard WireGuard roaming: called only after a packet authenticated by the peer.
    pub(crate) fn authenticated_from(&self, src: SocketAddrV4) {
        let v = pack(src);
        if self.endpoint.load(Ordering::Relaxed) != v {
            self.endpoint.store(v, Ordering::Relaxed);
        }
    }

    /// A new configured address replaces a roamed endpoint; the same one keeps it.
    pub(crate) fn configure(&self, addr: SocketAddrV4) {
        let v = pack(addr);
        if self.configured.swap(v, Ordering::Relaxed) != v {
            self.endpoint.store(v, Ordering::Relaxed);
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

fn pack(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn unpack(v: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), v as u16)
}
