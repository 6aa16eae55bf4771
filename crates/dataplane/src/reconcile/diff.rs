//! The pure part: the changes that turn what was observed into what is desired.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use twill_types::MacAddr;
use twill_types::desired::{DesiredState, FdbSpec, NeighSpec, RouteSpec, VxlanDevice};

use super::host::diff_host;
use super::model::{
    DeviceAdjust, DeviceChange, Observed, ObservedFdb, ObservedRoute, ObservedVxlan, Plan,
    is_twill_link,
};
use super::{LINK_PREFIX, LINK_PREFIX6};

/// Why an existing device cannot be adjusted into the desired one, if it cannot.
fn recreate_reason(want: &VxlanDevice, have: &ObservedVxlan) -> Option<String> {
    let mut diffs = Vec::new();
    if have.vni != want.vni {
        diffs.push(format!("vni {} -> {}", have.vni, want.vni));
    }
    if have.port != want.port {
        diffs.push(format!("port {} -> {}", have.port, want.port));
    }
    if have.local != Some(want.local) {
        let old = have.local.map_or("none".to_string(), |a| a.to_string());
        diffs.push(format!("local {old} -> {}", want.local));
    }
    if have.underlay.as_deref() != Some(want.underlay.as_str()) {
        let old = have.underlay.as_deref().unwrap_or("none");
        diffs.push(format!("underlay {old} -> {}", want.underlay));
    }
    if have.learning {
        diffs.push("learning on -> off".to_string());
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

fn adjust(want: &VxlanDevice, have: &ObservedVxlan) -> Option<DeviceAdjust> {
    let a = DeviceAdjust {
        name: want.name.clone(),
        mtu: (have.mtu != want.mtu).then_some(want.mtu),
        mac: (have.mac != Some(want.mac)).then_some(want.mac),
        add_addresses: if have.addresses.contains(&want.address) {
            Vec::new()
        } else {
            vec![want.address]
        },
        // The device is twill's, so any other address on it is a leftover (e.g. of an earlier
        // node subnet); observe leaves out the kernel's IPv6 link-local ones.
        delete_addresses: have
            .addresses
            .iter()
            .filter(|a| **a != want.address)
            .copied()
            .collect(),
        up: !have.up,
    };
    let unchanged = a.mtu.is_none()
        && a.mac.is_none()
        && a.add_addresses.is_empty()
        && a.delete_addresses.is_empty()
        && !a.up;
    (!unchanged).then_some(a)
}

/// The desired VXLAN devices twill will hold, by name, with what the plan does to them.
#[derive(Default)]
struct Devices<'a> {
    /// Each device's local address (its FDB remotes must be of that family).
    local: BTreeMap<&'a str, IpAddr>,
    /// Devices that will be (re)made, so nothing on them survives.
    fresh: BTreeSet<&'a str>,
    /// Devices whose MAC changes: the kernel flushes their neighbours (NETDEV_CHANGEADDR,
    /// permanent entries of both families included).
    flushed: BTreeSet<&'a str>,
}

impl Devices<'_> {
    fn holds(&self, dev: &str) -> bool {
        self.local.contains_key(dev)
    }
}

/// The changes that turn `observed` into `desired`. Pure: no kernel access.
pub fn diff(desired: &DesiredState, observed: &Observed) -> Plan {
    let mut plan = Plan {
        // Idle when observed: a route that this plan adds or replaces gets its own next hop
        // (the bulk writer forgets the objects it is told to delete).
        delete_nexthops: observed.idle_nexthops.clone(),
        ..Plan::default()
    };

    let mut devices = Devices::default();
    for want in desired.vxlan.iter().chain(&desired.vxlan6) {
        diff_device(want, observed, &mut devices, &mut plan);
    }
    for o in &observed.vxlan {
        if !devices.holds(&o.name) {
            plan.delete_devices.push(o.name.clone());
        }
    }

    diff_routes(desired, observed, &devices.fresh, &mut plan);
    diff_neighbours(desired, observed, &devices, &mut plan);
    diff_fdb(desired, observed, &devices, &mut plan);
    diff_host(desired, &observed.host, &mut plan);
    plan
}

