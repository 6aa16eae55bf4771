//! A stand-alone speaker for the lab tests (and for trying twill's BGP by hand): flags give
//! the configuration, every speaker event is printed to stdout as one JSON line, and stdin
//! takes `originate PREFIX [NEXTHOP]`, `withdraw PREFIX`, `refresh PEER` and `status`.
//!
//! ```text
//! speaker --asn 65001 --router-id 10.0.0.1 --listen 0.0.0.0:179 \
//!         --peer 10.0.0.2,65002[,client][,passive][,hold=3][,port=179][,local-as=N][,local=IP] \
//!         --originate 10.44.1.0/24[,NEXTHOP] [--cluster-id IP] [--hold 9] \
//!         [--connect-retry 1] [--restarting] [--no-gr] [--gr-time 120] [--next-hop-v6 IP]
//! ```

use std::io::{BufRead, Write};
use std::time::Duration;

use twill_bgp::{PeerConfig, Speaker, SpeakerConfig, SpeakerEvent};

fn parse_peer(s: &str) -> PeerConfig {
    let mut parts = s.split(',');
    let addr = parts
        .next()
        .expect("peer address")
        .parse()
        .expect("peer address");
    let asn = parts.next().expect("peer AS").parse().expect("peer AS");
    let mut p = PeerConfig::new(addr, asn);
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "client" => p.rr_client = true,
            None if opt == "passive" => p.passive = true,
            None if opt == "no-gr" => p.graceful_restart = false,
            Some(("hold", v)) => p.hold_time = Some(v.parse().expect("hold")),
            Some(("port", v)) => p.port = v.parse().expect("port"),
            Some(("local-as", v)) => p.local_as = Some(v.parse().expect("local-as")),
            Some(("local", v)) => p.local_address = Some(v.parse().expect("local address")),
            _ => panic!("unknown peer option {opt}"),
        }
    }
    p
}

fn route(s: &str) -> (ipnet::IpNet, Option<std::net::IpAddr>) {
    match s.split_once(',') {
        Some((p, nh)) => (
            p.parse().expect("prefix"),
            Some(nh.parse().expect("next hop")),
        ),
        None => (s.parse().expect("prefix"), None),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = SpeakerConfig::new(0, std::net::Ipv4Addr::UNSPECIFIED);
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let mut val = || {
            i += 1;
            args.get(i)
                .cloned()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag {
            "--asn" => cfg.asn = val().parse().expect("asn"),
            "--router-id" => cfg.router_id = val().parse().expect("router id"),
            "--listen" => cfg.listen = Some(val().parse().expect("listen address")),
            "--no-listen" => cfg.listen = None,
            "--peer" => cfg.peers.push(parse_peer(&val())),
            "--originate" => cfg.local_routes.push(route(&val())),
            "--cluster-id" => cfg.cluster_id = Some(val().parse().expect("cluster id")),
            "--hold" => cfg.hold_time = val().parse().expect("hold"),
            "--connect-retry" => {
                cfg.connect_retry = Duration::from_secs(val().parse().expect("seconds"))
            }
            "--restarting" => cfg.graceful_restart.restarting = true,
            "--no-gr" => cfg.graceful_restart.enabled = false,
            "--gr-time" => cfg.graceful_restart.restart_time = val().parse().expect("seconds"),
            "--next-hop-v6" => cfg.next_hop_v6 = Some(val().parse().expect("address")),
            other => panic!("unknown flag {other}"),
        }
        i += 1;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let (speaker, mut events) = Speaker::start(cfg).await.expect("start speaker");
        let s2 = speaker.clone();
        // stdin commands on a plain thread; results go through the speaker handle.
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["originate", p] => s2.originate(p.parse().expect("prefix"), None).unwrap(),
                    ["originate", p, nh] => s2
                        .originate(p.parse().expect("prefix"), Some(nh.parse().expect("nh")))
                        .unwrap(),
                    ["withdraw", p] => s2.withdraw(p.parse().expect("prefix")).unwrap(),
                    ["refresh", p] => s2.route_refresh(p.parse().expect("peer")).unwrap(),
                    ["status"] => {
                        let st = handle.block_on(s2.status()).unwrap();
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(
                            out,
                            "{}",
                            serde_json::json!({"event": "status", "status": st})
                        );
                        let _ = out.flush();
                    }
                    _ => eprintln!("unknown command: {line}"),
                }
            }
        });
        // One JSON line per best-route change ({"event": "best_route", "prefix", "best"})
        // and per peer state change ({"event": "peer_state", "peer", "state"}).
        while let Some(ev) = events.recv().await {
            let lines = match ev {
                SpeakerEvent::BestRoutes(changes) => changes
                    .iter()
                    .map(|c| {
                        let mut v = serde_json::to_value(c).expect("json");
                        v["event"] = "best_route".into();
                        v
                    })
                    .collect(),
                SpeakerEvent::PeerState { peer, state } => {
                    vec![serde_json::json!({"event": "peer_state", "peer": peer, "state": state})]
                }
            };
            let mut out = std::io::stdout().lock();
            for v in lines {
                let _ = writeln!(out, "{v}");
            }
            let _ = out.flush();
        }
    });
}
