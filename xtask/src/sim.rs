//! `cargo xtask sim`: the cluster lease protocol at fleet scale (default 1,000 nodes × 100 agents),
//! simulated in virtual time, to measure what no test on one machine can: store operations per
//! second, budget stranded in idle slices, and how long budget takes to move to where it is spent.
//!
//! What is modelled is what the node does (`spendguard-ledger/src/cluster/link.rs`) with the
//! production slice rule ([`slice_size`], the same function `grant.lua` is tested against):
//! - a request carves its worst case from the node's slice of its agent; when the slice is too
//!   small the node asks the store for `max(lease_max, worst)` (at least `worst`) — one grant op;
//! - a refused grant while other nodes hold slices is retried every 100 ms for up to the recall
//!   wait (idle + poll + 0.5 s), one op each, before the request is refused;
//! - a request ends after its latency (an LLM call: seconds) and settles its real cost; settles
//!   and hand-backs go to the store one call per agent per push (the pusher's gather interval);
//! - a slice no request carved from for `idle` is handed back; every node polls the policy
//!   version every `poll`.
//!
//! One level per agent (the hierarchy multiplies keys, not calls). Half-way through, half of the
//! agents move all their pods to other nodes (a rolling update), which is where stranded slices
//! and the recall wait show.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use spendguard_ledger::cluster::slice_size;

/// The knobs; defaults are the agent's defaults and a 1,000-node fleet.
#[derive(Clone, Debug)]
pub struct Params {
    pub nodes: usize,
    pub agents: usize,
    pub secs: u64,
    pub seed: u64,
    pub lease_max: u64,
    pub divisor: u64,
    pub idle_ms: u64,
    /// A slice of an agent no node is waiting for is handed back after this (0: always `idle_ms`).
    /// A node refused while others hold slices raises a recall, which every node sees at its
    /// next poll; from then on, for [`RECALL_FOR_MS`], that agent's slices go back after `idle_ms`.
    pub idle_long_ms: u64,
    pub poll_ms: u64,
    pub push_ms: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            nodes: 1000,
            agents: 100,
            secs: 600,
            seed: 1,
            lease_max: 1_000_000,
            divisor: 8,
            idle_ms: 1000,
            idle_long_ms: 0,
            poll_ms: 500,
            push_ms: 200,
        }
    }
}

/// What the run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub requests: u64,
    pub forwarded: u64,
    pub refused: u64,
    pub grant_ops: u64,
    pub settle_ops: u64,
    pub poll_ops: u64,
    /// Largest (spent + in flight) / limit over every agent, ×1e6 (≤ 1e6: no overshoot).
    pub worst_use_ppm: u64,
    /// Largest budget one agent had sitting uncarved in slices, sampled every second (µUSD), and
    /// as parts per million of that agent's limit.
    pub max_stranded: u64,
    pub max_stranded_ppm: u64,
    /// 99th percentile over samples of Σ stranded / Σ limits, ppm.
    pub p99_stranded_ppm: u64,
    /// Requests that had to wait for other nodes' slices, and how long they waited (ms).
    pub waited: u64,
    pub wait_p50_ms: u64,
    pub wait_p99_ms: u64,
    pub wait_max_ms: u64,
    /// Refused although idle slices of the agent elsewhere could have paid for them.
    pub refused_with_idle_elsewhere: u64,
}

impl Report {
    pub fn ops_per_sec(&self, p: &Params) -> f64 {
        (self.grant_ops + self.settle_ops + self.poll_ops) as f64 / p.secs as f64
    }

    pub fn render(&self, p: &Params) -> String {
        let secs = p.secs as f64;
        let per_req = |n: u64| n as f64 / self.forwarded.max(1) as f64;
        format!(
            "cargo xtask sim: {} nodes × {} agents, {} s simulated (seed {}; lease_max ${:.2}, \
             divisor {}, idle {} ms{}, poll {} ms, push every {} ms)\n\
             requests            {} ({:.0}/s), forwarded {}, refused {}\n\
             store ops/s         {:.0} total: grants {:.0}, settles {:.0}, polls {:.0}\n\
             store ops/request   {:.3} (grants {:.3}, settles {:.3})\n\
             overshoot           none: highest (spent + in flight) / limit = {:.4}\n\
             stranded in slices  max one agent ${:.2} ({:.2}% of its limit); fleet p99 {:.3}% of all limits\n\
             waited for recall   {} requests: p50 {} ms, p99 {} ms, max {} ms\n\
             refused with idle budget elsewhere: {}\n",
            p.nodes,
            p.agents,
            p.secs,
            p.seed,
            p.lease_max as f64 / 1e6,
            p.divisor,
            p.idle_ms,
            if p.idle_long_ms > 0 {
                format!(" ({} ms unless recalled)", p.idle_long_ms)
            } else {
                String::new()
            },
            p.poll_ms,
            p.push_ms,
            self.requests,
            self.requests as f64 / secs,
            self.forwarded,
            self.refused,
            self.ops_per_sec(p),
            self.grant_ops as f64 / secs,
            self.settle_ops as f64 / secs,
            self.poll_ops as f64 / secs,
            per_req(self.grant_ops + self.settle_ops),
            per_req(self.grant_ops),
            per_req(self.settle_ops),
            self.worst_use_ppm as f64 / 1e6,
            self.max_stranded as f64 / 1e6,
            self.max_stranded_ppm as f64 / 1e4,
            self.p99_stranded_ppm as f64 / 1e4,
            self.waited,
            self.wait_p50_ms,
            self.wait_p99_ms,
            self.wait_max_ms,
            self.refused_with_idle_elsewhere,
        )
    }
}

