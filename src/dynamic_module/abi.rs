//! The Envoy dynamic-module ABI, as far as this filter uses it: the types, the callbacks
//! Envoy exports, and safe wrappers. This file holds every `unsafe` of the native build
//! except the exported hooks' pointer casts in `mod.rs`.
//!
//! Declared by hand from Envoy's `source/extensions/dynamic_modules/abi/abi.h` (ABI
//! `v0.1.0`, which Envoy 1.40's `v0.2.0` still accepts: the header promises compatibility
//! with the next minor version). Every callback here exists in Envoy 1.40.0's binary;
//! enum values are positional, as in the header.

use super::{Filter, ModuleConfig, RouteConfig};
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null;

/// Bytes owned by Envoy, valid until the current hook returns (or a setter is called).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const EMPTY: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// The bytes, or none for a null buffer.
    ///
    /// SAFETY (of the callers' promise): the buffer comes from Envoy during the current
    /// hook, as the ABI guarantees for every buffer it hands out.
    pub fn bytes(&self) -> &[u8] {
        envoy_bytes(self.ptr, self.length)
    }
}

/// Bytes Envoy handed over during the current hook (none for a null pointer); callers tie
/// the lifetime to the buffer or header they read it from.
fn envoy_bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        &[]
    } else {
        // SAFETY: Envoy guarantees `length` readable bytes at `ptr` for the hook.
        unsafe { std::slice::from_raw_parts(ptr, length) }
    }
}

/// Bytes owned by the module, valid for the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    pub fn of(b: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: b.as_ptr(), length: b.len() }
    }
    const NULL: ModuleBuffer = ModuleBuffer { ptr: std::ptr::null(), length: 0 };
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl ModuleHeader {
    pub fn of(k: &[u8], v: &[u8]) -> ModuleHeader {
        ModuleHeader { key_ptr: k.as_ptr(), key_length: k.len(), value_ptr: v.as_ptr(), value_length: v.len() }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl EnvoyHeader {
    const EMPTY: EnvoyHeader =
        EnvoyHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };

    pub fn key(&self) -> &[u8] {
        envoy_bytes(self.key_ptr, self.key_length)
    }
    pub fn value(&self) -> &[u8] {
        envoy_bytes(self.value_ptr, self.value_length)
    }
}

/// `envoy_dynamic_module_type_http_header_type`
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum HeaderType {
    Request = 0,
    Response = 2,
}

/// `envoy_dynamic_module_type_http_body_type_ReceivedResponseBody`
const RECEIVED_RESPONSE_BODY: u32 = 2;
/// `envoy_dynamic_module_type_http_body_type_BufferedResponseBody`
const BUFFERED_RESPONSE_BODY: u32 = 3;
/// `envoy_dynamic_module_type_metadata_source_Route`
const METADATA_SOURCE_ROUTE: u32 = 1;
/// `envoy_dynamic_module_type_attribute_id_ResponseCodeDetails`
pub const ATTRIBUTE_RESPONSE_CODE_DETAILS: u32 = 16;
/// `envoy_dynamic_module_type_attribute_id_XdsRouteName`
pub const ATTRIBUTE_ROUTE_NAME: u32 = 61;
/// `envoy_dynamic_module_type_http_callout_init_result_Success`
const CALLOUT_INIT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_metrics_result_Success`
const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_log_level`
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

type FilterPtr = *mut c_void;
/// Headers copied out of Envoy: (name, value), in Envoy's order.
pub type HeaderList = Vec<(Box<[u8]>, Box<[u8]>)>;
/// A callout's answer, copied: headers and body.
pub type Answer = (Vec<(String, Vec<u8>)>, Vec<u8>);
type ConfigPtr = *mut c_void;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterPtr, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterPtr,
        header_type: u32,
        result_headers: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterPtr,
        status_code: u32,
        headers: *const ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterPtr, body_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_append_body(filter: FilterPtr, body_type: u32, data: ModuleBuffer) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(filter: FilterPtr, body_type: u32, bytes: usize) -> bool;
    fn envoy_dynamic_module_callback_http_get_metadata_string(
        filter: FilterPtr,
        source: u32,
        ns: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: FilterPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterPtr,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterPtr,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: FilterPtr);
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: FilterPtr) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_get_most_specific_route_config(filter: FilterPtr) -> *const c_void;
    // A filter configuration's own calls, on Envoy's main thread (Envoy 1.39 and later).
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigPtr,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: ConfigPtr) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: a module buffer valid for the call.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}

pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: no pointers.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}

/// Envoy's object for one filter configuration, as Envoy hands it to the configuration's
/// hooks below: made only there, never null, and alive until
/// `on_http_filter_config_destroy`. The main-thread fetcher (`ahead.rs`) keeps a copy,
/// which that hook drops.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EnvoyConfig(ConfigPtr);

impl EnvoyConfig {
    fn of(ptr: ConfigPtr) -> Option<EnvoyConfig> {
        (!ptr.is_null()).then_some(EnvoyConfig(ptr))
    }
}

/// Only during `envoy_dynamic_module_on_http_filter_config_new` (Envoy freezes stat creation
/// after it).
pub fn define_counter(config: EnvoyConfig, name: &str) -> Option<usize> {
    let mut id = 0usize;
    // SAFETY: `config` is alive (see `EnvoyConfig`).
    let r = unsafe {
        envoy_dynamic_module_callback_http_filter_config_define_counter(
            config.0,
            ModuleBuffer::of(name.as_bytes()),
            std::ptr::null(),
            0,
            &mut id,
        )
    };
    (r == METRICS_SUCCESS).then_some(id)
}

/// Main thread only: adds to a counter `define_counter` defined.
pub fn config_increment_counter(config: EnvoyConfig, id: usize, n: u64) -> bool {
    // SAFETY: `config` is alive (see `EnvoyConfig`); no labels.
    unsafe {
        envoy_dynamic_module_callback_http_filter_config_increment_counter(config.0, id, std::ptr::null(), 0, n)
            == METRICS_SUCCESS
    }
}

/// Main thread only: a callout of the configuration itself (it outlives every request);
/// its answer arrives in `envoy_dynamic_module_on_http_filter_config_http_callout_done`.
pub fn config_http_callout(
    config: EnvoyConfig,
    cluster: &str,
    headers: &[(&str, &str)],
    timeout_ms: u64,
) -> Option<u64> {
    let raw: Vec<ModuleHeader> = headers.iter().map(|(k, v)| ModuleHeader::of(k.as_bytes(), v.as_bytes())).collect();
    let mut id = 0u64;
    // SAFETY: `config` is alive (see `EnvoyConfig`); every buffer lives until the call returns.
    let r = unsafe {
        envoy_dynamic_module_callback_http_filter_config_http_callout(
            config.0,
            &mut id,
            ModuleBuffer::of(cluster.as_bytes()),
            raw.as_ptr(),
            raw.len(),
            ModuleBuffer::NULL,
            timeout_ms,
        )
    };
    (r == CALLOUT_INIT_SUCCESS).then_some(id)
}

/// A scheduler for the configuration: an event committed to it, from any thread, runs
/// `envoy_dynamic_module_on_http_filter_config_scheduled` on Envoy's main thread (not at all
/// once the configuration is gone: Envoy holds it weakly).
pub fn config_scheduler(config: EnvoyConfig) -> Option<ConfigScheduler> {
    // SAFETY: `config` is alive (see `EnvoyConfig`).
    let raw = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config.0) };
    (!raw.is_null()).then_some(ConfigScheduler(raw as usize))
}

/// A scheduler made by `config_scheduler`, as an address that may cross threads: committed
/// to any number of times, deleted once (`delete` consumes it).
pub struct ConfigScheduler(usize);

impl ConfigScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: made by `scheduler_new` and not deleted (`delete` consumes `self`); Envoy
        // allows commit from any thread.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0 as *mut c_void, event_id) }
    }

    pub fn delete(self) {
        // SAFETY: as above; this is its last use.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0 as *mut c_void) }
    }
}

