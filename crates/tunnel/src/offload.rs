//! The kernel fast path for ipip and udp: two tc programs (`bpf/offload.c`, built by
//! `build.rs`) that encapsulate on the TUN device's egress and decapsulate on the underlay
//! device's ingress, so that pod traffic to known peers never leaves the kernel and GSO
//! super-packets stay whole (raw sockets cannot send them; that capped the userspace ipip
//! path at a quarter of kernel VXLAN).
//!
//! The userspace engine stays the slow path and the safety net: whatever the programs do not
//! handle (unknown peers, spoofed sources, options, fragments) passes through untouched and
//! reaches the engine, which checks and counts it as before. The programs make the same
//! checks as the engine, from maps this module keeps equal to the engine's peer table.
//!
//! Attaching and detaching go through netlink, which acts in the calling thread's network
//! namespace; a [`KernelPath`] remembers the namespace it was loaded in and always attaches
//! there, whichever thread calls it later.
//!
//! The filters are attached by netlink (cls_bpf, direct action) at a fixed priority and
//! handle, and deliberately left attached when the process ends: a killed or restarting agent
//! does not interrupt tunnelled traffic. The next start loads fresh programs and maps, fills
//! the maps, and only then replaces the old filters in place.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};
use ipnet::Ipv4Net;

use crate::Peer;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/offload.bpf.o"));

/// Where our filters sit: a priority of their own, so other tc users are not disturbed.
const PRIORITY: u16 = 0x7711;
const HANDLE: TcHandle = TcHandle::new(0, 0x7711);
const ENCAP: &str = "twill_encap";
const DECAP: &str = "twill_decap";

#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("no interface holds the underlay address {0}")]
    NoUnderlay(Ipv4Addr),
    #[error("{0}: {1}")]
    Bpf(&'static str, String),
}

fn bpf<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> OffloadError {
    move |e| OffloadError::Bpf(what, e.to_string())
}

/// A map key or value holding an IPv4 address in network byte order, as the programs read it.
fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Loaded programs and the maps they read, for one TUN device and one underlay device.
pub(crate) struct KernelPath {
    /// The namespace of the devices (where `load` ran).
    netns: twill_netlink::netns::Netns,
    ebpf: aya::Ebpf,
    tun: String,
    underlay: String,
    routes: LpmTrie<MapData, u32, u32>,
    peers: BpfHashMap<MapData, u32, [u32; 2]>,
    counters: PerCpuHashMap<MapData, u32, [u64; 4]>,
    /// The underlay addresses and subnets currently in the maps.
    installed: HashMap<Ipv4Addr, Ipv4Net>,
    attached: bool,
}

/// Traffic one peer moved through the kernel path (inner packets and bytes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl KernelPath {
    /// Loads the programs (the kernel's verifier runs here) and fills the configuration map.
    /// Nothing is attached until the first [`KernelPath::set_peers`].
    pub(crate) fn load(
        tun: &str,
        encap: crate::Encap,
        local_ip: Ipv4Addr,
        local_subnet: Ipv4Net,
    ) -> Result<KernelPath, OffloadError> {
        let netns =
            twill_netlink::netns::Netns::open(std::path::Path::new("/proc/thread-self/ns/net"))
                .map_err(bpf("opening our network namespace"))?;
        let underlay = interface_with_address(local_ip)?;
        let underlay_index = nix::net::if_::if_nametoindex(underlay.as_str())
            .map_err(bpf("underlay interface index"))?;
        let tun_index =
            nix::net::if_::if_nametoindex(tun).map_err(bpf("tunnel interface index"))?;
        // Must match `enum encap_kind` in bpf/offload.c.
        let (kind, port) = match encap {
            crate::Encap::Ipip => (0u32, 0u16),
            crate::Encap::Udp { port } => (1, port),
            crate::Encap::Wireguard { .. } => {
                return Err(OffloadError::Bpf("encapsulation", "wireguard".into()));
            }
        };
        let mut ebpf = aya::Ebpf::load(OBJECT).map_err(bpf("loading the BPF object"))?;
        for name in [ENCAP, DECAP] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| OffloadError::Bpf("program missing", name.to_string()))?
                .try_into()
                .map_err(bpf("program type"))?;
            program.load().map_err(bpf("verifier"))?;
        }
        let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(OffloadError::Bpf("map missing", name.to_string()))
        };
        let mut config: Array<MapData, [u32; 7]> = take(&mut ebpf, "twill_config")?
            .try_into()
            .map_err(bpf("config map"))?;
        config
            .set(
                0,
                [
                    be(local_ip),
                    be(local_subnet.network()),
                    be(local_subnet.netmask()),
                    underlay_index,
                    tun_index,
                    kind,
                    u32::from(port),
                ],
                0,
            )
            .map_err(bpf("writing the config map"))?;
        Ok(KernelPath {
            routes: take(&mut ebpf, "twill_routes")?
                .try_into()
                .map_err(bpf("routes map"))?,
            peers: take(&mut ebpf, "twill_peers")?
                .try_into()
                .map_err(bpf("peers map"))?,
            counters: take(&mut ebpf, "twill_counters")?
                .try_into()
                .map_err(bpf("counters map"))?,
            netns,
            ebpf,
            tun: tun.to_string(),
            underlay,
            installed: HashMap::new(),
            attached: false,
        })
    }

    pub(crate) fn underlay(&self) -> &str {
        &self.underlay
    }

    /// Makes the maps hold exactly `peers`, then attaches the programs if they are not yet.
    /// Additions enter the peer maps before the route that leads to them; removals leave the
    /// route first, so a program never finds a route without its peer.
    pub(crate) fn set_peers(&mut self, peers: &[Peer]) -> Result<(), OffloadError> {
        let mut wanted: HashMap<Ipv4Addr, Ipv4Net> = HashMap::new();
        let mut subnets = HashSet::new();
        for p in peers {
            // Same rule as the engine's table: the first claim of an address or subnet wins.
            if !wanted.contains_key(&p.underlay) && subnets.insert(p.subnet.trunc()) {
                wanted.insert(p.underlay, p.subnet.trunc());
            }
        }
        let stale: Vec<(Ipv4Addr, Ipv4Net)> = self
            .installed
            .iter()
            .filter(|(addr, net)| wanted.get(addr) != Some(net))
            .map(|(a, n)| (*a, *n))
            .collect();
        for (addr, net) in &stale {
            let _ = self.routes.remove(&route_key(*net));
            if !wanted.contains_key(addr) {
                let _ = self.peers.remove(&be(*addr));
                let _ = self.counters.remove(&be(*addr));
            }
            self.installed.remove(addr);
        }
        for (addr, net) in &wanted {
            if self.installed.get(addr) == Some(net) {
                continue;
            }
            if self.counters.get(&be(*addr), 0).is_err() {
                let zero = aya::maps::PerCpuValues::try_from(vec![
                    [0u64; 4];
                    aya::util::nr_cpus().map_err(
                        |(_, e)| OffloadError::Bpf("cpus", e.to_string())
                    )?
                ])
                .map_err(bpf("counter values"))?;
                self.counters
                    .insert(be(*addr), zero, 0)
                    .map_err(bpf("counters map"))?;
            }
            self.peers
                .insert(be(*addr), [be(net.network()), be(net.netmask())], 0)
                .map_err(bpf("peers map"))?;
            self.routes
                .insert(&route_key(*net), be(*addr), 0)
                .map_err(bpf("routes map"))?;
            self.installed.insert(*addr, *net);
        }
        if !self.attached {
            let KernelPath {
                netns,
                ebpf,
                underlay,
                tun,
                ..
            } = self;
            netns
                .run(|| attach(ebpf, underlay, tun))
                .map_err(bpf("entering the tunnel's network namespace"))??;
            self.attached = true;
        }
        Ok(())
    }

    /// Takes the filters off both devices (after a failure: the engine carries all).
    pub(crate) fn remove(&self) {
        let _ = self.netns.run(|| {
            detach_underlay(&self.underlay);
            detach_tun(&self.tun);
        });
    }
}

