//! The encapsulations, behind one small trait so that another transform (WireGuard) can be
//! added as one more implementation.
//!
//! A [`Carrier`] owns the underlay sockets of one queue. On send it gets a batch of inner
//! packets (each with [`HEADROOM`] free bytes in front for an outer header it writes itself)
//! and the peer each goes to; on receive it fills an [`RxBatch`] with validated inner packets,
//! which the engine writes to the TUN device. A peer's underlay address family picks the
//! socket; a node has sockets of each family it has an underlay address of.
//!
//! - [`UdpCarriers`]: Flannel framing over a UDP socket per family ([`UdpCarrier`]).
//!   Consecutive packets to the same peer with equal size (TSO segments) leave in one
//!   `sendmmsg` message with UDP GSO; received datagrams arrive coalesced by UDP GRO and are
//!   split per segment. With several queues the sockets share the port (SO_REUSEPORT) and a
//!   reuseport BPF program spreads inner flows.
//! - [`IpipCarrier`]: over IPv4, a raw `IPPROTO_IPIP` socket with `IP_HDRINCL`. We build the
//!   outer header ourselves because Linux's ipip defaults are per packet (TTL inherited from
//!   the inner packet, ECN copied), which a kernel-built header cannot do. Inner IPv6 leaves
//!   through the same socket with protocol 41 in our header (6in4, as `sit`) and arrives on a
//!   raw protocol-41 socket. Over IPv6 (`ip6tnl`), raw IPv6 sockets of next header 4 and 41:
//!   the kernel builds the outer header (hop limit 64; the traffic class, DSCP 0 with the
//!   inner ECN, per message). Every raw socket receives a copy of every packet of its
//!   protocol, so with several queues each socket gets a BPF filter that keeps only its share
//!   of inner flows, for every protocol and family.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tun_rs::{
    GROTable, SyncDevice, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN,
    VirtioNetHdr,
};

use crate::TunnelError;
use crate::buf::PktBuf;
use crate::peers::{PeerTable, Tally};
use crate::sys::{Mmsg, RecvMeta, SendBatch, SendOpt};
use crate::wire::{self, DropReason, InnerHeader};

/// Free bytes in front of every inner packet on the send side (the ipip outer header).
pub(crate) const HEADROOM: usize = wire::IPV4_HEADER_LEN;
/// Most packets one send batch holds.
pub(crate) const TX_BATCH: usize = 256;
/// Largest UDP GSO message: segments (`UDP_MAX_SEGMENTS` is 64 on older kernels) and bytes
/// (an IPv4 datagram is at most 64 KiB).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;
/// Datagrams per `recvmmsg`: UDP ones are up to 64 KiB each with GRO.
const UDP_RX_BATCH: usize = 8;
const RAW_RX_BATCH: usize = 64;
/// Socket buffers: a few milliseconds of 10 Gbit/s, so bursts do not overflow them.
const SOCKET_BUFFER: usize = 8 << 20;

/// The sockets of a carrier, for poll.
pub(crate) type Fds<'a> = [Option<BorrowedFd<'a>>; 4];

/// One inner packet to send: `pool[buf]` holds it at `HEADROOM`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxItem {
    pub buf: usize,
    pub len: usize,
    pub peer: usize,
    pub header: InnerHeader,
}

/// A sendmmsg message: datagrams `start..end` to one peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsgInfo {
    start: usize,
    end: usize,
    peer: usize,
    /// Bytes on the wire (UDP payload), for the GSO size limit.
    bytes: usize,
    /// Pod packets and their bytes, for the peer's counters.
    packets: u64,
    inner: u64,
}

/// One datagram of a UDP send batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagram {
    pub peer: usize,
    /// UDP payload length.
    pub len: usize,
    /// Bytes of the pod packet it carries; 0 for a protocol message.
    pub inner: usize,
}

/// One way of carrying inner packets between nodes.
pub(crate) trait Carrier: Send + Sync + 'static {
    /// Where received inner packets start in the buffers handed to the TUN writer (room for
    /// the virtio header in front).
    const RX_OFFSET: usize;
    /// Per-worker scratch; made on the worker's thread.
    type TxState;
    type RxState;

    fn tx_state(&self) -> Self::TxState;
    fn rx_state(&self) -> Self::RxState;
    /// The sockets to poll (up to four).
    fn fds(&self) -> Fds<'_>;
    /// Encapsulates and sends `items`; counts per peer and errors into `tally`.
    fn send(
        &self,
        st: &mut Self::TxState,
        pool: &mut [PktBuf],
        items: &[TxItem],
        table: &PeerTable,
        tally: &mut Tally,
    );
    /// Receives one batch without blocking and adds the accepted inner packets to `rx`.
    /// `WouldBlock` when nothing was queued.
    fn recv(&self, st: &mut Self::RxState, rx: &mut RxBatch<'_>) -> io::Result<()>;
}

/// Accepted inner packets on their way to the TUN device.
pub(crate) struct RxBatch<'a> {
    pub out: &'a mut [PktBuf],
    pub n: usize,
    pub offset: usize,
    pub table: &'a PeerTable,
    pub local: Option<Ipv4Net>,
    pub local6: Option<Ipv6Net>,
    pub tally: &'a mut Tally,
    pub tun: &'a SyncDevice,
    pub gro: &'a mut GROTable,
    /// The TUN device's MTU, and whether it takes virtio headers (offload).
    pub mtu: usize,
    pub offload: bool,
}