/// Envoy's filter object for one stream, as Envoy hands it to the hooks below: made only
/// there (the field is private to this file), never null, and alive between
/// `on_http_filter_new` and `on_http_filter_destroy`. The adapter keeps a copy only in its
/// list of live filters, which the destroy hook empties; every function below takes one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EnvoyFilter(FilterPtr);

impl EnvoyFilter {
    /// From a hook's argument; `None` for null.
    fn of(ptr: FilterPtr) -> Option<EnvoyFilter> {
        (!ptr.is_null()).then_some(EnvoyFilter(ptr))
    }
}

// SAFETY (for every function below): `filter` is an `EnvoyFilter`, so alive (see above).

pub fn increment_counter(filter: EnvoyFilter, id: usize, n: u64) -> bool {
    // SAFETY: see above.
    unsafe {
        envoy_dynamic_module_callback_http_filter_increment_counter(filter.0, id, std::ptr::null(), 0, n)
            == METRICS_SUCCESS
    }
}

/// Every header of a map, copied (names are lower-case, as Envoy keeps them).
pub fn headers(filter: EnvoyFilter, of: HeaderType) -> HeaderList {
    // SAFETY: see above; the array has the size Envoy reported.
    unsafe {
        let n = envoy_dynamic_module_callback_http_get_headers_size(filter.0, of as u32);
        if n == 0 {
            return Vec::new();
        }
        let mut raw = vec![EnvoyHeader::EMPTY; n];
        if !envoy_dynamic_module_callback_http_get_headers(filter.0, of as u32, raw.as_mut_ptr()) {
            return Vec::new();
        }
        raw.iter().map(|h| (Box::from(h.key()), Box::from(h.value()))).collect()
    }
}

/// Sets `key` to one value (replacing any), or removes it with `None`.
pub fn set_header(filter: EnvoyFilter, of: HeaderType, key: &[u8], value: Option<&[u8]>) -> bool {
    let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
    // SAFETY: see above; buffers valid for the call.
    unsafe { envoy_dynamic_module_callback_http_set_header(filter.0, of as u32, ModuleBuffer::of(key), value) }
}

pub fn add_header(filter: EnvoyFilter, of: HeaderType, key: &[u8], value: &[u8]) -> bool {
    // SAFETY: see above; buffers valid for the call.
    unsafe {
        envoy_dynamic_module_callback_http_add_header(
            filter.0,
            of as u32,
            ModuleBuffer::of(key),
            ModuleBuffer::of(value),
        )
    }
}

pub fn send_response(filter: EnvoyFilter, status: u16, headers: &[(&[u8], &[u8])], body: &[u8], details: &str) {
    let raw: Vec<ModuleHeader> = headers.iter().map(|(k, v)| ModuleHeader::of(k, v)).collect();
    // SAFETY: see above; every buffer lives until the call returns.
    unsafe {
        envoy_dynamic_module_callback_http_send_response(
            filter.0,
            status.into(),
            raw.as_ptr(),
            raw.len(),
            ModuleBuffer::of(body),
            ModuleBuffer::of(details.as_bytes()),
        )
    }
}

/// The size of the response body chunk the current `response_body` hook received.
pub fn received_response_body_size(filter: EnvoyFilter) -> usize {
    // SAFETY: see above.
    unsafe { envoy_dynamic_module_callback_http_get_body_size(filter.0, RECEIVED_RESPONSE_BODY) }
}

/// Drops `size` bytes of the received chunk and puts `body` in their place.
pub fn replace_received_response_body(filter: EnvoyFilter, size: usize, body: &[u8]) -> bool {
    // SAFETY: see above.
    unsafe {
        let drained =
            size == 0 || envoy_dynamic_module_callback_http_drain_body(filter.0, RECEIVED_RESPONSE_BODY, size);
        drained
            && (body.is_empty()
                || envoy_dynamic_module_callback_http_append_body(
                    filter.0,
                    RECEIVED_RESPONSE_BODY,
                    ModuleBuffer::of(body),
                ))
    }
}

