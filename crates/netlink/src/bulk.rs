//! Route changes in bulk: many rtnetlink requests per `send` on a socket of their own, matched
//! back by sequence number.
//!
//! A BGP table brings thousands of routes at once. On the shared socket of
//! [`crate::Rtnl`] every request is a future, a message to the connection task, a
//! system call and a wake-up for its acknowledgement, which costs about as much as the
//! kernel's own work for the route. Here a batch of requests is one buffer and one system
//! call, so programming a table costs little more than the kernel's part. Two things make
//! that part smaller (together about 40% of it for a table through one next hop, measured
//! in a namespace with a route listener):
//! - **Only the last request of a send asks for an acknowledgement.** The kernel answers
//!   every request that fails whether asked or not, in order, so once the last one is
//!   acknowledged every failure before it has been read; the successes cost no message.
//! - **Nexthop objects.** A next hop (gateway, link, onlink) that several routes of a batch
//!   share, or that has an object already, becomes a kernel nexthop object (`ip nexthop`,
//!   with the routes' protocol number, ids from [`NEXTHOP_ID_BASE`]) and the routes name it
//!   by id, as FRR's zebra does: the kernel checks the gateway once instead of once per
//!   route. Routes read back as before (the kernel reports the object's gateway and link),
//!   so nothing above this module needs to know, and a next hop used by a single route
//!   stays a plain gateway. The kernel matches a route through an object only by the
//!   object's id, never by gateway, so a deletion with a gateway is sent once for each object
//!   of that gateway and once naming the gateway itself, back to back.
//!   Objects nobody uses any more are removed by the caller's reconcile
//!   ([`BulkSocket::nexthops`], [`BulkSocket::delete_nexthops`]).
//!
//! The socket is blocking and is used from a blocking thread
//! ([`crate::Rtnl::route_changes`]).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt};

use crate::codec::nexthop::{
    NLMSG_HDRLEN, Nexthop, RTM_NEWNEXTHOP, delete_nexthop_request, dump_nexthops_request,
    new_nexthop_request, parse_nexthop,
};
use crate::codec::route::{IpRoute, delete_route_message_via, new_route_message, route_text};
use crate::{Error, Result};

/// One route change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// Exclusive: fails with "exists" when any route with the same destination, TOS and
    /// metric is there (whoever owns it).
    Add(IpRoute),
    /// Adds, or replaces the route with the same destination, TOS and metric.
    Replace(IpRoute),
    /// Deletes the route with this destination, protocol, metric, TOS and (when given)
    /// gateway, whether it names the gateway itself or goes through a nexthop object of it;
    /// a route that is not there is success. (An IPv6 route through a nexthop object is
    /// deleted whatever gateway is named: the kernel matches IPv6 routes through objects by
    /// destination, protocol and metric only.)
    Delete(IpRoute),
}

