//! The cluster config's `bgp` section: every form against golden normalized JSON, defaults,
//! how it picks the backend, and each refusal against its message (naming the field).
//!
//! `TWILL_BLESS=1 cargo test -p twill-types` rewrites the golden files.

use twill_types::cluster::{BackendKind, BgpConfig, ClusterConfig, RouterIdMode, hashed_router_id};

const YAML_TOR: &str = r#"
pools:
  - name: pods
    cidr: 10.244.0.0/16
    blockSize: 24
    ipipMode: Never
    vxlanMode: Never
bgp:
  asNumber: 64512            # default 64512
  nodeToNodeMesh: false      # default true
  holdTime: 9                # default 90
  listenPort: 179            # default 179
  gracefulRestart: true      # default true
  nodes:
    h1: {asNumber: 65001}
    h2: {asNumber: 65002}
  peers:
    - {address: 192.168.1.1, asNumber: 65000, node: h1}
    - {address: 192.168.2.1, asNumber: 65000, node: h2}
    - {address: 10.0.0.1, asNumber: 65100}
"#;

const TOML_RR: &str = r#"
[[pools]]
name = "pods"
cidr = "10.244.0.0/16"
ipipMode = "CrossSubnet"
[bgp]
routeReflectors = ["h1", "h2"]
clusterId = "10.255.0.1"
"#;

const FLANNEL_BGP: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"bgp"},"BGP":{"asNumber":65010,"peers":[{"address":"192.168.100.1","asNumber":65000}]}}"#;

fn golden(name: &str, config: &ClusterConfig) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    twill_testkit::golden_json(&dir, name, config);
}

fn parse(text: &str) -> ClusterConfig {
    ClusterConfig::parse(text).unwrap_or_else(|e| panic!("{text}\nrefused: {e}"))
}

#[track_caller]
fn refused(text: &str, needles: &[&str]) {
    let err = match ClusterConfig::parse(text) {
        Ok(c) => panic!("{text}\naccepted: {c:?}"),
        Err(e) => e.to_string(),
    };
    for needle in needles {
        assert!(
            err.contains(needle),
            "{text}\nmessage {err:?} lacks {needle:?}"
        );
    }
}

#[test]
fn golden_forms() {
    let tor = parse(YAML_TOR);
    golden("bgp-yaml.json", &tor);
    assert_eq!(tor.backend.kind, BackendKind::Bgp);
    let bgp = tor.bgp.as_ref().unwrap();
    assert_eq!(bgp.node_as("h1"), 65001);
    assert_eq!(bgp.node_as("h9"), 64512);
    assert!(!bgp.node_to_node_mesh);

    let rr = parse(TOML_RR);
    golden("bgp-toml.json", &rr);
    // CrossSubnet keeps the ipip backend; BGP runs beside it.
    assert_eq!(rr.backend.kind, BackendKind::Ipip);
    let bgp = rr.bgp.as_ref().unwrap();
    assert!(!bgp.node_to_node_mesh, "reflectors switch the mesh off");
    assert!(bgp.is_reflector("h2") && !bgp.is_reflector("h3"));

    let fl = parse(FLANNEL_BGP);
    golden("bgp-flannel.json", &fl);
    assert_eq!(fl.backend.kind, BackendKind::Bgp);
    // The normalized form reads back the same.
    for c in [tor, rr, fl] {
        assert_eq!(ClusterConfig::from_json(&c.to_json()).unwrap(), c);
    }
}

#[test]
fn defaults_and_backend_choice() {
    let pools = "pools:\n  - name: p\n    cidr: 10.244.0.0/16\n";
    // A bare section: every default, and routing by BGP.
    let c = parse(&format!("{pools}bgp: {{}}\n"));
    assert_eq!(c.bgp, Some(BgpConfig::default()));
    assert_eq!(c.backend.kind, BackendKind::Bgp);
    // `backend: bgp` alone means the defaults too.
    let c = parse(&format!("backend: bgp\n{pools}"));
    assert_eq!(c.bgp, Some(BgpConfig::default()));
    // Without a bgp section nothing changes.
    let c = parse(pools);
    assert_eq!((c.backend.kind, c.bgp), (BackendKind::Vxlan, None));
    // An explicit encapsulation stays, with BGP beside it.
    let c = parse(&format!(
        "backend: vxlan\n{pools}bgp: {{asNumber: 65000}}\n"
    ));
    assert_eq!(c.backend.kind, BackendKind::Vxlan);
    assert_eq!(c.bgp.unwrap().as_number, 65000);
    // Always keeps its tunnel.
    let c = parse("pools:\n  - {name: p, cidr: 10.244.0.0/16, vxlanMode: Always}\nbgp: {}\n");
    assert_eq!(c.backend.kind, BackendKind::Vxlan);
    // Configs without bgp keep their normalized JSON (no "bgp" key).
    assert!(!parse(pools).to_json().contains("bgp"));
}

