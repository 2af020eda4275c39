//! One request's life in the filter (its `Phase`), driven by the adapter's callbacks. All
//! work happens on the response path; a response whose status no rule covers costs one
//! header read. Headers are held only while the object is fetched; the replacement then
//! rewrites them in place and the page rides the original body's last chunk (the first
//! after a wait; before the trailers of a response that ends with them); a response
//! without a body gets a local reply. Why each of these, as measured against Envoy:
//! docs/architecture.md, "How the page reaches the client".

use super::facts::Facts;
use super::flight::{self, Ask, Flight, Waiter, DEADLINE_MARGIN_MS};
use super::host::{HeaderMap, Host};
use super::metrics::RuleOutcome;
use super::worker::Worker;
use super::Action;
use crate::cache::{self, Object};
use crate::config::{Config, Rule, RuleAt, RuleKind, Serve, Variant};
use crate::decide::{Decision, Observer, Step};
use crate::error_service;
use crate::negotiate;
use crate::reply::{self, Outcome};
use crate::request::Metadata;
use crate::request::RequestView;
use log::{debug, warn};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Original error body we drop while waiting for its end before we send the object anyway.
const MAX_DROP_BYTES: usize = 64 * 1024;

/// The least time to Envoy's deadline for which the page still rides the original body's
/// last chunk; closer to it, the page goes at once as a local reply.
const STREAM_BUDGET_MS: u64 = 1000;

/// Where this request is, replacing loose flags.
pub(super) enum Phase<H: Host> {
    /// Nothing decided yet (or nothing to do).
    Idle,
    /// Headers paused while the error object is fetched (by this request or another);
    /// whoever completes the wait puts this request's next phase in the slot.
    Waiting(Slot<H>),
    /// Replacement headers sent; the original body is dropped and the object goes out with
    /// its last chunk (`first_chunk`: with the first, see the module comment).
    Streaming { body: Rc<[u8]>, sent: bool, dropped: usize, first_chunk: bool },
    /// Our reply is out, or the response is left alone on purpose. Also the marker that
    /// keeps the filter off its own local reply if Envoy runs it through the chain.
    Done,
}

pub(super) type Slot<H> = Rc<RefCell<Option<Phase<H>>>>;

/// What a request needs to finish once its object (or the lack of one) is known.
pub(super) struct Pending<H: Host> {
    pub rule: RuleAt,
    pub variant: Option<usize>,
    /// The language chosen, in the rule's `languages` (0 without any).
    pub language: usize,
    pub facts: Facts<H>,
    /// Answer with a local reply: the upstream response ended with its headers (no body
    /// to carry the object), or the filter answers in Envoy's place.
    pub headers_only: bool,
    /// Envoy's code details of the reply the filter made in Envoy's place.
    pub cause: Option<&'static str>,
    /// When the filter answers in Envoy's place (ms since the epoch), if Envoy's deadline
    /// for this request is known.
    pub deadline: Option<u64>,
    /// How long the fetch this request waited on took, once it has come back.
    pub fetch_ms: Option<u64>,
}

/// What a cache miss turned into.
enum Miss {
    /// This request dispatched the call, to be waited on under this key.
    Lead(String, u32, Ask),
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
    /// When the filter answers in Envoy's place while this request is held (see `flight.rs`).
    deadline: Option<u64>,
}

impl<H: Host> Stream<H> {
    pub fn new(id: u32, host: H, worker: Rc<Worker<H>>) -> Stream<H> {
        Stream { id, host, worker, phase: Phase::Idle, request: H::Map::default(), deadline: None }
    }

