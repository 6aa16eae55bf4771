//! Property tests of the mesh topology: gossip over random graphs (reordered, duplicated and
//! stale delivery, version bumps and restarts) converges; routes use only symmetric
//! established connections, are loop-free and shortest; broadcast trees reach every
//! reachable peer exactly once; old versions never overwrite newer ones; oversized updates
//! are refused whole. Plus a measurement of how many gossip rounds a new peer takes to be
//! known to a 20-peer mesh.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;

use proptest::prelude::*;
use twill_mesh::topology::{
    Connection, MAX_CONNECTIONS, MAX_NICKNAME_LEN, MAX_PEERS, PeerEntry, PeerName, Topology,
    TopologyError,
};

/// A small deterministic generator for simulation choices (seeded by proptest).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

/// Names not in index order, so the lowest-name tie-break is exercised for real.
fn name_of(i: usize) -> PeerName {
    PeerName((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20)
}

fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 6783))
}

/// The ground truth: which peer reports which connection, and with which flags.
#[derive(Clone, Debug)]
struct Graph {
    n: usize,
    /// connections[i] = what peer i reports.
    connections: Vec<Vec<Connection>>,
    /// Symmetric established adjacency (the only links gossip and routes may use).
    symmetric: Vec<BTreeSet<usize>>,
}

impl Graph {
    /// `links`: (a, b, flags). Three times in four the link is symmetric and established on
    /// both ends; otherwise the flags pick who reports it and who says it is established.
    fn build(n: usize, links: &[(usize, usize, u8)]) -> Graph {
        let mut reported: BTreeMap<(usize, usize), bool> = BTreeMap::new();
        for &(a, b, flags) in links {
            let (a, b) = (a % n, b % n);
            if a == b {
                continue;
            }
            let (a_reports, b_reports, a_est, b_est) = if flags % 4 != 0 {
                (true, true, true, true)
            } else {
                (
                    flags & 4 != 0,
                    flags & 8 != 0,
                    flags & 16 != 0,
                    flags & 32 != 0,
                )
            };
            if a_reports {
                reported.insert((a, b), a_est);
            }
            if b_reports {
                reported.insert((b, a), b_est);
            }
        }
        let mut connections = vec![Vec::new(); n];
        for (&(from, to), &established) in &reported {
            connections[from].push(Connection {
                peer: name_of(to),
                address: addr_of(to),
                established,
                outbound: from < to,
            });
        }
        let mut symmetric = vec![BTreeSet::new(); n];
        for (&(from, to), &established) in &reported {
            if established && reported.get(&(to, from)) == Some(&true) {
                symmetric[from].insert(to);
            }
        }
        Graph {
            n,
            connections,
            symmetric,
        }
    }

    /// Hop distances from `from` over symmetric established links.
    fn distances(&self, from: usize) -> Vec<Option<usize>> {
        let mut dist = vec![None; self.n];
        dist[from] = Some(0);
        let mut queue = VecDeque::from([from]);
        while let Some(i) = queue.pop_front() {
            for &j in &self.symmetric[i] {
                if dist[j].is_none() {
                    dist[j] = Some(dist[i].unwrap() + 1);
                    queue.push_back(j);
                }
            }
        }
        dist
    }
}

fn index_of(name: PeerName, n: usize) -> usize {
    (0..n).find(|&i| name_of(i) == name).expect("known name")
}

#[derive(Clone, Copy)]
struct Disorder {
    /// Budget of duplicated deliveries.
    duplicates: usize,
    /// Budget of re-deliveries of an old message (stale news).
    stale: usize,
    /// Budget of version bumps (update_self with the same connections) mid-gossip.
    bumps: usize,
    /// Budget of restarts (fresh uid, version 1) mid-gossip.
    restarts: usize,
}

