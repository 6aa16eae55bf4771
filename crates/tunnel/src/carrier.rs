//! The encapsulations, behind one small trait so that another transform (WireGuard) can be
//! added as one more implementation.
//!
//! A [`Carrier`] owns the underlay socket of one queue. On send it gets a batch of inner
//! packets (each with [`HEADROOM`] free bytes in front for an outer header it writes itself)
//! and the peer each goes to; on receive it fills an [`RxBatch`] with validated inner packets,
//! which the engine writes to the TUN device.
//!
//! - [`UdpCarrier`]: Flannel framing over a UDP socket. Consecutive packets to the same peer
//!   with equal size (TSO segments) leave in one `sendmmsg` message with UDP GSO; received
//!   datagrams arrive coalesced by UDP GRO and are split per segment. With several queues the
//!   sockets share the port (SO_REUSEPORT) and a reuseport BPF program spreads inner flows.
//! - [`IpipCarrier`]: a raw `IPPROTO_IPIP` socket with `IP_HDRINCL`. We build the outer header
//!   ourselves because Linux's ipip defaults are per packet (TTL inherited from the inner
//!   packet, ECN copied), which a kernel-built header cannot do. Every raw socket receives a
//!   copy of every protocol-4 packet, so with several queues each socket gets a BPF filter that
//!   keeps only its share of inner flows. Inner IPv6 leaves through the same socket with
//!   protocol 41 in our header (6in4, as `sit`); it arrives on one raw protocol-41 socket,
//!   opened by queue 0 only (so no filter is needed: IPv6 is received by one worker).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN, VirtioNetHdr};

use crate::TunnelError;
use crate::buf::PktBuf;
use crate::peers::{PeerTable, Tally};
use crate::sys::{Mmsg, RecvMeta, SendBatch};
use crate::wire::{self, DropReason, InnerHeader, Ipv4Header};

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
    /// The socket, and a second one if the carrier has two, for poll.
    fn fds(&self) -> (BorrowedFd<'_>, Option<BorrowedFd<'_>>);
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
    pub local: Ipv4Net,
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
            &p.subnet,
            p.subnet6.as_ref(),
            &self.local,
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

    /// Writes `out[idx]`, an IPv4 TCP packet larger than the MTU at `offset`, as one TSO
    /// super-packet: a virtio header asking the kernel to cut it into MTU-sized segments and
    /// to finish the TCP checksum (seeded here with the pseudo-header sum).
    pub(crate) fn write_tcp_super_packet(&mut self, idx: usize, ip: &Ipv4Header) {
        let off = self.offset;
        let space = self.out[idx].space();
        let pkt = &mut space[off..off + ip.total_len];
        let ihl = ip.header_len;
        let Some(thl) = pkt.get(ihl + 12).map(|b| usize::from(b >> 4) * 4) else {
            self.tally.drop(DropReason::Malformed, 1);
            return;
        };
        if thl < 20 || ihl + thl >= pkt.len() || self.mtu <= ihl + thl {
            self.tally.drop(DropReason::Malformed, 1);
            return;
        }
        let tcp_len = (pkt.len() - ihl) as u16;
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&ip.src.octets());
        pseudo[4..8].copy_from_slice(&ip.dst.octets());
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&tcp_len.to_be_bytes());
        let seed = !wire::checksum(&pseudo);
        pkt[ihl + 16..ihl + 18].copy_from_slice(&seed.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: 1, // NEEDS_CSUM
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: (ihl + thl) as u16,
            gso_size: (self.mtu - ihl - thl) as u16,
            csum_start: ihl as u16,
            csum_offset: 16,
        };
        let end = off + ip.total_len;
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
const BPF_MISC: u16 = 0x07;
const BPF_W: u16 = 0x00;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MEM: u16 = 0x60;
const BPF_LEN: u16 = 0x80;
const BPF_MSH: u16 = 0xa0;
const BPF_K: u16 = 0x00;
const BPF_X: u16 = 0x08;
const BPF_XOR: u16 = 0xa0;
const BPF_MOD: u16 = 0x90;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_A: u16 = 0x10;
const BPF_TAX: u16 = 0x00;

/// Flannel-framed UDP on one socket of the port's SO_REUSEPORT group.
pub(crate) struct UdpCarrier {
    pub(crate) sock: Socket,
    gso: AtomicBool,
}

