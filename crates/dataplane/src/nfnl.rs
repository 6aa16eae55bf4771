//! The nfnetlink / nf_tables client of the hot paths: builds nf_tables
//! requests and batches with `netlink-packet-netfilter`, sends them over a
//! `NETLINK_NETFILTER` socket (`netlink-sys`), and reads acks, errors and
//! dumps.
//!
//! Why netlink and not `nft`: the CNI plugin adds and removes anti-spoofing
//! set elements and checks for its chains on every container ADD/DEL, so
//! these operations must cost microseconds, not the milliseconds of spawning
//! `nft`. Everything rule-shaped is left to `nft -f` (see `nftcli`).
//!
//! Every request is encoded by the crate (tables, chains, rules, sets, set
//! elements, batch begin/end). What stays ours is reading the replies:
//! - splitting datagrams and reading `NLMSG_ERROR` with its extended-ack
//!   message (`NLMSGERR_ATTR_MSG`), which `netlink-packet-core` leaves as
//!   raw bytes, is done with the core crate's checked buffers;
//! - set element keys and the names of sets and rule chains are read by
//!   walking attributes with the core crate's checked `NlasIterator`, not
//!   with the netfilter crate's message parsers: its `SetElementAttribute`
//!   parser reads a nested key through an unchecked `NlaBuffer` and panics
//!   on a short one (see `crate_set_element_parser_panics_on_a_short_key`),
//!   and a rule dump would be decoded expression by expression when only
//!   the chain name of each rule is needed (this runs on every ADD).
//!
//! Concatenated keys (`ifname . ipv4_addr`) are plain bytes to the kernel:
//! [`concat_key`] lays them out as nftables does.

use std::io;
use std::os::fd::AsFd;

use netlink_packet_core::{
    NLA_ALIGNTO, NLA_HEADER_SIZE, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_NOOP, NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator,
};
pub use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST,
};
pub use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterSubsystem,
    nftables::{
        ChainAttribute, ChainMessage, DataAttribute, ListAttribute, RuleAttribute, RuleMessage,
        SetAttribute, SetElementAttribute, SetElementList, SetElementMessage, SetMessage,
        TableAttribute, TableMessage,
    },
    none::ControlMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `NFPROTO_INET`: the `inet` family (IPv4 + IPv6 hooks).
pub const NFPROTO_INET: u8 = 1;
/// `NFPROTO_BRIDGE`: the `bridge` family.
pub const NFPROTO_BRIDGE: u8 = 7;

const NFNETLINK_V0: u8 = 0;

/// Attribute numbers the replies are read by (from `nf_tables.h`).
mod attr {
    pub const NFTA_RULE_CHAIN: u16 = 2;
    pub const NFTA_SET_NAME: u16 = 2;
    pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_SET_ELEM_KEY: u16 = 1;
    pub const NFTA_SET_ELEM_KEY_END: u16 = 10;
    pub const NFTA_TABLE_USERDATA: u16 = 6;
    pub const NFTA_CHAIN_USERDATA: u16 = 12;
    pub const NFTA_DATA_VALUE: u16 = 1;
}

/// `NLMSGERR_ATTR_MSG`: the extended ack's text (`netlink.h`).
const NLMSGERR_ATTR_MSG: u16 = 1;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// Length of `ifname` fields in nftables keys (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// Receive buffer size: bigger than any single nf_tables dump chunk.
const RECV_BUF: usize = 64 * 1024;

fn align4(n: usize) -> usize {
    n.div_ceil(NLA_ALIGNTO) * NLA_ALIGNTO
}

/// What went wrong talking to the kernel.
#[derive(Debug)]
pub enum NlError {
    /// The socket itself failed (open, send, receive, timeout).
    Io(io::Error),
    /// The kernel answered with an error (`errno` is positive).
    Kernel { errno: i32, msg: Option<String> },
    /// The reply could not be parsed.
    Malformed(String),
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl From<io::Error> for NlError {
    fn from(e: io::Error) -> Self {
        NlError::Io(e)
    }
}

// ---- encoding (netlink-packet-netfilter) ------------------------------------

/// Appends one nfnetlink message to `buf`. `pid` 0 lets the kernel fill in.
fn emit(
    buf: &mut Vec<u8>,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    inner: impl Into<NetfilterMessageInner>,
) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let nfgen = NetfilterHeader::new(family.into(), NFNETLINK_V0, res_id);
    let mut m = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(NetfilterMessage::new(nfgen, inner)),
    );
    m.finalize();
    let start = buf.len();
    buf.resize(start + m.buffer_len(), 0);
    m.serialize(&mut buf[start..]);
}