/// Runs gossip to quiescence: each peer sends everything it knows to its symmetric
/// neighbours, and onwards whatever a merge changed; delivery order is random, with
/// duplicates, stale re-deliveries, version bumps and restarts mixed in.
fn gossip_to_quiescence(graph: &Graph, seed: u64, mut disorder: Disorder) -> Vec<Topology> {
    let mut rng = SplitMix(seed);
    let mut peers: Vec<Topology> = (0..graph.n)
        .map(|i| {
            let mut t = Topology::new(name_of(i), format!("host-{i}"), rng.next());
            t.update_self(graph.connections[i].clone()).unwrap();
            t
        })
        .collect();
    let mut pending: Vec<(usize, Vec<PeerEntry>)> = Vec::new();
    let mut history: Vec<(usize, Vec<PeerEntry>)> = Vec::new();
    let send_all = |from: usize, data: &Vec<PeerEntry>, pending: &mut Vec<_>| {
        for &to in &graph.symmetric[from] {
            pending.push((to, data.clone()));
        }
    };
    for (i, peer) in peers.iter().enumerate() {
        send_all(i, &peer.gossip_data(), &mut pending);
    }
    while !pending.is_empty() {
        if disorder.bumps > 0 && rng.chance(20) {
            disorder.bumps -= 1;
            let i = rng.below(graph.n);
            peers[i].update_self(graph.connections[i].clone()).unwrap();
            let own = vec![peers[i].own_entry().clone()];
            send_all(i, &own, &mut pending);
        }
        if disorder.restarts > 0 && rng.chance(40) {
            disorder.restarts -= 1;
            let i = rng.below(graph.n);
            peers[i] = Topology::new(name_of(i), format!("host-{i}"), rng.next());
            peers[i].update_self(graph.connections[i].clone()).unwrap();
            // Reconnecting exchanges full topologies both ways, as a new connection does.
            send_all(i, &peers[i].gossip_data(), &mut pending);
            for &j in &graph.symmetric[i] {
                pending.push((i, peers[j].gossip_data()));
            }
        }
        let pick = rng.below(pending.len());
        let (to, data) = pending.swap_remove(pick);
        if disorder.duplicates > 0 && rng.chance(8) {
            disorder.duplicates -= 1;
            pending.push((to, data.clone()));
        }
        deliver(&mut peers, graph, to, &data, &mut pending);
        history.push((to, data));
        if disorder.stale > 0 && rng.chance(8) {
            disorder.stale -= 1;
            let (to, data) = history[rng.below(history.len())].clone();
            deliver(&mut peers, graph, to, &data, &mut pending);
        }
    }
    peers
}

fn deliver(
    peers: &mut [Topology],
    graph: &Graph,
    to: usize,
    data: &[PeerEntry],
    pending: &mut Vec<(usize, Vec<PeerEntry>)>,
) {
    let changes = peers[to].merge(data).expect("honest updates are in bounds");
    if !changes.is_empty() {
        let onwards = peers[to].gossip_data_for(&changes.updated);
        for &next in &graph.symmetric[to] {
            pending.push((next, onwards.clone()));
        }
    }
}

fn components(graph: &Graph) -> Vec<BTreeSet<usize>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for i in 0..graph.n {
        if seen.contains(&i) {
            continue;
        }
        let comp: BTreeSet<usize> = graph
            .distances(i)
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .map(|(j, _)| j)
            .collect();
        seen.extend(comp.iter().copied());
        out.push(comp);
    }
    out
}

fn graph_strategy() -> impl Strategy<Value = (Graph, u64)> {
    (2usize..=30)
        .prop_flat_map(|n| {
            (
                Just(n),
                prop::collection::vec((0..n, 0..n, any::<u8>()), 0..=n * 3),
                any::<u64>(),
            )
        })
        .prop_map(|(n, links, seed)| (Graph::build(n, &links), seed))
}

