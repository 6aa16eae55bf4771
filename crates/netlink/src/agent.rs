//! [`AgentHandle`]: the node agent's asynchronous rtnetlink client.
//!
//! The agent programs thousands of routes, neighbours and FDB entries when peers come and go,
//! so unlike the plugin's [`crate::Handle`] it keeps many requests in flight on one socket:
//! every method takes `&self`, and callers run as many of them concurrently as they like (the
//! connection task of `rtnetlink` matches replies to requests by sequence number). Messages are
//! built here from `netlink-packet-route` types rather than with `rtnetlink`'s request builders,
//! so that every request carries exactly the flags and attributes that the observe side later
//! compares against, and every error names its operation.
//!
//! The socket lives in the network namespace of the thread that calls [`AgentHandle::new`]; the
//! agent is started inside the host's namespace, tests create the handle on a thread that has
//! entered a test namespace.
//!
//! Conventions: only IPv4 and the main routing table; deletions are idempotent (an object that
//! is already gone is success), replacements create what is missing, and exclusive creations
//! ([`AgentHandle::create_vxlan`], [`AgentHandle::add_route`]) report "exists" as an error so
//! that the caller never overwrites an object it does not own.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use crate::bulk::{BulkSocket, Nexthop, RouteChange};
use futures::StreamExt;
use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Error, Result};

/// How often a dump that the kernel marks as interrupted (the table changed while it was being
/// read) is retried before its possibly inconsistent result is returned anyway.
const DUMP_RETRIES: usize = 5;

/// A network interface as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLink {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The `IFLA_INFO_KIND` (`"vxlan"`, `"veth"`, ...), None for devices without one.
    pub kind: Option<String>,
    /// The VXLAN parameters, for a VXLAN device.
    pub vxlan: Option<VxlanInfo>,
}

/// The parameters of an existing VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    /// Destination UDP port.
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    /// Index of the underlay link.
    pub underlay: Option<u32>,
    pub learning: bool,
}

/// A VXLAN device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    /// Index of the underlay link.
    pub underlay: u32,
    /// Destination UDP port.
    pub port: u16,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Source-MAC learning; twill programs the FDB itself, so this is normally false
    /// (`nolearning`).
    pub learning: bool,
    /// Bring the device up in the same request.
    pub up: bool,
}

/// An IPv4 route of the main table.
///
/// For writes, `tos` and `unicast` are ignored (routes are unicast with TOS 0); `metric` 0 is
/// the kernel's default priority.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ipv4Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// Output link index.
    pub oif: Option<u32>,
    /// `RTNH_F_ONLINK`: the gateway is taken as directly reachable on `oif` even though no
    /// connected subnet covers it (VXLAN next hops).
    pub onlink: bool,
    /// Routing protocol number (who owns the route).
    pub protocol: u8,
    /// Priority (`ip route ... metric N`).
    pub metric: u32,
    pub tos: u8,
    /// False for blackhole, unreachable, local, ... routes.
    pub unicast: bool,
    /// The nexthop object the route goes through (`ip route ... nhid N`), as read back; the
    /// kernel also reports that object's gateway and link in `gateway` and `oif`. Requests
    /// never use it: [`crate::bulk`] picks nexthop objects itself.
    pub nhid: Option<u32>,
}

/// A permanent IPv4 neighbour (ARP entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A permanent FDB entry of a VXLAN device (`bridge fdb ... self permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    /// The remote VTEP.
    pub dst: Ipv4Addr,
    /// Destination port when it differs from the device's (`NDA_PORT`).
    pub port: Option<u16>,
    /// VNI when it differs from the device's (`NDA_VNI`).
    pub vni: Option<u32>,
    /// Outgoing underlay link when one is pinned (`NDA_IFINDEX`).
    pub ifindex: Option<u32>,
}

impl FdbEntry {
    /// An entry with the device's defaults for port, VNI and underlay link.
    pub fn new(mac: [u8; 6], dst: Ipv4Addr) -> FdbEntry {
        FdbEntry {
            mac,
            dst,
            port: None,
            vni: None,
            ifindex: None,
        }
    }
}

