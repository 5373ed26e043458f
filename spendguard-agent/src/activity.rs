//! The last minute of every agent, for `spendguard top`: spend, requests, blocks and observed
//! blocks in one-second buckets. Fed by the metering metrics (every decision, every settle);
//! read by the control socket's `top` snapshot. Memory is bounded by the agents (bounded by tags):
//! 60 buckets each.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use spendguard_pricing::MicroUsd;

/// How far back the window reaches, in seconds.
pub const WINDOW_SECS: u64 = 60;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// The Unix second this bucket counts (older ones are stale).
    sec: u64,
    spend: u64,
    requests: u64,
    blocked: u64,
    would_block: u64,
}

/// One agent's last minute (its own requests; `top` adds up subtrees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Settled spend in the window (= the spend rate per minute).
    #[serde(with = "spendguard_ledger::usd")]
    pub spend: MicroUsd,
    /// Priced or free requests decided (allowed, blocked, observed).
    pub requests: u64,
    pub blocked: u64,
    /// `observe` mode: would have been blocked, forwarded.
    pub would_block: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.spend = self.spend.saturating_add(o.spend);
        self.requests += o.requests;
        self.blocked += o.blocked;
        self.would_block += o.would_block;
    }
}

/// What one request's decision was, as the window counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Allowed,
    Blocked,
    WouldBlock,
}

#[derive(Debug, Default)]
pub struct Activity {
    agents: Mutex<HashMap<String, [Bucket; WINDOW_SECS as usize]>>,
}

pub fn now_sec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Activity {
    fn record(&self, agent: &str, sec: u64, f: impl FnOnce(&mut Bucket)) {
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = match agents.get_mut(agent) {
            Some(r) => r,
            None => agents
                .entry(agent.to_string())
                .or_insert([Bucket::default(); WINDOW_SECS as usize]),
        };
        let b = &mut ring[(sec % WINDOW_SECS) as usize];
        if b.sec != sec {
            *b = Bucket {
                sec,
                ..Bucket::default()
            };
        }
        f(b);
    }

    /// A request was decided.
    pub fn request(&self, agent: &str, seen: Seen) {
        self.request_at(agent, seen, now_sec());
    }

    pub fn request_at(&self, agent: &str, seen: Seen, sec: u64) {
        self.record(agent, sec, |b| {
            b.requests += 1;
            match seen {
                Seen::Allowed => {}
                Seen::Blocked => b.blocked += 1,
                Seen::WouldBlock => b.would_block += 1,
            }
        });
    }

    /// A request was settled at `cost`.
    pub fn spend(&self, agent: &str, cost: MicroUsd) {
        self.spend_at(agent, cost, now_sec());
    }

    pub fn spend_at(&self, agent: &str, cost: MicroUsd, sec: u64) {
        self.record(agent, sec, |b| b.spend = b.spend.saturating_add(cost.0));
    }

    /// Every agent's totals over the `WINDOW_SECS` seconds up to and including `now`.
    pub fn window(&self, now: u64) -> HashMap<String, Totals> {
        let agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let oldest = now.saturating_sub(WINDOW_SECS - 1);
        agents
            .iter()
            .map(|(a, ring)| {
                let mut t = Totals::default();
                for b in ring.iter().filter(|b| b.sec >= oldest && b.sec <= now) {
                    t.add(&Totals {
                        spend: MicroUsd(b.spend),
                        requests: b.requests,
                        blocked: b.blocked,
                        would_block: b.would_block,
                    });
                }
                (a.clone(), t)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_minute_only() {
        let a = Activity::default();
        a.request_at("acme.bot", Seen::Allowed, 1000);
        a.spend_at("acme.bot", MicroUsd(250), 1000);
        a.request_at("acme.bot", Seen::Blocked, 1030);
        a.request_at("acme.bot", Seen::WouldBlock, 1059);
        a.spend_at("acme.bot", MicroUsd(50), 1059);
        let w = a.window(1059);
        assert_eq!(
            w["acme.bot"],
            Totals {
                spend: MicroUsd(300),
                requests: 3,
                blocked: 1,
                would_block: 1
            }
        );
        // A minute later the first second has left the window...
        assert_eq!(a.window(1060)["acme.bot"].spend, MicroUsd(50));
        // ...and a bucket reused by a later second starts from zero.
        a.request_at("acme.bot", Seen::Allowed, 1060);
        let w = a.window(1060);
        assert_eq!(w["acme.bot"].requests, 3);
        assert_eq!(a.window(2000)["acme.bot"], Totals::default());
    }
}
