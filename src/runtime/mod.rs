//! One request's life in the filter, over the `Host` and `Context` traits: the proxy-wasm
//! adapter (`src/proxy_wasm/`), the dynamic-module adapter (`src/dynamic_module/`) and the
//! tests' fake host implement them. Host-free, so it compiles and is unit-tested on the
//! host. Layers, each importing only those below it: `held`/`facts` (data) <- `flight` <-
//! `worker` (state; returns what to do) <- `finish` (one reply) <- `complete` (applies the
//! worker's results by stream id) <- `stream` (one request's hooks); `shelf` (what one thread
//! fetched ahead, for the others) is a leaf `worker` reads and writes.

mod complete;
mod facts;
mod finish;
mod flight;
mod held;
pub mod host;
mod metrics;
mod schedule;
mod shelf;
mod stream;
mod worker;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use complete::{on_root_call_response, on_tick};
pub use host::{Answer, CallAnswer, Context, HeaderMap, Headers, Host, Metadata};
pub use metrics::counter_names;
pub use shelf::Shelf;
pub use stream::Stream;
pub use worker::{Sharing, Worker, TICK_MS};

/// Loads a policy delivered by the proxy and says so in its log: the warnings and a summary,
/// or, for a policy refused, the JSON path and reason (the line the operator sees next to
/// Envoy's refusal). Both adapters load through here.
pub fn load_policy(text: &[u8]) -> Option<crate::config::Config> {
    match crate::config::load(text) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                log::warn!("custom-error-pages: policy warning: {w}");
            }
            log::info!(
                "custom-error-pages: policy loaded: {} policies, {} path matchers, {} error services",
                cfg.policies.len(),
                cfg.matchers.len(),
                cfg.services.len()
            );
            Some(cfg)
        }
        Err(e) => {
            log::error!("custom-error-pages: invalid policy: {e}");
            None
        }
    }
}

/// What the proxy should do with the paused headers after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Hold the response headers (and Envoy buffers the body) until the filter resumes.
    Pause,
}
