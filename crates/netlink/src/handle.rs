//! [`Handle`]: a netlink socket bound to one network namespace, and typed requests on it.
//!
//! Every request is sent with `NLM_F_ACK` and waits for its acknowledgement, so an error is
//! reported by the call that caused it. Dumps read until `NLMSG_DONE`.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netns::Netns;
use crate::{Error, Result};

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Index of the bridge (or other controller) this link is a port of.
    pub master: Option<u32>,
    pub up: bool,
    pub kind: LinkKind,
    /// For a veth: index of its peer (in the peer's namespace).
    pub peer_index: Option<u32>,
}

/// The link kinds twill cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Veth,
    Bridge,
    Other,
}

/// What [`Handle::create_veth`] builds: a pair whose host end stays in the handle's namespace and
/// whose peer is created directly inside another namespace (one request, no move afterwards).
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub host_mac: [u8; 6],
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: &'a Netns,
    pub mtu: u32,
    /// Bridge index to attach the host end to at creation.
    pub master: Option<u32>,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// True for a link-scope route (directly reachable destination, no gateway).
    pub link_scope: bool,
    /// The routing protocol number that marks who owns the route.
    pub protocol: u8,
}

/// A netlink route socket bound to one network namespace.
pub struct Handle {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Handle {
    /// A socket in the calling thread's current namespace.
    pub fn new() -> Result<Handle> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("open netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::io("bind netlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect netlink socket", e))?;
        // Strict checking makes the kernel filter dumps by the fields we set (e.g. link index
        // for addresses), instead of returning everything.
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Handle {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// A socket bound to the namespace `ns` (opened on a short-lived thread inside it).
    pub fn in_netns(ns: &Netns) -> Result<Handle> {
        ns.run(Handle::new)?
    }

    fn header(&mut self, flags: u16) -> NetlinkHeader {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        header
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<u32> {
        let header = self.header(flags);
        let seq = header.sequence_number;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(|e| Error::io(op, e))?;
        Ok(seq)
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK, op)?;
        loop {
            for reply in self.receive(op)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(()),
                            Some(code) => Err(Error::Kernel {
                                op: op.to_string(),
                                errno: -code.get(),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    _ => {}
                }
            }
        }
    }

    /// Sends a dump request and collects every reply message until `NLMSG_DONE`.
    fn dump(&mut self, msg: RouteNetlinkMessage, op: &str) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP, op)?;
        let mut out = Vec::new();
        loop {
            for reply in self.receive(op)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(err) => {
                        if let Some(code) = err.code {
                            return Err(Error::Kernel {
                                op: op.to_string(),
                                errno: -code.get(),
                            });
                        }
                        return Ok(out);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Reads one datagram and splits it into netlink messages.
    fn receive(&mut self, op: &str) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let mut filled = &mut self.buf[..];
        let n = self
            .socket
            .recv(&mut filled, 0)
            .map_err(|e| Error::io(op, e))?;
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < n {
            let bytes = &self.buf[offset..n];
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                Error::Decode {
                    op: op.to_string(),
                    detail: e.to_string(),
                }
            })?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
            out.push(msg);
        }
        Ok(out)
    }

    // ===== links =====

    /// The link called `name`, or `None` when there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, &format!("look up link {name}"))
    }

