//! The WireGuard carrier: per queue, one UDP socket of the port's SO_REUSEPORT group for each
//! underlay family the node has (opened and batched exactly like the udp carrier's, GSO and
//! GRO where the kernel allows, for IPv6 as for IPv4), with each peer's `Tunn` encrypting on
//! the way out and [`super::ingress`] deciding on the way in.
//!
//! A send batch goes out by the family of each peer's endpoint, read once per batch: a peer
//! that roams mid-batch keeps its datagrams on one socket, so no address ever reaches a
//! socket of the other family.
//!
//! The udp carrier's reuseport BPF program is not attached: it hashes inner addresses, which
//! WireGuard encrypts. The kernel's default 4-tuple hash keeps each peer's datagrams on one
//! socket, so they stay in order.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use boringtun::noise::TunnResult;

use super::ingress::{self, Sink};
use super::state::{CONTROL_BUF, WgShared};
use crate::buf::PktBuf;
use crate::carrier::{
    Carrier, Datagram, Fds, HEADROOM, MsgInfo, RxBatch, TX_BATCH, TxItem, UdpCarrier, UdpRx,
    merge_results,
};
use crate::peers::{PeerTable, Tally};
use crate::sys::Mmsg;
use crate::wire::{self, DropReason};

/// WireGuard's data message header (type, receiver index, counter) plus the AEAD tag.
const DATA_OVERHEAD: usize = 32;
/// A handshake initiation, the largest message boringtun may write instead of data.
const HANDSHAKE_INIT_LEN: usize = 148;
/// The first byte of a data message.
const MSG_DATA: u8 = 4;

pub(crate) struct WgCarrier {
    /// The queue's socket of each underlay family the node has (at least one).
    v4: Option<UdpCarrier>,
    v6: Option<UdpCarrier>,
    wg: Arc<WgShared>,
    /// Largest inner packet a send batch holds (the TX pool's buffer size).
    max_inner: usize,
    /// The device MTU: padding never takes a packet beyond it.
    mtu: usize,
}

impl WgCarrier {
    pub(crate) fn new(
        (v4, v6): (Option<UdpCarrier>, Option<UdpCarrier>),
        wg: Arc<WgShared>,
        mtu: usize,
    ) -> WgCarrier {
        WgCarrier {
            v4,
            v6,
            wg,
            max_inner: mtu.max(1500) + 64,
            mtu,
        }
    }

    fn slot_len(&self) -> usize {
        (self.max_inner + DATA_OVERHEAD).max(HANDSHAKE_INIT_LEN)
    }

    /// The socket that sends to `to`, if the node has an underlay address of its family.
    fn socket_for(&self, to: &SocketAddr) -> Option<&UdpCarrier> {
        match to {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }
}

/// The plaintext length after the whitepaper's zero padding: up to a multiple of 16 bytes,
/// never beyond the device MTU (as Linux pads), so the wire shows sizes only in 16-byte steps.
/// The receiver drops the padding by the inner IPv4 or IPv6 header's length.
fn padded_len(len: usize, mtu: usize) -> usize {
    len.next_multiple_of(16).min(mtu.max(len))
}

pub(crate) struct WgTx {
    mmsg: Mmsg,
    msgs: Vec<MsgInfo>,
    dgrams: Vec<Datagram>,
    /// `TX_BATCH` slots of `slot_len` bytes: the encrypted datagrams of a batch.
    out: Vec<u8>,
    /// Each peer of the batch with its endpoint, read once (at its first run).
    targets: Vec<(usize, SocketAddr)>,
    /// The datagrams (indexes into `dgrams`) of one underlay family, and their entries.
    picked: Vec<usize>,
    family: Vec<Datagram>,
}

pub(crate) struct WgRx {
    udp: UdpRx,
    /// Handshake replies, cookies and flushed packets.
    scratch: Vec<u8>,
}

impl Carrier for WgCarrier {
    const RX_OFFSET: usize = tun_rs::VIRTIO_NET_HDR_LEN;
    type TxState = WgTx;
    type RxState = WgRx;