impl UdpCarrier {
    pub(crate) fn open(local: Ipv4Addr, port: u16) -> Result<UdpCarrier, TunnelError> {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io_err("open UDP socket"))?;
        sock.set_reuse_port(true)
            .map_err(io_err("set SO_REUSEPORT"))?;
        sock.bind(&SocketAddrV4::new(local, port).into())
            .map_err(io_err(format!("bind UDP {local}:{port}")))?;
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

/// Spreads received datagrams over the group's sockets by inner source ^ destination, so one
/// peer's flows are not all on one queue (the outer 4-tuple is the same for all of them).
pub(crate) fn shard_udp(first: &UdpCarrier, queues: usize) -> Result<(), TunnelError> {
    use nix::sys::socket::{setsockopt, sockopt};
    // The program sees the datagram from the UDP payload on: the inner IPv4 header.
    let mut prog = [
        libc::sock_filter {
            code: BPF_LD | BPF_W | BPF_ABS,
            jt: 0,
            jf: 0,
            k: 12,
        },
        libc::sock_filter {
            code: BPF_MISC | BPF_TAX,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_LD | BPF_W | BPF_ABS,
            jt: 0,
            jf: 0,
            k: 16,
        },
        libc::sock_filter {
            code: BPF_ALU | BPF_XOR | BPF_X,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_ALU | BPF_MOD | BPF_K,
            jt: 0,
            jf: 0,
            k: queues as u32,
        },
        libc::sock_filter {
            code: BPF_RET | BPF_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    setsockopt(&first.sock, sockopt::AttachReusePortCbpf, &fprog)
        .map_err(|e| io_err("attach reuseport BPF")(e.into()))
}

pub(crate) struct UdpTx {
    mmsg: Mmsg,
    msgs: Vec<MsgInfo>,
    dgrams: Vec<Datagram>,
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
    pub(crate) fn send_datagrams(
        &self,
        mmsg: &mut Mmsg,
        msgs: &mut Vec<MsgInfo>,
        dgrams: &[Datagram],
        iov: &[IoSlice<'_>],
        dst: impl Fn(usize) -> SocketAddrV4,
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
            batch.push(dst(m.peer), &iov[m.start..m.end], seg);
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
}

impl Carrier for UdpCarrier {
    const RX_OFFSET: usize = VIRTIO_NET_HDR_LEN;
    type TxState = UdpTx;
    type RxState = UdpRx;

    fn tx_state(&self) -> UdpTx {
        UdpTx {
            mmsg: Mmsg::new(TX_BATCH),
            msgs: Vec::with_capacity(TX_BATCH),
            dgrams: Vec::with_capacity(TX_BATCH),
        }
    }

    fn rx_state(&self) -> UdpRx {
        UdpRx::new()
    }

    fn fds(&self) -> (BorrowedFd<'_>, Option<BorrowedFd<'_>>) {
        (self.sock.as_fd(), None)
    }

    fn send(
        &self,
        st: &mut UdpTx,
        pool: &mut [PktBuf],
        items: &[TxItem],
        table: &PeerTable,
        tally: &mut Tally,
    ) {
        let UdpTx { mmsg, msgs, dgrams } = st;
        dgrams.clear();
        dgrams.extend(items.iter().map(|it| Datagram {
            peer: it.peer,
            len: it.len,
            inner: it.len,
        }));
        let pool: &[PktBuf] = pool;
        let iov: [IoSlice<'_>; TX_BATCH] = std::array::from_fn(|i| match items.get(i) {
            Some(it) => IoSlice::new(&pool[it.buf].bytes()[HEADROOM..HEADROOM + it.len]),
            None => IoSlice::new(&[]),
        });
        self.send_datagrams(mmsg, msgs, dgrams, &iov, |p| table.entries[p].addr, tally);
    }

    fn recv(&self, st: &mut UdpRx, rx: &mut RxBatch<'_>) -> io::Result<()> {
        let r = self.recv_batch(st)?;
        for (m, buf) in st.meta.iter().zip(st.bufs.iter()).take(r) {
            let seg = usize::from(m.gro_segment.unwrap_or(0));
            let seg = if seg == 0 { m.len.max(1) } else { seg };
            let count = m.len.div_ceil(seg).max(1) as u64;
            if m.truncated {
                rx.tally.drop(DropReason::Malformed, count);
                continue;
            }
            let Some(peer) = rx.table.by_underlay(m.src) else {
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

/// IPv4-in-IPv4 (and IPv6-in-IPv4) over raw sockets.
pub(crate) struct IpipCarrier {
    sock: Socket,
    /// Receives protocol 41 (inner IPv6); only on queue 0 of a dual-stack tunnel.
    sock6: Option<Socket>,
    local: Ipv4Addr,
}

impl IpipCarrier {
    /// Opens queue `queue` of `queues`; with `ipv6`, queue 0 also receives protocol 41.
    pub(crate) fn open(
        local: Ipv4Addr,
        queue: usize,
        queues: usize,
        ipv6: bool,
    ) -> Result<IpipCarrier, TunnelError> {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(wire::IPPROTO_IPIP))),
        )
        .map_err(io_err("open raw IPIP socket"))?;
        sock.set_header_included_v4(true)
            .map_err(io_err("set IP_HDRINCL"))?;
        // Bound to our underlay address, the socket only sees packets addressed to it.
        sock.bind(&SocketAddrV4::new(local, 0).into())
            .map_err(io_err(format!("bind raw IPIP socket to {local}")))?;
        size_buffers(&sock);
        let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
        if queues > 1 {
            sock.attach_filter(&ipip_shard_filter(queue, queues))
                .map_err(io_err("attach IPIP shard filter"))?;
        }
        let sock6 = if ipv6 && queue == 0 {
            let s = Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(i32::from(wire::IPPROTO_IPV6))),
            )
            .map_err(io_err("open raw protocol-41 socket"))?;
            s.bind(&SocketAddrV4::new(local, 0).into())
                .map_err(io_err(format!("bind raw protocol-41 socket to {local}")))?;
            size_buffers(&s);
            Some(s)
        } else {
            None
        };
        Ok(IpipCarrier { sock, sock6, local })
    }

    /// Receives one batch from `sock` (protocol 4 or 41: the outer header says which) into
    /// `rx`, validating each packet.
    fn recv_from(&self, sock: &Socket, st: &mut IpipRx, rx: &mut RxBatch<'_>) -> io::Result<()> {
        if rx.out.len() - rx.n < RAW_RX_BATCH {
            rx.flush();
        }
        let start = rx.n;
        let want = (rx.out.len() - start).min(RAW_RX_BATCH);
        let r = {
            let mut it = rx.out[start..start + want].iter_mut();
            let mut iovs: [IoSliceMut<'_>; RAW_RX_BATCH] = std::array::from_fn(|_| {
                IoSliceMut::new(it.next().map_or(&mut [][..], |b| b.space()))
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
            let Some(peer) = rx.table.by_underlay(m.src) else {
                rx.tally.drop(DropReason::UnknownPeer, 1);
                continue;
            };
            let inner = match wire::decode_ipip_any(&rx.out[idx].space()[..m.len]) {
                Ok((outer_src, inner)) if outer_src == m.src => inner,
                _ => {
                    rx.tally.drop(DropReason::Malformed, 1);
                    continue;
                }
            };
            if !rx.admit(peer, &inner.header) {
                continue;
            }
            let (off, len) = (inner.offset, inner.len);
            let buf = &mut rx.out[idx];
            if off != IPIP_RX_OFFSET {
                buf.space().copy_within(off..off + len, IPIP_RX_OFFSET);
            }
            buf.set_len(IPIP_RX_OFFSET + len);
            if let InnerHeader::V4(h) = &inner.header
                && len > rx.mtu
                && h.protocol == 6
                && rx.offload
            {
                // The underlay NIC coalesced TCP segments (GRO runs for IPIP even without
                // the ipip module): hand the super-packet to the kernel to segment again.
                rx.n = w;
                rx.flush();
                w = 0;
                rx.write_tcp_super_packet(idx, h);
                continue;
            }
            rx.out.swap(w, idx);
            w += 1;
        }
        rx.n = w;
        Ok(())
    }
}

/// Keeps the packets whose inner (source ^ destination) % `queues` is `queue`. Packets too
/// short to hold two IPv4 headers all go to queue 0, which counts them as malformed.
/// Instructions are (code, jump if true, jump if false, k).
fn ipip_shard_program(queue: usize, queues: usize) -> [(u16, u8, u8, u32); 13] {
    let accept = u32::MAX;
    let short = if queue == 0 { accept } else { 0 };
    [
        // 0: A = packet length; too short for outer + inner header -> 12
        (BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),
        (BPF_JMP | BPF_JGE | BPF_K, 0, 10, 40),
        // 2: X = outer header length
        (BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0),
        // 3: M[0] = inner source
        (BPF_LD | BPF_W | BPF_IND, 0, 0, 12),
        (BPF_ST, 0, 0, 0),
        // 5: A = inner destination ^ M[0]
        (BPF_LD | BPF_W | BPF_IND, 0, 0, 16),
        (BPF_LDX | BPF_W | BPF_MEM, 0, 0, 0),
        (BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        // 8: A %= queues; ours?
        (BPF_ALU | BPF_MOD | BPF_K, 0, 0, queues as u32),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 1, queue as u32),
        (BPF_RET | BPF_K, 0, 0, accept),
        (BPF_RET | BPF_K, 0, 0, 0),
        // 12: short packet
        (BPF_RET | BPF_K, 0, 0, short),
    ]
}

fn ipip_shard_filter(queue: usize, queues: usize) -> Vec<SockFilter> {
    ipip_shard_program(queue, queues)
        .iter()
        .map(|&(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
        .collect()
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

    fn fds(&self) -> (BorrowedFd<'_>, Option<BorrowedFd<'_>>) {
        (self.sock.as_fd(), self.sock6.as_ref().map(|s| s.as_fd()))
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
        msgs.clear();
        for (k, it) in items.iter().enumerate() {
            let dst = table.entries[it.peer].peer.underlay;
            let space = pool[it.buf].space();
            if let Ok(hdr) = <&mut [u8; HEADROOM]>::try_from(&mut space[..HEADROOM]) {
                wire::encode_ipv4_outer(hdr, self.local, dst, &it.header);
            }
            msgs.push(MsgInfo {
                start: k,
                end: k + 1,
                peer: it.peer,
                bytes: it.len,
                packets: 1,
                inner: it.len as u64,
            });
        }
        let pool: &[PktBuf] = pool;
        let iov: [IoSlice<'_>; TX_BATCH] = std::array::from_fn(|i| match items.get(i) {
            Some(it) => IoSlice::new(&pool[it.buf].bytes()[..HEADROOM + it.len]),
            None => IoSlice::new(&[]),
        });
        let mut batch = mmsg.send_batch();
        for m in msgs.iter() {
            let dst = SocketAddrV4::new(table.entries[m.peer].peer.underlay, 0);
            batch.push(dst, &iov[m.start..m.end], 0);
        }
        send_all(&mut batch, self.sock.as_fd(), msgs, tally);
    }

    fn recv(&self, st: &mut IpipRx, rx: &mut RxBatch<'_>) -> io::Result<()> {
        let v4 = self.recv_from(&self.sock, st, rx);
        let Some(sock6) = &self.sock6 else {
            return v4;
        };
        match (v4, self.recv_from(sock6, st, rx)) {
            (Err(e), Err(e6)) if e.kind() == io::ErrorKind::WouldBlock => Err(e6),
            (Err(e), _) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            (_, Err(e6)) if e6.kind() != io::ErrorKind::WouldBlock => Err(e6),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_filter_jumps_land_on_returns() {
        for q in 0..3 {
            let p = ipip_shard_program(q, 3);
            let is_ret = |i: usize| p[i].0 == BPF_RET | BPF_K;
            for (i, &(code, jt, jf, _)) in p.iter().enumerate() {
                if code & 0x07 == BPF_JMP {
                    assert!(i + 1 + usize::from(jt) < p.len() && i + 1 + usize::from(jf) < p.len());
                }
            }
            assert!(is_ret(1 + 1 + usize::from(p[1].2)));
            assert!(is_ret(10 + usize::from(p[9].1)) && is_ret(10 + usize::from(p[9].2)));
            assert_eq!(p[12].3 != 0, q == 0);
        }
    }
}
