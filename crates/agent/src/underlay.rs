//! Finding the node's underlay: the interface, address and prefix peers reach it at (IPv4),
//! and the interface's IPv6 address for a dual-stack cluster.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_netlink::Handle;

/// The node's underlay link and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub iface: String,
    /// Address with the prefix of the underlay subnet.
    pub net: Ipv4Net,
    pub mtu: u32,
}

/// Finds the underlay from `--iface`, `--public-ip`, or else the default route's interface.
pub fn discover(iface: Option<&str>, public_ip: Option<Ipv4Addr>) -> anyhow::Result<Underlay> {
    let mut nl = Handle::new().context("opening a netlink socket")?;
    let link = match (iface, public_ip) {
        (Some(name), _) => nl
            .link_by_name(name)?
            .with_context(|| format!("--iface {name}: no such interface"))?,
        (None, Some(ip)) => {
            let mut found = None;
            for link in nl.links()? {
                if nl.addresses(link.index)?.iter().any(|a| a.addr() == ip) {
                    found = Some(link);
                    break;
                }
            }
            found.with_context(|| format!("--public-ip {ip}: no interface holds this address"))?
        }
        (None, None) => {
            let index = nl
                .route_lookup(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)))?
                .context("no default route: give --iface or --public-ip")?;
            nl.link_by_index(index)?
                .context("the default route's interface vanished")?
        }
    };
    let v4: Vec<Ipv4Net> = nl
        .addresses(link.index)?
        .into_iter()
        .filter_map(|a| match a {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
        .collect();
    let net = match public_ip {
        Some(ip) => v4.iter().find(|n| n.addr() == ip).copied(),
        None => v4.first().copied(),
    };
    let Some(net) = net else {
        bail!("interface {} has no IPv4 address", link.name);
    };
    Ok(Underlay {
        iface: link.name,
        net,
        mtu: link.mtu,
    })
}

/// The IPv6 underlay address (with its prefix) of interface `iface`: `--public-ipv6` if given
/// (an error when the interface lacks it), else its first global address that is usable
/// (neither link-local nor deprecated, tentative or failed duplicate address detection); None
/// when it has none, and the node has no IPv6 underlay.
pub fn ipv6_of(iface: &str, public_ipv6: Option<Ipv6Addr>) -> anyhow::Result<Option<Ipv6Net>> {
    // The netlink client reports no address flags; this file does, for the netns of the
    // calling thread (the thread's, not the process's: tests run this in a namespace thread).
    const PATH: &str = "/proc/thread-self/net/if_inet6";
    let table = match std::fs::read_to_string(PATH) {
        Ok(table) => table,
        // No IPv6 in this kernel or namespace (disabled): no IPv6 underlay.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && public_ipv6.is_none() => {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {PATH}")),
    };
    let addrs: Vec<If6Addr> = table.lines().filter_map(If6Addr::parse).collect();
    let on_iface = addrs.iter().filter(|a| a.iface == iface);
    match public_ipv6 {
        Some(ip) => match on_iface.clone().find(|a| a.net.addr() == ip) {
            Some(a) => Ok(Some(a.net)),
            None => bail!("--public-ipv6 {ip}: interface {iface} does not hold this address"),
        },
        None => Ok(on_iface.filter(|a| a.usable_global()).map(|a| a.net).next()),
    }
}

/// One line of `/proc/net/if_inet6`: address, link index, prefix length, scope, flags and
/// link name (all numbers in hex).
#[derive(Debug, Clone, PartialEq, Eq)]
struct If6Addr {
    net: Ipv6Net,
    scope: u8,
    flags: u8,
    iface: String,
}

/// `RT_SCOPE_UNIVERSE` (a global address).
const SCOPE_GLOBAL: u8 = 0;
/// `IFA_F_DADFAILED`, `IFA_F_DEPRECATED`, `IFA_F_TENTATIVE`: an address not to announce.
const UNUSABLE_FLAGS: u8 = 0x08 | 0x20 | 0x40;

impl If6Addr {
    fn parse(line: &str) -> Option<If6Addr> {
        let mut fields = line.split_whitespace();
        let addr = u128::from_str_radix(fields.next()?, 16).ok()?;
        let _index = fields.next()?;
        let prefix = u8::from_str_radix(fields.next()?, 16).ok()?;
        let scope = u8::from_str_radix(fields.next()?, 16).ok()?;
        let flags = u8::from_str_radix(fields.next()?, 16).ok()?;
        let iface = fields.next()?.to_string();
        Some(If6Addr {
            net: Ipv6Net::new(Ipv6Addr::from(addr), prefix).ok()?,
            scope,
            flags,
            iface,
        })
    }

    fn usable_global(&self) -> bool {
        self.scope == SCOPE_GLOBAL && self.flags & UNUSABLE_FLAGS == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_inet6_lines_parse_and_only_usable_global_addresses_count() {
        let table = "\
fe80000000000000024a0cfffe2f1b11 02 40 20 80     eth0
fd000000000000000000000000000009 02 40 00 a0     eth0
fd000000000000000000000000000007 02 40 00 c0     eth0
fd000000000000000000000000000005 02 40 00 88     eth0
20010db8000000010000000000000002 02 40 00 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
garbage
";
        let addrs: Vec<If6Addr> = table.lines().filter_map(If6Addr::parse).collect();
        assert_eq!(addrs.len(), 6);
        assert_eq!(addrs[0].net.to_string(), "fe80::24a:cff:fe2f:1b11/64");
        assert_eq!(addrs[5].iface, "lo");
        let usable: Vec<String> = addrs
            .iter()
            .filter(|a| a.usable_global())
            .map(|a| a.net.to_string())
            .collect();
        // Link-local, deprecated (0x20), tentative (0x40), DAD failed (0x08) and loopback
        // (host scope) are skipped.
        assert_eq!(usable, ["2001:db8:0:1::2/64"]);
    }
}