    fn tx_state(&self) -> WgTx {
        WgTx {
            mmsg: Mmsg::new(TX_BATCH),
            msgs: Vec::with_capacity(TX_BATCH),
            dgrams: Vec::with_capacity(TX_BATCH),
            out: vec![0u8; TX_BATCH * self.slot_len()],
            targets: Vec::with_capacity(TX_BATCH),
            picked: Vec::with_capacity(TX_BATCH),
            family: Vec::with_capacity(TX_BATCH),
        }
    }

    fn rx_state(&self) -> WgRx {
        WgRx {
            udp: UdpRx::new(),
            scratch: vec![0u8; CONTROL_BUF],
        }
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
        st: &mut WgTx,
        pool: &mut [PktBuf],
        items: &[TxItem],
        table: &PeerTable,
        tally: &mut Tally,
    ) {
        let WgTx {
            mmsg,
            msgs,
            dgrams,
            out,
            targets,
            picked,
            family,
        } = st;
        let slot_len = self.slot_len();
        dgrams.clear();
        targets.clear();
        let mut slots = out.chunks_exact_mut(slot_len);
        let mut start = 0;
        while start < items.len() {
            let peer = items[start].peer;
            let end = start
                + items[start..]
                    .iter()
                    .take_while(|it| it.peer == peer)
                    .count();
            let run = &items[start..end];
            start = end;
            let Some(wg) = table.entries[peer].wg.as_ref() else {
                tally.drop(DropReason::UnknownKey, run.len() as u64);
                continue;
            };
            let mut tunn = wg.lock();
            let Some(tunn) = tunn.as_mut() else {
                tally.drop(DropReason::UnknownKey, run.len() as u64);
                continue;
            };
            if !targets.iter().any(|(p, _)| *p == peer) {
                targets.push((peer, wg.endpoint()));
            }
            for it in run {
                let Some(slot) = slots.next() else { break };
                if it.len > self.max_inner {
                    tally.drop(DropReason::Malformed, 1);
                    continue;
                }
                let padded = padded_len(it.len, self.mtu);
                let Some(inner) = pool[it.buf].space().get_mut(HEADROOM..HEADROOM + padded) else {
                    tally.drop(DropReason::Malformed, 1);
                    continue;
                };
                inner[it.len..].fill(0);
                match tunn.encapsulate(inner, slot) {
                    TunnResult::WriteToNetwork(msg) => {
                        let data = msg.first() == Some(&MSG_DATA);
                        dgrams.push(Datagram {
                            peer,
                            len: msg.len(),
                            inner: if data { it.len } else { 0 },
                        });
                    }
                    // Queued until the handshake in progress completes.
                    TunnResult::Done => {}
                    TunnResult::Err(e) => tally.drop(ingress::reason(&e), 1),
                    TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
                }
            }
        }
        let target = |p: usize| {
            targets
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, to)| *to)
                .expect("every peer of the batch has its endpoint")
        };
        let out: &[u8] = out;
        for (v6, sock) in [(false, &self.v4), (true, &self.v6)] {
            picked.clear();
            picked.extend((0..dgrams.len()).filter(|&k| target(dgrams[k].peer).is_ipv6() == v6));
            if picked.is_empty() {
                continue;
            }
            let Some(sock) = sock else {
                // An endpoint of a family this node has no underlay address of.
                let packets = picked.iter().filter(|&&k| dgrams[k].inner > 0).count();
                tally.drop(DropReason::SendError, packets as u64);
                continue;
            };
            family.clear();
            family.extend(picked.iter().map(|&k| dgrams[k]));
            let iov: [IoSlice<'_>; TX_BATCH] = std::array::from_fn(|i| match picked.get(i) {
                Some(&k) => {
                    let slot = &out[k * slot_len..(k + 1) * slot_len];
                    IoSlice::new(&slot[..dgrams[k].len])
                }
                None => IoSlice::new(&[]),
            });
            sock.send_datagrams(mmsg, msgs, family, &iov, target, tally);
        }
    }

    fn recv(&self, st: &mut WgRx, rx: &mut RxBatch<'_>) -> io::Result<()> {
        let v4 = self.v4.as_ref().map(|sock| self.recv_from(sock, st, rx));
        let v6 = self.v6.as_ref().map(|sock| self.recv_from(sock, st, rx));
        merge_results([v4, v6])
    }
}