/// How long a recall keeps an agent's idle hand-back short.
pub const RECALL_FOR_MS: u64 = 30_000;

/// A small, seeded PRNG (SplitMix64): the run is repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Log-uniform in [lo, hi]: as many small agents as big ones per decade.
    fn log_between(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }
    /// Exponential with this mean (Poisson arrivals).
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

struct Agent {
    limit: u64,
    /// Store view: settled spend and Σ every node's slices.
    spent: u64,
    outstanding: u64,
    /// Node → what the store records it holds.
    held: HashMap<usize, u64>,
    nodes: Vec<usize>,
    /// Requests per second over all its pods.
    rate: f64,
    worst: (u64, u64),
    latency_ms: (u64, u64),
    /// The node side: slices by node.
    slices: HashMap<usize, Slice>,
    /// Worst cases in flight (for the overshoot check).
    in_flight: u64,
    /// A recall is in force from .0 (when nodes have seen it) until .1.
    recall: (u64, u64),
}

#[derive(Default)]
struct Slice {
    /// Uncarved part of the slice.
    free: u64,
    last_carve: u64,
    /// Not yet pushed: charge and release.
    pending: (u64, u64),
    /// Requests waiting for budget from other nodes: (arrival, worst, actual).
    waiting: Vec<(u64, u64, u64)>,
    retry_scheduled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Next request of (agent, pod index in its node list).
    Arrive(usize, usize),
    /// A forwarded request ends: (agent, node, worst, actual).
    Done(usize, usize, u64, u64),
    /// The waiters of (agent, node) try the store again.
    Retry(usize, usize),
    /// Node ticks: push, idle hand-back.
    Push(usize),
    Idle(usize),
    Sample,
    Move,
}

