//! The kernel fast path for ipip and udp: two tc programs (`bpf/offload.c`, built by
//! `build.rs`) that encapsulate on the TUN device's egress and decapsulate on the underlay
//! device's ingress, so that pod traffic to known peers never leaves the kernel and GSO
//! super-packets stay whole (raw sockets cannot send them; that capped the userspace ipip
//! path at a quarter of kernel VXLAN). A third one keeps them whole up to bridged pods (below).
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
//! With bridged pods a third program sits on the bridge's egress (`twill_bridge`): frames the
//! host forwards from the TUN device to a pod go straight to the pod's port, because this
//! kernel keeps a decapsulated super-packet's tunnel GSO type and the bridge would segment it
//! in software. A thread of [`KernelPath`] finds the bridge (the one holding an address of our
//! pod subnet), attaches the program when the bridge appears, and copies the bridge's
//! forwarding table (pod MAC -> port) into the program's map every [`PORT_SYNC`], removing
//! entries the bridge no longer has; a MAC the map does not know is left to the bridge.
//!
//! The filters are attached by netlink (cls_bpf, direct action) at a fixed priority and
//! handle, and deliberately left attached when the process ends: a killed or restarting agent
//! does not interrupt tunnelled traffic. The next start loads fresh programs and maps, fills
//! the maps, and only then replaces the old filters in place.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
const BRIDGE: &str = "twill_bridge";
/// How often the bridge's forwarding table is copied into the port map: a new pod's traffic
/// goes through the bridge (correct, only slower) until its MAC is copied.
const PORT_SYNC: Duration = Duration::from_secs(1);

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
    ebpf: Arc<Mutex<aya::Ebpf>>,
    tun: String,
    underlay: String,
    routes: LpmTrie<MapData, u32, u32>,
    peers: BpfHashMap<MapData, u32, [u32; 2]>,
    counters: PerCpuHashMap<MapData, u32, [u64; 4]>,
    /// The underlay addresses and subnets currently in the maps.
    installed: HashMap<Ipv4Addr, Ipv4Net>,
    attached: bool,
    local_subnet: Ipv4Net,
    /// The bridge-port thread and its stop signal (dropping the sender stops the thread).
    port_sync: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
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
        for name in [ENCAP, DECAP, BRIDGE] {
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
            ebpf: Arc::new(Mutex::new(ebpf)),
            tun: tun.to_string(),
            underlay,
            installed: HashMap::new(),
            attached: false,
            local_subnet,
            port_sync: None,
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
            // Peers over an IPv6 underlay are the engine's alone.
            let std::net::IpAddr::V4(underlay) = p.underlay else {
                continue;
            };
            // Same rule as the engine's table: the first claim of an address or subnet wins.
            if !wanted.contains_key(&underlay) && subnets.insert(p.subnet.trunc()) {
                wanted.insert(underlay, p.subnet.trunc());
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
            let mut guard = ebpf.lock().unwrap_or_else(|e| e.into_inner());
            let ebpf: &mut aya::Ebpf = &mut guard;
            netns
                .run(|| {
                    attach(ebpf, DECAP, underlay, TcAttachType::Ingress)?;
                    attach(ebpf, ENCAP, tun, TcAttachType::Egress)
                })
                .map_err(bpf("entering the tunnel's network namespace"))??;
            self.attached = true;
        }
        if self.port_sync.is_none() {
            self.port_sync = Some(self.start_port_sync()?);
        }
        Ok(())
    }

    /// Starts the thread that keeps `twill_bridge` on the pods' bridge and its port map equal
    /// to the bridge's forwarding table.
    fn start_port_sync(
        &mut self,
    ) -> Result<(mpsc::Sender<()>, std::thread::JoinHandle<()>), OffloadError> {
        let ports: BpfHashMap<MapData, [u8; 8], u32> = self
            .ebpf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_map("twill_ports")
            .ok_or(OffloadError::Bpf("map missing", "twill_ports".to_string()))?
            .try_into()
            .map_err(bpf("ports map"))?;
        let file = self
            .netns
            .file()
            .try_clone()
            .map_err(bpf("our network namespace"))?;
        let netns = twill_netlink::netns::Netns::from_file(file, self.netns.path().as_ref());
        let (stop, stopped) = mpsc::channel();
        let mut sync = PortSync {
            ebpf: self.ebpf.clone(),
            ports,
            subnet: self.local_subnet,
            bridge: None,
            installed: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("twill-bridge-ports".into())
            .spawn(move || {
                let run = netns.run(move || {
                    let mut handle = match twill_netlink::Handle::new() {
                        Ok(h) => h,
                        Err(e) => {
                            tracing::warn!(error = %e, "bridged pods: no netlink socket; the bridge forwards alone");
                            return;
                        }
                    };
                    loop {
                        if let Err(e) = sync.once(&mut handle) {
                            tracing::debug!(error = %e, "bridged pods: port map not refreshed");
                        }
                        match stopped.recv_timeout(PORT_SYNC) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                    }
                });
                if let Err(e) = run {
                    tracing::warn!(error = %e, "bridged pods: cannot enter the tunnel's namespace");
                }
            })
            .map_err(bpf("starting the bridge port thread"))?;
        Ok((stop, thread))
    }

    /// Takes the filters off every device (after a failure: the engine carries all).
    pub(crate) fn remove(&mut self) {
        // The thread first, so that it cannot attach again behind the detach below.
        if let Some((stop, thread)) = self.port_sync.take() {
            drop(stop);
            let _ = thread.join();
        }
        let _ = self.netns.run(|| {
            detach_underlay(&self.underlay);
            detach_tun(&self.tun);
            detach_bridges();
        });
    }
}

