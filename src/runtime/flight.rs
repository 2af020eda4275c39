//! Fetches of error objects in flight, and the requests held while one is fetched.
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
//!
//! Deadlines: Envoy answers a request itself when its route timeout fires, and once a
//! filter holds the response headers that reply goes straight to the client, past every
//! filter (Envoy's filter manager sends it as a "direct local reply"). So a held request
//! whose deadline is known is answered by the filter a little before it, as Envoy would
//! have answered: a 504 made by the proxy (code details `response_timeout`), decided by
//! the policy again for that code (from the cache, else the rule's inline body or the
//! built-in page: there is no time left for a fetch).

use super::host::Host;
use super::schedule::{Done, Purpose};
use super::stream::{finish, resume, Pending, Phase, Slot, Unknowns};
use super::worker::Worker;
use super::Action;
use crate::cache::{self, Object};
use crate::config::{ErrorService, Serve, ServiceId, Variant};
use crate::decide::Decision;
use crate::error_service::{self, CallFacts, FetchFailure};
use crate::fasthash::FastMap;
use crate::negotiate;
use crate::reply::{self, Outcome};
use crate::request::RequestView;
use log::{debug, warn};
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

/// A request held for a fetch.
pub struct Waiter<H: Host> {
    pub(super) id: u32,
    pub(super) slot: Slot<H>,
    pub(super) pending: Box<Pending<H>>,
}

/// A fetch in flight and the requests waiting on it.
pub struct Flight<H: Host> {
    /// The context whose call is in flight; `None` once it is gone or answered in Envoy's
    /// place (Envoy cancels its call with it).
    pub(super) owner: Option<u32>,
    pub(super) token: u32,
    pub(super) started_ms: u64,
    pub(super) ask: Ask,
    pub(super) waiters: Vec<Waiter<H>>,
    /// The worker's own fetch (prewarm or refresh), not a request's.
    pub(super) background: Option<Purpose>,
}

/// Fetches in flight on this worker, by cache key.
pub type Flights<H> = FastMap<String, Flight<H>>;

/// Dispatches `ask` from the effective context; the token, or `None` when the proxy refused.
pub(super) fn dispatch<H: Host>(host: &H, worker: &Worker<H>, ask: &Ask) -> Option<u32> {
    let token = host.dispatch(&ask.cluster, &ask.headers, ask.timeout_ms);
    if token.is_none() {
        warn!("custom-error-pages: cannot call error service cluster \"{}\" (is it defined?)", ask.cluster);
        worker.metrics.fetch_failed(FetchFailure::Dispatch).bump();
    }
    token
}

/// The answer to call `token` arrived (in context `current`): evaluates it, caches the
/// object, and completes every request waiting on it. An answer to a call no flight waits
/// for any more (one asked again since) is ignored.
pub(super) fn complete<H: Host>(host: &H, worker: &Worker<H>, token: u32, body_size: usize, current: u32) {
    let key =
        worker.flights.borrow().iter().find(|(_, f)| f.token == token && f.owner.is_some()).map(|(k, _)| k.clone());
    let Some(flight) = key.and_then(|k| worker.flights.borrow_mut().remove(&k).map(|f| (k, f))) else {
        return;
    };
    let (key, flight) = flight;
    let (object, done) = evaluate(host, worker, &key, &flight, body_size);
    let now = host.now_ms();
    // Requests that met a background fetch in flight waited on it; when it failed they get
    // a fetch of their own (the worker's context asks again at once) rather than share the
    // failure of a fetch made before they came.
    let retry = flight.background.is_some() && object.is_none() && !flight.waiters.is_empty();
    match flight.background {
        Some(purpose) => {
            let ok = object.is_some();
            match (purpose, ok) {
                (Purpose::Prewarm, true) => worker.metrics.prewarmed.bump(),
                (Purpose::Prewarm, false) => worker.metrics.prewarm_failed.bump(),
                (Purpose::Refresh, true) => worker.metrics.refreshed.bump(),
                (Purpose::Refresh, false) => worker.metrics.refresh_failed.bump(),
            }
            worker.schedule.borrow_mut().done(&key, done, now);
        }
        None if done == Done::Stored && worker.background => worker.schedule.borrow_mut().learn(&key, &flight.ask),
        None => {}
    }
    if retry {
        if let Some(token) = dispatch(host, worker, &flight.ask) {
            // Its owner stays the root, whose fetch it was and which asks again.
            let again = Flight { token, started_ms: now, background: None, ..flight };
            worker.flights.borrow_mut().insert(key, again);
            return;
        }
    }
    let fetch_ms = Some(now.saturating_sub(flight.started_ms));
    release(host, worker, &key, flight.waiters, object, fetch_ms, current);
}

