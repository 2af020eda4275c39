//! A fake proxy for the runtime's tests: keeps each stream's headers, records what the
//! filter did to it (headers set, body chunks, local reply, resumption, access-log value),
//! the calls it dispatched, and which streams are still alive. Each call acts on the
//! context it is made through (`Fake::ctx` for a hook's own, `Host::context` by id).

use super::host::{Context, HeaderMap, Headers, Host, Metadata};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

#[derive(Default, Clone, Debug)]
pub struct Map(pub Vec<(String, String)>);

impl HeaderMap for Map {
    fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()))
    }
}

/// A call's answer as the tests write it: headers, and the body (none when it has none).
pub type Answer = (Vec<(String, Vec<u8>)>, Option<Vec<u8>>);

/// The answer as the adapter hands it to the runtime.
pub fn delivered(answer: Answer) -> super::host::Answer {
    super::host::Answer { headers: answer.0, body: answer.1 }
}
/// A local reply: status, headers, body.
pub type LocalReply = (u16, Vec<(String, String)>, Vec<u8>);

fn owned(headers: &Headers<'_>) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One stream as the fake proxy sees it.
#[derive(Default, Debug)]
pub struct StreamLog {
    pub request: Vec<(String, String)>,
    pub response: Vec<(String, String)>,
    pub code_details: String,
    pub start_ms: Option<u64>,
    pub route_name: Option<String>,
    /// `(namespace, key, value)` of the route's and the virtual host's `filter_metadata`.
    pub route_metadata: Vec<(String, String, String)>,
    pub virtual_host_metadata: Vec<(String, String, String)>,
    /// The response headers the filter set (in place).
    pub set_headers: Option<Vec<(String, String)>>,
    /// What the replaced body chunks carried, in order.
    pub body_out: Vec<u8>,
    pub chunks: usize,
    /// Bodies put before the response's trailers.
    pub before_trailers: usize,
    pub local_reply: Option<LocalReply>,
    pub resumed: usize,
    pub filter_state: Option<String>,
}

impl StreamLog {
    pub fn header(&self, name: &str) -> Option<&str> {
        let list = self.set_headers.as_ref().or(self.local_reply.as_ref().map(|(_, h, _)| h))?;
        list.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct Call {
    pub token: u32,
    pub from: u32,
    pub cluster: String,
    pub headers: crate::error_service::CallHeaders,
}

#[derive(Default)]
pub struct State {
    pub alive: BTreeSet<u32>,
    pub streams: BTreeMap<u32, StreamLog>,
    pub calls: Vec<Call>,
    pub refuse_dispatch: bool,
    pub refuse_headers: bool,
    pub now_ms: u64,
    /// Envoy's timeout for the request, as the proxy would tell it.
    pub proxy_timeout_ms: Option<u64>,
    /// Whether calls made from the root context outlive requests (proxy-wasm: they do).
    pub detached_calls: bool,
    pub counters: Vec<(String, u64)>,
    /// Calls that added to a counter (each a host call in Envoy).
    pub counter_adds: usize,
    /// Whether Envoy holds a replaced response's emptied chunks (proxy-wasm: it must).
    pub holds_emptied_chunks: bool,
}

#[derive(Clone, Default)]
pub struct Fake(pub Rc<RefCell<State>>);

impl Fake {
    pub fn state(&self) -> std::cell::RefMut<'_, State> {
        self.0.borrow_mut()
    }

    /// The context Envoy hands to a hook of stream `id` (or of the root, 0).
    pub fn ctx(&self, id: u32) -> FakeCtx {
        FakeCtx { fake: self.clone(), id }
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.0.borrow().counters.iter().find(|(n, _)| n == &format!("custom_error_pages.{name}")).map_or(0, |(_, v)| *v)
    }
}

impl Host for Fake {
    type Map = Map;
    type Context = FakeCtx;

    /// Envoy answers NotFound for a gone context; the root (0) is always there.
    fn context(&self, id: u32) -> Option<FakeCtx> {
        (id == 0 || self.0.borrow().alive.contains(&id)).then(|| self.ctx(id))
    }

    fn detached_calls(&self) -> bool {
        self.0.borrow().detached_calls
    }

    fn now_ms(&self) -> u64 {
        self.0.borrow().now_ms
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        let mut s = self.state();
        s.counters.push((name.to_string(), 0));
        Some(s.counters.len() as u32 - 1)
    }
}

/// One context of the fake proxy.
#[derive(Clone)]
pub struct FakeCtx {
    fake: Fake,
    id: u32,
}

impl FakeCtx {
    fn state(&self) -> std::cell::RefMut<'_, State> {
        self.fake.state()
    }

    /// Runs `f` on this stream's log, as Envoy acts on a live stream only.
    fn with_current<T>(&self, f: impl FnOnce(&mut StreamLog) -> T) -> Option<T> {
        let mut s = self.state();
        if !s.alive.contains(&self.id) {
            return None;
        }
        s.streams.get_mut(&self.id).map(f)
    }
}

impl Context for FakeCtx {
    type Map = Map;

    fn id(&self) -> u32 {
        self.id
    }

    fn request_headers(&self) -> Map {
        Map(self.with_current(|s| s.request.clone()).unwrap_or_default())
    }

    fn response_headers(&self) -> Map {
        Map(self.with_current(|s| s.response.clone()).unwrap_or_default())
    }

    fn set_response_headers(&self, headers: &Headers<'_>) -> bool {
        if self.state().refuse_headers {
            return false;
        }
        self.with_current(|s| s.set_headers = Some(owned(headers))).is_some()
    }

    fn replace_response_body(&self, _size: usize, body: &[u8]) -> bool {
        self.with_current(|s| {
            s.body_out.extend_from_slice(body);
            s.chunks += 1;
        })
        .is_some()
    }

    fn holds_emptied_chunks(&self) -> bool {
        self.state().holds_emptied_chunks
    }

    fn body_before_trailers(&self, body: &[u8]) -> bool {
        self.with_current(|s| {
            s.body_out.extend_from_slice(body);
            s.before_trailers += 1;
        })
        .is_some()
    }

    fn send_response(&self, status: u16, headers: &Headers<'_>, body: &[u8]) -> bool {
        let headers = owned(headers).into_iter().filter(|(k, _)| !k.starts_with(':')).collect();
        self.with_current(|s| s.local_reply = Some((status, headers, body.to_vec()))).is_some()
    }

    fn resume_response(&self) -> bool {
        self.with_current(|s| s.resumed += 1).is_some()
    }

    fn dispatch(&self, cluster: &str, headers: &crate::error_service::CallHeaders, _timeout_ms: u64) -> Option<u32> {
        let mut s = self.state();
        if s.refuse_dispatch {
            return None;
        }
        let token = 100 + s.calls.len() as u32;
        s.calls.push(Call { token, from: self.id, cluster: cluster.to_string(), headers: headers.to_vec() });
        Some(token)
    }

    fn add_to_counter(&self, id: u32, n: u64) -> bool {
        let mut s = self.state();
        s.counter_adds += 1;
        match s.counters.get_mut(id as usize) {
            Some((_, v)) => {
                *v += n;
                true
            }
            None => false,
        }
    }

    fn response_code_details(&self) -> Option<String> {
        self.with_current(|s| s.code_details.clone())
    }

    fn route_name(&self) -> Option<String> {
        self.with_current(|s| s.route_name.clone()).flatten()
    }

    fn metadata(&self, of: Metadata, namespace: &str, key: &str) -> Option<String> {
        self.with_current(|s| {
            let list = if of == Metadata::Route { &s.route_metadata } else { &s.virtual_host_metadata };
            list.iter().find(|(n, k, _)| n == namespace && k == key).map(|(_, _, v)| v.clone())
        })
        .flatten()
    }

    fn set_filter_state(&self, _name: &str, value: &str) -> bool {
        self.with_current(|s| s.filter_state = Some(value.to_string())).is_some()
    }

    fn request_start_ms(&self) -> Option<u64> {
        self.with_current(|s| s.start_ms).flatten()
    }

    fn proxy_timeout_ms(&self) -> Option<u64> {
        self.state().proxy_timeout_ms
    }
}