impl RxBatch<'_> {
    /// Applies the receive policy to an inner packet from peer `peer`; counts it either way.
    pub(crate) fn admit(&mut self, peer: usize, inner: &InnerHeader) -> bool {
        let p = &self.table.entries[peer].peer;
        match wire::admit_any(
            inner,
            p.subnet.as_ref(),
            p.subnet6.as_ref(),
            self.local.as_ref(),
            self.local6.as_ref(),
        ) {
            Ok(()) => {
                self.tally.rx(peer, 1, inner.total_len() as u64);
                true
            }
            Err(r) => {
                self.tally.drop(r, 1);
                false
            }
        }
    }

    /// Copies an accepted inner packet into the next buffer.
    pub(crate) fn push_copy(&mut self, inner: &[u8]) {
        if self.n == self.out.len() {
            self.flush();
        }
        let b = &mut self.out[self.n];
        let end = self.offset + inner.len();
        if end > b.space().len() {
            self.tally.drop(DropReason::Malformed, 1);
            return;
        }
        b.space()[self.offset..end].copy_from_slice(inner);
        b.set_len(end);
        self.n += 1;
    }

    /// Writes `out[idx]`, a TCP packet (IPv4, or IPv6 without extension headers) larger than
    /// the MTU at `offset`, as one TSO super-packet: a virtio header asking the kernel to cut
    /// it into MTU-sized segments and to finish the TCP checksum (seeded here with the
    /// pseudo-header sum).
    pub(crate) fn write_tcp_super_packet(&mut self, idx: usize, ip: &InnerHeader) {
        let off = self.offset;
        let space = self.out[idx].space();
        let total_len = ip.total_len();
        let pkt = &mut space[off..off + total_len];
        let (ihl, gso_type) = match ip {
            InnerHeader::V4(h) => (h.header_len, VIRTIO_NET_HDR_GSO_TCPV4),
            InnerHeader::V6(_) => (wire::IPV6_HEADER_LEN, VIRTIO_NET_HDR_GSO_TCPV6),
        };
        let Some(thl) = pkt.get(ihl + 12).map(|b| usize::from(b >> 4) * 4) else {
            self.tally.drop(DropReason::Malformed, 1);
            return;
        };
        if thl < 20 || ihl + thl >= pkt.len() || self.mtu <= ihl + thl {
            self.tally.drop(DropReason::Malformed, 1);
            return;
        }
        let tcp_len = pkt.len() - ihl;
        let seed = match ip {
            InnerHeader::V4(h) => {
                let mut pseudo = [0u8; 12];
                pseudo[..4].copy_from_slice(&h.src.octets());
                pseudo[4..8].copy_from_slice(&h.dst.octets());
                pseudo[9] = 6;
                pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
                !wire::checksum(&pseudo)
            }
            InnerHeader::V6(h) => {
                let mut pseudo = [0u8; 40];
                pseudo[..16].copy_from_slice(&h.src.octets());
                pseudo[16..32].copy_from_slice(&h.dst.octets());
                pseudo[32..36].copy_from_slice(&(tcp_len as u32).to_be_bytes());
                pseudo[39] = 6;
                !wire::checksum(&pseudo)
            }
        };
        pkt[ihl + 16..ihl + 18].copy_from_slice(&seed.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: 1, // NEEDS_CSUM
            gso_type,
            hdr_len: (ihl + thl) as u16,
            gso_size: (self.mtu - ihl - thl) as u16,
            csum_start: ihl as u16,
            csum_offset: 16,
        };
        let end = off + total_len;
        if off < VIRTIO_NET_HDR_LEN
            || hdr
                .encode(&mut space[off - VIRTIO_NET_HDR_LEN..off])
                .is_err()
        {
            self.tally.drop(DropReason::Malformed, 1);
            return;
        }
        if let Err(e) = self.tun.send(&space[off - VIRTIO_NET_HDR_LEN..end]) {
            tracing::debug!(error = %e, "TUN write of a TCP super-packet failed");
            self.tally.drop(DropReason::SendError, 1);
        }
    }

    /// Writes the buffered packets to the TUN device, coalescing TCP segments (GRO).
    pub(crate) fn flush(&mut self) {
        if self.n == 0 {
            return;
        }
        if let Err(e) = self
            .tun
            .send_multiple(self.gro, &mut self.out[..self.n], self.offset)
        {
            tracing::debug!(error = %e, "TUN write failed");
            self.tally.drop(DropReason::SendError, self.n as u64);
        }
        self.n = 0;
    }
}

/// Sends every message of `batch`, continuing past failed ones. Returns the error of the
/// first failed message that carried several GSO segments, if any.
fn send_all(
    batch: &mut SendBatch<'_, '_>,
    fd: BorrowedFd<'_>,
    msgs: &[MsgInfo],
    tally: &mut Tally,
) -> Option<io::Error> {
    let mut gso_error = None;
    let mut i = 0;
    while i < batch.len() {
        match batch.send(fd, i) {
            Ok(k) if k > 0 => {
                for m in &msgs[i..i + k] {
                    tally.tx(m.peer, m.packets, m.inner);
                }
                i += k;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => {
                let m = &msgs[i];
                if let Err(e) = other {
                    tracing::debug!(error = %e, "underlay send failed");
                    if m.end - m.start > 1 && gso_error.is_none() {
                        gso_error = Some(e);
                    }
                }
                tally.drop(DropReason::SendError, m.packets);
                i += 1;
            }
        }
    }
    gso_error
}

pub(crate) fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> TunnelError {
    move |source| TunnelError::Io {
        op: op.into(),
        source,
    }
}

/// Large socket buffers; root may exceed the sysctl caps (SO_*BUFFORCE).
fn size_buffers(s: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(s, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(s, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    }
}

// Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ST: u16 = 0x02;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_B: u16 = 0x10;
const BPF_IMM: u16 = 0x00;
const BPF_IND: u16 = 0x40;
const BPF_MEM: u16 = 0x60;
const BPF_LEN: u16 = 0x80;
const BPF_MSH: u16 = 0xa0;
const BPF_K: u16 = 0x00;
const BPF_X: u16 = 0x08;
const BPF_SUB: u16 = 0x10;
const BPF_RSH: u16 = 0x70;
const BPF_XOR: u16 = 0xa0;
const BPF_MOD: u16 = 0x90;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_A: u16 = 0x10;

/// Where the inner packet starts in what a classic BPF program sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InnerAt {
    /// At the start: a UDP payload (reuseport), or what a raw IPv6 socket receives.
    Start,
    /// After the outer IPv4 header: what a raw IPv4 socket receives.
    AfterIpv4Header,
}

/// What a flow-sharding program returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The index of the socket in the SO_REUSEPORT group.
    ReuseportIndex,
    /// Keep the packet (a socket filter) when its flow is queue `queue`'s.
    Keep { queue: usize },
}

