//! Cluster config parsing and validation: every accepted form against golden normalized JSON,
//! each refusal against its message, and properties (round trips, no panics).
//!
//! Golden files live in `tests/golden/`; `TWILL_BLESS=1 cargo test -p twill-types` rewrites
//! them from the current output (then review the diff by hand).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use twill_types::cluster::{Backend, BackendKind, ClusterConfig, Pool};

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
    refused(
        &flannel(n, r#", "EnableIPv6": true"#),
        &["EnableIPv6", "IPv6 not supported yet"],
    );
    refused(
        &flannel(n, r#", "IPv6Network": "fd00::/56""#),
        &["IPv6Network", "IPv6 not supported yet"],
    );
    refused(
        &flannel(n, r#", "EnableIPv4": false"#),
        &["EnableIPv4 is false", "IPv6 not supported yet"],
    );
    refused(
        &flannel("fd00::/56", ""),
        &[
            "Network fd00::/56 is an IPv6 network",
            "IPv6 not supported yet",
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
        "[[pools]]\nname = \"a\"\ncidr = \"fd00::/64\"\n",
        &["pool a: cidr fd00::/64 is an IPv6 network: IPv6 not supported yet"],
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
        text in r#"(\{|\[\[pools\]\]\n|pools:\n  - )?((name|cidr|blockSize|Network|SubnetLen|SubnetMin|Backend|Type|vxlanMode|subnetMax|VNI|Port)[ :=]{1,3}("?[0-9./a-zA-Z-]{0,18}"?|\{|\}|\[|\]|-?[0-9]{1,12})[,\n ]{0,2}){0,8}\}?"#
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
    use twill_types::cluster::{ConfigForm, HostNet};
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
    use twill_types::cluster::ConfigForm;
    assert_eq!(ConfigForm::of(FLANNEL_EXAMPLE), ConfigForm::Flannel);
    assert_eq!(ConfigForm::of(TOML_EXAMPLE), ConfigForm::Twill);
    assert_eq!(ConfigForm::of(YAML_EXAMPLE), ConfigForm::Twill);
    let normalized = parse(FLANNEL_EXAMPLE).to_json();
    assert_eq!(ConfigForm::of(&normalized), ConfigForm::Twill);
}