#[test]
fn refusals_name_the_field() {
    let p = "pools:\n  - name: p\n    cidr: 10.244.0.0/16\n";
    refused(
        &format!("{p}bgp: {{asNumber: 0}}\n"),
        &["bgp.asNumber", "reserved"],
    );
    refused(
        &format!("{p}bgp: {{asNumber: 23456}}\n"),
        &["bgp.asNumber", "AS_TRANS"],
    );
    refused(
        &format!("{p}bgp: {{asNumber: 4294967296}}\n"),
        &["bgp.asNumber", "not an AS number"],
    );
    refused(
        &format!("{p}bgp: {{holdTime: 2}}\n"),
        &["bgp.holdTime", "at least 3"],
    );
    refused(&format!("{p}bgp: {{holdTime: 70000}}\n"), &["bgp.holdTime"]);
    refused(&format!("{p}bgp: {{listenPort: 0}}\n"), &["bgp.listenPort"]);
    refused(
        &format!("{p}bgp: {{routeReflectors: [h1], nodeToNodeMesh: true}}\n"),
        &["bgp.nodeToNodeMesh", "routeReflectors"],
    );
    refused(
        &format!("{p}bgp: {{routeReflectors: [h1, h1]}}\n"),
        &["bgp.routeReflectors", "twice"],
    );
    refused(
        &format!("{p}bgp: {{clusterId: nope}}\n"),
        &["bgp.clusterId"],
    );
    refused(
        &format!("{p}bgp: {{nodes: {{h1: {{asNumber: 0}}}}}}\n"),
        &["bgp.nodes.h1.asNumber"],
    );
    refused(
        &format!("{p}bgp: {{nodes: {{h1: {{}}}}}}\n"),
        &["bgp.nodes.h1.asNumber is missing"],
    );
    refused(
        &format!("{p}bgp: {{peers: [{{address: 1.2.3, asNumber: 1}}]}}\n"),
        &["bgp.peers[0].address", "not an IP address"],
    );
    refused(
        &format!("{p}bgp: {{peers: [{{asNumber: 1}}]}}\n"),
        &["bgp.peers[0].address is missing"],
    );
    refused(
        &format!("{p}bgp: {{peers: [{{address: 10.0.0.1}}]}}\n"),
        &["bgp.peers[0].asNumber is missing"],
    );
    refused(
        &format!(
            "{p}bgp: {{peers: [{{address: 10.0.0.1, asNumber: 1}}, {{address: 10.0.0.1, asNumber: 2}}]}}\n"
        ),
        &["bgp.peers[1]", "twice"],
    );
    refused(
        &format!("{p}bgp: {{peers: [{{address: 127.0.0.1, asNumber: 1}}]}}\n"),
        &["bgp.peers[0].address"],
    );
    refused(&format!("{p}bgp: {{asNumbr: 1}}\n"), &["asNumbr"]);
    refused(
        "pools:\n  - {name: p, cidr: 10.244.0.0/16, vxlanMode: Always}\nbackend: bgp\n",
        &["backend \"bgp\" conflicts"],
    );
    refused(
        r#"{"Network":"10.244.0.0/16","BGP":{"holdTime":1}}"#,
        &["bgp.holdTime"],
    );
    refused(
        r#"{"Network":"10.244.0.0/16","BGP":{"bogus":1}}"#,
        &["BGP", "bogus"],
    );
    // The normalized form is validated too (the store may hold anything).
    let mut c = parse(&format!("{p}bgp: {{}}\n"));
    c.bgp = None;
    assert!(
        ClusterConfig::from_json(&c.to_json())
            .unwrap_err()
            .to_string()
            .contains("needs a bgp section")
    );
}