/// From the response trailers hook: `body` goes out before the trailers (Envoy adds it as
/// the filter's own body data, `addEncodedData`, when nothing is held).
pub fn add_response_body(filter: EnvoyFilter, body: &[u8]) -> bool {
    // SAFETY: see above.
    body.is_empty()
        || unsafe {
            envoy_dynamic_module_callback_http_append_body(filter.0, BUFFERED_RESPONSE_BODY, ModuleBuffer::of(body))
        }
}

/// A string in the chosen route's `filter_metadata.<ns>.<key>`.
pub fn route_metadata_string(filter: EnvoyFilter, ns: &str, key: &str) -> Option<String> {
    let mut out = EnvoyBuffer::EMPTY;
    // SAFETY: see above; the result is copied before the hook returns.
    let ok = unsafe {
        envoy_dynamic_module_callback_http_get_metadata_string(
            filter.0,
            METADATA_SOURCE_ROUTE,
            ModuleBuffer::of(ns.as_bytes()),
            ModuleBuffer::of(key.as_bytes()),
            &mut out,
        )
    };
    ok.then(|| String::from_utf8_lossy(out.bytes()).into_owned())
}

pub fn set_filter_state(filter: EnvoyFilter, key: &str, value: &str) -> bool {
    // SAFETY: see above.
    unsafe {
        envoy_dynamic_module_callback_http_set_filter_state_bytes(
            filter.0,
            ModuleBuffer::of(key.as_bytes()),
            ModuleBuffer::of(value.as_bytes()),
        )
    }
}

pub fn attribute_string(filter: EnvoyFilter, id: u32) -> Option<String> {
    let mut out = EnvoyBuffer::EMPTY;
    // SAFETY: see above; the result is copied before the hook returns.
    let ok = unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_string(filter.0, id, &mut out) };
    ok.then(|| String::from_utf8_lossy(out.bytes()).into_owned())
}

/// Starts a callout; its answer arrives in `envoy_dynamic_module_on_http_filter_http_callout_done`
/// of the same filter with the id returned here.
pub fn http_callout(filter: EnvoyFilter, cluster: &str, headers: &[(&str, &str)], timeout_ms: u64) -> Option<u64> {
    let raw: Vec<ModuleHeader> = headers.iter().map(|(k, v)| ModuleHeader::of(k.as_bytes(), v.as_bytes())).collect();
    let mut id = 0u64;
    // SAFETY: see above; every buffer lives until the call returns.
    let r = unsafe {
        envoy_dynamic_module_callback_http_filter_http_callout(
            filter.0,
            &mut id,
            ModuleBuffer::of(cluster.as_bytes()),
            raw.as_ptr(),
            raw.len(),
            ModuleBuffer::NULL,
            timeout_ms,
        )
    };
    (r == CALLOUT_INIT_SUCCESS).then_some(id)
}

pub fn continue_encoding(filter: EnvoyFilter) {
    // SAFETY: see above.
    unsafe { envoy_dynamic_module_callback_http_filter_continue_encoding(filter.0) }
}

/// A scheduler for `filter`: an event committed to it, from any thread, runs the filter's
/// `on_http_filter_scheduled` hook on its worker thread (not at all once the filter is
/// gone: Envoy holds the filter weakly). Commit it, then delete it, with `commit_once`.
pub fn scheduler(filter: EnvoyFilter) -> Option<Scheduler> {
    // SAFETY: see above.
    let raw = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(filter.0) };
    (!raw.is_null()).then_some(Scheduler(raw as usize))
}

/// A scheduler made by `scheduler`, as an address that may cross threads.
pub struct Scheduler(usize);

