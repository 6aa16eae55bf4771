//! Batched socket I/O: `sendmmsg(2)` with a per-message UDP GSO segment size, and
//! `recvmmsg(2)` returning each datagram's source and UDP GRO segment size, for sockets of
//! either family (IPv4 or IPv6 addresses in the same preallocated slots).
//!
//! This is the crate's only `unsafe` code. nix's `sendmmsg` shares one set of control messages
//! across all messages (we need a GSO size per message) and its result iterator reads source
//! addresses the kernel never wrote for a send; socket2 has no `*mmsg` at all. So this module
//! owns preallocated `mmsghdr`/socket address/control arrays and fills them per call: no heap
//! allocation per packet or per batch. Pointers stored in the arrays are only dereferenced by
//! the kernel during the call that set them.

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

/// Room for the control messages of one received datagram (UDP_GRO is one int).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct RecvControl([u8; 64]);

/// One control message of a sent message: a UDP_SEGMENT size (u16) or an IPV6_TCLASS (int);
/// its layout is `CMSG_SPACE(4)` bytes: the header then the value (padding up to the 8-byte
/// alignment follows).
#[repr(C)]
#[derive(Clone, Copy)]
struct SendControl {
    hdr: libc::cmsghdr,
    data: [u8; 8],
}

/// The per-message option of a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendOpt {
    None,
    /// Ask the kernel to split the payload into UDP datagrams of this size (UDP GSO).
    Segment(u16),
    /// The IPv6 traffic class of the packet the kernel builds (raw IPv6 sockets).
    TrafficClass(u8),
}

/// A socket address of either family, where the kernel reads or writes it.
#[repr(C)]
#[derive(Clone, Copy)]
union SockName {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// What `recvmmsg` reported for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecvMeta {
    pub len: usize,
    /// The sender (`0.0.0.0` when the kernel gave no address of a known family).
    pub src: IpAddr,
    pub src_port: u16,
    /// Segment size when the kernel coalesced several datagrams (UDP_GRO).
    pub gro_segment: Option<u16>,
    /// The datagram did not fit the buffer.
    pub truncated: bool,
}

impl Default for RecvMeta {
    fn default() -> RecvMeta {
        RecvMeta {
            len: 0,
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            src_port: 0,
            gro_segment: None,
            truncated: false,
        }
    }
}

/// Preallocated headers for up to `capacity` messages per call. Holds raw pointers between
/// calls (never dereferenced then), so it is deliberately neither `Send` nor `Sync`: each
/// worker makes its own.
pub(crate) struct Mmsg {
    hdrs: Vec<libc::mmsghdr>,
    names: Vec<SockName>,
    recv_control: Vec<RecvControl>,
    send_control: Vec<SendControl>,
}

fn zero_sockaddr() -> SockName {
    // SAFETY: both sockaddr structs are plain old data; all-zero bytes are a valid value.
    unsafe { mem::zeroed() }
}

