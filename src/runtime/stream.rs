//! One request's life in the filter. All work happens on the response path; a response
//! whose status no rule covers costs one header read.
//!
//! How the replacement reaches the client, and why (measured against Envoy 1.40):
//! - Pausing in `on_http_response_headers` stops *all* iteration in Envoy: the upstream
//!   body is buffered by Envoy (with flow control) and no body callback reaches the
//!   filter until it resumes. So headers are paused only while an error object is being
//!   fetched.
//! - Once the replacement is known, the original headers are rewritten in place and sent;
//!   the original body is dropped chunk by chunk and the object goes out with the *last*
//!   chunk. Envoy reads the upstream response to its end and the client does not have its
//!   page before that, so it cannot close early; the upstream connection goes back to the
//!   pool. (A local reply at this point resets the upstream request and closes that
//!   connection: what Envoy's native `custom_response` filter does on every error.)
//! - Concurrent misses for one object do not stampede the error service: the first request
//!   fetches (the leader), the others wait on its flight and are completed by the leader
//!   when the answer arrives (host calls switched to their context with
//!   `set_effective_context`; Envoy defers their resumption until the leader's callback
//!   returns). Should the leader's request die first (Envoy then cancels its call), the
//!   next miss for the object takes the fetch over, waiters included; waiters no miss
//!   rescues get the fallback on the root's next tick. A tick rather than `on_done`:
//!   exporting `proxy_on_done` would cost every request one more entry into the VM, for
//!   a rare event.
//! - Original chunks are dropped one by one, never held: a filter that asks Envoy to hold
//!   them (`StopIterationAndBuffer`) saves a host call per chunk (~0.1 µs), but should the
//!   upstream end its response with trailers instead of a last body chunk, Envoy would
//!   pass the held original body on with them. (The body callbacks' VM entries, the real cost, happen
//!   either way.)
//! - An original body over `MAX_DROP_BYTES` is not waited for: the object goes out with
//!   the chunk that crosses the limit.
//! - The upstream response has no body (HEAD, `content-length: 0`, Envoy's own replies
//!   without body): nothing can carry the object in place, so a local reply. The
//!   upstream exchange is complete, nothing is cut short.

use super::facts::Facts;
use super::host::{HeaderMap, Host};
use super::worker::Worker;
use super::Action;
use crate::cache::{self, Object};
use crate::config::{Config, Rule, RuleAt, RuleKind, Serve, ServiceId, Variant};
use crate::decide::{Decision, Observer, Step};
use crate::error_service::{self, CallFacts, FetchFailure};
use crate::fasthash::FastMap;
use crate::negotiate;
use crate::reply::{self, Outcome};
use crate::request::Metadata;
use crate::request::RequestView;
use log::{debug, warn};
use std::cell::RefCell;
use std::rc::Rc;

/// Original error body we drop while waiting for its end before we send the object anyway.
const MAX_DROP_BYTES: usize = 64 * 1024;

/// Where this request is, replacing loose flags.
enum Phase<H: Host> {
    /// Nothing decided yet (or nothing to do).
    Idle,
    /// Headers paused while this request fetches the error object.
    Fetching { call: Call, pending: Box<Pending<H>> },
    /// Headers paused while another request fetches the same object; that request puts
    /// this one's next phase in the slot.
    Waiting(Slot<H>),
    /// Replacement headers sent; the original body is dropped and the object goes out with
    /// its last chunk.
    Streaming { body: Rc<[u8]>, sent: bool, dropped: usize },
    /// Our reply is out, or the response is left alone on purpose. Also the marker that
    /// keeps the filter off its own local reply if Envoy runs it through the chain.
    Done,
}

type Slot<H> = Rc<RefCell<Option<Phase<H>>>>;

/// What a request needs to finish once its object (or the lack of one) is known.
struct Pending<H: Host> {
    rule: RuleAt,
    variant: Option<usize>,
    facts: Facts<H>,
    /// The upstream response ended with its headers (no body to carry the object).
    headers_only: bool,
}

/// The dispatched call to the error service.
struct Call {
    token: u32,
    service: ServiceId,
    cache_key: String,
    started_ms: u64,
}

/// A request waiting on another's fetch of the same object.
pub struct Waiter<H: Host> {
    id: u32,
    slot: Slot<H>,
    pending: Box<Pending<H>>,
}

/// A fetch in flight: the request that leads it and the requests waiting on it.
pub struct Flight<H: Host> {
    leader: u32,
    waiters: Vec<Waiter<H>>,
}

