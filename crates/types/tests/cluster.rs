//! Cluster config parsing and validation: every accepted form against golden normalized JSON,
//! each refusal against its message, and properties (round trips, no panics).
//!
//! Golden files live in `tests/golden/`; `TWILL_BLESS=1 cargo test -p twill-types` rewrites
//! them from the current output (then review the diff by hand).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use twill_types::cluster::{
    Backend, BackendKind, ClusterConfig, ConfigError, ConfigForm, HostNet, HostNet6, Pool, Pool6,
    reserved_overlap6,
};

const FLANNEL_EXAMPLE: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.20.0","Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":true}}"#;

const TOML_EXAMPLE: &str = r#"
backend = "vxlan"            # optional; default derived from pools' modes, else "vxlan"
vni = 1                      # optional
port = 8472                  # optional
directRouting = false        # optional
[[pools]]
name = "pods-a"
cidr = "10.244.0.0/16"
blockSize = 24
vxlanMode = "CrossSubnet"    # Always | CrossSubnet | Never (default Never)
ipipMode = "Never"           # Always | CrossSubnet | Never (default Never)
natOutgoing = true           # default true
"#;

const YAML_EXAMPLE: &str = r#"
# The TOML example's keys, in YAML.
backend: vxlan
vni: 1
port: 8472
directRouting: false
pools:
  - name: pods-a
    cidr: 10.244.0.0/16
    blockSize: 24
    vxlanMode: CrossSubnet
    ipipMode: Never
    natOutgoing: true
"#;

const YAML_TWO_POOLS: &str = r#"
pools:
  - name: pods-a
    cidr: 10.244.0.0/16
    blockSize: 26
    ipipMode: CrossSubnet
  - name: pods-b
    cidr: 10.245.0.0/24        # blockSize defaults to /26 here: a /24 holds four
    ipipMode: CrossSubnet
    natOutgoing: false
    subnetMin: 10.245.0.64