fn assert_converged(graph: &Graph, peers: &[Topology]) {
    for comp in components(graph) {
        // Every member's view is exactly the members' own (final) entries.
        let truth: Vec<PeerEntry> = comp.iter().map(|&i| peers[i].own_entry().clone()).collect();
        let mut truth = truth;
        truth.sort_by_key(|e| e.name);
        for &i in &comp {
            assert_eq!(
                peers[i].gossip_data(),
                truth,
                "peer {i} disagrees within {comp:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn gossip_converges_despite_reordering_duplicates_stale_news_and_restarts(
        (graph, seed) in graph_strategy()
    ) {
        let disorder = Disorder { duplicates: 50, stale: 50, bumps: 10, restarts: 3 };
        let peers = gossip_to_quiescence(&graph, seed, disorder);
        assert_converged(&graph, &peers);
        // Garbage collection keeps at least the whole component (gossip only spread within it).
        for comp in components(&graph) {
            for &i in &comp {
                let mut peer = peers[i].clone();
                prop_assert!(peer.garbage_collect().is_empty());
            }
        }
    }

    #[test]
    fn routes_are_symmetric_established_loop_free_and_shortest((graph, seed) in graph_strategy()) {
        let disorder = Disorder { duplicates: 10, stale: 10, bumps: 0, restarts: 0 };
        let peers = gossip_to_quiescence(&graph, seed, disorder);
        let routes: Vec<HashMap<PeerName, PeerName>> = peers.iter().map(Topology::routes).collect();
        for from in 0..graph.n {
            let dist = graph.distances(from);
            let reachable: BTreeSet<PeerName> = (0..graph.n)
                .filter(|&j| j != from && dist[j].is_some())
                .map(name_of)
                .collect();
            let routed: BTreeSet<PeerName> = routes[from].keys().copied().collect();
            prop_assert_eq!(&routed, &reachable);
            for (&dest, &hop) in &routes[from] {
                let hop_index = index_of(hop, graph.n);
                prop_assert!(graph.symmetric[from].contains(&hop_index), "hop over a non-symmetric link");
                // Follow each peer's own routes: exactly the shortest distance, so no loop.
                let dest_index = index_of(dest, graph.n);
                let want = dist[dest_index].unwrap();
                let mut at = from;
                let mut hops = 0;
                while at != dest_index {
                    let next = index_of(routes[at][&dest], graph.n);
                    prop_assert!(graph.symmetric[at].contains(&next));
                    at = next;
                    hops += 1;
                    prop_assert!(hops <= want, "longer than the shortest path (or a loop)");
                }
                prop_assert_eq!(hops, want);
            }
        }
    }

    #[test]
    fn broadcast_reaches_every_reachable_peer_exactly_once((graph, seed) in graph_strategy()) {
        let disorder = Disorder { duplicates: 10, stale: 10, bumps: 0, restarts: 0 };
        let peers = gossip_to_quiescence(&graph, seed, disorder);
        for source in 0..graph.n {
            let dist = graph.distances(source);
            let mut received = vec![0usize; graph.n];
            let mut queue = VecDeque::from([source]);
            while let Some(at) = queue.pop_front() {
                for next in peers[at].broadcast_next_hops(name_of(source)) {
                    let next = index_of(next, graph.n);
                    prop_assert!(graph.symmetric[at].contains(&next), "forwarded over a non-symmetric link");
                    received[next] += 1;
                    prop_assert!(received[next] == 1, "duplicate delivery to {}", next);
                    queue.push_back(next);
                }
            }
            for j in 0..graph.n {
                let want = usize::from(j != source && dist[j].is_some());
                prop_assert_eq!(received[j], want, "peer {} from source {}", j, source);
            }
        }
    }

    /// Per name, the stored entry is always the greatest (version, uid) heard so far, and the
    /// final state does not depend on delivery order.
    #[test]
    fn an_old_version_never_overwrites_a_newer_one(
        heard in prop::collection::vec((0usize..3, 1u64..6, 0u64..3), 1..40),
        seed in any::<u64>(),
    ) {
        let entries: Vec<PeerEntry> = heard
            .iter()
            .map(|&(who, version, uid)| PeerEntry {
                name: name_of(who),
                nickname: format!("v{version}u{uid}"),
                uid,
                version,
                connections: vec![],
            })
            .collect();
        let me = PeerName(u64::MAX);
        let mut topo = Topology::new(me, "me", 7);
        let mut best: BTreeMap<PeerName, (u64, u64)> = BTreeMap::new();
        for entry in &entries {
            let before = topo.entry(entry.name).map(|e| (e.version, e.uid));
            let changes = topo.merge(std::slice::from_ref(entry)).unwrap();
            let key = (entry.version, entry.uid);
            let top = best.entry(entry.name).or_insert(key);
            *top = (*top).max(key);
            let stored = topo.entry(entry.name).unwrap();
            prop_assert_eq!((stored.version, stored.uid), *top);
            prop_assert_eq!(changes.updated.contains(&entry.name), before.is_none_or(|b| b < key));
        }
        // Any other order (and duplicates) ends in the same state.
        let mut shuffled = entries.clone();
        let mut rng = SplitMix(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
        shuffled.extend(entries.iter().take(5).cloned());
        let mut other = Topology::new(me, "me", 7);
        other.merge(&shuffled).unwrap();
        prop_assert_eq!(other, topo);
    }
}

fn entry(i: usize, uid: u64, version: u64, connections: Vec<Connection>) -> PeerEntry {
    PeerEntry {
        name: name_of(i),
        nickname: format!("host-{i}"),
        uid,
        version,
        connections,
    }
}

fn link(to: usize, established: bool) -> Connection {
    Connection {
        peer: name_of(to),
        address: addr_of(to),
        established,
        outbound: true,
    }
}

#[test]
fn a_restarted_peer_lifts_its_version_above_its_old_incarnation() {
    let mut old = Topology::new(name_of(0), "host-0", 1);
    for _ in 0..9 {
        old.update_self(vec![link(1, true)]).unwrap();
    }
    let mut neighbour = Topology::new(name_of(1), "host-1", 2);
    neighbour.merge(&old.gossip_data()).unwrap();
    assert_eq!(neighbour.entry(name_of(0)).unwrap().version, 10);

    // Restart: new uid, version 1. Its news alone loses to the old incarnation...
    let mut restarted = Topology::new(name_of(0), "host-0", 99);
    restarted.update_self(vec![link(1, true)]).unwrap();
    assert!(
        neighbour
            .merge(&restarted.gossip_data())
            .unwrap()
            .is_empty()
    );
    // ...until it hears the old entry (first exchange on the new connection) and jumps.
    let changes = restarted.merge(&neighbour.gossip_data()).unwrap();
    assert!(changes.self_bumped);
    assert_eq!(restarted.own_entry().version, 11);
    assert_eq!(restarted.own_entry().uid, 99);
    let changes = neighbour
        .merge(&restarted.gossip_data_for(&changes.updated))
        .unwrap();
    assert!(changes.updated.contains(&name_of(0)));
    assert_eq!(neighbour.entry(name_of(0)).unwrap().uid, 99);
    // The echo of its own entry does not bump it again.
    assert!(
        !restarted
            .merge(&neighbour.gossip_data())
            .unwrap()
            .self_bumped
    );
}

#[test]
fn oversized_updates_are_refused_whole() {
    let mut topo = Topology::new(name_of(0), "host-0", 1);
    let before = topo.clone();

    let too_many: Vec<PeerEntry> = (1..=MAX_PEERS + 1)
        .map(|i| entry(i, 1, 1, vec![]))
        .collect();
    assert!(matches!(
        topo.merge(&too_many),
        Err(TopologyError::TooManyEntries { .. })
    ));

    let fat = (0..=MAX_CONNECTIONS).map(|i| link(i + 2, true)).collect();
    let update = vec![entry(1, 1, 1, vec![]), entry(2, 1, 1, fat)];
    assert!(matches!(
        topo.merge(&update),
        Err(TopologyError::TooManyConnections { .. })
    ));

    let mut long_name = entry(1, 1, 1, vec![]);
    long_name.nickname = "x".repeat(MAX_NICKNAME_LEN + 1);
    assert!(matches!(
        topo.merge(&[long_name]),
        Err(TopologyError::NicknameTooLong { .. })
    ));
    assert_eq!(topo, before, "a refused update changes nothing");

    // Growth past the cap across several updates is refused too.
    let first: Vec<PeerEntry> = (1..MAX_PEERS).map(|i| entry(i, 1, 1, vec![])).collect();
    topo.merge(&first).unwrap();
    assert_eq!(topo.len(), MAX_PEERS);
    let full = topo.clone();
    assert!(matches!(
        topo.merge(&[entry(MAX_PEERS + 5, 1, 1, vec![])]),
        Err(TopologyError::TopologyFull { .. })
    ));
    assert_eq!(topo, full);
    // Newer versions of known peers still go in when full.
    assert!(!topo.merge(&[entry(1, 1, 2, vec![])]).unwrap().is_empty());

    let own_fat = (0..=MAX_CONNECTIONS).map(|i| link(i + 2, true)).collect();
    assert!(topo.update_self(own_fat).is_err());
}

#[test]
fn garbage_collection_drops_peers_no_longer_reachable() {
    // 0 - 1 - 2, and 3 known from an earlier time but no longer connected to anyone.
    let mut topo = Topology::new(name_of(0), "host-0", 1);
    topo.update_self(vec![link(1, true)]).unwrap();
    topo.merge(&[
        entry(1, 1, 1, vec![link(0, true), link(2, false)]),
        entry(2, 1, 1, vec![link(1, false)]),
        entry(3, 1, 1, vec![link(2, true)]),
    ])
    .unwrap();
    assert_eq!(topo.garbage_collect(), vec![name_of(3)]);
    let left: BTreeSet<PeerName> = topo.entries().map(|e| e.name).collect();
    assert_eq!(left, BTreeSet::from([name_of(0), name_of(1), name_of(2)]));
    // 2 is kept (a connection being set up) but not routed to: 1-2 is not established.
    assert_eq!(topo.routes(), HashMap::from([(name_of(1), name_of(1))]));
}

#[test]
fn one_sided_and_half_open_connections_are_not_routed() {
    let mut topo = Topology::new(name_of(0), "host-0", 1);
    topo.update_self(vec![link(1, true), link(2, true), link(3, true)])
        .unwrap();
    topo.merge(&[
        entry(1, 1, 1, vec![link(0, true)]),  // symmetric, established
        entry(2, 1, 1, vec![link(0, false)]), // the other end is not established
        entry(3, 1, 1, vec![]),               // the other end does not report it
    ])
    .unwrap();
    assert_eq!(topo.routes(), HashMap::from([(name_of(1), name_of(1))]));
    assert_eq!(topo.broadcast_next_hops(name_of(0)), vec![name_of(1)]);
    assert!(topo.broadcast_next_hops(name_of(2)).is_empty());
}

#[test]
fn gossip_survives_the_wire_format() {
    let mut topo = Topology::new(name_of(0), "host-0", 42);
    topo.update_self(vec![link(1, true), link(2, false)])
        .unwrap();
    topo.merge(&[entry(1, 7, 3, vec![link(0, true)])]).unwrap();
    let wire = serde_json::to_vec(&topo.gossip_data()).unwrap();
    let back: Vec<PeerEntry> = serde_json::from_slice(&wire).unwrap();
    assert_eq!(back, topo.gossip_data());
    let mut other = Topology::new(name_of(1), "host-1", 7);
    other.merge(&back).unwrap();
    assert_eq!(other.entry(name_of(0)), topo.entry(name_of(0)));
}

/// Issue 16 wants the distribution of how long a new peer takes to be known everywhere. The
/// model is periodic gossip alone (the slow path: no change-triggered sends): every round,
/// every peer sends all it knows to one random neighbour. A 20-peer mesh (random spanning
/// tree plus 20 random extra links) has converged; a new peer connects to one member and
/// the two exchange topologies; count rounds until all 20 know it.
#[test]
fn rounds_until_a_new_peer_is_known_to_a_20_peer_mesh() {
    const MESH: usize = 20;
    const TRIALS: usize = 200;
    let mut rng = SplitMix(16);
    let mut rounds_needed = Vec::with_capacity(TRIALS);
    for _ in 0..TRIALS {
        let mut adjacency = vec![BTreeSet::new(); MESH + 1];
        for i in 1..MESH {
            let j = rng.below(i);
            adjacency[i].insert(j);
            adjacency[j].insert(i);
        }
        for _ in 0..MESH {
            let (a, b) = (rng.below(MESH), rng.below(MESH));
            if a != b {
                adjacency[a].insert(b);
                adjacency[b].insert(a);
            }
        }
        let connections = |adj: &[BTreeSet<usize>], i: usize| -> Vec<Connection> {
            adj[i].iter().map(|&j| link(j, true)).collect()
        };
        // The converged mesh: everyone knows everyone's entry.
        let mut peers: Vec<Topology> = (0..MESH)
            .map(|i| {
                let mut t = Topology::new(name_of(i), format!("host-{i}"), rng.next());
                t.update_self(connections(&adjacency, i)).unwrap();
                t
            })
            .collect();
        let everything: Vec<PeerEntry> = peers.iter().map(|p| p.own_entry().clone()).collect();
        for peer in &mut peers {
            peer.merge(&everything).unwrap();
        }
        // The newcomer joins through one member; both ends update and exchange.
        let contact = rng.below(MESH);
        adjacency[MESH].insert(contact);
        adjacency[contact].insert(MESH);
        let mut newcomer = Topology::new(name_of(MESH), "newcomer", rng.next());
        newcomer.update_self(connections(&adjacency, MESH)).unwrap();
        peers[contact]
            .update_self(connections(&adjacency, contact))
            .unwrap();
        peers.push(newcomer);
        let contact_data = peers[contact].gossip_data();
        let newcomer_data = peers[MESH].gossip_data();
        peers[MESH].merge(&contact_data).unwrap();
        peers[contact].merge(&newcomer_data).unwrap();

        let knows = |peers: &[Topology]| {
            peers[..MESH]
                .iter()
                .all(|p| p.entry(name_of(MESH)).is_some())
        };
        let mut rounds = 0;
        while !knows(&peers) {
            rounds += 1;
            assert!(rounds <= 100, "gossip did not spread in 100 rounds");
            // Everyone picks its target and snapshot first: one round is simultaneous.
            let sends: Vec<(usize, Vec<PeerEntry>)> = (0..=MESH)
                .map(|i| {
                    let neighbours: Vec<usize> = adjacency[i].iter().copied().collect();
                    (
                        neighbours[rng.below(neighbours.len())],
                        peers[i].gossip_data(),
                    )
                })
                .collect();
            for (to, data) in sends {
                peers[to].merge(&data).unwrap();
            }
        }
        // Once known, the routes of all 21 agree with the real graph: everyone reaches it.
        for peer in &peers[..MESH] {
            assert!(peer.routes().contains_key(&name_of(MESH)));
        }
        rounds_needed.push(rounds);
    }
    rounds_needed.sort_unstable();
    let pct = |p: usize| rounds_needed[(TRIALS - 1) * p / 100];
    let mut histogram: BTreeMap<usize, usize> = BTreeMap::new();
    for &r in &rounds_needed {
        *histogram.entry(r).or_default() += 1;
    }
    eprintln!(
        "rounds until a new peer is known to all {MESH} peers ({TRIALS} trials, periodic \
         gossip to one random neighbour per round): min {} median {} p90 {} p99 {} max {}; \
         histogram (rounds: trials) {histogram:?}",
        rounds_needed[0],
        pct(50),
        pct(90),
        pct(99),
        rounds_needed[TRIALS - 1]
    );
}

#[test]
fn equal_length_paths_break_ties_by_the_lowest_neighbour_name() {
    // A square 0-1-3-2-0: two shortest paths from 0 to 3, through 1 or through 2.
    let mut topo = Topology::new(name_of(0), "host-0", 1);
    topo.update_self(vec![link(1, true), link(2, true)])
        .unwrap();
    topo.merge(&[
        entry(1, 1, 1, vec![link(0, true), link(3, true)]),
        entry(2, 1, 1, vec![link(0, true), link(3, true)]),
        entry(3, 1, 1, vec![link(1, true), link(2, true)]),
    ])
    .unwrap();
    let lowest = name_of(1).min(name_of(2));
    assert_eq!(topo.routes()[&name_of(3)], lowest);
    // The broadcast tree from 3 takes the same tie-break: only the lowest forwards to 0.
    let mut forwarder = Topology::new(lowest, "lowest", 5);
    let other = if lowest == name_of(1) { 2 } else { 1 };
    forwarder
        .update_self(vec![link(0, true), link(3, true)])
        .unwrap();
    forwarder.merge(&topo.gossip_data()).unwrap();
    assert_eq!(forwarder.broadcast_next_hops(name_of(3)), vec![name_of(0)]);
    let mut loser = Topology::new(name_of(other), "other", 6);
    loser
        .update_self(vec![link(0, true), link(3, true)])
        .unwrap();
    loser.merge(&topo.gossip_data()).unwrap();
    assert!(loser.broadcast_next_hops(name_of(3)).is_empty());
}
