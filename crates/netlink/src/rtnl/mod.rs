//! [`Rtnl`]: an asynchronous rtnetlink client that keeps many requests in flight on one socket.
//!
//! The node agent programs thousands of routes, neighbours and FDB entries when peers come and
//! go, so unlike the plugin's [`crate::Handle`] this client never waits for one request before
//! sending the next: every method takes `&self`, and callers run as many of them concurrently
//! as they like (the connection task of `rtnetlink` matches replies to requests by sequence
//! number). Messages are built from `netlink-packet-route` types rather than with `rtnetlink`'s
//! request builders, so that every request carries exactly the flags and attributes that the
//! observe side later compares against, and every error names its operation.
//!
//! The socket lives in the network namespace of the thread that calls [`Rtnl::new`]; the
//! agent is started inside the host's namespace, tests create the client on a thread that has
//! entered a test namespace.
//!
//! Conventions: IPv4 and IPv6 alike (an object's family is its address's: [`crate::IpRoute`],
//! [`Neighbour`], [`FdbEntry`], [`VxlanSpec`]), only the main routing table; deletions are
//! idempotent (an object that is already gone is success), replacements create what is
//! missing, and exclusive creations ([`Rtnl::create_vxlan`], [`Rtnl::add_route`]) report
//! "exists" as an error so that the caller never overwrites an object it does not own.
//!
//! This file holds the client itself (the socket, its connection task, and the request,
//! acknowledgement and dump plumbing); the operations live with their object kind:
//! [`link`] (links and VXLAN devices), [`address`], [`route`], [`nexthop`], [`neighbour`] and
//! [`fdb`]; [`events`] reads the kernel's notifications of changes to all of them.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::bulk::BulkSocket;
use crate::{Error, Result};

pub mod address;
pub mod events;
pub mod fdb;
pub mod link;
pub mod neighbour;
pub mod nexthop;
pub mod route;

pub use address::InterfaceV4;
pub use events::{Change, KernelEvents};
pub use fdb::FdbEntry;
pub use link::{LinkState, VxlanInfo, VxlanSpec};
pub use neighbour::Neighbour;

/// How often a dump that the kernel marks as interrupted (the table changed while it was being
/// read) is retried before its possibly inconsistent result is returned anyway.
const DUMP_RETRIES: usize = 5;

/// Aborts the connection task when the last clone of the client goes.
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
pub struct Rtnl {
    nl: rtnetlink::Handle,
    _conn: Arc<Connection>,
    /// The socket for route changes in bulk ([`Rtnl::route_changes`]).
    bulk: Arc<Mutex<BulkSocket>>,
    /// Port ids of the shared socket and the bulk socket.
    ports: [u32; 2],
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace and spawns its connection task
    /// on the current tokio runtime (so this must be called inside one).
    pub fn new() -> Result<Rtnl> {
        use netlink_sys::AsyncSocket;
        let (mut conn, nl, _unsolicited) = rtnetlink::new_connection_with_strict_check()
            .map_err(|e| Error::io("open rtnetlink socket", e))?;
        // Bound now rather than at the first send, so its port id is known from the start.
        let port = conn
            .socket_mut()
            .socket_mut()
            .bind_auto()
            .map_err(|e| Error::io("bind rtnetlink socket", e))?
            .port_number();
        let bulk = BulkSocket::new()?;
        let ports = [port, bulk.port_id()?];
        let task = tokio::spawn(conn);
        Ok(Rtnl {
            nl,
            _conn: Arc::new(Connection(task)),
            bulk: Arc::new(Mutex::new(bulk)),
            ports,
        })
    }

    /// The port ids of the client's sockets: the kernel stamps its notifications of the
    /// changes they make with these (see [`KernelEvents`]).
    pub fn port_ids(&self) -> [u32; 2] {
        self.ports
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

/// The usual text form of a MAC (`aa:bb:cc:dd:ee:ff`), for messages: the workspace's one.
fn mac_text(mac: &[u8; 6]) -> String {
    twill_types::MacAddr(*mac).to_string()
}
