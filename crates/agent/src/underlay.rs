//! Finding the node's underlay: the interface, address and prefix peers reach it at (IPv4),
//! and the interface's IPv6 address for a dual-stack cluster; for an IPv6-only cluster the
//! interface and its IPv6 address alone ([`discover6`]).

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
    let link = find_link(
        &mut nl,
        iface,
        public_ip.map(IpAddr::V4),
        IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
    )?;
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

/// The underlay link of `--iface`, else the one holding `--public-ip(v6)` (`public_ip`), else
/// the interface of the default route (the route to `probe`).
fn find_link(
    nl: &mut Handle,
    iface: Option<&str>,
    public_ip: Option<IpAddr>,
    probe: IpAddr,
) -> anyhow::Result<twill_netlink::Link> {
    let flag = if probe.is_ipv4() {
        "--public-ip"
    } else {
        "--public-ipv6"
    };
    Ok(match (iface, public_ip) {
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
            found.with_context(|| format!("{flag} {ip}: no interface holds this address"))?
        }
        (None, None) => {
            let index = nl
                .route_lookup(probe)?
                .with_context(|| format!("no default route: give --iface or {flag}"))?;
            nl.link_by_index(index)?
                .context("the default route's interface vanished")?
        }
    })
}

/// The underlay of a node of an IPv6-only cluster: only IPv6 (no IPv4 address needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay6 {
    pub iface: String,
    /// `--public-ipv6`, or the interface's first usable global IPv6 address, with its prefix.
    pub net6: Ipv6Net,
    pub mtu: u32,
}

/// Finds the IPv6-only underlay from `--iface`, `--public-ipv6`, or else the interface of the
/// IPv6 default route.
pub fn discover6(iface: Option<&str>, public_ipv6: Option<Ipv6Addr>) -> anyhow::Result<Underlay6> {
    let mut nl = Handle::new().context("opening a netlink socket")?;
    let probe = IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888));
    let link = find_link(&mut nl, iface, public_ipv6.map(IpAddr::V6), probe)?;
    let Some(net6) = ipv6_of(&link.name, public_ipv6)? else {
        bail!(
            "interface {} has no usable global IPv6 address (an IPv6-only cluster's nodes \
             need one)",
            link.name
        );
    };
    Ok(Underlay6 {
        iface: link.name,
        net6,
        mtu: link.mtu,
    })
}

/// The IPv6 underlay address (with its prefix) of interface `iface`: `--public-ipv6` if given
/// (an error when the interface lacks it), else its first global address that is usable
/// (neither link-local nor deprecated, tentative or failed duplicate address detection); None
/// when it has none, and the node has no IPv6 underlay.
pub fn ipv6_of(iface: &str, public_ipv6: Option<Ipv6Addr>) -> anyhow::Result<Option<Ipv6Net>> {
    // A netlink socket answers for the namespace of the thread that opens it (tests run this
    // in a namespace thread).
    let mut nl = Handle::new().context("opening a netlink socket")?;
    let link = nl
        .link_by_name(iface)
        .with_context(|| format!("looking up interface {iface}"))?
        .with_context(|| format!("no interface {iface}"))?;
    match public_ipv6 {
        Some(ip) => nl
            .addresses(link.index)?
            .into_iter()
            .find_map(|a| match a {
                IpNet::V6(net) if net.addr() == ip => Some(Some(net)),
                _ => None,
            })
            .with_context(|| {
                format!("--public-ipv6 {ip}: interface {iface} does not hold this address")
            }),
        None => Ok(nl.usable_global_ipv6(link.index)?.into_iter().next()),
    }
}