/// Replaces our filters in place (or adds them), and leaves them attached for good. Runs in
/// the devices' network namespace.
fn attach(ebpf: &mut aya::Ebpf, underlay: &str, tun: &str) -> Result<(), OffloadError> {
    for (name, iface, kind) in [
        (DECAP, underlay, TcAttachType::Ingress),
        (ENCAP, tun, TcAttachType::Egress),
    ] {
        // Fails harmlessly when the clsact qdisc is already there.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(OffloadError::Bpf("program missing", name.to_string()))?
            .try_into()
            .map_err(bpf("program type"))?;
        let replaced = SchedClassifierLink::attached(iface, kind, PRIORITY, HANDLE, None)
            .map_err(|e| e.to_string())
            .and_then(|old| program.attach_to_link(old).map_err(|e| e.to_string()));
        let id = match replaced {
            Ok(id) => id,
            Err(_) => program
                .attach_with_options(
                    iface,
                    kind,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: PRIORITY,
                        handle: HANDLE,
                        classid: None,
                    }),
                )
                .map_err(bpf("attaching the tc filter"))?,
        };
        let link = program.take_link(id).map_err(bpf("tc link"))?;
        // Dropping the link would detach the filter; it must outlive this process.
        std::mem::forget(link);
    }
    Ok(())
}

impl KernelPath {
    /// Traffic per peer underlay address, summed over CPUs.
    pub(crate) fn counters(&self) -> HashMap<Ipv4Addr, KernelCounters> {
        let mut out = HashMap::new();
        for addr in self.installed.keys() {
            if let Ok(values) = self.counters.get(&be(*addr), 0) {
                let mut c = KernelCounters::default();
                for v in values.iter() {
                    c.tx_packets += v[0];
                    c.tx_bytes += v[1];
                    c.rx_packets += v[2];
                    c.rx_bytes += v[3];
                }
                out.insert(*addr, c);
            }
        }
        out
    }
}

fn route_key(net: Ipv4Net) -> Key<u32> {
    Key::new(u32::from(net.prefix_len()), be(net.network()))
}

/// The interface that holds `addr` in the calling thread's network namespace.
fn interface_with_address(addr: Ipv4Addr) -> Result<String, OffloadError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(bpf("listing interfaces"))?;
    for a in addrs {
        let held = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|sin| sin.ip());
        if held == Some(addr) {
            return Ok(a.interface_name);
        }
    }
    Err(OffloadError::NoUnderlay(addr))
}

/// Removes our decapsulation filter from `underlay`. Missing is fine.
pub(crate) fn detach_underlay(underlay: &str) {
    let _ = aya::programs::tc::qdisc_detach_program(underlay, TcAttachType::Ingress, DECAP);
}

/// Removes our encapsulation filter from the TUN device `tun`. Missing is fine.
pub(crate) fn detach_tun(tun: &str) {
    let _ = aya::programs::tc::qdisc_detach_program(tun, TcAttachType::Egress, ENCAP);
}

/// Removes both filters: from the TUN device and from every interface of the namespace that
/// has our decapsulation filter (the underlay may have changed since it was attached).
pub(crate) fn detach(tun: &str) {
    detach_tun(tun);
    if let Ok(ifaces) = nix::net::if_::if_nameindex() {
        for iface in ifaces.iter() {
            if let Ok(name) = iface.name().to_str() {
                detach_underlay(name);
            }
        }
    }
}
