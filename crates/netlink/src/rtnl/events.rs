//! [`KernelEvents`]: the kernel's notifications of changes to links, addresses and routes of
//! both families, neighbours (ARP, NDP and FDB alike) and nexthop objects, read without
//! waiting.
//!
//! An owner of kernel objects that has made the kernel match what it wants can skip reading
//! it back as long as nothing has touched those objects since; these notifications are how it
//! learns that something has. The socket is never read in the background: notifications queue
//! in its buffer between two [`KernelEvents::drain`]s, so a quiet kernel costs nothing, and a
//! buffer that overran (more changes than it holds) is reported as [`Change::Lost`], after
//! which anything may have changed.
//!
//! Notifications of changes made through the sockets named at [`KernelEvents::new`] are
//! dropped unread: the kernel stamps a notification with the port id of the socket whose
//! request caused it (routes, neighbours, addresses and nexthop objects; VXLAN FDB entries and
//! most link changes carry port 0 whoever made them, so those always come through).

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use crate::codec::nexthop::{NLMSG_HDRLEN, RTM_NEWNEXTHOP};
use crate::codec::route::{IpRoute, route_from_message};
use crate::{Error, Result};

/// rtnetlink multicast groups (`RTNLGRP_*` of `linux/rtnetlink.h`).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;
const RTNLGRP_NEXTHOP: u32 = 32;
const RTM_DELNEXTHOP: u16 = RTM_NEWNEXTHOP + 1;

/// What one notification changed, reduced to what tells whose object it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A link appeared, changed or went (its name, when the notification has it).
    Link { index: u32, name: Option<String> },
    /// An IPv4 or IPv6 address of link `index` was added or removed.
    Address { index: u32 },
    /// A route of the main table (either family) was added, replaced or deleted.
    Route(IpRoute),
    /// A neighbour (ARP or NDP) or FDB entry of link `index` changed.
    Neighbour { index: u32 },
    /// A nexthop object of routing protocol `protocol` changed.
    Nexthop { protocol: u8 },
    /// Notifications were lost: the socket's buffer overran, so anything may have changed.
    Lost,
}

/// A socket subscribed to the rtnetlink groups of [`Change`], in the network namespace of
/// the thread that created it.
#[derive(Debug)]
pub struct KernelEvents {
    sock: Socket,
    /// Port ids whose own changes are not reported.
    ignored: Vec<u32>,
}

impl KernelEvents {
    /// Subscribes; changes made through a socket with one of the port ids `ignored` (see
    /// [`crate::Rtnl::port_ids`]) are not reported.
    pub fn new(ignored: &[u32]) -> Result<KernelEvents> {
        let io = |op: &str, e: io::Error| Error::io(op.to_string(), e);
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| io("open rtnetlink socket", e))?;
        sock.bind_auto()
            .map_err(|e| io("bind rtnetlink socket", e))?;
        for group in [
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV6_ROUTE,
            RTNLGRP_NEXTHOP,
        ] {
            // A kernel without nexthop objects has no group for them, nor objects to watch;
            // one without IPv6 has no IPv6 objects either.
            if let Err(e) = sock.add_membership(group)
                && ![RTNLGRP_NEXTHOP, RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE].contains(&group)
            {
                return Err(io("subscribe to rtnetlink notifications", e));
            }
        }
        Ok(KernelEvents {
            sock,
            ignored: ignored.to_vec(),
        })
    }

    /// Calls `each` for every notification queued now (in order, [`Change::Lost`] where some
    /// were dropped), without waiting for more; returns how many were read, ignored ones
    /// included.
    pub fn drain(&mut self, mut each: impl FnMut(Change)) -> Result<usize> {
        use nix::errno::Errno;
        use nix::sys::socket::{MsgFlags, recv};
        // One datagram holds a batch of notifications; 64 KiB holds the largest. Allocated
        // per drain: between drains the agent holds nothing for this.
        let mut buf = vec![0u8; 1 << 16];
        let mut read = 0;
        loop {
            let n = match recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return Ok(read),
                Err(Errno::ENOBUFS) => {
                    each(Change::Lost);
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(Error::io(
                        "read rtnetlink notifications",
                        io::Error::from(e),
                    ));
                }
            };
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let Ok(msg) = NetlinkBuffer::new_checked(&buf[off..n]) else {
                    break;
                };
                let len = msg.length() as usize;
                read += 1;
                if !self.ignored.contains(&msg.port_number())
                    && let Some(change) = change_of(&buf[off..off + len])
                {
                    each(change);
                }
                off += (len + 3) & !3;
            }
        }
    }
}

/// The change one notification reports (None for what this module does not watch: other
/// address families, other routing tables).
fn change_of(bytes: &[u8]) -> Option<Change> {
    let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
    if kind == RTM_NEWNEXTHOP || kind == RTM_DELNEXTHOP {
        // `struct nhmsg`: family, scope, protocol.
        return bytes
            .get(NLMSG_HDRLEN + 2)
            .map(|&protocol| Change::Nexthop { protocol });
    }
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).ok()?;
    let NetlinkPayload::InnerMessage(msg) = msg.payload else {
        return None;
    };
    match msg {
        RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
            let name = l.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            });
            Some(Change::Link {
                index: l.header.index,
                name,
            })
        }
        RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
            Some(Change::Address {
                index: a.header.index,
            })
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
            route_from_message(&r).map(Change::Route)
        }
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            Some(Change::Neighbour {
                index: n.header.ifindex,
            })
        }
        _ => None,
    }
}
