//! Bounded label values for the metric families, looked up without a lock or an allocation.
//!
//! Every label value a request records is an interned `Arc<str>` (or a `&'static str`) taken from
//! an immutable snapshot: the request path loads the snapshot (`arc-swap`, lock-free), finds the
//! value, and clones an `Arc` — no `String` per request, no mutex. Snapshots are replaced whole, off
//! the request path: [`ModelLabels`] when the price table changes, [`AgentLabels`] the first time an
//! agent is seen (once per agent, not per request).
//!
//! Bounds: a `model` is one of the price table's names (anything else, e.g. a name a client made
//! up, is [`OTHER`]); an `agent` is one of the first [`MAX_AGENT_LABELS`] agents seen (agents come
//! from tags, which the operator or the pod labels create; past the cap they are [`OTHER`], so a
//! runaway tagging script cannot blow up Prometheus); a `provider` is one of the adapters'.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use spendguard_pricing::providers::ProviderId;

/// The label value that collects what the bounds leave out.
pub const OTHER: &str = "other";
/// Distinct `agent` label values before new agents are counted as [`OTHER`]. Far above any tag
/// set we have seen on a node; it only stops a runaway.
pub const MAX_AGENT_LABELS: usize = 4096;
/// `provider` of a connection to a host without a pricing adapter.
pub const UNKNOWN_PROVIDER: &str = "unknown";
/// `provider` of a connection the egress policy closed (a host that is no provider at all).
pub const OTHER_HOST: &str = "other_host";

type Snapshot = ArcSwap<HashSet<Arc<str>>>;

fn other() -> Arc<str> {
    Arc::from(OTHER)
}

/// The `model` label values: the price table's canonical names, published by the live price
/// table ([`crate::metering::Prices`]) whenever it changes.
#[derive(Debug)]
pub struct ModelLabels {
    known: Snapshot,
    other: Arc<str>,
}

impl Default for ModelLabels {
    fn default() -> Self {
        ModelLabels {
            known: ArcSwap::from_pointee(HashSet::new()),
            other: other(),
        }
    }
}