impl Scheduler {
    /// Commits `event_id` and deletes the scheduler (its only use). Any thread.
    pub fn commit_once(self, event_id: u64) {
        let raw = self.0 as *mut c_void;
        // SAFETY: made by `scheduler_new` and not deleted before (`self` is consumed);
        // Envoy allows commit from any thread, and delete after it.
        unsafe {
            envoy_dynamic_module_callback_http_filter_scheduler_commit(raw, event_id);
            envoy_dynamic_module_callback_http_filter_scheduler_delete(raw);
        }
    }
}

/// The headers and body chunks Envoy hands to the callout hook, copied.
///
/// SAFETY: the pointers and sizes are the callout hook's arguments, used during that hook.
pub unsafe fn callout_answer(
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> Answer {
    let headers: &[EnvoyHeader] =
        if headers.is_null() || headers_size == 0 { &[] } else { std::slice::from_raw_parts(headers, headers_size) };
    let chunks: &[EnvoyBuffer] =
        if chunks.is_null() || chunks_size == 0 { &[] } else { std::slice::from_raw_parts(chunks, chunks_size) };
    let headers = headers.iter().map(|h| (String::from_utf8_lossy(h.key()).into_owned(), h.value().to_vec())).collect();
    let mut body = Vec::with_capacity(chunks.iter().map(|c| c.length).sum());
    for c in chunks {
        body.extend_from_slice(c.bytes());
    }
    (headers, body)
}

/// Hands a module object to Envoy (config, per-route config, filter).
pub fn into_raw<T>(object: T) -> *const c_void {
    Box::into_raw(Box::new(object)) as *const c_void
}

/// A module object Envoy handed back, or none for null.
///
/// SAFETY: `ptr` was made by `into_raw::<T>` and not yet given to `drop_raw`; Envoy only
/// passes a pointer of the kind each hook names, and keeps it alive as the ABI says.
pub unsafe fn object<'a, T>(ptr: *const c_void) -> Option<&'a T> {
    (ptr as *const T).as_ref()
}

/// As `object`, for the one hook that runs at a time on a filter.
///
/// SAFETY: as `object`; and nothing else borrows the object while the hook runs.
pub unsafe fn object_mut<'a, T>(ptr: *const c_void) -> Option<&'a mut T> {
    (ptr as *mut T).as_mut()
}

/// SAFETY: as `object`; Envoy's destroy hook is the last use of `ptr`.
pub unsafe fn drop_raw<T>(ptr: *const c_void) {
    if !ptr.is_null() {
        drop(Box::from_raw(ptr as *mut T));
    }
}

/// The module's per-route configuration object for the filter's route (route, else
/// virtual host, else route configuration level), if there is one.
pub fn with_route_config<T, R>(filter: EnvoyFilter, f: impl FnOnce(&T) -> R) -> Option<R> {
    // SAFETY: see above; every per-route object this module makes is a `T`
    // (`envoy_dynamic_module_on_http_filter_per_route_config_new` below), alive while the
    // route that holds it is in use by this stream.
    let config = unsafe { envoy_dynamic_module_callback_get_most_specific_route_config(filter.0) };
    unsafe { object::<T>(config) }.map(f)
}

// ---------------------------------------------------------------------------------------
// The hooks Envoy calls. Each converts Envoy's pointers into the module's objects and
// runs the adapter's safe code under `catch_unwind`: no panic crosses into Envoy (the
// native profile unwinds), a hook that panicked answers as if the filter were not there.

/// The ABI version of the header this file was written from.
const ABI_VERSION: &[u8] = b"v0.1.0\0";

fn guard<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard(null(), || {
        super::init();
        ABI_VERSION.as_ptr() as *const c_char
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: ConfigPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(null(), || EnvoyConfig::of(envoy).and_then(|e| ModuleConfig::new(e, config.bytes())).map_or(null(), into_raw))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    // SAFETY: made by `config_new` above; this is its last use.
    guard((), || unsafe { drop_raw::<ModuleConfig>(config) })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(null(), || RouteConfig::new(config.bytes()).map_or(null(), into_raw))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(config: *const c_void) {
    // SAFETY: made by `per_route_config_new` above; this is its last use.
    guard((), || unsafe { drop_raw::<RouteConfig>(config) })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const c_void, filter: FilterPtr) -> *const c_void {
    // SAFETY: a config made by `config_new`, alive while Envoy makes filters from it.
    guard(null(), || match unsafe { object::<ModuleConfig>(config) } {
        Some(config) => EnvoyFilter::of(filter).map_or(null(), |filter| into_raw(Filter::new(config, filter))),
        None => null(),
    })
}

/// Runs `f` on the filter object of a hook, with Envoy's filter, answering `default` for
/// a null one.
fn on_filter<T: Copy>(
    envoy: FilterPtr,
    module: *const c_void,
    default: T,
    f: impl FnOnce(&mut Filter, EnvoyFilter) -> T,
) -> T {
    // SAFETY: made by `filter_new`; Envoy runs one hook of a filter at a time on its
    // worker thread, and the adapter never re-enters a filter's own hook (see host::Hook).
    guard(default, || match (unsafe { object_mut::<Filter>(module) }, EnvoyFilter::of(envoy)) {
        (Some(filter), Some(envoy)) => f(filter, envoy),
        _ => default,
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterPtr,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_filter(envoy, module, 0, |f, envoy| f.on_request_headers(envoy))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(_: FilterPtr, _: *const c_void, _: bool) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_: FilterPtr, _: *const c_void) -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    on_filter(envoy, module, 0, |f, envoy| f.on_response_headers(envoy, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterPtr,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    on_filter(envoy, module, 0, |f, envoy| f.on_response_body(envoy, end_of_stream))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: FilterPtr,
    module: *const c_void,
) -> u32 {
    on_filter(envoy, module, 0, |f, envoy| f.on_response_trailers(envoy))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(envoy: FilterPtr, module: *const c_void) {
    on_filter(envoy, module, (), |f, envoy| f.on_stream_complete(envoy))
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    // SAFETY: made by `filter_new`; this is its last use.
    guard((), || unsafe { drop_raw::<Filter>(module) })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: FilterPtr,
    module: *const c_void,
    callout_id: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    // SAFETY: the hook's own arguments, read during the hook. A failed callout (reset,
    // too large) comes without headers: the runtime counts it as unreachable.
    let answer = guard(Default::default(), || unsafe { callout_answer(headers, headers_size, body, body_size) });
    on_filter(envoy, module, (), |f, envoy| f.on_callout_done(envoy, callout_id, answer))
}

/// An event committed to a filter's scheduler (`timer.rs`): its Envoy deadline.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(envoy: FilterPtr, module: *const c_void, _: u64) {
    on_filter(envoy, module, (), |f, envoy| f.on_deadline(envoy))
}

/// An event committed to the configuration's scheduler (`ahead.rs`): the main thread's tick.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    envoy: ConfigPtr,
    module: *const c_void,
    _: u64,
) {
    // SAFETY: a config made by `config_new`, alive while Envoy calls its hooks.
    guard((), || {
        if let (Some(config), Some(envoy)) = (unsafe { object::<ModuleConfig>(module) }, EnvoyConfig::of(envoy)) {
            config.on_main_tick(envoy);
        }
    })
}

/// The answer to a callout of the configuration itself (`ahead.rs`).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    envoy: ConfigPtr,
    module: *const c_void,
    callout_id: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    // SAFETY: the hook's own arguments, read during the hook; the config as above.
    let answer = guard(Default::default(), || unsafe { callout_answer(headers, headers_size, body, body_size) });
    guard((), || {
        if let (Some(config), Some(envoy)) = (unsafe { object::<ModuleConfig>(module) }, EnvoyConfig::of(envoy)) {
            config.on_main_callout_done(envoy, callout_id, answer);
        }
    })
}

// Hooks Envoy requires but this filter has no use for.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: *const EnvoyHeader,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: *const EnvoyBuffer,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: *const EnvoyHeader,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_: FilterPtr, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: FilterPtr,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: FilterPtr,
    _: *const c_void,
) {
}
