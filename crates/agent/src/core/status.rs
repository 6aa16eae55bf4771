//! The peers part of status.json: each peer of the desired state, and whether the kernel
//! holds everything it needs (from the reconcile's outcome), with the kernel's reasons.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
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
            let error = match (&p.path, &outcome.failed) {
                (PeerPath::Skipped(_), _) => None,
                (_, Some(_)) => Some("the kernel state could not be read".to_string()),
                (PeerPath::Bgp, None) if !index.routes.contains_key(&IpNet::V4(p.subnet)) => {
                    Some("no route learned by BGP yet".to_string())
                }
                (_, None) => index.missing_for_peer(p.subnet).map(|missing| {
                    with_kernel_reasons(missing, &index.keys_of_peer(p.subnet), &index.refused)
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

    /// The reconciler's names of a peer's route, neighbour and FDB entry.
    fn keys_of_peer(&self, subnet: Ipv4Net) -> Vec<ObjectRef> {
        let mut keys = vec![ObjectRef::Route(subnet.into())];
        for neigh in self
            .neighbours
            .get(&IpAddr::V4(subnet.network()))
            .into_iter()
            .flatten()
        {
            keys.push(ObjectRef::Neighbour(neigh.ip));
            keys.push(ObjectRef::Fdb(neigh.mac));
        }
        keys
    }

    /// What the kernel lacks of a peer's desired route, neighbour and FDB entry.
    fn missing_for_peer(&self, subnet: Ipv4Net) -> Option<String> {
        let mut missing = Vec::new();
        for route in self.routes.get(&IpNet::V4(subnet)).into_iter().flatten() {
            if self.missing.contains(&Missing::Route {
                dst: route.dst,
                via: route.via,
            }) {
                missing.push(format!("route {} via {}", route.dst, route.via));
            }
        }
        for neigh in self
            .neighbours
            .get(&IpAddr::V4(subnet.network()))
            .into_iter()
            .flatten()
        {
            if self.missing.contains(&Missing::Neighbour { ip: neigh.ip }) {
                missing.push(format!("neighbour {}", neigh.ip));
            }
            for fdb in self.fdb.get(&neigh.mac).into_iter().flatten() {
                if self.missing.contains(&Missing::Fdb {
                    mac: fdb.mac,
                    dst: fdb.dst,
                }) {
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
