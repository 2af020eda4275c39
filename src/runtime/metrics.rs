//! Counters in Envoy's stats. Envoy shows wasm counters with a `wasmcustom.` prefix:
//! `wasmcustom.custom_error_pages.intercepted` and so on.
//!
//! A request only bumps a number in the VM's memory; the root context's 100 ms tick adds
//! the increments to Envoy's counters, keeping two host calls per intercepted error off the
//! request path; the price is that `/stats` lags by up to one tick.

use super::host::{Context, Host};
use crate::config::{Config, Rule};
use crate::error_service::FetchFailure;
use crate::reply::Outcome;
use std::cell::Cell;

pub struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Counter {
    fn define(host: &impl Host, name: &str) -> Counter {
        Counter { id: host.define_counter(&format!("{PREFIX}{name}")), pending: Cell::new(0) }
    }

    pub fn bump(&self) {
        self.pending.set(self.pending.get() + 1);
    }

    fn flush(&self, via: &impl Context) {
        let n = self.pending.replace(0);
        if let (Some(id), true) = (self.id, n > 0) {
            if !via.add_to_counter(id, n) {
                // Kept for the next tick rather than lost.
                self.pending.set(self.pending.get() + n);
            }
        }
    }

    #[cfg(test)]
    pub fn pending(&self) -> u64 {
        self.pending.get()
    }
}

const PREFIX: &str = "custom_error_pages.";

/// The counters of `Metrics` but the failure reasons, in field order.
const NAMES: [&str; 13] = [
    "intercepted",
    "cache_hit",
    "fetched",
    "inline",
    "fallback",
    "passthrough",
    "unknown_policy",
    "deadline",
    "stale",
    "prewarmed",
    "prewarm_failed",
    "refreshed",
    "refresh_failed",
];

/// A failure reason's counter, under `PREFIX`.
fn fetch_failed_name(f: FetchFailure) -> String {
    format!("fetch_failed.{}", f.as_str())
}

/// What became of an error response a rule decided, as a rule's counters tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    Served(Outcome),
    Passthrough,
}

impl RuleOutcome {
    /// In the order of `Metrics::by_rule`'s slots.
    const ALL: [RuleOutcome; 6] = [
        RuleOutcome::Served(Outcome::Cache),
        RuleOutcome::Served(Outcome::Fetched),
        RuleOutcome::Served(Outcome::Stale),
        RuleOutcome::Served(Outcome::Inline),
        RuleOutcome::Served(Outcome::Fallback),
        RuleOutcome::Passthrough,
    ];

    fn slot(self) -> usize {
        match self {
            RuleOutcome::Served(Outcome::Cache) => 0,
            RuleOutcome::Served(Outcome::Fetched) => 1,
            RuleOutcome::Served(Outcome::Stale) => 2,
            RuleOutcome::Served(Outcome::Inline) => 3,
            RuleOutcome::Served(Outcome::Fallback) => 4,
            RuleOutcome::Passthrough => 5,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RuleOutcome::Served(o) => o.as_str(),
            RuleOutcome::Passthrough => "passthrough",
        }
    }
}

/// A rule's counter for one outcome, under `PREFIX`: `decisions.<name>.<outcome>`, two
/// segments Envoy's `stats_tags` turn into the labels `rule` and `outcome`
/// (docs/observability.md gives the tags).
fn rule_counter_name(rule: &Rule, outcome: RuleOutcome) -> String {
    format!("decisions.{}.{}", rule.stat, outcome.as_str())
}

/// The name of every counter, in the order `Metrics::define` asks the host for them (a
/// host that defines counters ahead of time, such as the dynamic module, defines these).
pub fn counter_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = NAMES.iter().map(|n| format!("{PREFIX}{n}")).collect();
    names.extend(FetchFailure::ALL.map(|f| format!("{PREFIX}{}", fetch_failed_name(f))));
    for rule in config.rules() {
        names.extend(RuleOutcome::ALL.map(|o| format!("{PREFIX}{}", rule_counter_name(rule, o))));
    }
    names
}

pub struct Metrics {
    pub intercepted: Counter,
    pub cache_hit: Counter,
    pub fetched: Counter,
    pub inline: Counter,
    pub fallback: Counter,
    pub passthrough: Counter,
    /// A route or virtual host named a policy `policies` does not have.
    pub unknown_policy: Counter,
    /// A held request answered in Envoy's place, before its route timeout.
    pub deadline: Counter,
    /// An expired copy served because the object could not be fetched again.
    pub stale: Counter,
    /// Background fetches: of objects never held (prewarm) and of held ones (refresh).
    pub prewarmed: Counter,
    pub prewarm_failed: Counter,
    pub refreshed: Counter,
    pub refresh_failed: Counter,
    fetch_failed: [Counter; 6],
    /// Per rule (by `Rule::ordinal`), per outcome (by `RuleOutcome::slot`).
    by_rule: Vec<[Counter; 6]>,
}

impl Metrics {
    pub fn define(host: &impl Host, config: &Config) -> Metrics {
        let [intercepted, cache_hit, fetched, inline, fallback, passthrough, unknown_policy, deadline, stale, prewarmed, prewarm_failed, refreshed, refresh_failed] =
            NAMES.map(|n| Counter::define(host, n));
        let fetch_failed = FetchFailure::ALL.map(|f| Counter::define(host, &fetch_failed_name(f)));
        let by_rule =
            config.rules().map(|r| RuleOutcome::ALL.map(|o| Counter::define(host, &rule_counter_name(r, o)))).collect();
        Metrics {
            intercepted,
            cache_hit,
            fetched,
            inline,
            fallback,
            passthrough,
            unknown_policy,
            deadline,
            stale,
            prewarmed,
            prewarm_failed,
            refreshed,
            refresh_failed,
            fetch_failed,
            by_rule,
        }
    }

    /// Counts what became of a response `rule` (of this worker's configuration) decided.
    pub fn rule(&self, rule: &Rule, outcome: RuleOutcome) {
        if let Some(counters) = self.by_rule.get(rule.ordinal) {
            counters[outcome.slot()].bump();
        }
    }

    pub fn fetch_failed(&self, f: FetchFailure) -> &Counter {
        // `fetch_failed` is built from `ALL`, so every reason has its slot.
        let i = FetchFailure::ALL.iter().position(|x| *x == f).unwrap_or(0);
        &self.fetch_failed[i]
    }

    /// Called on the root context's tick.
    pub fn flush(&self, via: &impl Context) {
        for c in [
            &self.intercepted,
            &self.cache_hit,
            &self.fetched,
            &self.inline,
            &self.fallback,
            &self.passthrough,
            &self.unknown_policy,
            &self.deadline,
            &self.stale,
            &self.prewarmed,
            &self.prewarm_failed,
            &self.refreshed,
            &self.refresh_failed,
        ] {
            c.flush(via);
        }
        for c in self.fetch_failed.iter().chain(self.by_rule.iter().flatten()) {
            c.flush(via);
        }
    }
}
