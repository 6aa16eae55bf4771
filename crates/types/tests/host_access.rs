//! The cluster config's `workloadToHost` and `workloadToHostPorts`: parsed from twill's TOML,
//! YAML and JSON forms, defaulted for Flannel's, kept in the normalized form only when set,
//! and refused with messages naming the field.

use twill_types::cluster::{ClusterConfig, HostPort, PortProto, WorkloadToHost};

const POOL_TOML: &str = "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/16\"\n";

fn parse(text: &str) -> ClusterConfig {
    ClusterConfig::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn error(text: &str) -> String {
    match ClusterConfig::parse(text) {
        Ok(c) => panic!("accepted: {c:?}\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_are_drop_and_no_ports() {
    let c = parse(POOL_TOML);
    assert_eq!(c.host_access.workload_to_host, WorkloadToHost::Drop);
    assert!(c.host_access.workload_to_host_ports.is_empty());
    // Flannel's form has no such keys: the defaults.
    let f = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(f.host_access, Default::default());
    // Left out of the normalized form, which thus stays what it was.
    let json = c.to_json();
    assert!(!json.contains("workloadToHost"), "{json}");
    assert_eq!(ClusterConfig::from_json(&json).unwrap(), c);
}

#[test]
fn toml_yaml_and_json_forms() {
    let toml = parse(&format!(
        "workloadToHost = \"Accept\"\nworkloadToHostPorts = [\"tcp:22\", \"UDP:123\", \
         \"tcp:30000-32767\", \"tcp:22\"]\n{POOL_TOML}"
    ));
    assert_eq!(toml.host_access.workload_to_host, WorkloadToHost::Accept);
    assert_eq!(
        toml.host_access.workload_to_host_ports,
        vec![
            HostPort {
                proto: PortProto::Tcp,
                first: 22,
                last: 22
            },
            HostPort {
                proto: PortProto::Udp,
                first: 123,
                last: 123
            },
            HostPort {
                proto: PortProto::Tcp,
                first: 30000,
                last: 32767
            },
        ],
        "duplicates dropped, protocols any case"
    );
    let yaml = parse(
        "workloadToHost: accept\nworkloadToHostPorts: [\"tcp:22\", \"udp:123\", \"tcp:30000-32767\"]\n\
         pools:\n  - name: a\n    cidr: 10.244.0.0/16\n",
    );
    assert_eq!(yaml, toml);
    let json = parse(
        r#"{"workloadToHost":"Accept","workloadToHostPorts":["tcp:22","udp:123","tcp:30000-32767"],
            "pools":[{"name":"a","cidr":"10.244.0.0/16"}]}"#,
    );
    assert_eq!(json, toml);
    // The normalized form keeps them and reads them back.
    let normalized = toml.to_json();
    assert!(
        normalized.contains(r#""workloadToHost":"Accept""#),
        "{normalized}"
    );
    assert!(
        normalized.contains(r#""workloadToHostPorts":["tcp:22","udp:123","tcp:30000-32767"]"#),
        "{normalized}"
    );
    assert_eq!(ClusterConfig::from_json(&normalized).unwrap(), toml);
}

#[test]
fn bad_values_name_the_field() {
    let e = error(&format!("workloadToHost = \"Allow\"\n{POOL_TOML}"));
    assert!(
        e.contains("workloadToHost \"Allow\"") && e.contains("Drop") && e.contains("Accept"),
        "{e}"
    );
    for (entry, says) in [
        ("tcp", "is not PROTO:PORT"),
        ("icmp:1", "protocol \"icmp\" is not tcp, udp or sctp"),
        ("tcp:0", "is not a port (1 to 65535)"),
        ("tcp:70000", "is not a port"),
        ("tcp:x", "is not a port"),
        ("tcp:200-100", "ends before it starts"),
    ] {
        let e = error(&format!(
            "workloadToHostPorts = [\"udp:53\", \"{entry}\"]\n{POOL_TOML}"
        ));
        assert!(
            e.starts_with("workloadToHostPorts[1]:") && e.contains(says),
            "{entry}: {e}"
        );
    }
}

#[test]
fn control_plane_ports_cannot_be_listed() {
    for entry in ["tcp:179", "tcp:2379", "tcp:2380", "udp:8472", "udp:8285"] {
        let e = error(&format!("workloadToHostPorts = [\"{entry}\"]\n{POOL_TOML}"));
        assert!(
            e.contains(&format!("workloadToHostPorts[0] {entry}")) && e.contains("control-plane"),
            "{entry}: {e}"
        );
    }
    // The configured BGP and tunnel ports too.
    let e = error(&format!(
        "backend = \"udp\"\nport = 9000\nworkloadToHostPorts = [\"udp:9000\"]\n{POOL_TOML}"
    ));
    assert!(e.contains("udp:9000"), "{e}");
    let e = error(&format!(
        "workloadToHostPorts = [\"tcp:1790\"]\n[bgp]\nlistenPort = 1790\n{POOL_TOML}"
    ));
    assert!(e.contains("tcp:1790"), "{e}");
    // A range that covers one is allowed: the control port stays closed anyway.
    parse(&format!(
        "workloadToHostPorts = [\"tcp:100-200\"]\n{POOL_TOML}"
    ));
    // The normalized form is checked as well (the store may hold anything).
    let e = ClusterConfig::from_json(
        r#"{"pools":[{"name":"a","cidr":"10.244.0.0/16","blockSize":24,"subnetMin":"10.244.1.0/24",
            "subnetMax":"10.244.255.0/24","natOutgoing":true}],
            "backend":{"kind":"vxlan","vni":1,"port":8472,"directRouting":false},
            "workloadToHostPorts":["tcp:2379"]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("workloadToHostPorts[0] tcp:2379"), "{e}");
    let e = ClusterConfig::from_json(
        r#"{"pools":[{"name":"a","cidr":"10.244.0.0/16","blockSize":24,"subnetMin":"10.244.1.0/24",
            "subnetMax":"10.244.255.0/24","natOutgoing":true}],
            "backend":{"kind":"vxlan","vni":1,"port":8472,"directRouting":false},
            "workloadToHost":"Maybe"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Maybe"), "{e}");
}
