//! Counters in Envoy's stats. Envoy shows wasm counters with a `wasmcustom.` prefix:
//! `wasmcustom.custom_error_pages.intercepted` and so on.
//!
//! A request only bumps a number in the VM's memory; the root context's 100 ms tick adds
//! the increments to Envoy's counters, keeping two host calls per intercepted error off the
//! request path; the price is that `/stats` lags by up to one tick.

use super::host::Host;
use crate::error_service::FetchFailure;
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

    fn flush(&self, host: &impl Host) {
        let n = self.pending.replace(0);
        if let (Some(id), true) = (self.id, n > 0) {
            if !host.add_to_counter(id, n) {
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

/// The name of every counter, in the order `Metrics::define` asks the host for them (a
/// host that defines counters ahead of time, such as the dynamic module, defines these).
pub fn counter_names() -> Vec<String> {
    let mut names: Vec<String> = NAMES.iter().map(|n| format!("{PREFIX}{n}")).collect();
    names.extend(FetchFailure::ALL.map(|f| format!("{PREFIX}{}", fetch_failed_name(f))));
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
}

impl Metrics {
    pub fn define(host: &impl Host) -> Metrics {
        let [intercepted, cache_hit, fetched, inline, fallback, passthrough, unknown_policy, deadline, stale, prewarmed, prewarm_failed, refreshed, refresh_failed] =
            NAMES.map(|n| Counter::define(host, n));
        let fetch_failed = FetchFailure::ALL.map(|f| Counter::define(host, &fetch_failed_name(f)));
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
        }
    }

    pub fn fetch_failed(&self, f: FetchFailure) -> &Counter {
        // `fetch_failed` is built from `ALL`, so every reason has its slot.
        let i = FetchFailure::ALL.iter().position(|x| *x == f).unwrap_or(0);
        &self.fetch_failed[i]
    }

    /// Called on the root context's tick.
    pub fn flush(&self, host: &impl Host) {
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
            c.flush(host);
        }
        for c in &self.fetch_failed {
            c.flush(host);
        }
    }
}