    fn config(&self) -> Arc<Config> {
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
                self.worker.metrics.rule(rule, RuleOutcome::Passthrough);
                debug!("custom-error-pages: [ctx {}] {status} passes through by {}", self.id, rule.id);
                let fields = Logged { original: status, served: status, rule: &rule.id, outcome: "passthrough" };
                record(&self.host, &fields, None, None, None);
                self.phase = Phase::Done;
                return Action::Continue;
            }
            Decision::Serve(rule, serve) => (rule, serve),
        };
        self.worker.metrics.intercepted.bump();
        self.deadline = self.envoys_deadline();
        let accept = facts.header("accept");
        let variant = negotiate::choose(serve, accept.as_deref());
        facts.served = reply::served_status(serve, status);
        let variant_index = serve.variants.iter().position(|v| std::ptr::eq(v, variant));
        let language = negotiate::language_for(serve, &mut facts);
        let lookup = self.cached_or_fetch(serve, variant, language, &mut facts);
        let mut pending = Box::new(Pending {
            rule: rule.at,
            variant: variant_index,
            language,
            facts,
            headers_only: end_of_stream,
            cause: None,
            deadline: self.deadline,
            fetch_ms: None,
        });
        let key = match lookup {
            Ok(object) => {
                let (phase, action) = finish(&self.host, &self.worker, self.id, &mut pending, object, false);
                self.phase = phase;
                return action;
            }
            Err(Miss::Lead(key, token, ask)) => {
                let started_ms = self.host.now_ms();
                let mut flights = self.worker.flights.borrow_mut();
                match flights.get_mut(&key) {
                    // A flight whose request died is taken over, its waiters with it.
                    Some(f) => {
                        (f.owner, f.token, f.started_ms, f.ask) = (Some(self.id), token, started_ms, ask);
                    }
                    None => {
                        let (owner, waiters) = (Some(self.id), Vec::new());
                        let flight = Flight { owner, token, started_ms, ask, waiters, background: None };
                        flights.insert(key.clone(), flight);
                    }
                }
                key
            }
            Err(Miss::Follow(key)) => {
                debug!("custom-error-pages: [ctx {}] waiting on the fetch in flight for {key}", self.id);
                key
            }
        };
        let slot: Slot<H> = Rc::new(RefCell::new(None));
        if let Some(flight) = self.worker.flights.borrow_mut().get_mut(&key) {
            flight.waiters.push(Waiter { id: self.id, slot: slot.clone(), pending });
        }
        self.phase = Phase::Waiting(slot);
        Action::Pause
    }

    /// When the filter must answer in Envoy's place should this request be held: Envoy's
    /// route timeout (as the proxy tells it, and as the policy's `routeTimeoutsMs` says
    /// for the route; the shorter of both) from the request's start, less
    /// `DEADLINE_MARGIN_MS`.
    fn envoys_deadline(&self) -> Option<u64> {
        let timeouts = &self.worker.config.route_timeouts;
        let configured = if timeouts.is_empty() { None } else { timeouts.of(self.host.route_name().as_deref()) };
        let timeout = match (self.host.proxy_timeout_ms(), configured) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let start = self.host.request_start_ms()?;
        Some((start + timeout).saturating_sub(DEADLINE_MARGIN_MS))
    }

    /// The object from the cache (or none: an inline body, no fetch possible, or no time
    /// left before Envoy's deadline), else a miss: this request fetches, or waits on the
    /// fetch already in flight.
    fn cached_or_fetch(
        &self,
        serve: &Serve,
        variant: &Variant,
        language: usize,
        facts: &mut Facts<H>,
    ) -> Result<Option<(Rc<Object>, Outcome)>, Miss> {
        let config = self.worker.config.clone();
        let Some(path_template) = &variant.path else { return Ok(None) };
        // Validation guarantees a service for every path; without one, serve the fallback.
        let Some((service, svc)) = serve.service.and_then(|i| config.service(Some(i)).map(|s| (i, s))) else {
            return Ok(None);
        };
        let path = error_service::object_path(path_template, facts.status, language_tag(serve, language));
        let key = cache::key(service, &path, &variant.content_type);
        let now = self.worker.clock.get();
        if let Some(object) = self.worker.cache.borrow_mut().get(&key, now) {
            self.worker.metrics.cache_hit.bump();
            return Ok(Some((object, Outcome::Cache)));
        }
        // An expired copy the worker is fetching again on its own goes out at once: no
        // client waits on an error service that failed the last refresh.
        let stale = || self.worker.cache.borrow_mut().stale(&key, now).map(|o| (o, Outcome::Stale));
        if self.worker.schedule.borrow().keeps(&key) {
            if let Some(copy) = stale() {
                return Ok(Some(copy));
            }
        }
        if self.deadline.is_some_and(|d| self.host.now_ms() >= d) {
            debug!("custom-error-pages: [ctx {}] no time left before Envoy's deadline: no fetch", self.id);
            return Ok(stale());
        }
        let owner = self.worker.flights.borrow().get(&key).map(|f| f.owner);
        if let Some(owner) = owner {
            // A flight whose request died since the last tick cannot be answered: this
            // request asks again and takes the flight (and its waiters) over.
            let alive = owner.is_some_and(|o| self.host.set_effective_context(o));
            self.host.set_effective_context(self.id);
            if alive {
                return Err(Miss::Follow(key));
            }
        }
        let (uri, host_name, request_id) = (facts.path(), facts.authority(), facts.request_id());
        let ask = Ask::new(svc, service, &path, variant, facts.status, Some((&uri, &host_name, &request_id)));
        match flight::dispatch(&self.host, &self.worker, &ask) {
            Some(token) => {
                debug!("custom-error-pages: [ctx {}] {}: fetching {path} from {}", self.id, facts.status, svc.cluster);
                Err(Miss::Lead(key, token, ask))
            }
            None => Ok(stale()),
        }
    }

    /// This request's phase, once whoever completed its wait has decided it.
    fn adopt(&mut self) {
        if let Phase::Waiting(slot) = &self.phase {
            let next = slot.borrow_mut().take();
            if let Some(next) = next {
                self.phase = next;
            }
        }
    }
}

