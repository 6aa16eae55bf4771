//! twill's userspace tunnel engine: carries pod traffic between nodes where the kernel has no
//! module for the mode (ipip), in Flannel's `udp` framing, or encrypted with WireGuard.
//!
//! A [`Tunnel`] owns a persistent multi-queue TUN device (with `IFF_VNET_HDR`, so one read or
//! write moves a whole 64 KiB TCP super-packet) and, per queue, one socket and one worker
//! thread moving both ways: TUN → underlay (segment, look up the peer by inner destination, encapsulate, send
//! in batches with `sendmmsg` and UDP GSO), and underlay → TUN (receive in batches with
//! `recvmmsg` and UDP GRO, validate, coalesce TCP segments back into super-packets, write).
//!
//! The underlay is IPv4 or IPv6 per peer ([`Peer::underlay`]): a node has a socket of each
//! family it has an address of ([`TunnelConfig::local_ip`], [`TunnelConfig::local_ip6`]).
//! Over IPv6, udp keeps Flannel's framing and ipip is Linux's `ip6tnl` (`mode any`: next header
//! 4 for IPv4 inside, 41 for IPv6 inside).
//!
//! The pods' families are those of the node's subnets: IPv4 ([`TunnelConfig::local_subnet`]),
//! IPv6 ([`TunnelConfig::local_subnet6`]) or both. A node of an IPv6-only cluster has only an
//! IPv6 subnet (and usually only an IPv6 underlay): its tunnel carries IPv6 alone, and its
//! peers have only IPv6 subnets ([`Peer::subnet`] None).
//!
//! The receive side is a port open to the network, so every datagram is checked before its
//! inner packet reaches the kernel: outer source must be a peer's underlay address, inner
//! source inside that peer's subnet (of the inner packet's family: IPv4 or IPv6, each only
//! where both ends have a subnet of it), inner destination inside ours. Everything else is
//! dropped and counted by reason ([`DropCounters`]); nothing on the fast path allocates.
//!
//! A kernel fast path (`offload`: two tc BPF programs) carries the traffic of known peers
//! without leaving the kernel, keeping GSO super-packets whole; the engine remains the slow
//! path for everything else, with the same checks and counters.
//!
//! Modules: [`wire`] (pure codecs, fuzzed), `peers` (the lock-free peer table), `carrier`
//! (the encapsulations behind one trait), [`wg`] (the WireGuard carrier, keys and protocol
//! state), `engine` (the worker loops), `device` (TUN), `offload` (the BPF fast path), `sys`
//! (the only `unsafe`: sendmmsg/recvmmsg).

mod buf;
mod carrier;
mod device;
mod engine;
mod offload;
mod peers;
mod sys;
pub mod wg;
mod wg_keys;
mod wg_peer;
pub mod wire;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::carrier::{Carrier, IpipCarrier, UdpCarrier, UdpCarriers};
use crate::peers::{DropAtomics, PeerTable};
pub use crate::wire::DropReason;

/// Flannel's UDP port.
pub const DEFAULT_UDP_PORT: u16 = 8285;

/// How inner packets travel between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Flannel's `udp` backend framing: the UDP payload is the inner IPv4 (or, dual-stack,
    /// IPv6) packet.
    Udp { port: u16 },
    /// IPv4-in-IPv4 (protocol 4), compatible with Linux's `ipip` driver; dual-stack, IPv6 pod
    /// packets as IPv6-in-IPv4 (protocol 41), compatible with Linux's `sit`. Over an IPv6
    /// underlay, IPv4 or IPv6 in IPv6 (next header 4 or 41), compatible with Linux's `ip6tnl`
    /// in `mode any`.
    Ipip,
    /// WireGuard over UDP, interoperable with standard WireGuard; needs
    /// [`TunnelConfig::wireguard`].
    Wireguard { port: u16 },
}

impl Default for Encap {
    fn default() -> Encap {
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        }
    }
}

impl Encap {
    /// Bytes added to each inner packet on an IPv4 underlay: TUN MTU = underlay MTU − this.
    pub fn overhead(&self) -> u32 {
        match self {
            Encap::Udp { .. } => wire::UDP_OVERHEAD,
            Encap::Ipip => wire::IPIP_OVERHEAD,
            Encap::Wireguard { .. } => wg::OVERHEAD,
        }
    }

    /// Bytes added to each inner packet on an IPv6 underlay (20 more than on IPv4): a tunnel
    /// with IPv6-underlay peers needs TUN MTU = underlay MTU − this.
    pub fn overhead6(&self) -> u32 {
        match self {
            Encap::Udp { .. } => wire::UDP6_OVERHEAD,
            Encap::Ipip => wire::IPIP6_OVERHEAD,
            Encap::Wireguard { .. } => wg::OVERHEAD6,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Encap::Udp { .. } => "udp",
            Encap::Ipip => "ipip",
            Encap::Wireguard { .. } => "wireguard",
        }
    }
}