    /// The link with index `index`, or `None` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, &format!("look up link #{index}"))
    }

    fn get_link(&mut self, msg: LinkMessage, op: &str) -> Result<Option<Link>> {
        let seq = self.send(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK, op)?;
        let mut found = None;
        loop {
            for reply in self.receive(op)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                        found = Some(link_from_message(&m));
                    }
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(found),
                            Some(code) => {
                                let e = Error::Kernel {
                                    op: op.to_string(),
                                    errno: -code.get(),
                                };
                                if e.is_not_found() { Ok(None) } else { Err(e) }
                            }
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "list links",
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge that is up. Fails with "exists" if the name is taken.
    pub fn create_bridge(&mut self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        // A fixed MAC keeps the bridge from changing address as ports come and go.
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create bridge {name}"),
        )
    }

    /// Creates a veth pair, the peer directly inside `spec.peer_netns`. The host end comes up at
    /// once; the peer must be set up afterwards (the kernel configures it before the pair is
    /// linked, so asking for it up at creation fails with ENOTCONN).
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::Address(spec.peer_mac.to_vec()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_netns.file().as_raw_fd()));

        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(spec.host_name.to_string()));
        msg.attributes
            .push(LinkAttribute::Address(spec.host_mac.to_vec()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create veth {} <-> {}", spec.host_name, spec.peer_name),
        )
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("set link #{index} up"),
        )
    }

    /// Deletes a link (for a veth, both ends go).
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(msg),
            0,
            &format!("delete link #{index}"),
        )
    }

    // ===== addresses =====

    /// Adds `addr` to link `index`. `nodad` skips IPv6 duplicate address detection, which would
    /// otherwise keep a fresh address unusable for a second or more.
    pub fn add_address(&mut self, index: u32, addr: IpNet, nodad: bool) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(addr.addr());
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.header.scope = if is_link_local(addr.addr()) {
            AddressScope::Link
        } else {
            AddressScope::Universe
        };
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        if let IpNet::V4(net) = addr
            && net.prefix_len() < 31
        {
            msg.attributes
                .push(AddressAttribute::Broadcast(net.broadcast()));
        }
        if nodad {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr} to link #{index}"),
        )
    }

    /// The addresses on link `index` (both families).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        let what = format!("list addresses of link #{index}");
        Ok(self
            .address_dump(msg, &what)?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, net)| net)
            .collect())
    }

    /// The global IPv6 addresses of link `index` that may serve as its source (not
    /// deprecated, tentative, or failed duplicate address detection), in the kernel's order.
    pub fn usable_global_ipv6(&mut self, index: u32) -> Result<Vec<ipnet::Ipv6Net>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.index = index;
        let what = format!("list IPv6 addresses of link #{index}");
        let unusable = AddressFlags::Deprecated | AddressFlags::Tentative | AddressFlags::Dadfailed;
        let mut out = Vec::new();
        for reply in self.dump(RouteNetlinkMessage::GetAddress(msg), &what)? {
            let RouteNetlinkMessage::NewAddress(m) = reply else {
                continue;
            };
            if m.header.index != index || m.header.scope != AddressScope::Universe {
                continue;
            }
            // The 32-bit attribute, when present, holds every flag; the header the low 8.
            let flags = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_else(|| AddressFlags::from_bits_truncate(m.header.flags.bits().into()));
            let address = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            if !flags.intersects(unusable)
                && let Some(ip) = address
                && let Ok(net) = ipnet::Ipv6Net::new(ip, m.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// Every address of every link (both families), as `(link index, address/prefix)`.
    pub fn all_addresses(&mut self) -> Result<Vec<(u32, IpNet)>> {
        self.address_dump(AddressMessage::default(), "list addresses")
    }

    /// Dumps addresses as `msg` asks, decoded as `(link index, address/prefix)`; the local
    /// address where a link has one (point-to-point), else the address.
    fn address_dump(&mut self, msg: AddressMessage, what: &str) -> Result<Vec<(u32, IpNet)>> {
        let replies = self.dump(RouteNetlinkMessage::GetAddress(msg), what)?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(m) = reply else {
                continue;
            };
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address)
                && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
            {
                out.push((m.header.index, net));
            }
        }
        Ok(out)
    }

    // ===== bridge forwarding table =====

    /// The learned and static unicast entries of bridge `bridge`'s forwarding table, as
    /// `(MAC, port link index)`: where the bridge sends a frame for that MAC. The bridge's own
    /// and its ports' addresses (`permanent`, kept for the host) are left out.
    pub fn bridge_ports(&mut self, bridge: u32) -> Result<Vec<([u8; 6], u32)>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        let replies = self.dump(
            RouteNetlinkMessage::GetNeighbour(msg),
            &format!("list the forwarding table of bridge #{bridge}"),
        )?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewNeighbour(m) = reply else {
                continue;
            };
            if m.header.state == NeighbourState::Permanent || m.header.ifindex == bridge {
                continue;
            }
            let mut on_bridge = false;
            let mut mac = None;
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::Controller(c) => on_bridge = *c == bridge,
                    NeighbourAttribute::LinkLayerAddress(a) => {
                        mac = <[u8; 6]>::try_from(a.as_slice()).ok();
                    }
                    _ => {}
                }
            }
            if let (true, Some(mac)) = (on_bridge, mac)
                && mac[0] & 1 == 0
            {
                out.push((mac, m.header.ifindex));
            }
        }
        Ok(out)
    }

    // ===== routes =====

    /// Adds (or, with `replace`, sets) a route in the main table.
    pub fn add_route(&mut self, route: &Route, replace: bool) -> Result<()> {
        let msg = route_message(route);
        let flags = if replace {
            NLM_F_CREATE | NLM_F_REPLACE
        } else {
            NLM_F_CREATE | NLM_F_EXCL
        };
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            flags,
            &format!("add route {}", route_text(route)),
        )
    }

    /// The interface a packet to `dst` would leave by (a FIB lookup; nothing is sent), or `None`
    /// when `dst` is unreachable.
    pub fn route_lookup(&mut self, dst: IpAddr) -> Result<Option<u32>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let op = format!("look up route to {dst}");
        let seq = self.send(RouteNetlinkMessage::GetRoute(msg), NLM_F_ACK, &op)?;
        let mut oif = None;
        loop {
            for reply in self.receive(&op)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => {
                        oif = route_from_message(&m).and_then(|r| r.oif);
                    }
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(oif),
                            Some(_) => Ok(None),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// The unicast routes of the main table, both families.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            msg.header.table = RT_TABLE_MAIN;
            for reply in self.dump(RouteNetlinkMessage::GetRoute(msg), "list routes")? {
                let RouteNetlinkMessage::NewRoute(m) = reply else {
                    continue;
                };
                if m.header.table != RT_TABLE_MAIN || m.header.kind != RouteType::Unicast {
                    continue;
                }
                if let Some(route) = route_from_message(&m) {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn link_from_message(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        master: None,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: LinkKind::Other,
        peer_index: None,
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                link.mac = Some(mac);
            }
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(i) => link.master = Some(*i),
            LinkAttribute::Link(i) => link.peer_index = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = match kind {
                            InfoKind::Veth => LinkKind::Veth,
                            InfoKind::Bridge => LinkKind::Bridge,
                            _ => LinkKind::Other,
                        };
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn route_message(route: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(route.dst.addr());
    msg.header.destination_prefix_length = route.dst.prefix_len();
    msg.header.table = RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.header.scope = if route.link_scope {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            route.dst.network(),
        )));
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

fn route_from_message(m: &RouteMessage) -> Option<Route> {
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = ip_of(a),
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = match dst {
        Some(ip) => IpNet::new(ip, m.header.destination_prefix_length).ok()?,
        None if m.header.address_family == AddressFamily::Inet => "0.0.0.0/0".parse().ok()?,
        None => "::/0".parse().ok()?,
    };
    Some(Route {
        dst,
        gateway,
        oif,
        link_scope: m.header.scope == RouteScope::Link,
        protocol: u8::from(m.header.protocol),
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_text(route: &Route) -> String {
    let mut s = route.dst.to_string();
    if let Some(gw) = route.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = route.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    s
}