impl WgCarrier {
    /// Receives one batch from `sock` (of either family) and passes each datagram, with its
    /// source, to the receive path.
    fn recv_from(&self, sock: &UdpCarrier, st: &mut WgRx, rx: &mut RxBatch<'_>) -> io::Result<()> {
        let WgRx { udp, scratch } = st;
        let r = sock.recv_batch(udp)?;
        let identity = self.wg.identity.load();
        let table = rx.table;
        for (m, buf) in udp.meta.iter().zip(udp.bufs.iter()).take(r) {
            if m.truncated {
                rx.tally.drop(DropReason::Malformed, 1);
                continue;
            }
            let seg = usize::from(m.gro_segment.unwrap_or(0));
            let seg = if seg == 0 { m.len.max(1) } else { seg };
            let src = SocketAddr::new(m.src, m.src_port);
            let mut sink = EngineSink { rx, carrier: self };
            ingress::receive(
                table,
                &identity,
                scratch,
                &buf[..m.len],
                seg,
                src,
                &mut sink,
            );
        }
        Ok(())
    }
}

/// Receive results into the TUN batch; replies straight out of the socket of their family.
struct EngineSink<'r, 'b> {
    rx: &'r mut RxBatch<'b>,
    carrier: &'r WgCarrier,
}

impl Sink for EngineSink<'_, '_> {
    fn room(&mut self) -> &mut [u8] {
        if self.rx.n == self.rx.out.len() {
            self.rx.flush();
        }
        let off = self.rx.offset;
        &mut self.rx.out[self.rx.n].space()[off..]
    }

    fn deliver(&mut self, peer: usize, len: usize) {
        let off = self.rx.offset;
        let n = self.rx.n;
        let header = match wire::parse_inner(&self.rx.out[n].space()[off..off + len]) {
            Ok(h) if h.total_len() == len => h,
            _ => {
                self.rx.tally.drop(DropReason::Malformed, 1);
                return;
            }
        };
        if self.rx.admit(peer, &header) {
            self.rx.out[n].set_len(off + len);
            self.rx.n += 1;
        }
    }

    fn send(&mut self, to: SocketAddr, datagram: &[u8], peer: Option<usize>) {
        let Some(sock) = self.carrier.socket_for(&to) else {
            self.rx.tally.drop(DropReason::SendError, 1);
            return;
        };
        match sock.sock.send_to(datagram, &to.into()) {
            Ok(_) => {
                if let Some(p) = peer {
                    let inner = datagram.len().saturating_sub(DATA_OVERHEAD);
                    self.rx.tally.tx(p, 1, inner as u64);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, %to, "WireGuard reply failed");
                self.rx.tally.drop(DropReason::SendError, 1);
            }
        }
    }

    fn drop(&mut self, reason: DropReason) {
        self.rx.tally.drop(reason, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::padded_len;

    #[test]
    fn padding_rounds_up_to_sixteen_but_never_past_the_mtu() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(16, 1420), 16);
        assert_eq!(padded_len(84, 1420), 96);
        assert_eq!(padded_len(1400, 1420), 1408);
        assert_eq!(padded_len(1410, 1420), 1420);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        // A packet larger than the MTU (it should not happen) is never shortened.
        assert_eq!(padded_len(1430, 1420), 1430);
    }
}