/// What [`Tunnel::start`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    pub encap: Encap,
    /// TUN device name, e.g. "twill.tun" (at most 15 bytes).
    pub device: String,
    /// TUN MTU = underlay MTU − [`Encap::overhead`].
    pub mtu: u32,
    /// This node's IPv4 pod subnet: decapsulated IPv4 packets must be addressed into it.
    /// `None` on a node of an IPv6-only cluster: the tunnel carries no IPv4 (every IPv4 packet
    /// received is malformed), and it needs `local_subnet6`.
    pub local_subnet: Option<Ipv4Net>,
    /// This node's IPv6 pod subnet on a dual-stack or IPv6-only cluster: the TUN device then
    /// carries IPv6 (udp: the inner IPv6 packet as the payload; ipip: protocol 41). `None`:
    /// IPv4 only, IPv6 stays disabled on the device.
    pub local_subnet6: Option<Ipv6Net>,
    /// IPv4 underlay address to bind and send from (None: this node has no IPv4 underlay,
    /// and peers must have IPv6 underlay addresses). The kernel fast path needs one, and an
    /// IPv4 pod subnet.
    pub local_ip: Option<Ipv4Addr>,
    /// IPv6 underlay address to bind and send from, for peers whose underlay is IPv6
    /// (WireGuard: and for peers that roam to an IPv6 endpoint).
    pub local_ip6: Option<Ipv6Addr>,
    /// Worker queues (0 = number of CPUs): TUN queues, sockets and worker pairs.
    pub queues: usize,
    /// Use the kernel fast path (tc BPF) where the kernel takes it; the engine alone
    /// otherwise. WireGuard has none: ignored.
    pub kernel_path: bool,
    /// This node's WireGuard key and options; required with [`Encap::Wireguard`].
    pub wireguard: Option<wg::WireguardConfig>,
}

/// Another node: packets for its subnets go to `underlay`, and only `underlay` may send
/// packets from them. The underlay address's family picks the socket: an IPv6 one needs
/// [`TunnelConfig::local_ip6`], an IPv4 one [`TunnelConfig::local_ip`] (a peer the node has no
/// socket for is unreachable: its packets count as send errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    /// The node's IPv4 pod subnet; None for a node of an IPv6-only cluster, which sends and
    /// receives no IPv4.
    pub subnet: Option<Ipv4Net>,
    /// The node's IPv6 pod subnet (dual-stack, IPv6-only): IPv6 packets for it go to
    /// `underlay`, and only `underlay` may send IPv6 packets from it. Without one, the peer
    /// sends and receives no IPv6.
    pub subnet6: Option<Ipv6Net>,
    pub underlay: IpAddr,
    /// The node's WireGuard public key; a WireGuard tunnel ignores peers without one. Its
    /// endpoint starts as `underlay:port` and then follows authenticated packets.
    pub public_key: Option<wg::PublicKey>,
}

/// Traffic with one peer. Bytes count inner packets (what the pods sent), not outer headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStats {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    pub underlay: IpAddr,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// WireGuard tunnels only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<wg::WgPeerStats>,
}

/// Packets dropped, by reason (inner packets; a datagram that carried several counts each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCounters {
    /// Outer source is not a peer's underlay address.
    pub unknown_peer: u64,
    /// Inner source outside the sending peer's subnet (of the inner packet's family).
    pub spoofed_inner_source: u64,
    /// Inner destination outside the local subnet (of the inner packet's family).
    pub foreign_inner_destination: u64,
    /// Truncated, bad IPv4 / IPv6 header or length, not IPv4 (nor IPv6 on a dual-stack tunnel).
    pub malformed: u64,
    /// From the TUN device to a subnet that no peer owns.
    pub no_peer_for_destination: u64,
    /// The kernel refused a send (underlay or TUN write).
    pub send_errors: u64,
    /// WireGuard: handshake from a key that is no current peer's, or a message for a
    /// session (receiver index) we do not have.
    pub unknown_key: u64,
    /// WireGuard: MAC or AEAD tag does not verify.
    pub bad_mac: u64,
    /// WireGuard: data counter already received.
    pub replay: u64,
    /// WireGuard: data counter older than the replay window.
    pub stale_counter: u64,
    /// WireGuard: handshake refused by the protocol (replayed timestamp, unexpected).
    pub handshake_rejected: u64,
    /// WireGuard: handshakes answered with a cookie under load (not processed; not counted
    /// in [`DropCounters::total`]).
    pub cookies_sent: u64,
}