/// The error service's answer as an object (cached, but a prewarm never evicts), or
/// `None` when it failed (counted); and what became of it.
fn evaluate<H: Host>(
    host: &H,
    worker: &Worker<H>,
    key: &str,
    flight: &Flight<H>,
    body_size: usize,
) -> (Option<Rc<Object>>, Done) {
    let config = worker.config.clone();
    let Some(svc) = config.service(Some(flight.ask.service)) else { return (None, Done::Failed) };
    let now = host.now_ms();
    let headers = host.call_response_headers();
    let elapsed = now.saturating_sub(flight.started_ms);
    match error_service::evaluate(svc, &headers, body_size, elapsed, &flight.ask.default_type) {
        Ok(meta) => match host.call_response_body(body_size) {
            Some(body) => {
                worker.metrics.fetched.bump();
                let (ttl, stale) =
                    cache::lifetimes(meta.cache_control.as_deref(), svc.cache_ttl_s, svc.stale_if_error_s);
                let object = Rc::new(Object {
                    body: body.into(),
                    content_type: meta.content_type,
                    cache_control: meta.cache_control,
                    ahead: flight.background.is_some(),
                });
                let mut cache = worker.cache.borrow_mut();
                let done = if ttl == 0 {
                    Done::Uncacheable
                } else if flight.background == Some(Purpose::Prewarm) && !cache.fits(key, object.body.len()) {
                    Done::NoRoom
                } else {
                    cache.put(key.to_string(), object.clone(), ttl, stale, now);
                    Done::Stored
                };
                (Some(object), done)
            }
            None => {
                worker.metrics.fetch_failed(FetchFailure::Unreachable).bump();
                (None, Done::Failed)
            }
        },
        Err(f) => {
            debug!("custom-error-pages: error service {}: fetch failed: {}", svc.cluster, f.as_str());
            worker.metrics.fetch_failed(f).bump();
            (None, if f == FetchFailure::Status { Done::Absent } else { Done::Failed })
        }
    }
}

/// Completes `waiters` with the object (or, when there is none, the cache's stale copy of
/// `key`, else the fallback), each in its own context; then makes `current` the effective
/// context again. For the request whose call brought it (`current`) the object was
/// fetched; the others share it (a cache hit).
fn release<H: Host>(
    host: &H,
    worker: &Worker<H>,
    key: &str,
    waiters: Vec<Waiter<H>>,
    object: Option<Rc<Object>>,
    fetch_ms: Option<u64>,
    current: u32,
) {
    let stale = match (&object, waiters.is_empty()) {
        (None, false) => worker.cache.borrow_mut().stale(key, worker.clock.get()),
        _ => None,
    };
    for mut w in waiters {
        if !host.set_effective_context(w.id) {
            continue; // that request is gone
        }
        let served = match (&object, &stale) {
            (Some(o), _) if w.id == current => Some((o.clone(), Outcome::Fetched)),
            (Some(o), _) => {
                worker.metrics.cache_hit.bump();
                Some((o.clone(), Outcome::Cache))
            }
            (None, Some(s)) => Some((s.clone(), Outcome::Stale)),
            (None, None) => None,
        };
        w.pending.fetch_ms = fetch_ms;
        let (phase, action) = finish(host, worker, w.id, &mut w.pending, served, true);
        *w.slot.borrow_mut() = Some(phase);
        if action == Action::Continue {
            resume(host, w.id);
        }
    }
    host.set_effective_context(current);
}

/// Answers every held request whose deadline has come, in Envoy's place (see the module
/// comment); then has the fetches whose context was among them asked again. A request for
/// which the policy has no rule for Envoy's reply stays held for its object: Envoy's own
/// reply will overtake it if Envoy's deadline is the one the filter was told (and if the
/// policy's `routeTimeoutsMs` says a timeout the route does not have, the object comes).
pub(super) fn expire_due<H: Host>(host: &H, worker: &Worker<H>, now: u64, current: u32) {
    let mut due = Vec::new();
    for (key, flight) in worker.flights.borrow_mut().iter_mut() {
        let (expired, kept): (Vec<_>, Vec<_>) =
            flight.waiters.drain(..).partition(|w| w.pending.deadline.is_some_and(|d| now >= d));
        flight.waiters = kept;
        due.extend(expired.into_iter().map(|w| (key.clone(), w)));
    }
    if due.is_empty() {
        return;
    }
    let mut answered = false;
    for (key, mut w) in due {
        if !host.set_effective_context(w.id) {
            continue;
        }
        match in_envoys_place(host, worker, w.id, &mut w.pending) {
            Some((phase, action)) => {
                *w.slot.borrow_mut() = Some(phase);
                if action == Action::Continue {
                    resume(host, w.id);
                }
                if let Some(flight) = worker.flights.borrow_mut().get_mut(&key) {
                    if flight.owner == Some(w.id) {
                        flight.owner = None; // its request ends, and Envoy cancels its call
                    }
                }
                answered = true;
            }
            None => {
                w.pending.deadline = None;
                if let Some(flight) = worker.flights.borrow_mut().get_mut(&key) {
                    flight.waiters.push(w);
                }
            }
        }
    }
    host.set_effective_context(current);
    if answered {
        reassign_orphans(host, worker, current);
    }
}