/// `a` in the kernel's layout, and the length of that layout.
fn to_sockaddr(a: SocketAddr) -> (SockName, libc::socklen_t) {
    let mut s = zero_sockaddr();
    match a {
        SocketAddr::V4(a) => {
            s.v4 = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            (s, mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            s.v6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            (s, mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// The address the kernel wrote into `s`.
fn from_sockaddr(s: &SockName) -> (IpAddr, u16) {
    // SAFETY: every variant starts with the family field, and the slot was zeroed or filled
    // by the kernel; the variant read is the one the family names.
    unsafe {
        match libc::c_int::from(s.v4.sin_family) {
            libc::AF_INET => (
                IpAddr::V4(Ipv4Addr::from(s.v4.sin_addr.s_addr.to_ne_bytes())),
                u16::from_be(s.v4.sin_port),
            ),
            libc::AF_INET6 => {
                let a = SocketAddrV6::new(
                    Ipv6Addr::from(s.v6.sin6_addr.s6_addr),
                    u16::from_be(s.v6.sin6_port),
                    0,
                    s.v6.sin6_scope_id,
                );
                (IpAddr::V6(*a.ip()), a.port())
            }
            _ => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        }
    }
}

impl Mmsg {
    pub(crate) fn new(capacity: usize) -> Mmsg {
        // SAFETY: mmsghdr and cmsghdr are plain old data (integers and raw pointers); all-zero
        // bytes are valid values (null pointers, zero lengths).
        let hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        let cmsg: libc::cmsghdr = unsafe { mem::zeroed() };
        Mmsg {
            hdrs: vec![hdr; capacity],
            names: vec![zero_sockaddr(); capacity],
            recv_control: vec![RecvControl([0; 64]); capacity],
            send_control: vec![
                SendControl {
                    hdr: cmsg,
                    data: [0; 8]
                };
                capacity
            ],
        }
    }

    /// Starts a batch of messages to send; the iovecs pushed must outlive it.
    pub(crate) fn send_batch<'a>(&mut self) -> SendBatch<'_, 'a> {
        SendBatch {
            m: self,
            len: 0,
            _iov: PhantomData,
        }
    }

    /// Receives up to `bufs.len()` datagrams without blocking (`MSG_DONTWAIT`); fills `meta`
    /// for each and returns how many arrived. `WouldBlock` when none is queued.
    pub(crate) fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let n = bufs.len().min(meta.len()).min(self.hdrs.len());
        if n == 0 {
            return Ok(0);
        }
        for (i, buf) in bufs.iter_mut().enumerate().take(n) {
            let h = &mut self.hdrs[i].msg_hdr;
            self.names[i] = zero_sockaddr();
            h.msg_name = (&mut self.names[i] as *mut SockName).cast();
            h.msg_namelen = mem::size_of::<SockName>() as libc::socklen_t;
            // IoSliceMut is guaranteed ABI-compatible with iovec on Unix.
            h.msg_iov = (buf as *mut IoSliceMut<'_>).cast();
            h.msg_iovlen = 1;
            h.msg_control = (&mut self.recv_control[i] as *mut RecvControl).cast();
            h.msg_controllen = mem::size_of::<RecvControl>() as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header i < n points at live storage: names and control buffers owned by
        // self, and the iovec bufs[i] borrowed mutably for this call, so the kernel may write
        // through them; n does not exceed any of the arrays.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for (i, m) in meta.iter_mut().enumerate().take(r) {
            let h = &self.hdrs[i].msg_hdr;
            let (src, src_port) = from_sockaddr(&self.names[i]);
            *m = RecvMeta {
                len: self.hdrs[i].msg_len as usize,
                src,
                src_port,
                gro_segment: gro_segment(h),
                truncated: h.msg_flags & libc::MSG_TRUNC != 0,
            };
        }
        Ok(r)
    }
}

/// The UDP_GRO segment size among the control messages the kernel returned in `h`.
fn gro_segment(h: &libc::msghdr) -> Option<u16> {
    if h.msg_controllen == 0 || h.msg_control.is_null() {
        return None;
    }
    // SAFETY: h was just filled by recvmmsg: msg_control points at our RecvControl buffer and
    // msg_controllen is the length the kernel wrote (<= the buffer), which is what the CMSG_*
    // walkers require; they never step past msg_control + msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return u16::try_from(v).ok().filter(|s| *s > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Messages being assembled for one `sendmmsg` call.
pub(crate) struct SendBatch<'m, 'a> {
    m: &'m mut Mmsg,
    len: usize,
    _iov: PhantomData<&'a [IoSlice<'a>]>,
}

impl<'a> SendBatch<'_, 'a> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds a message to `dst` made of `iov`, with `opt`: a UDP GSO segment size (the kernel
    /// splits the payload into datagrams of that size) or an IPv6 traffic class. False when
    /// the batch is full.
    pub(crate) fn push(
        &mut self,
        dst: impl Into<SocketAddr>,
        iov: &'a [IoSlice<'a>],
        opt: SendOpt,
    ) -> bool {
        let i = self.len;
        if i >= self.m.hdrs.len() {
            return false;
        }
        let (name, namelen) = to_sockaddr(dst.into());
        self.m.names[i] = name;
        let ctl = &mut self.m.send_control[i];
        let h = &mut self.m.hdrs[i].msg_hdr;
        h.msg_name = (&mut self.m.names[i] as *mut SockName).cast();
        h.msg_namelen = namelen;
        // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel only reads it.
        h.msg_iov = iov.as_ptr() as *mut libc::iovec;
        h.msg_iovlen = iov.len() as _;
        let control = match opt {
            SendOpt::None => None,
            SendOpt::Segment(0) => None,
            SendOpt::Segment(size) => Some((libc::SOL_UDP, libc::UDP_SEGMENT, 2, {
                let mut d = [0u8; 8];
                d[..2].copy_from_slice(&size.to_ne_bytes());
                d
            })),
            SendOpt::TrafficClass(tc) => Some((libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 4, {
                let mut d = [0u8; 8];
                d[..4].copy_from_slice(&libc::c_int::from(tc).to_ne_bytes());
                d
            })),
        };
        if let Some((level, kind, bytes, data)) = control {
            // SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic on the length.
            let (len, space) = unsafe { (libc::CMSG_LEN(bytes), libc::CMSG_SPACE(bytes)) };
            debug_assert!(space as usize <= mem::size_of::<SendControl>());
            ctl.hdr.cmsg_len = len as _;
            ctl.hdr.cmsg_level = level;
            ctl.hdr.cmsg_type = kind;
            ctl.data = data;
            h.msg_control = (ctl as *mut SendControl).cast();
            h.msg_controllen = space as _;
        } else {
            h.msg_control = ptr::null_mut();
            h.msg_controllen = 0;
        }
        h.msg_flags = 0;
        self.len += 1;
        true
    }

    /// Sends messages `start..` in one call; returns how many the kernel took (it stops at the
    /// first failing message and reports that failure only when it is the first one).
    pub(crate) fn send(&mut self, fd: BorrowedFd<'_>, start: usize) -> io::Result<usize> {
        if start >= self.len {
            return Ok(0);
        }
        // SAFETY: headers start..len were filled by push(): their names and control blocks
        // live in self.m, their iovecs are borrowed for 'a, which outlives this batch; the
        // kernel only reads them (and writes msg_len inside the headers themselves).
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.m.hdrs.as_mut_ptr().add(start),
                (self.len - start) as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn sends_and_receives_batches_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = rx.local_addr().unwrap();
        let a = [1u8; 100];
        let b = [2u8; 100];
        let c = [3u8; 40];
        let one = [IoSlice::new(&a)];
        // Two 100-byte segments then a 40-byte tail: three datagrams with GSO.
        let gso = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let mut m = Mmsg::new(8);
        let mut batch = m.send_batch();
        assert!(batch.push(dst, &one, SendOpt::None));
        assert!(batch.push(dst, &gso, SendOpt::Segment(100)));
        assert_eq!(batch.send(tx.as_fd(), 0).unwrap(), 2);

        let mut bufs = vec![vec![0u8; 2048]; 8];
        let mut meta = vec![RecvMeta::default(); 8];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut r = Mmsg::new(8);
        while got.len() < 4 && std::time::Instant::now() < deadline {
            let mut iovs: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match r.recv(rx.as_fd(), &mut iovs, &mut meta) {
                Ok(n) => got.extend(meta[..n].iter().copied()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        let lens: Vec<usize> = got.iter().map(|m| m.len).collect();
        assert_eq!(lens, vec![100, 100, 100, 40]);
        assert!(
            got.iter()
                .all(|m| m.src == IpAddr::V4(Ipv4Addr::LOCALHOST) && !m.truncated)
        );
    }
}
