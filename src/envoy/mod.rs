//! Envoy glue: the proxy-wasm root context (policy load, counters, per-worker cache) and
//! one HTTP context per request (`stream`). Everything decided here comes from the
//! host-free engine in the crate root.

mod facts;
mod host;
mod metrics;
mod stream;

use crate::cache::Cache;
use crate::config::{self, Config};
use log::{error, info, warn};
use metrics::Metrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, worker: None }) });
}}

/// State shared by all requests of one VM (one Envoy worker thread).
pub(crate) struct Worker {
    pub config: Rc<Config>,
    pub cache: RefCell<Cache>,
    pub metrics: Metrics,
    /// Milliseconds since the epoch, refreshed on every tick: cache hits read it instead of
    /// asking the host for the time (entries may outlive their TTL by up to one tick).
    pub clock: Cell<u64>,
    /// Error-object fetches in flight, with the requests waiting on them.
    pub flights: RefCell<stream::Flights>,
}

/// The root context's tick: refreshes the clock and flushes counters.
const TICK_MS: u32 = 100;

struct Root {
    id: u32,
    worker: Option<Rc<Worker>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let text = host::plugin_configuration(size).unwrap_or_default();
        match config::load(&text) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    warn!("custom-error-pages: policy warning: {w}");
                }
                info!(
                    "custom-error-pages: policy loaded: {} policies, {} path matchers, {} error services",
                    cfg.policies.len(),
                    cfg.matchers.len(),
                    cfg.services.len()
                );
                if let Some(old) = &self.worker {
                    old.metrics.flush();
                }
                self.worker = Some(Rc::new(Worker {
                    config: Rc::new(cfg),
                    cache: RefCell::new(Cache::default()),
                    metrics: Metrics::define(),
                    clock: Cell::new(host::now_ms()),
                    flights: RefCell::new(Default::default()),
                }));
                if !host::set_tick_ms(TICK_MS) {
                    warn!("custom-error-pages: no tick: counters will not reach /stats");
                }
                true
            }
            Err(e) => {
                // Returning false makes Envoy refuse the filter configuration; this line is
                // what the operator sees in Envoy's log.
                error!("custom-error-pages: invalid policy: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(w) = &self.worker {
            w.clock.set(host::now_ms());
            w.metrics.flush();
            stream::release_orphaned_flights(w, self.id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a loaded policy (cannot happen after a successful configure) requests
        // pass through untouched rather than failing.
        let worker = self.worker.clone()?;
        Some(Box::new(stream::Stream::new(context_id, worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