pub(super) fn rule_serve(config: &Config, at: RuleAt) -> Option<(&Rule, &Serve)> {
    config.rule(at).and_then(|rule| match &rule.kind {
        RuleKind::Serve(serve) => Some((rule, &**serve)),
        RuleKind::Passthrough => None,
    })
}

/// The tag of the language chosen (`""` for a rule without languages).
pub(super) fn language_tag(serve: &Serve, index: usize) -> &str {
    serve.languages.get(index).map_or("", String::as_str)
}

fn variant_of(serve: &Serve, index: Option<usize>) -> &Variant {
    index.and_then(|i| serve.variants.get(i)).unwrap_or(&serve.default)
}

/// Lets a paused response go on. A refusal means the stream is gone (the client left):
/// nothing is waiting for it any more.
pub(super) fn resume(host: &impl Host, id: u32) {
    if !host.resume_response() {
        debug!("custom-error-pages: [ctx {id}] could not resume the response: the stream is gone");
    }
}

/// Builds the replacement for a request of the current (effective) context and sends it:
/// counts, records the access-log fields, rewrites headers or answers locally. Returns the
/// request's next phase and what to do with its paused headers.
pub(super) fn finish<H: Host>(
    host: &H,
    worker: &Worker<H>,
    id: u32,
    pending: &mut Pending<H>,
    object: Option<(Rc<Object>, Outcome)>,
    resumed: bool,
) -> (Phase<H>, Action) {
    let config = worker.config.clone();
    let Some((rule, serve)) = rule_serve(&config, pending.rule) else {
        return (Phase::Done, Action::Continue);
    };
    let variant = variant_of(serve, pending.variant);
    let needed = reply::needs_vars(serve, variant, object.as_ref().map(|(o, _)| &**o));
    let ahead = object.as_ref().is_some_and(|(o, _)| o.ahead);
    let mut vars = pending.facts.vars_for(needed);
    vars.lang = language_tag(serve, pending.language);
    let reply = reply::build(serve, variant, object, &vars);
    match reply.outcome {
        Outcome::Cache | Outcome::Fetched => {} // counted where they happen
        Outcome::Inline => worker.metrics.inline.bump(),
        Outcome::Fallback => worker.metrics.fallback.bump(),
        Outcome::Stale => worker.metrics.stale.bump(),
    }
    let cache = cache_state(reply.outcome, ahead, pending.fetch_ms.is_some());
    let fields = Logged {
        original: pending.facts.status,
        served: reply.status,
        rule: &rule.id,
        outcome: reply.outcome.as_str(),
    };
    let mut headers = reply::headers(&reply, serve, pending.facts.response_headers());
    // Riding the original body's last chunk takes as long as the upstream takes to end it:
    // close to Envoy's deadline, its route timeout would cut the page off (the headers
    // already out), so the page goes at once as a local reply.
    let near_deadline = pending.deadline.is_some_and(|d| host.now_ms() + STREAM_BUDGET_MS > d);
    if pending.headers_only || near_deadline {
        // Envoy sets `:status` and content-length, and drops the body for HEAD itself.
        if !host.send_response(reply.status, &headers, &reply.body) {
            warn!("custom-error-pages: [ctx {id}] local reply refused by the proxy; the original response stands");
            return (Phase::Done, Action::Continue);
        }
        record(host, &fields, cache, pending.fetch_ms, pending.cause);
        worker.metrics.rule(rule, RuleOutcome::Served(reply.outcome));
        return (Phase::Done, Action::Pause);
    }
    // In place (see the module comment): the body goes out with the last original chunk.
    // When that is sure to be the chunk that ends the stream (the original announced a
    // length under the drop limit), the client gets our length instead of a chunked body.
    // Otherwise no length: the client must not see its page complete before Envoy has read
    // the upstream response to its end, or it may close and take the upstream connection
    // with it (the last chunk's terminator is what it waits for).
    // An empty reply says so (`content-length: 0`): nothing it carries can be cut short.
    if reply.body.is_empty() || pending.facts.original_length().is_some_and(|n| n <= MAX_DROP_BYTES) {
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
    record(host, &fields, cache, pending.fetch_ms, pending.cause);
    worker.metrics.rule(rule, RuleOutcome::Served(reply.outcome));
    drop(headers); // it borrows from `reply`, whose body moves on
    let first_chunk = resumed;
    (Phase::Streaming { body: reply.body, sent: false, dropped: 0, first_chunk }, Action::Continue)
}

/// The access log's first four fields.
struct Logged<'a> {
    original: u16,
    served: u16,
    /// The deciding rule's JSON path.
    rule: &'a str,
    outcome: &'a str,
}