/// An interface's primary IPv4 address and MTU (e.g. the node's underlay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceV4 {
    pub index: u32,
    pub name: String,
    /// The first primary universe-scope IPv4 address, if the interface has one.
    pub address: Option<Ipv4Net>,
    pub mtu: u32,
}

/// Aborts the connection task when the last clone of the handle goes.
#[derive(Debug)]
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An asynchronous rtnetlink socket in the namespace it was created in. Cheap to clone; all
/// clones share the socket, which closes when the last one drops.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    nl: rtnetlink::Handle,
    _conn: Arc<Connection>,
    /// The socket for route changes in bulk ([`AgentHandle::route_changes`]).
    bulk: Arc<Mutex<BulkSocket>>,
}

impl AgentHandle {
    /// Opens a socket in the calling thread's network namespace and spawns its connection task
    /// on the current tokio runtime (so this must be called inside one).
    pub fn new() -> Result<AgentHandle> {
        let (conn, nl, _unsolicited) = rtnetlink::new_connection_with_strict_check()
            .map_err(|e| Error::io("open rtnetlink socket", e))?;
        let task = tokio::spawn(conn);
        Ok(AgentHandle {
            nl,
            _conn: Arc::new(Connection(task)),
            bulk: Arc::new(Mutex::new(BulkSocket::new()?)),
        })
    }

