//! State shared by every request of one worker (one wasm VM per Envoy worker thread):
//! the policy, the object cache, counters, a clock, and the fetches in flight.

use super::flight::{self, Flight, Flights};
use super::host::Host;
use super::metrics::Metrics;
use super::schedule::{self, Done, Schedule};
use crate::cache::Cache;
use crate::config::Config;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::sync::Arc;

/// How often the adapter should call `Worker::on_tick` (the proxy-wasm root's tick).
pub const TICK_MS: u32 = 100;

pub struct Worker<H: Host> {
    pub(crate) config: Arc<Config>,
    pub(crate) cache: RefCell<Cache>,
    pub(crate) metrics: Metrics,
    /// Milliseconds since the epoch, refreshed on every tick: cache hits read it instead of
    /// asking the host for the time (entries may outlive their TTL by up to one tick).
    pub(crate) clock: Cell<u64>,
    /// Error-object fetches in flight, with the requests waiting on them.
    pub(crate) flights: RefCell<Flights<H>>,
    /// Unknown policy names already logged (once per name and worker).
    pub(crate) warned: RefCell<HashSet<String>>,
    /// Whether this worker fetches on its own (prewarm, refresh): where its calls outlive
    /// requests (the proxy-wasm root context). The dynamic module's calls live only within
    /// a request, so it fetches on a request's path alone.
    pub(crate) background: bool,
    pub(super) schedule: RefCell<Schedule>,
}

impl<H: Host> Worker<H> {
    /// `config` may be shared: the dynamic module's worker threads share one parsed policy.
    pub fn new(host: &H, config: Arc<Config>) -> Worker<H> {
        let cache = Cache::default();
        let background = host.detached_calls();
        let schedule = if background { Schedule::plan(&config, cache.capacity()) } else { Schedule::default() };
        let metrics = Metrics::define(host, &config);
        Worker {
            config,
            cache: RefCell::new(cache),
            metrics,
            clock: Cell::new(host.now_ms()),
            flights: RefCell::new(Default::default()),
            warned: RefCell::new(HashSet::new()),
            background,
            schedule: RefCell::new(schedule),
        }
    }

    /// Adds the counts not yet flushed to the proxy's counters (before a new policy
    /// replaces this worker).
    pub fn flush_counters(&self, host: &H) {
        self.metrics.flush(host);
    }

    /// Every `TICK_MS`, from the root context `root`: refreshes the clock, adds the counts
    /// to the proxy's counters, answers held requests whose Envoy deadline has come, and has
    /// fetches whose request is gone asked again.
    pub fn on_tick(&self, host: &H, root: u32) {
        self.clock.set(host.now_ms());
        self.metrics.flush(host);
        self.expire_due(host, root);
        self.release_orphans(host, root);
        if self.background {
            self.fetch_due(host, root);
        }
    }

    /// Dispatches, from the worker's own context, the prewarm and refresh fetches due now,
    /// with at most `schedule::CONCURRENCY` of them in flight.
    fn fetch_due(&self, host: &H, root: u32) {
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
            match flight::dispatch(host, self, &ask) {
                Some(token) => {
                    let background = Some(purpose);
                    let flight =
                        Flight { owner: Some(root), token, started_ms: now, ask, waiters: Vec::new(), background };
                    self.flights.borrow_mut().insert(key, flight);
                }
                None => self.schedule.borrow_mut().done(&key, Done::Failed, now),
            }
        }
    }

    /// For a build without a timer (the dynamic module): the tick's work, from a request's
    /// hook (`current` its stream) when `TICK_MS` have passed since the last.
    pub fn tick_if_due(&self, host: &H, current: u32) {
        if host.now_ms().saturating_sub(self.clock.get()) >= u64::from(TICK_MS) {
            self.on_tick(host, current);
        }
    }

    /// Answers, in Envoy's place, the held requests whose deadline has come; then makes
    /// `current` the effective context again.
    pub fn expire_due(&self, host: &H, current: u32) {
        flight::expire_due(host, self, host.now_ms(), current);
    }

    /// The answer to a call the worker's own context made (the proxy-wasm root's), with
    /// `current` that context.
    pub fn on_call_response(&self, host: &H, token: u32, body_size: usize, current: u32) {
        flight::complete(host, self, token, body_size, current);
        // A background fetch done leaves room for the next at once, not a tick later.
        if self.background {
            self.fetch_due(host, current);
        }
    }

    /// Has the fetches whose request is gone asked again (or their waiters released with
    /// the fallback), then makes `current` the effective stream again.
    pub fn release_orphans(&self, host: &H, current: u32) {
        flight::reassign_orphans(host, self, current);
    }
}
