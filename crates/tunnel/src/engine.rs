//! The worker loop of a queue: TUN → underlay and underlay → TUN in one thread.
//!
//! Both drain their input without blocking until it runs dry (or a batch is full), process
//! the batch, and only then poll, so under load a worker makes about one syscall per batch
//! per direction and never sleeps; idle, it sleeps in poll on its descriptor and the stop
//! descriptor. All buffers are allocated when the worker starts.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tun_rs::{
    GROTable, SyncDevice, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN, VirtioNetHdr, gso_split,
};

use crate::Shared;
use crate::buf::{BUF_CAPACITY, PktBuf};
use crate::carrier::{Carrier, Fds, HEADROOM, RxBatch, TX_BATCH, TxItem};
use crate::peers::{PeerTable, Tally};
use crate::wire::{self, DropReason, InnerHeader};

/// Stop reading the TUN device when fewer buffers than this are free: a 64 KiB TSO packet
/// of 1400-byte segments needs about 47.
const TX_LOW_WATER: usize = 64;
/// Reads per batch at most, so a busy device cannot delay sending indefinitely.
const TX_MAX_READS: usize = 16;
/// Buffers waiting for one TUN write batch.
const RX_OUT: usize = 128;
/// virtio_net_hdr flag: the checksum from csum_start on is still to be computed.
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// The worker of one queue: both directions in one thread. A round trip then wakes at most
/// two sleeping threads instead of four (the reply usually comes back while the worker that
/// sent the request is still spinning), and on a small machine fewer threads compete with the
/// pods for the CPUs.
pub(crate) fn run<C: Carrier>(tun: &SyncDevice, carrier: &C, shared: &Shared, offload: bool) {
    let mut tx = TxWorker::new(tun, carrier, shared, offload);
    let mut rx = RxWorker::new(tun, carrier, shared, offload);
    let mut last_active = Instant::now();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let sent = tx.step();
        let received = rx.step();
        if sent || received {
            last_active = Instant::now();
        } else if idle(tun.as_fd(), carrier.fds(), shared, last_active) {
            return;
        }
    }
}

/// How long a worker keeps polling its descriptor without sleeping after it last moved a
/// packet. Waking a sleeping thread costs tens of microseconds on a VM (an IPI to an idle
/// vCPU), four times per round trip; request/response traffic keeps the workers in this
/// window and never pays it. Spinning yields the CPU on every turn, so runnable threads (the
/// pods' own) are not starved.
const SPIN: Duration = Duration::from_micros(SPIN_US);
const SPIN_US: u64 = 100;