/// Fetches in flight on this worker, by cache key.
pub type Flights<H> = FastMap<String, Flight<H>>;

/// What a cache miss turned into.
enum Miss {
    /// This request leads a new fetch.
    Lead(Call),
    /// Another request is fetching the same object: wait on it under this key.
    Follow(String),
}

/// One request's filter state, driven by the adapter's callbacks.
pub struct Stream<H: Host> {
    id: u32,
    host: H,
    worker: Rc<Worker<H>>,
    phase: Phase<H>,
    /// The request headers as the proxy handed them over, kept unparsed: Envoy no longer
    /// lets a filter read request headers (or `request.*` properties) once the request
    /// phase has continued, so this one copy is all the response path can know of them.
    request: H::Map,
}

impl<H: Host> Stream<H> {
    pub fn new(id: u32, host: H, worker: Rc<Worker<H>>) -> Stream<H> {
        Stream { id, host, worker, phase: Phase::Idle, request: H::Map::default() }
    }

    fn config(&self) -> Rc<Config> {
        self.worker.config.clone()
    }

    /// Decides; returns the header action.
    fn intercept(&mut self, status: u16, response: H::Map, end_of_stream: bool) -> Action {
        let mut facts = Facts::new(self.host.clone(), status, std::mem::take(&mut self.request), response);
        if facts.excluded() {
            return Action::Continue;
        }
        let config = self.config();
        #[cfg(feature = "trap-test")]
        #[allow(clippy::panic)] // the test-only build proves that a trap is contained
        if config.test_trap_on_path.as_deref().is_some_and(|p| facts.path() == p) {
            panic!("trap-test: deliberate trap on {}", facts.path());
        }
        let (rule, serve) = match config.decide_observed(status, &mut facts, &mut Unknowns(&self.worker)) {
            Decision::None => return Action::Continue,
            Decision::Passthrough(rule) => {
                self.worker.metrics.passthrough.bump();
                debug!("custom-error-pages: [ctx {}] {status} passes through by {}", self.id, rule.id);
                record(&self.host, status, status, &rule.id, "passthrough");
                self.phase = Phase::Done;
                return Action::Continue;
            }
            Decision::Serve(rule, serve) => (rule, serve),
        };
        self.worker.metrics.intercepted.bump();
        let accept = facts.header("accept");
        let variant = negotiate::choose(serve, accept.as_deref());
        facts.served = reply::served_status(serve, status);
        let variant_index = serve.variants.iter().position(|v| std::ptr::eq(v, variant));
        let lookup = self.cached_or_fetch(serve, variant, &mut facts);
        let mut pending =
            Box::new(Pending { rule: rule.at, variant: variant_index, facts, headers_only: end_of_stream });
        match lookup {
            Ok(object) => {
                let (phase, action) = finish(&self.host, &self.worker, self.id, &mut pending, object);
                self.phase = phase;
                action
            }
            Err(Miss::Lead(call)) => {
                self.worker
                    .flights
                    .borrow_mut()
                    .entry(call.cache_key.clone())
                    .or_insert_with(|| Flight { leader: self.id, waiters: Vec::new() })
                    .leader = self.id;
                self.phase = Phase::Fetching { call, pending };
                Action::Pause
            }
            Err(Miss::Follow(key)) => {
                let slot: Slot<H> = Rc::new(RefCell::new(None));
                if let Some(flight) = self.worker.flights.borrow_mut().get_mut(&key) {
                    flight.waiters.push(Waiter { id: self.id, slot: slot.clone(), pending });
                }
                debug!("custom-error-pages: [ctx {}] waiting on the fetch in flight for {key}", self.id);
                self.phase = Phase::Waiting(slot);
                Action::Pause
            }
        }
    }

