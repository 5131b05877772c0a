//! Forwarding lookup speed of the routing snapshot with 1, 1,000 and 100,000 forwardings.
//!
//! Each size gets a snapshot whose base ids are random (plus the mandatory 0). Lookups take
//! random hashes from a 1 Mi-entry array, in 2,001 short rounds of 1,024 lookups: short rounds
//! keep a preemption on a busy machine from skewing the median. It prints the median ns per
//! lookup of each size and the ratio of 100,000 forwardings to 1. The lookup result is only
//! passed to `black_box`: what a caller does with the root is not the lookup's cost.
//!
//! Run with `cargo bench -p gizzard --bench routing`.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use gizzard::nameserver::{MAX_HASH, RoutingSnapshot, ShardId, Topology};
use rand::{Rng, SeedableRng, rngs::StdRng};

const TABLE: i32 = 1;
const HASHES: usize = 1 << 20;
const LOOKUPS_PER_ROUND: usize = 1 << 10;
const ROUNDS: usize = 2_001;
const WARM_UP_ROUNDS: usize = 100;

fn snapshot(forwardings: usize, rng: &mut StdRng) -> RoutingSnapshot {
    let mut topology = Topology::default();
    let roots: Vec<ShardId> = (0..forwardings.min(4_096))
        .map(|i| ShardId::new("localhost", format!("t{i}")).expect("valid shard id"))
        .collect();
    topology.forwardings.insert((TABLE, 0), roots[0].clone());
    while topology.forwardings.len() < forwardings {
        let base = rng.random_range(1..=MAX_HASH);
        let root = roots[topology.forwardings.len() % roots.len()].clone();
        topology.forwardings.insert((TABLE, base), root);
    }
    // A second table, so the table scan is not trivially the first entry.
    topology
        .forwardings
        .insert((TABLE + 1, 0), roots[0].clone());
    RoutingSnapshot::new(topology)
}

/// Times one round of lookups of `hashes`, in ns per lookup.
fn round(snapshot: &RoutingSnapshot, hashes: &[i64]) -> f64 {
    let started = Instant::now();
    for &hash in hashes {
        black_box(snapshot.lookup(black_box(TABLE), hash));
    }
    duration_ns(started.elapsed()) / hashes.len() as f64
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn duration_ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    let mut rng = StdRng::seed_from_u64(0x7b1d);
    let hashes: Vec<i64> = (0..HASHES)
        .map(|_| rng.random_range(0..=MAX_HASH))
        .collect();
    let sizes = [1, 1_000, 100_000];
    let snapshots: Vec<RoutingSnapshot> = sizes.iter().map(|&n| snapshot(n, &mut rng)).collect();
    // Rounds alternate between the sizes, so a busy neighbour slows them all alike.
    let mut samples = vec![Vec::with_capacity(ROUNDS); sizes.len()];
    let mut baseline = Vec::with_capacity(ROUNDS);
    let rounds = hashes.chunks_exact(LOOKUPS_PER_ROUND).cycle();
    for (i, hashes) in rounds.take(ROUNDS + WARM_UP_ROUNDS).enumerate() {
        let loop_only = {
            let started = Instant::now();
            for &hash in hashes {
                black_box(hash);
            }
            duration_ns(started.elapsed()) / hashes.len() as f64
        };
        for (snapshot, samples) in snapshots.iter().zip(&mut samples) {
            let ns = round(snapshot, hashes);
            if i >= WARM_UP_ROUNDS {
                samples.push(ns);
            }
        }
        if i >= WARM_UP_ROUNDS {
            baseline.push(loop_only);
        }
    }
    println!(
        "loop overhead alone: {:.2} ns per iteration",
        median(baseline)
    );
    let medians: Vec<f64> = samples.into_iter().map(median).collect();
    for (n, ns) in sizes.iter().zip(&medians) {
        println!("routing lookup, {n:>7} forwardings: {ns:6.2} ns (median)");
    }
    println!(
        "ratio 100,000 vs 1 forwardings: {:.2}x",
        medians[2] / medians[0]
    );
}
