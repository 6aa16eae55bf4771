//! WireGuard in the cluster config: Flannel's wireguard `Backend` (`ListenPort`, `PSK`,
//! `PersistentKeepaliveInterval`, `MTU`) and twill's Calico-style `wireguard` block on any
//! backend, read into the normalized form (golden files in `tests/golden/`, `TWILL_BLESS=1`
//! rewrites them), each refusal with the field path it names, and the WireGuard port among
//! the ports pods never reach.

use twill_types::cluster::{
    BackendKind, ClusterConfig, ConfigError, EncapMode, Wireguard, tunnel_udp_ports,
};
use twill_types::wg_key;

/// A pre-shared key as `wg genpsk` prints one.
fn psk() -> String {
    wg_key::encode(&[0x42; 32])
}

fn parse(text: &str) -> ClusterConfig {
    ClusterConfig::parse(text).unwrap_or_else(|e| panic!("{text}\nrefused: {e}"))
}

/// The error for `text`, which must name `field` as its path and hold `needle`.
fn refused(text: &str, field: &str, needle: &str) -> ConfigError {
    let err = match ClusterConfig::parse(text) {
        Ok(c) => panic!("{text}\naccepted: {c:?}"),
        Err(e) => e,
    };
    assert_eq!(err.field(), Some(field), "{text}\n{err:?}");
    assert!(
        err.to_string().contains(needle),
        "{text}\n{err} lacks {needle:?}"
    );
    err
}

/// [`refused`] for each `(text, field, needle)`.
fn refuse_each(cases: &[(String, &str, &str)]) {
    for (text, field, needle) in cases {
        refused(text, field, needle);
    }
}

fn golden(name: &str, config: &ClusterConfig) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    twill_testkit::golden_json(&dir, name, config);
}

fn yaml(backend: &str, wireguard: &str) -> String {
    format!(
        "backend: {backend}\nwireguard:\n{wireguard}\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n"
    )
}

#[test]
fn flannels_wireguard_backend_with_every_key() {
    let text = format!(
        r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard","ListenPort":51821,"PSK":"{}","PersistentKeepaliveInterval":25,"MTU":1380}}}}"#,
        psk()
    );
    let c = parse(&text);
    golden("wireguard-flannel.json", &c);
    assert_eq!(
        (c.backend.kind, c.backend.port),
        (BackendKind::Wireguard, 51821)
    );
    let wg = c.wireguard().unwrap();
    assert_eq!(wg.listen_port, 51821);
    assert_eq!(wg.persistent_keepalive, 25);
    assert_eq!(wg.mtu, Some(1380));
    assert_eq!(wg.mode, EncapMode::Always);
    assert_eq!(
        wg.preshared_key.as_ref().map(|k| k.expose()),
        Some(psk().as_str())
    );
    // The key never shows in Debug, nor in what printing code shows.
    assert!(!format!("{c:?}").contains(&psk()));
    assert!(
        !serde_json::to_string(&wg.redacted())
            .unwrap()
            .contains(&psk())
    );
    // The normalized form reads back the same.
    assert_eq!(ClusterConfig::from_json(&c.to_json()).unwrap(), c);

    // Every key optional; zero ports mean the default as elsewhere in Flannel's form.
    let c = parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":0,"PersistentKeepaliveInterval":0}}"#,
    );
    assert_eq!(c.wireguard(), Some(Wireguard::with_port(51820)));
}

