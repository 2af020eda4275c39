//! State shared by every request of one worker (one wasm VM per Envoy worker thread):
//! the host, the policy, the object cache, counters, a clock, the fetches in flight and
//! what the worker fetches on its own. What happens to a flight (an answer, a deadline,
//! its request gone) is decided here and returned as data (`Released`, expired waiters):
//! the worker calls no request's code; `complete.rs` applies what it returns.

use super::flight::{Ask, Flight, Flights, Purpose, Released};
use super::held::Waiter;
use super::host::{CallAnswer, Context, Host};
use super::metrics::Metrics;
use super::schedule::{self, Done, Schedule};
use super::shelf::Shelf;
use crate::cache::{self, Cache, Object};
use crate::config::{Config, Serve, Variant};
use crate::error_service::{self, FetchFailure};
use crate::reply::Outcome;
use log::{debug, warn};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

/// How often the adapter should call `Worker::on_tick` (the proxy-wasm root's tick).
pub const TICK_MS: u32 = 100;

pub struct Worker<H: Host> {
    pub(crate) host: H,
    pub(crate) config: Arc<Config>,
    pub(crate) cache: RefCell<Cache>,
    pub(crate) metrics: Metrics,
    /// Milliseconds since the epoch, refreshed on every tick: cache hits read it instead of
    /// asking the host for the time (entries may outlive their TTL by up to one tick).
    pub(crate) clock: Cell<u64>,
    /// Error-object fetches in flight, with the requests waiting on them.
    pub(super) flights: RefCell<Flights<H::Map>>,
    /// Unknown policy names already logged (once per name and worker).
    pub(crate) warned: RefCell<HashSet<String>>,
    /// Whether this worker fetches on its own (prewarm, refresh): where its calls outlive
    /// requests (the proxy-wasm root context). The dynamic module's calls live only within
    /// a request, so it fetches on a request's path alone.
    pub(crate) background: bool,
    pub(super) schedule: RefCell<Schedule>,
    pub(super) sharing: Sharing,
}

/// Whether a worker shares what it fetches with the other threads of its process (the
/// dynamic module: see `shelf.rs`).
#[derive(Default)]
pub enum Sharing {
    /// Its own cache only (a wasm VM).
    #[default]
    Alone,
    /// Puts every object it stores on the shelf (the main thread's worker).
    Publishes(Arc<Shelf>),
    /// Takes a copy from the shelf on a miss (a worker thread's).
    Reads(Arc<Shelf>),
}

impl<H: Host> Worker<H> {
    /// `config` may be shared: the dynamic module's worker threads share one parsed policy.
    pub fn new(host: H, config: Arc<Config>) -> Worker<H> {
        let cache = Cache::default();
        let background = host.detached_calls();
        let schedule = if background { Schedule::plan(&config, cache.capacity()) } else { Schedule::default() };
        let metrics = Metrics::define(&host, &config);
        Worker {
            clock: Cell::new(host.now_ms()),
            host,
            config,
            cache: RefCell::new(cache),
            metrics,
            flights: RefCell::new(Default::default()),
            warned: RefCell::new(HashSet::new()),
            background,
            schedule: RefCell::new(schedule),
            sharing: Sharing::Alone,
        }
    }

    /// The same worker, sharing with other threads as `sharing` says.
    pub fn sharing(self, sharing: Sharing) -> Worker<H> {
        Worker { sharing, ..self }
    }

    /// Adds the counts not yet flushed to the proxy's counters, through `via` (before a new
    /// policy replaces this worker, or as a stream completes).
    pub fn flush_counters(&self, via: &H::Context) {
        self.metrics.flush(via);
    }

    /// Dispatches `ask` from `from`; the token, or `None` when the proxy refused (counted).
    pub(super) fn dispatch(&self, from: &H::Context, ask: &Ask) -> Option<u32> {
        let token = from.dispatch(&ask.cluster, &ask.headers, ask.timeout_ms);
        if token.is_none() {
            warn!("custom-error-pages: cannot call error service cluster \"{}\" (is it defined?)", ask.cluster);
            self.metrics.fetch_failed(FetchFailure::Dispatch).bump();
        }
        token
    }