/// Runs the simulation.
pub fn run(p: &Params) -> Report {
    let mut rng = Rng(p.seed);
    let end = p.secs * 1000;
    let mut agents: Vec<Agent> = (0..p.agents)
        .map(|_| {
            let pods = rng.log_between(3.0, 50.0).round() as usize;
            let nodes = (0..pods)
                .map(|_| (rng.next() % p.nodes as u64) as usize)
                .collect();
            let rate = rng.log_between(0.5, 40.0);
            let hi = rng.log_between(2_000.0, 50_000.0) as u64;
            let worst = (hi / 4, hi);
            let latency_ms = (500, rng.between(2_000.0, 30_000.0) as u64);
            // Spend over the run at ~60% of the worst case, then a limit from half to twice
            // that: about half of the agents run out during the run.
            let mean_cost = (worst.0 + worst.1) as f64 / 2.0 * 0.6;
            let expected = rate * p.secs as f64 * mean_cost;
            let limit = (expected * rng.log_between(0.5, 2.0)) as u64;
            Agent {
                limit: limit.max(worst.1),
                spent: 0,
                outstanding: 0,
                held: HashMap::new(),
                nodes,
                rate,
                worst,
                latency_ms,
                slices: HashMap::new(),
                in_flight: 0,
                recall: (0, 0),
            }
        })
        .collect();

    let mut q: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, t: u64, e: Ev| {
        seq += 1;
        q.push(Reverse((t, seq, e)));
    };
    for (a, ag) in agents.iter().enumerate() {
        for pod in 0..ag.nodes.len() {
            let mean = 1000.0 * ag.nodes.len() as f64 / ag.rate;
            push(&mut q, rng.exp(mean) as u64, Ev::Arrive(a, pod));
        }
    }
    for n in 0..p.nodes {
        push(&mut q, rng.next() % p.push_ms, Ev::Push(n));
        push(&mut q, rng.next() % (p.idle_ms / 4).max(1), Ev::Idle(n));
    }
    push(&mut q, 1000, Ev::Sample);
    push(&mut q, end / 2, Ev::Move);

    // Which agents have slices on a node (for the node ticks).
    let mut on_node: Vec<Vec<usize>> = vec![Vec::new(); p.nodes];
    let mut r = Report {
        poll_ops: p.nodes as u64 * end / p.poll_ms.max(1),
        ..Report::default()
    };
    let mut waits: Vec<u64> = Vec::new();
    let mut samples: Vec<u64> = Vec::new();
    let total_limits: u64 = agents.iter().map(|a| a.limit).sum();
    let recall_ms = p.idle_ms + p.poll_ms + 500;

    while let Some(Reverse((t, _, ev))) = q.pop() {
        if t > end {
            break;
        }
        match ev {
            Ev::Arrive(a, pod) => {
                let ag = &mut agents[a];
                let node = ag.nodes[pod];
                let mean = 1000.0 * ag.nodes.len() as f64 / ag.rate;
                let next = t + rng.exp(mean).max(1.0) as u64;
                push(&mut q, next, Ev::Arrive(a, pod));
                let worst = ag.worst.0 + rng.next() % (ag.worst.1 - ag.worst.0 + 1);
                let actual = (worst as f64 * rng.between(0.2, 1.0)) as u64;
                r.requests += 1;
                let s = ag.slices.entry(node).or_default();
                if s.free >= worst {
                    s.free -= worst;
                    s.last_carve = t;
                    ag.in_flight += worst;
                    r.forwarded += 1;
                    let lat = rng.between(ag.latency_ms.0 as f64, ag.latency_ms.1 as f64);
                    push(&mut q, t + lat as u64, Ev::Done(a, node, worst, actual));
                    continue;
                }
                s.waiting.push((t, worst, actual));
                if !s.retry_scheduled {
                    s.retry_scheduled = true;
                    push(&mut q, t, Ev::Retry(a, node));
                }
                if !on_node[node].contains(&a) {
                    on_node[node].push(a);
                }
            }
            Ev::Retry(a, node) => {
                let ag = &mut agents[a];
                let Some(mut s) = ag.slices.remove(&node) else {
                    continue;
                };
                s.retry_scheduled = false;
                // Serve waiters in order: carve what fits, ask the store for the first that
                // does not (one grant op), refuse those past the recall wait.
                let mut i = 0;
                let mut asked = false;
                while i < s.waiting.len() {
                    let (arrived, worst, actual) = s.waiting[i];
                    if s.free < worst && !asked {
                        asked = true;
                        r.grant_ops += 1;
                        let avail = ag.limit.saturating_sub(ag.spent + ag.outstanding);
                        let holders =
                            ag.held.len() as u64 + u64::from(!ag.held.contains_key(&node));
                        let want = p.lease_max.max(worst);
                        let g = slice_size(want, worst, Some(avail), holders, p.divisor);
                        if g > 0 {
                            ag.outstanding += g;
                            *ag.held.entry(node).or_default() += g;
                            s.free += g;
                        }
                    }
                    if s.free >= worst {
                        s.free -= worst;
                        s.last_carve = t;
                        ag.in_flight += worst;
                        r.forwarded += 1;
                        if t > arrived {
                            r.waited += 1;
                            waits.push(t - arrived);
                        }
                        let lat = rng.between(ag.latency_ms.0 as f64, ag.latency_ms.1 as f64);
                        push(&mut q, t + lat as u64, Ev::Done(a, node, worst, actual));
                        s.waiting.remove(i);
                        continue;
                    }
                    let others_hold = ag.outstanding > *ag.held.get(&node).unwrap_or(&0);
                    let fits = ag.limit.saturating_sub(ag.spent) >= worst;
                    if p.idle_long_ms > 0 && others_hold && fits && ag.recall.1 < t {
                        // Raise a recall: the other nodes see it at their next poll.
                        r.grant_ops += 1;
                        ag.recall = (t + p.poll_ms, t + RECALL_FOR_MS);
                    }
                    if t - arrived >= recall_ms || !(others_hold && fits) {
                        r.refused += 1;
                        let idle_elsewhere: u64 = ag
                            .slices
                            .iter()
                            .filter(|(_, o)| t.saturating_sub(o.last_carve) >= p.idle_ms)
                            .map(|(_, o)| o.free)
                            .sum();
                        if idle_elsewhere >= worst {
                            r.refused_with_idle_elsewhere += 1;
                        }
                        s.waiting.remove(i);
                        continue;
                    }
                    i += 1;
                }
                if !s.waiting.is_empty() {
                    s.retry_scheduled = true;
                    push(&mut q, t + 100, Ev::Retry(a, node));
                }
                ag.slices.insert(node, s);
            }
            Ev::Done(a, node, worst, actual) => {
                let ag = &mut agents[a];
                ag.in_flight -= worst;
                let s = ag.slices.entry(node).or_default();
                s.pending.0 += actual;
                s.pending.1 += worst;
                // Spent by the node's own ledger at once; the store learns at the next push.
                let used = ag.spent + ag.outstanding;
                let ppm = used.saturating_mul(1_000_000) / ag.limit.max(1);
                r.worst_use_ppm = r.worst_use_ppm.max(ppm);
            }
            Ev::Push(n) => {
                for &a in &on_node[n] {
                    let ag = &mut agents[a];
                    let Some(s) = ag.slices.get_mut(&n) else {
                        continue;
                    };
                    let (charge, release) = std::mem::take(&mut s.pending);
                    if charge == 0 && release == 0 {
                        continue;
                    }
                    r.settle_ops += 1;
                    let h = ag.held.entry(n).or_default();
                    let rel = release.min(*h);
                    *h -= rel;
                    if *h == 0 {
                        ag.held.remove(&n);
                    }
                    ag.outstanding -= rel;
                    ag.spent += charge;
                }
                push(&mut q, t + p.push_ms, Ev::Push(n));
            }
            Ev::Idle(n) => {
                for &a in &on_node[n] {
                    let ag = &mut agents[a];
                    let recalled = ag.recall.0 <= t && t < ag.recall.1;
                    let idle = if recalled || p.idle_long_ms == 0 {
                        p.idle_ms
                    } else {
                        p.idle_long_ms
                    };
                    if let Some(s) = ag.slices.get_mut(&n) {
                        if s.free > 0 && t.saturating_sub(s.last_carve) >= idle {
                            s.pending.1 += s.free;
                            s.free = 0;
                        }
                    }
                }
                push(&mut q, t + (p.idle_ms / 4).max(1), Ev::Idle(n));
            }
            Ev::Sample => {
                let mut all = 0u64;
                for ag in &agents {
                    let stranded: u64 = ag.slices.values().map(|s| s.free).sum();
                    all += stranded;
                    if stranded > r.max_stranded {
                        r.max_stranded = stranded;
                    }
                    let ppm = stranded.saturating_mul(1_000_000) / ag.limit.max(1);
                    r.max_stranded_ppm = r.max_stranded_ppm.max(ppm);
                }
                samples.push(all.saturating_mul(1_000_000) / total_limits.max(1));
                push(&mut q, t + 1000, Ev::Sample);
            }
            Ev::Move => {
                // A rolling update: every other agent's pods land on other nodes.
                for ag in agents.iter_mut().step_by(2) {
                    for n in ag.nodes.iter_mut() {
                        *n = (rng.next() % p.nodes as u64) as usize;
                    }
                }
                for (a, ag) in agents.iter().enumerate() {
                    for &n in &ag.nodes {
                        if !on_node[n].contains(&a) {
                            on_node[n].push(a);
                        }
                    }
                }
            }
        }
    }
    for ag in &agents {
        let used = ag.spent + ag.outstanding;
        let ppm = used.saturating_mul(1_000_000) / ag.limit.max(1);
        r.worst_use_ppm = r.worst_use_ppm.max(ppm);
    }
    waits.sort_unstable();
    samples.sort_unstable();
    let pct = |v: &[u64], q: f64| -> u64 {
        if v.is_empty() {
            0
        } else {
            v[((v.len() - 1) as f64 * q) as usize]
        }
    };
    r.wait_p50_ms = pct(&waits, 0.5);
    r.wait_p99_ms = pct(&waits, 0.99);
    r.wait_max_ms = waits.last().copied().unwrap_or(0);
    r.p99_stranded_ppm = pct(&samples, 0.99);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Params {
        Params {
            nodes: 50,
            agents: 20,
            secs: 120,
            ..Params::default()
        }
    }

    #[test]
    fn no_agent_ever_goes_over_its_limit() {
        for seed in 1..=5 {
            let p = Params { seed, ..small() };
            let r = run(&p);
            assert!(r.forwarded > 1000, "{}", r.render(&p));
            assert!(r.refused > 0, "no budget ran out: {}", r.render(&p));
            assert!(r.worst_use_ppm <= 1_000_000, "{}", r.render(&p));
        }
    }

    #[test]
    fn waits_for_recall_stay_within_the_recall_wait() {
        let p = small();
        let r = run(&p);
        assert!(r.waited > 0, "{}", r.render(&p));
        assert!(
            r.wait_max_ms <= p.idle_ms + p.poll_ms + 500 + 100,
            "{}",
            r.render(&p)
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let p = small();
        assert_eq!(run(&p).render(&p), run(&p).render(&p));
    }
}