/// Plans one desired VXLAN device into `plan` and records it in `devices`.
fn diff_device<'a>(
    want: &'a VxlanDevice,
    observed: &Observed,
    devices: &mut Devices<'a>,
    plan: &mut Plan,
) {
    if !is_twill_link(&want.name) {
        plan.ignored.push(format!(
            "vxlan device {}: not named {LINK_PREFIX}* or {LINK_PREFIX6}*, so twill would not \
             own it",
            want.name
        ));
        return;
    }
    if devices.holds(&want.name) {
        plan.ignored.push(format!(
            "vxlan device {}: desired twice (for IPv4 and for IPv6 pod traffic)",
            want.name
        ));
        return;
    }
    devices.local.insert(&want.name, want.local);
    match observed.vxlan.iter().find(|o| o.name == want.name) {
        None => {
            plan.devices.push(DeviceChange::Create(want.clone()));
            devices.fresh.insert(&want.name);
        }
        Some(have) => {
            if let Some(reason) = recreate_reason(want, have) {
                plan.devices.push(DeviceChange::Recreate {
                    device: want.clone(),
                    reason,
                });
                devices.fresh.insert(&want.name);
            } else if let Some(a) = adjust(want, have) {
                if a.mac.is_some() {
                    devices.flushed.insert(&want.name);
                }
                plan.devices.push(DeviceChange::Adjust(a));
            }
        }
    }
}

fn diff_routes(
    desired: &DesiredState,
    observed: &Observed,
    vanishing: &BTreeSet<&str>,
    plan: &mut Plan,
) {
    let mut want: BTreeMap<IpNet, &RouteSpec> = BTreeMap::new();
    for r in &desired.routes {
        if r.dst.addr().is_ipv4() != r.via.is_ipv4() {
            plan.ignored.push(format!(
                "route {} via {} dev {}: the gateway is not of the destination's family",
                r.dst, r.via, r.dev
            ));
            continue;
        }
        match want.get(&r.dst) {
            Some(first) if *first != r => plan.ignored.push(format!(
                "route {} via {} dev {}: contradicts an earlier route to the same destination",
                r.dst, r.via, r.dev
            )),
            Some(_) => {}
            None => {
                want.insert(r.dst, r);
            }
        }
    }
    // Routes through a device that is (re)made vanish with it; do not plan to touch them.
    let mut have: BTreeMap<IpNet, Vec<&ObservedRoute>> = BTreeMap::new();
    for o in &observed.routes {
        if o.dev.as_deref().is_some_and(|d| vanishing.contains(d)) {
            continue;
        }
        have.entry(o.dst).or_default().push(o);
    }
    for (dst, w) in &want {
        let hs = have.remove(dst).unwrap_or_default();
        let mut primary = None;
        for o in hs {
            if primary.is_none() && o.is_primary() {
                primary = Some(o);
            } else {
                // A second route of ours to the same destination (another metric or TOS)
                // would shadow or be shadowed by the desired one.
                plan.delete_routes.push(o.clone());
            }
        }
        match primary {
            None => plan.add_routes.push((*w).clone()),
            Some(o) if !o.matches(w) => plan.replace_routes.push((*w).clone()),
            Some(_) => {}
        }
    }
    for hs in have.into_values() {
        plan.delete_routes.extend(hs.into_iter().cloned());
    }
}

fn diff_neighbours(
    desired: &DesiredState,
    observed: &Observed,
    devices: &Devices<'_>,
    plan: &mut Plan,
) {
    let mut want: BTreeMap<(&str, IpAddr), &NeighSpec> = BTreeMap::new();
    for n in &desired.neighbours {
        if !devices.holds(&n.dev) {
            plan.ignored.push(format!(
                "neighbour {} lladdr {} dev {}: not on a VXLAN device of twill's",
                n.ip, n.mac, n.dev
            ));
            continue;
        }
        match want.get(&(n.dev.as_str(), n.ip)) {
            Some(first) if *first != n => plan.ignored.push(format!(
                "neighbour {} lladdr {} dev {}: contradicts an earlier entry for the address",
                n.ip, n.mac, n.dev
            )),
            Some(_) => {}
            None => {
                want.insert((&n.dev, n.ip), n);
            }
        }
    }
    let have: BTreeMap<(&str, IpAddr), &NeighSpec> = observed
        .neighbours
        .iter()
        .filter(|n| {
            devices.holds(&n.dev)
                && !devices.fresh.contains(n.dev.as_str())
                && !devices.flushed.contains(n.dev.as_str())
        })
        .map(|n| ((n.dev.as_str(), n.ip), n))
        .collect();
    for (key, w) in &want {
        if have.get(key).is_none_or(|h| h.mac != w.mac) {
            plan.replace_neighbours.push((*w).clone());
        }
    }
    for (key, h) in &have {
        if !want.contains_key(key) {
            plan.delete_neighbours.push((*h).clone());
        }
    }
}

