//! The only place that talks to the proxy-wasm host: `Wasm`, the runtime's `Host` for
//! this build, and the root context's few calls. The SDK's `hostcalls` panic on any
//! status they do not expect (e.g. `BadArgument` when Envoy has no request header map for
//! a local reply), and a panic kills the VM; so the calls used on the request path are
//! declared here directly and every status is returned to the runtime. Only
//! `dispatch_http_call` goes through the SDK, because its dispatcher must register the
//! token to route the answer to the right context.

use crate::runtime::{CallAnswer, Context, HeaderMap, Headers, Host, Metadata};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};
use std::cell::Cell;
use std::ptr::null_mut;
use std::time::Duration;

const OK: u32 = 0;

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_len: *mut usize) -> u32;
    fn proxy_set_header_map_pairs(map: u32, data: *const u8, len: usize) -> u32;
    fn proxy_get_buffer_bytes(buf: u32, start: usize, max: usize, out: *mut *mut u8, out_len: *mut usize) -> u32;
    fn proxy_set_buffer_bytes(buf: u32, start: usize, size: usize, data: *const u8, len: usize) -> u32;
    fn proxy_get_property(path: *const u8, path_len: usize, out: *mut *mut u8, out_len: *mut usize) -> u32;
    fn proxy_set_property(path: *const u8, path_len: usize, value: *const u8, value_len: usize) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_len: usize,
        body: *const u8,
        body_len: usize,
        headers: *const u8,
        headers_len: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_len: usize, out: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_set_tick_period_milliseconds(ms: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_log_level(out: *mut u32) -> u32;
}