/// A single (non-batched) nf_tables request.
fn request_bytes(flags: u16, seq: u32, family: u8, msg: NfTablesMessage) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    emit(&mut buf, NLM_F_REQUEST | flags, seq, family, 0, msg);
    buf
}

/// The message of a set element operation: `NfTablesMessage::NewSetElement`,
/// `GetSetElement` or `DeleteSetElement`.
pub type SetElementOp = fn(SetElementMessage) -> NfTablesMessage;

/// A chain by table and name (`NFT_MSG_GETCHAIN`, `NFT_MSG_DELCHAIN`).
pub fn chain_message(table: &str, chain: &str) -> ChainMessage {
    ChainMessage {
        attributes: vec![
            ChainAttribute::Table(table.to_string()),
            ChainAttribute::Name(chain.to_string()),
        ],
    }
}

/// The elements with `keys` of set `table set` (`NFT_MSG_*SETELEM`).
pub fn set_elements(table: &str, set: &str, keys: &[Vec<u8>]) -> SetElementMessage {
    let elements = keys
        .iter()
        .map(|key| {
            ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(
                key.clone(),
            ))])
        })
        .collect();
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_string()),
            SetElementList::Set(set.to_string()),
            SetElementList::Elements(elements),
        ],
    }
}

// ---- decoding (netlink-packet-core buffers) ---------------------------------

/// A parsed netlink message (header fields + payload after `nlmsghdr`).
#[derive(Debug, Clone, Copy)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into netlink messages.
pub fn parse_msgs(mut buf: &[u8]) -> Result<Vec<NlMsg<'_>>, NlError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = NetlinkBuffer::new(buf).length() as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NlError::Malformed(format!(
                "netlink message length {len} with {} bytes left",
                buf.len()
            )));
        }
        let m = NetlinkBuffer::new(&buf[..len]);
        out.push(NlMsg {
            ty: m.message_type(),
            flags: m.flags(),
            seq: m.sequence_number(),
            payload: m.payload(),
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// The attributes of `buf`: `(type without NESTED/BYTEORDER flags, payload)`.
pub fn parse_attrs(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, NlError> {
    NlasIterator::new(buf)
        .map(|nla| {
            let nla = nla.map_err(|e| NlError::Malformed(format!("attribute: {e}")))?;
            // new_checked made sure that NLA_HEADER_SIZE <= length <= buffer.
            let (kind, len) = (nla.kind(), usize::from(nla.length()));
            Ok((kind, &nla.into_inner()[NLA_HEADER_SIZE..len]))
        })
        .collect()
}

/// Finds the first attribute of type `ty`.
pub fn find_attr<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, d)| *d)
}

/// The attributes after the `nfgenmsg` of an nf_tables message payload.
fn nft_attrs(payload: &[u8]) -> Result<Vec<(u16, &[u8])>, NlError> {
    parse_attrs(payload.get(NFGENMSG_LEN..).unwrap_or_default())
}

/// A NUL-terminated name attribute as a string.
fn name_of(data: &[u8]) -> String {
    let s = data.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(s).into_owned()
}

/// Decodes an `NLMSG_ERROR` payload: `(errno as positive number, extack message)`.
/// `errno == 0` is a plain ack.
pub fn parse_error(m: &NlMsg<'_>) -> Result<(i32, Option<String>), NlError> {
    let p = m.payload;
    let Some(code) = p.get(..4) else {
        return Err(NlError::Malformed("short NLMSG_ERROR".into()));
    };
    let err = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
    let mut text = None;
    if m.flags & NLM_F_ACK_TLVS != 0 && p.len() >= 4 + NLMSG_HDRLEN {
        // The echoed request: only its header when capped, else all of it.
        let orig_len = if m.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            NetlinkBuffer::new(&p[4..]).length() as usize
        };
        if let Some(tlvs) = p.get(4 + align4(orig_len)..) {
            for (ty, data) in parse_attrs(tlvs)? {
                if ty == NLMSGERR_ATTR_MSG {
                    text = Some(name_of(data));
                }
            }
        }
    }
    Ok((-err, text))
}

/// A set element's key and, in a concatenated interval set, the end of its range.
pub type ElementRange = (Vec<u8>, Option<Vec<u8>>);

