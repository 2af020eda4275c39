//! One request's life in the filter, over a `Host` trait: the proxy-wasm adapter
//! (`src/envoy/`) is one implementation, the tests' fake host another. Host-free, so it
//! compiles and is unit-tested on the host.

mod facts;
pub mod host;
mod metrics;
mod stream;
mod worker;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use host::{HeaderMap, Headers, Host, Metadata};
pub use metrics::counter_names;
pub use stream::Stream;
pub use worker::{Worker, TICK_MS};

/// What the proxy should do with the paused headers after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Hold the response headers (and Envoy buffers the body) until the filter resumes.
    Pause,
}
