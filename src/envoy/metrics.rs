//! Counters in Envoy's stats. Envoy shows wasm counters with a `wasmcustom.` prefix:
//! `wasmcustom.custom_error_pages.intercepted` and so on.
//!
//! A request only bumps a number in the VM's memory; the root context's 100 ms tick adds
//! the increments to Envoy's counters, keeping two host calls per intercepted error off the
//! request path; the price is that `/stats` lags by up to one tick.

use super::host;
use crate::error_service::FetchFailure;
use std::cell::Cell;

pub(crate) struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Counter {
    fn define(name: &str) -> Counter {
        Counter { id: host::define_counter(&format!("custom_error_pages.{name}")), pending: Cell::new(0) }
    }

    pub fn bump(&self) {
        self.pending.set(self.pending.get() + 1);
    }

    fn flush(&self) {
        let n = self.pending.replace(0);
        if n > 0 {
            host::add(self.id, n);
        }
    }
}

pub(crate) struct Metrics {
    pub intercepted: Counter,
    pub cache_hit: Counter,
    pub fetched: Counter,
    pub inline: Counter,
    pub fallback: Counter,
    pub passthrough: Counter,
    fetch_failed: [Counter; 6],
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            intercepted: Counter::define("intercepted"),
            cache_hit: Counter::define("cache_hit"),
            fetched: Counter::define("fetched"),
            inline: Counter::define("inline"),
            fallback: Counter::define("fallback"),
            passthrough: Counter::define("passthrough"),
            fetch_failed: FetchFailure::ALL.map(|f| Counter::define(&format!("fetch_failed.{}", f.as_str()))),
        }
    }

    pub fn fetch_failed(&self, f: FetchFailure) -> &Counter {
        // `fetch_failed` is built from `ALL`, so every reason has its slot.
        let i = FetchFailure::ALL.iter().position(|x| *x == f).unwrap_or(0);
        &self.fetch_failed[i]
    }

    /// Called on the root context's tick.
    pub fn flush(&self) {
        for c in [&self.intercepted, &self.cache_hit, &self.fetched, &self.inline, &self.fallback, &self.passthrough] {
            c.flush();
        }
        for c in &self.fetch_failed {
            c.flush();
        }
    }
}