const YAML_AUTH: &str = r#"
pools:
  - {name: pods, cidr: 10.244.0.0/16, blockSize: 24}
bgp:
  passwordFile: /etc/twill/bgp-mesh.key
  ttlSecurity: true
  peers:
    - {address: 192.168.1.1, asNumber: 65000, password: "tor-secret-1", ttlSecurity: true}
    - {address: 192.168.2.1, asNumber: 65000, passwordEnv: TWILL_BGP_TOR2}
"#;

#[test]
fn passwords_and_ttl_security() {
    let c = parse(YAML_AUTH);
    let bgp = c.bgp.as_ref().unwrap();
    assert_eq!(
        bgp.auth.password_file.as_deref(),
        Some(std::path::Path::new("/etc/twill/bgp-mesh.key"))
    );
    assert!(bgp.auth.ttl_security);
    assert_eq!(
        bgp.peers[0].auth.password.as_ref().unwrap().expose(),
        "tor-secret-1"
    );
    assert!(bgp.peers[0].auth.ttl_security);
    assert_eq!(
        bgp.peers[1].auth.password_env.as_deref(),
        Some("TWILL_BGP_TOR2")
    );
    // The store's form round-trips (the inline password with it: it has to).
    let back = ClusterConfig::from_json(&c.to_json()).unwrap();
    assert_eq!(back, c);
    // Debug never shows it.
    assert!(!format!("{c:?}").contains("tor-secret-1"));
    // Without the keys, nothing is added to the normalized form.
    let plain = parse(TOML_RR).to_json();
    assert!(
        !plain.contains("password") && !plain.contains("ttlSecurity"),
        "{plain}"
    );

    let base = "pools:\n  - {name: pods, cidr: 10.244.0.0/16}\nbgp:\n";
    refused(
        &format!("{base}  password: x\n  passwordEnv: BGP\n"),
        &["bgp.password", "one of them"],
    );
    refused(
        &format!("{base}  passwordFile: bgp.key\n"),
        &["bgp.passwordFile", "absolute"],
    );
    refused(
        &format!("{base}  peers:\n    - {{address: 10.0.0.1, asNumber: 65000, password: \"\"}}\n"),
        &["bgp.peers[0].password", "empty"],
    );
    let long = "s".repeat(81);
    let e = ClusterConfig::parse(&format!("{base}  password: {long}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 80") && !e.contains(&long), "{e}");
    // A password that is not a string is refused without being quoted back (JSON; a YAML
    // parse error shows the lines of the file around it, as for any key).
    let e = ClusterConfig::parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"bgp"},"BGP":{"password":918273645}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("password") && !e.contains("918273645"), "{e}");
}

// ---- IPv6-only clusters and router IDs (issue 15) -------------------------------------------

const YAML_IPV6_ONLY_BGP: &str = r#"
backend: bgp
pools:
  - {name: pods6, cidr: "fd00:10:244::/56"}
bgp:
  nodeToNodeMesh: false
  routeReflectors: [h1]
  peers:
    - {address: "fd00:1::1", asNumber: 65000}
"#;

#[test]
fn ipv6_only_clusters_route_by_bgp() {
    let c = parse(YAML_IPV6_ONLY_BGP);
    assert!(c.pools.is_empty());
    assert_eq!(c.backend.kind, BackendKind::Bgp);
    let bgp = c.bgp.as_ref().unwrap();
    assert_eq!(bgp.router_id, RouterIdMode::Address);
    // The default needs no key in the normalized form (which reads back the same).
    assert!(!c.to_json().contains("routerId"), "{}", c.to_json());
    assert_eq!(ClusterConfig::from_json(&c.to_json()).unwrap(), c);
    // A bgp section alone means routing by BGP there too; Flannel's form as well.
    let c = parse("pools:\n  - {name: p6, cidr: \"fd00:10:244::/56\"}\nbgp: {}\n");
    assert_eq!(c.backend.kind, BackendKind::Bgp);
    let c = parse(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"bgp"},"BGP":{"asNumber":65010}}"#,
    );
    assert_eq!(c.backend.kind, BackendKind::Bgp);
    // An IPv4 router cannot be reached from nodes without IPv4.
    let e =
        ClusterConfig::parse(&YAML_IPV6_ONLY_BGP.replace("fd00:1::1", "192.168.1.1")).unwrap_err();
    assert_eq!(e.field(), Some("bgp.peers[0].address"), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("192.168.1.1 is an IPv4 address") && e.contains("IPv6-only"),
        "{e}"
    );
    // Dual-stack clusters keep their IPv4 routers.
    parse(
        "pools:\n  - {name: p, cidr: 10.244.0.0/16}\n  - {name: p6, cidr: \"fd00:10:244::/56\"}\nbgp:\n  peers:\n    - {address: 192.168.1.1, asNumber: 65000}\n",
    );
}