/// Extracts the keys from a `NEWSETELEM` message payload (dump/get reply).
#[cfg(test)]
fn parse_setelem_keys(payload: &[u8]) -> Result<Vec<Vec<u8>>, NlError> {
    Ok(parse_setelem_ranges(payload)?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// Extracts the keys and, for the elements of a concatenated interval set, the ends of their
/// ranges (`NFTA_SET_ELEM_KEY_END`) from a `NEWSETELEM` message payload.
pub fn parse_setelem_ranges(payload: &[u8]) -> Result<Vec<ElementRange>, NlError> {
    let value = |data: Option<&[u8]>| -> Result<Option<Vec<u8>>, NlError> {
        Ok(match data {
            Some(nested) => {
                find_attr(&parse_attrs(nested)?, attr::NFTA_DATA_VALUE).map(<[u8]>::to_vec)
            }
            None => None,
        })
    };
    let mut keys = Vec::new();
    for (ty, list) in nft_attrs(payload)? {
        if ty != attr::NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (ty, elem) in parse_attrs(list)? {
            if ty != attr::NFTA_LIST_ELEM {
                continue;
            }
            let elem = parse_attrs(elem)?;
            if let Some(key) = value(find_attr(&elem, attr::NFTA_SET_ELEM_KEY))? {
                keys.push((key, value(find_attr(&elem, attr::NFTA_SET_ELEM_KEY_END))?));
            }
        }
    }
    Ok(keys)
}

// ---- the socket ---------------------------------------------------------------

/// A `NETLINK_NETFILTER` socket bound to the network namespace of the thread
/// that opened it.
pub struct NfSock {
    sock: Socket,
    seq: u32,
    rbuf: Vec<u8>,
}

impl NfSock {
    pub fn open() -> Result<Self, NlError> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Extended acks carry the kernel's human-readable reason; capped acks
        // keep error replies small. Both are best effort (old kernels).
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        // Every reply we wait for is produced synchronously while the kernel
        // processes our send (or our recv, for dumps), so a timeout is only a
        // safety net against a hung plugin if that assumption ever breaks.
        let tv = nix::sys::time::TimeVal::new(2, 0);
        nix::sys::socket::setsockopt(
            &sock.as_fd(),
            nix::sys::socket::sockopt::ReceiveTimeout,
            &tv,
        )
        .map_err(io::Error::from)?;
        // Sequence numbers only need to be unique on this socket; starting
        // from the clock makes stale replies from another life unlikely.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NfSock {
            sock,
            seq,
            rbuf: Vec::with_capacity(RECV_BUF),
        })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, buf: &[u8]) -> Result<(), NlError> {
        let n = self.sock.send(buf, 0)?;
        if n != buf.len() {
            return Err(NlError::Malformed(format!(
                "short netlink send: {n} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Receives one datagram into `self.rbuf`. `Ok(false)` means "nothing
    /// queued" (only with `dontwait`).
    fn recv(&mut self, dontwait: bool) -> Result<bool, NlError> {
        self.rbuf.clear();
        let flags = libc::MSG_TRUNC | if dontwait { libc::MSG_DONTWAIT } else { 0 };
        match self.sock.recv(&mut self.rbuf, flags) {
            Ok(n) if n > self.rbuf.len() => Err(NlError::Malformed(format!(
                "netlink reply of {n} bytes truncated to {}",
                self.rbuf.len()
            ))),
            Ok(_) => Ok(true),
            Err(e) if dontwait && e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(NlError::Io(e)),
        }
    }

    /// Sends one request carrying `NLM_F_ACK` with sequence number `seq` and
    /// returns the payloads of the data messages answering it.
    pub fn request(&mut self, req: &[u8], seq: u32) -> Result<Vec<Vec<u8>>, NlError> {
        self.send(req)?;
        let mut data = Vec::new();
        loop {
            self.recv(false)?;
            for m in parse_msgs(&self.rbuf)? {
                if m.seq != seq {
                    continue; // a stale reply to an earlier request
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let (errno, msg) = parse_error(&m)?;
                        return if errno == 0 {
                            Ok(data)
                        } else {
                            Err(NlError::Kernel { errno, msg })
                        };
                    }
                    NLMSG_NOOP | NLMSG_DONE | NLMSG_OVERRUN => {}
                    _ => data.push(m.payload.to_vec()),
                }
            }
        }
    }

    /// Sends a dump request (`NLM_F_DUMP`) and collects the payloads of all
    /// answering messages until `NLMSG_DONE`.
    pub fn dump(&mut self, req: &[u8], seq: u32) -> Result<Vec<Vec<u8>>, NlError> {
        self.send(req)?;
        let mut data = Vec::new();
        loop {
            self.recv(false)?;
            for m in parse_msgs(&self.rbuf)? {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(data),
                    NLMSG_ERROR => {
                        let (errno, msg) = parse_error(&m)?;
                        if errno != 0 {
                            return Err(NlError::Kernel { errno, msg });
                        }
                    }
                    NLMSG_NOOP | NLMSG_OVERRUN => {}
                    _ => {
                        data.push(m.payload.to_vec());
                        if m.flags & NLM_F_MULTIPART == 0 {
                            // A single-part answer has no NLMSG_DONE.
                            return Ok(data);
                        }
                    }
                }
            }
        }
    }

    /// Sends a batch and waits for the ack of every message in it. Returns the
    /// first error in message order (the kernel then aborted the whole
    /// batch: nothing in it was applied).
    pub fn batch(&mut self, batch: Batch) -> Result<(), NlError> {
        let (bytes, mut pending, begin_seq) = batch.finish();
        self.send(&bytes)?;
        // (index in batch, errno, message); index usize::MAX = the batch itself.
        let mut errors: Vec<(usize, i32, Option<String>)> = Vec::new();
        let all = pending.clone();
        while !pending.is_empty() {
            // After the first error everything else is already queued (the
            // kernel reports errors after processing the whole batch), so
            // drain without blocking instead of waiting for acks that a
            // malformed batch may never produce.
            if !self.recv(!errors.is_empty())? {
                break;
            }
            for m in parse_msgs(&self.rbuf)? {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let (errno, msg) = parse_error(&m)?;
                if m.seq == begin_seq {
                    if errno != 0 {
                        errors.push((usize::MAX, errno, msg));
                    }
                    continue;
                }
                if let Some(pos) = pending.iter().position(|s| *s == m.seq) {
                    pending.swap_remove(pos);
                    if errno != 0 {
                        let idx = all.iter().position(|s| *s == m.seq).unwrap_or(usize::MAX);
                        errors.push((idx, errno, msg));
                    }
                }
            }
        }
        errors.sort_by_key(|e| e.0);
        match errors.into_iter().next() {
            Some((_, errno, msg)) => Err(NlError::Kernel { errno, msg }),
            None if pending.is_empty() => Ok(()),
            None => Err(NlError::Malformed(format!(
                "the kernel did not acknowledge {} of {} batch messages",
                pending.len(),
                all.len()
            ))),
        }
    }
}

// ---- socket reuse -------------------------------------------------------------
//
// Why not one socket per call: closing a NETLINK_NETFILTER socket makes the
// kernel (nft_rcv_nl_event on NETLINK_URELEASE) flush nf_tables' pending
// destroy work, which waits for an RCU grace period (~15 ms here) whenever a
// recent transaction deleted something, e.g. a set element in
// forget_source. Keeping the socket open until the thread ends moves that
// wait off the hot path (usually it is over by then). A socket belongs to
// the netns it was opened in, so the cache is keyed by the calling thread's
// current netns.

thread_local! {
    static CACHED: std::cell::RefCell<Option<((u64, u64), NfSock)>> =
        const { std::cell::RefCell::new(None) };
}

/// Identity (device, inode) of the calling thread's network namespace.
fn current_netns() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Runs `f` with a `NETLINK_NETFILTER` socket in the calling thread's
/// current network namespace, reusing this thread's socket when it is in the
/// same namespace.
pub fn with_sock<R>(f: impl FnOnce(&mut NfSock) -> Result<R, NlError>) -> Result<R, NlError> {
    let Some(ns) = current_netns() else {
        // No /proc: cannot tell namespaces apart, so do not cache.
        return f(&mut NfSock::open()?);
    };
    CACHED.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(id, _)| *id != ns) {
            *slot = None; // drop a socket of another netns first
            *slot = Some((ns, NfSock::open()?));
        }
        let (_, sock) = slot.as_mut().expect("just filled");
        let res = f(sock);
        // After a socket-level failure the stream may hold leftovers or be
        // broken: start afresh next time. Kernel errors are clean answers.
        if matches!(res, Err(NlError::Io(_) | NlError::Malformed(_))) {
            *slot = None;
        }
        res
    })
}