/// The reply Envoy would make for its route timeout, as the policy decides it: the rule for
/// a 504 made by the proxy, its object from the cache, else its inline body or the
/// built-in page, always as a local reply (the original body may never end). `None` where
/// no rule covers that 504 (or a `passthrough` rule does): Envoy's own reply is what the
/// policy asks for, and the request is left as it was.
fn in_envoys_place<H: Host>(
    host: &H,
    worker: &Worker<H>,
    id: u32,
    held: &mut Pending<H>,
) -> Option<(Phase<H>, Action)> {
    let (status, details) = ROUTE_TIMEOUT;
    let config = worker.config.clone();
    let before = held.facts.set_code_details(Some(details.to_string()));
    let (rule, serve) = match config.decide_observed(status, &mut held.facts, &mut Unknowns(worker)) {
        Decision::Serve(rule, serve) => (rule, serve),
        Decision::None | Decision::Passthrough(_) => {
            debug!("custom-error-pages: [ctx {id}] Envoy's deadline: no rule for its {status}, its reply stands");
            held.facts.set_code_details(before);
            return None;
        }
    };
    worker.metrics.deadline.bump();
    let accept = held.facts.header("accept");
    let variant = negotiate::choose(serve, accept.as_deref());
    held.facts.served = reply::served_status(serve, status);
    let language = negotiate::language_for(serve, &mut held.facts);
    let object = held_copy(worker, serve, variant, language, status);
    held.rule = rule.at;
    held.variant = serve.variants.iter().position(|v| std::ptr::eq(v, variant));
    held.language = language;
    held.headers_only = true;
    held.cause = Some(details);
    Some(finish(host, worker, id, held, object, true))
}

/// The object for `serve`'s `variant` in its `language` (`status` fills the path) if the
/// cache holds it: fresh, else a stale copy.
pub(super) fn held_copy<H: Host>(
    worker: &Worker<H>,
    serve: &Serve,
    variant: &Variant,
    language: usize,
    status: u16,
) -> Option<(Rc<Object>, Outcome)> {
    let path =
        error_service::object_path(variant.path.as_deref()?, status, super::stream::language_tag(serve, language));
    let key = cache::key(serve.service?, &path, &variant.content_type);
    let mut cache = worker.cache.borrow_mut();
    if let Some(object) = cache.get(&key, worker.clock.get()) {
        worker.metrics.cache_hit.bump();
        return Some((object, Outcome::Cache));
    }
    cache.stale(&key, worker.clock.get()).map(|o| (o, Outcome::Stale))
}

/// Flights whose call is gone with its context: asked again from the worker's own context
/// when calls made there outlive requests (`current` is then the root context), else from
/// the first live waiter; with nobody to ask, the waiters get the fallback.
pub(super) fn reassign_orphans<H: Host>(host: &H, worker: &Worker<H>, current: u32) {
    if worker.flights.borrow().is_empty() {
        return;
    }
    let orphaned: Vec<String> = worker
        .flights
        .borrow()
        .iter()
        .filter(|(_, f)| !f.owner.is_some_and(|o| host.set_effective_context(o)))
        .map(|(k, _)| k.clone())
        .collect();
    host.set_effective_context(current);
    for key in orphaned {
        let Some(mut flight) = worker.flights.borrow_mut().remove(&key) else { continue };
        let from = if host.detached_calls() {
            Some(current)
        } else {
            flight.waiters.iter().map(|w| w.id).find(|id| host.set_effective_context(*id))
        };
        let token = from.and_then(|ctx| {
            host.set_effective_context(ctx);
            dispatch(host, worker, &flight.ask)
        });
        host.set_effective_context(current);
        match (from, token) {
            (Some(ctx), Some(token)) => {
                debug!("custom-error-pages: [ctx {ctx}] the fetch of {key} is asked again (its request is gone)");
                flight.owner = Some(ctx);
                flight.token = token;
                flight.started_ms = host.now_ms();
                worker.flights.borrow_mut().insert(key, flight);
            }
            _ if flight.waiters.is_empty() => {}
            _ => {
                warn!("custom-error-pages: [ctx {current}] the request fetching {key} is gone: its waiters get the fallback");
                release(host, worker, &key, flight.waiters, None, None, current);
            }
        }
    }
}
