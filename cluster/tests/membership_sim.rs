//! Deterministic in-process simulation of the sans-IO membership cores: three nodes exchange
//! packets through an in-memory network with a simulated clock, links can be cut and nodes
//! killed, and every run is the same.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::SocketAddr;

use cluster::membership::MembershipTimer;
use cluster::{foca_config, MemberEvent, Membership, NodeIdentity, Profile, Role, SelfEvent};

/// One-way network latency of the simulated links.
const LATENCY_MS: u64 = 5;

enum Item {
    Timer(MembershipTimer),
    Packet(Vec<u8>),
}

struct Sim {
    now_ms: u64,
    seq: u64,
    nodes: Vec<Membership>,
    alive: Vec<bool>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    items: std::collections::HashMap<u64, Item>,
    cut: HashSet<(usize, usize)>,
    events: Vec<(usize, MemberEvent)>,
    self_events: Vec<(usize, SelfEvent)>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8 + 1], 7946))
}

fn identity(i: usize) -> NodeIdentity {
    NodeIdentity {
        id: format!("node-{i}"),
        addr: addr(i),
        role: if i == 0 { Role::Edge } else { Role::Hub },
        region: "sim".into(),
        generation: 1,
        // High, so a restarted process (bump 0) could only win by generation, not by bumping.
        bump: 1000,
    }
}

impl Sim {
    fn new(n: usize) -> Self {
        let nodes = (0..n)
            .map(|i| Membership::new(identity(i), foca_config(Profile::Fast, n as u32), i as u64))
            .collect();
        Self {
            now_ms: 0,
            seq: 0,
            nodes,
            alive: vec![true; n],
            queue: BinaryHeap::new(),
            items: Default::default(),
            cut: HashSet::new(),
            events: Vec::new(),
            self_events: Vec::new(),
        }
    }

    fn schedule(&mut self, at: u64, node: usize, item: Item) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, node)));
        self.items.insert(self.seq, item);
    }

    fn index_of(&self, a: SocketAddr) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| addr(i) == a)
    }

    /// Moves node `i`'s outputs into the network and timer queue.
    fn flush(&mut self, i: usize) {
        let out = self.nodes[i].drain_outputs();
        for (to, packet) in out.packets {
            if let Some(j) = self.index_of(to.addr) {
                if !self.cut.contains(&(i, j)) {
                    self.schedule(self.now_ms + LATENCY_MS, j, Item::Packet(packet));
                }
            }
        }
        for (after, timer) in out.timers {
            let at = self.now_ms + after.as_millis() as u64;
            self.schedule(at, i, Item::Timer(timer));
        }
        for e in out.events {
            self.events.push((i, e));
        }
        for e in out.self_events {
            self.self_events.push((i, e));
        }
    }

    /// Node `i` announces itself to node `j` knowing only `j`'s address.
    fn announce(&mut self, i: usize, j: usize) {
        let mut seed = identity(j);
        seed.id = String::new();
        seed.generation = 0;
        seed.bump = 0;
        self.nodes[i].announce(seed).expect("announce");
        self.flush(i);
    }

    /// Runs the simulation until `cond` holds; panics after `deadline_ms` of simulated time.
    fn run_until(&mut self, deadline_ms: u64, what: &str, cond: impl Fn(&Sim) -> bool) {
        let end = self.now_ms + deadline_ms;
        while !cond(self) {
            let Some(Reverse((at, seq, node))) = self.queue.pop() else {
                panic!("simulation ran out of events before: {what}");
            };
            assert!(
                at <= end,
                "not within {deadline_ms} ms of simulated time: {what}"
            );
            self.now_ms = at;
            let item = self.items.remove(&seq).expect("queued item");
            if !self.alive[node] {
                continue;
            }
            match item {
                Item::Timer(t) => {
                    let _ = self.nodes[node].handle_timer(t);
                }
                Item::Packet(p) => {
                    let _ = self.nodes[node].handle_data(&p);
                }
            }
            self.flush(node);
        }
    }

    /// Runs for `ms` of simulated time regardless of conditions.
    fn run_for(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        self.run_until(ms + 1, "run_for", |s| {
            s.queue.peek().is_none_or(|Reverse((at, _, _))| *at > end)
        });
        self.now_ms = end;
    }

    fn member_ids(&self, i: usize) -> Vec<String> {
        let mut ids: Vec<String> = self.nodes[i].members().into_iter().map(|m| m.id).collect();
        ids.sort();
        ids
    }

    fn sees(&self, i: usize, ids: &[&str]) -> bool {
        self.member_ids(i) == ids
    }

    fn downs(&self, observer: usize, id: &str) -> usize {
        self.events
            .iter()
            .filter(|(o, e)| *o == observer && matches!(e, MemberEvent::Down(n) if n.id == id))
            .count()
    }

    /// Replaces node `i` by a fresh process (same address) with `generation`, dropping
    /// everything queued for the old one.
    fn restart(&mut self, i: usize, generation: u64) {
        let mut me = identity(i);
        me.generation = generation;
        me.bump = 0;
        let n = self.nodes.len() as u32;
        self.nodes[i] = Membership::new(me, foca_config(Profile::Fast, n), 100 + generation);
        self.alive[i] = true;
        let queue = std::mem::take(&mut self.queue);
        for Reverse((at, seq, node)) in queue {
            if node == i {
                self.items.remove(&seq);
            } else {
                self.queue.push(Reverse((at, seq, node)));
            }
        }
    }

    fn generation_seen(&self, observer: usize, id: &str) -> Option<u64> {
        self.nodes[observer]
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.generation)
    }

    fn cut_both(&mut self, a: usize, b: usize) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }
}