#[test]
fn flannel_refusals_name_the_backend_keys() {
    let with = |extra: &str| {
        format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard"{extra}}}}}"#)
    };
    let e = refused(&with(r#","PSK":"c2hvcnQ=""#), "Backend.PSK", "32 bytes");
    assert!(matches!(e, ConfigError::Invalid { .. }));
    // 44 characters, but 31 bytes: not a key, and never quoted back.
    let short = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([1u8; 31])
    };
    assert_eq!(short.len(), 44);
    let e = refused(
        &with(&format!(r#","PSK":"{short}""#)),
        "Backend.PSK",
        "base64",
    );
    assert!(!e.to_string().contains(&short), "{e}");
    refuse_each(&[
        (with(r#","PSK":7"#), "Backend.PSK", "base64 string"),
        (
            with(r#","PersistentKeepaliveInterval":70000"#),
            "Backend.PersistentKeepaliveInterval",
            "0 (off) to 65535",
        ),
        (with(r#","MTU":100"#), "Backend.MTU", "576 to"),
        (
            with(r#","ListenPort":70000"#),
            "Backend.ListenPort",
            "1 to 65535",
        ),
        (
            with(r#","ListenPort":2379"#),
            "Backend.ListenPort",
            "control-plane port",
        ),
        (
            with(r#","Mode":"Auto""#),
            "Backend.Mode",
            "not one of Flannel's modes: separate, auto, ipv4 or ipv6",
        ),
        (
            with(r#","Mode":"ipv6""#),
            "Backend.Mode",
            "runs over the IPv4 underlay",
        ),
        (
            with(r#","ListenPortV6":70000"#),
            "Backend.ListenPortV6",
            "1 to 65535",
        ),
        (
            with(r#","Peers":[]"#),
            "Backend.Peers",
            "PSK, PersistentKeepaliveInterval",
        ),
    ]);
}

#[test]
fn twill_form_wireguard_backend() {
    let c = parse(&yaml(
        "wireguard",
        &format!(
            "  listenPort: 51900\n  mtu: 1400\n  mode: CrossSubnet\n  persistentKeepalive: 10\n  presharedKey: {}",
            psk()
        ),
    ));
    golden("wireguard-backend-yaml.json", &c);
    assert_eq!(
        (c.backend.kind, c.backend.port),
        (BackendKind::Wireguard, 51900)
    );
    let wg = c.wireguard().unwrap();
    assert_eq!(wg.mode, EncapMode::CrossSubnet);
    assert_eq!((wg.mtu, wg.persistent_keepalive), (Some(1400), 10));

    // No block: the defaults; `port` is the listen port too.
    let c = parse(
        "backend = \"wireguard\"\nport = 4500\n[[pools]]\nname = \"p\"\ncidr = \"10.244.0.0/16\"\n",
    );
    assert_eq!(c.wireguard(), Some(Wireguard::with_port(4500)));
    assert_eq!(c.backend.port, 4500);
    // Both, agreeing.
    let c = parse(&format!(
        "port: 4500\n{}",
        yaml("wireguard", "  listenPort: 4500")
    ));
    assert_eq!(c.backend.port, 4500);
}

#[test]
fn twill_form_encryption_on_every_backend() {
    for backend in ["host-gw", "vxlan", "udp", "ipip"] {
        let c = parse(&yaml(backend, "  enabled: true"));
        assert_eq!(c.backend.kind.name(), backend);
        assert_eq!(
            c.wireguard(),
            Some(Wireguard::with_port(51820)),
            "{backend}"
        );
    }
    let c = parse(&yaml("bgp", "  enabled: true\n  mode: CrossSubnet"));
    assert_eq!(c.backend.kind, BackendKind::Bgp);
    assert_eq!(c.wireguard().unwrap().mode, EncapMode::CrossSubnet);
    golden("wireguard-encrypt-bgp.json", &c);
    // The block is the switch: present, it is on unless it says otherwise.
    assert!(
        parse(&yaml("vxlan", "  listenPort: 51999"))
            .wireguard
            .is_some()
    );
    let off = parse(&yaml("vxlan", "  enabled: false\n  listenPort: 51999"));
    assert_eq!(off.wireguard(), None);
    // Off, the normalized form is what it was before WireGuard existed.
    assert!(!off.to_json().contains("wireguard"), "{}", off.to_json());
    // TOML too, with Calico's modes on the pools.
    let c = parse(
        "[wireguard]\nenabled = true\nmode = \"CrossSubnet\"\n[[pools]]\nname = \"p\"\ncidr = \"10.244.0.0/16\"\nvxlanMode = \"CrossSubnet\"\n",
    );
    assert_eq!(c.backend.kind, BackendKind::Vxlan);
    assert!(c.backend.direct_routing);
    assert_eq!(c.wireguard().unwrap().mode, EncapMode::CrossSubnet);
}

#[test]
fn twill_form_refusals_name_the_field() {
    let bgp_port = "backend: bgp\nbgp:\n  listenPort: 1179\nwireguard:\n  listenPort: 1179\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n";
    let port = "wireguard.listenPort";
    let mtu = "wireguard.mtu";
    let mode = "wireguard.mode";
    refuse_each(&[
        (
            yaml("vxlan", "  listenPort: 8472"),
            port,
            "the vxlan backend's port too",
        ),
        (
            format!("port: 9000\n{}", yaml("udp", "  listenPort: 9000")),
            port,
            "the udp backend's port too",
        ),
        (
            yaml("host-gw", "  listenPort: 179"),
            port,
            "control-plane port",
        ),
        (
            yaml("host-gw", "  listenPort: 2380"),
            port,
            "control-plane port",
        ),
        (bgp_port.to_owned(), port, "control-plane port"),
        (yaml("host-gw", "  listenPort: 0"), port, "1 to 65535"),
        (yaml("host-gw", "  listenPort: 65536"), port, "1 to 65535"),
        (yaml("host-gw", "  mtu: 575"), mtu, "576 to 65475"),
        (yaml("host-gw", "  mtu: 65476"), mtu, "576 to 65475"),
        (yaml("host-gw", "  mtu: -1"), mtu, "negative"),
        (yaml("host-gw", "  mode: Never"), mode, "enabled: false"),
        (
            yaml("host-gw", "  mode: always"),
            mode,
            "Always or CrossSubnet",
        ),
        (
            yaml("host-gw", "  persistentKeepalive: -5"),
            "wireguard.persistentKeepalive",
            "0 (off) to 65535",
        ),
        (
            yaml("wireguard", "  enabled: false"),
            "wireguard.enabled",
            "the backend is wireguard",
        ),
        (
            format!("port: 4500\n{}", yaml("wireguard", "  listenPort: 4501")),
            port,
            "disagree",
        ),
    ]);
    let e = refused(
        &yaml("host-gw", "  presharedKey: not-a-key"),
        "wireguard.presharedKey",
        "32 bytes",
    );
    assert!(!e.to_string().contains("not-a-key"), "{e}");
    // Unknown keys are the parser's (twill's form reports them as syntax errors).
    let e = ClusterConfig::parse(&yaml("host-gw", "  enable: true")).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert!(e.to_string().contains("enable"), "{e}");
}

#[test]
fn the_normalized_form_is_checked_too() {
    let mut c = parse(&yaml("vxlan", "  enabled: true"));
    c.wireguard.as_mut().unwrap().listen_port = c.backend.port;
    let e = ClusterConfig::from_json(&c.to_json()).unwrap_err();
    assert_eq!(e.field(), Some("wireguard.listenPort"));
    let mut c = parse(&yaml("wireguard", "  listenPort: 4000"));
    c.backend.port = 4001;
    let e = ClusterConfig::from_json(&c.to_json()).unwrap_err();
    assert_eq!(e.field(), Some("wireguard.listenPort"), "{e}");
}

#[test]
fn the_wireguard_port_is_closed_to_pods() {
    let c = parse(&yaml("host-gw", "  listenPort: 51999"));
    assert!(tunnel_udp_ports(&c).contains(&51999));
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#);
    assert!(tunnel_udp_ports(&c).contains(&51820));
    // Without WireGuard, its default port is nobody's.
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert!(!tunnel_udp_ports(&c).contains(&51820));
    // Pods can be given no way to it either.
    let text = "backend: host-gw\nwireguard: {}\nworkloadToHostPorts: [\"udp:51820\"]\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n";
    let e = ClusterConfig::parse(text).unwrap_err();
    assert_eq!(e.field(), Some("workloadToHostPorts[0]"), "{e}");
}

/// Flannel's `Mode` and `ListenPortV6` against twill's one device for both families: what
/// means one device (or nothing) is accepted, a second device or port for IPv6 is refused
/// with why, and the normalized config is the same whatever the accepted spelling.
#[test]
fn flannel_wireguard_address_family_keys() {
    let dual = |extra: &str| {
        format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{{"Type":"wireguard"{extra}}}}}"#
        )
    };
    let ipv4_only = |extra: &str| {
        format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard"{extra}}}}}"#)
    };
    let plain = parse(&dual(""));
    assert_eq!(plain.backend.kind, BackendKind::Wireguard);
    assert_eq!(plain.ipv6_pools.len(), 1);
    for extra in [
        r#","Mode":"auto""#,
        r#","Mode":"ipv4""#,
        // flanneld ignores ListenPortV6 outside separate mode; so does twill.
        r#","Mode":"auto","ListenPortV6":51821"#,
        r#","ListenPortV6":51820"#,
    ] {
        assert_eq!(parse(&dual(extra)), plain, "{extra}");
    }
    assert_eq!(
        parse(&dual(r#","ListenPort":51900,"ListenPortV6":51900"#))
            .wireguard()
            .unwrap()
            .listen_port,
        51900
    );
    // IPv4 only: separate is the one device, and ListenPortV6 means nothing (as in flanneld).
    let v4 = parse(&ipv4_only(""));
    for extra in [r#","Mode":"separate""#, r#","ListenPortV6":51821"#] {
        assert_eq!(parse(&ipv4_only(extra)), v4, "{extra}");
    }
    let e = refused(
        &dual(r#","Mode":"separate""#),
        "Backend.Mode",
        "separate asks for a second WireGuard device and port for IPv6",
    );
    assert!(
        e.to_string()
            .contains(r#"use "Mode": "auto" or leave Mode out"#),
        "{e}"
    );
    refused(
        &dual(r#","ListenPortV6":51821"#),
        "Backend.ListenPortV6",
        "would be a second WireGuard port for IPv6",
    );
    refused(
        &dual(r#","Mode":"separate","ListenPortV6":51820"#),
        "Backend.Mode",
        "twill carries both families through one WireGuard device",
    );
}

/// twill's wireguard section on a dual-stack cluster of any backend that carries IPv6.
#[test]
fn twill_form_wireguard_on_a_dual_stack_cluster() {
    for backend in ["host-gw", "vxlan", "udp", "ipip", "wireguard"] {
        let c = parse(&format!(
            "backend: {backend}\nwireguard: {{enabled: true}}\npools:\n  - {{name: p, cidr: 10.244.0.0/16}}\n  - {{name: p6, cidr: 'fd00:10:244::/48'}}\n"
        ));
        assert!(c.wireguard().is_some(), "{backend}");
        assert_eq!(c.ipv6_pools.len(), 1, "{backend}");
    }
}

/// An IPv6-only net-conf.json (`EnableIPv4: false`) with Flannel's wireguard backend.
fn flannel_ipv6_only(extra: &str) -> String {
    format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{{"Type":"wireguard"{extra}}}}}"#
    )
}

/// Flannel's wireguard backend in an IPv6-only cluster, as flanneld runs it there: one
/// device whatever the `Mode`; `separate` (flanneld's default) listens on `ListenPortV6`
/// (flanneld's `flannel-wg-v6`), `auto` and `ipv6` on `ListenPort`; `ipv4` is refused.
#[test]
fn flannel_wireguard_in_an_ipv6_only_cluster() {
    let port = |extra: &str| {
        let c = parse(&flannel_ipv6_only(extra));
        assert!(c.pools.is_empty(), "{extra}");
        assert_eq!(c.ipv6_pools.len(), 1, "{extra}");
        assert_eq!(c.backend.kind, BackendKind::Wireguard, "{extra}");
        let wg = c.wireguard().unwrap();
        assert_eq!(c.backend.port, wg.listen_port, "{extra}");
        assert!(tunnel_udp_ports(&c).contains(&wg.listen_port), "{extra}");
        wg.listen_port
    };
    // separate, spelled out or by default: flanneld's IPv6 device on ListenPortV6.
    for extra in ["", r#","Mode":"separate""#, r#","ListenPort":51900"#] {
        assert_eq!(port(extra), 51821, "{extra}");
    }
    assert_eq!(port(r#","ListenPortV6":51999"#), 51999);
    assert_eq!(port(r#","Mode":"separate","ListenPortV6":0"#), 51821);
    // auto and ipv6: the one device on ListenPort; ListenPortV6 means nothing.
    for mode in ["auto", "ipv6"] {
        assert_eq!(port(&format!(r#","Mode":"{mode}""#)), 51820, "{mode}");
        assert_eq!(
            port(&format!(
                r#","Mode":"{mode}","ListenPort":51900,"ListenPortV6":51999"#
            )),
            51900,
            "{mode}"
        );
    }
    refused(
        &flannel_ipv6_only(r#","Mode":"ipv4""#),
        "Backend.Mode",
        "ipv4 sends WireGuard to the peers' IPv4 addresses, and this cluster is IPv6-only",
    );
    // Messages about the port name the key it came from.
    refused(
        &flannel_ipv6_only(r#","ListenPortV6":2379"#),
        "Backend.ListenPortV6",
        "control-plane port",
    );
    // ipv6 stays refused where IPv4 pools give both ends an IPv4 underlay.
    refused(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"wireguard","Mode":"ipv6"}}"#,
        "Backend.Mode",
        "ipv6 is for IPv6-only clusters",
    );
    golden(
        "wireguard-flannel-ipv6-only.json",
        &parse(&flannel_ipv6_only(r#","PersistentKeepaliveInterval":25"#)),
    );
}

/// twill's form: an IPv6-only cluster takes the wireguard backend and the wireguard section
/// on host-gw and vxlan (Always and CrossSubnet); udp, ipip and bgp are not this test's.
#[test]
fn twill_form_wireguard_in_an_ipv6_only_cluster() {
    for backend in ["host-gw", "vxlan", "wireguard"] {
        for mode in ["Always", "CrossSubnet"] {
            let c = parse(&format!(
                "backend: {backend}\nwireguard: {{enabled: true, mode: {mode}}}\npools:\n  - {{name: p6, cidr: 'fd00:10:244::/56'}}\n"
            ));
            assert!(c.pools.is_empty(), "{backend}");
            let wg = c
                .wireguard()
                .unwrap_or_else(|| panic!("{backend}: no wireguard"));
            assert_eq!(wg.listen_port, 51820, "{backend}");
            assert_eq!(
                wg.mode == EncapMode::CrossSubnet,
                mode == "CrossSubnet",
                "{backend} {mode}"
            );
        }
    }
    // The check itself, on a config built in code.
    let mut c = parse("backend: vxlan\npools:\n  - {name: p6, cidr: 'fd00:10:244::/56'}\n");
    c.wireguard = Some(Wireguard::with_port(51820));
    c.validate().unwrap();
    c.backend = twill_types::cluster::Backend::with_defaults(BackendKind::Wireguard);
    c.validate().unwrap();
}
