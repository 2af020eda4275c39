//! `Native`, the runtime's `Host` for the dynamic-module build. Envoy calls the module on
//! the worker thread that owns the stream, so the state below is per thread: the filter
//! the current hook runs for, the live filters by id (the runtime completes waiting
//! requests from the hook of the request whose call answered), the callout answer being delivered, and the
//! resumes to run once the hook has returned.

use super::abi::{self, Answer, FilterPtr, HeaderList, HeaderType};
use super::RouteConfig;
use crate::fasthash::FastMap;
use crate::runtime::{HeaderMap, Headers, Host, Metadata};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ptr::null_mut;
use std::rc::Rc;
use std::sync::Arc;

thread_local! {
    static CURRENT: Cell<FilterPtr> = const { Cell::new(null_mut()) };
    static LIVE: RefCell<FastMap<u32, FilterPtr>> = RefCell::new(FastMap::default());
    static NEXT_ID: Cell<u32> = const { Cell::new(1) };
    static ANSWER: RefCell<Answer> = const { RefCell::new((Vec::new(), Vec::new())) };
    static DEFERRED: RefCell<VecDeque<Deferred>> = const { RefCell::new(VecDeque::new()) };
    /// When each live filter's request arrived (ms since the epoch), by filter.
    static STARTED: RefCell<FastMap<usize, u64>> = RefCell::new(FastMap::default());
}

/// A new stream's id, registered as live.
pub fn register(filter: FilterPtr) -> u32 {
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1).max(1));
        id
    });
    LIVE.with(|l| l.borrow_mut().insert(id, filter));
    id
}

pub fn unregister(id: u32) {
    if let Some(filter) = LIVE.with(|l| l.borrow_mut().remove(&id)) {
        STARTED.with(|s| s.borrow_mut().remove(&(filter as usize)));
    }
}

/// The request of `filter` arrives now.
pub fn started(filter: FilterPtr, now_ms: u64) {
    STARTED.with(|s| s.borrow_mut().insert(filter as usize, now_ms));
}

/// What the runtime asked of a stream that Envoy may answer by running that stream's next
/// hooks at once (ours included). Run once the outermost hook has returned, in order, as
/// Envoy runs a proxy-wasm filter's resumes and local replies after its callback: the
/// runtime is never re-entered while it holds a stream, and the access-log fields are
/// recorded before a local reply completes the stream (and writes the access log).
enum Deferred {
    Resume(FilterPtr),
    Reply { filter: FilterPtr, status: u16, headers: HeaderList, body: Box<[u8]> },
}

impl Deferred {
    fn run(self) {
        match self {
            Deferred::Resume(f) => {
                let _enter = Enter::new(f);
                abi::continue_encoding(f);
            }
            Deferred::Reply { filter, status, headers, body } => {
                let _enter = Enter::new(filter);
                let list: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (&**k, &**v)).collect();
                abi::send_response(filter, status, &list, &body, "custom_error_page");
            }
        }
    }
}

fn defer(d: Deferred) {
    DEFERRED.with(|q| q.borrow_mut().push_back(d));
}

/// Makes `filter` the current one for the hook's duration (restoring the outer one after
/// a nested hook), and runs what was deferred once the outermost hook ends.
pub struct Enter {
    outer: FilterPtr,
}

impl Enter {
    pub fn new(filter: FilterPtr) -> Enter {
        Enter { outer: CURRENT.with(|c| c.replace(filter)) }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.outer));
        if self.outer.is_null() {
            while let Some(d) = DEFERRED.with(|q| q.borrow_mut().pop_front()) {
                d.run();
            }
        }
    }
}

/// The answer the callout hook delivers, handed to the runtime during `on_call_response`
/// (moved out, not copied: the runtime reads the headers and the body once each).
pub fn set_answer(answer: Answer) {
    ANSWER.with(|a| *a.borrow_mut() = answer);
}

fn current() -> FilterPtr {
    CURRENT.with(|c| c.get())
}

/// The counters defined with the configuration, and what the host must know of it.
pub struct Defined {
    pub counters: Arc<HashMap<String, usize>>,
    pub metadata_namespace: String,
}

#[derive(Clone)]
pub struct Native(pub Rc<Defined>);

#[derive(Default)]
pub struct Map(HeaderList);

impl HeaderMap for Map {
    fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

/// Calls `f` with the current filter, or answers `default` outside any hook.
fn with<T>(default: T, f: impl FnOnce(FilterPtr) -> T) -> T {
    let filter = current();
    if filter.is_null() {
        default
    } else {
        f(filter)
    }
}

impl Host for Native {
    type Map = Map;

    fn request_headers(&self) -> Map {
        Map(with(Vec::new(), |f| abi::headers(f, HeaderType::Request)))
    }

