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

/// The TTL (hop limit) of the SYN that opened an accepted connection, from the copy a
/// listener with [`set_listener_gtsm`] kept. The copy is handed out once.
pub fn syn_ttl(sock: &impl AsRawFd) -> io::Result<u8> {
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
    let hdr = &buf[..(len as usize).min(buf.len())];
    match hdr.first().map(|b| b >> 4) {
        // IPv4: TTL at byte 8; IPv6: hop limit at byte 7.
        Some(4) if hdr.len() >= 20 => Ok(hdr[8]),
        Some(6) if hdr.len() >= 40 => Ok(hdr[7]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no saved SYN for this connection",
        )),
    }
}

/// Whether an accepted connection from `from` passes GTSM: its SYN came with TTL 255. Then
/// the rest of the connection is held to it.
pub fn gtsm_accept(sock: &impl AsRawFd, from: SocketAddr) -> io::Result<bool> {
    let ttl = syn_ttl(sock)?;
    if ttl < GTSM_TTL {
        return Ok(false);
    }
    set_gtsm(sock, from.is_ipv6() && !from.ip().to_canonical().is_ipv4())?;
    Ok(true)
}
