//! One request's life in the filter (its `Phase`), driven by the adapter's callbacks. All
//! work happens on the response path; a response whose status no rule covers costs one
//! header read. Headers are held only while the object is fetched; the replacement then
//! rewrites them in place and the page rides the original body's last chunk (the first
//! after a wait; before the trailers of a response that ends with them); a response
//! without a body gets a local reply. Why each of these, as measured against Envoy:
//! docs/architecture.md, "How the page reaches the client".

use super::complete;
use super::facts::Facts;
use super::finish::{finish, language_tag, record, Logged, Unknowns, MAX_DROP_BYTES};
use super::flight::{Ask, Flight, DEADLINE_MARGIN_MS};
use super::held::{Pending, Phase, Slot, Waiter};
use super::host::{CallAnswer, Context, HeaderMap, Host};
use super::metrics::RuleOutcome;
use super::worker::Worker;
use super::Action;
use crate::cache::{self, Object};
use crate::config::{Config, Serve, Variant};
use crate::decide::Decision;
use crate::error_service;
use crate::negotiate;
use crate::reply::{self, Outcome};
use log::{debug, warn};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// What a cache miss turned into.
enum Miss {
    /// This request dispatched the call, to be waited on under this key.
    Lead(String, u32, Ask),
    /// Another request is fetching the same object: wait on it under this key.
    Follow(String),
}

/// One request's filter state, driven by the adapter's callbacks; each hands over the
/// request's own context.
pub struct Stream<H: Host> {
    id: u32,
    worker: Rc<Worker<H>>,
    phase: Phase,
    /// The request headers as the proxy handed them over, kept unparsed: Envoy no longer
    /// lets a filter read request headers (or `request.*` properties) once the request
    /// phase has continued, so this one copy is all the response path can know of them.
    request: H::Map,
    /// When the filter answers in Envoy's place while this request is held (see `flight.rs`).
    deadline: Option<u64>,
}

impl<H: Host> Stream<H> {
    pub fn new(id: u32, worker: Rc<Worker<H>>) -> Stream<H> {
        Stream { id, worker, phase: Phase::Idle, request: H::Map::default(), deadline: None }
    }

    fn config(&self) -> Arc<Config> {
        self.worker.config.clone()
    }