/// The bridge-port thread's state: the pods' bridge it attached to and the map it keeps.
struct PortSync {
    ebpf: Arc<Mutex<aya::Ebpf>>,
    ports: BpfHashMap<MapData, [u8; 8], u32>,
    subnet: Ipv4Net,
    /// The bridge (index, name) holding `twill_bridge`.
    bridge: Option<(u32, String)>,
    /// What the map holds: MAC -> port index.
    installed: HashMap<[u8; 6], u32>,
}

impl PortSync {
    /// One round: find the pods' bridge, attach to it if it is new, and make the map equal
    /// to its forwarding table. Runs in the tunnel's namespace.
    fn once(&mut self, handle: &mut twill_netlink::Handle) -> Result<(), OffloadError> {
        let bridge = pods_bridge(handle, self.subnet)?;
        if bridge != self.bridge {
            self.clear();
            if let Some((_, old)) = &self.bridge {
                detach_bridge(old);
            }
            self.bridge = None;
            if let Some((_, name)) = &bridge {
                let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
                attach(&mut ebpf, BRIDGE, name, TcAttachType::Egress)?;
            }
            self.bridge = bridge;
        }
        let Some((index, _)) = self.bridge else {
            return Ok(());
        };
        let wanted: HashMap<[u8; 6], u32> = handle
            .bridge_ports(index)
            .map_err(bpf("reading the bridge's forwarding table"))?
            .into_iter()
            .collect();
        // Removals first: a MAC that moved is never sent to its old port after this round.
        let gone: Vec<[u8; 6]> = self
            .installed
            .iter()
            .filter(|(mac, port)| wanted.get(*mac) != Some(port))
            .map(|(mac, _)| *mac)
            .collect();
        for mac in gone {
            let _ = self.ports.remove(&mac_key(mac));
            self.installed.remove(&mac);
        }
        for (mac, port) in wanted {
            if self.installed.contains_key(&mac) {
                continue;
            }
            self.ports
                .insert(mac_key(mac), port, 0)
                .map_err(bpf("ports map"))?;
            self.installed.insert(mac, port);
        }
        Ok(())
    }

    fn clear(&mut self) {
        for mac in std::mem::take(&mut self.installed).into_keys() {
            let _ = self.ports.remove(&mac_key(mac));
        }
    }
}

/// `struct mac_key` of bpf/offload.c: the MAC, zero padded to 8 bytes.
fn mac_key(mac: [u8; 6]) -> [u8; 8] {
    let mut key = [0u8; 8];
    key[..6].copy_from_slice(&mac);
    key
}

/// The bridge that holds an address of our pod subnet (the pods' gateway), if any.
fn pods_bridge(
    handle: &mut twill_netlink::Handle,
    subnet: Ipv4Net,
) -> Result<Option<(u32, String)>, OffloadError> {
    let holders: HashSet<u32> = handle
        .all_addresses()
        .map_err(bpf("listing addresses"))?
        .into_iter()
        .filter(|(_, net)| matches!(net, ipnet::IpNet::V4(v4) if subnet.contains(&v4.addr())))
        .map(|(index, _)| index)
        .collect();
    if holders.is_empty() {
        return Ok(None);
    }
    Ok(handle
        .links()
        .map_err(bpf("listing links"))?
        .into_iter()
        .filter(|l| l.kind == twill_netlink::LinkKind::Bridge && holders.contains(&l.index))
        .min_by_key(|l| l.index)
        .map(|l| (l.index, l.name)))
}

/// Replaces our filter `name` on `iface` in place (or adds it), and leaves it attached for
/// good. Runs in the device's network namespace.
fn attach(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    iface: &str,
    kind: TcAttachType,
) -> Result<(), OffloadError> {
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

/// Removes our bridge filter from `bridge`. Missing is fine.
fn detach_bridge(bridge: &str) {
    let _ = aya::programs::tc::qdisc_detach_program(bridge, TcAttachType::Egress, BRIDGE);
}

/// Removes our bridge filter from every interface of the namespace that has it.
fn detach_bridges() {
    for_each_interface(detach_bridge);
}

fn for_each_interface(f: impl Fn(&str)) {
    if let Ok(ifaces) = nix::net::if_::if_nameindex() {
        for iface in ifaces.iter() {
            if let Ok(name) = iface.name().to_str() {
                f(name);
            }
        }
    }
}

/// Removes every filter: from the TUN device, and from every interface of the namespace that
/// has our decapsulation or bridge filter (the underlay or the bridge may have changed since
/// they were attached).
pub(crate) fn detach(tun: &str) {
    detach_tun(tun);
    for_each_interface(|name| {
        detach_underlay(name);
        detach_bridge(name);
    });
}