    /// The fetching thread's worker takes what worker threads fetched on a request's path
    /// (`shelf.rs`): into its cache and on the shelf, kept fresh from now on (an object it
    /// already keeps is left as it is).
    pub(super) fn take_handed(&self) {
        let Sharing::Publishes(shelf) = &self.sharing else { return };
        let now = self.clock.get();
        for (key, ask, shelved) in shelf.take_handed() {
            if self.schedule.borrow().keeps(&key) {
                continue;
            }
            let object = shelved.object();
            let (expires_ms, stale_until_ms) = (shelved.expires_ms, shelved.stale_until_ms);
            self.cache.borrow_mut().put_until(key.clone(), object.clone(), expires_ms, stale_until_ms, now);
            shelf.put(&key, &object, expires_ms, stale_until_ms, now);
            self.schedule.borrow_mut().learn(&key, &ask);
        }
    }

    /// Dispatches, from the worker's own context `root`, the prewarm and refresh fetches
    /// due now, with at most `schedule::CONCURRENCY` of them in flight.
    pub(super) fn fetch_due(&self, root: &H::Context) {
        let now = self.clock.get();
        let in_flight = self.flights.borrow().values().filter(|f| f.background.is_some()).count();
        let room = schedule::CONCURRENCY.saturating_sub(in_flight);
        if room == 0 {
            return;
        }
        let due = {
            let flights = self.flights.borrow();
            self.schedule.borrow_mut().due(&self.cache.borrow(), now, |k| flights.contains_key(k), room)
        };
        for (key, ask, purpose) in due {
            match self.dispatch(root, &ask) {
                Some(token) => {
                    let background = Some(purpose);
                    let owner = Some(root.id());
                    let flight = Flight { owner, token, started_ms: now, ask, waiters: Vec::new(), background };
                    self.flights.borrow_mut().insert(key, flight);
                }
                None => self.schedule.borrow_mut().done(&key, Done::Failed, now),
            }
        }
    }

    /// The answer to call `token`, delivered to context `here` (the one that made it):
    /// evaluates it, caches the object, and returns the requests waiting on it with what
    /// they get. An answer to a call no flight waits for any more (one asked again since)
    /// is ignored.
    pub(super) fn complete(
        &self,
        here: &H::Context,
        token: u32,
        answer: &mut dyn CallAnswer,
    ) -> Option<Released<H::Map>> {
        let key = self
            .flights
            .borrow()
            .iter()
            .find(|(_, f)| f.token == token && f.owner.is_some())
            .map(|(k, _)| k.clone())?;
        let flight = self.flights.borrow_mut().remove(&key)?;
        let (object, done) = self.evaluate(&key, &flight, answer);
        let now = self.host.now_ms();
        // Requests that met a background fetch in flight waited on it; when it failed they
        // get a fetch of their own (the worker's context asks again at once) rather than
        // share the failure of a fetch made before they came.
        let retry = flight.background.is_some() && object.is_none() && !flight.waiters.is_empty();
        match flight.background {
            Some(purpose) => {
                let ok = object.is_some();
                match (purpose, ok) {
                    (Purpose::Prewarm, true) => self.metrics.prewarmed.bump(),
                    (Purpose::Prewarm, false) => self.metrics.prewarm_failed.bump(),
                    (Purpose::Refresh, true) => self.metrics.refreshed.bump(),
                    (Purpose::Refresh, false) => self.metrics.refresh_failed.bump(),
                }
                self.schedule.borrow_mut().done(&key, done, now);
            }
            None if done == Done::Stored && self.background => self.schedule.borrow_mut().learn(&key, &flight.ask),
            None => {}
        }
        if retry {
            if let Some(token) = self.dispatch(here, &flight.ask) {
                // Its owner stays the root, whose fetch it was and which asks again.
                let again = Flight { token, started_ms: now, background: None, ..flight };
                self.flights.borrow_mut().insert(key, again);
                return None;
            }
        }
        let fetch_ms = Some(now.saturating_sub(flight.started_ms));
        Some(Released { key, waiters: flight.waiters, object, fetch_ms, fetched_by: Some(here.id()) })
    }