fn converged_three() -> Sim {
    let mut sim = Sim::new(3);
    sim.announce(1, 0);
    sim.announce(2, 0);
    sim.run_until(5_000, "three nodes converge", |s| {
        s.sees(0, &["node-1", "node-2"])
            && s.sees(1, &["node-0", "node-2"])
            && s.sees(2, &["node-0", "node-1"])
    });
    sim
}

#[test]
fn three_nodes_converge_on_membership_through_one_seed() {
    let sim = converged_three();
    // Everyone got an Up event for each of the others.
    for i in 0..3 {
        let ups = sim
            .events
            .iter()
            .filter(|(o, e)| *o == i && matches!(e, MemberEvent::Up(_)))
            .count();
        assert_eq!(ups, 2, "node {i} up events: {:?}", sim.events);
    }
}

#[test]
fn killed_node_is_declared_down_by_the_others() {
    let mut sim = converged_three();
    sim.alive[2] = false;
    sim.run_until(5_000, "node-2 down everywhere", |s| {
        s.sees(0, &["node-1"]) && s.sees(1, &["node-0"])
    });
    assert_eq!(sim.downs(0, "node-2"), 1);
    assert_eq!(sim.downs(1, "node-2"), 1);
    // Within foca's suspicion window plus a few probe periods (Fast profile: 0.5 s + 0.1 s).
    assert!(sim.now_ms < 5_000, "took {} ms", sim.now_ms);
}

#[test]
fn one_broken_link_does_not_declare_anyone_down_thanks_to_indirect_probes() {
    let mut sim = converged_three();
    sim.cut_both(0, 2);
    sim.run_for(10_000);
    assert_eq!(sim.downs(0, "node-2"), 0, "events: {:?}", sim.events);
    assert_eq!(sim.downs(2, "node-0"), 0, "events: {:?}", sim.events);
    assert!(sim.sees(0, &["node-1", "node-2"]));
}

#[test]
fn partitioned_node_goes_down_and_rejoins_after_the_partition_heals() {
    let mut sim = converged_three();
    sim.cut_both(0, 2);
    sim.cut_both(1, 2);
    sim.run_until(5_000, "node-2 isolated", |s| {
        s.sees(0, &["node-1"]) && s.sees(1, &["node-0"]) && s.sees(2, &[])
    });
    sim.cut.clear();
    sim.run_until(20_000, "node-2 rejoins", |s| {
        s.sees(0, &["node-1", "node-2"])
            && s.sees(1, &["node-0", "node-2"])
            && s.sees(2, &["node-0", "node-1"])
    });
    // node-2 came back with a renewed identity, so others can tell it from the one declared down.
    let seen_by_0 = sim.nodes[0]
        .members()
        .into_iter()
        .find(|m| m.id == "node-2")
        .expect("node-2");
    assert_ne!(
        seen_by_0.bump, 1000,
        "node-2 should have rejoined with a renewed identity"
    );
    // node-2 noticed both sides of it: alone (idle) during the partition, then told it had been
    // declared down and rejoined (the driver logs this and counts
    // `cluster_membership_declared_down_total`). The partition was symmetric, so node-2 had
    // declared the others down too, and they rejoin as well. Nobody is left defunct.
    let of = |n: usize| -> Vec<SelfEvent> {
        sim.self_events
            .iter()
            .filter(|(i, e)| *i == n && *e != SelfEvent::Active)
            .map(|(_, e)| *e)
            .collect()
    };
    assert_eq!(
        of(2),
        [SelfEvent::Idle, SelfEvent::Rejoined],
        "{:?}",
        sim.self_events
    );
    assert_eq!(of(0), [SelfEvent::Rejoined], "{:?}", sim.self_events);
    assert_eq!(of(1), [SelfEvent::Rejoined], "{:?}", sim.self_events);
}

#[test]
fn simulation_is_deterministic() {
    let a = converged_three();
    let b = converged_three();
    assert_eq!(a.now_ms, b.now_ms);
    assert_eq!(a.events, b.events);
}

#[test]
fn restarted_node_replaces_its_dead_incarnation() {
    let mut sim = converged_three();
    sim.alive[2] = false;
    sim.run_until(5_000, "node-2 down", |s| {
        s.sees(0, &["node-1"]) && s.sees(1, &["node-0"])
    });
    sim.restart(2, 2);
    sim.announce(2, 0);
    sim.run_until(5_000, "restarted node-2 is back everywhere", |s| {
        s.generation_seen(0, "node-2") == Some(2)
            && s.generation_seen(1, "node-2") == Some(2)
            && s.sees(2, &["node-0", "node-1"])
    });
}

#[test]
fn node_restarted_before_anyone_noticed_replaces_its_live_incarnation() {
    let mut sim = converged_three();
    // Crash and restart faster than failure detection: the others still think the old
    // incarnation is alive when the new one announces itself at the same address.
    sim.restart(2, 2);
    sim.announce(2, 0);
    sim.run_until(5_000, "restarted node-2 replaces the old one", |s| {
        s.generation_seen(0, "node-2") == Some(2)
            && s.generation_seen(1, "node-2") == Some(2)
            && s.sees(2, &["node-0", "node-1"])
    });
    assert_eq!(
        sim.nodes[0].members().len(),
        2,
        "no ghost of the old incarnation"
    );
}