/// An nfnetlink transaction: `NFNL_MSG_BATCH_BEGIN`, messages (each with
/// `NLM_F_ACK` so that we learn about every one of them), `NFNL_MSG_BATCH_END`.
/// The kernel applies it atomically.
pub struct Batch {
    buf: Vec<u8>,
    begin_seq: u32,
    seq: u32,
    acked: Vec<u32>,
}

/// `res_id` of batch begin/end: the subsystem the batch is for.
fn nftables_res_id() -> u16 {
    u8::from(NetfilterSubsystem::NfTables).into()
}

impl Batch {
    pub fn new(sock: &mut NfSock) -> Self {
        let begin_seq = sock.next_seq();
        // Reserve a generous range of sequence numbers for this batch on the
        // socket so a following request cannot collide with them.
        sock.seq = sock.seq.wrapping_add(1 << 16);
        Self::starting_at(begin_seq)
    }

    fn starting_at(begin_seq: u32) -> Self {
        let mut buf = Vec::with_capacity(256);
        emit(
            &mut buf,
            NLM_F_REQUEST,
            begin_seq,
            libc::AF_UNSPEC as u8,
            nftables_res_id(),
            ControlMessage::BatchBegin,
        );
        Batch {
            buf,
            begin_seq,
            seq: begin_seq,
            acked: Vec::new(),
        }
    }