    /// The error service's answer as an object (cached, but a prewarm never evicts), or
    /// `None` when it failed (counted); and what became of it.
    fn evaluate(&self, key: &str, flight: &Flight<H::Map>, answer: &mut dyn CallAnswer) -> (Option<Rc<Object>>, Done) {
        let Some(svc) = self.config.service(Some(flight.ask.service)) else { return (None, Done::Failed) };
        let now = self.host.now_ms();
        let elapsed = now.saturating_sub(flight.started_ms);
        let headers = answer.headers();
        match error_service::evaluate(svc, &headers, answer.body_size(), elapsed, &flight.ask.default_type) {
            Ok(meta) => match answer.body() {
                Some(body) => {
                    self.metrics.fetched.bump();
                    let (ttl, stale) =
                        cache::lifetimes(meta.cache_control.as_deref(), svc.cache_ttl_s, svc.stale_if_error_s);
                    let object = Rc::new(Object {
                        body: body.into(),
                        content_type: meta.content_type,
                        cache_control: meta.cache_control,
                        ahead: flight.background.is_some(),
                    });
                    let mut cache = self.cache.borrow_mut();
                    let done = if ttl == 0 {
                        Done::Uncacheable
                    } else if flight.background == Some(Purpose::Prewarm) && !cache.fits(key, object.body.len()) {
                        Done::NoRoom
                    } else {
                        cache.put(key.to_string(), object.clone(), ttl, stale, now);
                        let expires_ms = now.saturating_add(ttl.saturating_mul(1000));
                        let stale_until_ms = expires_ms.saturating_add(stale.saturating_mul(1000));
                        match &self.sharing {
                            Sharing::Publishes(shelf) => shelf.put(key, &object, expires_ms, stale_until_ms, now),
                            Sharing::Reads(shelf) => {
                                shelf.hand_over(key, &flight.ask, &object, expires_ms, stale_until_ms)
                            }
                            Sharing::Alone => {}
                        }
                        Done::Stored
                    };
                    (Some(object), done)
                }
                None => {
                    self.metrics.fetch_failed(FetchFailure::Unreachable).bump();
                    (None, Done::Failed)
                }
            },
            Err(f) => {
                debug!("custom-error-pages: error service {}: fetch failed: {}", svc.cluster, f.as_str());
                self.metrics.fetch_failed(f).bump();
                (None, if f == FetchFailure::Status { Done::Absent } else { Done::Failed })
            }
        }
    }

    /// The cache's stale copy of `key`, for requests whose fetch brought nothing.
    pub(super) fn stale(&self, key: &str) -> Option<Rc<Object>> {
        self.cache.borrow_mut().stale(key, self.clock.get())
    }

    /// Takes the held requests whose deadline has come out of their flights, with the
    /// key of the object each waited for.
    pub(super) fn take_expired(&self, now: u64) -> Vec<(String, Waiter<H::Map>)> {
        let mut due = Vec::new();
        for (key, flight) in self.flights.borrow_mut().iter_mut() {
            if !flight.waiters.iter().any(|w| w.pending.deadline.is_some_and(|d| now >= d)) {
                continue;
            }
            let (expired, kept): (Vec<_>, Vec<_>) =
                flight.waiters.drain(..).partition(|w| w.pending.deadline.is_some_and(|d| now >= d));
            flight.waiters = kept;
            due.extend(expired.into_iter().map(|w| (key.clone(), w)));
        }
        due
    }

    /// Puts a request back to wait on the flight for `key` (if it is still in flight).
    pub(super) fn wait_again(&self, key: &str, waiter: Waiter<H::Map>) {
        if let Some(flight) = self.flights.borrow_mut().get_mut(key) {
            flight.waiters.push(waiter);
        }
    }

