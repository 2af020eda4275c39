//! `Native`, the runtime's `Host` for the dynamic-module build, and `Ctx`, its
//! `Context` (one stream's filter). Envoy calls the module on the worker thread that owns the stream, so the
//! state below is per thread: the live filters by id (the runtime completes waiting
//! requests from the hook of the request whose call answered, and finds them here), when
//! each request arrived, and the resumes and local replies to run once the hook returns.

use super::abi::{self, EnvoyFilter, HeaderList, HeaderType};
use super::RouteConfig;
use crate::fasthash::FastMap;
use crate::runtime::{Context, HeaderMap, Headers, Host, Metadata};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

thread_local! {
    static LIVE: RefCell<FastMap<u32, EnvoyFilter>> = RefCell::new(FastMap::default());
    static NEXT_ID: Cell<u32> = const { Cell::new(1) };
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Whether the outermost hook's end is running what was deferred: a resume can make
    /// Envoy run hooks at once, whose ends must not drain the queue again (one loop, not
    /// a recursion as deep as the queue is long).
    static DRAINING: Cell<bool> = const { Cell::new(false) };
    static DEFERRED: RefCell<VecDeque<Deferred>> = const { RefCell::new(VecDeque::new()) };
    /// When each live filter's request arrived (ms since the epoch), by stream id.
    static STARTED: RefCell<FastMap<u32, u64>> = RefCell::new(FastMap::default());
}

/// A new stream's id, registered as live.
pub fn register(filter: EnvoyFilter) -> u32 {
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1).max(1));
        id
    });
    LIVE.with(|l| l.borrow_mut().insert(id, filter));
    id
}

/// Envoy destroys the filter of stream `id`: it is no longer anyone's to act on.
pub fn unregister(id: u32) {
    LIVE.with(|l| l.borrow_mut().remove(&id));
    STARTED.with(|s| s.borrow_mut().remove(&id));
}

/// The request of stream `id` arrives now.
pub fn started(id: u32, now_ms: u64) {
    STARTED.with(|s| s.borrow_mut().insert(id, now_ms));
}

fn live(id: u32) -> Option<EnvoyFilter> {
    LIVE.with(|l| l.borrow().get(&id).copied())
}

/// What the runtime asked of a stream that Envoy may answer by running that stream's next
/// hooks at once (ours included). Run once the outermost hook has returned, in order, as
/// Envoy runs a proxy-wasm filter's resumes and local replies after its callback: the
/// runtime is never re-entered while it holds a stream, and the access-log fields are
/// recorded before a local reply completes the stream (and writes the access log). By id:
/// a stream gone by then gets nothing.
enum Deferred {
    Resume(u32),
    Reply { id: u32, status: u16, headers: HeaderList, body: Box<[u8]> },
}

impl Deferred {
    fn run(self) {
        let _hook = Hook::enter();
        match self {
            Deferred::Resume(id) => {
                if let Some(f) = live(id) {
                    abi::continue_encoding(f);
                }
            }
            Deferred::Reply { id, status, headers, body } => {
                if let Some(f) = live(id) {
                    let list: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (&**k, &**v)).collect();
                    abi::send_response(f, status, &list, &body, "custom_error_page");
                }
            }
        }
    }
}

fn defer(d: Deferred) {
    DEFERRED.with(|q| q.borrow_mut().push_back(d));
}

/// Held while a hook of this module runs: when the outermost one ends, what was deferred
/// runs (see `Deferred`).
pub struct Hook(());

impl Hook {
    pub fn enter() -> Hook {
        DEPTH.with(|d| d.set(d.get() + 1));
        Hook(())
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            d.set(d.get().saturating_sub(1));
            d.get()
        });
        if depth == 0 && !DRAINING.with(|d| d.replace(true)) {
            let _done = Drained;
            while let Some(d) = DEFERRED.with(|q| q.borrow_mut().pop_front()) {
                d.run();
            }
        }
    }
}

/// Ends a drain however it ends.
struct Drained;

impl Drop for Drained {
    fn drop(&mut self) {
        DRAINING.with(|d| d.set(false));
    }
}

/// The counters defined with the configuration, and what the host must know of it.
pub struct Defined {
    pub counters: Arc<HashMap<String, usize>>,
    pub metadata_namespace: String,
}

#[derive(Clone)]
pub struct Native(pub Rc<Defined>);

impl Native {
    /// The context of stream `id`, whose hook Envoy runs now for `filter`.
    pub fn entered(&self, id: u32, filter: EnvoyFilter) -> Ctx {
        Ctx { id, filter, defined: self.0.clone() }
    }
}

/// One stream's filter as the runtime acts on it.
#[derive(Clone)]
pub struct Ctx {
    id: u32,
    filter: EnvoyFilter,
    defined: Rc<Defined>,
}

#[derive(Default)]
pub struct Map(HeaderList);