    /// Adds an nf_tables message to the batch (`NLM_F_REQUEST | NLM_F_ACK`
    /// are added to `extra_flags`).
    pub fn push(&mut self, msg: NfTablesMessage, extra_flags: u16, family: u8) {
        self.seq = self.seq.wrapping_add(1);
        self.acked.push(self.seq);
        emit(
            &mut self.buf,
            NLM_F_REQUEST | NLM_F_ACK | extra_flags,
            self.seq,
            family,
            0,
            msg,
        );
    }

    /// Encoded bytes, the sequence numbers awaiting an ack, begin's seq.
    pub fn finish(mut self) -> (Vec<u8>, Vec<u32>, u32) {
        let end_seq = self.seq.wrapping_add(1);
        emit(
            &mut self.buf,
            NLM_F_REQUEST,
            end_seq,
            libc::AF_UNSPEC as u8,
            nftables_res_id(),
            ControlMessage::BatchEnd,
        );
        (self.buf, self.acked, self.begin_seq)
    }
}

/// Builds the key of a concatenated set (`a . b . ...`): every field is
/// stored in its own 4-byte-aligned register slot, so each is zero-padded to
/// a multiple of 4 bytes.
pub fn concat_key(fields: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(fields.iter().map(|f| align4(f.len())).sum());
    for f in fields {
        key.extend_from_slice(f);
        key.resize(align4(key.len()), 0);
    }
    key
}

/// An interface name as nftables' `ifname` type stores it: `IFNAMSIZ` bytes,
/// NUL padded. The caller validates the length (at most 15 bytes).
pub fn ifname_field(name: &str) -> [u8; IFNAMSIZ] {
    let mut f = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    f[..n].copy_from_slice(&name.as_bytes()[..n]);
    f
}

// ---- one-shot queries -------------------------------------------------------