    /// Sends one request and waits for its acknowledgement. `op` is only called to describe a
    /// failure, so the fast path formats nothing.
    async fn ack(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<()> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut nl = self.nl.clone();
        let Ok(mut replies) = nl.request(req) else {
            return Err(closed(op()));
        };
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(err) = reply.payload
                && let Some(code) = err.code
            {
                return Err(Error::Kernel {
                    op: op(),
                    errno: -code.get(),
                });
            }
        }
        Ok(())
    }

    /// Like [`Self::ack`], with "no such object" counted as success.
    async fn ack_gone_ok(
        &self,
        msg: RouteNetlinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<()> {
        match self.ack(msg, 0, op).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// A dump, retried while the kernel reports that it was interrupted by a concurrent change.
    async fn dump(&self, msg: RouteNetlinkMessage, op: &str) -> Result<Vec<RouteNetlinkMessage>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = NetlinkMessage::from(msg.clone());
            req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut nl = self.nl.clone();
            let Ok(mut replies) = nl.request(req) else {
                return Err(closed(op.to_string()));
            };
            let mut out = Vec::new();
            let mut interrupted = false;
            while let Some(reply) = replies.next().await {
                interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Error(err) => {
                        if let Some(code) = err.code {
                            return Err(Error::Kernel {
                                op: op.to_string(),
                                errno: -code.get(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            if !interrupted || attempt >= DUMP_RETRIES {
                return Ok(out);
            }
        }
    }

    // ===== links =====

    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<AgentLink>> {
        let replies = self
            .dump(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                "list links",
            )
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, or None.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<AgentLink>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, || format!("look up link {name}")).await
    }

    /// The link with index `index`, or None.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<AgentLink>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, || format!("look up link #{index}"))
            .await
    }

    async fn get_link(
        &self,
        msg: LinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Option<AgentLink>> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut nl = self.nl.clone();
        let Ok(mut replies) = nl.request(req) else {
            return Err(closed(op()));
        };
        let mut found = None;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    found = Some(link_from_message(&m));
                }
                NetlinkPayload::Error(err) => {
                    if let Some(code) = err.code {
                        let e = Error::Kernel {
                            op: op(),
                            errno: -code.get(),
                        };
                        return if e.is_not_found() { Ok(None) } else { Err(e) };
                    }
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// Creates a VXLAN device and returns its index. Fails with "exists" when the name is
    /// taken (whatever kind of link holds it).
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<u32> {
        let mut msg = LinkMessage::default();
        if spec.up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        msg.attributes
            .push(LinkAttribute::Address(spec.mac.to_vec()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                InfoVxlan::Local(spec.local),
                InfoVxlan::Link(spec.underlay),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(spec.learning),
            ])),
        ]));
        self.ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || {
                format!(
                    "create vxlan device {} (id {} local {} dev #{} dstport {})",
                    spec.name, spec.vni, spec.local, spec.underlay, spec.port
                )
            },
        )
        .await?;
        // The create request does not echo the new index; one lookup is cheaper than asking for
        // NLM_F_ECHO and parsing the echoed message.
        match self.link_by_name(&spec.name).await? {
            Some(link) => Ok(link.index),
            None => Err(Error::Kernel {
                op: format!("create vxlan device {}: it vanished right after", spec.name),
                errno: crate::libc_errno::ENODEV,
            }),
        }
    }

    async fn set_link(&self, msg: LinkMessage, op: impl FnOnce() -> String) -> Result<()> {
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, op).await
    }

    /// Sets the MTU of link `index`.
    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg, || format!("set mtu {mtu} on link #{index}"))
            .await
    }

    /// Sets the MAC address of link `index`.
    pub async fn set_link_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(msg, || {
            format!("set address {} on link #{index}", mac_text(&mac))
        })
        .await
    }

    /// Sets link `index` administratively up (or down).
    pub async fn set_link_up(&self, index: u32, up: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        let state = if up { "up" } else { "down" };
        self.set_link(msg, || format!("set link #{index} {state}"))
            .await
    }

    /// Deletes link `index`; a link that is already gone is success.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack_gone_ok(RouteNetlinkMessage::DelLink(msg), || {
            format!("delete link #{index}")
        })
        .await
    }

    // ===== addresses =====

    /// The IPv4 addresses on link `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .ipv4_address_entries(index)
            .await?
            .into_iter()
            .map(|(net, _)| net)
            .collect())
    }

    /// Addresses with "is primary and universe scope".
    async fn ipv4_address_entries(&self, index: u32) -> Result<Vec<(Ipv4Net, bool)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = index;
        let replies = self
            .dump(
                RouteNetlinkMessage::GetAddress(msg),
                &format!("list IPv4 addresses of link #{index}"),
            )
            .await?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(m) = reply else {
                continue;
            };
            if m.header.index != index || m.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links, so it is only the fallback.
            let mut local = None;
            let mut address = None;
            for attr in &m.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                    AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(net) = Ipv4Net::new(ip, m.header.prefix_len)
            {
                let primary = !m.header.flags.contains(AddressHeaderFlags::Secondary)
                    && m.header.scope == AddressScope::Universe;
                out.push((net, primary));
            }
        }
        Ok(out)
    }

    /// Adds (or refreshes) `addr` on link `index`.
    pub async fn add_ipv4_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let msg = address_message(index, addr);
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("add address {addr} to link #{index}"),
        )
        .await
    }

    /// Removes `addr` from link `index`; an address that is not there is success.
    pub async fn delete_ipv4_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let msg = address_message(index, addr);
        self.ack_gone_ok(RouteNetlinkMessage::DelAddress(msg), || {
            format!("delete address {addr} from link #{index}")
        })
        .await
    }

    /// The interface called `name` with its primary IPv4 address and MTU, or None when there
    /// is no such interface.
    pub async fn interface_ipv4(&self, name: &str) -> Result<Option<InterfaceV4>> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(None);
        };
        let addrs = self.ipv4_address_entries(link.index).await?;
        let address = addrs
            .iter()
            .find(|(_, primary)| *primary)
            .or(addrs.first())
            .map(|(net, _)| *net);
        Ok(Some(InterfaceV4 {
            index: link.index,
            name: link.name,
            address,
            mtu: link.mtu,
        }))
    }

    // ===== routes =====

    /// The IPv4 routes of the main table, only those of `protocol` when given.
    pub async fn ipv4_routes(&self, protocol: Option<u8>) -> Result<Vec<Ipv4Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // With strict checking the kernel filters by protocol itself.
        if let Some(p) = protocol {
            msg.header.protocol = RouteProtocol::from(p);
        }
        let replies = self
            .dump(RouteNetlinkMessage::GetRoute(msg), "list IPv4 routes")
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_from_message(r),
                _ => None,
            })
            .filter(|r| protocol.is_none_or(|p| r.protocol == p))
            .collect())
    }

    /// The link that holds the IPv4 default route of the main table (the lowest metric wins),
    /// or None when there is no default route.
    pub async fn default_route_link(&self) -> Result<Option<AgentLink>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        let replies = self
            .dump(RouteNetlinkMessage::GetRoute(msg), "list IPv4 routes")
            .await?;
        let best = replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.destination_prefix_length == 0
                        && r.header.kind == RouteType::Unicast =>
                {
                    let oif = route_oif(r)?;
                    Some((route_metric(r), oif))
                }
                _ => None,
            })
            .min();
        match best {
            Some((_, oif)) => self.link_by_index(oif).await,
            None => Ok(None),
        }
    }

    /// Adds a unicast route; fails with "exists" when any route with the same destination,
    /// TOS and metric is in the main table (whoever owns it).
    pub async fn add_route(&self, route: &Ipv4Route) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add route {}", route_text(route)),
        )
        .await
    }

    /// Adds a unicast route or replaces the one with the same destination, TOS and metric.
    pub async fn replace_route(&self, route: &Ipv4Route) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("replace route {}", route_text(route)),
        )
        .await
    }

    /// Deletes the route to `route.dst` with `route.protocol`, `route.metric`, `route.tos` and,
    /// when given, `route.gateway` (the link is not matched); a route that is not there is
    /// success. Because the kernel matches the protocol, a route of another owner is never
    /// deleted.
    pub async fn delete_route(&self, route: &Ipv4Route) -> Result<()> {
        let msg = delete_route_message(route);
        self.ack_gone_ok(RouteNetlinkMessage::DelRoute(msg), || {
            format!(
                "delete route {} proto {} metric {}",
                route.dst, route.protocol, route.metric
            )
        })
        .await
    }

    /// Runs route changes in order on a socket of their own, many per system call (see
    /// [`crate::bulk`]): for tables of thousands of routes. One outcome per change.
    pub async fn route_changes(&self, changes: Vec<RouteChange>) -> Vec<Result<()>> {
        let n = changes.len();
        self.on_bulk("bulk route changes", move |b| b.run(&changes))
            .await
            .unwrap_or_else(|_| all_closed(n, "bulk route changes"))
    }

    /// The kernel's single-gateway IPv4 nexthop objects, of all protocols (an error when the
    /// kernel refuses to list them, e.g. one built without nexthop objects).
    pub async fn nexthops(&self) -> Result<Vec<Nexthop>> {
        self.on_bulk("list nexthop objects", |b| b.nexthops())
            .await?
    }

    /// Deletes nexthop objects (and every route through them); one outcome per id, an
    /// object already gone is success.
    pub async fn delete_nexthops(&self, ids: Vec<u32>) -> Vec<Result<()>> {
        let n = ids.len();
        self.on_bulk("delete nexthop objects", move |b| b.delete_nexthops(&ids))
            .await
            .unwrap_or_else(|_| all_closed(n, "delete nexthop objects"))
    }

    /// Runs `f` on the bulk socket, on a blocking thread.
    async fn on_bulk<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&mut BulkSocket) -> T + Send + 'static,
    ) -> Result<T> {
        let bulk = self.bulk.clone();
        tokio::task::spawn_blocking(move || {
            f(&mut bulk.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
        })
        .await
        .map_err(|_| closed(what.to_string()))
    }

    // ===== neighbours =====

    /// Dumps the neighbour table with `request` (ARP or FDB, by its family) and keeps the
    /// permanent entries of that family on link `index`: the kernel may ignore the filter.
    async fn permanent_entries(
        &self,
        request: NeighbourMessage,
        index: u32,
        what: &str,
    ) -> Result<Vec<NeighbourMessage>> {
        let family = request.header.family;
        let replies = self
            .dump(RouteNetlinkMessage::GetNeighbour(request), what)
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewNeighbour(m)
                    if m.header.ifindex == index
                        && m.header.family == family
                        && m.header.state == NeighbourState::Permanent =>
                {
                    Some(m)
                }
                _ => None,
            })
            .collect())
    }

    /// The permanent IPv4 neighbours on link `index` (dynamic entries the kernel resolved by
    /// itself are left out).
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        // Strict checking wants the filter as an attribute, not in the header.
        msg.attributes.push(NeighbourAttribute::IfIndex(index));
        let entries = self
            .permanent_entries(msg, index, &format!("list neighbours of link #{index}"))
            .await?;
        let mut out = Vec::new();
        for m in entries {
            let mut ip = None;
            let mut mac = None;
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push(Neighbour { ip, mac });
            }
        }
        Ok(out)
    }

    /// Sets a permanent neighbour on link `index` (creating or overwriting the entry for
    /// `neigh.ip`).
    pub async fn replace_neighbour(&self, index: u32, neigh: Neighbour) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                neigh.ip,
            )));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(neigh.mac.to_vec()));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || {
                format!(
                    "set neighbour {} lladdr {} on link #{index}",
                    neigh.ip,
                    mac_text(&neigh.mac)
                )
            },
        )
        .await
    }

    /// Deletes the neighbour `ip` on link `index`; one that is not there is success.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.ack_gone_ok(RouteNetlinkMessage::DelNeighbour(msg), || {
            format!("delete neighbour {ip} on link #{index}")
        })
        .await
    }

    // ===== FDB =====

    /// The permanent FDB entries of VXLAN link `index` with an IPv4 remote, without the
    /// all-zero MAC (default destination) entries.
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        let entries = self
            .permanent_entries(msg, index, &format!("list FDB of link #{index}"))
            .await?;
        let mut out = Vec::new();
        for m in entries {
            let mut mac = None;
            let mut dst = None;
            let mut port = None;
            let mut vni = None;
            let mut ifindex = None;
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
                    // Bridge-family messages leave the address undecoded.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        if let Ok(o) = <[u8; 4]>::try_from(b.as_slice()) {
                            dst = Some(Ipv4Addr::from(o));
                        }
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    NeighbourAttribute::Port(p) => port = Some(*p),
                    NeighbourAttribute::Vni(v) => vni = Some(*v),
                    NeighbourAttribute::IfIndex(i) => ifindex = Some(*i),
                    _ => {}
                }
            }
            if let (Some(mac), Some(dst)) = (mac, dst)
                && mac != [0; 6]
            {
                out.push(FdbEntry {
                    mac,
                    dst,
                    port,
                    vni,
                    ifindex,
                });
            }
        }
        Ok(out)
    }

    /// Sets a permanent FDB entry on VXLAN link `index`: frames for `entry.mac` go to
    /// `entry.dst`. An existing entry for the MAC is overwritten (for a unicast MAC the kernel
    /// keeps one remote).
    pub async fn replace_fdb(&self, index: u32, entry: &FdbEntry) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, entry)),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("set fdb {} on link #{index}", fdb_text(entry)),
        )
        .await
    }

    /// Adds one more remote for `entry.mac` (meaningful for the all-zero and multicast MACs,
    /// whose frames are flooded to every remote).
    pub async fn append_fdb(&self, index: u32, entry: &FdbEntry) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, entry)),
            NLM_F_CREATE | NLM_F_APPEND,
            || format!("append fdb {} on link #{index}", fdb_text(entry)),
        )
        .await
    }

    /// Deletes the remote `entry.dst` (with its port, VNI and link) of `entry.mac`; the whole
    /// entry goes with its last remote. One that is not there is success.
    pub async fn delete_fdb(&self, index: u32, entry: &FdbEntry) -> Result<()> {
        self.ack_gone_ok(
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, entry)),
            || format!("delete fdb {} on link #{index}", fdb_text(entry)),
        )
        .await
    }
}

