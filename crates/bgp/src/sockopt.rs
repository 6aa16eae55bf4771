//! Session protection at the socket: TCP-MD5 signatures (RFC 2385) and the TTL security
//! hack, GTSM (RFC 5082).
//!
//! This is the crate's only `unsafe` code: `TCP_MD5SIG` takes a `struct tcp_md5sig` that
//! neither libc, nix nor socket2 define, and `TCP_SAVED_SYN` / `IP_MINTTL` have no safe
//! wrapper. Every call passes a pointer to a value that lives across the call and its size.
//!
//! - MD5: a key is per remote address. On a listener, it makes the kernel drop every
//!   segment from that address that is not signed with the key (an unsigned SYN never
//!   becomes a connection, so it never reaches the speaker); connections accepted from that
//!   address inherit the key. On an outgoing socket it is set before `connect`.
//! - GTSM: we send with TTL (hop limit) 255 and require 255 on what we receive: a packet that
//!   crossed a router, or came from a pod behind the node, arrives with 254 or less. Linux's
//!   `IP_MINTTL` is per socket, not per address, so the listener cannot require it for some
//!   peers only: it keeps a copy of every SYN (`TCP_SAVE_SYN`) and the speaker checks the
//!   SYN's TTL of a connection from a GTSM peer before it is used, then sets `IP_MINTTL`
//!   on the accepted socket for the rest of the connection.

#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

/// The longest TCP-MD5 key Linux takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY_LEN: usize = 80;

/// The TTL a GTSM peer sends and the least we accept from one (RFC 5082: a directly
/// connected peer, no router in between).
pub const GTSM_TTL: u8 = 255;

/// Linux's `struct tcp_md5sig` (include/uapi/linux/tcp.h).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_KEY_LEN],
}

fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: `v` points to a live, initialized T of the size we pass.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sock`'s address family: IPv6 sockets take IPv4 peers as IPv4-mapped addresses.
fn is_v6_socket(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let s = socket2::SockRef::from(&fd);
    Ok(s.local_addr()?.is_ipv6())
}

fn storage_of(addr: IpAddr, v6_socket: bool) -> libc::sockaddr_storage {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let addr = match addr {
        IpAddr::V4(a) if v6_socket => IpAddr::V6(a.to_ipv6_mapped()),
        a => a,
    };
    match addr {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

/// Sets (`Some`) or removes (`None`) the TCP-MD5 key for segments to and from `peer` on a
/// TCP socket (listening or about to connect). Removing a key that is not there is no error.
pub fn set_md5_key(sock: &impl AsRawFd, peer: IpAddr, key: Option<&[u8]>) -> io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `sock`).
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let key = key.unwrap_or_default();
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a TCP-MD5 key is at most {MAX_KEY_LEN} bytes"),
        ));
    }
    let mut sig = TcpMd5Sig {
        addr: storage_of(peer, is_v6_socket(fd)?),
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    match setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig) {
        // Deleting a key that was never set.
        Err(e) if key.is_empty() && e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// GTSM on a connected or connecting socket: send with TTL 255, drop what arrives with less.
pub fn set_gtsm(sock: &impl AsRawFd, v6: bool) -> io::Result<()> {
    // SAFETY: as in `set_md5_key`.
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let ttl = libc::c_int::from(GTSM_TTL);
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl)?;
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &ttl)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl)?;
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &ttl)
    }
}

/// The socket's `IP_MINTTL` (0: none).
pub fn min_ttl(sock: &impl AsRawFd) -> io::Result<u8> {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` live across the call and `len` is v's size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MINTTL,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.clamp(0, 255) as u8)
}

/// Sets up a listener for GTSM peers: it keeps each connection's SYN, for [`syn_ttl`], and
/// answers with TTL 255 (a GTSM peer that connects drops a SYN-ACK with less, so a listener
/// that serves any GTSM peer must send 255 to all; BIRD's does the same).
pub fn set_listener_gtsm(sock: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: as in `set_md5_key`.
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let one: libc::c_int = 1;
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, &one)?;
    let ttl = libc::c_int::from(GTSM_TTL);
    if is_v6_socket(fd)? {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl)
    }
}

/// What the SYN that opened an accepted connection carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynInfo {
    /// Its TTL (hop limit).
    pub ttl: u8,
    /// It was signed (TCP option 19, RFC 2385).
    pub md5: bool,
}