/// Called when the worker's input ran dry: spins (yielding) while it was active within
/// [`SPIN`], then sleeps until the TUN device or the socket is readable or the tunnel stops. True when it stopped.
fn idle(tun: BorrowedFd<'_>, socks: Fds<'_>, shared: &Shared, last_active: Instant) -> bool {
    if shared.stop.load(Ordering::Relaxed) {
        return true;
    }
    if last_active.elapsed() < SPIN {
        std::thread::yield_now();
        return false;
    }
    let stop = shared.stop_fd.as_fd();
    let mut fds = [
        PollFd::new(tun, PollFlags::POLLIN),
        PollFd::new(stop, PollFlags::POLLIN),
        PollFd::new(stop, PollFlags::POLLIN),
        PollFd::new(stop, PollFlags::POLLIN),
        PollFd::new(stop, PollFlags::POLLIN),
        PollFd::new(stop, PollFlags::POLLIN),
    ];
    let mut n = 2;
    for sock in socks.into_iter().flatten() {
        fds[n] = PollFd::new(sock, PollFlags::POLLIN);
        n += 1;
    }
    match poll(&mut fds[..n], PollTimeout::from(500u16)) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => {}
        Err(e) => {
            tracing::warn!(error = %e, "poll failed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    shared.stop.load(Ordering::Relaxed)
}

/// What one TUN read produced.
enum Read {
    /// This many packets were added to the pool.
    Packets(usize),
    /// The packet read needs more free buffers than there are: send the batch, then split
    /// again (the packet stays in the read buffer).
    NeedRoom,
    /// Nothing to read.
    Empty,
}

struct TxWorker<'a, C: Carrier> {
    tun: &'a SyncDevice,
    carrier: &'a C,
    shared: &'a Shared,
    offload: bool,
    /// Raw read buffer: virtio header + up to 64 KiB packet.
    raw: Vec<u8>,
    raw_len: usize,
    pool: Vec<PktBuf>,
    sizes: Vec<usize>,
    items: Vec<TxItem>,
    state: C::TxState,
    tally: Tally,
}

impl<'a, C: Carrier> TxWorker<'a, C> {
    fn new(tun: &'a SyncDevice, carrier: &'a C, shared: &'a Shared, offload: bool) -> Self {
        TxWorker {
            tun,
            carrier,
            shared,
            offload,
            raw: vec![0u8; VIRTIO_NET_HDR_LEN + BUF_CAPACITY],
            raw_len: 0,
            pool: PktBuf::pool(TX_BATCH, HEADROOM + shared.mtu.max(1500) + 64),
            sizes: vec![0; TX_BATCH],
            items: Vec::with_capacity(TX_BATCH),
            state: carrier.tx_state(),
            tally: Tally::new(),
        }
    }

    /// Drains the TUN device into one batch (or until the batch is full) and sends it. True
    /// when it moved anything.
    fn step(&mut self) -> bool {
        let mut n = 0;
        let mut reads = 0;
        let mut pending = false;
        let mut moved = false;
        loop {
            let r = if pending {
                self.split(n)
            } else {
                match self.read(n) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "TUN read failed");
                        std::thread::sleep(Duration::from_millis(10));
                        Read::Empty
                    }
                }
            };
            match r {
                Read::Packets(k) => {
                    n += k;
                    pending = false;
                    moved = true;
                }
                Read::NeedRoom if n > 0 => {
                    self.send(n);
                    n = 0;
                    pending = true;
                    continue;
                }
                Read::NeedRoom => {
                    // More segments than the whole pool: cannot happen with 64 KiB packets
                    // and segments of 256 bytes or more.
                    self.drop_one();
                    pending = false;
                }
                Read::Empty => break,
            }
            reads += 1;
            if TX_BATCH - n < TX_LOW_WATER || reads >= TX_MAX_READS {
                break;
            }
        }
        if n > 0 {
            self.send(n);
        }
        moved
    }

    fn drop_one(&mut self) {
        let table = self.shared.peers.load();
        self.tally.begin(&table);
        self.tally.drop(DropReason::Malformed, 1);
        self.tally.publish(&table, &self.shared.drops);
    }

    /// Reads one packet (or TSO super-packet) into the pool from index `n` on.
    fn read(&mut self, n: usize) -> io::Result<Read> {
        if !self.offload {
            let b = &mut self.pool[n];
            b.set_len(b.capacity());
            return match self.tun.recv(&mut b.space()[HEADROOM..]) {
                Ok(len) => {
                    b.set_len(HEADROOM + len);
                    Ok(Read::Packets(1))
                }
                Err(e) if would_block(&e) => Ok(Read::Empty),
                Err(e) => Err(e),
            };
        }
        match self.tun.recv(&mut self.raw) {
            Ok(len) => {
                self.raw_len = len;
                Ok(self.split(n))
            }
            Err(e) if would_block(&e) => Ok(Read::Empty),
            Err(e) => Err(e),
        }
    }

    /// Splits the packet in `raw` into MTU-sized packets in the pool from index `n` on, doing
    /// the checksum and segmentation work the kernel left to us (virtio header semantics).
    fn split(&mut self, n: usize) -> Read {
        let len = self.raw_len;
        if len <= VIRTIO_NET_HDR_LEN {
            return self.malformed();
        }
        let Ok(mut hdr) = VirtioNetHdr::decode(&self.raw[..VIRTIO_NET_HDR_LEN]) else {
            return self.malformed();
        };
        let pkt = &mut self.raw[VIRTIO_NET_HDR_LEN..len];
        if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE {
            if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                let start = usize::from(hdr.csum_start);
                let at = start + usize::from(hdr.csum_offset);
                if at + 2 > pkt.len() {
                    return self.malformed();
                }
                // The field holds the pseudo-header sum; summing over it finishes the job.
                let sum = wire::checksum(&pkt[start..]);
                pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            }
            let b = &mut self.pool[n];
            if HEADROOM + pkt.len() > b.capacity() {
                return self.malformed();
            }
            b.space()[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
            b.set_len(HEADROOM + pkt.len());
            return Read::Packets(1);
        }
        // TCP (TSO) super-packets of their family, and UDP (USO) ones of either.
        let base_type = hdr.gso_type & !0x80;
        let type_ok = matches!(
            (pkt.first().map(|b| b >> 4), base_type),
            (Some(4), VIRTIO_NET_HDR_GSO_TCPV4)
                | (Some(6), VIRTIO_NET_HDR_GSO_TCPV6)
                | (Some(4 | 6), VIRTIO_NET_HDR_GSO_UDP_L4)
        );
        if !type_ok || hdr.gso_size == 0 {
            return self.malformed();
        }
        let start = usize::from(hdr.csum_start);
        // hdr_len from the kernel can cover the whole first segment on the forwarding path;
        // recompute it from the transport header (as wireguard-go does).
        let l4_len = if base_type == VIRTIO_NET_HDR_GSO_UDP_L4 {
            8
        } else {
            match pkt.get(start + 12) {
                Some(b) => usize::from(b >> 4) * 4,
                None => return self.malformed(),
            }
        };
        if !(8..=60).contains(&l4_len) || start + l4_len > pkt.len() {
            return self.malformed();
        }
        hdr.hdr_len = (start + l4_len) as u16;
        let payload = pkt.len() - (start + l4_len);
        let segments = payload.div_ceil(usize::from(hdr.gso_size)).max(1);
        if segments > TX_BATCH - n {
            return Read::NeedRoom;
        }
        for b in &mut self.pool[n..] {
            b.set_len(b.capacity());
        }
        let is_v6 = pkt[0] >> 4 == 6;
        match gso_split(
            pkt,
            hdr,
            &mut self.pool[n..],
            &mut self.sizes[n..],
            HEADROOM,
            is_v6,
        ) {
            Ok(k) => {
                for i in n..n + k {
                    let s = self.sizes[i];
                    self.pool[i].set_len(HEADROOM + s);
                }
                Read::Packets(k)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot segment a TUN super-packet");
                self.malformed()
            }
        }
    }

    fn malformed(&mut self) -> Read {
        self.drop_one();
        Read::Packets(0)
    }

    /// Classifies pool[..n] by peer and hands the batch to the carrier.
    fn send(&mut self, n: usize) {
        let table = self.shared.peers.load();
        self.tally.begin(&table);
        self.items.clear();
        let mut last: Option<(IpAddr, Option<usize>)> = None;
        for i in 0..n {
            let pkt = &self.pool[i].bytes()[HEADROOM..];
            let header = match wire::parse_inner(pkt) {
                Ok(InnerHeader::V6(h))
                    if !routable6(&h.dst) || self.shared.local_subnet6.is_none() =>
                {
                    // The kernel's own IPv6 chatter (link-local and multicast: neighbour and
                    // router discovery, MLD), or anything IPv6 on an IPv4-only tunnel (a router
                    // solicitation can slip out while the device comes up), is not a pod's
                    // packet for a peer: discard it without counting.
                    continue;
                }
                Ok(h) => h,
                Err(_) => {
                    self.tally.drop(DropReason::Malformed, 1);
                    continue;
                }
            };
            let dst = header.dst();
            let peer = match last {
                Some((d, p)) if d == dst => p,
                _ => {
                    let p = lookup(&table, dst);
                    last = Some((dst, p));
                    p
                }
            };
            match peer {
                Some(peer) => self.items.push(TxItem {
                    buf: i,
                    len: header.total_len(),
                    peer,
                    header,
                }),
                None => self.tally.drop(DropReason::NoPeerForDestination, 1),
            }
        }
        self.carrier.send(
            &mut self.state,
            &mut self.pool,
            &self.items,
            &table,
            &mut self.tally,
        );
        self.tally.publish(&table, &self.shared.drops);
    }
}