/// Whether the cache held the object a reply needed, for the access log: `hit` (a copy a
/// client's error brought), `prewarmed` (one the filter fetched ahead: prewarm or refresh),
/// `stale` (an expired copy), `miss` (not held: the request waited on a fetch, or got the
/// fallback). None for a reply no object could be (inline).
fn cache_state(outcome: Outcome, ahead: bool, waited: bool) -> Option<&'static str> {
    match outcome {
        Outcome::Inline => None,
        Outcome::Stale => Some("stale"),
        Outcome::Cache if !waited => Some(if ahead { "prewarmed" } else { "hit" }),
        Outcome::Cache | Outcome::Fetched | Outcome::Fallback => Some("miss"),
    }
}

/// Access-log fields, as one filter state value `wasm.custom_error`
/// (`original=404 served=200 outcome=cache rule=<json path>`, then ` cache=<state>` when
/// the reply needed an object, ` fetch_ms=<n>` when it waited on a fetch, and ` cause=<Envoy's
/// code details>` when the filter answered in Envoy's place). One `set_property`, not
/// several: each costs Envoy a filter-state object, about 2.5 µs of CPU per call measured
/// in `make bench` (bench/FINDINGS.md).
fn record(host: &impl Host, f: &Logged<'_>, cache: Option<&str>, fetch_ms: Option<u64>, cause: Option<&str>) {
    let mut value = String::with_capacity(80 + f.rule.len());
    value.push_str("original=");
    crate::push_decimal(&mut value, f.original.into());
    value.push_str(" served=");
    crate::push_decimal(&mut value, f.served.into());
    value.push_str(" outcome=");
    value.push_str(f.outcome);
    value.push_str(" rule=");
    value.push_str(f.rule);
    if let Some(cache) = cache {
        value.push_str(" cache=");
        value.push_str(cache);
    }
    if let Some(ms) = fetch_ms {
        value.push_str(" fetch_ms=");
        crate::push_decimal(&mut value, ms);
    }
    if let Some(cause) = cause {
        value.push_str(" cause=");
        value.push_str(cause);
    }
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
        if let Phase::Streaming { body, sent, dropped, first_chunk } = &mut self.phase {
            // The original body never reaches the client: each chunk is dropped as it
            // arrives (nothing accumulates), and the last one carries the object.
            *dropped += body_size;
            let now = !*sent && (end_of_stream || *first_chunk || *dropped > MAX_DROP_BYTES);
            let replaced = self.host.replace_response_body(body_size, if now { body } else { &[] });
            warn_if_refused(replaced, self.id, "to replace a response body chunk");
            *sent |= now;
            if !*sent && self.host.holds_emptied_chunks() {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    /// The response ends with trailers: no last body chunk came to carry the object, so it
    /// goes out before them. Envoy calls this only for responses that have trailers.
    pub fn on_response_trailers(&mut self) -> Action {
        self.adopt();
        if let Phase::Streaming { body, sent, .. } = &mut self.phase {
            if !*sent {
                warn_if_refused(
                    self.host.body_before_trailers(body),
                    self.id,
                    "the page before the response's trailers",
                );
            }
            *sent = true;
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

    /// The proxy's clock (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.host.now_ms()
    }

    /// The answer to a call this stream dispatched (to a call no flight waits for any
    /// more: ignored).
    pub fn on_call_response(&mut self, token: u32, body_size: usize) {
        flight::complete(&self.host, &self.worker, token, body_size, self.id);
        self.adopt();
    }

    /// For the dynamic module's timer: this request's deadline has come (held requests
    /// whose deadline has passed are answered in Envoy's place).
    pub fn on_deadline(&mut self) {
        self.worker.expire_due(&self.host, self.id);
        self.adopt();
    }

    /// When the adapter should call `on_deadline`: while this request is held, if Envoy's
    /// deadline for it is known.
    pub fn deadline(&self) -> Option<u64> {
        matches!(self.phase, Phase::Waiting(_)).then_some(self.deadline).flatten()
    }
}

/// What the filter wants to hear of a decision: a route or virtual host naming a policy
/// `policies` does not have (a typo in a route, or a policy not yet delivered). Counted,
/// and logged once per name and worker, never an error response.
pub(super) struct Unknowns<'w, H: Host>(pub(super) &'w Worker<H>);

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

/// Logs a host's refusal; the caller has already decided what follows (the response is
/// never lost for it).
fn warn_if_refused(done: bool, id: u32, what: &str) {
    if !done {
        warn!("custom-error-pages: [ctx {id}] the proxy refused {what}");
    }
}

/// The `:status` of a response header map.
fn status_of(map: &impl HeaderMap) -> Option<u16> {
    map.first(":status").and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse().ok())
}