    /// Decides; returns the header action.
    fn intercept(&mut self, ctx: &H::Context, status: u16, response: H::Map, end_of_stream: bool) -> Action {
        let mut facts = Facts::new(status, std::mem::take(&mut self.request), response);
        if facts.excluded() {
            return Action::Continue;
        }
        let config = self.config();
        #[cfg(feature = "trap-test")]
        #[allow(clippy::panic)] // the test-only build proves that a trap is contained
        if config.test_trap_on_path.as_deref().is_some_and(|p| facts.path() == p) {
            panic!("trap-test: deliberate trap on {}", facts.path());
        }
        let (rule, serve) = match config.decide_observed(status, &mut facts.seen(ctx), &mut Unknowns(&self.worker)) {
            Decision::None => return Action::Continue,
            Decision::Passthrough(rule) => {
                self.worker.metrics.passthrough.bump();
                self.worker.metrics.rule(rule, RuleOutcome::Passthrough);
                debug!("custom-error-pages: [ctx {}] {status} passes through by {}", self.id, rule.id);
                let fields = Logged { original: status, served: status, rule: &rule.id, outcome: "passthrough" };
                record(ctx, &fields, None, None, None);
                self.phase = Phase::Done;
                return Action::Continue;
            }
            Decision::Serve(rule, serve) => (rule, serve),
        };
        self.worker.metrics.intercepted.bump();
        self.deadline = self.envoys_deadline(ctx);
        let accept = facts.header("accept");
        let variant = negotiate::choose(serve, accept.as_deref());
        facts.served = reply::served_status(serve, status);
        let variant_index = serve.variants.iter().position(|v| std::ptr::eq(v, variant));
        let language = negotiate::language_for(serve, &mut facts.seen(ctx));
        let lookup = self.cached_or_fetch(ctx, serve, variant, language, &mut facts);
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
                let (phase, action) = finish(ctx, &self.worker, &mut pending, object, false);
                self.phase = phase;
                return action;
            }
            Err(Miss::Lead(key, token, ask)) => {
                let started_ms = self.worker.host.now_ms();
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
        let slot: Slot = Rc::new(RefCell::new(None));
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
    fn envoys_deadline(&self, ctx: &H::Context) -> Option<u64> {
        let timeouts = &self.worker.config.route_timeouts;
        let configured = if timeouts.is_empty() { None } else { timeouts.of(ctx.route_name().as_deref()) };
        let timeout = match (ctx.proxy_timeout_ms(), configured) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let start = ctx.request_start_ms()?;
        Some((start + timeout).saturating_sub(DEADLINE_MARGIN_MS))
    }

    /// The object from the cache (or none: an inline body, no fetch possible, or no time
    /// left before Envoy's deadline), else a miss: this request fetches, or waits on the
    /// fetch already in flight.
    fn cached_or_fetch(
        &self,
        ctx: &H::Context,
        serve: &Serve,
        variant: &Variant,
        language: usize,
        facts: &mut Facts<H::Map>,
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
        if let Some(copy) = self.worker.shelf_copy(&key, now) {
            return Ok(Some(copy));
        }
        // An expired copy the worker is fetching again on its own goes out at once: no
        // client waits on an error service that failed the last refresh.
        let stale = || self.worker.cache.borrow_mut().stale(&key, now).map(|o| (o, Outcome::Stale));
        if self.worker.schedule.borrow().keeps(&key) {
            if let Some(copy) = stale() {
                return Ok(Some(copy));
            }
        }
        if self.deadline.is_some_and(|d| self.worker.host.now_ms() >= d) {
            debug!("custom-error-pages: [ctx {}] no time left before Envoy's deadline: no fetch", self.id);
            return Ok(stale());
        }
        let owner = self.worker.flights.borrow().get(&key).map(|f| f.owner);
        if let Some(owner) = owner {
            // A flight whose request died since the last tick cannot be answered: this
            // request asks again and takes the flight (and its waiters) over.
            if owner.is_some_and(|o| self.worker.host.context(o).is_some()) {
                return Err(Miss::Follow(key));
            }
        }
        let (uri, host_name, request_id) = (facts.path(), facts.authority(), facts.request_id());
        let ask = Ask::new(svc, service, &path, variant, facts.status, Some((&uri, &host_name, &request_id)));
        match self.worker.dispatch(ctx, &ask) {
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

/// The adapter's callbacks, in the order the proxy calls them.
impl<H: Host> Stream<H> {
    pub fn on_request_headers(&mut self, ctx: &H::Context) {
        // A policy without rules never needs the request: keep the success path bare.
        if !self.worker.config.codes.is_empty() {
            self.request = ctx.request_headers();
        }
    }

    pub fn on_response_headers(&mut self, ctx: &H::Context, end_of_stream: bool) -> Action {
        // A policy without rules covers no status: not even `:status` is read.
        if !matches!(self.phase, Phase::Idle) || self.worker.config.codes.is_empty() {
            return Action::Continue;
        }
        let response = ctx.response_headers();
        let Some(status) = status_of(&response) else {
            return Action::Continue;
        };
        if !self.worker.config.interested_in(status) {
            return Action::Continue;
        }
        self.intercept(ctx, status, response, end_of_stream)
    }

    pub fn on_response_body(&mut self, ctx: &H::Context, body_size: usize, end_of_stream: bool) -> Action {
        self.adopt();
        if let Phase::Streaming { body, sent, dropped, first_chunk } = &mut self.phase {
            // The original body never reaches the client: each chunk is dropped as it
            // arrives (nothing accumulates), and the last one carries the object.
            *dropped += body_size;
            let now = !*sent && (end_of_stream || *first_chunk || *dropped > MAX_DROP_BYTES);
            let replaced = ctx.replace_response_body(body_size, if now { body } else { &[] });
            warn_if_refused(replaced, self.id, "to replace a response body chunk");
            *sent |= now;
            if !*sent && ctx.holds_emptied_chunks() {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    /// The response ends with trailers: no last body chunk came to carry the object, so it
    /// goes out before them. Envoy calls this only for responses that have trailers.
    pub fn on_response_trailers(&mut self, ctx: &H::Context) -> Action {
        self.adopt();
        if let Phase::Streaming { body, sent, .. } = &mut self.phase {
            if !*sent {
                warn_if_refused(ctx.body_before_trailers(body), self.id, "the page before the response's trailers");
            }
            *sent = true;
        }
        Action::Continue
    }

    /// For a build without a timer (the dynamic module): the worker's tick, from this
    /// stream's hook, when one is due.
    pub fn tick_if_due(&self, ctx: &H::Context) {
        complete::tick_if_due(&self.worker, ctx);
    }

    /// Adds the worker's counts not yet added to the proxy's counters.
    pub fn flush_counters(&self, ctx: &H::Context) {
        self.worker.flush_counters(ctx);
    }

    /// The proxy destroyed this stream (and cancelled its call, if it led a fetch): the
    /// requests waiting on a fetch whose leading request is gone get their fallback now,
    /// rather than on a tick.
    pub fn on_destroyed(self) {
        complete::release_orphans(&self.worker, None);
    }

    /// The proxy's clock (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.worker.host.now_ms()
    }

    /// The answer to a call this stream dispatched (to a call no flight waits for any
    /// more: ignored).
    pub fn on_call_response(&mut self, ctx: &H::Context, token: u32, answer: &mut dyn CallAnswer) {
        complete::call_answered(&self.worker, ctx, token, answer);
        self.adopt();
    }

    /// For the dynamic module's timer: this request's deadline has come (held requests
    /// whose deadline has passed are answered in Envoy's place).
    pub fn on_deadline(&mut self) {
        complete::expire_due(&self.worker, None);
        self.adopt();
    }

    /// When the adapter should call `on_deadline`: while this request is held, if Envoy's
    /// deadline for it is known.
    pub fn deadline(&self) -> Option<u64> {
        matches!(self.phase, Phase::Waiting(_)).then_some(self.deadline).flatten()
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