impl HeaderMap for Map {
    fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl Host for Native {
    type Map = Map;
    type Context = Ctx;

    fn context(&self, id: u32) -> Option<Ctx> {
        live(id).map(|filter| self.entered(id, filter))
    }

    /// A callout exists only through a request's filter, and Envoy cancels it with it.
    fn detached_calls(&self) -> bool {
        false
    }

    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        self.0.counters.get(name).and_then(|id| u32::try_from(*id).ok())
    }
}

impl Context for Ctx {
    type Map = Map;

    fn id(&self) -> u32 {
        self.id
    }

    fn request_headers(&self) -> Map {
        Map(abi::headers(self.filter, HeaderType::Request))
    }

    fn response_headers(&self) -> Map {
        Map(abi::headers(self.filter, HeaderType::Response))
    }

    fn set_response_headers(&self, headers: &Headers<'_>) -> bool {
        let f = self.filter;
        let mut ok = true;
        for (name, _) in abi::headers(f, HeaderType::Response) {
            if !headers.iter().any(|(k, _)| k.as_bytes().eq_ignore_ascii_case(&name)) {
                ok &= abi::set_header(f, HeaderType::Response, &name, None);
            }
        }
        for (i, (k, v)) in headers.iter().enumerate() {
            let repeated = headers[..i].iter().any(|(p, _)| p.eq_ignore_ascii_case(k));
            ok &= if repeated {
                abi::add_header(f, HeaderType::Response, k.as_bytes(), v.as_bytes())
            } else {
                abi::set_header(f, HeaderType::Response, k.as_bytes(), Some(v.as_bytes()))
            };
        }
        ok
    }

    fn replace_response_body(&self, size: usize, body: &[u8]) -> bool {
        abi::replace_received_response_body(self.filter, size, body)
    }

    fn holds_emptied_chunks(&self) -> bool {
        false
    }

    fn body_before_trailers(&self, body: &[u8]) -> bool {
        abi::add_response_body(self.filter, body)
    }

    fn send_response(&self, status: u16, headers: &Headers<'_>, body: &[u8]) -> bool {
        let headers = headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':'))
            .map(|(k, v)| (Box::from(k.as_bytes()), Box::from(v.as_bytes())))
            .collect();
        defer(Deferred::Reply { id: self.id, status, headers, body: body.into() });
        true
    }

    fn resume_response(&self) -> bool {
        defer(Deferred::Resume(self.id));
        true
    }

    fn dispatch(&self, cluster: &str, headers: &crate::error_service::CallHeaders, timeout_ms: u64) -> Option<u32> {
        let list: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
        // Envoy numbers callouts per configuration from 1: the low 32 bits identify one
        // among the few a stream has in flight.
        abi::http_callout(self.filter, cluster, &list, timeout_ms).map(|id| id as u32)
    }

    fn add_to_counter(&self, id: u32, n: u64) -> bool {
        abi::increment_counter(self.filter, id as usize, n)
    }

    fn response_code_details(&self) -> Option<String> {
        abi::attribute_string(self.filter, abi::ATTRIBUTE_RESPONSE_CODE_DETAILS)
    }

    fn route_name(&self) -> Option<String> {
        abi::attribute_string(self.filter, abi::ATTRIBUTE_ROUTE_NAME)
    }

    /// The route's `typed_per_filter_config` (most specific: route, virtual host, route
    /// configuration) names the policy before the route's metadata does. Envoy 1.40 gives
    /// a dynamic module no way to read a virtual host's metadata (no metadata source, and
    /// the `xds.virtual_host_metadata` attribute is not served as a string): `None`.
    fn metadata(&self, of: Metadata, namespace: &str, key: &str) -> Option<String> {
        if of == Metadata::VirtualHost {
            return None;
        }
        if namespace == self.defined.metadata_namespace && key == crate::config::POLICY_KEY {
            if let Some(policy) = abi::with_route_config(self.filter, |r: &RouteConfig| r.policy.clone()) {
                return Some(policy);
            }
        }
        abi::route_metadata_string(self.filter, namespace, key)
    }

    /// Filter state `wasm.custom_error` in both builds, so that an access-log format
    /// (`%FILTER_STATE(wasm.custom_error:PLAIN)%`) carries over from one to the other.
    fn set_filter_state(&self, name: &str, value: &str) -> bool {
        let mut key = String::with_capacity(5 + name.len());
        key.push_str("wasm.");
        key.push_str(name);
        abi::set_filter_state(self.filter, &key, value)
    }

    fn request_start_ms(&self) -> Option<u64> {
        STARTED.with(|s| s.borrow().get(&self.id).copied())
    }

    /// The router writes the timeout it enforces (the route's, or the per-try timeout when
    /// shorter) on the request as `x-envoy-expected-rq-timeout-ms` (unless the router's
    /// `suppress_envoy_headers` is set); a dynamic module can still read the request
    /// headers on the response path.
    fn proxy_timeout_ms(&self) -> Option<u64> {
        abi::headers(self.filter, HeaderType::Request)
            .iter()
            .find(|(k, _)| &**k == b"x-envoy-expected-rq-timeout-ms")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
            .filter(|ms| *ms > 0)
    }
}