/// `n` outcomes of requests that never ran because the bulk socket's thread failed.
fn all_closed(n: usize, what: &str) -> Vec<Result<()>> {
    (0..n).map(|_| Err(closed(what.to_string()))).collect()
}

fn closed(op: String) -> Error {
    Error::Io {
        op,
        source: std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the rtnetlink connection task has stopped",
        ),
    }
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_from_message(m: &LinkMessage) -> AgentLink {
    let mut link = AgentLink {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan: None,
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(a) => link.mac = mac_of(a),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.vxlan = Some(vxlan_from_attrs(attrs));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn vxlan_from_attrs(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo {
        vni: 0,
        port: 0,
        local: None,
        underlay: None,
        // The kernel's default when the attribute is absent.
        learning: true,
    };
    for attr in attrs {
        match attr {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Local(ip) => info.local = Some(*ip),
            InfoVxlan::Link(i) if *i != 0 => info.underlay = Some(*i),
            InfoVxlan::Learning(l) => info.learning = *l,
            _ => {}
        }
    }
    info
}

fn address_message(index: u32, addr: Ipv4Net) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
    if addr.prefix_len() < 31 {
        msg.attributes
            .push(AddressAttribute::Broadcast(addr.broadcast()));
    }
    msg
}

/// What every route request carries: family, destination, main table, protocol and (when
/// given) gateway.
fn route_request(route: &Ipv4Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = route.dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            route.dst.network(),
        )));
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    msg
}