    /// Request `id` was answered without its object: if it made the call for `key`, the
    /// call ends with it (Envoy cancels a call with its request).
    pub(super) fn disown(&self, key: &str, id: u32) {
        if let Some(flight) = self.flights.borrow_mut().get_mut(key) {
            if flight.owner == Some(id) {
                flight.owner = None;
            }
        }
    }

    /// Flights whose call is gone with its context: asked again from the worker's own
    /// context `root` when calls made there outlive requests, else from the first live
    /// waiter. Returns the flights nobody could ask again, with the waiters to release
    /// (with the stale copy, else the fallback).
    pub(super) fn reassign_orphans(&self, root: Option<&H::Context>) -> Vec<Released<H::Map>> {
        if self.flights.borrow().is_empty() {
            return Vec::new();
        }
        let orphaned: Vec<String> = self
            .flights
            .borrow()
            .iter()
            .filter(|(_, f)| f.owner.is_none_or(|o| self.host.context(o).is_none()))
            .map(|(k, _)| k.clone())
            .collect();
        let mut released = Vec::new();
        for key in orphaned {
            let Some(mut flight) = self.flights.borrow_mut().remove(&key) else { continue };
            let from = match root {
                Some(root) if self.host.detached_calls() => Some(root.clone()),
                _ => flight.waiters.iter().find_map(|w| self.host.context(w.id)),
            };
            let asked = from.and_then(|ctx| self.dispatch(&ctx, &flight.ask).map(|token| (ctx.id(), token)));
            match asked {
                Some((owner, token)) => {
                    debug!("custom-error-pages: [ctx {owner}] the fetch of {key} is asked again (its request is gone)");
                    flight.owner = Some(owner);
                    flight.token = token;
                    flight.started_ms = self.host.now_ms();
                    self.flights.borrow_mut().insert(key, flight);
                }
                None if flight.waiters.is_empty() => {}
                None => {
                    warn!("custom-error-pages: the request fetching {key} is gone: its waiters get the fallback");
                    released.push(Released {
                        key,
                        waiters: flight.waiters,
                        object: None,
                        fetch_ms: None,
                        fetched_by: None,
                    });
                }
            }
        }
        released
    }

    /// The object for `serve`'s `variant` in its `language` (`status` fills the path) if the
    /// cache holds it: fresh, else a stale copy.
    pub(super) fn held_copy(
        &self,
        serve: &Serve,
        variant: &Variant,
        language: usize,
        status: u16,
    ) -> Option<(Rc<Object>, Outcome)> {
        let tag = serve.languages.get(language).map_or("", String::as_str);
        let path = error_service::object_path(variant.path.as_deref()?, status, tag);
        let key = cache::key(serve.service?, &path, &variant.content_type);
        let now = self.clock.get();
        if let Some(object) = self.cache.borrow_mut().get(&key, now) {
            self.metrics.cache_hit.bump();
            return Some((object, Outcome::Cache));
        }
        self.shelf_copy(&key, now).or_else(|| self.cache.borrow_mut().stale(&key, now).map(|o| (o, Outcome::Stale)))
    }

    /// On a miss in a worker thread's cache: the copy another thread fetched ahead, taken
    /// into this cache while fresh; an expired one (its refresh failing there) goes out as
    /// stale at once, as the worker's own kept copies do.
    pub(super) fn shelf_copy(&self, key: &str, now: u64) -> Option<(Rc<Object>, Outcome)> {
        let Sharing::Reads(shelf) = &self.sharing else { return None };
        let shelved = shelf.get(key, now)?;
        let object = shelved.object();
        if shelved.expires_ms <= now {
            return Some((object, Outcome::Stale));
        }
        let mut cache = self.cache.borrow_mut();
        cache.put_until(key.to_string(), object.clone(), shelved.expires_ms, shelved.stale_until_ms, now);
        self.metrics.cache_hit.bump();
        Some((object, Outcome::Cache))
    }
}
