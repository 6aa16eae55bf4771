//! The kernel fast path for ipip and udp: two tc programs (`bpf/offload.c`, built by
//! `build.rs`) that encapsulate on the TUN device's egress and decapsulate on the underlay
//! device's ingress, so that pod traffic to known peers never leaves the kernel and GSO
//! super-packets stay whole (raw sockets cannot send them; that capped the userspace ipip
//! path at a quarter of kernel VXLAN). A third one keeps them whole up to bridged pods (below).
//!
//! Both inner families: IPv4, and on a dual-stack tunnel IPv6 (udp payload, or protocol 41
//! as Linux's `sit` for ipip), each with its own route and peer maps; the outer headers are
//! IPv4 (an IPv6 underlay is the engine's).
//!
//! The userspace engine stays the slow path and the safety net: whatever the programs do not
//! handle (unknown peers, spoofed sources, options, fragments) passes through untouched and
//! reaches the engine, which checks and counts it as before. The programs make the same
//! checks as the engine, from maps this module keeps equal to the engine's peer table
//! ([`Wanted`] applies its rules).
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
use ipnet::{Ipv4Net, Ipv6Net};

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

/// `struct config` of bpf/offload.c, as 32-bit words in the programs' byte order.
type Config = [u32; 16];

/// An IPv6 address as four 32-bit words in network byte order, as the programs read it.
fn be6(addr: std::net::Ipv6Addr) -> [u32; 4] {
    let o = addr.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn config(
    local_ip: Ipv4Addr,
    local_subnet: Ipv4Net,
    local_subnet6: Option<Ipv6Net>,
    underlay_index: u32,
    tun_index: u32,
    kind: u32,
    port: u16,
) -> Config {
    let mut c = [0u32; 16];
    c[..7].copy_from_slice(&[
        be(local_ip),
        be(local_subnet.network()),
        be(local_subnet.netmask()),
        underlay_index,
        tun_index,
        kind,
        u32::from(port),
    ]);
    if let Some(net6) = local_subnet6 {
        c[7] = 1;
        c[8..12].copy_from_slice(&be6(net6.network()));
        c[12..16].copy_from_slice(&be6(net6.netmask()));
    }
    c
}

/// What the maps hold for a peer list, by the engine's rules (`peers::PeerTable`): the first
/// peer with an underlay address decides which subnets that address may send from, and the
/// first claim of a subnet decides where it is routed. IPv6 only on a dual-stack tunnel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Wanted {
    peers: HashMap<Ipv4Addr, Ipv4Net>,
    peers6: HashMap<Ipv4Addr, Ipv6Net>,
    routes: HashMap<Ipv4Net, Ipv4Addr>,
    routes6: HashMap<Ipv6Net, Ipv4Addr>,
}

impl Wanted {
    fn of(peers: &[Peer], ipv6: bool) -> Wanted {
        let mut w = Wanted::default();
        let mut seen = HashSet::new();
        for p in peers {
            // Peers over an IPv6 underlay are the engine's alone.
            // So are peers without IPv4 pods (a kernel path runs only on a node with them).
            let (std::net::IpAddr::V4(underlay), Some(subnet)) = (p.underlay, p.subnet) else {
                continue;
            };
            let first = seen.insert(underlay);
            w.routes.entry(subnet.trunc()).or_insert(underlay);
            if first {
                w.peers.insert(underlay, subnet.trunc());
            }
            if let Some(net6) = p.subnet6.filter(|_| ipv6).map(|n| n.trunc()) {
                w.routes6.entry(net6).or_insert(underlay);
                if first {
                    w.peers6.insert(underlay, net6);
                }
            }
        }
        w
    }
}

/// The keys of `installed` that `wanted` does not have.
fn gone<K: Clone + Eq + std::hash::Hash, V>(
    installed: &HashMap<K, V>,
    wanted: &HashMap<K, V>,
) -> Vec<K> {
    installed
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .cloned()
        .collect()
}

