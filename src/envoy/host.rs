//! The only place that talks to the proxy-wasm host. The SDK's `hostcalls` panic on any
//! status they do not expect (e.g. `BadArgument` when Envoy has no request header map for
//! a local reply), and a panic kills the VM; so the calls used on the request path are
//! declared here directly and every status is handled. Only `dispatch_http_call` goes
//! through the SDK, because its dispatcher must register the token to route the answer.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::borrow::Cow;
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

/// All request headers, kept unparsed.
pub fn request_headers_raw() -> Vec<u8> {
    raw_map(MapType::HttpRequestHeaders)
}

/// All response headers, unparsed: one host call gives both `:status` and, on the error
/// path, the headers a replacement keeps (reading `:status` alone first would cost an
/// extra host call, and a VM re-entry to allocate, on every intercepted error).
pub fn response_headers_raw() -> Vec<u8> {
    raw_map(MapType::HttpResponseHeaders)
}

/// The `:status` of a raw response header map.
pub fn status_of(raw: &[u8]) -> Option<u16> {
    first_value(raw, ":status").and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse().ok())
}

/// A header from `request_headers_raw` (lower-case name); several values joined by ",".
pub fn find_header(raw: &[u8], name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for (k, v) in map_entries(raw) {
        if k == name.as_bytes() {
            let v = String::from_utf8_lossy(v);
            found = Some(match found {
                Some(prev) => prev + "," + &v,
                None => v.into_owned(),
            });
        }
    }
    found
}

/// The first value of a header in a serialised map, without copying.
pub fn first_value<'a>(raw: &'a [u8], name: &str) -> Option<&'a [u8]> {
    map_entries(raw).find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
}

/// The (key, value) byte slices of a serialised map, without copying.
pub fn map_entries(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
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

fn pairs(map: MapType) -> Vec<(String, Vec<u8>)> {
    deserialize_map(&raw_map(map))
}

pub fn call_response_headers() -> Vec<(String, Vec<u8>)> {
    pairs(MapType::HttpCallResponseHeaders)
}

pub fn set_response_headers(headers: &[(Cow<str>, Cow<str>)]) -> bool {
    let data = serialize_map(headers.iter().map(|(k, v)| (k.as_ref(), v.as_bytes())));
    // SAFETY: data outlives the call.
    unsafe { proxy_set_header_map_pairs(MapType::HttpResponseHeaders as u32, data.as_ptr(), data.len()) == OK }
}

/// Replaces the current response body chunk (`size` bytes from 0) with `value`.
pub fn replace_response_body(size: usize, value: &[u8]) -> bool {
    // SAFETY: value outlives the call.
    unsafe { proxy_set_buffer_bytes(BufferType::HttpResponseBody as u32, 0, size, value.as_ptr(), value.len()) == OK }
}

pub fn call_response_body(size: usize) -> Option<Vec<u8>> {
    buffer(BufferType::HttpCallResponseBody, size)
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

pub fn property(path: &[&str]) -> Option<String> {
    let p = path.join("\0");
    let mut ptr = null_mut();
    let mut len = 0;
    // SAFETY: as above.
    let status = unsafe { proxy_get_property(p.as_ptr(), p.len(), &mut ptr, &mut len) };
    (status == OK).then(|| text(unsafe { owned(ptr, len) }))
}

/// Sets filter state `wasm.<name>`, readable by the access log as
/// `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub fn set_filter_state(name: &str, value: &str) {
    // SAFETY: as above.
    unsafe {
        proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
    }
}

pub fn resume_response() -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_continue_stream(proxy_wasm::types::StreamType::HttpResponse as u32) == OK }
}

/// A local reply. `headers` must not contain pseudo headers.
pub fn send_response(status: u16, headers: &[(Cow<str>, Cow<str>)], body: &[u8]) -> bool {
    let data =
        serialize_map(headers.iter().filter(|(k, _)| !k.starts_with(':')).map(|(k, v)| (k.as_ref(), v.as_bytes())));
    let details = "custom_error_page";
    // SAFETY: all buffers outlive the call.
    unsafe {
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

pub fn dispatch(cluster: &str, headers: &[(&'static str, String)], timeout_ms: u64) -> Option<u32> {
    let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    hostcalls::dispatch_http_call(cluster, hs, None, vec![], Duration::from_millis(timeout_ms)).ok()
}

pub fn now_ms() -> u64 {
    let mut ns = 0u64;
    // SAFETY: as above.
    if unsafe { proxy_get_current_time_nanoseconds(&mut ns) } == OK {
        ns / 1_000_000
    } else {
        0
    }
}

pub fn define_counter(name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: as above.
    let status = unsafe { proxy_define_metric(MetricType::Counter as u32, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

pub fn add(id: Option<u32>, n: u64) {
    if let Some(id) = id {
        // SAFETY: no pointers.
        unsafe {
            proxy_increment_metric(id, n.min(i64::MAX as u64) as i64);
        }
    }
}

/// Makes the following host calls act on another request's stream (false: it is gone).
pub fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: no pointers.
    unsafe { proxy_set_effective_context(context_id) == OK }
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

fn deserialize_map(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    map_entries(data).map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec())).collect()
}