/// Takes ownership of a host-allocated buffer (allocated through the SDK's exported
/// `proxy_on_memory_allocate`, i.e. Rust's global allocator).
unsafe fn owned(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(ptr, len, len)
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A header map in the host's serialised form (one host call, no parsing).
fn raw_map(map: MapType) -> Vec<u8> {
    let mut ptr = null_mut();
    let mut len = 0;
    // SAFETY: pointers are valid for the call; the host fills them on OK.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut ptr, &mut len) };
    if status != OK {
        return Vec::new();
    }
    unsafe { owned(ptr, len) }
}

/// The (key, value) byte slices of a serialised map, without copying.
fn map_entries(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let read_u32 = move |at: usize| -> Option<usize> {
        data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = read_u32(0).unwrap_or(0);
    let mut p = 4usize.saturating_add(count.saturating_mul(8));
    (0..count).map_while(move |i| {
        let (kl, vl) = (read_u32(4 + i * 8)?, read_u32(8 + i * 8)?);
        let k = data.get(p..p.checked_add(kl)?)?;
        let v = data.get(p + kl + 1..(p + kl + 1).checked_add(vl)?)?;
        p += kl + vl + 2;
        Some((k, v))
    })
}

pub fn plugin_configuration(size: usize) -> Option<Vec<u8>> {
    buffer(BufferType::PluginConfiguration, size)
}

fn buffer(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    let mut ptr = null_mut();
    let mut len = 0;
    // SAFETY: as above.
    let status = unsafe { proxy_get_buffer_bytes(kind as u32, 0, size, &mut ptr, &mut len) };
    (status == OK).then(|| unsafe { owned(ptr, len) })
}

fn property(path: &[&str]) -> Option<String> {
    property_bytes(path).map(text)
}

fn property_bytes(path: &[&str]) -> Option<Vec<u8>> {
    let p = path.join("\0");
    let mut ptr = null_mut();
    let mut len = 0;
    // SAFETY: as above.
    let status = unsafe { proxy_get_property(p.as_ptr(), p.len(), &mut ptr, &mut len) };
    (status == OK).then(|| unsafe { owned(ptr, len) })
}

fn serialize_headers(headers: &Headers<'_>, pseudo: bool) -> Vec<u8> {
    serialize_map(
        headers.iter().filter(|(k, _)| pseudo || !k.starts_with(':')).map(|(k, v)| (k.as_ref(), v.as_bytes())),
    )
}

/// A header map in proxy-wasm's serialised form, kept as the host handed it over.
#[derive(Default)]
pub struct RawMap(Vec<u8>);

impl HeaderMap for RawMap {
    fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        map_entries(&self.0)
    }
}

/// The proxy-wasm host (Envoy's wasm runtime), as a worker (one VM) sees it.
#[derive(Clone, Copy)]
pub struct Wasm;

thread_local! {
    /// The context the host's calls act on now. Proxy-wasm keeps an ambient "effective
    /// context": Envoy sets it to the context whose callback it runs, and
    /// `proxy_set_effective_context` switches it. This adapter alone knows of it: a
    /// `Ctx` switches to its own context before a call when another is effective.
    static EFFECTIVE: Cell<u32> = const { Cell::new(0) };
}

/// One proxy-wasm context (an HTTP stream, or the root). Made by a callback for its own
/// context (`Ctx::entered`), or by `Wasm::context` for another one that is still alive.
#[derive(Clone, Copy)]
pub struct Ctx {
    id: u32,
}

impl Ctx {
    /// The context of the callback Envoy runs now (Envoy made it the effective one).
    pub fn entered(id: u32) -> Ctx {
        EFFECTIVE.with(|e| e.set(id));
        Ctx { id }
    }

    /// Makes this context the effective one for the next host call; false: it is gone.
    fn act(&self) -> bool {
        if EFFECTIVE.with(Cell::get) == self.id {
            return true;
        }
        // SAFETY: no pointers.
        let ok = unsafe { proxy_set_effective_context(self.id) } == OK;
        if ok {
            EFFECTIVE.with(|e| e.set(self.id));
        }
        ok
    }

    /// At the end of this context's callback: its own context is the effective one again,
    /// as Envoy left it (the runtime may have acted on other requests).
    pub fn leave(&self) {
        self.act();
    }
}

impl Host for Wasm {
    type Map = RawMap;
    type Context = Ctx;

    fn context(&self, id: u32) -> Option<Ctx> {
        let ctx = Ctx { id };
        // Forced, not `act`: whether the context is still alive is the question.
        EFFECTIVE.with(|e| e.set(u32::MAX));
        ctx.act().then_some(ctx)
    }

    /// A call made in the root context's own callback (its tick) belongs to the root,
    /// which lives as long as the VM: Envoy cancels a call only with its context.
    fn detached_calls(&self) -> bool {
        true
    }

    fn now_ms(&self) -> u64 {
        let mut ns = 0u64;
        // SAFETY: as above.
        if unsafe { proxy_get_current_time_nanoseconds(&mut ns) } == OK {
            ns / 1_000_000
        } else {
            0
        }
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        let mut id = 0;
        // SAFETY: as above.
        let status = unsafe { proxy_define_metric(MetricType::Counter as u32, name.as_ptr(), name.len(), &mut id) };
        (status == OK).then_some(id)
    }
}

impl Context for Ctx {
    type Map = RawMap;

    fn id(&self) -> u32 {
        self.id
    }

    fn request_headers(&self) -> RawMap {
        RawMap(if self.act() { raw_map(MapType::HttpRequestHeaders) } else { Vec::new() })
    }

    /// One host call gives both `:status` and, on the error path, the headers a
    /// replacement keeps (reading `:status` alone first would cost an extra host call, and
    /// a VM re-entry to allocate, on every intercepted error).
    fn response_headers(&self) -> RawMap {
        RawMap(if self.act() { raw_map(MapType::HttpResponseHeaders) } else { Vec::new() })
    }

    fn set_response_headers(&self, headers: &Headers<'_>) -> bool {
        let data = serialize_headers(headers, true);
        // SAFETY: data outlives the call.
        self.act()
            && unsafe {
                proxy_set_header_map_pairs(MapType::HttpResponseHeaders as u32, data.as_ptr(), data.len()) == OK
            }
    }

    /// Replaces the current response body chunk (`size` bytes from 0) with `body`.
    fn replace_response_body(&self, size: usize, body: &[u8]) -> bool {
        // SAFETY: body outlives the call.
        self.act()
            && unsafe {
                proxy_set_buffer_bytes(BufferType::HttpResponseBody as u32, 0, size, body.as_ptr(), body.len()) == OK
            }
    }

    fn holds_emptied_chunks(&self) -> bool {
        true
    }

    fn body_before_trailers(&self, body: &[u8]) -> bool {
        // The body Envoy holds for the filter (emptied chunk by chunk, see
        // `holds_emptied_chunks`): proxy-wasm's only body a trailers callback can write.
        self.replace_response_body(0, body)
    }

    fn send_response(&self, status: u16, headers: &Headers<'_>, body: &[u8]) -> bool {
        let data = serialize_headers(headers, false);
        let details = "custom_error_page";
        // SAFETY: all buffers outlive the call.
        self.act()
            && unsafe {
                proxy_send_local_response(
                    status as u32,
                    details.as_ptr(),
                    details.len(),
                    body.as_ptr(),
                    body.len(),
                    data.as_ptr(),
                    data.len(),
                    -1,
                ) == OK
            }
    }

    fn resume_response(&self) -> bool {
        // SAFETY: no pointers.
        self.act() && unsafe { proxy_continue_stream(proxy_wasm::types::StreamType::HttpResponse as u32) == OK }
    }

    fn dispatch(&self, cluster: &str, headers: &crate::error_service::CallHeaders, timeout_ms: u64) -> Option<u32> {
        if !self.act() {
            return None;
        }
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
        hostcalls::dispatch_http_call(cluster, hs, None, vec![], Duration::from_millis(timeout_ms)).ok()
    }

    /// Counters are the VM's, whatever the effective context.
    fn add_to_counter(&self, id: u32, n: u64) -> bool {
        // SAFETY: no pointers.
        unsafe { proxy_increment_metric(id, n.min(i64::MAX as u64) as i64) == OK }
    }

    fn response_code_details(&self) -> Option<String> {
        self.act().then(|| property(&["response", "code_details"])).flatten()
    }

    fn route_name(&self) -> Option<String> {
        self.act().then(|| property(&["xds", "route_name"])).flatten()
    }

    /// `xds.route_metadata.filter_metadata.<ns>.<key>` answers the string itself (Envoy
    /// 1.36-1.40), readable in the response phase.
    fn metadata(&self, of: Metadata, namespace: &str, key: &str) -> Option<String> {
        let whose = match of {
            Metadata::Route => "route_metadata",
            Metadata::VirtualHost => "virtual_host_metadata",
        };
        self.act().then(|| property(&["xds", whose, "filter_metadata", namespace, key])).flatten()
    }

    /// Filter state `wasm.<name>`, readable by the access log as
    /// `%FILTER_STATE(wasm.<name>:PLAIN)%`.
    fn set_filter_state(&self, name: &str, value: &str) -> bool {
        // SAFETY: both buffers outlive the call.
        self.act() && unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) == OK }
    }

    /// `request.time`, which Envoy serialises as the nanoseconds since the epoch (an
    /// int64, little-endian); readable in the response phase.
    fn request_start_ms(&self) -> Option<u64> {
        if !self.act() {
            return None;
        }
        let bytes: [u8; 8] = property_bytes(&["request", "time"])?.try_into().ok()?;
        u64::try_from(i64::from_le_bytes(bytes)).ok().map(|ns| ns / 1_000_000)
    }

    /// Envoy hides the request headers (and with them the router's
    /// `x-envoy-expected-rq-timeout-ms`) from proxy-wasm after the request phase: the
    /// policy's `routeTimeoutsMs` says it instead.
    fn proxy_timeout_ms(&self) -> Option<u64> {
        None
    }
}