/// The entries of `wanted` that `installed` does not hold (new or changed).
fn changed<K: Clone + Eq + std::hash::Hash, V: Clone + PartialEq>(
    installed: &HashMap<K, V>,
    wanted: &HashMap<K, V>,
) -> Vec<(K, V)> {
    wanted
        .iter()
        .filter(|(k, v)| installed.get(k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
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
    routes6: LpmTrie<MapData, [u32; 4], u32>,
    peers6: BpfHashMap<MapData, u32, [u32; 8]>,
    counters: PerCpuHashMap<MapData, u32, [u64; 4]>,
    /// What the maps hold now.
    installed: Wanted,
    /// Whether IPv6 is carried (a dual-stack tunnel).
    ipv6: bool,
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
        local_subnet6: Option<Ipv6Net>,
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
        let mut config_map: Array<MapData, Config> = take(&mut ebpf, "twill_config")?
            .try_into()
            .map_err(bpf("config map"))?;
        config_map
            .set(
                0,
                config(
                    local_ip,
                    local_subnet,
                    local_subnet6,
                    underlay_index,
                    tun_index,
                    kind,
                    port,
                ),
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
            routes6: take(&mut ebpf, "twill_routes6")?
                .try_into()
                .map_err(bpf("IPv6 routes map"))?,
            peers6: take(&mut ebpf, "twill_peers6")?
                .try_into()
                .map_err(bpf("IPv6 peers map"))?,
            counters: take(&mut ebpf, "twill_counters")?
                .try_into()
                .map_err(bpf("counters map"))?,
            netns,
            ebpf: Arc::new(Mutex::new(ebpf)),
            tun: tun.to_string(),
            underlay,
            installed: Wanted::default(),
            ipv6: local_subnet6.is_some(),
            attached: false,
            local_subnet,
            port_sync: None,
        })
    }

    pub(crate) fn underlay(&self) -> &str {
        &self.underlay
    }

    /// Makes the maps hold exactly `peers`, then attaches the programs if they are not yet.
    /// Additions enter the peer maps before the routes that lead to them; removals leave the
    /// routes first, so a program never finds a route without its peer.
    pub(crate) fn set_peers(&mut self, peers: &[Peer]) -> Result<(), OffloadError> {
        let wanted = Wanted::of(peers, self.ipv6);
        let old = &self.installed;
        for net in gone(&old.routes, &wanted.routes) {
            let _ = self.routes.remove(&route_key(net));
        }
        for net in gone(&old.routes6, &wanted.routes6) {
            let _ = self.routes6.remove(&route_key6(net));
        }
        for addr in gone(&old.peers6, &wanted.peers6) {
            let _ = self.peers6.remove(&be(addr));
        }
        for addr in gone(&old.peers, &wanted.peers) {
            let _ = self.peers.remove(&be(addr));
            let _ = self.counters.remove(&be(addr));
        }
        // What is removed is no longer installed, whatever fails below.
        self.installed
            .routes
            .retain(|n, _| wanted.routes.contains_key(n));
        self.installed
            .routes6
            .retain(|n, _| wanted.routes6.contains_key(n));
        self.installed
            .peers6
            .retain(|a, _| wanted.peers6.contains_key(a));
        self.installed
            .peers
            .retain(|a, _| wanted.peers.contains_key(a));

        for (addr, net) in changed(&self.installed.peers, &wanted.peers) {
            if self.counters.get(&be(addr), 0).is_err() {
                let zero = aya::maps::PerCpuValues::try_from(vec![
                    [0u64; 4];
                    aya::util::nr_cpus().map_err(
                        |(_, e)| OffloadError::Bpf("cpus", e.to_string())
                    )?
                ])
                .map_err(bpf("counter values"))?;
                self.counters
                    .insert(be(addr), zero, 0)
                    .map_err(bpf("counters map"))?;
            }
            self.peers
                .insert(be(addr), [be(net.network()), be(net.netmask())], 0)
                .map_err(bpf("peers map"))?;
            self.installed.peers.insert(addr, net);
        }
        for (addr, net) in changed(&self.installed.peers6, &wanted.peers6) {
            let mut value = [0u32; 8];
            value[..4].copy_from_slice(&be6(net.network()));
            value[4..].copy_from_slice(&be6(net.netmask()));
            self.peers6
                .insert(be(addr), value, 0)
                .map_err(bpf("IPv6 peers map"))?;
            self.installed.peers6.insert(addr, net);
        }
        for (net, addr) in changed(&self.installed.routes, &wanted.routes) {
            self.routes
                .insert(&route_key(net), be(addr), 0)
                .map_err(bpf("routes map"))?;
            self.installed.routes.insert(net, addr);
        }
        for (net, addr) in changed(&self.installed.routes6, &wanted.routes6) {
            self.routes6
                .insert(&route_key6(net), be(addr), 0)
                .map_err(bpf("IPv6 routes map"))?;
            self.installed.routes6.insert(net, addr);
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
        for addr in self.installed.peers.keys() {
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

fn route_key6(net: Ipv6Net) -> Key<[u32; 4]> {
    Key::new(u32::from(net.prefix_len()), be6(net.network()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, subnet: &str, subnet6: Option<&str>, underlay: [u8; 4]) -> Peer {
        Peer {
            node: node.into(),
            subnet: Some(subnet.parse().unwrap()),
            subnet6: subnet6.map(|s| s.parse().unwrap()),
            underlay: underlay.into(),
            public_key: None,
        }
    }

    #[test]
    fn maps_follow_the_engines_first_claim_rules() {
        let peers = [
            peer("a", "10.0.1.0/24", Some("fd00:1::/64"), [192, 0, 2, 1]),
            // Claims a's subnets again from another address: routed to a, but b may send
            // from its own subnets (the engine admits by the sender's entry).
            peer("b", "10.0.1.0/24", Some("fd00:1::/64"), [192, 0, 2, 2]),
            // The same address as a: a's entry decides what it may send.
            peer("c", "10.0.3.0/24", Some("fd00:3::/64"), [192, 0, 2, 1]),
            // No IPv6 subnet: no IPv6 from or to it.
            peer("d", "10.0.4.1/24", None, [192, 0, 2, 4]),
        ];
        let w = Wanted::of(&peers, true);
        let a: Ipv4Addr = [192, 0, 2, 1].into();
        let b: Ipv4Addr = [192, 0, 2, 2].into();
        let d: Ipv4Addr = [192, 0, 2, 4].into();
        let n4 = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let n6 = |s: &str| s.parse::<Ipv6Net>().unwrap();
        assert_eq!(
            w.peers,
            HashMap::from([
                (a, n4("10.0.1.0/24")),
                (b, n4("10.0.1.0/24")),
                (d, n4("10.0.4.0/24")),
            ])
        );
        assert_eq!(
            w.peers6,
            HashMap::from([(a, n6("fd00:1::/64")), (b, n6("fd00:1::/64"))])
        );
        assert_eq!(
            w.routes,
            HashMap::from([
                (n4("10.0.1.0/24"), a),
                (n4("10.0.3.0/24"), a),
                (n4("10.0.4.0/24"), d),
            ])
        );
        assert_eq!(
            w.routes6,
            HashMap::from([(n6("fd00:1::/64"), a), (n6("fd00:3::/64"), a)])
        );
        // An IPv4-only tunnel carries no IPv6: the engine discards it.
        let v4 = Wanted::of(&peers, false);
        assert!(v4.peers6.is_empty() && v4.routes6.is_empty());
        assert_eq!(v4.peers, w.peers);
    }

    #[test]
    fn config_matches_the_programs_layout() {
        let c = config(
            [192, 0, 2, 1].into(),
            "10.0.1.0/24".parse().unwrap(),
            Some("fd00:1:2::/56".parse().unwrap()),
            3,
            4,
            1,
            8285,
        );
        let bytes: Vec<u8> = c.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes[..12], [192, 0, 2, 1, 10, 0, 1, 0, 255, 255, 255, 0]);
        assert_eq!(c[3..8], [3, 4, 1, 8285, 1]);
        assert_eq!(
            bytes[32..48],
            [0xfd, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes[48..64],
            [0xff; 7].iter().chain(&[0; 9]).copied().collect::<Vec<_>>()[..]
        );
        let v4 = config(
            [192, 0, 2, 1].into(),
            "10.0.1.0/24".parse().unwrap(),
            None,
            3,
            4,
            0,
            0,
        );
        assert_eq!(v4[7..], [0; 9]);
    }
}