fn exists(r: Result<Vec<Vec<u8>>, NlError>) -> Result<bool, NlError> {
    match r {
        Ok(_) => Ok(true),
        Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// The comment of an object's nftables user data (`NFTA_TABLE_USERDATA`,
/// `NFTA_CHAIN_USERDATA`): libnftnl's TLVs of one byte type, one byte length, then the value;
/// a comment is type 0 (`NFTNL_UDATA_TABLE_COMMENT`, `NFTNL_UDATA_CHAIN_COMMENT`), a
/// NUL-terminated string.
pub fn udata_comment(mut udata: &[u8]) -> Option<String> {
    const UDATA_COMMENT: u8 = 0;
    while let [ty, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *ty == UDATA_COMMENT {
            return Some(name_of(value));
        }
        udata = &rest[value.len()..];
    }
    None
}

/// The comment of the one object a get request answers with (`None` when it has none).
fn comment_of_reply(replies: &[Vec<u8>], userdata: u16) -> Result<Option<String>, NlError> {
    let Some(payload) = replies.first() else {
        return Err(NlError::Malformed(
            "an empty answer to a get request".into(),
        ));
    };
    Ok(find_attr(&nft_attrs(payload)?, userdata).and_then(udata_comment))
}

/// The comment of table `family table`: `None` when the table does not exist, `Some(None)`
/// when it has no comment. (`NFT_MSG_GETTABLE`)
pub fn table_comment(
    sock: &mut NfSock,
    family: u8,
    table: &str,
) -> Result<Option<Option<String>>, NlError> {
    let seq = sock.next_seq();
    let msg = NfTablesMessage::GetTable(TableMessage {
        attributes: vec![TableAttribute::Name(table.to_string())],
    });
    match sock.request(&request_bytes(NLM_F_ACK, seq, family, msg), seq) {
        Ok(replies) => Ok(Some(comment_of_reply(&replies, attr::NFTA_TABLE_USERDATA)?)),
        Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// The comment of chain `family table chain`, as [`table_comment`]. (`NFT_MSG_GETCHAIN`)
pub fn chain_comment(
    sock: &mut NfSock,
    family: u8,
    table: &str,
    chain: &str,
) -> Result<Option<Option<String>>, NlError> {
    let seq = sock.next_seq();
    let msg = NfTablesMessage::GetChain(chain_message(table, chain));
    match sock.request(&request_bytes(NLM_F_ACK, seq, family, msg), seq) {
        Ok(replies) => Ok(Some(comment_of_reply(&replies, attr::NFTA_CHAIN_USERDATA)?)),
        Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// Does chain `family table chain` exist? (`NFT_MSG_GETCHAIN`)
pub fn chain_exists(
    sock: &mut NfSock,
    family: u8,
    table: &str,
    chain: &str,
) -> Result<bool, NlError> {
    let seq = sock.next_seq();
    let msg = NfTablesMessage::GetChain(chain_message(table, chain));
    exists(sock.request(&request_bytes(NLM_F_ACK, seq, family, msg), seq))
}

/// A set by table and name (`NFT_MSG_GETSET`); the name is left out for a
/// dump of the table's sets.
fn set_message(table: &str, set: Option<&str>) -> NfTablesMessage {
    let mut attributes = vec![SetAttribute::Table(table.to_string())];
    attributes.extend(set.map(|s| SetAttribute::Name(s.to_string())));
    NfTablesMessage::GetSet(SetMessage { attributes })
}

/// Does set `family table set` exist? (`NFT_MSG_GETSET`)
pub fn set_exists(sock: &mut NfSock, family: u8, table: &str, set: &str) -> Result<bool, NlError> {
    let seq = sock.next_seq();
    let req = request_bytes(NLM_F_ACK, seq, family, set_message(table, Some(set)));
    exists(sock.request(&req, seq))
}

/// A rule dump filtered by table, and by chain if given (`NFT_MSG_GETRULE`).
fn rule_dump(sock: &mut NfSock, family: u8, table: &str, chain: Option<&str>) -> (Vec<u8>, u32) {
    let seq = sock.next_seq();
    let mut attributes = vec![RuleAttribute::Table(table.to_string())];
    attributes.extend(chain.map(|c| RuleAttribute::Chain(c.to_string())));
    let msg = NfTablesMessage::GetRule(RuleMessage { attributes });
    (request_bytes(NLM_F_DUMP, seq, family, msg), seq)
}

/// Number of rules in a chain (a dump filtered by table and chain; 0 when the
/// chain does not exist).
pub fn rule_count(
    sock: &mut NfSock,
    family: u8,
    table: &str,
    chain: &str,
) -> Result<usize, NlError> {
    let (req, seq) = rule_dump(sock, family, table, Some(chain));
    match sock.dump(&req, seq) {
        Ok(msgs) => Ok(msgs.len()),
        Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(0),
        Err(e) => Err(e),
    }
}

/// All element keys of a set (`NFT_MSG_GETSETELEM` dump).
pub fn set_keys(
    sock: &mut NfSock,
    family: u8,
    table: &str,
    set: &str,
) -> Result<Vec<Vec<u8>>, NlError> {
    Ok(set_ranges(sock, family, table, set)?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// All elements of a set: keys with their range ends where the set has them (concatenated
/// interval sets; `NFT_MSG_GETSETELEM` dump).
pub fn set_ranges(
    sock: &mut NfSock,
    family: u8,
    table: &str,
    set: &str,
) -> Result<Vec<ElementRange>, NlError> {
    let seq = sock.next_seq();
    let msg = NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_string()),
            SetElementList::Set(set.to_string()),
        ],
    });
    let mut keys = Vec::new();
    for payload in sock.dump(&request_bytes(NLM_F_DUMP, seq, family, msg), seq)? {
        keys.extend(parse_setelem_ranges(&payload)?);
    }
    Ok(keys)
}

/// Is `key` an element of the set? (`NFT_MSG_GETSETELEM` for one element;
/// `ENOENT` means no.)
pub fn set_has_key(
    sock: &mut NfSock,
    family: u8,
    table: &str,
    set: &str,
    key: &[u8],
) -> Result<bool, NlError> {
    let seq = sock.next_seq();
    let msg = NfTablesMessage::GetSetElement(set_elements(table, set, &[key.to_vec()]));
    exists(sock.request(&request_bytes(NLM_F_ACK, seq, family, msg), seq))
}

/// Names of the sets of a table (one `NFT_MSG_GETSET` dump; `ENOENT` when
/// the table does not exist).
pub fn set_names(sock: &mut NfSock, family: u8, table: &str) -> Result<Vec<String>, NlError> {
    let seq = sock.next_seq();
    let req = request_bytes(NLM_F_DUMP, seq, family, set_message(table, None));
    let mut names = Vec::new();
    for payload in sock.dump(&req, seq)? {
        if let Some(n) = find_attr(&nft_attrs(&payload)?, attr::NFTA_SET_NAME) {
            names.push(name_of(n));
        }
    }
    Ok(names)
}

/// Number of rules per chain of a table (one `NFT_MSG_GETRULE` dump
/// filtered by table; chains without rules do not appear).
pub fn rule_counts(
    sock: &mut NfSock,
    family: u8,
    table: &str,
) -> Result<std::collections::HashMap<String, usize>, NlError> {
    let (req, seq) = rule_dump(sock, family, table, None);
    let mut counts = std::collections::HashMap::new();
    let msgs = match sock.dump(&req, seq) {
        Ok(m) => m,
        Err(NlError::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(counts),
        Err(e) => return Err(e),
    };
    for payload in msgs {
        if let Some(c) = find_attr(&nft_attrs(&payload)?, attr::NFTA_RULE_CHAIN) {
            *counts.entry(name_of(c)).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([b[off], b[off + 1]])
    }

    #[test]
    fn names_are_nul_terminated_and_padded_to_four_bytes() {
        let bytes = request_bytes(
            NLM_F_ACK,
            1,
            NFPROTO_INET,
            NfTablesMessage::GetChain(chain_message("twill", "a")),
        );
        // "twill\0": 4 + 6 = 10 -> padded to 12; "a\0": 4 + 2 = 6 -> 8
        assert_eq!(bytes.len(), 16 + 4 + 12 + 8);
        assert_eq!(NetlinkBuffer::new(&bytes).length() as usize, bytes.len());
        // nla_len is the unpadded length
        assert_eq!(u16_at(&bytes, 20), 10);
        assert_eq!(&bytes[24..30], b"twill\0");
        assert_eq!(&bytes[30..32], &[0, 0]);
        assert_eq!(u16_at(&bytes, 32), 6);
        assert_eq!(&bytes[36..40], &[b'a', 0, 0, 0]);
        let msgs = parse_msgs(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            msgs[0].ty, 0x0a04,
            "NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN"
        );
        assert_eq!(msgs[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        let attrs = nft_attrs(msgs[0].payload).unwrap();
        assert_eq!(attrs, vec![(1, &b"twill\0"[..]), (3, &b"a\0"[..])]);
    }

    #[test]
    fn concat_key_pads_every_field() {
        assert_eq!(
            concat_key(&[&[1, 2, 3], &[4]]),
            vec![1, 2, 3, 0, 4, 0, 0, 0]
        );
        let key = concat_key(&[&ifname_field("tw1234"), &[10, 88, 0, 5]]);
        assert_eq!(key.len(), 20);
        assert_eq!(&key[..7], b"tw1234\0");
        assert_eq!(&key[16..], &[10, 88, 0, 5]);
    }

    /// The exact bytes of a NEWSETELEM message adding `"tw1234" . 10.88.0.5`
    /// to `bridge twill allowed4`, as libnftnl would lay it out.
    #[test]
    #[cfg(target_endian = "little")]
    fn newsetelem_byte_layout() {
        let key = concat_key(&[&ifname_field("tw1234"), &[10, 88, 0, 5]]);
        let mut bytes = Vec::new();
        emit(
            &mut bytes,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
            0x01020304,
            NFPROTO_BRIDGE,
            0,
            NfTablesMessage::NewSetElement(set_elements("twill", "allowed4", &[key])),
        );
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            // nlmsghdr: len 84, type 0x0a0c, flags 0x405, seq, pid 0
            84, 0, 0, 0,  0x0c, 0x0a,  0x05, 0x04,  4, 3, 2, 1,  0, 0, 0, 0,
            // nfgenmsg: NFPROTO_BRIDGE, v0, res_id 0
            7, 0, 0, 0,
            // NFTA_SET_ELEM_LIST_TABLE "twill\0" (+2 pad)
            10, 0, 1, 0,  b't', b'w', b'i', b'l', b'l', 0, 0, 0,
            // NFTA_SET_ELEM_LIST_SET "allowed4\0" (+3 pad)
            13, 0, 2, 0,  b'a', b'l', b'l', b'o', b'w', b'e', b'd', b'4', 0, 0, 0, 0,
            // NFTA_SET_ELEM_LIST_ELEMENTS (nested): 4 + 32
            36, 0, 3, 0x80,
            //   NFTA_LIST_ELEM (nested): 4 + 28
            32, 0, 1, 0x80,
            //     NFTA_SET_ELEM_KEY (nested): 4 + 24
            28, 0, 1, 0x80,
            //       NFTA_DATA_VALUE: 4 + 20
            24, 0, 1, 0,
            b't', b'w', b'1', b'2', b'3', b'4', 0, 0,  0, 0, 0, 0, 0, 0, 0, 0,
            10, 88, 0, 5,
        ];
        assert_eq!(bytes, expected);
        // And the decoder reads back the same key.
        let msgs = parse_msgs(&bytes).unwrap();
        let keys = parse_setelem_keys(msgs[0].payload).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(&keys[0][16..], &[10, 88, 0, 5]);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn batch_is_wrapped_in_begin_and_end() {
        let mut b = Batch::starting_at(10);
        b.push(
            NfTablesMessage::DeleteSetElement(set_elements("t", "s", &[vec![1, 2, 3, 4]])),
            0,
            NFPROTO_INET,
        );
        let (bytes, acked, begin) = b.finish();
        assert_eq!(begin, 10);
        assert_eq!(acked, vec![11]);
        let msgs = parse_msgs(&bytes).unwrap();
        let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        assert_eq!(types, vec![0x10, 0x0a0e, 0x11]);
        // res_id of begin/end is the subsystem, big endian; family AF_UNSPEC
        assert_eq!(msgs[0].payload, &[0, 0, 0, 10]);
        assert_eq!(msgs[2].payload, &[0, 0, 0, 10]);
        assert_eq!(msgs[0].flags, NLM_F_REQUEST);
        assert_eq!(msgs[1].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msgs[1].payload[0], NFPROTO_INET);
        assert_eq!(msgs[2].seq, 12);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn error_reply_with_extack_message() {
        // NLMSG_ERROR, capped + TLVs: errno -2, echoed header, NLMSGERR_ATTR_MSG
        let mut p = Vec::new();
        p.extend_from_slice(&(-2i32).to_ne_bytes());
        p.extend_from_slice(&[40, 0, 0, 0, 0x0c, 0x0a, 5, 4, 7, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[9, 0, 1, 0, b'n', b'o', b'p', b'e', 0, 0, 0, 0]);
        let m = NlMsg {
            ty: NLMSG_ERROR,
            flags: NLM_F_CAPPED | NLM_F_ACK_TLVS,
            seq: 7,
            payload: &p,
        };
        assert_eq!(parse_error(&m).unwrap(), (2, Some("nope".to_string())));
    }

    /// Why set element replies are not read with the crate's parser: a
    /// nested key too short for an attribute header panics instead of
    /// failing (our decoder, on the same bytes, returns an error).
    #[test]
    fn crate_set_element_parser_panics_on_a_short_key() {
        use netlink_packet_core::Parseable;
        #[rustfmt::skip]
        let attrs: Vec<u8> = vec![
            16, 0, 3, 0x80,      // NFTA_SET_ELEM_LIST_ELEMENTS
            12, 0, 1, 0x80,      //   NFTA_LIST_ELEM
            6, 0, 1, 0x80, 1, 0, 0, 0, // NFTA_SET_ELEM_KEY with a 2-byte payload
        ];
        let crate_parse = std::panic::catch_unwind(|| SetElementMessage::parse(&attrs[..]));
        assert!(crate_parse.is_err(), "the crate's parser no longer panics");
        let mut payload = vec![NFPROTO_BRIDGE, 0, 0, 0];
        payload.extend_from_slice(&attrs);
        assert!(parse_setelem_keys(&payload).is_err());
    }

    proptest::proptest! {
        /// Whatever the kernel (or a bug) sends, parsing never panics.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(msgs) = parse_msgs(&bytes) {
                for m in msgs {
                    let _ = parse_attrs(m.payload);
                    let _ = parse_setelem_keys(m.payload);
                    let _ = parse_error(&m);
                }
            }
            let _ = parse_attrs(&bytes);
        }

        /// Encoding set elements and decoding them gives back the keys.
        #[test]
        fn setelem_keys_round_trip(
            name in "tw[a-z0-9]{0,13}",
            addrs in proptest::collection::vec(proptest::array::uniform16(proptest::num::u8::ANY), 1..8),
        ) {
            let keys: Vec<Vec<u8>> = addrs
                .iter()
                .map(|a| concat_key(&[&ifname_field(&name), a]))
                .collect();
            let msg = NfTablesMessage::NewSetElement(set_elements("twill", "allowed6", &keys));
            let bytes = request_bytes(0, 1, NFPROTO_INET, msg);
            let msgs = parse_msgs(&bytes).unwrap();
            proptest::prop_assert_eq!(msgs.len(), 1);
            proptest::prop_assert_eq!(parse_setelem_keys(msgs[0].payload).unwrap(), keys);
        }
    }

    #[test]
    fn the_comment_is_found_among_user_data_tlvs_and_short_ones_are_none() {
        // As nft writes a table comment: type 0, length with the NUL, the string.
        assert_eq!(udata_comment(b"\x00\x04abc\x00"), Some("abc".into()));
        // After a TLV of another type (a chain's or set's own user data).
        assert_eq!(
            udata_comment(b"\x01\x02\x07\x07\x00\x03hi\x00"),
            Some("hi".into())
        );
        assert_eq!(udata_comment(b"\x01\x01\x07"), None);
        assert_eq!(udata_comment(b"\x00\x09abc"), None, "length past the end");
        assert_eq!(udata_comment(b""), None);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let bytes = [200u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(parse_msgs(&bytes).is_err());
        assert!(parse_attrs(&[50, 0, 1, 0]).is_err());
        assert!(parse_attrs(&[2, 0, 1, 0]).is_err());
    }
}