impl DropCounters {
    /// Sum of all reasons.
    pub fn total(&self) -> u64 {
        self.unknown_peer
            + self.spoofed_inner_source
            + self.foreign_inner_destination
            + self.malformed
            + self.no_peer_for_destination
            + self.send_errors
            + self.unknown_key
            + self.bad_mac
            + self.replay
            + self.stale_counter
            + self.handshake_rejected
    }
}

/// A snapshot of the engine's counters, for the agent's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStats {
    pub device: String,
    /// "udp", "ipip" or "wireguard".
    pub encap: String,
    pub queues: usize,
    /// Whether the TUN device moves TCP super-packets (IFF_VNET_HDR with TSO).
    pub offload: bool,
    /// The underlay interface when the kernel fast path (tc BPF) carries known peers' traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    /// Per peer: traffic through the engine plus the kernel fast path.
    pub peers: Vec<PeerStats>,
    pub drops: DropCounters,
}

/// Errors of [`Tunnel::start`] and [`delete_device`].
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("invalid tunnel configuration: {0}")]
    Config(String),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] twill_netlink::Error),
}

pub use offload::OffloadError;

/// State the workers share with the handle.
pub(crate) struct Shared {
    pub peers: ArcSwap<PeerTable>,
    pub drops: DropAtomics,
    pub local_subnet: Option<Ipv4Net>,
    pub local_subnet6: Option<Ipv6Net>,
    pub mtu: usize,
    pub stop: AtomicBool,
    /// Readable (EOF) once the handle drops its end: wakes workers blocked in poll.
    pub stop_fd: UnixStream,
}

/// A running tunnel. Dropping it stops the workers like [`Tunnel::shutdown`]; the device stays.
pub struct Tunnel {
    device: String,
    encap: Encap,
    queues: usize,
    offload: bool,
    shared: Arc<Shared>,
    /// The kernel fast path, when in use; the lock also serialises `set_peers`.
    kernel: Mutex<Option<offload::KernelPath>>,
    wg: Option<Arc<wg::state::WgShared>>,
    stop_writer: Option<UnixStream>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("device", &self.device)
            .field("encap", &self.encap)
            .field("queues", &self.queues)
            .field("offload", &self.offload)
            .field("kernel_path", &self.kernel_path_device())
            .finish()
    }
}