    /// The object from the cache (or none: an inline body, or no fetch possible), else a
    /// miss: this request fetches, or waits on the fetch already in flight.
    fn cached_or_fetch(
        &self,
        serve: &Serve,
        variant: &Variant,
        facts: &mut Facts<H>,
    ) -> Result<Option<(Rc<Object>, Outcome)>, Miss> {
        let config = &self.worker.config;
        let Some(path_template) = &variant.path else { return Ok(None) };
        // Validation guarantees a service for every path; without one, serve the fallback.
        let Some((service, svc)) = serve.service.and_then(|i| config.service(Some(i)).map(|s| (i, s))) else {
            return Ok(None);
        };
        let path = error_service::object_path(path_template, facts.status);
        let key = cache::key(service, &path, &variant.content_type);
        if let Some(object) = self.worker.cache.borrow_mut().get(&key, self.worker.clock.get()) {
            self.worker.metrics.cache_hit.bump();
            return Ok(Some((object, Outcome::Cache)));
        }
        let leader = self.worker.flights.borrow().get(&key).map(|f| f.leader);
        if let Some(leader) = leader {
            // A leader that died since the last tick cannot answer: this request takes over
            // its flight (and its waiters) instead of waiting for nothing.
            let alive = self.host.set_effective_context(leader);
            self.host.set_effective_context(self.id);
            if alive {
                return Err(Miss::Follow(key));
            }
        }
        let format = crate::http::essence(&variant.content_type).to_string();
        let (uri, host_name, request_id) = (facts.path(), facts.authority(), facts.request_id());
        let call = CallFacts {
            original_status: facts.status,
            format: &format,
            original_uri: &uri,
            original_host: &host_name,
            request_id: &request_id,
        };
        let headers = error_service::call_headers(svc, &path, &call);
        match self.host.dispatch(&svc.cluster, &headers, svc.timeout_ms) {
            Some(token) => {
                debug!("custom-error-pages: [ctx {}] {}: fetching {path} from {}", self.id, facts.status, svc.cluster);
                Err(Miss::Lead(Call { token, service, cache_key: key, started_ms: self.host.now_ms() }))
            }
            None => {
                warn!(
                    "custom-error-pages: [ctx {}] cannot call error service cluster \"{}\" (is it defined?)",
                    self.id, svc.cluster
                );
                self.worker.metrics.fetch_failed(FetchFailure::Dispatch).bump();
                Ok(None)
            }
        }
    }

    fn finish_fetch(&mut self, call: Call, mut pending: Box<Pending<H>>, body_size: usize) {
        let config = self.config();
        let Some(svc) = config.service(Some(call.service)) else {
            self.phase = Phase::Done;
            resume(&self.host, self.id);
            release_waiters(&self.host, &self.worker, &call.cache_key, None, self.id);
            return;
        };
        let default_type = rule_serve(&config, pending.rule)
            .map(|(_, serve)| variant_of(serve, pending.variant).content_type.clone())
            .unwrap_or_default();
        let now = self.host.now_ms();
        let headers = self.host.call_response_headers();
        let object =
            match error_service::evaluate(svc, &headers, body_size, now.saturating_sub(call.started_ms), &default_type)
            {
                Ok(meta) => match self.host.call_response_body(body_size) {
                    Some(body) => {
                        self.worker.metrics.fetched.bump();
                        let ttl = cache::ttl_seconds(meta.cache_control.as_deref(), svc.cache_ttl_s);
                        let object = Rc::new(Object {
                            body: body.into(),
                            content_type: meta.content_type,
                            cache_control: meta.cache_control,
                        });
                        self.worker.cache.borrow_mut().put(call.cache_key.clone(), object.clone(), ttl, now);
                        Some((object, Outcome::Fetched))
                    }
                    None => {
                        self.worker.metrics.fetch_failed(FetchFailure::Unreachable).bump();
                        None
                    }
                },
                Err(f) => {
                    debug!(
                        "custom-error-pages: [ctx {}] error service {}: fetch failed: {}",
                        self.id,
                        svc.cluster,
                        f.as_str()
                    );
                    self.worker.metrics.fetch_failed(f).bump();
                    None
                }
            };
        let (phase, action) = finish(&self.host, &self.worker, self.id, &mut pending, object.clone());
        self.phase = phase;
        if action == Action::Continue {
            resume(&self.host, self.id);
        }
        release_waiters(&self.host, &self.worker, &call.cache_key, object, self.id);
    }

    /// A waiter's phase, once its leader has decided it.
    fn adopt(&mut self) {
        if let Phase::Waiting(slot) = &self.phase {
            let next = slot.borrow_mut().take();
            if let Some(next) = next {
                self.phase = next;
            }
        }
    }
}

/// Completes every request that waited on the fetch under `key`, with the object (or the
/// fallback when there is none), each in its own context; then makes `current` the
/// effective context again.
fn release_waiters<H: Host>(
    host: &H,
    worker: &Worker<H>,
    key: &str,
    object: Option<(Rc<Object>, Outcome)>,
    current: u32,
) {
    let waiters = worker.flights.borrow_mut().remove(key).map(|f| f.waiters).unwrap_or_default();
    if waiters.is_empty() {
        return;
    }
    // A waiter shares the leader's object; it was not fetched for it.
    let shared = object.map(|(o, _)| (o, Outcome::Cache));
    for mut w in waiters {
        if !host.set_effective_context(w.id) {
            continue; // that request is gone
        }
        if shared.is_some() {
            worker.metrics.cache_hit.bump();
        }
        let (phase, action) = finish(host, worker, w.id, &mut w.pending, shared.clone());
        *w.slot.borrow_mut() = Some(phase);
        if action == Action::Continue {
            resume(host, w.id);
        }
    }
    host.set_effective_context(current);
}

