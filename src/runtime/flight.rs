//! Fetches of error objects in flight, and the requests held while one is fetched. Data
//! only: the worker changes it (`worker.rs`), the runtime applies what it returns
//! (`complete.rs`).
//!
//! Every request whose object is missing from the cache waits on a `Flight` for it, the one
//! that dispatched the call included: a flight is the worker's, not a request's. That is
//! what lets a request leave the wait on its own (Envoy's deadline for it comes first)
//! while the fetch goes on for the others and for the cache.
//!
//! Envoy cancels a call with the request context that made it. So when that request is
//! gone (its client left, or the filter answered it before Envoy's route timeout), the
//! fetch is asked again at once from a context that stays: the proxy-wasm root context
//! (on its tick), whose calls outlive every request, even with nobody waiting (the object
//! still fills the cache); else (the dynamic module, whose ABI offers calls only through a
//! request) the first live waiter. A flight with nobody to ask it again releases its
//! waiters with the fallback.

use super::held::Waiter;
use super::host::HeaderMap;
use crate::cache::Object;
use crate::config::{ErrorService, ServiceId, Variant};
use crate::error_service::{self, CallFacts};
use crate::fasthash::FastMap;
use std::rc::Rc;

/// How long before Envoy's own deadline the filter answers a held request. The proxy-wasm
/// root ticks every `TICK_MS` (100 ms): a deadline checked on a tick is met between 50 and
/// 150 ms before Envoy would answer; the dynamic module's timer fires at the mark.
pub const DEADLINE_MARGIN_MS: u64 = 150;

/// What Envoy's router answers when a route timeout fires (status, `response.code_details`).
pub const ROUTE_TIMEOUT: (u16, &str) = (504, "response_timeout");

/// What to ask the error service, kept so that another context can ask again.
#[derive(Clone)]
pub(super) struct Ask {
    pub cluster: String,
    pub headers: error_service::CallHeaders,
    pub timeout_ms: u64,
    pub service: ServiceId,
    /// The chosen variant's type: the object's when its own is missing or malformed.
    pub default_type: String,
}

impl Ask {
    /// The `GET` of `path` for `variant` from `svc`, for an error of `status`; `request` is
    /// the URI, host and id of the request it is for (none for the worker's own fetches).
    pub fn new(
        svc: &ErrorService,
        service: ServiceId,
        path: &str,
        variant: &Variant,
        status: u16,
        request: Option<(&str, &str, &str)>,
    ) -> Ask {
        let format = crate::http::essence(&variant.content_type).to_string();
        let (original_uri, original_host, request_id) = request.unwrap_or_default();
        let call = CallFacts { original_status: status, format: &format, original_uri, original_host, request_id };
        Ask {
            cluster: svc.cluster.clone(),
            headers: error_service::call_headers(svc, path, &call),
            timeout_ms: svc.timeout_ms,
            service,
            default_type: variant.content_type.clone(),
        }
    }

    /// The same ask without what belonged to the request that made it (its URI, host and
    /// id): for the worker's own fetches of the object later.
    pub fn background(&self) -> Ask {
        let request_facts = ["x-original-uri", "x-original-host", "x-request-id"];
        let headers = self.headers.iter().filter(|(n, _)| !request_facts.contains(&n.as_ref())).cloned().collect();
        Ask { headers, ..self.clone() }
    }
}

/// Why the worker fetches an object on its own (`schedule.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// An object the cache has never held.
    Prewarm,
    /// An object the cache holds (fresh or stale), fetched again before or after it expires.
    Refresh,
}

/// A fetch in flight and the requests waiting on it.
pub(super) struct Flight<M: HeaderMap> {
    /// The context whose call is in flight; `None` once it is gone or answered in Envoy's
    /// place (Envoy cancels its call with it).
    pub owner: Option<u32>,
    pub token: u32,
    pub started_ms: u64,
    pub ask: Ask,
    pub waiters: Vec<Waiter<M>>,
    /// The worker's own fetch (prewarm or refresh), not a request's.
    pub background: Option<Purpose>,
}

/// Fetches in flight on a worker, by cache key.
pub(super) type Flights<M> = FastMap<String, Flight<M>>;

/// Requests whose wait is over and what they get: what completing or giving up a flight
/// returns. The worker computes it; the runtime applies it through each request's context.
pub(super) struct Released<M: HeaderMap> {
    /// The object's cache key.
    pub key: String,
    pub waiters: Vec<Waiter<M>>,
    /// `None`: the fetch failed, or nobody could ask it again (the cache's stale copy,
    /// else the fallback).
    pub object: Option<Rc<Object>>,
    /// How long the fetch took, when one came back.
    pub fetch_ms: Option<u64>,
    /// The request whose own call brought the object: for it the object was fetched, for
    /// the others it is a cache hit.
    pub fetched_by: Option<u32>,
}