impl ModelLabels {
    /// Replaces the set of names with `names` (the whole price table). Names already known keep
    /// their `Arc`, so series recorded before stay the same.
    pub fn publish<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let old = self.known.load();
        let next: HashSet<Arc<str>> = names
            .into_iter()
            .filter(|n| !n.is_empty())
            .map(|n| old.get(n).cloned().unwrap_or_else(|| Arc::from(n)))
            .collect();
        self.known.store(Arc::new(next));
    }

    /// The label for `model`: itself if the price table names it, else [`OTHER`].
    pub fn get(&self, model: &str) -> Arc<str> {
        match self.known.load().get(model) {
            Some(m) => m.clone(),
            None => self.other.clone(),
        }
    }

    /// How many names are published.
    pub fn len(&self) -> usize {
        self.known.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `agent` label values: admitted on first sight, up to a cap.
#[derive(Debug)]
pub struct AgentLabels {
    known: Snapshot,
    cap: usize,
    other: Arc<str>,
    /// The cap was reached (said once in the log).
    warned: AtomicBool,
}

impl Default for AgentLabels {
    fn default() -> Self {
        AgentLabels::with_cap(MAX_AGENT_LABELS)
    }
}

impl AgentLabels {
    pub fn with_cap(cap: usize) -> AgentLabels {
        AgentLabels {
            known: ArcSwap::from_pointee(HashSet::new()),
            cap,
            other: other(),
            warned: AtomicBool::new(false),
        }
    }

    /// The label for `agent`. Known: an `Arc` clone from the snapshot. New: admitted (one copy of
    /// the set, once per agent) unless the cap is reached.
    pub fn get(&self, agent: &str) -> Arc<str> {
        if let Some(a) = self.known.load().get(agent) {
            return a.clone();
        }
        self.admit(agent)
    }

    #[cold]
    fn admit(&self, agent: &str) -> Arc<str> {
        if agent.is_empty() {
            return self.other.clone();
        }
        // Past the cap, an agent's every request comes here: answer without allocating.
        if self.known.load().len() >= self.cap {
            self.warn_full(agent);
            return self.other.clone();
        }
        let fresh: Arc<str> = Arc::from(agent);
        let mut label = fresh.clone();
        // Several threads may admit at once: rcu retries on a lost race, and whoever lost finds
        // the winner's Arc in the set it retries on.
        self.known.rcu(|cur| {
            if let Some(a) = cur.get(agent) {
                label = a.clone();
                return Arc::clone(cur);
            }
            if cur.len() >= self.cap {
                label = self.other.clone();
                return Arc::clone(cur);
            }
            label = fresh.clone();
            let mut next = HashSet::clone(cur);
            next.insert(fresh.clone());
            Arc::new(next)
        });
        if self.is_overflow(&label) {
            self.warn_full(agent);
        }
        label
    }

    fn warn_full(&self, agent: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cap = self.cap,
                agent,
                "more distinct agents than metric series allow: further agents are counted as \
                 agent=\"other\" in /metrics (the ledger, audit and `spendguard top` still name \
                 them); check for a tagging script that creates agents by the thousand"
            );
        }
    }

    /// True for the overflow label (by identity: an agent may really be named `other`).
    pub fn is_overflow(&self, label: &Arc<str>) -> bool {
        Arc::ptr_eq(label, &self.other)
    }

    /// How many agents have a label of their own.
    pub fn len(&self) -> usize {
        self.known.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `provider` label: an adapter's name or [`OTHER_HOST`], else [`UNKNOWN_PROVIDER`]. A
/// `&'static str`, so recording it allocates nothing.
pub fn provider(provider: &str) -> &'static str {
    ProviderId::ALL
        .iter()
        .map(ProviderId::as_str)
        .chain([OTHER_HOST])
        .find(|p| *p == provider)
        .unwrap_or(UNKNOWN_PROVIDER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_outside_the_price_table_are_other() {
        let m = ModelLabels::default();
        assert_eq!(&*m.get("gpt-4o"), OTHER, "nothing published yet");
        m.publish(["gpt-4o", "claude-sonnet-4-5"]);
        assert_eq!(&*m.get("gpt-4o"), "gpt-4o");
        assert_eq!(&*m.get("gpt-5-made-up"), OTHER);
        assert_eq!(&*m.get(""), OTHER);
        let before = m.get("gpt-4o");
        m.publish(["gpt-4o", "o3"]);
        assert!(Arc::ptr_eq(&before, &m.get("gpt-4o")), "kept its Arc");
        assert_eq!(
            &*m.get("claude-sonnet-4-5"),
            OTHER,
            "dropped from the table"
        );
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn agents_past_the_cap_are_other_and_known_ones_stay() {
        let a = AgentLabels::with_cap(3);
        for n in ["a", "b", "c"] {
            assert_eq!(&*a.get(n), n);
        }
        assert_eq!(&*a.get("d"), OTHER);
        assert!(a.is_overflow(&a.get("e")));
        assert_eq!(&*a.get("b"), "b");
        assert_eq!(&*a.get(""), OTHER);
        let first = a.get("a");
        assert!(Arc::ptr_eq(&first, &a.get("a")), "one Arc per agent");
    }

    #[test]
    fn concurrent_first_sights_admit_one_arc_per_agent() {
        let a = Arc::new(AgentLabels::with_cap(1000));
        let seen: Vec<Vec<Arc<str>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let a = a.clone();
                    s.spawn(move || (0..200).map(|i| a.get(&format!("agent-{i}"))).collect())
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(a.len(), 200);
        for i in 0..200 {
            let mine = &seen[0][i];
            for other in &seen[1..] {
                assert!(Arc::ptr_eq(mine, &other[i]), "agent-{i}: two Arcs");
            }
        }
    }

    #[test]
    fn providers_are_the_adapters_names() {
        assert_eq!(provider("openai"), "openai");
        assert_eq!(provider("bedrock"), "bedrock");
        assert_eq!(provider(OTHER_HOST), "other_host");
        assert_eq!(provider(""), UNKNOWN_PROVIDER);
        assert_eq!(provider("evil.example"), UNKNOWN_PROVIDER);
    }
}