    fn response_headers(&self) -> Map {
        Map(with(Vec::new(), |f| abi::headers(f, HeaderType::Response)))
    }

    fn set_response_headers(&self, headers: &Headers<'_>) -> bool {
        with(false, |f| {
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
        })
    }

    fn replace_response_body(&self, size: usize, body: &[u8]) -> bool {
        with(false, |f| abi::replace_received_response_body(f, size, body))
    }

    fn holds_emptied_chunks(&self) -> bool {
        false
    }

    fn body_before_trailers(&self, body: &[u8]) -> bool {
        with(false, |f| abi::add_response_body(f, body))
    }

    fn send_response(&self, status: u16, headers: &Headers<'_>, body: &[u8]) -> bool {
        with(false, |filter| {
            let headers = headers
                .iter()
                .filter(|(k, _)| !k.starts_with(':'))
                .map(|(k, v)| (Box::from(k.as_bytes()), Box::from(v.as_bytes())))
                .collect();
            defer(Deferred::Reply { filter, status, headers, body: body.into() });
            true
        })
    }

    fn resume_response(&self) -> bool {
        with(false, |f| {
            defer(Deferred::Resume(f));
            true
        })
    }

    fn dispatch(&self, cluster: &str, headers: &crate::error_service::CallHeaders, timeout_ms: u64) -> Option<u32> {
        let list: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
        // Envoy numbers callouts per configuration from 1: the low 32 bits identify one
        // among the few a stream has in flight.
        with(None, |f| abi::http_callout(f, cluster, &list, timeout_ms).map(|id| id as u32))
    }

    fn call_response_headers(&self) -> Vec<(String, Vec<u8>)> {
        ANSWER.with(|a| std::mem::take(&mut a.borrow_mut().0))
    }

    fn call_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        Some(ANSWER.with(|a| std::mem::take(&mut a.borrow_mut().1)))
    }

    fn set_effective_context(&self, id: u32) -> bool {
        match LIVE.with(|l| l.borrow().get(&id).copied()) {
            Some(f) => {
                CURRENT.with(|c| c.set(f));
                true
            }
            None => false,
        }
    }

    fn response_code_details(&self) -> Option<String> {
        with(None, |f| abi::attribute_string(f, abi::ATTRIBUTE_RESPONSE_CODE_DETAILS))
    }

    fn route_name(&self) -> Option<String> {
        with(None, |f| abi::attribute_string(f, abi::ATTRIBUTE_ROUTE_NAME))
    }

    /// The route's `typed_per_filter_config` (most specific: route, virtual host, route
    /// configuration) names the policy before the route's metadata does. Envoy 1.40 gives
    /// a dynamic module no way to read a virtual host's metadata (no metadata source, and
    /// the `xds.virtual_host_metadata` attribute is not served as a string): `None`.
    fn metadata(&self, of: Metadata, namespace: &str, key: &str) -> Option<String> {
        if of == Metadata::VirtualHost {
            return None;
        }
        with(None, |f| {
            if namespace == self.0.metadata_namespace && key == crate::config::POLICY_KEY {
                if let Some(policy) = abi::with_route_config(f, |r: &RouteConfig| r.policy.clone()) {
                    return Some(policy);
                }
            }
            abi::route_metadata_string(f, namespace, key)
        })
    }

    /// Filter state `wasm.custom_error` in both builds, so that an access-log format
    /// (`%FILTER_STATE(wasm.custom_error:PLAIN)%`) carries over from one to the other.
    fn set_filter_state(&self, name: &str, value: &str) -> bool {
        let mut key = String::with_capacity(5 + name.len());
        key.push_str("wasm.");
        key.push_str(name);
        with(false, |f| abi::set_filter_state(f, &key, value))
    }

    fn request_start_ms(&self) -> Option<u64> {
        with(None, |f| STARTED.with(|s| s.borrow().get(&(f as usize)).copied()))
    }

    /// The router writes the timeout it enforces (the route's, or the per-try timeout when
    /// shorter) on the request as `x-envoy-expected-rq-timeout-ms` (unless the router's
    /// `suppress_envoy_headers` is set); a dynamic module can still read the request
    /// headers on the response path.
    fn proxy_timeout_ms(&self) -> Option<u64> {
        with(None, |f| {
            abi::headers(f, HeaderType::Request)
                .iter()
                .find(|(k, _)| &**k == b"x-envoy-expected-rq-timeout-ms")
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
                .filter(|ms| *ms > 0)
        })
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

    fn add_to_counter(&self, id: u32, n: u64) -> bool {
        with(false, |f| abi::increment_counter(f, id as usize, n))
    }
}
