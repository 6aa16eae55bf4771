//! Bounded randomized runs of the plugin's input parsing (the same checks as the cargo-fuzz
//! target `crates/cni/fuzz`, which needs a nightly-free `cargo fuzz -s none` install): random
//! bytes, and random configurations built from the real keys with random values.

use proptest::prelude::*;
use serde_json::{Value, json};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,24}".prop_map(Value::from),
        prop::sample::select(vec![
            "10.0.0.0/24",
            "0.0.0.0/0",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "224.0.0.0/4",
            "fe80::/64",
            "::/0",
            "ff00::/8",
            "fd00::/64",
            "10.0.0.1/24",
            ".",
            "..",
            "",
            "/var/lib/twill",
            "rel/dir",
            "bridge",
            "routed",
            "1.1.0",
            "0.4.0",
            "twill0",
        ])
        .prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn conf() -> impl Strategy<Value = Value> {
    let keys = [
        "cniVersion",
        "name",
        "mode",
        "bridge",
        "ranges",
        "ipMasq",
        "dataDir",
        "mtu",
        "dns",
        "prevResult",
        "runtimeConfig",
        "cni.dev/valid-attachments",
    ];
    (
        prop::collection::vec((prop::sample::select(keys.to_vec()), value()), 0..8),
        prop::collection::vec(scalar(), 0..3),
        value(),
    )
        .prop_map(|(pairs, ranges, labels)| {
            let mut c = json!({"cniVersion": "1.1.0", "name": "n", "ranges": ranges,
                               "dataDir": "/nonexistent/twill-props",
                               "runtimeConfig": {"labels": labels}});
            for (k, v) in pairs {
                c[k] = v;
            }
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(args in "[ -~]{0,40}", bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut data = args.into_bytes();
        data.push(0);
        data.extend(bytes);
        twill_cni::config::check_parse(&data);
    }

    #[test]
    fn random_configurations_keep_the_invariants(args in "[ -~;=]{0,40}", c in conf()) {
        let mut data = args.into_bytes();
        data.push(0);
        data.extend(c.to_string().into_bytes());
        twill_cni::config::check_parse(&data);
    }
}