/// On the root's tick: flights whose leader's request is gone (Envoy cancelled its call,
/// so no answer will come) release their waiters with the fallback.
pub(super) fn release_orphaned_flights<H: Host>(host: &H, worker: &Worker<H>, root: u32) {
    if worker.flights.borrow().is_empty() {
        return;
    }
    let orphaned: Vec<String> = worker
        .flights
        .borrow()
        .iter()
        .filter(|(_, f)| !host.set_effective_context(f.leader))
        .map(|(k, _)| k.clone())
        .collect();
    host.set_effective_context(root);
    for key in orphaned {
        warn!("custom-error-pages: [ctx {root}] the request fetching {key} is gone: its waiters get the fallback");
        release_waiters(host, worker, &key, None, root);
    }
}

fn rule_serve(config: &Config, at: RuleAt) -> Option<(&Rule, &Serve)> {
    config.rule(at).and_then(|rule| match &rule.kind {
        RuleKind::Serve(serve) => Some((rule, &**serve)),
        RuleKind::Passthrough => None,
    })
}

fn variant_of(serve: &Serve, index: Option<usize>) -> &Variant {
    index.and_then(|i| serve.variants.get(i)).unwrap_or(&serve.default)
}

/// Lets a paused response go on. A refusal means the stream is gone (the client left):
/// nothing is waiting for it any more.
fn resume(host: &impl Host, id: u32) {
    if !host.resume_response() {
        debug!("custom-error-pages: [ctx {id}] could not resume the response: the stream is gone");
    }
}

/// Builds the replacement for a request of the current (effective) context and sends it:
/// counts, records the access-log fields, rewrites headers or answers locally. Returns the
/// request's next phase and what to do with its paused headers.
fn finish<H: Host>(
    host: &H,
    worker: &Worker<H>,
    id: u32,
    pending: &mut Pending<H>,
    object: Option<(Rc<Object>, Outcome)>,
) -> (Phase<H>, Action) {
    let config = worker.config.clone();
    let Some((rule, serve)) = rule_serve(&config, pending.rule) else {
        return (Phase::Done, Action::Continue);
    };
    let variant = variant_of(serve, pending.variant);
    let needed = reply::needs_vars(serve, variant, object.as_ref().map(|(o, _)| &**o));
    let reply = reply::build(serve, variant, object, &pending.facts.vars_for(needed));
    match reply.outcome {
        Outcome::Cache | Outcome::Fetched => {} // counted where they happen
        Outcome::Inline => worker.metrics.inline.bump(),
        Outcome::Fallback => worker.metrics.fallback.bump(),
    }
    let mut headers = reply::headers(&reply, serve, pending.facts.response_headers());
    if pending.headers_only {
        // Envoy sets `:status` and content-length, and drops the body for HEAD itself.
        if !host.send_response(reply.status, &headers, &reply.body) {
            warn!("custom-error-pages: [ctx {id}] local reply refused by the proxy; the original response stands");
            return (Phase::Done, Action::Continue);
        }
        record(host, pending.facts.status, reply.status, &rule.id, reply.outcome.as_str());
        return (Phase::Done, Action::Pause);
    }
    // In place (see the module comment): the body goes out with the last original chunk.
    // When that is sure to be the chunk that ends the stream (the original announced a
    // length under the drop limit), the client gets our length instead of a chunked body.
    // Otherwise no length: the client must not see its page complete before Envoy has read
    // the upstream response to its end, or it may close and take the upstream connection
    // with it (the last chunk's terminator is what it waits for).
    if pending.facts.original_length().is_some_and(|n| n <= MAX_DROP_BYTES) {
        let mut length = String::with_capacity(8);
        crate::push_decimal(&mut length, reply.body.len() as u64);
        headers.push(("content-length".into(), length.into()));
    }
    if !host.set_response_headers(&headers) {
        // Streaming the page under the original headers would mislabel it: leave the
        // response as it came rather than send a hybrid.
        warn!("custom-error-pages: [ctx {id}] the proxy refused the replacement headers; the original response stands");
        return (Phase::Done, Action::Continue);
    }
    record(host, pending.facts.status, reply.status, &rule.id, reply.outcome.as_str());
    drop(headers); // it borrows from `reply`, whose body moves on
    (Phase::Streaming { body: reply.body, sent: false, dropped: 0 }, Action::Continue)
}

