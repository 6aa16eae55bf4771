//! The peers part of status.json: each peer of the desired state, and whether the kernel
//! holds everything it needs (from the reconcile's outcome), with the kernel's reasons. In a
//! dual-stack cluster a peer's IPv6 objects count too when its IPv6 part is programmed; when
//! it is skipped, `path6` says why (and `programmed` speaks of what is planned).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use twill_types::MacAddr;
use twill_types::desired::{DesiredState, FdbSpec, NeighSpec, PeerPath, RouteSpec};
use twill_types::node::PeerStatus;

use super::event::{Missing, ObjectRef, ReconcileOutcome, Refused};

/// Each peer of `desired`, and whether the kernel holds everything it needs. A peer that
/// misses an object the reconciler keeps retrying says why the kernel refused it.
pub fn peer_status(desired: &DesiredState, outcome: &ReconcileOutcome) -> Vec<PeerStatus> {
    let index = Index::new(desired, outcome);
    desired
        .peers
        .iter()
        .map(|p| {
            // The peer's subnets whose objects are planned: IPv4 (unless skipped, when
            // nothing is looked at) and IPv6 when its IPv6 part is programmed.
            let subnets: Vec<IpNet> = (p.subnet.map(IpNet::V4).into_iter())
                .chain(p.subnet6.map(IpNet::V6))
                .collect();
            let error = match (&p.path, &outcome.failed) {
                (PeerPath::Skipped(_), _) => None,
                (_, Some(_)) => Some("the kernel state could not be read".to_string()),
                (PeerPath::Bgp, None)
                    if p.subnet
                        .is_some_and(|s| !index.routes.contains_key(&IpNet::V4(s))) =>
                {
                    Some("no route learned by BGP yet".to_string())
                }
                (_, None)
                    if p.path6 == Some(PeerPath::Bgp)
                        && p.subnet6
                            .is_some_and(|s| !index.routes.contains_key(&IpNet::V6(s))) =>
                {
                    Some("no IPv6 route learned by BGP yet".to_string())
                }
                (_, None) => index.missing_for_peer(&subnets).map(|missing| {
                    with_kernel_reasons(missing, &index.keys_of_peer(&subnets), &index.refused)
                }),
            };
            PeerStatus {
                node: p.node.clone(),
                subnet: p.subnet,
                public_ip: p.public_ip,
                programmed: !matches!(p.path, PeerPath::Skipped(_)) && error.is_none(),
                path: p.path.clone(),
                error,
                counters: None,
                wireguard: None,
                subnet6: p.subnet6,
                path6: p.path6.clone(),
            }
        })
        .collect()
}

/// The desired state and the outcome indexed for per-peer lookups, so a status of N peers
/// costs O(N).
struct Index<'a> {
    routes: HashMap<IpNet, Vec<&'a RouteSpec>>,
    neighbours: HashMap<IpAddr, Vec<&'a NeighSpec>>,
    fdb: HashMap<MacAddr, Vec<&'a FdbSpec>>,
    missing: HashSet<&'a Missing>,
    refused: HashMap<&'a ObjectRef, &'a Refused>,
}

impl<'a> Index<'a> {
    fn new(desired: &'a DesiredState, outcome: &'a ReconcileOutcome) -> Index<'a> {
        let mut index = Index {
            routes: HashMap::new(),
            neighbours: HashMap::new(),
            fdb: HashMap::new(),
            missing: outcome.missing.iter().collect(),
            refused: outcome.refused.iter().map(|r| (&r.object, r)).collect(),
        };
        for r in &desired.routes {
            index.routes.entry(r.dst).or_default().push(r);
        }
        for n in &desired.neighbours {
            index.neighbours.entry(n.ip).or_default().push(n);
        }
        for f in &desired.fdb {
            index.fdb.entry(f.mac).or_default().push(f);
        }
        index
    }

    /// The neighbours (VXLAN gateways) of a peer's subnets.
    fn neighbours_of<'s>(
        &'s self,
        subnets: &'s [IpNet],
    ) -> impl Iterator<Item = &'a NeighSpec> + 's {
        subnets
            .iter()
            .filter_map(|subnet| self.neighbours.get(&subnet.network()))
            .flatten()
            .copied()
    }

    /// The reconciler's names of a peer's routes, neighbours and FDB entries (of each of its
    /// `subnets`: IPv4, and IPv6 when programmed).
    fn keys_of_peer(&self, subnets: &[IpNet]) -> Vec<ObjectRef> {
        let mut keys: Vec<ObjectRef> = subnets.iter().map(|s| ObjectRef::Route(*s)).collect();
        for neigh in self.neighbours_of(subnets) {
            keys.push(ObjectRef::Neighbour(neigh.ip));
            if !keys.contains(&ObjectRef::Fdb(neigh.mac)) {
                keys.push(ObjectRef::Fdb(neigh.mac));
            }
        }
        keys
    }

    /// What the kernel lacks of a peer's desired routes, neighbours and FDB entries (an FDB
    /// entry both families share is named once).
    fn missing_for_peer(&self, subnets: &[IpNet]) -> Option<String> {
        let mut missing = Vec::new();
        for route in subnets
            .iter()
            .filter_map(|subnet| self.routes.get(subnet))
            .flatten()
        {
            if self.missing.contains(&Missing::Route {
                dst: route.dst,
                via: route.via,
            }) {
                missing.push(format!("route {} via {}", route.dst, route.via));
            }
        }
        let mut fdb_seen = HashSet::new();
        for neigh in self.neighbours_of(subnets) {
            if self.missing.contains(&Missing::Neighbour { ip: neigh.ip }) {
                missing.push(format!("neighbour {}", neigh.ip));
            }
            for fdb in self.fdb.get(&neigh.mac).into_iter().flatten() {
                if self.missing.contains(&Missing::Fdb {
                    mac: fdb.mac,
                    dst: fdb.dst,
                }) && fdb_seen.insert((fdb.mac, fdb.dst))
                {
                    missing.push(format!("fdb {} dst {}", fdb.mac, fdb.dst));
                }
            }
        }
        (!missing.is_empty()).then(|| format!("missing: {}", missing.join(", ")))
    }
}