impl RouteChange {
    /// The request, through nexthop object `nexthop` when given.
    fn request(&self, nexthop: Option<u32>) -> NetlinkMessage<RouteNetlinkMessage> {
        let (msg, flags) = match self {
            RouteChange::Add(r) => (
                RouteNetlinkMessage::NewRoute(new_route_message(r, nexthop)),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            RouteChange::Replace(r) => (
                RouteNetlinkMessage::NewRoute(new_route_message(r, nexthop)),
                NLM_F_CREATE | NLM_F_REPLACE,
            ),
            RouteChange::Delete(r) => (
                RouteNetlinkMessage::DelRoute(delete_route_message_via(r, nexthop)),
                0,
            ),
        };
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        req
    }

    /// What the change was, for its error.
    pub fn describe(&self) -> String {
        match self {
            RouteChange::Add(r) => format!("add route {}", route_text(r)),
            RouteChange::Replace(r) => format!("replace route {}", route_text(r)),
            RouteChange::Delete(r) => format!(
                "delete route {} proto {} metric {}",
                r.dst, r.protocol, r.metric
            ),
        }
    }

    fn outcome(&self, errno: i32) -> Result<()> {
        let err = Error::Kernel {
            op: self.describe(),
            errno,
        };
        match self {
            RouteChange::Delete(_) if err.is_not_found() => Ok(()),
            _ => Err(err),
        }
    }

    /// The next hop of an addition or replacement, when it has a gateway and a link.
    fn next_hop(&self) -> Option<NexthopKey> {
        match self {
            RouteChange::Add(r) | RouteChange::Replace(r) => Some(NexthopKey {
                gateway: r.gateway?,
                oif: r.oif?,
                onlink: r.onlink,
                protocol: r.protocol,
            }),
            RouteChange::Delete(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NexthopKey {
    gateway: IpAddr,
    oif: u32,
    onlink: bool,
    protocol: u8,
}

impl Nexthop {
    fn key(&self) -> NexthopKey {
        NexthopKey {
            gateway: self.gateway,
            oif: self.oif,
            onlink: self.onlink,
            protocol: self.protocol,
        }
    }
}

impl NexthopKey {
    fn with_id(self, id: u32) -> Nexthop {
        Nexthop {
            id,
            gateway: self.gateway,
            oif: self.oif,
            onlink: self.onlink,
            protocol: self.protocol,
        }
    }
}

/// The ids twill gives the nexthop objects it creates start here (117 << 24: the routes'
/// protocol number), far above the small ids `ip nexthop` and FRR hand out; an id that is
/// taken is skipped.
pub const NEXTHOP_ID_BASE: u32 = 117 << 24;
/// The id after `id` in twill's range (which wraps around to its start).
fn next_nexthop_id(id: u32) -> u32 {
    id.checked_add(1).unwrap_or(NEXTHOP_ID_BASE)
}

/// How many routes of one batch must share a next hop for it to become a nexthop object.
const NEXTHOP_MIN_ROUTES: usize = 2;

/// Requests per `send`. Their answers (failures and one acknowledgement) must fit the
/// receive buffer at once (each is a small message, but the kernel charges a whole buffer
/// for it).
const PER_SEND: usize = 128;
/// How long to wait for acknowledgements before giving up on the rest of a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// A blocking rtnetlink socket for [`RouteChange`] batches, in the network namespace of the
/// thread that created it.
#[derive(Debug)]
pub struct BulkSocket {
    sock: Socket,
    seq: u32,
    /// The kernel's single-gateway nexthop objects, read again before every batch that may
    /// use or name one (None before the first).
    nexthops: Option<Vec<Nexthop>>,
    /// The kernel refused to list nexthop objects: plain gateways only.
    no_nexthops: bool,
}

/// One answer of the kernel: its type, sequence number and payload.
struct Answer<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

impl Answer<'_> {
    /// The error code of an `NLMSG_ERROR` (0 is an acknowledgement).
    fn errno(&self) -> Option<i32> {
        (self.kind == NLMSG_ERROR && self.payload.len() >= 4)
            .then(|| -i32::from_ne_bytes(self.payload[..4].try_into().expect("4 bytes")))
    }
}

impl BulkSocket {
    pub fn new() -> Result<BulkSocket> {
        let io = |op: &str, e: io::Error| Error::io(op.to_string(), e);
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| io("open rtnetlink socket", e))?;
        sock.bind_auto()
            .map_err(|e| io("bind rtnetlink socket", e))?;
        // Acknowledgements of failures without the request echoed back.
        sock.set_cap_ack(true)
            .map_err(|e| io("rtnetlink NETLINK_CAP_ACK", e))?;
        // Room for a whole batch of answers; without CAP_NET_ADMIN the default buffer still
        // holds PER_SEND of them.
        let _ = setsockopt(&sock, sockopt::RcvBufForce, &(4 << 20));
        let _ = setsockopt(
            &sock,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(ACK_TIMEOUT.as_secs() as i64, 0),
        );
        Ok(BulkSocket {
            sock,
            seq: 1,
            nexthops: None,
            no_nexthops: false,
        })
    }

    /// The socket's port id (the kernel stamps notifications of its changes with it).
    pub fn port_id(&self) -> Result<u32> {
        let mut addr = netlink_sys::SocketAddr::new(0, 0);
        self.sock
            .get_address(&mut addr)
            .map_err(|e| Error::io("rtnetlink socket address", e))?;
        Ok(addr.port_number())
    }

    /// Runs the changes in order; one outcome per change.
    pub fn run(&mut self, changes: &[RouteChange]) -> Vec<Result<()>> {
        let via = self.nexthops_for(changes);
        // The requests, in order, each with the change it is for and how it names the next
        // hop. A deletion with a gateway is sent once per known object of that gateway and
        // once naming the gateway itself, one after the other (it cannot know which form
        // its route has, and a second round after the rest of the batch would reorder it).
        let mut requests: Vec<(usize, Option<u32>)> = Vec::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            match change {
                RouteChange::Delete(r) => {
                    if let Some(gateway) = r.gateway {
                        let objects = self
                            .nexthops
                            .iter()
                            .flatten()
                            .filter(|nh| nh.gateway == gateway && nh.protocol == r.protocol);
                        requests.extend(objects.map(|nh| (i, Some(nh.id))));
                    }
                    requests.push((i, None));
                }
                _ => requests.push((i, change.next_hop().and_then(|k| via.get(&k).copied()))),
            }
        }
        let mut codes: Vec<Option<Result<i32>>> = (0..changes.len()).map(|_| None).collect();
        for chunk in requests.chunks(PER_SEND) {
            for ((i, _), code) in chunk.iter().zip(self.run_chunk(changes, chunk)) {
                // A change done by any of its requests is done; one that none of them
                // found is "not found"; otherwise the first other refusal counts.
                let merged = match (codes[*i].take(), code) {
                    (None, code) => code,
                    (Some(Ok(0)), _) | (_, Ok(0)) => Ok(0),
                    (Some(Ok(have)), Ok(code)) if crate::errno_is_not_found(have) => Ok(code),
                    (Some(have), _) => have,
                };
                codes[*i] = Some(merged);
            }
        }
        codes
            .into_iter()
            .zip(changes)
            .map(
                |(code, c)| match code.expect("every change has a request") {
                    Ok(0) => Ok(()),
                    Ok(errno) => c.outcome(errno),
                    Err(e) => Err(e),
                },
            )
            .collect()
    }

    /// Reads every single-gateway nexthop object into the cache; a kernel that refuses to
    /// list them gets plain gateways from now on.
    fn load_nexthops(&mut self) {
        match self.nexthops() {
            Ok(list) => self.nexthops = Some(list),
            Err(e) => {
                tracing::debug!("nexthop objects unavailable, plain gateways only: {e}");
                self.no_nexthops = true;
            }
        }
    }

    /// The nexthop objects the additions and replacements of `changes` go through: one per
    /// next hop that has one already or that several of them share (created now). The
    /// objects are read from the kernel first whenever a change may use or name one, so a
    /// batch never meets an object that went away since the last (with its link, say).
    fn nexthops_for(&mut self, changes: &[RouteChange]) -> HashMap<NexthopKey, u32> {
        let mut via = HashMap::new();
        let mut shared: HashMap<NexthopKey, usize> = HashMap::new();
        let mut names_gateway = false;
        for change in changes {
            match change {
                RouteChange::Delete(r) => names_gateway |= r.gateway.is_some(),
                _ => {
                    if let Some(key) = change.next_hop() {
                        *shared.entry(key).or_default() += 1;
                    }
                }
            }
        }
        if self.no_nexthops || (shared.is_empty() && !names_gateway) {
            return via;
        }
        self.load_nexthops();
        for (key, n) in shared {
            let known = self.known_nexthop(key);
            if known.is_none() && n < NEXTHOP_MIN_ROUTES {
                continue;
            }
            match known.map_or_else(|| self.create_nexthop(key), Ok) {
                Ok(id) => {
                    via.insert(key, id);
                }
                Err(e) => tracing::debug!("{e}; its routes use the gateway itself"),
            }
        }
        via
    }

    /// The (lowest) id of a known object of `key`.
    fn known_nexthop(&self, key: NexthopKey) -> Option<u32> {
        let known = self.nexthops.iter().flatten();
        known.filter(|nh| nh.key() == key).map(|nh| nh.id).min()
    }

    /// Creates a nexthop object for `key` under the first free id from [`NEXTHOP_ID_BASE`].
    fn create_nexthop(&mut self, key: NexthopKey) -> Result<u32> {
        let mut id = self
            .nexthops
            .iter()
            .flatten()
            .map(|nh| nh.id)
            .filter(|id| *id >= NEXTHOP_ID_BASE)
            .max()
            .map_or(NEXTHOP_ID_BASE, next_nexthop_id);
        let op = || {
            format!(
                "add nexthop via {} dev #{}{} proto {}",
                key.gateway,
                key.oif,
                if key.onlink { " onlink" } else { "" },
                key.protocol
            )
        };
        for _ in 0..64 {
            let seq = self.next_seq();
            let req = new_nexthop_request(seq, &key.with_id(id));
            match self.ask(&req, seq, &op)? {
                0 => {
                    self.nexthops
                        .get_or_insert_with(Vec::new)
                        .push(key.with_id(id));
                    return Ok(id);
                }
                // The id belongs to someone else.
                crate::libc_errno::EEXIST => id = next_nexthop_id(id),
                errno => return Err(Error::Kernel { op: op(), errno }),
            }
        }
        Err(Error::Kernel {
            op: op(),
            errno: crate::libc_errno::EEXIST,
        })
    }

    /// The kernel's single-gateway nexthop objects (IPv4 and IPv6), of every protocol.
    pub fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        let seq = self.next_seq();
        let req = dump_nexthops_request(seq);
        let op = "list nexthop objects";
        self.send(&req, op)?;
        let mut found = Vec::new();
        let mut failed = None;
        self.receive(op, |a| {
            if a.seq != seq {
                return false;
            }
            match a.kind {
                RTM_NEWNEXTHOP => {
                    found.extend(parse_nexthop(a.payload));
                    false
                }
                NLMSG_DONE => true,
                _ => {
                    failed = a.errno().filter(|e| *e != 0);
                    true
                }
            }
        })?;
        match failed {
            Some(errno) => Err(Error::Kernel {
                op: op.to_string(),
                errno,
            }),
            None => Ok(found),
        }
    }

    /// Deletes nexthop objects by id (and the routes through them); an object that is gone
    /// is success.
    pub fn delete_nexthops(&mut self, ids: &[u32]) -> Vec<Result<()>> {
        if let Some(known) = &mut self.nexthops {
            known.retain(|nh| !ids.contains(&nh.id));
        }
        ids.iter()
            .map(|&id| {
                let seq = self.next_seq();
                let req = delete_nexthop_request(seq, id);
                let op = || format!("delete nexthop {id}");
                match self.ask(&req, seq, &op)? {
                    0 => Ok(()),
                    errno => {
                        let err = Error::Kernel { op: op(), errno };
                        if err.is_not_found() { Ok(()) } else { Err(err) }
                    }
                }
            })
            .collect()
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }

    fn send(&mut self, buf: &[u8], op: &str) -> Result<()> {
        self.sock
            .send(buf, 0)
            .map(|_| ())
            .map_err(|e| Error::io(format!("{op} (send)"), e))
    }

    /// Reads answers, handing each to `on` until it returns true.
    fn receive(&mut self, op: &str, mut on: impl FnMut(Answer<'_>) -> bool) -> Result<()> {
        let mut rbuf = vec![0u8; 64 * 1024];
        loop {
            let n = nix::sys::socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.sock),
                &mut rbuf,
                nix::sys::socket::MsgFlags::empty(),
            )
            .map_err(|e| Error::io(format!("{op} (answer)"), io::Error::from(e)))?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let word = |at: usize| -> [u8; 4] {
                    rbuf[off + at..off + at + 4].try_into().expect("4 bytes")
                };
                let len = u32::from_ne_bytes(word(0)) as usize;
                if len < NLMSG_HDRLEN || off + len > n {
                    break;
                }
                let answer = Answer {
                    kind: u16::from_ne_bytes([rbuf[off + 4], rbuf[off + 5]]),
                    seq: u32::from_ne_bytes(word(8)),
                    payload: &rbuf[off + NLMSG_HDRLEN..off + len],
                };
                if on(answer) {
                    return Ok(());
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Sends one request that asks for an acknowledgement and returns its error code (0:
    /// done).
    fn ask(&mut self, req: &[u8], seq: u32, op: &dyn Fn() -> String) -> Result<i32> {
        self.send(req, &op())?;
        let mut code = 0;
        self.receive(&op(), |a| match a.errno() {
            Some(e) if a.seq == seq => {
                code = e;
                true
            }
            _ => false,
        })?;
        Ok(code)
    }

    /// One send of the requests `chunk` (change index, next hop form): the kernel's code per
    /// request (0: done), or why no answer came.
    fn run_chunk(
        &mut self,
        changes: &[RouteChange],
        chunk: &[(usize, Option<u32>)],
    ) -> Vec<Result<i32>> {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(chunk.len() as u32);
        let last = chunk.len() - 1;
        let mut buf = Vec::with_capacity(chunk.len() * 64);
        for (i, (change, form)) in chunk.iter().enumerate() {
            let mut req = changes[*change].request(*form);
            req.header.sequence_number = first.wrapping_add(i as u32);
            if i == last {
                req.header.flags |= NLM_F_ACK;
            }
            req.finalize();
            let at = buf.len();
            buf.resize(at + req.buffer_len(), 0);
            req.serialize(&mut buf[at..]);
        }
        let mut codes: Vec<Option<i32>> = vec![None; chunk.len()];
        if let Err(e) = self.send(&buf, "route changes") {
            return chunk
                .iter()
                .map(|(c, _)| Err(unanswered(&changes[*c], &e)))
                .collect();
        }
        let received = self.receive("route changes", |a| {
            let index = a.seq.wrapping_sub(first) as usize;
            match a.errno() {
                Some(code) if index < chunk.len() && codes[index].is_none() => {
                    codes[index] = Some(code);
                    // Answers come in order: after the last request's, there are no more.
                    index == last
                }
                _ => false,
            }
        });
        codes
            .into_iter()
            .zip(chunk)
            .map(|(code, c)| match (code, &received) {
                (Some(code), _) => Ok(code),
                // Not refused before the last request was answered: done.
                (None, Ok(())) => Ok(0),
                // Lost or late answers: the outcome is unknown, so it is reported as failed
                // (the caller's next observation tells).
                (None, Err(e)) => Err(unanswered(&changes[c.0], e)),
            })
            .collect()
    }
}

/// The error of a change whose answer never came because of `e`.
fn unanswered(change: &RouteChange, e: &Error) -> Error {
    let kind = match e {
        Error::Io { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    };
    Error::io(change.describe(), io::Error::new(kind, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nexthop_ids_stay_in_twills_range() {
        assert_eq!(next_nexthop_id(NEXTHOP_ID_BASE), NEXTHOP_ID_BASE + 1);
        assert_eq!(next_nexthop_id(u32::MAX), NEXTHOP_ID_BASE);
    }
}
