//! Route changes in bulk: many rtnetlink requests per `send` on a socket of their own, each
//! acknowledged and matched back by sequence number.
//!
//! A BGP table brings thousands of routes at once. On the shared socket of
//! [`crate::AgentHandle`] every request is a future, a message to the connection task, a
//! system call and a wake-up for its acknowledgement, which costs about as much as the
//! kernel's own work for the route. Here a batch of requests is one buffer and one system
//! call (the kernel runs them in order and acknowledges each), so programming a table costs
//! little more than the kernel's part. The socket is blocking and is used from a blocking
//! thread ([`crate::AgentHandle::route_changes`]).

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt};
use std::io;
use std::time::Duration;

use crate::agent::{Ipv4Route, delete_route_message, route_message, route_text};
use crate::{Error, Result};

/// One route change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// Exclusive: fails with "exists" when any route with the same destination, TOS and
    /// metric is there (whoever owns it).
    Add(Ipv4Route),
    /// Adds, or replaces the route with the same destination, TOS and metric.
    Replace(Ipv4Route),
    /// Deletes the route with this destination, protocol, metric and (when given) gateway; a
    /// route that is not there is success.
    Delete(Ipv4Route),
}

impl RouteChange {
    fn request(&self) -> NetlinkMessage<RouteNetlinkMessage> {
        let (msg, flags) = match self {
            RouteChange::Add(r) => (
                RouteNetlinkMessage::NewRoute(route_message(r)),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            RouteChange::Replace(r) => (
                RouteNetlinkMessage::NewRoute(route_message(r)),
                NLM_F_CREATE | NLM_F_REPLACE,
            ),
            RouteChange::Delete(r) => (RouteNetlinkMessage::DelRoute(delete_route_message(r)), 0),
        };
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
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
}

/// Requests per `send`. Their acknowledgements must fit the receive buffer at once (each is
/// a small message, but the kernel charges a whole buffer for it).
const PER_SEND: usize = 128;
/// How long to wait for acknowledgements before giving up on the rest of a batch.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;

/// A blocking rtnetlink socket for [`RouteChange`] batches, in the network namespace of the
/// thread that created it.
#[derive(Debug)]
pub struct BulkSocket {
    sock: Socket,
    seq: u32,
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
        // Room for a whole batch of acknowledgements; without CAP_NET_ADMIN the default
        // buffer still holds PER_SEND of them.
        let _ = setsockopt(&sock, sockopt::RcvBufForce, &(4 << 20));
        let _ = setsockopt(
            &sock,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(ACK_TIMEOUT.as_secs() as i64, 0),
        );
        Ok(BulkSocket { sock, seq: 1 })
    }

    /// Runs the changes in order; one outcome per change.
    pub fn run(&mut self, changes: &[RouteChange]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(changes.len());
        for chunk in changes.chunks(PER_SEND) {
            out.extend(self.run_chunk(chunk));
        }
        out
    }

    fn run_chunk(&mut self, chunk: &[RouteChange]) -> Vec<Result<()>> {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(chunk.len() as u32);
        let mut buf = Vec::with_capacity(chunk.len() * 64);
        for (i, change) in chunk.iter().enumerate() {
            let mut req = change.request();
            req.header.sequence_number = first.wrapping_add(i as u32);
            req.finalize();
            let at = buf.len();
            buf.resize(at + req.buffer_len(), 0);
            req.serialize(&mut buf[at..]);
        }
        let mut outcomes: Vec<Option<Result<()>>> = chunk.iter().map(|_| None).collect();
        if let Err(e) = self.sock.send(&buf, 0) {
            return failed(chunk, "send", e);
        }
        let mut pending = chunk.len();
        let mut rbuf = vec![0u8; 64 * 1024];
        while pending > 0 {
            let n = match nix::sys::socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.sock),
                &mut rbuf,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Ok(n) => n,
                Err(e) => {
                    // Lost or late acknowledgements: the outcome of the rest is unknown, so
                    // it is reported as failed (the caller's next observation tells).
                    let e = io::Error::from(e);
                    return outcomes
                        .into_iter()
                        .zip(chunk)
                        .map(|(o, c)| {
                            o.unwrap_or_else(|| {
                                Err(Error::io(format!("{} (acknowledgement)", c.describe()), {
                                    io::Error::new(e.kind(), e.to_string())
                                }))
                            })
                        })
                        .collect();
                }
            };
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let field = |at: usize| -> [u8; 4] {
                    rbuf[off + at..off + at + 4].try_into().expect("4 bytes")
                };
                let len = u32::from_ne_bytes(field(0)) as usize;
                let kind = u16::from_ne_bytes([rbuf[off + 4], rbuf[off + 5]]);
                let seq = u32::from_ne_bytes(field(8));
                if len < NLMSG_HDRLEN || off + len > n {
                    break;
                }
                let index = seq.wrapping_sub(first) as usize;
                if kind == NLMSG_ERROR
                    && len >= NLMSG_HDRLEN + 4
                    && index < chunk.len()
                    && outcomes[index].is_none()
                {
                    let code = i32::from_ne_bytes(field(NLMSG_HDRLEN));
                    outcomes[index] = Some(if code == 0 {
                        Ok(())
                    } else {
                        chunk[index].outcome(-code)
                    });
                    pending -= 1;
                }
                off += (len + 3) & !3;
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every change was answered"))
            .collect()
    }
}

fn failed(chunk: &[RouteChange], what: &str, e: io::Error) -> Vec<Result<()>> {
    chunk
        .iter()
        .map(|c| {
            Err(Error::io(
                format!("{} ({what})", c.describe()),
                io::Error::new(e.kind(), e.to_string()),
            ))
        })
        .collect()
}