/// The SYN of an accepted connection, from the copy a listener with [`set_listener_gtsm`]
/// kept. The copy is handed out once.
pub fn saved_syn(sock: &impl AsRawFd) -> io::Result<SynInfo> {
    let mut buf = [0u8; 512];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` and `len` live across the call and `len` is buf's size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SAVED_SYN,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    parse_syn(&buf[..(len as usize).min(buf.len())]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no saved SYN for this connection",
        )
    })
}

/// IP and TCP headers of a SYN → its TTL and whether it carries an MD5 signature.
fn parse_syn(hdr: &[u8]) -> Option<SynInfo> {
    let (ttl, tcp) = match hdr.first()? >> 4 {
        4 => {
            let ihl = usize::from(hdr[0] & 0x0f) * 4;
            (*hdr.get(8)?, hdr.get(ihl..)?)
        }
        // No extension headers before TCP in a SYN we accept (next header 6).
        6 if *hdr.get(6)? == 6 => (*hdr.get(7)?, hdr.get(40..)?),
        _ => return None,
    };
    let doff = usize::from(*tcp.get(12)? >> 4) * 4;
    let mut opts = tcp.get(20..doff)?;
    let mut md5 = false;
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break,
            1 => opts = &opts[1..],
            _ => {
                let l = usize::from(*opts.get(1)?);
                if l < 2 || l > opts.len() {
                    break;
                }
                md5 |= kind == 19;
                opts = &opts[l..];
            }
        }
    }
    Some(SynInfo { ttl, md5 })
}

/// The TTL (hop limit) of the SYN that opened an accepted connection (see [`saved_syn`]).
pub fn syn_ttl(sock: &impl AsRawFd) -> io::Result<u8> {
    saved_syn(sock).map(|s| s.ttl)
}

/// Checks an accepted connection from `from` against its peer's protections, by its SYN:
/// signed when the peer has a password (a connection whose handshake finished before the
/// listener had the key is not), TTL 255 under GTSM (then the rest of the connection is held
/// to it with `IP_MINTTL`). `Ok(Some(why))`: drop it.
pub fn check_accepted(
    sock: &impl AsRawFd,
    from: SocketAddr,
    md5: bool,
    gtsm: bool,
) -> io::Result<Option<&'static str>> {
    let syn = saved_syn(sock)?;
    if md5 && !syn.md5 {
        return Ok(Some("its SYN was not signed (TCP-MD5)"));
    }
    if gtsm {
        if syn.ttl < GTSM_TTL {
            return Ok(Some(
                "its SYN came with a TTL below 255 (ttl security: the peer is directly connected)",
            ));
        }
        set_gtsm(sock, from.is_ipv6() && !from.ip().to_canonical().is_ipv4())?;
    }
    Ok(None)
}

/// Whether an accepted connection from `from` passes GTSM: its SYN came with TTL 255. Then
/// the rest of the connection is held to it.
pub fn gtsm_accept(sock: &impl AsRawFd, from: SocketAddr) -> io::Result<bool> {
    check_accepted(sock, from, false, true).map(|why| why.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_headers() {
        // IPv4, TTL 255, TCP with MSS, NOP, NOP, MD5 (18 bytes), doff 11 words = 44 bytes.
        let mut ip = vec![0x45, 0, 0, 64, 0, 0, 0x40, 0, 255, 6, 0, 0];
        ip.extend([0u8; 8]);
        let mut tcp = vec![0u8; 12];
        tcp.push(11 << 4);
        tcp.extend([0x02, 0, 0, 0, 0, 0, 0]);
        tcp.extend([2, 4, 5, 0xb4, 1, 1, 19, 18]);
        tcp.extend([0u8; 16]);
        let syn: Vec<u8> = ip.iter().chain(&tcp).copied().collect();
        assert_eq!(
            parse_syn(&syn),
            Some(SynInfo {
                ttl: 255,
                md5: true
            })
        );
        // The same without the signature (doff 6: MSS only).
        let mut plain = syn[..44].to_vec();
        plain[20 + 12] = 6 << 4;
        plain[8] = 63;
        assert_eq!(
            parse_syn(&plain),
            Some(SynInfo {
                ttl: 63,
                md5: false
            })
        );
        assert_eq!(parse_syn(&[]), None);
        assert_eq!(parse_syn(&syn[..30]), None);
    }
}
