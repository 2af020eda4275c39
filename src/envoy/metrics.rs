//! Counters in Envoy's stats. Envoy shows wasm counters with a `wasmcustom.` prefix:
//! `wasmcustom.custom_error_pages.intercepted` and so on.

use super::host;
use crate::error_service::FetchFailure;

pub(crate) struct Metrics {
    pub intercepted: Option<u32>,
    pub cache_hit: Option<u32>,
    pub fetched: Option<u32>,
    pub inline: Option<u32>,
    pub fallback: Option<u32>,
    pub passthrough: Option<u32>,
    fetch_failed: [Option<u32>; 6],
}

const PREFIX: &str = "custom_error_pages";

fn counter(name: &str) -> Option<u32> {
    host::define_counter(&format!("{PREFIX}.{name}"))
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            intercepted: counter("intercepted"),
            cache_hit: counter("cache_hit"),
            fetched: counter("fetched"),
            inline: counter("inline"),
            fallback: counter("fallback"),
            passthrough: counter("passthrough"),
            fetch_failed: FetchFailure::ALL.map(|f| counter(&format!("fetch_failed.{}", f.as_str()))),
        }
    }

    pub fn fetch_failed(&self, f: FetchFailure) -> Option<u32> {
        FetchFailure::ALL.iter().position(|x| *x == f).and_then(|i| self.fetch_failed[i])
    }
}