"#;

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

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn flannel(network: &str, rest: &str) -> String {
    format!(r#"{{"Network": "{network}"{rest}}}"#)
}

// ---- Flannel's net-conf.json --------------------------------------------------------------

#[test]
fn flannel_example_golden() {
    golden("flannel.json", &parse(FLANNEL_EXAMPLE));
}

#[test]
fn flannel_design_example() {
    let c = parse(
        r#"{"Network":"10.233.64.0/18","SubnetLen":24,"Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
    let pool = &c.pools[0];
    assert_eq!(pool.name, "default");
    assert_eq!(pool.cidr, net("10.233.64.0/18"));
    assert_eq!(pool.block_size, 24);
    assert_eq!(pool.subnet_min, net("10.233.65.0/24"));
    assert_eq!(pool.subnet_max, net("10.233.127.0/24"));
    assert!(pool.nat_outgoing);
    assert_eq!(
        c.backend,
        Backend {
            kind: BackendKind::Vxlan,
            vni: 1,
            port: 8472,
            direct_routing: true
        }
    );
}

#[test]
fn flannel_defaults_follow_flanneld() {
    // No Backend: udp, as flanneld does.
    let c = parse(&flannel("10.244.0.0/16", ""));
    assert_eq!(
        c.backend,
        Backend {
            kind: BackendKind::Udp,
            vni: 0,
            port: 8285,
            direct_routing: false
        }
    );
    assert_eq!(c.pools[0].block_size, 24);
    assert_eq!(c.pools[0].subnet_min, net("10.244.1.0/24"));
    assert_eq!(c.pools[0].subnet_max, net("10.244.255.0/24"));
    assert_eq!(c.pools[0].subnet_count(), 255);

    // SubnetLen: 24 up to a /22, else prefix + 2, refused past /28.
    for (network, len, min, max) in [
        ("10.0.0.0/8", 24, "10.0.1.0/24", "10.255.255.0/24"),
        ("10.244.0.0/22", 24, "10.244.1.0/24", "10.244.3.0/24"),
        ("10.244.0.0/23", 25, "10.244.0.128/25", "10.244.1.128/25"),
        ("10.244.0.0/26", 28, "10.244.0.16/28", "10.244.0.48/28"),
        ("10.244.0.0/28", 30, "10.244.0.4/30", "10.244.0.12/30"),
    ] {
        let c = parse(&flannel(network, ""));
        let pool = &c.pools[0];
        assert_eq!(
            (pool.block_size, pool.subnet_min, pool.subnet_max),
            (len, net(min), net(max)),
            "{network}"
        );
    }
    refused(
        &flannel("10.244.0.0/29", ""),
        &["Network 10.244.0.0/29 is too small", "/28"],
    );

    // Zero means the default, as in Go.
    let c = parse(&flannel(
        "10.244.0.0/16",
        r#", "SubnetLen": 0, "Backend": {"Type": "vxlan", "Port": 0}"#,
    ));
    assert_eq!((c.pools[0].block_size, c.backend.port), (24, 8472));
}

#[test]
fn flannel_backends_and_their_defaults() {
    for (ty, kind, vni, port) in [
        ("vxlan", BackendKind::Vxlan, 1, 8472),
        ("udp", BackendKind::Udp, 0, 8285),
        ("host-gw", BackendKind::HostGw, 0, 0),
        ("ipip", BackendKind::Ipip, 0, 0),
        ("wireguard", BackendKind::Wireguard, 0, 51820),
    ] {
        let c = parse(&flannel(
            "10.244.0.0/16",
            &format!(r#", "Backend": {{"Type": "{ty}"}}"#),
        ));
        assert_eq!(
            c.backend,
            Backend {
                kind,
                vni,
                port,
                direct_routing: false
            },
            "{ty}"
        );
    }
    let c = parse(&flannel(
        "10.244.0.0/16",
        r#", "Backend": {"Type": "udp", "Port": 7890}"#,
    ));
    assert_eq!(c.backend.port, 7890);
    let c = parse(&flannel(
        "10.244.0.0/16",
        r#", "Backend": {"Type": "wireguard", "ListenPort": 51821}"#,
    ));
    assert_eq!(c.backend.port, 51821);
    let c = parse(&flannel(
        "10.244.0.0/16",
        r#", "Backend": {"Type": "ipip", "DirectRouting": true}"#,
    ));
    assert!(c.backend.direct_routing);
    let c = parse(&flannel(
        "10.244.0.0/16",
        r#", "Backend": {"Type": "vxlan", "VNI": 4096, "GBP": false}"#,
    ));
    assert_eq!(c.backend.vni, 4096);
}

#[test]
fn flannel_reads_keys_like_go() {
    // encoding/json matches keys case-insensitively and treats null as missing.
    let c = parse(
        r#"{"network": "10.244.0.0/16", "subnetLen": 25, "SubnetMin": null,
            "backend": {"type": "host-gw"}, "EnableIPv4": true, "EnableIPv6": false,
            "EnableNFTables": true}"#,
    );
    assert_eq!(c.backend.kind, BackendKind::HostGw);
    assert_eq!(c.pools[0].block_size, 25);
    assert_eq!(c.pools[0].subnet_min, net("10.244.0.128/25"));
}

#[test]
fn flannel_refusals() {
    let n = "10.244.0.0/16";
    refused(
        &flannel(n, r#", "Backend": {"Type": "alloc"}"#),
        &[
            "Backend.Type \"alloc\" is not supported",
            "udp, vxlan, host-gw, ipip, wireguard",
        ],
    );
    refused(
        &flannel(n, r#", "Backend": {}"#),
        &["Backend.Type is missing"],
    );
    refused(
        &flannel(n, r#", "Backend": "vxlan""#),
        &["Backend must be an object"],
    );
    refused(
        &flannel(n, r#", "Foo": 1"#),
        &["unknown key \"Foo\"", "Network, SubnetLen"],
    );
    refused(
        &flannel(n, r#", "Backend": {"Type": "vxlan", "Bar": 1}"#),
        &["unknown key \"Backend.Bar\"", "vxlan"],
    );
    refused(
        &flannel(
            n,
            r#", "Backend": {"Type": "host-gw", "DirectRouting": true}"#,
        ),
        &["Backend.DirectRouting", "host-gw"],
    );
    refused(
        &flannel(n, r#", "Backend": {"Type": "vxlan", "GBP": true}"#),
        &["Backend.GBP is not supported"],
    );
    refused(
        &flannel(n, r#", "Backend": {"Type": "vxlan", "MTU": 1400}"#),
        &["Backend.MTU", "does not support yet"],
    );
    refused(
        &flannel(n, r#", "Backend": {"Type": "vxlan", "VNI": 0}"#),
        &["Backend.VNI 0 is out of range", "16777215"],
    );
    refused(
        &flannel(n, r#", "Backend": {"Type": "vxlan", "VNI": 16777216}"#),
        &["Backend.VNI 16777216 is out of range"],
    );
    refused(
        &flannel(n, r#", "Backend": {"Type": "vxlan", "Port": 70000}"#),
        &["Backend.Port 70000 is not a UDP port"],
    );
    refused(
        &flannel(n, r#", "Backend": {"Type": "vxlan", "Port": -1}"#),
        &["Backend.Port must be a non-negative integer"],
    );
    // IPv6 (issue 15) has keys of its own; see the dual-stack tests below.
    refused(
        &flannel(n, r#", "EnableIPv6": true"#),
        &["IPv6Network is missing: EnableIPv6 needs"],
    );
    refused(
        &flannel(n, r#", "EnableIPv4": false"#),
        &["EnableIPv4 is false but EnableIPv6 is not true: an IPv6-only cluster needs"],
    );
    refused(
        &flannel("fd00::/56", ""),
        &[
            "Network fd00::/56 is an IPv6 network",
            "IPv6Network with EnableIPv6: true",
        ],
    );
    refused(r#"{"SubnetLen": 24}"#, &["Network is missing"]);
    refused(
        &flannel("10.244.0.0", ""),
        &["Network \"10.244.0.0\" is not an IPv4 network in CIDR form"],
    );
    refused(r#"{"Network": 5}"#, &["Network must be a string"]);
    refused(
        &flannel("10.244.0.1/16", ""),
        &["Network 10.244.0.1/16 has host bits set; did you mean 10.244.0.0/16?"],
    );
    refused(
        &flannel(n, r#", "SubnetLen": 31"#),
        &["SubnetLen /31 is too long", "/30"],
    );
    refused(
        &flannel(n, r#", "SubnetLen": 16"#),
        &["SubnetLen /16 must be longer than the Network prefix /16"],
    );
    refused(
        &flannel(n, r#", "SubnetLen": 17"#),
        &["SubnetLen /17", "fewer than four subnets", "/18"],
    );
    refused(
        &flannel(n, r#", "SubnetMin": "10.245.1.0""#),
        &["SubnetMin 10.245.1.0 is outside Network 10.244.0.0/16"],
    );
    refused(
        &flannel(n, r#", "SubnetMax": "10.244.3.7""#),
        &["SubnetMax 10.244.3.7 is not aligned to SubnetLen /24; did you mean 10.244.3.0?"],
    );
    refused(
        &flannel(
            n,
            r#", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.8.0""#,
        ),
        &["SubnetMin 10.244.9.0 is above SubnetMax 10.244.8.0"],
    );
    refused(
        &flannel(n, r#", "SubnetMin": "10.244.1.0/24""#),
        &["SubnetMin \"10.244.1.0/24\" is not an IPv4 address"],
    );
    refused(
        &flannel(n, r#", "SubnetLen": "24""#),
        &["SubnetLen must be a non-negative integer"],
    );
    refused("[1, 2]", &["TOML", "line 1"]);
    refused(
        r#"{"Network": "10.244.0.0/16",}"#,
        &["JSON", "line 1 column"],
    );
}

// ---- twill's own form -----------------------------------------------------------------------

#[test]
fn toml_example_golden() {
    golden("toml.json", &parse(TOML_EXAMPLE));
}

#[test]
fn yaml_example_is_the_toml_example() {
    assert_eq!(parse(YAML_EXAMPLE), parse(TOML_EXAMPLE));
}

#[test]
fn yaml_two_pools_golden() {
    golden("yaml.json", &parse(YAML_TWO_POOLS));
}

#[test]
fn twill_form_in_json_too() {
    let c = parse(r#"{"backend": "host-gw", "pools": [{"name": "a", "cidr": "10.244.0.0/16"}]}"#);
    assert_eq!(c.backend.kind, BackendKind::HostGw);
}

fn toml_pool(extra_top: &str, pool: &str) -> String {
    format!("{extra_top}\n[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/16\"\n{pool}\n")
}

#[test]
fn twill_defaults() {
    let c = parse(&toml_pool("", ""));
    assert_eq!(
        c,
        ClusterConfig {
            pools: vec![Pool {
                name: "a".into(),
                cidr: net("10.244.0.0/16"),
                block_size: 24,
                subnet_min: net("10.244.1.0/24"),
                subnet_max: net("10.244.255.0/24"),
                nat_outgoing: true,
            }],
            ipv6_pools: Vec::new(),
            backend: Backend {
                kind: BackendKind::Vxlan,
                vni: 1,
                port: 8472,
                direct_routing: false
            },
            bgp: None,
            wireguard: None,
            host_access: Default::default(),
        }
    );
    let c = parse(&toml_pool(
        "",
        "subnetMin = \"10.244.10.0/24\"\nsubnetMax = \"10.244.20.0\"\nnatOutgoing = false",
    ));
    assert_eq!(
        (c.pools[0].subnet_min, c.pools[0].subnet_max),
        (net("10.244.10.0/24"), net("10.244.20.0/24"))
    );
    assert!(!c.pools[0].nat_outgoing);
    // One subnet is enough (the first is still skipped).
    let c = parse(&toml_pool("", "blockSize = 17"));
    assert_eq!(c.pools[0].subnet_count(), 1);
    assert_eq!(c.pools[0].subnet_min, net("10.244.128.0/17"));
}

#[test]
fn calico_modes_choose_the_backend() {
    use BackendKind::*;
    for (modes, kind, direct) in [
        ("vxlanMode = \"Always\"", Vxlan, false),
        ("vxlanMode = \"CrossSubnet\"", Vxlan, true),
        ("ipipMode = \"Always\"", Ipip, false),
        ("ipipMode = \"CrossSubnet\"", Ipip, true),
        (
            "vxlanMode = \"CrossSubnet\"\nipipMode = \"Never\"",
            Vxlan,
            true,
        ),
        ("vxlanMode = \"Never\"", HostGw, false),
        ("vxlanMode = \"Never\"\nipipMode = \"Never\"", HostGw, false),
        // No pool speaks: vxlan.
        ("", Vxlan, false),
    ] {
        let c = parse(&toml_pool("", modes));
        assert_eq!(
            (c.backend.kind, c.backend.direct_routing),
            (kind, direct),
            "{modes}"
        );
    }
    // An explicit backend that agrees, and the ones that need no modes.
    let c = parse(&toml_pool(
        "backend = \"ipip\"",
        "ipipMode = \"CrossSubnet\"",
    ));
    assert_eq!((c.backend.kind, c.backend.direct_routing), (Ipip, true));
    let c = parse(&toml_pool(
        "backend = \"wireguard\"",
        "vxlanMode = \"Never\"",
    ));
    assert_eq!((c.backend.kind, c.backend.port), (Wireguard, 51820));
    let c = parse(&toml_pool("backend = \"udp\"\nport = 9000", ""));
    assert_eq!((c.backend.kind, c.backend.port), (Udp, 9000));
    let c = parse(&toml_pool(
        "backend = \"vxlan\"\ndirectRouting = true\nvni = 7\nport = 4789",
        "",
    ));
    assert_eq!(
        c.backend,
        Backend {
            kind: Vxlan,
            vni: 7,
            port: 4789,
            direct_routing: true
        }
    );
    // A pool without modes is Never once another pool speaks.
    let text = "[[pools]]\nname = \"a\"\ncidr = \"10.1.0.0/16\"\n[[pools]]\nname = \"b\"\ncidr = \"10.2.0.0/16\"\nvxlanMode = \"Never\"\n";
    assert_eq!(parse(text).backend.kind, HostGw);
}

#[test]
fn calico_mode_refusals() {
    refused(
        &toml_pool("", "vxlanMode = \"Always\"\nipipMode = \"CrossSubnet\""),
        &["pool a: vxlanMode Always and ipipMode CrossSubnet are both set"],
    );
    refused(
        &toml_pool("backend = \"vxlan\"", "ipipMode = \"Always\""),
        &[
            "backend \"vxlan\" conflicts with the pools' modes",
            "pool a has ipipMode Always",
            "ipip",
        ],
    );
    refused(
        &toml_pool("backend = \"vxlan\"", "vxlanMode = \"Never\""),
        &[
            "backend \"vxlan\" conflicts",
            "Never (no encapsulation: host-gw)",
        ],
    );
    refused(
        &toml_pool("directRouting = true", "vxlanMode = \"Always\""),
        &[
            "directRouting = true conflicts",
            "pool a has vxlanMode Always",
        ],
    );
    refused(
        &toml_pool("", "vxlanMode = \"always\""),
        &["pool a: vxlanMode \"always\" must be Always, CrossSubnet or Never"],
    );
    let text = "[[pools]]\nname = \"a\"\ncidr = \"10.1.0.0/16\"\nvxlanMode = \"Always\"\n[[pools]]\nname = \"b\"\ncidr = \"10.2.0.0/16\"\nipipMode = \"Always\"\n";
    refused(
        text,
        &[
            "pools disagree",
            "pool a has vxlanMode Always",
            "pool b has ipipMode Always",
            "one backend",
        ],
    );
    let text = "[[pools]]\nname = \"a\"\ncidr = \"10.1.0.0/16\"\nvxlanMode = \"Always\"\n[[pools]]\nname = \"b\"\ncidr = \"10.2.0.0/16\"\nvxlanMode = \"CrossSubnet\"\n";
    refused(text, &["pools disagree"]);
}

#[test]
fn twill_refusals() {
    refused(
        &toml_pool("", "foo = 1"),
        &["unknown field `foo`", "line 5"],
    );
    refused("bogus = 1\n", &["unknown field `bogus`", "line 1"]);
    refused(
        "pools:\n  - name: a\n    cidr: 10.244.0.0/16\n    blockSise: 24\n",
        &["YAML", "unknown field `blockSise`", "line 4"],
    );
    refused(
        "pools:\n  - name: a\n   cidr: 10.244.0.0/16\n",
        &["YAML", "line 3"],
    );
    refused("[[pools]\nname = \"a\"\n", &["TOML", "line 1"]);
    refused("", &["pools: at least one pool"]);
    refused("pools = []\n", &["pools: at least one pool"]);
    refused(
        &toml_pool("backend = \"alloc\"", ""),
        &["backend \"alloc\" is not supported", "udp, vxlan, host-gw"],
    );
    refused(&toml_pool("vni = 0", ""), &["vni 0 is out of range"]);
    refused(
        &toml_pool("vni = 16777216", ""),
        &["vni 16777216 is out of range"],
    );
    refused(&toml_pool("port = 0", ""), &["port 0 is not a UDP port"]);
    refused(
        &toml_pool("port = 65536", ""),
        &["port 65536 is not a UDP port"],
    );
    refused(
        &toml_pool("backend = \"host-gw\"\nvni = 2", ""),
        &["vni applies only to the vxlan backend"],
    );
    refused(
        &toml_pool("backend = \"ipip\"\nport = 2", ""),
        &["port applies only to", "not ipip"],
    );
    refused(
        &toml_pool("backend = \"host-gw\"\ndirectRouting = true", ""),
        &["directRouting applies only to the vxlan and ipip backends"],
    );
    refused(
        &toml_pool("vni = \"1\"", ""),
        &["TOML", "line 1", "expected i64"],
    );
    refused(
        "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.1/16\"\n",
        &["pool a: cidr 10.244.0.1/16 has host bits set; did you mean 10.244.0.0/16?"],
    );
    refused(
        "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0\"\n",
        &["pool a: cidr \"10.244.0.0\" is not a network in CIDR form"],
    );
    refused(
        "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/29\"\n",
        &["pool a: cidr 10.244.0.0/29 is too small"],
    );
    refused(
        &toml_pool("", "blockSize = 16"),
        &["pool a: blockSize /16 must be longer than the cidr prefix /16"],
    );
    refused(
        &toml_pool("", "blockSize = 31"),
        &["pool a: blockSize /31 is too long"],
    );
    refused(
        &toml_pool("", "blockSize = -3"),
        &["pool a: blockSize -3 is not a prefix length"],
    );
    refused(
        &flannel("10.244.0.0/16", r#", "SubnetLen": 300"#),
        &["SubnetLen 300 is not a prefix length"],
    );
    refused(
        &toml_pool("", "subnetMin = \"10.244.1.0/25\""),
        &["pool a: subnetMin 10.244.1.0/25 must have the blockSize /24"],
    );
    refused(
        &toml_pool("", "subnetMin = \"10.244.1.1\""),
        &["pool a: subnetMin 10.244.1.1 is not aligned to blockSize /24; did you mean 10.244.1.0?"],
    );
    refused(
        &toml_pool("", "subnetMax = \"10.9.1.0\""),
        &["pool a: subnetMax 10.9.1.0 is outside cidr 10.244.0.0/16"],
    );
    refused(
        &toml_pool("", "subnetMin = \"10.244.5.0\"\nsubnetMax = \"10.244.4.0\""),
        &["pool a: subnetMin 10.244.5.0 is above subnetMax 10.244.4.0"],
    );
    refused(
        "[[pools]]\ncidr = \"10.244.0.0/16\"\n",
        &["pools[0]: name is missing"],
    );
    refused(
        "[[pools]]\nname = \" \"\ncidr = \"10.244.0.0/16\"\n",
        &["pools[0]: name must not be empty"],
    );
    refused("[[pools]]\nname = \"a\"\n", &["pool a: cidr is missing"]);
    refused(
        "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/16\"\n[[pools]]\nname = \"b\"\ncidr = \"10.244.128.0/17\"\n",
        &["pool b 10.244.128.0/17 overlaps pool a 10.244.0.0/16"],
    );
    refused(
        "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/16\"\n[[pools]]\nname = \"a\"\ncidr = \"10.245.0.0/16\"\n",
        &["pool name \"a\" is used twice"],
    );
}

// ---- the normalized form and helpers --------------------------------------------------------

#[test]
fn normalized_json_round_trips_and_is_validated() {
    let c = parse(FLANNEL_EXAMPLE);
    let json = c.to_json();
    assert_eq!(
        json,
        r#"{"pools":[{"name":"default","cidr":"10.244.0.0/16","blockSize":24,"subnetMin":"10.244.1.0/24","subnetMax":"10.244.20.0/24","natOutgoing":true}],"backend":{"kind":"vxlan","vni":1,"port":8472,"directRouting":true}}"#
    );
    assert_eq!(ClusterConfig::from_json(&json).unwrap(), c);
    // parse() knows the normalized form too.
    assert_eq!(ClusterConfig::parse(&json).unwrap(), c);

    let bad = json.replace("\"cidr\":\"10.244.0.0/16\"", "\"cidr\":\"10.244.0.1/16\"");
    let err = ClusterConfig::from_json(&bad).unwrap_err().to_string();
    assert!(err.contains("has host bits set"), "{err}");
    let err = ClusterConfig::from_json("{}").unwrap_err().to_string();
    assert!(err.contains("missing field"), "{err}");
}

#[test]
fn helpers() {
    let c = parse(YAML_TWO_POOLS);
    assert!(c.contains(Ipv4Addr::new(10, 244, 3, 4)));
    assert!(c.contains(Ipv4Addr::new(10, 245, 0, 255)));
    assert!(!c.contains(Ipv4Addr::new(10, 245, 1, 0)));
    assert_eq!(
        c.pool_of(net("10.245.0.64/26")).map(|p| p.name.as_str()),
        Some("pods-b")
    );
    assert_eq!(
        c.pool_of(net("10.244.7.0/24")).map(|p| p.name.as_str()),
        Some("pods-a")
    );
    assert_eq!(c.pool_of(net("10.244.0.0/15")), None);
    assert_eq!(c.pool_of(net("10.9.0.0/24")), None);

    for (kind, overhead) in [
        (BackendKind::Vxlan, 50),
        (BackendKind::Udp, 28),
        (BackendKind::Ipip, 20),
        (BackendKind::HostGw, 0),
        (BackendKind::Wireguard, 60),
    ] {
        let mut c = c.clone();
        c.backend = Backend::with_defaults(kind);
        assert_eq!(c.mtu_overhead(), overhead, "{kind}");
        assert_eq!(BackendKind::from_name(kind.name()), Some(kind));
        assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
    }
}

// ---- properties -----------------------------------------------------------------------------

fn arb_pool(index: u8) -> impl Strategy<Value = Pool> {
    // Pool `index` lives in 10.<index>.0.0/16, so pools never overlap.
    (16u8..=28, any::<bool>(), any::<u64>(), any::<u64>()).prop_flat_map(
        move |(prefix, nat, a, b)| {
            (prefix + 1..=30).prop_map(move |block| {
                let cidr = Ipv4Net::new(Ipv4Addr::new(10, index, 0, 0), prefix).unwrap();
                let count = 1u64 << (block - prefix);
                let (lo, hi) = {
                    let (x, y) = (a % count, b % count);
                    (x.min(y), x.max(y))
                };
                let nth = |n: u64| {
                    let addr = u32::from(cidr.network()) + (n << (32 - block)) as u32;
                    Ipv4Net::new(Ipv4Addr::from(addr), block).unwrap()
                };
                Pool {
                    name: format!("pool-{index}"),
                    cidr,
                    block_size: block,
                    subnet_min: nth(lo),
                    subnet_max: nth(hi),
                    nat_outgoing: nat,
                }
            })
        },
    )
}

fn arb_backend() -> impl Strategy<Value = Backend> {
    (0usize..5, 1u32..=16_777_215, 1u16.., any::<bool>()).prop_map(|(k, vni, port, direct)| {
        let kind = BackendKind::ALL[k];
        let mut b = Backend::with_defaults(kind);
        if kind == BackendKind::Vxlan {
            b.vni = vni;
        }
        if b.port != 0 {
            b.port = port;
        }
        b.direct_routing = direct && matches!(kind, BackendKind::Vxlan | BackendKind::Ipip);
        b
    })
}

fn arb_config() -> impl Strategy<Value = ClusterConfig> {
    (
        proptest::sample::subsequence((0u8..=255).collect::<Vec<_>>(), 1..5),
        arb_backend(),
    )
        .prop_flat_map(|(indices, backend)| {
            let pools: Vec<_> = indices.into_iter().map(arb_pool).collect();
            (pools, Just(backend))
        })
        .prop_map(|(pools, backend)| ClusterConfig {
            pools,
            ipv6_pools: Vec::new(),
            backend,
            bgp: None,
            wireguard: None,
            host_access: Default::default(),
        })
}

proptest! {
    #[test]
    fn valid_configs_round_trip(c in arb_config()) {
        prop_assert!(c.validate().is_ok(), "{:?}", c.validate());
        let json = c.to_json();
        prop_assert_eq!(&ClusterConfig::from_json(&json).unwrap(), &c);
        prop_assert_eq!(&ClusterConfig::parse(&json).unwrap(), &c);
        for pool in &c.pools {
            prop_assert!(pool.subnet_count() >= 1);
            prop_assert_eq!(c.pool_of(pool.subnet_min).map(|p| &p.name), Some(&pool.name));
        }
    }

    #[test]
    fn parse_never_panics(text in "\\PC{0,200}") {
        let _ = ClusterConfig::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_near_configs(
        text in r#"(\{|\[\[pools\]\]\n|pools:\n  - )?((name|cidr|blockSize|Network|SubnetLen|SubnetMin|Backend|Type|vxlanMode|subnetMax|VNI|Port|EnableIPv6|IPv6Network|IPv6SubnetLen|IPv6SubnetMax)[ :=]{1,3}("?[0-9./a-zA-Z:-]{0,18}"?|\{|\}|\[|\]|-?[0-9]{1,12})[,\n ]{0,2}){0,8}\}?"#
    ) {
        let _ = ClusterConfig::parse(&text);
    }
}

/// Templated net-conf.json files often say `"DirectRouting": false` for every backend.
#[test]
fn direct_routing_false_is_accepted_for_host_gw() {
    let c = twill_types::cluster::ClusterConfig::parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw","DirectRouting":false}}"#,
    )
    .unwrap();
    assert!(!c.backend.direct_routing);
}

// ---- Reserved ranges and the host's own networks (issue 12) ---------------------------------

#[test]
fn reserved_ranges_are_refused_in_every_form() {
    for (cidr, what) in [
        ("0.0.0.0/0", "0.0.0.0/8"),
        ("0.0.0.0/8", "this network"),
        ("127.0.0.0/16", "loopback"),
        ("126.0.0.0/7", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("169.254.128.0/20", "link-local"),
        ("224.0.0.0/16", "multicast"),
        ("239.255.0.0/16", "multicast"),
        ("240.0.0.0/16", "240.0.0.0/4"),
        ("255.255.255.0/28", "255.255.255.255"),
    ] {
        // Flannel's net-conf.json names the field Network...
        refused(
            &flannel(cidr, r#","Backend":{"Type":"vxlan"}"#),
            &["Network", cidr, what],
        );
        // ...twill's form names the pool and its cidr.
        let toml = format!("[[pools]]\nname = \"p\"\ncidr = \"{cidr}\"\n");
        refused(&toml, &["pool p: cidr", cidr, what]);
        // The normalized form (what the agent loads from the store) is refused as well.
        let json = parse(&flannel("10.244.0.0/16", ""))
            .to_json()
            .replace("10.244.0.0/16", cidr);
        let err = ClusterConfig::from_json(&json).unwrap_err().to_string();
        assert!(err.contains(what) && err.contains("cidr"), "{cidr}: {err}");
    }
    // Neighbours of the reserved ranges are ordinary addresses.
    for cidr in [
        "1.0.0.0/16",
        "126.0.0.0/16",
        "128.0.0.0/16",
        "169.253.0.0/16",
        "169.255.0.0/16",
        "223.255.0.0/16",
        "10.244.0.0/16",
        "100.64.0.0/16",
    ] {
        parse(&flannel(cidr, ""));
    }
}

#[test]
fn pools_overlapping_the_hosts_networks_are_refused() {
    let host = |net: &str, source: &str| HostNet {
        net: net.parse().unwrap(),
        source: source.into(),
    };
    let nets = vec![
        host("192.168.1.0/24", "address 192.168.1.5/24 on eth0"),
        host("10.0.0.0/8", "route 10.0.0.0/8 via 192.168.1.1 dev eth0"),
        host("172.16.5.7/32", "route 172.16.5.7/32 dev tun0"),
    ];
    // A pool inside a route, a pool holding a host address, a pool equal to a subnet.
    for (cidr, overlapped, source) in [
        ("10.244.0.0/16", "10.0.0.0/8", "via 192.168.1.1"),
        ("172.16.0.0/16", "172.16.5.7/32", "tun0"),
        (
            "192.168.0.0/16",
            "192.168.1.0/24",
            "address 192.168.1.5/24 on eth0",
        ),
        ("192.168.1.0/24", "192.168.1.0/24", "eth0"),
    ] {
        let flannel_text = flannel(cidr, "");
        let c = parse(&flannel_text);
        let err = c
            .check_host_networks(&nets, ConfigForm::of(&flannel_text))
            .unwrap_err()
            .to_string();
        for needle in ["Network", cidr, overlapped, source, "this host"] {
            assert!(err.contains(needle), "{cidr}: {err:?} lacks {needle:?}");
        }
        let toml = format!("[[pools]]\nname = \"p\"\ncidr = \"{cidr}\"\n");
        let err = parse(&toml)
            .check_host_networks(&nets, ConfigForm::of(&toml))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!("pool p: cidr {cidr}")), "{err}");
    }
    // The second pool of two is checked too, and named.
    let two = "[[pools]]\nname = \"a\"\ncidr = \"172.20.0.0/16\"\n\
               [[pools]]\nname = \"b\"\ncidr = \"192.168.0.0/20\"\n";
    let err = parse(two)
        .check_host_networks(&nets, ConfigForm::Twill)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("pool b: cidr 192.168.0.0/20"), "{err}");
    // Disjoint pools pass; so does anything when the host has no networks.
    for cidr in ["172.20.0.0/16", "192.168.2.0/24", "172.16.5.16/28"] {
        let text = flannel(cidr, "");
        parse(&text)
            .check_host_networks(&nets, ConfigForm::of(&text))
            .unwrap_or_else(|e| panic!("{cidr}: {e}"));
    }
    parse(&flannel("10.244.0.0/16", ""))
        .check_host_networks(&[], ConfigForm::Flannel)
        .unwrap();
}

#[test]
fn config_forms_are_told_apart() {
    assert_eq!(ConfigForm::of(FLANNEL_EXAMPLE), ConfigForm::Flannel);
    assert_eq!(ConfigForm::of(TOML_EXAMPLE), ConfigForm::Twill);
    assert_eq!(ConfigForm::of(YAML_EXAMPLE), ConfigForm::Twill);
    let normalized = parse(FLANNEL_EXAMPLE).to_json();
    assert_eq!(ConfigForm::of(&normalized), ConfigForm::Twill);
}

// ---- IPv6 pools: dual-stack clusters (issue 15) ---------------------------------------------

fn net6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

/// The error of a refused text, whatever it is.
#[track_caller]
fn error_of(text: &str) -> ConfigError {
    match ClusterConfig::parse(text) {
        Ok(c) => panic!("{text}\naccepted: {c:?}"),
        Err(e) => e,
    }
}

/// A refusal whose error is about `field` (its path) and whose message holds every needle.
#[track_caller]
fn refused_at(text: &str, field: &str, needles: &[&str]) {
    let e = error_of(text);
    assert_eq!(e.field(), Some(field), "{text}\n{e:?}");
    refused(text, needles);
}

const FLANNEL_DUAL_STACK: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// Flannel's dual-stack keys with an IPv4 network of `network4` and the backend `backend`.
fn flannel6(network4: &str, rest: &str) -> String {
    flannel(
        network4,
        &format!(r#", "EnableIPv6": true, "Backend": {{"Type": "vxlan"}}{rest}"#),
    )
}

#[test]
fn flannel_dual_stack_golden() {
    let c = parse(FLANNEL_DUAL_STACK);
    golden("flannel-dual-stack.json", &c);
    assert_eq!(
        c.ipv6_pools,
        vec![Pool6 {
            name: "default6".into(),
            cidr: net6("fd00:10:244::/56"),
            block_size: 64,
            subnet_min: net6("fd00:10:244:1::/64"),
            subnet_max: net6("fd00:10:244:ff::/64"),
            nat_outgoing: true,
        }]
    );
    assert_eq!(c.pools[0].subnet_count(), 255);
    assert_eq!(c.ipv6_pools[0].subnet_count(), 255);
    assert_eq!(ConfigForm::of(FLANNEL_DUAL_STACK), ConfigForm::Flannel);
    // EnableIPv4: true is the default, and may be said.
    let said = FLANNEL_DUAL_STACK.replace("\"EnableIPv6\"", "\"EnableIPv4\":true,\"EnableIPv6\"");
    assert_eq!(parse(&said), c);
}

#[test]
fn flannel_ipv6_keys() {
    // IPv6SubnetLen: 64 up to a /62, else prefix + 2, refused past /120 (four /122s). The
    // IPv4 network is a /28 (three leasable /30s) so that small IPv6 networks hold enough.
    for (network, len, min, max) in [
        ("fd00::/48", 64, "fd00:0:0:1::/64", "fd00:0:0:ffff::/64"),
        ("fd00::/62", 64, "fd00:0:0:1::/64", "fd00:0:0:3::/64"),
        (
            "fd00::/63",
            65,
            "fd00::8000:0:0:0/65",
            "fd00:0:0:1:8000::/65",
        ),
        ("fd00::/100", 102, "fd00::400:0/102", "fd00::c00:0/102"),
        ("fd00::/120", 122, "fd00::40/122", "fd00::c0/122"),
    ] {
        let c = parse(&flannel6(
            "10.244.0.0/28",
            &format!(r#", "IPv6Network": "{network}""#),
        ));
        let pool = &c.ipv6_pools[0];
        assert_eq!(
            (pool.block_size, pool.subnet_min, pool.subnet_max),
            (len, net6(min), net6(max)),
            "{network}"
        );
    }
    refused_at(
        &flannel6("10.244.0.0/28", r#", "IPv6Network": "fd00::/121""#),
        "IPv6Network",
        &["IPv6Network fd00::/121 is too small", "/120", "four /122"],
    );
    // Explicit length and bounds (addresses, as Flannel writes them); keys as Go reads them.
    let c = parse(&flannel6(
        "10.244.0.0/28",
        r#", "ipv6network": "fd00:10:244::/56", "IPV6SubnetLen": 80,
           "IPv6SubnetMin": "fd00:10:244:0:1::", "IPv6SubnetMax": "fd00:10:244:0:4::""#,
    ));
    let pool = &c.ipv6_pools[0];
    assert_eq!(pool.block_size, 80);
    assert_eq!(
        (pool.subnet_min, pool.subnet_max),
        (net6("fd00:10:244:0:1::/80"), net6("fd00:10:244:0:4::/80"))
    );
    // Zero is the default, as in Go.
    let c = parse(&flannel6(
        "10.244.0.0/16",
        r#", "IPv6Network": "fd00::/56", "IPv6SubnetLen": 0"#,
    ));
    assert_eq!(c.ipv6_pools[0].block_size, 64);
    // host-gw carries IPv6 too.
    let c = parse(&flannel(
        "10.244.0.0/16",
        r#", "EnableIPv6": true, "IPv6Network": "fd00::/56", "Backend": {"Type": "host-gw"}"#,
    ));
    assert_eq!(
        (c.backend.kind, c.ipv6_pools.len()),
        (BackendKind::HostGw, 1)
    );
}

#[test]
fn flannel_ipv6_keys_without_enable_ipv6_are_ignored_as_flanneld_does() {
    let plain = parse(&flannel("10.244.0.0/16", ""));
    for rest in [
        r#", "IPv6Network": "fd00::/56""#,
        r#", "EnableIPv6": false, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 64"#,
        r#", "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00:0:0:1::", "IPv6SubnetMax": "fd00:0:0:2::""#,
        // Only its form is checked: flanneld would not look at a disabled network's size.
        r#", "IPv6Network": "fd00::/127""#,
        r#", "EnableIPv6": null, "IPv6Network": "fd00::/56""#,
    ] {
        let c = parse(&flannel("10.244.0.0/16", rest));
        assert_eq!(c, plain, "{rest}");
        assert!(!c.has_ipv6());
    }
    // Their form is checked all the same, as Go's decoder does.
    for (rest, field, needle) in [
        (
            r#", "IPv6Network": "nope""#,
            "IPv6Network",
            "IPv6Network \"nope\" is not an IPv6 network in CIDR form",
        ),
        (
            r#", "IPv6Network": 6"#,
            "IPv6Network",
            "IPv6Network must be a string",
        ),
        (
            r#", "IPv6SubnetLen": 200"#,
            "IPv6SubnetLen",
            "IPv6SubnetLen 200 is not a prefix length (0 to 128)",
        ),
        (
            r#", "IPv6SubnetLen": -1"#,
            "IPv6SubnetLen",
            "IPv6SubnetLen must be a non-negative integer",
        ),
        (
            r#", "IPv6SubnetMin": "10.244.1.0""#,
            "IPv6SubnetMin",
            "IPv6SubnetMin \"10.244.1.0\" is not an IPv6 address",
        ),
        (
            r#", "EnableIPv6": "yes""#,
            "EnableIPv6",
            "EnableIPv6 must be true or false",
        ),
    ] {
        refused_at(&flannel("10.244.0.0/16", rest), field, &[needle]);
    }
}

#[test]
fn flannel_ipv6_refusals() {
    let n = "10.244.0.0/16";
    for (rest, field, needles) in [
        (
            "",
            "IPv6Network",
            &[r#"IPv6Network is missing: EnableIPv6 needs e.g. "IPv6Network": "fd00:10:244::/56""#]
                [..],
        ),
        (
            r#", "IPv6Network": "10.245.0.0/16""#,
            "IPv6Network",
            &["IPv6Network 10.245.0.0/16 is an IPv4 network: IPv6Network must be IPv6"],
        ),
        (
            r#", "IPv6Network": "fd00::1/56""#,
            "IPv6Network",
            &["IPv6Network fd00::1/56 has host bits set; did you mean fd00::/56?"],
        ),
        (
            r#", "IPv6Network": "fe80::/56""#,
            "IPv6Network",
            &[
                "IPv6Network fe80::/56 overlaps fe80::/10, the link-local range",
                "fd00:10:244::/56",
            ],
        ),
        (
            r#", "IPv6Network": "fd00::/56", "IPv6SubnetLen": 123"#,
            "IPv6SubnetLen",
            &["IPv6SubnetLen /123 is too long: node subnets must be /122 or shorter"],
        ),
        (
            r#", "IPv6Network": "fd00::/56", "IPv6SubnetLen": 56"#,
            "IPv6SubnetLen",
            &["IPv6SubnetLen /56 must be longer than the IPv6Network prefix /56"],
        ),
        (
            r#", "IPv6Network": "fd00::/56", "IPv6SubnetLen": 57"#,
            "IPv6SubnetLen",
            &[
                "IPv6SubnetLen /57 cuts IPv6Network fd00::/56 into fewer than four subnets; Flannel requires IPv6SubnetLen /58",
            ],
        ),
        (
            r#", "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd01::""#,
            "IPv6SubnetMin",
            &["IPv6SubnetMin fd01:: is outside IPv6Network fd00::/56"],
        ),
        (
            r#", "IPv6Network": "fd00::/56", "IPv6SubnetMax": "fd00:0:0:3::1""#,
            "IPv6SubnetMax",
            &[
                "IPv6SubnetMax fd00:0:0:3::1 is not aligned to IPv6SubnetLen /64; did you mean fd00:0:0:3::?",
            ],
        ),
        (
            r#", "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00:0:0:9::", "IPv6SubnetMax": "fd00:0:0:8::""#,
            "IPv6SubnetMin",
            &[
                "IPv6SubnetMin fd00:0:0:9:: is above IPv6SubnetMax fd00:0:0:8::: no node subnet is left",
            ],
        ),
        // A node's IPv6 subnet is the one at its IPv4 subnet's index: there must be enough.
        (
            r#", "IPv6Network": "fd00::/120""#,
            "IPv6Network",
            &[
                "IPv6Network fd00::/120 holds 3 node subnets but Network 10.244.0.0/16 holds 255",
                "needs at least 255",
            ],
        ),
        (
            r#", "IPv6Network": "fd00::/56", "IPv6SubnetMax": "fd00:0:0:fe::""#,
            "IPv6Network",
            &["holds 254 node subnets but Network 10.244.0.0/16 holds 255"],
        ),
    ] {
        refused_at(&flannel6(n, rest), field, needles);
    }
    // host-gw, vxlan, udp, ipip and wireguard carry IPv6 so far.
    for ty in ["udp", "ipip", "wireguard"] {
        let config = ClusterConfig::parse(&flannel(
            n,
            &format!(
                r#", "EnableIPv6": true, "IPv6Network": "fd00::/56", "Backend": {{"Type": "{ty}"}}"#
            ),
        ))
        .unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(config.backend.kind.name(), ty);
        assert_eq!(config.ipv6_pools.len(), 1);
    }
    // No Backend is udp, which carries IPv6 too.
    let config = ClusterConfig::parse(&flannel(
        n,
        r#", "EnableIPv6": true, "IPv6Network": "fd00::/56""#,
    ))
    .unwrap();
    assert_eq!(config.backend.kind, BackendKind::Udp);
    assert_eq!(config.ipv6_pools.len(), 1);
    // Flannel's wireguard ListenPortV6, a second port for IPv6, is refused where it would
    // mean one (dual-stack without Mode auto or ipv4).
    refused_at(
        &flannel(
            n,
            r#", "EnableIPv6": true, "IPv6Network": "fd00::/56", "Backend": {"Type": "wireguard", "ListenPortV6": 51821}"#,
        ),
        "Backend.ListenPortV6",
        &[
            "Backend.ListenPortV6 51821 would be a second WireGuard port for IPv6",
            "leave Backend.ListenPortV6 out or set it to 51820",
        ],
    );
}

const TOML_DUAL_STACK: &str = r#"
[[pools]]
name = "pods"
cidr = "10.244.0.0/16"
vxlanMode = "CrossSubnet"
[[pools]]
name = "pods6"
cidr = "fd00:10:244::/56"    # blockSize defaults to /64
vxlanMode = "CrossSubnet"
natOutgoing = false
"#;

const YAML_DUAL_STACK: &str = r#"
# IPv6 first: the pools of each family keep their order.
pools:
  - name: pods6
    cidr: fd00:10:244::/56
    blockSize: 64
    subnetMin: "fd00:10:244:1::"    # YAML reads a trailing ':' as a key's end: quote it
    subnetMax: fd00:10:244:ff::/64
    natOutgoing: false
  - name: pods
    cidr: 10.244.0.0/16
    vxlanMode: CrossSubnet
"#;

#[test]
fn twill_dual_stack_golden() {
    let c = parse(TOML_DUAL_STACK);
    golden("toml-dual-stack.json", &c);
    assert_eq!(
        c.ipv6_pools,
        vec![Pool6 {
            name: "pods6".into(),
            cidr: net6("fd00:10:244::/56"),
            block_size: 64,
            subnet_min: net6("fd00:10:244:1::/64"),
            subnet_max: net6("fd00:10:244:ff::/64"),
            nat_outgoing: false,
        }]
    );
    assert_eq!(
        (c.backend.kind, c.backend.direct_routing),
        (BackendKind::Vxlan, true)
    );
    // The same config in YAML, IPv6 pool first and without modes (it follows the IPv4 pool).
    assert_eq!(parse(YAML_DUAL_STACK), c);
    // And in JSON.
    let json = r#"{"pools": [{"name": "pods", "cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet"},
                  {"name": "pods6", "cidr": "fd00:10:244::/56", "natOutgoing": false}]}"#;
    assert_eq!(parse(json), c);
}

/// twill's form with an IPv4 pool `a` of `cidr4` and an IPv6 pool `b` with `pool6`'s keys.
fn toml_dual(top: &str, cidr4: &str, pool6: &str) -> String {
    format!(
        "{top}\n[[pools]]\nname = \"a\"\ncidr = \"{cidr4}\"\n\
         [[pools]]\nname = \"b\"\n{pool6}\n"
    )
}

#[test]
fn twill_ipv6_pool_keys() {
    // blockSize: 64 by default, anything from the prefix + 1 to /122 when given.
    for (cidr, block, len, min, max) in [
        (
            "fd00::/48",
            None,
            64,
            "fd00:0:0:1::/64",
            "fd00:0:0:ffff::/64",
        ),
        (
            "fd00::/63",
            None,
            65,
            "fd00::8000:0:0:0/65",
            "fd00:0:0:1:8000::/65",
        ),
        ("fd00::/120", None, 122, "fd00::40/122", "fd00::c0/122"),
        (
            "fd00::/56",
            Some(80),
            80,
            "fd00::1:0:0:0/80",
            "fd00:0:0:ff:ffff::/80",
        ),
        (
            "fd00::/64",
            Some(96),
            96,
            "fd00::1:0:0/96",
            "fd00::ffff:ffff:0:0/96",
        ),
        (
            "fd00::/64",
            Some(112),
            112,
            "fd00::1:0/112",
            "fd00::ffff:ffff:ffff:0/112",
        ),
        (
            "fd00::/64",
            Some(122),
            122,
            "fd00::40/122",
            "fd00::ffff:ffff:ffff:ffc0/122",
        ),
        // One leasable subnet: the first is still skipped.
        ("fd00::/121", Some(122), 122, "fd00::40/122", "fd00::40/122"),
    ] {
        let block_key = block.map_or(String::new(), |b| format!("blockSize = {b}\n"));
        // One leasable IPv4 subnet, so that every IPv6 pool holds enough.
        let c = parse(&format!(
            "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/29\"\nblockSize = 30\n\
             [[pools]]\nname = \"b\"\ncidr = \"{cidr}\"\n{block_key}"
        ));
        let pool = &c.ipv6_pools[0];
        assert_eq!(
            (
                pool.block_size,
                pool.subnet_min,
                pool.subnet_max,
                pool.nat_outgoing
            ),
            (len, net6(min), net6(max), true),
            "{cidr} {block:?}"
        );
    }
    // Bounds as an address or as a subnet of the block size; natOutgoing as for IPv4.
    let c = parse(&toml_dual(
        "",
        "10.244.0.0/28",
        "cidr = \"fd00::/56\"\nsubnetMin = \"fd00:0:0:10::\"\nsubnetMax = \"fd00:0:0:12::/64\"\n\
         natOutgoing = false",
    ));
    let pool = &c.ipv6_pools[0];
    assert_eq!(
        (
            pool.subnet_min,
            pool.subnet_max,
            pool.subnet_count(),
            pool.nat_outgoing
        ),
        (net6("fd00:0:0:10::/64"), net6("fd00:0:0:12::/64"), 3, false)
    );
    // Near the top of the address space: u128 arithmetic without overflow.
    let c = parse(&toml_dual(
        "",
        "10.244.0.0/16",
        "cidr = \"4000::/2\"\nblockSize = 122",
    ));
    let pool = &c.ipv6_pools[0];
    assert_eq!(
        (pool.subnet_min, pool.subnet_max),
        (
            net6("4000::40/122"),
            net6("7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffc0/122")
        )
    );
    assert_eq!(pool.subnet_count(), (1u128 << 120) - 1);
    // Unique local, global and documentation prefixes are all ordinary pod ranges.
    for cidr in [
        "fc00::/7",
        "fd12:3456:789a::/48",
        "2001:db8::/32",
        "2600:1f00::/40",
    ] {
        parse(&toml_dual(
            "",
            "10.244.0.0/16",
            &format!("cidr = \"{cidr}\""),
        ));
    }
}

#[test]
fn ipv6_pools_and_the_calico_modes() {
    use BackendKind::*;
    // An IPv6 pool without modes follows the IPv4 pools; with a mode, it must agree.
    for (modes4, modes6, kind, direct) in [
        ("vxlanMode = \"Always\"", "", Vxlan, false),
        (
            "vxlanMode = \"CrossSubnet\"",
            "vxlanMode = \"CrossSubnet\"",
            Vxlan,
            true,
        ),
        ("vxlanMode = \"Never\"", "", HostGw, false),
        (
            "vxlanMode = \"Never\"",
            "ipipMode = \"Never\"",
            HostGw,
            false,
        ),
        ("", "", Vxlan, false),
    ] {
        let c = parse(
            &toml_dual(
                "",
                "10.244.0.0/16",
                &format!("cidr = \"fd00::/56\"\n{modes6}"),
            )
            .replace(
                "cidr = \"10.244.0.0/16\"",
                &format!("cidr = \"10.244.0.0/16\"\n{modes4}"),
            ),
        );
        assert_eq!(
            (c.backend.kind, c.backend.direct_routing),
            (kind, direct),
            "{modes4} / {modes6}"
        );
    }
    let text = |modes4: &str, modes6: &str| {
        format!(
            "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/16\"\n{modes4}\n\
             [[pools]]\nname = \"b\"\ncidr = \"fd00::/56\"\n{modes6}\n"
        )
    };
    refused_at(
        &text("", "ipipMode = \"Always\""),
        "pools[1].ipipMode",
        &["pool b: ipipMode Always: IPIP carries IPv4 only, and cidr fd00::/56 is IPv6"],
    );
    refused_at(
        &text("vxlanMode = \"CrossSubnet\"", "vxlanMode = \"Always\""),
        "pools[1].vxlanMode",
        &[
            "pools disagree on encapsulation",
            "pool b has vxlanMode Always",
        ],
    );
    // An IPv4 pool without modes is Never once another pool speaks, as in Calico.
    refused(
        &text("", "vxlanMode = \"Always\""),
        &["pools disagree", "pool a has vxlanMode and ipipMode Never"],
    );
    // IPv4 pools asking for IPIP: the IPv6 pool follows them, through the ipip tunnel.
    let c = ClusterConfig::parse(&text("ipipMode = \"Always\"", "")).unwrap();
    assert_eq!(c.backend.kind, BackendKind::Ipip);
    assert_eq!(c.ipv6_pools.len(), 1);
}

#[test]
fn twill_ipv6_refusals() {
    let four = "10.244.0.0/16";
    for (top, pool6, field, needles) in [
        (
            "",
            "cidr = \"fd00::1/56\"",
            "pools[1].cidr",
            &["pool b: cidr fd00::1/56 has host bits set; did you mean fd00::/56?"][..],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nblockSize = 123",
            "pools[1].blockSize",
            &["pool b: blockSize /123 is too long: node subnets must be /122 or shorter"],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nblockSize = 56",
            "pools[1].blockSize",
            &["pool b: blockSize /56 must be longer than the cidr prefix /56"],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nblockSize = 129",
            "pools[1].blockSize",
            &["pool b: blockSize 129 is not a prefix length (0 to 128)"],
        ),
        (
            "",
            "cidr = \"fd00::/121\"",
            "pools[1].cidr",
            &["pool b: cidr fd00::/121 is too small"],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nsubnetMin = \"10.244.1.0/24\"",
            "pools[1].subnetMin",
            &["pool b: subnetMin 10.244.1.0/24 is IPv4 but cidr fd00::/56 is IPv6"],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nsubnetMin = \"10.244.1.0\"",
            "pools[1].subnetMin",
            &["pool b: subnetMin \"10.244.1.0\" is not an IPv6 address"],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nsubnetMin = \"fd00:0:0:1::/80\"",
            "pools[1].subnetMin",
            &["pool b: subnetMin fd00:0:0:1::/80 must have the blockSize /64"],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nsubnetMin = \"fd00:0:0:1::8\"",
            "pools[1].subnetMin",
            &[
                "pool b: subnetMin fd00:0:0:1::8 is not aligned to blockSize /64; did you mean fd00:0:0:1::?",
            ],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nsubnetMax = \"fd00:0:1::\"",
            "pools[1].subnetMax",
            &["pool b: subnetMax fd00:0:1:: is outside cidr fd00::/56"],
        ),
        (
            "",
            "cidr = \"fd00::/56\"\nsubnetMin = \"fd00:0:0:5::\"\nsubnetMax = \"fd00:0:0:4::\"",
            "pools[1].subnetMin",
            &[
                "pool b: subnetMin fd00:0:0:5:: is above subnetMax fd00:0:0:4::: no node subnet is left",
            ],
        ),
        (
            "",
            "cidr = \"fd00::/120\"",
            "pools[1].cidr",
            &[
                "the IPv6 pools hold 3 node subnets but the IPv4 pools hold 255",
                "need at least 255",
            ],
        ),
    ] {
        refused_at(&toml_dual(top, four, pool6), field, needles);
    }
    // Reserved IPv6 ranges, with what they are.
    for (cidr, what) in [
        ("::/0", "the unspecified address"),
        ("::/120", "the unspecified address"),
        ("::a00:0/104", "IPv4-compatible"),
        ("::ffff:0.0.0.0/96", "IPv4-mapped"),
        ("::ffff:10.0.0.0/120", "IPv4-mapped"),
        ("64:ff9b::/96", "NAT64"),
        ("64:ff9b:1::/56", "NAT64"),
        ("fe80::/64", "link-local"),
        ("fe00::/8", "link-local"),
        ("fec0::/48", "site-local"),
        ("ff02::/16", "multicast"),
    ] {
        let text = toml_dual("", four, &format!("cidr = \"{cidr}\"\nblockSize = 122"));
        refused_at(&text, "pools[1].cidr", &["pool b: cidr", cidr, what]);
    }
    // A /128 is refused for its size before its range is looked at.
    assert_eq!(
        reserved_overlap6(net6("::1/128")),
        Some((net6("::1/128"), "the loopback address"))
    );
    assert_eq!(reserved_overlap6(net6("fd00::/8")), None);
    // Pools of one family never overlap; names are unique across both; paths are those of
    // the written list.
    let three = "[[pools]]\nname = \"a6\"\ncidr = \"fd00::/56\"\n\
                 [[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/16\"\n\
                 [[pools]]\nname = \"b6\"\ncidr = \"fd00:0:0:80::/57\"\n";
    let e = error_of(three);
    assert!(
        matches!(&e, ConfigError::Conflict { field, with, .. }
            if field == "pools[2].cidr" && with == "pools[0].cidr"),
        "{e:?}"
    );
    refused(
        three,
        &["pool b6 fd00:0:0:80::/57 overlaps pool a6 fd00::/56"],
    );
    let e = error_of(
        &toml_dual("", four, "cidr = \"fd00::/56\"").replace("name = \"b\"", "name = \"a\""),
    );
    assert!(
        matches!(&e, ConfigError::Conflict { field, with, problem }
            if field == "pools[1].name" && with == "pools[0].name"
                && problem.contains("pool name \"a\" is used twice")),
        "{e:?}"
    );
    // An IPv4 and an IPv6 pool never overlap, whatever their bits: af4::/32 starts with the
    // bits of 10.244.0.0.
    parse(&toml_dual("", "10.244.0.0/16", "cidr = \"af4::/32\""));
    // Two IPv6 pools: their subnets count together against the IPv4 ones (four here, where
    // each IPv6 pool holds three).
    let two6 = |last: &str| {
        format!(
            "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/28\"\nblockSize = 30\n\
             subnetMin = \"10.244.0.0\"\n\
             [[pools]]\nname = \"b\"\ncidr = \"fd00::/120\"\n{last}"
        )
    };
    let c = parse(&two6("[[pools]]\nname = \"c\"\ncidr = \"fd01::/120\"\n"));
    let total6: u128 = c.ipv6_pools.iter().map(Pool6::subnet_count).sum();
    assert_eq!((c.pools[0].subnet_count(), total6), (4, 6));
    refused(
        &two6(""),
        &["the IPv6 pools hold 3 node subnets but the IPv4 pools hold 4"],
    );
}

#[test]
fn normalized_dual_stack_json_round_trips_and_is_validated() {
    let c = parse(TOML_DUAL_STACK);
    let json = c.to_json();
    assert!(
        json.contains(r#""ipv6Pools":[{"name":"pods6","cidr":"fd00:10:244::/56","blockSize":64,"subnetMin":"fd00:10:244:1::/64","subnetMax":"fd00:10:244:ff::/64","natOutgoing":false}]"#),
        "{json}"
    );
    assert_eq!(ClusterConfig::from_json(&json).unwrap(), c);
    assert_eq!(ClusterConfig::parse(&json).unwrap(), c);
    assert_eq!(ConfigForm::of(&json), ConfigForm::Twill);
    // IPv4-only configs have no ipv6Pools key (their normalized form is unchanged).
    assert!(!parse(TOML_EXAMPLE).to_json().contains("ipv6Pools"));

    // The store may hold anything: the normalized form is validated, paths in its words.
    for (from, to, field, needle) in [
        (
            "\"fd00:10:244::/56\"",
            "\"fe80::/56\"",
            "ipv6Pools[0].cidr",
            "link-local",
        ),
        (
            "\"subnetMax\":\"fd00:10:244:ff::/64\"",
            "\"subnetMax\":\"fd00:10:244:ff::/80\"",
            "ipv6Pools[0].subnetMax",
            "must have the blockSize /64",
        ),
        (
            "\"name\":\"pods6\"",
            "\"name\":\"pods\"",
            "ipv6Pools[0].name",
            "used twice",
        ),
    ] {
        let bad = json.replace(from, to);
        assert_ne!(bad, json);
        let e = ClusterConfig::from_json(&bad).unwrap_err();
        assert_eq!(e.field(), Some(field), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    // IPv6 pools alone are an IPv6-only cluster; no pool at all is nothing.
    let mut only6 = c.clone();
    only6.pools.clear();
    only6.validate().unwrap();
    only6.ipv6_pools.clear();
    let e = only6.validate().unwrap_err();
    assert!(
        e.to_string().contains("at least one pool is required"),
        "{e}"
    );
}

#[test]
fn ipv6_helpers() {
    let c = parse(TOML_DUAL_STACK);
    assert!(c.has_ipv6());
    assert!(!parse(TOML_EXAMPLE).has_ipv6());
    assert!(c.contains6("fd00:10:244:5::7".parse().unwrap()));
    assert!(!c.contains6("fd00:10:245::1".parse().unwrap()));
    assert_eq!(
        c.pool6_of(net6("fd00:10:244:7::/64"))
            .map(|p| p.name.as_str()),
        Some("pods6")
    );
    assert_eq!(c.pool6_of(net6("fd00:10:244::/48")), None);
}

#[test]
fn bgp_carries_ipv6_pools() {
    // MP-BGP advertises the nodes' IPv6 subnets: IPv6 pools with the bgp backend, in either
    // way of asking for it, and IPv6 route reflectors and peers.
    for top in [
        "backend = \"bgp\"",
        "[bgp]\nasNumber = 64512\nnodeToNodeMesh = false\nrouteReflectors = [\"h1\"]\n\
         [[bgp.peers]]\naddress = \"fd00:1::1\"\nasNumber = 65000",
    ] {
        let text = toml_dual(top, "10.244.0.0/16", "cidr = \"fd00::/56\"");
        let c = ClusterConfig::parse(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(c.backend.kind, BackendKind::Bgp, "{text}");
        assert_eq!(c.ipv6_pools.len(), 1, "{text}");
    }
    // With WireGuard beside BGP (either way of asking for BGP) learned IPv6 routes go
    // through WireGuard as IPv4 ones do.
    for top in [
        "backend = \"bgp\"\n[wireguard]\nenabled = true",
        "[bgp]\nasNumber = 64512\n[wireguard]\nenabled = true",
    ] {
        let text = toml_dual(top, "10.244.0.0/16", "cidr = \"fd00::/56\"");
        let c = ClusterConfig::parse(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert!(c.wireguard.is_some() && c.bgp.is_some(), "{text}");
        assert_eq!(c.ipv6_pools.len(), 1, "{text}");
    }
}

#[test]
fn ipv6_pools_overlapping_the_hosts_networks_are_refused() {
    let host = |net: &str, source: &str| HostNet6 {
        net: net.parse().unwrap(),
        source: source.into(),
    };
    let nets = vec![
        host("2001:db8:1::/64", "address 2001:db8:1::5/64 on eth0"),
        host(
            "fd00:10:244:7::/64",
            "route fd00:10:244:7::/64 via fe80::1 dev eth0",
        ),
    ];
    let err = parse(TOML_DUAL_STACK)
        .check_host_networks6(&nets, ConfigForm::Twill)
        .unwrap_err();
    assert_eq!(err.field(), Some("ipv6Pools[0].cidr"));
    let message = err.to_string();
    for needle in [
        "pool pods6: cidr fd00:10:244::/56 overlaps fd00:10:244:7::/64 of this host",
        "via fe80::1 dev eth0",
    ] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    let err = parse(FLANNEL_DUAL_STACK)
        .check_host_networks6(&nets, ConfigForm::Flannel)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("IPv6Network fd00:10:244::/56 overlaps"),
        "{err}"
    );
    // A host network inside no pool, and IPv4 host networks, leave the IPv6 pools alone.
    parse(TOML_DUAL_STACK)
        .check_host_networks6(&nets[..1], ConfigForm::Twill)
        .unwrap();
    parse(TOML_DUAL_STACK)
        .check_host_networks(
            &[HostNet {
                net: net("192.168.1.0/24"),
                source: "address".into(),
            }],
            ConfigForm::Twill,
        )
        .unwrap();
}

fn arb_pool6(index: u8) -> impl Strategy<Value = Pool6> {
    // Pool `index` lives in fd00:<index>::/32, so pools never overlap; at least 2^18 subnets
    // and a bound range of at least half of them, so the IPv6 pools always hold more subnets
    // than the IPv4 ones of `arb_config` (at most four pools of at most 2^14).
    (32u8..=104, any::<bool>(), any::<u128>(), any::<u128>()).prop_flat_map(
        move |(prefix, nat, a, b)| {
            (prefix + 18..=122).prop_map(move |block| {
                let base = Ipv6Addr::new(0xfd00, u16::from(index), 0, 0, 0, 0, 0, 0);
                let cidr = Ipv6Net::new(base, prefix).unwrap();
                let count = 1u128 << (block - prefix);
                let quarter = count / 4;
                let (lo, hi) = (a % quarter, count - 1 - b % quarter);
                let nth = |n: u128| {
                    let addr = u128::from(cidr.network()) | (n << (128 - block));
                    Ipv6Net::new(Ipv6Addr::from(addr), block).unwrap()
                };
                Pool6 {
                    name: format!("pool6-{index}"),
                    cidr,
                    block_size: block,
                    subnet_min: nth(lo),
                    subnet_max: nth(hi),
                    nat_outgoing: nat,
                }
            })
        },
    )
}

fn arb_dual_stack_config() -> impl Strategy<Value = ClusterConfig> {
    (
        arb_config(),
        proptest::sample::subsequence((0u8..=255).collect::<Vec<_>>(), 1..4),
        any::<bool>(),
    )
        .prop_flat_map(|(config, indices, host_gw)| {
            let pools6: Vec<_> = indices.into_iter().map(arb_pool6).collect();
            (Just(config), pools6, Just(host_gw))
        })
        .prop_map(|(mut config, pools6, host_gw)| {
            config.ipv6_pools = pools6;
            // Every backend carries IPv6; half the cases move to host-gw, the plainest path.
            if host_gw {
                config.backend = Backend::with_defaults(BackendKind::HostGw);
            }
            config
        })
}

proptest! {
    #[test]
    fn valid_dual_stack_configs_round_trip(c in arb_dual_stack_config()) {
        prop_assert!(c.validate().is_ok(), "{:?}", c.validate());
        let json = c.to_json();
        prop_assert_eq!(&ClusterConfig::from_json(&json).unwrap(), &c);
        prop_assert_eq!(&ClusterConfig::parse(&json).unwrap(), &c);
        for pool in &c.ipv6_pools {
            prop_assert!(pool.subnet_count() >= 1);
            prop_assert_eq!(c.pool6_of(pool.subnet_max).map(|p| &p.name), Some(&pool.name));
        }
    }

    /// Cutting the IPv6 pools' ranges below the IPv4 pools' node subnet count is refused, and
    /// the message gives both counts.
    #[test]
    fn too_few_ipv6_subnets_are_refused(mut c in arb_dual_stack_config()) {
        let total4: u128 = c.pools.iter().map(|p| u128::from(p.subnet_count())).sum();
        let keep = total4 - 1;
        // Keep `keep` subnets in the first IPv6 pool, none in the others: drop those.
        c.ipv6_pools.truncate(1);
        let pool = &mut c.ipv6_pools[0];
        if keep == 0 {
            // One IPv4 subnet: no IPv6 pool can hold fewer than one; nothing to refuse.
            return Ok(());
        }
        let shift = 128 - u32::from(pool.block_size);
        let max = (u128::from(pool.subnet_min.addr()) >> shift) + keep - 1;
        pool.subnet_max = Ipv6Net::new(Ipv6Addr::from(max << shift), pool.block_size).unwrap();
        let e = c.validate().unwrap_err().to_string();
        let counts = format!("the IPv6 pools hold {keep} node subnets but the IPv4 pools hold {total4}");
        prop_assert!(e.contains(&counts), "{}", e);
    }
}

// ---- IPv6-only clusters (issue 15) ----------------------------------------------------------

const FLANNEL_IPV6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#;

const TOML_IPV6_ONLY: &str = r#"
backend = "vxlan"
[[pools]]
name = "pods6"
cidr = "fd00:10:244::/56"
blockSize = 80
"#;

#[test]
fn flannel_ipv6_only_golden() {
    let c = parse(FLANNEL_IPV6_ONLY);
    golden("flannel-ipv6-only.json", &c);
    assert!(c.pools.is_empty());
    assert_eq!(c.ipv6_pools.len(), 1);
    assert_eq!(c.ipv6_pools[0].subnet_min, net6("fd00:10:244:1::/64"));
    assert_eq!(ConfigForm::of(FLANNEL_IPV6_ONLY), ConfigForm::Flannel);
    // The IPv4 keys are checked for form and unused, as in flanneld.
    let with_network = FLANNEL_IPV6_ONLY.replace(
        "\"EnableIPv4\":false",
        "\"EnableIPv4\":false,\"Network\":\"10.244.0.0/16\",\"SubnetLen\":24",
    );
    assert_eq!(parse(&with_network), c);
    // The normalized form reads back the same.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(ClusterConfig::from_json(&json).unwrap(), c);
}

#[test]
fn twill_ipv6_only_golden() {
    let c = parse(TOML_IPV6_ONLY);
    golden("toml-ipv6-only.json", &c);
    assert!(c.pools.is_empty());
    assert_eq!(c.ipv6_pools[0].block_size, 80);
    assert_eq!(c.backend.kind, BackendKind::Vxlan);
}

#[test]
fn ipv6_only_refusals() {
    for (text, field, needles) in [
        (
            r#"{"EnableIPv4": false, "Backend": {"Type": "vxlan"}}"#,
            "EnableIPv4",
            &["EnableIPv4 is false but EnableIPv6 is not true"][..],
        ),
        (
            r#"{"EnableIPv4": false, "EnableIPv6": true, "Backend": {"Type": "vxlan"}}"#,
            "IPv6Network",
            &["IPv6Network is missing"][..],
        ),
        (
            r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56", "Network": "10.1.0.0", "Backend": {"Type": "vxlan"}}"#,
            "Network",
            &["is not an IPv4 network in CIDR form"][..],
        ),
        (
            r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56", "SubnetMin": "x", "Backend": {"Type": "vxlan"}}"#,
            "SubnetMin",
            &["SubnetMin"][..],
        ),
        (
            r#"{"EnableIPv4": "no", "EnableIPv6": true, "IPv6Network": "fd00::/56"}"#,
            "EnableIPv4",
            &["EnableIPv4 must be true or false"][..],
        ),
        (
            r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 123, "Backend": {"Type": "vxlan"}}"#,
            "IPv6SubnetLen",
            &["IPv6SubnetLen"][..],
        ),
    ] {
        refused_at(text, field, needles);
    }
    // Every backend runs over an IPv6 underlay; BGP peers over IPv6 (bgp_config.rs has its
    // IPv6-only tests).
    let mut c = parse(TOML_IPV6_ONLY);
    c.bgp = Some(Default::default());
    c.validate().unwrap();
}

/// udp and ipip run over an IPv6 underlay (ipip as `ip6tnl`): an IPv6-only cluster takes
/// them, with or without DirectRouting, in Flannel's form and in twill's.
#[test]
fn ipv6_only_clusters_take_udp_and_ipip() {
    for kind in ["udp", "ipip"] {
        for direct in [false, true] {
            let text = format!(
                r#"{{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56", "Backend": {{"Type": "{kind}", "DirectRouting": {direct}}}}}"#
            );
            let c = parse(&text);
            assert_eq!(c.backend.kind.name(), kind);
            assert_eq!(c.backend.direct_routing, direct);
            assert!(c.pools.is_empty() && c.ipv6_pools.len() == 1, "{c:?}");
        }
        let c = parse(&TOML_IPV6_ONLY.replace("\"vxlan\"", &format!("\"{kind}\"")));
        assert_eq!(c.backend.kind.name(), kind);
        c.validate().unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
    // A missing Backend is udp in Flannel's form.
    let c = parse(r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/56"}"#);
    assert_eq!(c.backend.kind, BackendKind::Udp);
    // The check itself, with the backend set after parsing.
    let mut c = parse(TOML_IPV6_ONLY);
    for kind in [BackendKind::Udp, BackendKind::Ipip] {
        c.backend = twill_types::cluster::Backend::with_defaults(kind);
        c.validate().unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}