/// `missing`, followed by why the kernel refused those of `keys` (and how often).
fn with_kernel_reasons(
    missing: String,
    keys: &[ObjectRef],
    refused: &HashMap<&ObjectRef, &Refused>,
) -> String {
    let reasons: Vec<String> = keys
        .iter()
        .filter_map(|key| refused.get(key))
        .map(|r| format!("{} (attempt {}, retrying)", r.reason, r.attempts))
        .collect();
    if reasons.is_empty() {
        missing
    } else {
        format!("{missing}; refused: {}", reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_backend::vxlan::{vtep_mac, vtep_mac6};
    use twill_backend::{Backend, LocalNode, Vxlan};
    use twill_types::cluster::BackendKind;
    use twill_types::lease::Lease;

    /// A dual-stack vxlan node and two peers: node-b over the IPv6 VTEP, node-c (without an
    /// IPv6 underlay) through the IPv4 VTEP.
    fn dual_state() -> DesiredState {
        let node = LocalNode {
            name: "node-a".into(),
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            public_net: Some("192.168.1.10/24".parse().unwrap()),
            underlay_dev: "eth0".into(),
            underlay_mtu: 1500,
            subnet6: Some("fd00:10:244:1::/64".parse().unwrap()),
            public_net6: Some("fd00:1::10/64".parse().unwrap()),
        };
        let lease = |name: &str, i: u8, public6: Option<&str>| Lease {
            node: name.into(),
            subnet: Some(format!("10.244.{i}.0/24").parse().unwrap()),
            public_net: Some(format!("192.168.2.{i}/24").parse().unwrap()),
            backend: BackendKind::Vxlan,
            vtep_mac: Some(vtep_mac(name, 1)),
            wireguard_public_key: None,
            subnet6: Some(format!("fd00:10:244:{i}::/64").parse().unwrap()),
            public_net6: public6.map(|p| p.parse().unwrap()),
            vtep_mac6: Some(vtep_mac6(name, 1)),
        };
        let peers = [
            lease("node-b", 2, Some("fd00:2::2/64")),
            lease("node-c", 3, None),
        ];
        Vxlan::new(1, 8472, false)
            .unwrap()
            .with_ipv6_pools(vec!["fd00:10:244::/48".parse().unwrap()])
            .desired(&node, &peers)
    }

    /// An IPv6-only vxlan node and its peer node-b (fd00:10:244:2::/64 at fd00:1::11).
    fn ipv6_only_state() -> DesiredState {
        let node = LocalNode {
            name: "node-a".into(),
            subnet: None,
            public_net: None,
            underlay_dev: "eth0".into(),
            underlay_mtu: 1500,
            subnet6: Some("fd00:10:244:1::/64".parse().unwrap()),
            public_net6: Some("fd00:1::10/64".parse().unwrap()),
        };
        let peer = Lease {
            node: "node-b".into(),
            subnet: None,
            public_net: None,
            backend: BackendKind::Vxlan,
            vtep_mac: None,
            wireguard_public_key: None,
            subnet6: Some("fd00:10:244:2::/64".parse().unwrap()),
            public_net6: Some("fd00:1::11/64".parse().unwrap()),
            vtep_mac6: Some(vtep_mac6("node-b", 1)),
        };
        Vxlan::new(1, 8472, false)
            .unwrap()
            .with_ipv6_pools(vec!["fd00:10:244::/48".parse().unwrap()])
            .desired(&node, &[peer])
    }

    #[test]
    fn an_ipv6_only_peer_is_reported_by_its_ipv6_objects_without_ipv4_fields() {
        let desired = ipv6_only_state();
        let status = peer_status(&desired, &ReconcileOutcome::default());
        assert_eq!(status.len(), 1);
        assert!(status[0].programmed, "{status:?}");
        assert_eq!((status[0].subnet, status[0].public_ip), (None, None));
        assert_eq!(status[0].path, PeerPath::Vxlan);
        let json = serde_json::to_value(&status[0]).unwrap();
        assert!(
            json.get("subnet").is_none() && json.get("publicIp").is_none(),
            "{json}"
        );
        assert_eq!(json["subnet6"], "fd00:10:244:2::/64");

        let b6: IpNet = "fd00:10:244:2::/64".parse().unwrap();
        let outcome = ReconcileOutcome {
            missing: vec![Missing::Route {
                dst: b6,
                via: "fd00:10:244:2::".parse().unwrap(),
            }],
            ..ReconcileOutcome::default()
        };
        let status = peer_status(&desired, &outcome);
        assert!(!status[0].programmed);
        assert_eq!(
            status[0].error.as_deref(),
            Some("missing: route fd00:10:244:2::/64 via fd00:10:244:2::")
        );
    }

    #[test]
    fn a_peers_ipv6_objects_count_for_its_status() {
        let desired = dual_state();
        let all_there = peer_status(&desired, &ReconcileOutcome::default());
        assert!(all_there.iter().all(|p| p.programmed && p.error.is_none()));
        assert_eq!(
            all_there[0].subnet6,
            Some("fd00:10:244:2::/64".parse().unwrap())
        );
        assert_eq!(all_there[0].path6, Some(PeerPath::Vxlan));

        let b6: IpNet = "fd00:10:244:2::/64".parse().unwrap();
        let b_gw: IpAddr = "fd00:10:244:2::".parse().unwrap();
        let c_gw6: IpAddr = "fd00:10:244:3::".parse().unwrap();
        let c_mac = vtep_mac("node-c", 1);
        let outcome = ReconcileOutcome {
            failed: None,
            missing: vec![
                Missing::Route { dst: b6, via: b_gw },
                Missing::Neighbour { ip: c_gw6 },
                // Shared by both of node-c's families: named once.
                Missing::Fdb {
                    mac: c_mac,
                    dst: "192.168.2.3".parse().unwrap(),
                },
            ],
            refused: vec![Refused {
                object: ObjectRef::Route(b6),
                reason: "add route: Network is unreachable".into(),
                attempts: 2,
            }],
        };
        let status = peer_status(&desired, &outcome);
        assert!(!status[0].programmed);
        assert_eq!(
            status[0].error.as_deref(),
            Some(
                "missing: route fd00:10:244:2::/64 via fd00:10:244:2::; refused: add route: \
                 Network is unreachable (attempt 2, retrying)"
            )
        );
        assert!(!status[1].programmed);
        assert_eq!(
            status[1].error.as_deref(),
            Some(&*format!(
                "missing: fdb {c_mac} dst 192.168.2.3, neighbour fd00:10:244:3::"
            ))
        );
    }

    #[test]
    fn a_skipped_ipv6_part_is_reported_and_its_objects_are_not_looked_at() {
        let mut desired = dual_state();
        let plan = &mut desired.peers[0];
        plan.path6 = Some(PeerPath::Skipped("host-gw: not on this segment".into()));
        plan.subnet6 = None;
        let b6: IpNet = "fd00:10:244:2::/64".parse().unwrap();
        let outcome = ReconcileOutcome {
            missing: vec![Missing::Route {
                dst: b6,
                via: "fd00:10:244:2::".parse().unwrap(),
            }],
            ..ReconcileOutcome::default()
        };
        let status = peer_status(&desired, &outcome);
        assert!(status[0].programmed, "{:?}", status[0]);
        assert_eq!(
            status[0].path6,
            Some(PeerPath::Skipped("host-gw: not on this segment".into()))
        );
        assert_eq!(status[0].subnet6, None);
        let json = serde_json::to_string(&status[0]).unwrap();
        assert!(
            json.contains(r#""path6":{"via":"skipped","reason":"host-gw: not on this segment"}"#),
            "{json}"
        );
    }

    #[test]
    fn a_missing_object_in_error_carries_the_kernels_reason() {
        let route = ObjectRef::Route("10.244.2.0/24".parse().unwrap());
        let neighbour = ObjectRef::Neighbour("10.244.2.0".parse().unwrap());
        let refusal = Refused {
            object: route.clone(),
            reason: "add route 10.244.2.0/24 via 10.244.2.0 dev twill.1 onlink: File exists".into(),
            attempts: 3,
        };
        let refused: HashMap<&ObjectRef, &Refused> = [(&route, &refusal)].into();
        let missing = "missing: route 10.244.2.0/24 via 10.244.2.0".to_string();
        assert_eq!(
            with_kernel_reasons(
                missing.clone(),
                &[route.clone(), neighbour.clone()],
                &refused
            ),
            "missing: route 10.244.2.0/24 via 10.244.2.0; refused: add route 10.244.2.0/24 \
             via 10.244.2.0 dev twill.1 onlink: File exists (attempt 3, retrying)"
        );
        assert_eq!(
            with_kernel_reasons(missing.clone(), &[neighbour], &refused),
            missing
        );
    }
}