/// The request that deletes the route to `route.dst` with its protocol, metric, TOS and
/// (when given) gateway.
pub(crate) fn delete_route_message(route: &Ipv4Route) -> RouteMessage {
    let mut msg = route_request(route);
    msg.header.tos = route.tos;
    // NOWHERE and UNSPEC are the kernel's wildcards for scope and type.
    msg.header.scope = RouteScope::NoWhere;
    msg.header.kind = RouteType::Unspec;
    if route.metric != 0 {
        msg.attributes.push(RouteAttribute::Priority(route.metric));
    }
    msg
}

/// The request that adds (or replaces) `route`.
pub(crate) fn route_message(route: &Ipv4Route) -> RouteMessage {
    let mut msg = route_request(route);
    // A route without a gateway is to a directly connected destination.
    msg.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.header.kind = RouteType::Unicast;
    if route.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if route.metric != 0 {
        msg.attributes.push(RouteAttribute::Priority(route.metric));
    }
    msg
}

fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
        _ => None,
    })
}

fn route_metric(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

fn route_from_message(m: &RouteMessage) -> Option<Ipv4Route> {
    if m.header.address_family != AddressFamily::Inet {
        return None;
    }
    // Dumps name tables above 255 only in RTA_TABLE, with RT_TABLE_COMPAT in the header.
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    let mut nhid = None;
    for attr in &m.attributes {
        match attr {
            RouteAttribute::NhId(id) => nhid = Some(*id),
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    Some(Ipv4Route {
        dst: Ipv4Net::new(dst, m.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(m.header.protocol),
        metric,
        tos: m.header.tos,
        unicast: m.header.kind == RouteType::Unicast,
        nhid,
    })
}

pub(crate) fn route_text(route: &Ipv4Route) -> String {
    let mut s = route.dst.to_string();
    if let Some(gw) = route.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = route.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if route.onlink {
        s.push_str(" onlink");
    }
    s.push_str(&format!(" proto {}", route.protocol));
    if route.metric != 0 {
        s.push_str(&format!(" metric {}", route.metric));
    }
    s
}

fn fdb_message(index: u32, entry: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    // NTF_SELF: the entry belongs to the VXLAN device itself, not to a bridge it is a port of.
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            entry.dst,
        )));
    if let Some(port) = entry.port {
        msg.attributes.push(NeighbourAttribute::Port(port));
    }
    if let Some(vni) = entry.vni {
        msg.attributes.push(NeighbourAttribute::Vni(vni));
    }
    if let Some(ifindex) = entry.ifindex {
        msg.attributes.push(NeighbourAttribute::IfIndex(ifindex));
    }
    msg
}

fn fdb_text(entry: &FdbEntry) -> String {
    let mut s = format!("{} dst {}", mac_text(&entry.mac), entry.dst);
    if let Some(port) = entry.port {
        s.push_str(&format!(" port {port}"));
    }
    if let Some(vni) = entry.vni {
        s.push_str(&format!(" vni {vni}"));
    }
    if let Some(i) = entry.ifindex {
        s.push_str(&format!(" via #{i}"));
    }
    s
}
