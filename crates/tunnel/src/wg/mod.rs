//! WireGuard between nodes, as one more [`crate::carrier::Carrier`] of the engine.
//!
//! The protocol state is boringtun's (`boringtun` 0.7, `default-features = false`: only its
//! `noise` module, no device): Noise_IKpsk2 handshakes, ChaCha20-Poly1305 transport through
//! ring, counters with the replay window, cookie replies under load (its `RateLimiter`), and
//! the rekey/keepalive timers. Chosen over gotatun for its licence (BSD-3 rather than MPL-2.0)
//! and because it builds on our stable toolchain with room to spare; no crypto is written here.
//!
//! What twill adds is the engine around it: per-queue workers encrypt whole TSO bursts under
//! one lock of the peer's `Tunn` into preallocated buffers and send them with `sendmmsg` and
//! UDP GSO; received datagrams arrive with `recvmmsg` and UDP GRO, are classified and
//! authenticated ([`ingress`]), pass the same inner-address policy as the other carriers,
//! and are written to the TUN device coalesced. Every drop is counted by reason.
//!
//! The underlay is IPv4, IPv6 or both: the carrier has a socket group on the WireGuard port
//! for each family the node has an address of, and a peer's endpoint is of either family
//! (its configured underlay address, then wherever its last authenticated packet came from,
//! as standard WireGuard roams).
//!
//! Modules: `state` (identity, the peers' `Tunn`s, timers), `ingress` (socket-free receive path), `carrier` (the sockets), `fuzzing` (a harness for
//! the fuzz target); the key types live in `crate::wg_keys` and one peer's state in
//! `crate::wg_peer`, which the peer table holds. There is no kernel fast path for WireGuard.

mod carrier;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod ingress;
pub(crate) mod state;

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

pub use crate::wg_keys::{KeyError, PrivateKey, PublicKey};
pub(crate) use carrier::WgCarrier;

/// The standard WireGuard port.
pub const DEFAULT_PORT: u16 = 51820;

/// Bytes WireGuard adds on the underlay: outer IPv4 20 + UDP 8 + message header 16 + tag 16.
pub const OVERHEAD: u32 = 60;

/// The same over an IPv6 underlay (outer IPv6 header 40).
pub const OVERHEAD6: u32 = OVERHEAD + 20;

/// This node's WireGuard settings ([`crate::TunnelConfig::wireguard`]).
#[derive(Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    pub private_key: PrivateKey,
    /// Mixed into every handshake (the same for all peers, as Flannel's `PSK`).
    pub preshared_key: Option<[u8; 32]>,
    /// Seconds between keepalives when idle; 0 turns them off.
    pub persistent_keepalive: u16,
}

impl fmt::Debug for WireguardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireguardConfig")
            .field("private_key", &self.private_key)
            .field("preshared_key", &self.preshared_key.map(|_| "<redacted>"))
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

/// WireGuard view of one peer in [`crate::PeerStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WgPeerStats {
    pub public_key: PublicKey,
    /// Where its packets go now (the configured address until it roams, to an address of
    /// either family).
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the current session's handshake; none without a session.
    pub last_handshake_secs: Option<u64>,
}
