//! What the backend tests share: the local node (IPv4 only or dual-stack), leases, and the golden-file check
//! (`tests/golden/`; `TWILL_BLESS=1` rewrites the files).

#![allow(dead_code)]

use ipnet::{Ipv4Net, Ipv6Net};
use twill_backend::LocalNode;
use twill_backend::vxlan::{vtep_mac, vtep_mac6};
use twill_types::cluster::BackendKind;
use twill_types::desired::DesiredState;
use twill_types::lease::Lease;

pub fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// The node the tests compute desired states for: node-a, 192.168.1.10 on eth0.
pub fn node() -> LocalNode {
    LocalNode {
        name: "node-a".into(),
        subnet: Some(net("10.244.1.0/24")),
        public_net: Some(net("192.168.1.10/24")),
        underlay_dev: "eth0".into(),
        underlay_mtu: 1500,
        subnet6: None,
        public_net6: None,
    }
}

/// A peer's lease; vxlan peers get their VTEP MAC, `wireguard_key` is published as is.
pub fn lease(
    name: &str,
    subnet: &str,
    public: &str,
    backend: BackendKind,
    wireguard_key: Option<String>,
) -> Lease {
    Lease {
        node: name.into(),
        subnet: Some(net(subnet)),
        public_net: Some(net(public)),
        backend,
        vtep_mac: (backend == BackendKind::Vxlan).then(|| vtep_mac(name, 1)),
        wireguard_public_key: wireguard_key,
        subnet6: None,
        public_net6: None,
        vtep_mac6: None,
    }
}

pub fn golden(name: &str, state: &DesiredState) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    twill_testkit::golden_json(&dir, name, state);
}

pub fn net6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

/// The cluster's IPv6 pool in the dual-stack tests.
pub fn pools6() -> Vec<Ipv6Net> {
    vec![net6("fd00:10:244::/48")]
}

/// [`node`] in a dual-stack cluster: IPv6 subnet fd00:10:244:1::/64, and IPv6 underlay
/// address fd00:1::10/64 when `underlay6`.
pub fn node6(underlay6: bool) -> LocalNode {
    LocalNode {
        subnet6: Some(net6("fd00:10:244:1::/64")),
        public_net6: underlay6.then(|| net6("fd00:1::10/64")),
        ..node()
    }
}

/// A dual-stack peer's lease: [`lease`] plus its IPv6 subnet, IPv6 underlay address (if any)
/// and, for vxlan, its IPv6 VTEP MAC.
pub fn lease6(
    name: &str,
    subnet: &str,
    public: &str,
    backend: BackendKind,
    subnet6: &str,
    public6: Option<&str>,
) -> Lease {
    Lease {
        subnet6: Some(net6(subnet6)),
        public_net6: public6.map(net6),
        vtep_mac6: (backend == BackendKind::Vxlan).then(|| vtep_mac6(name, 1)),
        ..lease(name, subnet, public, backend, None)
    }
}

/// (dst, via, dev, onlink) of every route, as text.
pub fn routes(state: &DesiredState) -> Vec<String> {
    state
        .routes
        .iter()
        .map(|r| {
            format!(
                "{} via {} dev {}{}",
                r.dst,
                r.via,
                r.dev,
                if r.onlink { " onlink" } else { "" }
            )
        })
        .collect()
}