#[test]
fn router_ids_by_address_by_hash_or_by_node() {
    let c = parse(
        "pools:\n  - {name: p6, cidr: \"fd00:10:244::/56\"}\nbgp:\n  asNumber: 65010\n  routerId: hash\n  nodes:\n    h1: {routerId: 10.255.0.1}\n    h2: {asNumber: 65002, routerId: 10.255.0.2}\n",
    );
    let bgp = c.bgp.clone().unwrap();
    assert_eq!(bgp.router_id, RouterIdMode::Hash);
    // An entry with only a router ID keeps the cluster's AS.
    assert_eq!((bgp.node_as("h1"), bgp.node_as("h2")), (65010, 65002));
    let ip = |s: &str| -> std::net::Ipv4Addr { s.parse().unwrap() };
    // A node's own ID wins over its address and the hash.
    assert_eq!(
        bgp.router_id("h1", Some(ip("192.168.1.11"))),
        ip("10.255.0.1")
    );
    assert_eq!(bgp.router_id("h2", None), ip("10.255.0.2"));
    // `hash`: the hash even where there is an IPv4 underlay.
    assert_eq!(
        bgp.router_id("h3", Some(ip("192.168.1.13"))),
        hashed_router_id("h3")
    );
    // Both keys appear in the normalized form and read back.
    let json = c.to_json();
    assert!(
        json.contains(r#""routerId":"hash""#) && json.contains("10.255.0.1"),
        "{json}"
    );
    assert_eq!(ClusterConfig::from_json(&json).unwrap(), c);
    // The default: the IPv4 underlay address, the hash without one.
    let d = BgpConfig::default();
    assert_eq!(
        d.router_id("h3", Some(ip("192.168.1.13"))),
        ip("192.168.1.13")
    );
    assert_eq!(d.router_id("h3", None), hashed_router_id("h3"));
}

#[test]
fn hashed_router_ids_are_fixed_and_spread() {
    // Fixed forever (FNV-1a 64 folded): a change would reset every IPv6-only node's sessions.
    assert_eq!(
        hashed_router_id("h1"),
        "189.229.128.213".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(
        hashed_router_id(""),
        "79.208.191.193".parse::<std::net::Ipv4Addr>().unwrap()
    );
    // Never 0.0.0.0, and distinct for a thousand ordinary node names.
    let ids: std::collections::HashSet<_> = (0..1000)
        .map(|i| hashed_router_id(&format!("node-{i}.example.net")))
        .collect();
    assert_eq!(ids.len(), 1000);
    assert!(!ids.iter().any(|id| id.is_unspecified()));
}

#[test]
fn router_id_refusals_name_the_field() {
    let base = "pools:\n  - {name: p, cidr: 10.244.0.0/16}\nbgp:\n";
    refused(
        &format!("{base}  routerId: 10.0.0.1\n"),
        &["bgp.routerId \"10.0.0.1\"", "bgp.nodes.NAME.routerId"],
    );
    refused(
        &format!("{base}  nodes:\n    h1: {{routerId: fd00::1}}\n"),
        &["bgp.nodes.h1.routerId", "not an IPv4 address"],
    );
    refused(
        &format!("{base}  nodes:\n    h1: {{routerId: 0.0.0.0}}\n"),
        &["bgp.nodes.h1.routerId 0.0.0.0", "non-zero"],
    );
    refused(
        &format!(
            "{base}  nodes:\n    h1: {{routerId: 10.0.0.1}}\n    h2: {{routerId: 10.0.0.1}}\n"
        ),
        &["bgp.nodes.h2.routerId 10.0.0.1 is node h1's router ID too"],
    );
    // Neither an AS nor a router ID: the entry says nothing.
    refused(
        &format!("{base}  nodes:\n    h1: {{}}\n"),
        &["bgp.nodes.h1.asNumber is missing"],
    );
}
