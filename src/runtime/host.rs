//! What the runtime needs from the proxy, and nothing more, in two parts: the `Host` a
//! worker holds (clock, counter definitions, contexts by id) and the `Context` of one
//! request (its headers, body, reply, calls). Both adapters implement them with Envoy's
//! calls; tests with a fake host that records what the filter did. A response is never
//! lost because the host said no.

pub use crate::request::Metadata;
use std::borrow::Cow;

/// A header map as the proxy hands it over: read in one piece, kept as it came, and only
/// searched (never parsed whole) on the path of an error.
pub trait HeaderMap: Default {
    /// `(name, value)` in the proxy's order; names lower-case, as Envoy keeps them.
    fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// The first value of `name` (lower-case), without copying.
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.entries().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
    }

    /// Every value of `name` (lower-case) joined with ",", as one header.
    fn joined(&self, name: &str) -> Option<String> {
        let mut found: Option<String> = None;
        for (_, v) in self.entries().filter(|(k, _)| *k == name.as_bytes()) {
            let v = String::from_utf8_lossy(v);
            found = Some(match found {
                Some(prev) => prev + "," + &v,
                None => v.into_owned(),
            });
        }
        found
    }
}

/// A header list to send: `:status` first where the call needs it.
pub type Headers<'a> = [(Cow<'a, str>, Cow<'a, str>)];

/// An answer of the error service, as the adapter hands it over with the call's hook. The
/// body is read only once the headers pass (an answer over `maxBodyBytes` is never copied).
pub trait CallAnswer {
    /// The headers, `:status` among them.
    fn headers(&mut self) -> Vec<(String, Vec<u8>)>;
    fn body_size(&self) -> usize;
    /// The body; `None` when the proxy has none to give.
    fn body(&mut self) -> Option<Vec<u8>>;
}

/// An answer already copied out of the proxy.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Option<Vec<u8>>,
}

impl CallAnswer for Answer {
    fn headers(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.headers)
    }

    fn body_size(&self) -> usize {
        self.body.as_ref().map_or(0, Vec::len)
    }

    fn body(&mut self) -> Option<Vec<u8>> {
        self.body.take()
    }
}

/// The proxy as one worker sees it: a clock, counters to define, and the contexts it may
/// act on, by id. Nothing here acts on a request: that takes the request's `Context`.
pub trait Host {
    type Map: HeaderMap;
    type Context: Context<Map = Self::Map>;

    /// The live context `id` (a request's stream, or the proxy-wasm root), or `None` when it
    /// is gone. The one place the runtime turns an id into something it can act on.
    fn context(&self, id: u32) -> Option<Self::Context>;
    /// Whether a call dispatched from the worker's own context (the proxy-wasm root's tick)
    /// outlives every request: Envoy cancels a call with the request context that made it,
    /// never one made by the root context.
    fn detached_calls(&self) -> bool;
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64;
    fn define_counter(&self, name: &str) -> Option<u32>;
}

/// One context of the proxy: a request's stream (or the proxy-wasm root, which has no
/// request and refuses what needs one). Handed to each hook by the adapter, or obtained by
/// id from `Host::context`; every call acts on this context and no other. Every status
/// comes back as a value: the runtime decides what a refusal means.
pub trait Context: Clone {
    type Map: HeaderMap;

    fn id(&self) -> u32;
    /// The request headers (only while the request phase runs: Envoy hides them later).
    fn request_headers(&self) -> Self::Map;
    /// The response headers, `:status` included.
    fn response_headers(&self) -> Self::Map;
    /// Replaces every response header (the paused headers of this stream).
    fn set_response_headers(&self, headers: &Headers<'_>) -> bool;
    /// Replaces the current response body chunk (`size` bytes) with `body`.
    fn replace_response_body(&self, size: usize, body: &[u8]) -> bool;
    /// Whether a response being replaced has its emptied chunks held by Envoy
    /// (`StopIterationAndBuffer`) until the last one: proxy-wasm can write only a held body
    /// from the trailers callback, so the page of a response that ends with trailers
    /// needs that (empty) held body to go into. A dynamic module adds new body data from
    /// its trailers hook instead, and lets every chunk go.
    fn holds_emptied_chunks(&self) -> bool;
    /// From the trailers callback: `body` goes out before the trailers (the response ended
    /// with them instead of a last body chunk that could carry it).
    fn body_before_trailers(&self, body: &[u8]) -> bool;
    /// A local reply; pseudo headers in `headers` are ignored.
    fn send_response(&self, status: u16, headers: &Headers<'_>, body: &[u8]) -> bool;
    /// Lets the paused response go on.
    fn resume_response(&self) -> bool;

    /// Starts a call to a cluster from this context; its answer comes back to this
    /// context's hook with the token returned here. `None`: the proxy refused (unknown
    /// cluster, bad headers).
    fn dispatch(&self, cluster: &str, headers: &crate::error_service::CallHeaders, timeout_ms: u64) -> Option<u32>;
    /// Adds `n` to a counter `Host::define_counter` defined.
    fn add_to_counter(&self, id: u32, n: u64) -> bool;

    /// Envoy's `response.code_details` (`via_upstream` for a backend's response).
    fn response_code_details(&self) -> Option<String>;
    /// The name of the route Envoy chose (`xds.route_name`).
    fn route_name(&self) -> Option<String>;
    /// A string in the chosen route's or virtual host's `filter_metadata.<namespace>.<key>`.
    fn metadata(&self, of: Metadata, namespace: &str, key: &str) -> Option<String>;
    /// A value for the access log: filter state `wasm.<name>`.
    fn set_filter_state(&self, name: &str, value: &str) -> bool;

    /// When the request arrived, in milliseconds since the epoch (`None`: not known).
    fn request_start_ms(&self) -> Option<u64>;
    /// The timeout Envoy's router enforces for this request, when the proxy lets the
    /// filter read it (the dynamic module reads `x-envoy-expected-rq-timeout-ms`, which the
    /// router writes on the request; proxy-wasm hides request headers after the request
    /// phase, so the wasm build answers `None` and takes the policy's `routeTimeoutsMs`).
    fn proxy_timeout_ms(&self) -> Option<u64>;
}