fn diff_fdb(desired: &DesiredState, observed: &Observed, devices: &Devices<'_>, plan: &mut Plan) {
    let mut want: BTreeMap<(&str, MacAddr), &FdbSpec> = BTreeMap::new();
    for e in &desired.fdb {
        let Some(local) = devices.local.get(e.dev.as_str()) else {
            plan.ignored.push(format!(
                "fdb {} dst {} dev {}: not on a VXLAN device of twill's",
                e.mac, e.dst, e.dev
            ));
            continue;
        };
        if local.is_ipv4() != e.dst.is_ipv4() {
            plan.ignored.push(format!(
                "fdb {} dst {} dev {}: the device's VTEP ({local}) is of the other family",
                e.mac, e.dst, e.dev
            ));
            continue;
        }
        match want.get(&(e.dev.as_str(), e.mac)) {
            Some(first) if *first != e => plan.ignored.push(format!(
                "fdb {} dst {} dev {}: contradicts an earlier entry for the MAC",
                e.mac, e.dst, e.dev
            )),
            Some(_) => {}
            None => {
                want.insert((&e.dev, e.mac), e);
            }
        }
    }
    let mut have: BTreeMap<(&str, MacAddr), Vec<&ObservedFdb>> = BTreeMap::new();
    for e in &observed.fdb {
        if devices.holds(&e.dev) && !devices.fresh.contains(e.dev.as_str()) {
            have.entry((&e.dev, e.mac)).or_default().push(e);
        }
    }
    for (key, w) in &want {
        let hs = have.remove(key).unwrap_or_default();
        if !hs.iter().any(|h| h.matches(w)) {
            plan.replace_fdb.push((*w).clone());
        }
        // Any other remote for the MAC is stale. `apply` deletes these after the replacement,
        // which rewrites the entry in place, so traffic to the peer never loses its entry.
        plan.delete_fdb
            .extend(hs.into_iter().filter(|h| !h.matches(w)).cloned());
    }
    for hs in have.into_values() {
        plan.delete_fdb.extend(hs.into_iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, last])
    }

    fn device() -> VxlanDevice {
        VxlanDevice {
            name: "twill.1".into(),
            vni: 1,
            port: 8472,
            local: "10.9.0.1".parse().unwrap(),
            underlay: "eth0".into(),
            mac: mac(1),
            mtu: 1450,
            address: "10.244.1.0/32".parse().unwrap(),
        }
    }

    /// The desired state of a VXLAN node with peers 2..=n+1.
    fn vxlan_state(peers: u8) -> DesiredState {
        let mut d = DesiredState {
            vxlan: Some(device()),
            ..DesiredState::default()
        };
        for p in 2..peers + 2 {
            let vtep: IpAddr = format!("10.244.{p}.0").parse().unwrap();
            d.routes.push(RouteSpec {
                dst: format!("10.244.{p}.0/24").parse().unwrap(),
                via: vtep,
                dev: "twill.1".into(),
                onlink: true,
            });
            d.neighbours.push(NeighSpec {
                dev: "twill.1".into(),
                ip: vtep,
                mac: mac(p),
            });
            d.fdb.push(FdbSpec {
                dev: "twill.1".into(),
                mac: mac(p),
                dst: format!("10.9.0.{p}").parse().unwrap(),
            });
        }
        d
    }

    /// The IPv6 VXLAN device of a dual-stack node, over an IPv6 underlay.
    fn device6() -> VxlanDevice {
        VxlanDevice {
            name: "twill6.1".into(),
            local: "2001:db8:9::1".parse().unwrap(),
            mac: mac(0x81),
            mtu: 1430,
            address: "fd00:244:1::/128".parse().unwrap(),
            ..device()
        }
    }

    /// [`vxlan_state`] with the IPv6 half of a dual-stack node: peer p's IPv6 subnet
    /// fd00:244:p::/64 through twill6.1, its VTEP at 2001:db8:9::p.
    fn dual_state(peers: u8) -> DesiredState {
        let mut d = vxlan_state(peers);
        d.vxlan6 = Some(device6());
        for p in 2..peers + 2 {
            let vtep: IpAddr = format!("fd00:244:{p}::").parse().unwrap();
            d.routes.push(RouteSpec {
                dst: format!("fd00:244:{p}::/64").parse().unwrap(),
                via: vtep,
                dev: "twill6.1".into(),
                onlink: true,
            });
            d.neighbours.push(NeighSpec {
                dev: "twill6.1".into(),
                ip: vtep,
                mac: mac(0x80 + p),
            });
            d.fdb.push(FdbSpec {
                dev: "twill6.1".into(),
                mac: mac(0x80 + p),
                dst: format!("2001:db8:9::{p}").parse().unwrap(),
            });
        }
        d
    }

    /// What `observe` reads back after `apply` wrote `d`.
    fn written(d: &DesiredState) -> Observed {
        Observed {
            vxlan: d
                .vxlan
                .iter()
                .chain(&d.vxlan6)
                .map(|v| ObservedVxlan {
                    name: v.name.clone(),
                    index: 7,
                    vni: v.vni,
                    port: v.port,
                    local: Some(v.local),
                    underlay: Some(v.underlay.clone()),
                    learning: false,
                    mac: Some(v.mac),
                    mtu: v.mtu,
                    up: true,
                    addresses: vec![v.address],
                })
                .collect(),
            routes: d.routes.iter().map(ObservedRoute::from_spec).collect(),
            neighbours: d.neighbours.clone(),
            fdb: d.fdb.iter().map(ObservedFdb::from_spec).collect(),
            idle_nexthops: Vec::new(),
            host: Default::default(),
        }
    }

    #[test]
    fn idle_nexthops_are_deleted() {
        let d = vxlan_state(2);
        let mut o = written(&d);
        o.idle_nexthops = vec![NEXTHOP_ID, NEXTHOP_ID + 1];
        let plan = diff(&d, &o);
        assert_eq!(plan.delete_nexthops, o.idle_nexthops);
        assert_eq!(plan.changes(), 2, "{plan}");
    }

    const NEXTHOP_ID: u32 = twill_netlink::bulk::NEXTHOP_ID_BASE;

    #[test]
    fn nothing_wanted_nothing_there_is_empty() {
        let plan = diff(&DesiredState::default(), &Observed::default());
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.changes(), 0);
    }

    #[test]
    fn from_scratch_creates_everything() {
        let d = vxlan_state(3);
        let plan = diff(&d, &Observed::default());
        assert_eq!(plan.devices, vec![DeviceChange::Create(device())]);
        assert_eq!(plan.add_routes, d.routes);
        assert!(plan.replace_routes.is_empty() && plan.delete_routes.is_empty());
        assert_eq!(plan.replace_neighbours, d.neighbours);
        assert_eq!(plan.replace_fdb, d.fdb);
        assert!(plan.delete_neighbours.is_empty() && plan.delete_fdb.is_empty());
        assert!(plan.ignored.is_empty());
        assert_eq!(plan.changes(), 1 + 3 * 3);
        assert_eq!(
            plan.to_string(),
            "device: create twill.1; routes +3 ~0 -0; neighbours ~3 -0; fdb ~3 -0"
        );
    }

    #[test]
    fn what_apply_wrote_needs_nothing() {
        let d = vxlan_state(5);
        let plan = diff(&d, &written(&d));
        assert!(plan.is_empty(), "{plan}");
    }

    #[test]
    fn removed_peer_is_deleted_and_others_kept() {
        let before = vxlan_state(3);
        let mut after = before.clone();
        after.routes.remove(1);
        after.neighbours.remove(1);
        after.fdb.remove(1);
        let plan = diff(&after, &written(&before));
        assert!(plan.devices.is_empty(), "{plan}");
        assert_eq!(
            plan.delete_routes,
            vec![ObservedRoute::from_spec(&before.routes[1])]
        );
        assert_eq!(plan.delete_neighbours, vec![before.neighbours[1].clone()]);
        assert_eq!(
            plan.delete_fdb,
            vec![ObservedFdb::from_spec(&before.fdb[1])]
        );
        assert_eq!(plan.changes(), 3);
    }

    #[test]
    fn changed_vni_recreates_and_replans_everything_on_the_device() {
        let before = vxlan_state(2);
        let mut after = before.clone();
        after.vxlan.as_mut().unwrap().vni = 2;
        let plan = diff(&after, &written(&before));
        match &plan.devices[..] {
            [DeviceChange::Recreate { device, reason }] => {
                assert_eq!(device.vni, 2);
                assert_eq!(reason, "vni 1 -> 2");
            }
            other => panic!("expected recreate, got {other:?}"),
        }
        // The kernel drops the old device's routes, neighbours and FDB with it.
        assert!(plan.delete_routes.is_empty() && plan.delete_neighbours.is_empty());
        assert!(plan.delete_fdb.is_empty());
        assert_eq!(plan.add_routes, after.routes);
        assert_eq!(plan.replace_neighbours, after.neighbours);
        assert_eq!(plan.replace_fdb, after.fdb);
    }

    #[test]
    fn port_local_underlay_and_learning_recreate() {
        let d = vxlan_state(0);
        let base = written(&d);
        type Change = fn(&mut ObservedVxlan);
        let cases: [(&str, Change); 4] = [
            ("port 4789 -> 8472", |o| o.port = 4789),
            ("local 10.9.0.9 -> 10.9.0.1", |o| {
                o.local = Some("10.9.0.9".parse().unwrap())
            }),
            ("underlay eth1 -> eth0", |o| {
                o.underlay = Some("eth1".into())
            }),
            ("learning on -> off", |o| o.learning = true),
        ];
        for (want, change) in cases {
            let mut o = base.clone();
            change(&mut o.vxlan[0]);
            match &diff(&d, &o).devices[..] {
                [DeviceChange::Recreate { reason, .. }] => assert_eq!(reason, want),
                other => panic!("{want}: expected recreate, got {other:?}"),
            }
        }
    }

    #[test]
    fn mtu_mac_address_and_up_are_adjusted_in_place() {
        let d = vxlan_state(1);
        let mut o = written(&d);
        let v = &mut o.vxlan[0];
        v.mtu = 1400;
        v.mac = Some(mac(9));
        v.up = false;
        v.addresses = vec!["10.244.7.0/32".parse().unwrap()];
        let plan = diff(&d, &o);
        assert_eq!(
            plan.devices,
            vec![DeviceChange::Adjust(DeviceAdjust {
                name: "twill.1".into(),
                mtu: Some(1450),
                mac: Some(mac(1)),
                add_addresses: vec!["10.244.1.0/32".parse().unwrap()],
                delete_addresses: vec!["10.244.7.0/32".parse().unwrap()],
                up: true,
            })]
        );
        // Routes and FDB entries survive; the kernel flushes the neighbours with the MAC
        // change, so they are set again.
        assert_eq!(plan.replace_neighbours, d.neighbours);
        assert_eq!(plan.changes(), 2);

        let mut o = written(&d);
        o.vxlan[0].mtu = 1400;
        let plan = diff(&d, &o);
        assert_eq!(
            plan.changes(),
            1,
            "an MTU change alone keeps the neighbours"
        );
    }

    #[test]
    fn stale_devices_are_deleted_foreign_names_refused() {
        let mut o = written(&vxlan_state(0));
        o.vxlan[0].name = "twill.old".into();
        let plan = diff(&vxlan_state(0), &o);
        assert_eq!(plan.delete_devices, vec!["twill.old".to_string()]);
        assert!(matches!(plan.devices[..], [DeviceChange::Create(_)]));

        let mut d = vxlan_state(1);
        d.vxlan.as_mut().unwrap().name = "flannel.1".into();
        let plan = diff(&d, &Observed::default());
        assert!(plan.devices.is_empty(), "{plan}");
        // Routes via any link are fine (they carry twill's protocol); neighbours and FDB
        // entries are only ever twill's on a twill device.
        assert_eq!(plan.add_routes.len(), 1);
        assert!(plan.replace_neighbours.is_empty() && plan.replace_fdb.is_empty());
        assert_eq!(plan.ignored.len(), 3, "{:?}", plan.ignored);
    }

    #[test]
    fn entries_off_the_device_are_ignored() {
        let mut d = vxlan_state(1);
        d.neighbours.push(NeighSpec {
            dev: "eth0".into(),
            ip: "10.9.0.7".parse().unwrap(),
            mac: mac(7),
        });
        d.fdb.push(FdbSpec {
            dev: "twill.9".into(),
            mac: mac(7),
            dst: "10.9.0.7".parse().unwrap(),
        });
        let mut o = written(&vxlan_state(1));
        // Observed entries of other links are never planned for deletion.
        o.neighbours.push(NeighSpec {
            dev: "eth0".into(),
            ip: "10.9.0.8".parse().unwrap(),
            mac: mac(8),
        });
        let plan = diff(&d, &o);
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.ignored.len(), 2, "{:?}", plan.ignored);
        assert!(plan.to_string().ends_with("; 2 ignored"));
    }

    #[test]
    fn route_differences() {
        let d = vxlan_state(1);
        let base = written(&d);
        let mut o = base.clone();
        o.routes[0].via = Some("10.244.9.0".parse().unwrap());
        assert_eq!(diff(&d, &o).replace_routes, d.routes);
        let mut o = base.clone();
        o.routes[0].onlink = false;
        assert_eq!(diff(&d, &o).replace_routes, d.routes);
        let mut o = base.clone();
        o.routes[0].dev = Some("eth0".into());
        assert_eq!(diff(&d, &o).replace_routes, d.routes);
        let mut o = base.clone();
        o.routes[0].unicast = false;
        assert_eq!(diff(&d, &o).replace_routes, d.routes);

        // Another metric is another route: it goes, and the desired one is added.
        let mut o = base.clone();
        o.routes[0].metric = 100;
        let plan = diff(&d, &o);
        assert_eq!(plan.delete_routes, vec![o.routes[0].clone()]);
        assert_eq!(plan.add_routes, d.routes);

        // Both present: only the extra goes.
        let mut o = base.clone();
        let mut extra = o.routes[0].clone();
        extra.metric = 5;
        o.routes.insert(0, extra.clone());
        let plan = diff(&d, &o);
        assert_eq!(plan.delete_routes, vec![extra]);
        assert_eq!(plan.changes(), 1);
    }

    #[test]
    fn contradicting_desired_routes_keep_the_first() {
        let mut d = vxlan_state(1);
        let mut other = d.routes[0].clone();
        other.via = "10.244.8.0".parse().unwrap();
        d.routes.push(other);
        d.routes.push(d.routes[0].clone()); // an exact duplicate is harmless
        let plan = diff(&d, &Observed::default());
        assert_eq!(plan.add_routes, vec![d.routes[0].clone()]);
        assert_eq!(plan.ignored.len(), 1);
    }

    #[test]
    fn neighbour_mac_change_is_a_replace() {
        let d = vxlan_state(2);
        let mut o = written(&d);
        o.neighbours[1].mac = mac(99);
        let plan = diff(&d, &o);
        assert_eq!(plan.replace_neighbours, vec![d.neighbours[1].clone()]);
        assert_eq!(plan.changes(), 1);
    }

    #[test]
    fn fdb_remote_change_replaces_then_deletes_the_old_remote() {
        let d = vxlan_state(1);
        let mut o = written(&d);
        o.fdb[0].dst = "10.9.0.99".parse().unwrap();
        let plan = diff(&d, &o);
        assert_eq!(plan.replace_fdb, d.fdb);
        assert_eq!(plan.delete_fdb, vec![o.fdb[0].clone()]);

        // A port override is not what twill writes.
        let mut o = written(&d);
        o.fdb[0].port = Some(9999);
        let plan = diff(&d, &o);
        assert_eq!(plan.replace_fdb, d.fdb);
        assert_eq!(plan.delete_fdb, vec![o.fdb[0].clone()]);

        // The right remote plus a stale one (a flooded MAC): only the stale one goes.
        let mut o = written(&d);
        let mut stale = o.fdb[0].clone();
        stale.dst = "10.9.0.50".parse().unwrap();
        o.fdb.push(stale.clone());
        let plan = diff(&d, &o);
        assert!(plan.replace_fdb.is_empty());
        assert_eq!(plan.delete_fdb, vec![stale]);
    }

    #[test]
    fn host_gw_without_device_removes_the_old_device() {
        let d = DesiredState {
            routes: vec![RouteSpec {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: "10.9.0.2".parse().unwrap(),
                dev: "eth0".into(),
                onlink: false,
            }],
            ..DesiredState::default()
        };
        let before = vxlan_state(1);
        let plan = diff(&d, &written(&before));
        assert!(plan.devices.is_empty(), "{plan}");
        assert_eq!(plan.delete_devices, vec!["twill.1".to_string()]);
        // Same destination, now via the underlay: replaced in place.
        assert_eq!(plan.replace_routes, d.routes);
        assert!(plan.delete_routes.is_empty());
        // Neighbours and FDB go with the device.
        assert!(plan.delete_neighbours.is_empty() && plan.delete_fdb.is_empty());
    }

    #[test]
    fn everything_goes_when_nothing_is_desired() {
        let before = vxlan_state(2);
        let plan = diff(&DesiredState::default(), &written(&before));
        assert_eq!(plan.delete_devices, vec!["twill.1".to_string()]);
        assert_eq!(plan.delete_routes.len(), 2);
        assert_eq!(plan.changes(), 3);
    }

    #[test]
    fn dual_stack_from_scratch_creates_both_devices_and_everything_on_them() {
        let d = dual_state(2);
        let plan = diff(&d, &Observed::default());
        assert_eq!(
            plan.devices,
            vec![
                DeviceChange::Create(device()),
                DeviceChange::Create(device6())
            ]
        );
        assert_eq!(plan.add_routes, d.routes);
        assert_eq!(plan.replace_neighbours, d.neighbours);
        assert_eq!(plan.replace_fdb, d.fdb);
        assert!(plan.ignored.is_empty(), "{:?}", plan.ignored);
        assert!(
            plan.to_string()
                .starts_with("device: create twill.1, create twill6.1; routes +4"),
            "{plan}"
        );
    }

    #[test]
    fn dual_stack_as_written_needs_nothing() {
        let d = dual_state(3);
        let o = written(&d);
        // IPv6 routes read back with the kernel's default metric, and are still ours as
        // written.
        assert!(
            o.routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv6())
                .all(|r| r.metric == 1024)
        );
        let plan = diff(&d, &o);
        assert!(plan.is_empty(), "{plan}");
    }

    #[test]
    fn an_ipv6_route_with_another_metric_is_another_route() {
        let d = dual_state(1);
        let mut o = written(&d);
        let v6 = o
            .routes
            .iter_mut()
            .find(|r| r.dst.addr().is_ipv6())
            .unwrap();
        v6.metric = 0;
        let stale = v6.clone();
        let plan = diff(&d, &o);
        assert_eq!(plan.delete_routes, vec![stale]);
        assert_eq!(plan.add_routes.len(), 1);
        assert!(plan.add_routes[0].dst.addr().is_ipv6());
    }

    #[test]
    fn recreating_the_ipv6_device_replans_only_its_entries() {
        let d = dual_state(2);
        let mut o = written(&d);
        o.vxlan[1].local = Some("2001:db8:9::99".parse().unwrap());
        let plan = diff(&d, &o);
        match &plan.devices[..] {
            [DeviceChange::Recreate { device, reason }] => {
                assert_eq!(device.name, "twill6.1");
                assert_eq!(reason, "local 2001:db8:9::99 -> 2001:db8:9::1");
            }
            other => panic!("expected one recreate, got {other:?}"),
        }
        let on_v6 = |dev: &str| dev == "twill6.1";
        assert!(plan.add_routes.iter().all(|r| on_v6(&r.dev)));
        assert_eq!(plan.add_routes.len(), 2);
        assert!(plan.replace_neighbours.iter().all(|n| on_v6(&n.dev)));
        assert_eq!(plan.replace_neighbours.len(), 2);
        assert!(plan.replace_fdb.iter().all(|e| on_v6(&e.dev)));
        assert_eq!(plan.replace_fdb.len(), 2);
        assert!(plan.delete_routes.is_empty() && plan.delete_fdb.is_empty());
    }

    #[test]
    fn a_mac_change_of_one_device_resets_only_its_neighbours() {
        let d = dual_state(1);
        let mut o = written(&d);
        o.vxlan[1].mac = Some(mac(0x99));
        let plan = diff(&d, &o);
        assert_eq!(
            plan.replace_neighbours,
            d.neighbours
                .iter()
                .filter(|n| n.dev == "twill6.1")
                .cloned()
                .collect::<Vec<_>>()
        );
        assert_eq!(plan.changes(), 2, "{plan}");
    }

    #[test]
    fn entries_are_told_apart_by_device() {
        // The same MAC and address on both devices are two entries each.
        let mut d = dual_state(0);
        for dev in ["twill.1", "twill6.1"] {
            d.neighbours.push(NeighSpec {
                dev: dev.into(),
                ip: "fd00:244:7::".parse().unwrap(),
                mac: mac(7),
            });
        }
        d.fdb.push(FdbSpec {
            dev: "twill6.1".into(),
            mac: mac(7),
            dst: "2001:db8:9::7".parse().unwrap(),
        });
        d.fdb.push(FdbSpec {
            dev: "twill.1".into(),
            mac: mac(7),
            dst: "10.9.0.7".parse().unwrap(),
        });
        let plan = diff(&d, &written(&dual_state(0)));
        assert_eq!(plan.replace_neighbours.len(), 2, "{plan}");
        assert_eq!(plan.replace_fdb.len(), 2, "{plan}");
        assert!(plan.ignored.is_empty(), "{:?}", plan.ignored);
        let plan = diff(&d, &written(&d));
        assert!(plan.is_empty(), "{plan}");
    }

    #[test]
    fn the_ipv6_device_goes_when_no_longer_desired() {
        let before = dual_state(1);
        let after = vxlan_state(1);
        let plan = diff(&after, &written(&before));
        assert_eq!(plan.delete_devices, vec!["twill6.1".to_string()]);
        assert!(plan.devices.is_empty(), "{plan}");
        // Its routes are twill's protocol: deleted; neighbours and FDB go with the device.
        assert_eq!(plan.delete_routes.len(), 1);
        assert!(plan.delete_routes[0].dst.addr().is_ipv6());
        assert!(plan.delete_neighbours.is_empty() && plan.delete_fdb.is_empty());
    }

    #[test]
    fn mismatched_families_and_a_doubly_desired_device_are_refused() {
        let mut d = dual_state(0);
        // An IPv4 remote on a device whose VTEP is IPv6.
        d.fdb.push(FdbSpec {
            dev: "twill6.1".into(),
            mac: mac(9),
            dst: "10.9.0.9".parse().unwrap(),
        });
        // An IPv6 destination through an IPv4 gateway.
        d.routes.push(RouteSpec {
            dst: "fd00:244:9::/64".parse().unwrap(),
            via: "10.244.9.0".parse().unwrap(),
            dev: "twill6.1".into(),
            onlink: true,
        });
        let plan = diff(&d, &written(&dual_state(0)));
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.ignored.len(), 2, "{:?}", plan.ignored);
        assert!(
            plan.ignored[1].contains("of the other family"),
            "{:?}",
            plan.ignored
        );

        // A vxlan6 device with the IPv4 device's name is not a second device.
        let mut d = vxlan_state(0);
        d.vxlan6 = Some(device());
        let plan = diff(&d, &Observed::default());
        assert_eq!(plan.devices, vec![DeviceChange::Create(device())]);
        assert_eq!(plan.ignored.len(), 1, "{:?}", plan.ignored);
    }

    #[test]
    fn a_vxlan6_device_over_an_ipv4_underlay_takes_ipv4_remotes() {
        let mut d = dual_state(1);
        let dev = d.vxlan6.as_mut().unwrap();
        dev.local = "10.9.0.1".parse().unwrap();
        for e in d.fdb.iter_mut().filter(|e| e.dev == "twill6.1") {
            e.dst = "10.9.0.2".parse().unwrap();
        }
        let plan = diff(&d, &Observed::default());
        assert_eq!(plan.replace_fdb.len(), 2);
        assert!(plan.ignored.is_empty(), "{:?}", plan.ignored);
    }

    #[test]
    fn ipv6_link_local_addresses_are_not_observed_as_the_devices() {
        // observe leaves them out; were one listed, it would be planned for deletion.
        let d = dual_state(0);
        let mut o = written(&d);
        o.vxlan[1]
            .addresses
            .push("fd00:244:99::/128".parse().unwrap());
        match &diff(&d, &o).devices[..] {
            [DeviceChange::Adjust(a)] => {
                assert_eq!(
                    a.delete_addresses,
                    vec!["fd00:244:99::/128".parse().unwrap()]
                );
            }
            other => panic!("expected an adjustment, got {other:?}"),
        }
    }
}
