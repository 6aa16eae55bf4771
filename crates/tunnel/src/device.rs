//! The TUN device: create or re-attach, make persistent, one file descriptor per queue.
//!
//! The device is created with `IFF_MULTI_QUEUE | IFF_VNET_HDR` and made persistent
//! (`TUNSETPERSIST`), so it — and the routes the agent put on it — outlive the process. A new
//! process attaching to the same name with the same flags gets the same device back: the
//! kernel keeps the interface (carrier down while no queue is attached, so packets routed to it
//! meanwhile are dropped, and TCP retransmits them once we are back).

use std::io;

use tun_rs::{DeviceBuilder, SyncDevice};

use crate::TunnelError;

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const MAX_NAME: usize = 15;

pub(crate) fn check_name(name: &str) -> Result<(), TunnelError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(TunnelError::Config(format!(
            "invalid device name {name:?}: 1-{MAX_NAME} printable characters without '/' or ':'"
        )))
    }
}

/// Opens `queues` queues of the TUN device `name` in the calling thread's namespace, creating it
/// when missing; sets MTU, up, persistent. The first element says whether offloads (virtio
/// header, TSO) are on: they are unless the kernel refuses them. With `ipv6` the device
/// carries IPv6 too, still without addresses of its own.
pub(crate) fn open(
    name: &str,
    mtu: u32,
    queues: usize,
    ipv6: bool,
) -> Result<(Vec<SyncDevice>, bool), TunnelError> {
    let mtu16 = u16::try_from(mtu)
        .ok()
        .filter(|m| *m >= 68)
        .ok_or_else(|| TunnelError::Config(format!("mtu {mtu} outside 68..=65535")))?;
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(name)
            .mtu(mtu16)
            .offload(offload)
            .multi_queue(true)
            .build_sync()
    };
    let first = match build(true) {
        Ok(d) => d,
        // Kernels without TUNSETOFFLOAD support for our flags: run without TSO.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            build(false).map_err(|e| io_err(format!("open TUN device {name}"), e))?
        }
        Err(e) => return Err(io_err(format!("open TUN device {name}"), e)),
    };
    first
        .persist()
        .map_err(|e| io_err(format!("make {name} persistent"), e))?;
    // Before the device goes up: otherwise the kernel gives it an IPv6 link-local address and
    // sends router solicitations into it. A dual-stack device needs IPv6 on, but no
    // link-local address (addr_gen_mode 1: none), so the kernel sends nothing of its own.
    let conf = format!("net/ipv6/conf/{name}");
    if ipv6 {
        twill_netlink::sysctl::set(&format!("{conf}/addr_gen_mode"), "1")
            .and_then(|()| twill_netlink::sysctl::set(&format!("{conf}/disable_ipv6"), "0"))
            .map_err(|e| TunnelError::Config(format!("enable IPv6 on {name}: {e}")))?;
    } else {
        let _ = twill_netlink::sysctl::set(&format!("{conf}/disable_ipv6"), "1");
    }
    first
        .enabled(true)
        .map_err(|e| io_err(format!("set {name} up"), e))?;
    let offload = first.tcp_gso();
    let mut devices = vec![first];
    for _ in 1..queues {
        let q = devices[0]
            .try_clone()
            .map_err(|e| io_err(format!("open another queue of {name}"), e))?;
        devices.push(q);
    }
    for d in &devices {
        d.set_nonblocking(true)
            .map_err(|e| io_err(format!("set {name} non-blocking"), e))?;
    }
    Ok((devices, offload))
}

/// Removes the persistent device `name` from the calling thread's namespace, after checking
/// that it is a multi-queue TUN device (attaching with our flags only works on one).
pub(crate) fn delete(name: &str) -> Result<(), TunnelError> {
    check_name(name)?;
    let mut handle = twill_netlink::Handle::new()?;
    let Some(link) = handle.link_by_name(name)? else {
        return Ok(());
    };
    let probe = DeviceBuilder::new()
        .name(name)
        .multi_queue(true)
        .build_sync()
        .map_err(|e| {
            TunnelError::Config(format!(
                "{name} exists but is not a multi-queue TUN device twill could have made ({e}); not deleting it"
            ))
        })?;
    drop(probe);
    match handle.delete_link(link.index) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn io_err(op: String, source: io::Error) -> TunnelError {
    TunnelError::Io { op, source }
}