impl Tunnel {
    /// Creates (or re-attaches to) the TUN device in the calling thread's network namespace,
    /// sets MTU and up, makes it persistent, opens the sockets and starts the workers. The
    /// peer table starts empty.
    pub fn start(cfg: TunnelConfig) -> Result<Tunnel, TunnelError> {
        device::check_name(&cfg.device)?;
        match (&cfg.encap, &cfg.wireguard) {
            (Encap::Udp { port: 0 }, _) => return Err(TunnelError::Config("udp port 0".into())),
            (Encap::Wireguard { port: 0 }, _) => {
                return Err(TunnelError::Config("wireguard port 0".into()));
            }
            (Encap::Wireguard { .. }, None) => {
                return Err(TunnelError::Config(
                    "wireguard encapsulation without a wireguard configuration".into(),
                ));
            }
            _ => {}
        }
        if cfg.local_ip.is_none() && cfg.local_ip6.is_none() {
            return Err(TunnelError::Config(
                "no underlay address: local_ip, local_ip6 or both".into(),
            ));
        }
        if cfg.local_subnet.is_none() && cfg.local_subnet6.is_none() {
            return Err(TunnelError::Config(
                "no pod subnet: local_subnet, local_subnet6 or both".into(),
            ));
        }
        let queues = match cfg.queues {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(64);
        let local_subnet = cfg.local_subnet.map(|n| n.trunc());
        let local_subnet6 = cfg.local_subnet6.map(|n| n.trunc());
        let (tuns, offload) = device::open(&cfg.device, cfg.mtu, queues, local_subnet6.is_some())?;

        let (stop_writer, stop_fd) = UnixStream::pair().map_err(|source| TunnelError::Io {
            op: "create stop socket pair".into(),
            source,
        })?;
        let shared = Arc::new(Shared {
            peers: ArcSwap::from_pointee(PeerTable::default()),
            drops: DropAtomics::default(),
            local_subnet,
            local_subnet6,
            mtu: cfg.mtu as usize,
            stop: AtomicBool::new(false),
            stop_fd,
        });
        // The kernel fast path carries IPv4-underlay peers of a node with IPv4 pods only.
        let kernel_ip = cfg
            .local_ip
            .zip(local_subnet)
            .filter(|_| cfg.kernel_path && !matches!(cfg.encap, Encap::Wireguard { .. }));
        let kernel = if let Some((local_ip, local_subnet)) = kernel_ip {
            match offload::KernelPath::load(
                &cfg.device,
                cfg.encap,
                local_ip,
                local_subnet,
                local_subnet6,
            ) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "kernel fast path unavailable; the engine carries all traffic");
                    None
                }
            }
        } else {
            None
        };
        if kernel.is_none() {
            // Filters of an earlier run would keep forwarding with that run's peers.
            offload::detach(&cfg.device);
        }
        let mut tunnel = Tunnel {
            device: cfg.device.clone(),
            encap: cfg.encap,
            queues,
            offload,
            shared,
            kernel: Mutex::new(kernel),
            wg: None,
            stop_writer: Some(stop_writer),
            workers: Vec::new(),
        };
        match cfg.encap {
            Encap::Udp { port } => {
                let carriers = (0..queues)
                    .map(|_| UdpCarriers::open(cfg.local_ip, cfg.local_ip6, port))
                    .collect::<Result<Vec<_>, _>>()?;
                if queues > 1 {
                    carrier::shard_udp(&carriers[0], queues)?;
                }
                tunnel.spawn(tuns, carriers)?;
            }
            Encap::Ipip => {
                let carriers = (0..queues)
                    .map(|q| {
                        IpipCarrier::open(
                            (cfg.local_ip, cfg.local_ip6),
                            q,
                            queues,
                            local_subnet6.is_some(),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                tunnel.spawn(tuns, carriers)?;
            }
            Encap::Wireguard { port } => {
                let sockets = (0..queues)
                    .map(|_| -> Result<_, TunnelError> {
                        let open = |ip: IpAddr| UdpCarrier::open(ip, port);
                        Ok((
                            cfg.local_ip.map(|a| open(a.into())).transpose()?,
                            cfg.local_ip6.map(|a| open(a.into())).transpose()?,
                        ))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let dup = |s: &Option<UdpCarrier>| {
                    s.as_ref()
                        .map(|c| c.sock.try_clone())
                        .transpose()
                        .map_err(|source| TunnelError::Io {
                            op: "duplicate the WireGuard socket".into(),
                            source,
                        })
                };
                let control = wg::state::ControlSockets {
                    v4: dup(&sockets[0].0)?,
                    v6: dup(&sockets[0].1)?,
                };
                let wg_cfg = cfg
                    .wireguard
                    .as_ref()
                    .ok_or_else(|| TunnelError::Config("wireguard configuration missing".into()))?;
                let wg = Arc::new(wg::state::WgShared::new(wg_cfg, port, control));
                let carriers = sockets
                    .into_iter()
                    .map(|s| wg::WgCarrier::new(s, Arc::clone(&wg), cfg.mtu as usize))
                    .collect();
                tunnel.wg = Some(Arc::clone(&wg));
                tunnel.spawn(tuns, carriers)?;
                let shared = Arc::clone(&tunnel.shared);
                let timers = std::thread::Builder::new()
                    .name("twill-wg-timers".into())
                    .spawn(move || wg.run_timers(&shared))
                    .map_err(|source| TunnelError::Io {
                        op: "spawn WireGuard timer thread".into(),
                        source,
                    })?;
                tunnel.workers.push(timers);
            }
        }
        tracing::info!(
            device = %cfg.device,
            encap = cfg.encap.name(),
            queues,
            offload,
            kernel_path = tunnel.kernel_path_device().as_deref(),
            "tunnel started"
        );
        Ok(tunnel)
    }

    fn spawn<C: Carrier>(
        &mut self,
        tuns: Vec<tun_rs::SyncDevice>,
        carriers: Vec<C>,
    ) -> Result<(), TunnelError> {
        for (q, (tun, carrier)) in tuns.into_iter().zip(carriers).enumerate() {
            let shared = Arc::clone(&self.shared);
            let offload = self.offload;
            let handle = std::thread::Builder::new()
                .name(format!("twill-q{q}"))
                .spawn(move || engine::run(&tun, &carrier, &shared, offload))
                .map_err(|source| TunnelError::Io {
                    op: "spawn tunnel worker".into(),
                    source,
                })?;
            self.workers.push(handle);
        }
        Ok(())
    }

    /// Replaces the peer table atomically. Counters of nodes that stay are kept. The kernel
    /// fast path gets the same peers; if it fails, it is removed and the engine carries all.
    pub fn set_peers(&self, peers: &[Peer]) {
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        let port = match self.encap {
            Encap::Udp { port } | Encap::Wireguard { port } => port,
            Encap::Ipip => 0,
        };
        let old = self.shared.peers.load();
        let mut table = PeerTable::build(peers, port, Some(&old));
        let initiate = match &self.wg {
            Some(wg) => wg.attach(&mut table, &old),
            None => Vec::new(),
        };
        let table = Arc::new(table);
        self.shared.peers.store(Arc::clone(&table));
        if let Some(wg) = &self.wg {
            wg.initiate_with(&table, &initiate);
        }
        if let Some(k) = kernel.as_mut()
            && let Err(e) = k.set_peers(peers)
        {
            tracing::warn!(error = %e, "kernel fast path failed; the engine carries all traffic");
            k.remove();
            *kernel = None;
        }
    }

    /// The underlay interface of the kernel fast path, if it is in use.
    pub fn kernel_path_device(&self) -> Option<String> {
        let kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        kernel.as_ref().map(|k| k.underlay().to_string())
    }

    /// Per-peer traffic and drop counters.
    pub fn stats(&self) -> TunnelStats {
        let (kernel_counters, kernel_path) = {
            let kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
            match kernel.as_ref() {
                Some(k) => (k.counters(), Some(k.underlay().to_string())),
                None => Default::default(),
            }
        };
        let table = self.shared.peers.load();
        let peers = table
            .entries
            .iter()
            .map(|e| {
                let k = match e.peer.underlay {
                    IpAddr::V4(a) => kernel_counters.get(&a).copied().unwrap_or_default(),
                    IpAddr::V6(_) => Default::default(),
                };
                PeerStats {
                    node: e.peer.node.clone(),
                    subnet: e.peer.subnet,
                    subnet6: e.peer.subnet6,
                    underlay: e.peer.underlay,
                    tx_packets: e.counters.tx_packets.load(Ordering::Relaxed) + k.tx_packets,
                    tx_bytes: e.counters.tx_bytes.load(Ordering::Relaxed) + k.tx_bytes,
                    rx_packets: e.counters.rx_packets.load(Ordering::Relaxed) + k.rx_packets,
                    rx_bytes: e.counters.rx_bytes.load(Ordering::Relaxed) + k.rx_bytes,
                    wireguard: e.wg.as_ref().map(|w| wg::WgPeerStats {
                        public_key: w.key,
                        endpoint: Some(w.endpoint()),
                        last_handshake_secs: w.last_handshake_secs(),
                    }),
                }
            })
            .collect();
        let d = &self.shared.drops;
        TunnelStats {
            device: self.device.clone(),
            encap: self.encap.name().to_string(),
            queues: self.queues,
            offload: self.offload,
            kernel_path,
            peers,
            drops: DropCounters {
                unknown_peer: d.get(DropReason::UnknownPeer),
                spoofed_inner_source: d.get(DropReason::SpoofedInnerSource),
                foreign_inner_destination: d.get(DropReason::ForeignInnerDestination),
                malformed: d.get(DropReason::Malformed),
                no_peer_for_destination: d.get(DropReason::NoPeerForDestination),
                send_errors: d.get(DropReason::SendError),
                unknown_key: d.get(DropReason::UnknownKey),
                bad_mac: d.get(DropReason::BadMac),
                replay: d.get(DropReason::Replay),
                stale_counter: d.get(DropReason::StaleCounter),
                handshake_rejected: d.get(DropReason::HandshakeRejected),
                cookies_sent: d.get(DropReason::CookieSent),
            },
        }
    }

    /// Switches this node to a new WireGuard key (rotation): handshakes use it from now on and
    /// one is started with every peer at once. Does nothing on other encapsulations.
    pub fn set_private_key(&self, key: wg::PrivateKey) {
        if let Some(wg) = &self.wg {
            let _serialised = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
            wg.set_private_key(&key, &self.shared.peers.load());
        }
    }

    /// This node's WireGuard public key, on a WireGuard tunnel.
    pub fn public_key(&self) -> Option<wg::PublicKey> {
        self.wg.as_ref().map(|w| w.public_key())
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// Stops the workers and closes the queues and sockets; the persistent device stays, with
    /// its routes, for the next [`Tunnel::start`].
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Closing our end makes the workers' stop descriptor readable (EOF) and ends their poll.
        self.stop_writer.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes the persistent TUN device `name` from the calling thread's network namespace (for
/// `twill node leave`). Missing is fine; a link of that name that is not a multi-queue TUN
/// device is refused.
/// The kernel fast path's filters go too, from the underlay as well.
pub fn delete_device(name: &str) -> Result<(), TunnelError> {
    offload::detach(name);
    device::delete(name)
}