fn lookup(table: &PeerTable, dst: IpAddr) -> Option<usize> {
    match dst {
        IpAddr::V4(d) => table.by_destination(d),
        IpAddr::V6(d) => table.by_destination6(d),
    }
}

/// Whether an IPv6 destination can be a pod's on another node: not multicast, link-local or
/// unspecified.
fn routable6(dst: &std::net::Ipv6Addr) -> bool {
    !(dst.is_multicast() || dst.is_unspecified() || dst.is_unicast_link_local())
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

struct RxWorker<'a, C: Carrier> {
    offload: bool,
    tun: &'a SyncDevice,
    carrier: &'a C,
    shared: &'a Shared,
    out: Vec<PktBuf>,
    gro: GROTable,
    state: C::RxState,
    tally: Tally,
}

impl<'a, C: Carrier> RxWorker<'a, C> {
    fn new(tun: &'a SyncDevice, carrier: &'a C, shared: &'a Shared, offload: bool) -> Self {
        RxWorker {
            offload,
            tun,
            carrier,
            shared,
            out: PktBuf::pool(RX_OUT, BUF_CAPACITY),
            gro: GROTable::new(),
            state: carrier.rx_state(),
            tally: Tally::new(),
        }
    }

    /// Receives one batch from the underlay and writes what passes to the TUN device. True
    /// when anything arrived.
    fn step(&mut self) -> bool {
        let table = self.shared.peers.load();
        self.tally.begin(&table);
        let mut rx = RxBatch {
            out: &mut self.out,
            n: 0,
            offset: C::RX_OFFSET,
            table: &table,
            local: self.shared.local_subnet,
            local6: self.shared.local_subnet6,
            tally: &mut self.tally,
            tun: self.tun,
            gro: &mut self.gro,
            mtu: self.shared.mtu,
            offload: self.offload,
        };
        let r = self.carrier.recv(&mut self.state, &mut rx);
        rx.flush();
        self.tally.publish(&table, &self.shared.drops);
        match r {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                tracing::warn!(error = %e, "underlay receive failed");
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        }
    }
}