/// Access-log fields, as one filter state value `wasm.custom_error`
/// (`original=404 served=200 outcome=cache rule=<json path>`). One `set_property`, not
/// four: each costs Envoy a filter-state object, about 2.5 µs of CPU per call measured in
/// `make bench` (bench/FINDINGS.md).
fn record(host: &impl Host, original: u16, served: u16, rule: &str, outcome: &str) {
    let mut value = String::with_capacity(48 + rule.len());
    value.push_str("original=");
    crate::push_decimal(&mut value, original.into());
    value.push_str(" served=");
    crate::push_decimal(&mut value, served.into());
    value.push_str(" outcome=");
    value.push_str(outcome);
    value.push_str(" rule=");
    value.push_str(rule);
    if !host.set_filter_state("custom_error", &value) {
        debug!("custom-error-pages: access-log fields not recorded: {value}");
    }
}

/// The adapter's callbacks, in the order the proxy calls them.
impl<H: Host> Stream<H> {
    pub fn on_request_headers(&mut self) {
        // A policy without rules never needs the request: keep the success path bare.
        if !self.worker.config.codes.is_empty() {
            self.request = self.host.request_headers();
        }
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Action {
        // A policy without rules covers no status: not even `:status` is read.
        if !matches!(self.phase, Phase::Idle) || self.worker.config.codes.is_empty() {
            return Action::Continue;
        }
        let response = self.host.response_headers();
        let Some(status) = status_of(&response) else {
            return Action::Continue;
        };
        if !self.worker.config.interested_in(status) {
            return Action::Continue;
        }
        self.intercept(status, response, end_of_stream)
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.adopt();
        if let Phase::Streaming { body, sent, dropped } = &mut self.phase {
            // The original body never reaches the client: each chunk is dropped as it
            // arrives (nothing accumulates), and the last one carries the object.
            *dropped += body_size;
            let now = !*sent && (end_of_stream || *dropped > MAX_DROP_BYTES);
            if !self.host.replace_response_body(body_size, if now { body } else { &[] }) {
                warn!("custom-error-pages: [ctx {}] the proxy refused to replace a response body chunk", self.id);
            }
            *sent |= now;
        }
        Action::Continue
    }

    /// For a build without a timer (the dynamic module): the worker's tick, from this
    /// stream's hook, when one is due.
    pub fn tick_if_due(&self) {
        self.worker.tick_if_due(&self.host, self.id);
    }

    /// Adds the worker's counts not yet added to the proxy's counters.
    pub fn flush_counters(&self) {
        self.worker.flush_counters(&self.host);
    }

    /// The proxy destroyed this stream (and cancelled its call, if it led a fetch): the
    /// requests waiting on a fetch whose leading request is gone get their fallback now,
    /// rather than on a tick. No stream is made the effective one afterwards.
    pub fn on_destroyed(self) {
        self.worker.release_orphans(&self.host, 0);
    }

    /// The answer to a call this stream dispatched (another token: not ours, ignored).
    pub fn on_call_response(&mut self, token: u32, body_size: usize) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Fetching { call, pending } if call.token == token => self.finish_fetch(call, pending, body_size),
            other => self.phase = other,
        }
    }
}

/// What the filter wants to hear of a decision: a route or virtual host naming a policy
/// `policies` does not have (a typo in a route, or a policy not yet delivered). Counted,
/// and logged once per name and worker, never an error response.
struct Unknowns<'w, H: Host>(&'w Worker<H>);

impl<H: Host> Observer for Unknowns<'_, H> {
    fn step(&mut self, _status: u16, step: Step<'_, '_>) {
        if let Step::UnknownPolicy { of, name } = step {
            self.0.metrics.unknown_policy.bump();
            let first = !self.0.warned.borrow().contains(name);
            if first && self.0.warned.borrow_mut().insert(name.to_string()) {
                let whose = if of == Metadata::Route { "a route" } else { "a virtual host" };
                warn!("custom-error-pages: {whose} names policy \"{name}\", which the configuration's policies do not have: that level is skipped");
            }
        }
    }
}

/// The `:status` of a response header map.
fn status_of(map: &impl HeaderMap) -> Option<u16> {
    map.first(":status").and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse().ok())
}