/// A classic BPF program spreading inner flows over `queues`: the flow is the inner
/// (source ^ destination) — for IPv6, the low 32 bits of each, which is where pod addresses
/// differ — modulo `queues`, so both directions of a flow and all its packets land on one
/// queue whatever the outer addresses. Packets too short for their inner header go to queue
/// 0, which counts them as malformed. Instructions are (code, jump if true, jump if false, k).
fn flow_shard_program(at: InnerAt, verdict: Verdict, queues: usize) -> Vec<(u16, u8, u8, u32)> {
    let (first, short_verdict, tail): (_, u32, Vec<(u16, u8, u8, u32)>) = match verdict {
        Verdict::ReuseportIndex => (0, 0, vec![(BPF_RET | BPF_A, 0, 0, 0)]),
        Verdict::Keep { queue } => (
            queue,
            if queue == 0 { u32::MAX } else { 0 },
            vec![
                (BPF_JMP | BPF_JEQ | BPF_K, 0, 1, queue as u32),
                (BPF_RET | BPF_K, 0, 0, u32::MAX),
                (BPF_RET | BPF_K, 0, 0, 0),
            ],
        ),
    };
    let _ = first;
    let load_start = match at {
        InnerAt::Start => (BPF_LDX | BPF_W | BPF_IMM, 0, 0, 0),
        InnerAt::AfterIpv4Header => (BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0),
    };
    // Fixed part: 20 instructions (0..=19), then the verdict, then the short return.
    let short = 20 + tail.len();
    let jump_to = |from: usize, to: usize| (to - from - 1) as u8;
    let mut p = vec![
        // 0: X = start of the inner packet; M[1] = its length
        load_start,
        (BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),
        (BPF_ALU | BPF_SUB | BPF_X, 0, 0, 0),
        (BPF_ST, 0, 0, 1),
        // 4: room for an IPv4 header at least?
        (BPF_JMP | BPF_JGE | BPF_K, 0, jump_to(4, short), 20),
        // 5: A = inner version
        (BPF_LD | BPF_B | BPF_IND, 0, 0, 0),
        (BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4),
        (BPF_JMP | BPF_JEQ | BPF_K, jump_to(7, 12), 0, 6),
        // 8: IPv4: M[0] = source, A = destination
        (BPF_LD | BPF_W | BPF_IND, 0, 0, 12),
        (BPF_ST, 0, 0, 0),
        (BPF_LD | BPF_W | BPF_IND, 0, 0, 16),
        (BPF_JMP | BPF_JA, 0, 0, u32::from(jump_to(11, 17))),
        // 12: IPv6: room for its header? M[0] = source (low word), A = destination (low word)
        (BPF_LD | BPF_MEM, 0, 0, 1),
        (BPF_JMP | BPF_JGE | BPF_K, 0, jump_to(13, short), 40),
        (BPF_LD | BPF_W | BPF_IND, 0, 0, 20),
        (BPF_ST, 0, 0, 0),
        (BPF_LD | BPF_W | BPF_IND, 0, 0, 36),
        // 17: A = (A ^ M[0]) % queues
        (BPF_LDX | BPF_W | BPF_MEM, 0, 0, 0),
        (BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        (BPF_ALU | BPF_MOD | BPF_K, 0, 0, queues as u32),
    ];
    p.extend(tail);
    p.push((BPF_RET | BPF_K, 0, 0, short_verdict));
    p
}

fn flow_shard_filter(at: InnerAt, queue: usize, queues: usize) -> Vec<SockFilter> {
    flow_shard_program(at, Verdict::Keep { queue }, queues)
        .iter()
        .map(|&(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
        .collect()
}

/// Flannel-framed UDP on one socket of the port's SO_REUSEPORT group (of one family).
pub(crate) struct UdpCarrier {
    pub(crate) sock: Socket,
    gso: AtomicBool,
}

impl UdpCarrier {
    pub(crate) fn open(local: IpAddr, port: u16) -> Result<UdpCarrier, TunnelError> {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        let sock = Socket::new(
            Domain::for_address(SocketAddr::new(local, port)),
            Type::DGRAM,
            Some(Protocol::UDP),
        )
        .map_err(io_err("open UDP socket"))?;
        if local.is_ipv6() {
            sock.set_only_v6(true).map_err(io_err("set IPV6_V6ONLY"))?;
        }
        sock.set_reuse_port(true)
            .map_err(io_err("set SO_REUSEPORT"))?;
        sock.bind(&SocketAddr::new(local, port).into())
            .map_err(io_err(format!("bind UDP {}", SocketAddr::new(local, port))))?;
        size_buffers(&sock);
        // A blocked send must not hold a worker past shutdown forever.
        let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = setsockopt(&sock, sockopt::UdpGroSegment, &true);
        let gso = getsockopt(&sock, sockopt::UdpGsoSegment).is_ok();
        Ok(UdpCarrier {
            sock,
            gso: AtomicBool::new(gso),
        })
    }
}

/// The udp encapsulation of one queue: a socket per underlay family the node has.
pub(crate) struct UdpCarriers {
    v4: Option<UdpCarrier>,
    v6: Option<UdpCarrier>,
}

impl UdpCarriers {
    pub(crate) fn open(
        local: Option<Ipv4Addr>,
        local6: Option<Ipv6Addr>,
        port: u16,
    ) -> Result<UdpCarriers, TunnelError> {
        Ok(UdpCarriers {
            v4: local
                .map(|a| UdpCarrier::open(a.into(), port))
                .transpose()?,
            v6: local6
                .map(|a| UdpCarrier::open(a.into(), port))
                .transpose()?,
        })
    }
}

/// Spreads received datagrams over the group's sockets by inner source ^ destination, so one
/// peer's flows are not all on one queue (the outer 4-tuple is the same for all of them).
/// `first` holds the first socket of each family's group.
pub(crate) fn shard_udp(first: &UdpCarriers, queues: usize) -> Result<(), TunnelError> {
    use nix::sys::socket::{setsockopt, sockopt};
    // The program sees the datagram from the UDP payload on: the inner header.
    let mut prog: Vec<libc::sock_filter> =
        flow_shard_program(InnerAt::Start, Verdict::ReuseportIndex, queues)
            .into_iter()
            .map(|(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    for c in [&first.v4, &first.v6].into_iter().flatten() {
        setsockopt(&c.sock, sockopt::AttachReusePortCbpf, &fprog)
            .map_err(|e| io_err("attach reuseport BPF")(e.into()))?;
    }
    Ok(())
}

pub(crate) struct UdpTx {
    mmsg: Mmsg,
    msgs: Vec<MsgInfo>,
    dgrams: Vec<Datagram>,
    /// Indexes into the send batch of the items of one underlay family.
    picked: Vec<usize>,
}

/// Receive scratch of a UDP socket: room for a batch of GRO-coalesced datagrams.
pub(crate) struct UdpRx {
    mmsg: Mmsg,
    pub(crate) bufs: Vec<Box<[u8]>>,
    pub(crate) meta: Vec<RecvMeta>,
}

impl UdpRx {
    pub(crate) fn new() -> UdpRx {
        UdpRx {
            mmsg: Mmsg::new(UDP_RX_BATCH),
            bufs: (0..UDP_RX_BATCH)
                .map(|_| vec![0u8; 65_536].into_boxed_slice())
                .collect(),
            meta: vec![RecvMeta::default(); UDP_RX_BATCH],
        }
    }
}

impl UdpCarrier {
    /// Sends `dgrams` (contents in `iov`, one slice each) with `sendmmsg`. A run of
    /// equal-size datagrams to one peer (ended by a shorter one, as the last TSO segment
    /// is) leaves as one UDP GSO message; GSO is turned off for good if the kernel refuses it.
    pub(crate) fn send_datagrams<A: Into<SocketAddr>>(
        &self,
        mmsg: &mut Mmsg,
        msgs: &mut Vec<MsgInfo>,
        dgrams: &[Datagram],
        iov: &[IoSlice<'_>],
        dst: impl Fn(usize) -> A,
        tally: &mut Tally,
    ) {
        if dgrams.is_empty() {
            return;
        }
        let gso = self.gso.load(Ordering::Relaxed);
        // One segment size for the whole batch.
        let g = if gso {
            dgrams.iter().map(|d| d.len).max().unwrap_or(0)
        } else {
            0
        };
        msgs.clear();
        for (k, d) in dgrams.iter().enumerate() {
            let packets = u64::from(d.inner > 0);
            if let Some(m) = msgs.last_mut().filter(|_| gso)
                && m.peer == d.peer
                && dgrams[m.end - 1].len == g
                && m.end - m.start < GSO_MAX_SEGMENTS
                && m.bytes + d.len <= GSO_MAX_BYTES
            {
                m.end = k + 1;
                m.bytes += d.len;
                m.packets += packets;
                m.inner += d.inner as u64;
                continue;
            }
            msgs.push(MsgInfo {
                start: k,
                end: k + 1,
                peer: d.peer,
                bytes: d.len,
                packets,
                inner: d.inner as u64,
            });
        }
        let mut batch = mmsg.send_batch();
        for m in msgs.iter() {
            let seg = if m.end - m.start > 1 { g as u16 } else { 0 };
            batch.push(dst(m.peer), &iov[m.start..m.end], SendOpt::Segment(seg));
        }
        if let Some(e) = send_all(&mut batch, self.sock.as_fd(), msgs, tally)
            && matches!(
                e.raw_os_error(),
                Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
            )
        {
            tracing::warn!(error = %e, "UDP GSO refused; sending one datagram per packet");
            self.gso.store(false, Ordering::Relaxed);
        }
    }

    /// Receives a batch into `st` without blocking; returns how many datagrams arrived.
    pub(crate) fn recv_batch(&self, st: &mut UdpRx) -> io::Result<usize> {
        let UdpRx { mmsg, bufs, meta } = st;
        let mut it = bufs.iter_mut();
        let mut iovs: [IoSliceMut<'_>; UDP_RX_BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(it.next().map_or(&mut [][..], |b| &mut b[..])));
        mmsg.recv(self.sock.as_fd(), &mut iovs, meta)
    }

    /// Receives one batch and adds the accepted inner packets to `rx`.
    fn recv_into(&self, st: &mut UdpRx, rx: &mut RxBatch<'_>) -> io::Result<()> {
        let r = self.recv_batch(st)?;
        for (m, buf) in st.meta.iter().zip(st.bufs.iter()).take(r) {
            let seg = usize::from(m.gro_segment.unwrap_or(0));
            let seg = if seg == 0 { m.len.max(1) } else { seg };
            let count = m.len.div_ceil(seg).max(1) as u64;
            if m.truncated {
                rx.tally.drop(DropReason::Malformed, count);
                continue;
            }
            let Some(peer) = rx.table.by_source(m.src) else {
                rx.tally.drop(DropReason::UnknownPeer, count);
                continue;
            };
            for dgram in buf[..m.len].chunks(seg) {
                match wire::decode_udp_payload_any(dgram) {
                    Ok(inner) => {
                        if rx.admit(peer, &inner.header) {
                            rx.push_copy(&dgram[..inner.len]);
                        }
                    }
                    Err(_) => rx.tally.drop(DropReason::Malformed, 1),
                }
            }
            if m.len == 0 {
                rx.tally.drop(DropReason::Malformed, 1);
            }
        }
        Ok(())
    }
}

/// Whether `sock` has a peer's underlay family: the socket an item to that peer leaves by.
fn same_family(underlay: IpAddr, v6: bool) -> bool {
    underlay.is_ipv6() == v6
}

impl Carrier for UdpCarriers {
    const RX_OFFSET: usize = VIRTIO_NET_HDR_LEN;
    type TxState = UdpTx;
    type RxState = UdpRx;

    fn tx_state(&self) -> UdpTx {
        UdpTx {
            mmsg: Mmsg::new(TX_BATCH),
            msgs: Vec::with_capacity(TX_BATCH),
            dgrams: Vec::with_capacity(TX_BATCH),
            picked: Vec::with_capacity(TX_BATCH),
        }
    }

    fn rx_state(&self) -> UdpRx {
        UdpRx::new()
    }

    fn fds(&self) -> Fds<'_> {
        [
            self.v4.as_ref().map(|c| c.sock.as_fd()),
            self.v6.as_ref().map(|c| c.sock.as_fd()),
            None,
            None,
        ]
    }

    fn send(
        &self,
        st: &mut UdpTx,
        pool: &mut [PktBuf],
        items: &[TxItem],
        table: &PeerTable,
        tally: &mut Tally,
    ) {
        let UdpTx {
            mmsg,
            msgs,
            dgrams,
            picked,
        } = st;
        let pool: &[PktBuf] = pool;
        for (v6, sock) in [(false, &self.v4), (true, &self.v6)] {
            picked.clear();
            picked.extend(
                (0..items.len())
                    .filter(|&i| same_family(table.entries[items[i].peer].peer.underlay, v6)),
            );
            if picked.is_empty() {
                continue;
            }
            let Some(sock) = sock else {
                // A peer of a family this node has no underlay address of.
                tally.drop(DropReason::SendError, picked.len() as u64);
                continue;
            };
            dgrams.clear();
            dgrams.extend(picked.iter().map(|&i| Datagram {
                peer: items[i].peer,
                len: items[i].len,
                inner: items[i].len,
            }));
            let iov: [IoSlice<'_>; TX_BATCH] = std::array::from_fn(|k| match picked.get(k) {
                Some(&i) => {
                    let it = &items[i];
                    IoSlice::new(&pool[it.buf].bytes()[HEADROOM..HEADROOM + it.len])
                }
                None => IoSlice::new(&[]),
            });
            sock.send_datagrams(mmsg, msgs, dgrams, &iov, |p| table.entries[p].addr, tally);
        }
    }

    fn recv(&self, st: &mut UdpRx, rx: &mut RxBatch<'_>) -> io::Result<()> {
        let v4 = self.v4.as_ref().map(|c| c.recv_into(st, rx));
        let v6 = self.v6.as_ref().map(|c| c.recv_into(st, rx));
        merge_results([v4, v6])
    }
}

/// One receive result of several sockets: an error other than `WouldBlock` if any socket
/// had one, else Ok if any socket had packets, else `WouldBlock`.
pub(crate) fn merge_results<const N: usize>(
    results: [Option<io::Result<()>>; N],
) -> io::Result<()> {
    let mut any = false;
    for r in results.into_iter().flatten() {
        match r {
            Ok(()) => any = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    if any {
        Ok(())
    } else {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// What a raw socket of the ipip carrier receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawKind {
    /// IPv4 underlay: the whole outer IPv4 packet (protocol 4 or 41).
    Ipv4Outer,
    /// IPv6 underlay: the inner packet alone (the kernel strips the outer IPv6 header and
    /// its extension headers), of the socket's next header (4 or 41).
    Ipv6Payload(u8),
}

/// The raw sockets of the IPv4 underlay.
struct RawV4 {
    /// Protocol 4, `IP_HDRINCL`: sends both inner families (our header says 4 or 41) and
    /// receives IPv4-in-IPv4.
    ipip: Socket,
    /// Protocol 41, receive only (dual-stack tunnels).
    sit: Option<Socket>,
    local: Ipv4Addr,
}

/// The raw sockets of the IPv6 underlay (`ip6tnl`): the kernel writes the outer header.
struct RawV6 {
    /// Next header 4: IPv4-in-IPv6.
    ipip: Socket,
    /// Next header 41: IPv6-in-IPv6 (dual-stack tunnels).
    ip6: Option<Socket>,
}

/// ipip of one queue: raw sockets of each underlay family the node has.
pub(crate) struct IpipCarrier {
    v4: Option<RawV4>,
    v6: Option<RawV6>,
}

/// A raw socket of `protocol` bound to `local` (so it only sees packets addressed to it),
/// keeping only queue `queue`'s share of inner flows when there are several queues.
fn open_raw(
    local: IpAddr,
    protocol: u8,
    queue: usize,
    queues: usize,
) -> Result<Socket, TunnelError> {
    let what = format!("raw protocol-{protocol} socket on {local}");
    let domain = if local.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(protocol))))
        .map_err(io_err(format!("open {what}")))?;
    sock.bind(&SocketAddr::new(local, 0).into())
        .map_err(io_err(format!("bind {what}")))?;
    size_buffers(&sock);
    let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
    if queues > 1 {
        let at = if local.is_ipv6() {
            InnerAt::Start
        } else {
            InnerAt::AfterIpv4Header
        };
        sock.attach_filter(&flow_shard_filter(at, queue, queues))
            .map_err(io_err(format!("attach the shard filter to {what}")))?;
    }
    Ok(sock)
}

impl IpipCarrier {
    /// Opens queue `queue` of `queues` for the underlay addresses the node has (IPv4, IPv6);
    /// with `ipv6` (a dual-stack tunnel), inner IPv6 is received too (protocol 41).
    pub(crate) fn open(
        (local, local6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
        queue: usize,
        queues: usize,
        ipv6: bool,
    ) -> Result<IpipCarrier, TunnelError> {
        let v4 = match local {
            None => None,
            Some(local) => {
                let ipip = open_raw(local.into(), wire::IPPROTO_IPIP, queue, queues)?;
                ipip.set_header_included_v4(true)
                    .map_err(io_err("set IP_HDRINCL"))?;
                let sit = ipv6
                    .then(|| open_raw(local.into(), wire::IPPROTO_IPV6, queue, queues))
                    .transpose()?;
                Some(RawV4 { ipip, sit, local })
            }
        };
        let v6 = match local6 {
            None => None,
            Some(local6) => {
                let open6 = |protocol| -> Result<Socket, TunnelError> {
                    let s = open_raw(local6.into(), protocol, queue, queues)?;
                    s.set_unicast_hops_v6(wire::IP6TNL_HOP_LIMIT)
                        .map_err(io_err("set the IPv6 hop limit"))?;
                    Ok(s)
                };
                Some(RawV6 {
                    ipip: open6(wire::IPPROTO_IPIP)?,
                    ip6: ipv6.then(|| open6(wire::IPPROTO_IPV6)).transpose()?,
                })
            }
        };
        Ok(IpipCarrier { v4, v6 })
    }

    /// Receives one batch from `sock` into `rx`, validating each packet.
    fn recv_from(
        &self,
        sock: &Socket,
        kind: RawKind,
        st: &mut IpipRx,
        rx: &mut RxBatch<'_>,
    ) -> io::Result<()> {
        if rx.out.len() - rx.n < RAW_RX_BATCH {
            rx.flush();
        }
        let start = rx.n;
        let want = (rx.out.len() - start).min(RAW_RX_BATCH);
        // An IPv6 socket returns the inner packet alone: it lands where the engine wants it.
        let base = match kind {
            RawKind::Ipv4Outer => 0,
            RawKind::Ipv6Payload(_) => IPIP_RX_OFFSET,
        };
        let r = {
            let mut it = rx.out[start..start + want].iter_mut();
            let mut iovs: [IoSliceMut<'_>; RAW_RX_BATCH] = std::array::from_fn(|_| {
                IoSliceMut::new(it.next().map_or(&mut [][..], |b| &mut b.space()[base..]))
            });
            st.mmsg
                .recv(sock.as_fd(), &mut iovs[..want], &mut st.meta)?
        };
        // Accepted packets are moved down to the write cursor, which never passes the
        // packet being looked at.
        let mut w = start;
        for j in 0..r {
            let m = st.meta[j];
            let idx = start + j;
            if m.truncated {
                rx.tally.drop(DropReason::Malformed, 1);
                continue;
            }
            let Some(peer) = rx.table.by_source(m.src) else {
                rx.tally.drop(DropReason::UnknownPeer, 1);
                continue;
            };
            let bytes = &rx.out[idx].space()[base..base + m.len];
            let decoded = match kind {
                RawKind::Ipv4Outer => match wire::decode_ipip_any(bytes) {
                    Ok((outer_src, inner)) if IpAddr::V4(outer_src) == m.src => Ok(inner),
                    _ => Err(()),
                },
                RawKind::Ipv6Payload(nh) => wire::decode_ip6tnl_payload(nh, bytes).map_err(|_| ()),
            };
            let Ok(inner) = decoded else {
                rx.tally.drop(DropReason::Malformed, 1);
                continue;
            };
            if !rx.admit(peer, &inner.header) {
                continue;
            }
            let (off, len) = (base + inner.offset, inner.len);
            let buf = &mut rx.out[idx];
            if off != IPIP_RX_OFFSET {
                buf.space().copy_within(off..off + len, IPIP_RX_OFFSET);
            }
            buf.set_len(IPIP_RX_OFFSET + len);
            let tcp = match &inner.header {
                InnerHeader::V4(h) => h.protocol == 6,
                InnerHeader::V6(h) => h.next_header == 6,
            };
            if len > rx.mtu && tcp && rx.offload {
                // The underlay NIC coalesced TCP segments (GRO runs for IPIP even without
                // the ipip module): hand the super-packet to the kernel to segment again.
                rx.n = w;
                rx.flush();
                w = 0;
                rx.write_tcp_super_packet(idx, &inner.header);
                continue;
            }
            rx.out.swap(w, idx);
            w += 1;
        }
        rx.n = w;
        Ok(())
    }
}

pub(crate) struct IpipTx {
    mmsg: Mmsg,
    msgs: Vec<MsgInfo>,
}

pub(crate) struct IpipRx {
    mmsg: Mmsg,
    meta: Vec<RecvMeta>,
}

/// Received packets land at the start of the buffer, so the inner packet of an option-less
/// outer header is already at this offset (and the virtio header fits in front of it).
const IPIP_RX_OFFSET: usize = wire::IPV4_HEADER_LEN;

/// The socket an item leaves by, its destination and per-message option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    V4,
    V6Ipip,
    V6Ip6,
}

impl Carrier for IpipCarrier {
    const RX_OFFSET: usize = IPIP_RX_OFFSET;
    type TxState = IpipTx;
    type RxState = IpipRx;

    fn tx_state(&self) -> IpipTx {
        IpipTx {
            mmsg: Mmsg::new(TX_BATCH),
            msgs: Vec::with_capacity(TX_BATCH),
        }
    }

    fn rx_state(&self) -> IpipRx {
        IpipRx {
            mmsg: Mmsg::new(RAW_RX_BATCH),
            meta: vec![RecvMeta::default(); RAW_RX_BATCH],
        }
    }

    fn fds(&self) -> Fds<'_> {
        let v4 = self.v4.as_ref();
        let v6 = self.v6.as_ref();
        [
            v4.map(|s| s.ipip.as_fd()),
            v4.and_then(|s| s.sit.as_ref()).map(|s| s.as_fd()),
            v6.map(|s| s.ipip.as_fd()),
            v6.and_then(|s| s.ip6.as_ref()).map(|s| s.as_fd()),
        ]
    }

    fn send(
        &self,
        st: &mut IpipTx,
        pool: &mut [PktBuf],
        items: &[TxItem],
        table: &PeerTable,
        tally: &mut Tally,
    ) {
        let IpipTx { mmsg, msgs } = st;
        let lane = |it: &TxItem| match (table.entries[it.peer].peer.underlay, &it.header) {
            (IpAddr::V4(_), _) => Lane::V4,
            (IpAddr::V6(_), InnerHeader::V4(_)) => Lane::V6Ipip,
            (IpAddr::V6(_), InnerHeader::V6(_)) => Lane::V6Ip6,
        };
        if let Some(v4) = &self.v4 {
            for it in items {
                if let IpAddr::V4(dst) = table.entries[it.peer].peer.underlay {
                    let space = pool[it.buf].space();
                    if let Ok(hdr) = <&mut [u8; HEADROOM]>::try_from(&mut space[..HEADROOM]) {
                        wire::encode_ipv4_outer(hdr, v4.local, dst, &it.header);
                    }
                }
            }
        }
        let pool: &[PktBuf] = pool;
        // IPv4: our outer header in front; IPv6: the inner packet alone.
        let iov: [IoSlice<'_>; TX_BATCH] = std::array::from_fn(|i| match items.get(i) {
            Some(it) if lane(it) == Lane::V4 => {
                IoSlice::new(&pool[it.buf].bytes()[..HEADROOM + it.len])
            }
            Some(it) => IoSlice::new(&pool[it.buf].bytes()[HEADROOM..HEADROOM + it.len]),
            None => IoSlice::new(&[]),
        });
        let sockets = [
            (Lane::V4, self.v4.as_ref().map(|s| &s.ipip)),
            (Lane::V6Ipip, self.v6.as_ref().map(|s| &s.ipip)),
            (Lane::V6Ip6, self.v6.as_ref().and_then(|s| s.ip6.as_ref())),
        ];
        for (which, sock) in sockets {
            msgs.clear();
            for (k, it) in items.iter().enumerate() {
                if lane(it) == which {
                    msgs.push(MsgInfo {
                        start: k,
                        end: k + 1,
                        peer: it.peer,
                        bytes: it.len,
                        packets: 1,
                        inner: it.len as u64,
                    });
                }
            }
            if msgs.is_empty() {
                continue;
            }
            let Some(sock) = sock else {
                // A peer of a family this node has no underlay address of.
                tally.drop(DropReason::SendError, msgs.len() as u64);
                continue;
            };
            let mut batch = mmsg.send_batch();
            for m in msgs.iter() {
                let it = &items[m.start];
                let opt = match which {
                    Lane::V4 => SendOpt::None,
                    Lane::V6Ipip | Lane::V6Ip6 => {
                        SendOpt::TrafficClass(wire::ip6tnl_traffic_class(&it.header))
                    }
                };
                let dst = match table.entries[m.peer].peer.underlay {
                    IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, 0)),
                    IpAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(a, 0, 0, 0)),
                };
                batch.push(dst, &iov[m.start..m.end], opt);
            }
            send_all(&mut batch, sock.as_fd(), msgs, tally);
        }
    }

    fn recv(&self, st: &mut IpipRx, rx: &mut RxBatch<'_>) -> io::Result<()> {
        let v4 = self.v4.as_ref();
        let v6 = self.v6.as_ref();
        let from = |sock: Option<&Socket>, kind, st: &mut IpipRx, rx: &mut RxBatch<'_>| {
            sock.map(|s| self.recv_from(s, kind, st, rx))
        };
        let a = from(v4.map(|s| &s.ipip), RawKind::Ipv4Outer, st, rx);
        let b = from(v4.and_then(|s| s.sit.as_ref()), RawKind::Ipv4Outer, st, rx);
        let c = from(
            v6.map(|s| &s.ipip),
            RawKind::Ipv6Payload(wire::IPPROTO_IPIP),
            st,
            rx,
        );
        let d = from(
            v6.and_then(|s| s.ip6.as_ref()),
            RawKind::Ipv6Payload(wire::IPPROTO_IPV6),
            st,
            rx,
        );
        merge_results([a, b, c, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program of the opcodes [`flow_shard_program`] uses over `pkt`, as
    /// the kernel would (a load past the end returns 0: drop, or socket 0 for reuseport).
    fn run(prog: &[(u16, u8, u8, u32)], pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
        let word = |at: usize| -> Option<u32> {
            pkt.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        loop {
            let (code, jt, jf, k) = prog[pc];
            pc += 1;
            match code {
                c if c == BPF_LDX | BPF_W | BPF_IMM => x = k,
                c if c == BPF_LDX | BPF_B | BPF_MSH => match pkt.get(k as usize) {
                    Some(b) => x = u32::from(b & 0x0f) * 4,
                    None => return 0,
                },
                c if c == BPF_LDX | BPF_W | BPF_MEM => x = mem[k as usize],
                c if c == BPF_LD | BPF_W | BPF_LEN => a = pkt.len() as u32,
                c if c == BPF_LD | BPF_MEM => a = mem[k as usize],
                c if c == BPF_LD | BPF_B | BPF_IND => match pkt.get((x + k) as usize) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                c if c == BPF_LD | BPF_W | BPF_IND => match word((x + k) as usize) {
                    Some(w) => a = w,
                    None => return 0,
                },
                BPF_ST => mem[k as usize] = a,
                c if c == BPF_ALU | BPF_SUB | BPF_X => a = a.wrapping_sub(x),
                c if c == BPF_ALU | BPF_XOR | BPF_X => a ^= x,
                c if c == BPF_ALU | BPF_RSH | BPF_K => a >>= k,
                c if c == BPF_ALU | BPF_MOD | BPF_K => a %= k,
                c if c == BPF_JMP | BPF_JA => pc += k as usize,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += usize::from(if a == k { jt } else { jf })
                }
                c if c == BPF_JMP | BPF_JGE | BPF_K => {
                    pc += usize::from(if a >= k { jt } else { jf })
                }
                c if c == BPF_RET | BPF_K => return k,
                c if c == BPF_RET | BPF_A => return a,
                other => panic!("opcode {other:#x} not modelled"),
            }
        }
    }

    fn packets(n: u8) -> (Vec<u8>, Vec<u8>) {
        let mut v4 = Vec::new();
        wire::build_ipv4(
            Ipv4Addr::new(10, 244, 1, n),
            Ipv4Addr::new(10, 244, 2, 2),
            6,
            64,
            &[0; 20],
            &mut v4,
        );
        let mut v6 = Vec::new();
        wire::build_ipv6(
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, u16::from(n)),
            Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2),
            6,
            64,
            &[0; 20],
            &mut v6,
        );
        (v4, v6)
    }

    #[test]
    fn every_packet_is_kept_by_exactly_one_queue_and_flows_spread() {
        let queues = 3;
        for at in [InnerAt::Start, InnerAt::AfterIpv4Header] {
            let progs: Vec<_> = (0..queues)
                .map(|q| flow_shard_program(at, Verdict::Keep { queue: q }, queues))
                .collect();
            let outer = |inner: &[u8]| -> Vec<u8> {
                match at {
                    InnerAt::Start => inner.to_vec(),
                    InnerAt::AfterIpv4Header => {
                        let mut o = Vec::new();
                        wire::build_ipv4(
                            Ipv4Addr::new(192, 0, 2, 1),
                            Ipv4Addr::new(192, 0, 2, 2),
                            4,
                            64,
                            inner,
                            &mut o,
                        );
                        o
                    }
                }
            };
            let mut seen = [[false; 3]; 2];
            for n in 1..=30 {
                let (v4, v6) = packets(n);
                for (fam, inner) in [v4, v6].iter().enumerate() {
                    let pkt = outer(inner);
                    let keepers: Vec<usize> =
                        (0..queues).filter(|&q| run(&progs[q], &pkt) != 0).collect();
                    assert_eq!(keepers.len(), 1, "{at:?} family {fam} packet {n}");
                    seen[fam][keepers[0]] = true;
                    let index = run(
                        &flow_shard_program(at, Verdict::ReuseportIndex, queues),
                        &pkt,
                    );
                    assert_eq!(
                        index as usize, keepers[0],
                        "reuseport agrees with the filters"
                    );
                }
            }
            assert_eq!(
                seen, [[true; 3]; 2],
                "{at:?}: flows of both families spread"
            );
            // Too short for the inner header (of either family): queue 0 only.
            let (v4, v6) = packets(1);
            for short in [outer(&v4[..19]), outer(&v6[..39]), outer(&[])] {
                let keepers: Vec<usize> = (0..queues)
                    .filter(|&q| run(&progs[q], &short) != 0)
                    .collect();
                assert_eq!(keepers, vec![0], "{at:?} short packet");
            }
        }
    }

    #[test]
    fn both_directions_of_a_flow_share_a_queue() {
        let prog = |q| flow_shard_program(InnerAt::Start, Verdict::Keep { queue: q }, 4);
        let (v4, v6) = packets(7);
        for pkt in [v4, v6] {
            let mut back = pkt.clone();
            let (src, dst, n) = if pkt[0] >> 4 == 4 {
                (12, 16, 4)
            } else {
                (8, 24, 16)
            };
            back[src..src + n].copy_from_slice(&pkt[dst..dst + n]);
            back[dst..dst + n].copy_from_slice(&pkt[src..src + n]);
            let q = |p: &[u8]| (0..4).find(|&q| run(&prog(q), p) != 0);
            assert_eq!(q(&pkt), q(&back));
        }
    }
}