/// The error service's answer, read from the host during the call's callback: the
/// headers at once, the body only if the runtime asks for it.
pub struct CallResponse {
    /// The context whose callback delivers it: Envoy keeps the answer on that context.
    pub to: Ctx,
    pub body_size: usize,
}

impl CallAnswer for CallResponse {
    fn headers(&mut self) -> Vec<(String, Vec<u8>)> {
        if !self.to.act() {
            return Vec::new();
        }
        map_entries(&raw_map(MapType::HttpCallResponseHeaders))
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec()))
            .collect()
    }

    fn body_size(&self) -> usize {
        self.body_size
    }

    fn body(&mut self) -> Option<Vec<u8>> {
        self.to.act().then(|| buffer(BufferType::HttpCallResponseBody, self.body_size)).flatten()
    }
}

/// The log level Envoy runs the wasm component at (`--component-log-level wasm:...`).
pub fn log_level() -> Option<LogLevel> {
    let mut level = 0u32;
    // SAFETY: as above.
    if unsafe { proxy_get_log_level(&mut level) } != OK {
        return None;
    }
    Some(match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Critical,
    })
}

pub fn set_tick_ms(ms: u32) -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_set_tick_period_milliseconds(ms) == OK }
}

/// proxy-wasm map encoding: count, (key len, value len)*, then each `key\0value\0`.
fn serialize_map<'a>(items: impl Iterator<Item = (&'a str, &'a [u8])> + Clone) -> Vec<u8> {
    let count = items.clone().count();
    let mut out = Vec::with_capacity(4 + count * 8 + items.clone().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in items.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in items {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}
