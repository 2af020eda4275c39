//! The dynamic-module adapter: the same engine and runtime as an Envoy dynamic module
//! (`libcustom_error_pages.so`, `make build-native`), for Envoy users who want no wasm VM
//! on the request path. `abi.rs` is the boundary (every `unsafe`, the exported hooks);
//! `host.rs` implements the runtime's `Host`; this file holds the objects Envoy keeps:
//! the configuration, the per-route configuration and one filter per stream.
//!
//! What differs from the proxy-wasm build, and why:
//! - One module serves every worker thread (a wasm VM is per worker): the policy is parsed
//!   and validated once when Envoy loads the configuration, and each worker thread builds
//!   its own `Worker` (cache, fetches in flight) around that shared policy on its first
//!   stream, as a VM would.
//! - No tick for a filter: the runtime's tick (clock, counters, fetches whose request is
//!   gone, deadlines) runs from the response hook when it is due, counters are also added
//!   when a stream completes, and the end of a request whose call was in flight has the fetch
//!   asked again by a waiting request at once (a filter's call does not outlive its request).
//! - Prewarm and refresh run on Envoy's main thread, once per configuration, with the
//!   configuration's own calls (`ahead.rs`); worker threads take copies from its shelf.
//! - Envoy's deadline for a held request (its route timeout, which a dynamic module can read
//!   from the request) fires through `timer.rs`: the ABI has no timer for a filter.
//! - A route's `typed_per_filter_config` can name the policy (`{"policy": "checkout"}`);
//!   it takes the place of the route metadata's policy. A virtual host's metadata is not
//!   readable by a dynamic module (use `typed_per_filter_config` on the virtual host).

mod abi;
mod ahead;
mod host;
mod timer;

use crate::config::Config;
use crate::runtime::{self, Sharing, Stream, Worker};
use abi::{EnvoyConfig, EnvoyFilter};
use host::{Defined, Hook, Native};
use log::{error, info};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Called once when Envoy loads the module.
fn init() {
    static LOGGER: EnvoyLog = EnvoyLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    info!("custom-error-pages: version {} (dynamic module) loaded", env!("CARGO_PKG_VERSION"));
}

/// `log` lines into Envoy's log (the `dynamic_modules` component).
struct EnvoyLog;

fn level(l: log::Level) -> abi::LogLevel {
    match l {
        log::Level::Error => abi::LogLevel::Error,
        log::Level::Warn => abi::LogLevel::Warn,
        log::Level::Info => abi::LogLevel::Info,
        log::Level::Debug => abi::LogLevel::Debug,
        log::Level::Trace => abi::LogLevel::Trace,
    }
}

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        abi::log_enabled(level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            abi::log(level(record.level()), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Generations of the configurations Envoy holds: a worker thread drops its `Worker` for
/// a configuration Envoy has destroyed (a policy swap) when it next builds one.
static LIVE_CONFIGS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

// Envoy's worker threads read one `ModuleConfig` at once: its parsed policy must be shareable.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Config>();
};

/// The filter configuration: the policy, validated on Envoy's main thread.
pub struct ModuleConfig {
    generation: u64,
    /// Parsed once, here; every worker thread's `Worker` shares it.
    config: Arc<Config>,
    /// Counter ids by name, as Envoy defined them here; read by every worker thread.
    counters: Arc<HashMap<String, usize>>,
    metadata_namespace: String,
    /// The main thread's fetching ahead (prewarm, refresh), and the shelf worker threads
    /// read; `None` when nothing is fetched ahead.
    ahead: Option<ahead::Ahead>,
}

impl ModuleConfig {
    /// `None` refuses the configuration (Envoy logs that the filter failed to initialise;
    /// the line before it names the field).
    fn new(envoy: EnvoyConfig, text: &[u8]) -> Option<ModuleConfig> {
        let cfg = runtime::load_policy(text)?;
        // Counters can only be defined now: Envoy freezes stat creation after this hook.
        let counters = runtime::counter_names(&cfg)
            .into_iter()
            .filter_map(|name| abi::define_counter(envoy, &name).map(|id| (name, id)))
            .collect::<HashMap<_, _>>();
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        let live = match LIVE_CONFIGS.lock() {
            Ok(mut live) => {
                live.push(generation);
                live.clone()
            }
            Err(_) => vec![generation],
        };
        let config = Arc::new(cfg);
        let counters = Arc::new(counters);
        let ahead = ahead::Ahead::start(envoy, generation, &config, &counters, &live);
        Some(ModuleConfig {
            generation,
            metadata_namespace: config.metadata_namespace.clone(),
            config,
            counters,
            ahead,
        })
    }

    /// This worker thread's `Worker` for the configuration, built on first use.
    fn worker(&self) -> Option<(Rc<Worker<Native>>, Native)> {
        type Workers = Vec<(u64, Rc<Worker<Native>>, Native)>;
        thread_local! {
            static WORKERS: RefCell<Workers> = const { RefCell::new(Vec::new()) };
        }
        WORKERS.with(|w| {
            let mut workers = w.borrow_mut();
            if let Some((_, worker, host)) = workers.iter().find(|(g, _, _)| *g == self.generation) {
                return Some((worker.clone(), host.clone()));
            }
            let live = LIVE_CONFIGS.lock().map(|l| l.clone()).unwrap_or_default();
            workers.retain(|(g, _, _)| live.contains(g));
            let host = Native(Rc::new(Defined {
                counters: self.counters.clone(),
                metadata_namespace: self.metadata_namespace.clone(),
            }));
            let sharing = self.ahead.as_ref().map_or(Sharing::Alone, |a| Sharing::Reads(a.shelf.clone()));
            let worker = Rc::new(Worker::new(host.clone(), self.config.clone()).sharing(sharing));
            workers.push((self.generation, worker.clone(), host.clone()));
            Some((worker, host))
        })
    }
}

impl ModuleConfig {
    /// The main thread's tick (`ahead.rs`).
    fn on_main_tick(&self, envoy: EnvoyConfig) {
        ahead::on_tick(self.generation, envoy);
    }

    /// The answer to a callout of the configuration itself (`ahead.rs`).
    fn on_main_callout_done(&self, envoy: EnvoyConfig, callout_id: u64, answer: abi::Answer) {
        ahead::on_callout_done(self.generation, envoy, callout_id, answer);
    }
}

impl Drop for ModuleConfig {
    fn drop(&mut self) {
        ahead::forget(self.generation);
        if let Ok(mut live) = LIVE_CONFIGS.lock() {
            live.retain(|g| *g != self.generation);
        }
    }
}

/// A route's (or virtual host's) `typed_per_filter_config`: `{"policy": "<name>"}`, a
/// policy of the filter configuration's `policies`.
pub struct RouteConfig {
    policy: String,
}

impl RouteConfig {
    /// `None` refuses the route configuration, with the reason in Envoy's log.
    fn new(text: &[u8]) -> Option<RouteConfig> {
        match route_policy(text) {
            Ok(policy) => Some(RouteConfig { policy }),
            Err(why) => {
                error!("custom-error-pages: invalid per-route configuration: {why}");
                None
            }
        }
    }
}

/// The policy name of a per-route configuration, or why it is refused.
pub fn route_policy(text: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON ({e}): expected {{\"policy\": \"<name>\"}}"))?;
    let object = value.as_object().ok_or("expected an object {\"policy\": \"<name>\"}")?;
    if let Some(other) = object.keys().find(|k| *k != "policy") {
        return Err(format!("{other}: unknown field (the only field is \"policy\")"));
    }
    match object.get("policy") {
        Some(serde_json::Value::String(name)) if !name.is_empty() => Ok(name.clone()),
        Some(_) => Err("policy: expected a non-empty string, the name of one of the configuration's policies".into()),
        None => Err("policy: missing".into()),
    }
}

/// One stream's filter.
pub struct Filter {
    id: u32,
    /// None when this thread could not build its worker (cannot happen after validation):
    /// the stream passes through.
    stream: Option<(Stream<Native>, Native)>,
}

impl Filter {
    fn new(config: &ModuleConfig, envoy: EnvoyFilter) -> Filter {
        let id = host::register(envoy);
        Filter { id, stream: config.worker().map(|(worker, host)| (Stream::new(id, worker), host)) }
    }

    /// Runs `f` with this stream's runtime state and its context for Envoy's filter
    /// `envoy`; what the runtime deferred runs once the outermost hook ends.
    fn hook<T>(&mut self, envoy: EnvoyFilter, default: T, f: impl FnOnce(&mut Stream<Native>, &host::Ctx) -> T) -> T {
        let _hook = Hook::enter();
        match &mut self.stream {
            Some((stream, host)) => {
                let ctx = host.entered(self.id, envoy);
                f(stream, &ctx)
            }
            None => default,
        }
    }

    fn on_request_headers(&mut self, envoy: EnvoyFilter) -> u32 {
        let id = self.id;
        self.hook(envoy, (), |stream, ctx| {
            host::started(id, stream.now_ms());
            stream.on_request_headers(ctx);
        });
        0 // Continue
    }

    fn on_response_headers(&mut self, envoy: EnvoyFilter, end_of_stream: bool) -> u32 {
        self.hook(envoy, 0, |stream, ctx| {
            stream.tick_if_due(ctx);
            match stream.on_response_headers(ctx, end_of_stream) {
                runtime::Action::Continue => 0,
                // Not StopIteration: Envoy would still pass body chunks on (a data callback
                // answering Continue resumes everything). StopAllIterationAndWatermark holds
                // the body in Envoy, with flow control, as a paused proxy-wasm filter does.
                runtime::Action::Pause => {
                    if let Some(at) = stream.deadline() {
                        match abi::scheduler(envoy) {
                            Some(scheduler) => timer::fire_at(at, scheduler),
                            None => log::warn!(
                                "custom-error-pages: no scheduler: Envoy's deadline is checked on requests only"
                            ),
                        }
                    }
                    4
                }
            }
        })
    }

    /// The deadline `on_response_headers` set for this request has come.
    fn on_deadline(&mut self, envoy: EnvoyFilter) {
        self.hook(envoy, (), |stream, _| stream.on_deadline());
    }

    fn on_response_body(&mut self, envoy: EnvoyFilter, end_of_stream: bool) -> u32 {
        self.hook(envoy, (), |stream, ctx| {
            stream.on_response_body(ctx, abi::received_response_body_size(envoy), end_of_stream);
        });
        0 // Continue
    }

    fn on_response_trailers(&mut self, envoy: EnvoyFilter) -> u32 {
        self.hook(envoy, (), |stream, ctx| {
            stream.on_response_trailers(ctx);
        });
        0 // Continue
    }

    fn on_stream_complete(&mut self, envoy: EnvoyFilter) {
        self.hook(envoy, (), |stream, ctx| stream.flush_counters(ctx));
    }

    fn on_callout_done(&mut self, envoy: EnvoyFilter, callout_id: u64, answer: abi::Answer) {
        let (headers, body) = answer;
        let mut answer = runtime::Answer { headers, body: Some(body) };
        self.hook(envoy, (), |stream, ctx| stream.on_call_response(ctx, callout_id as u32, &mut answer));
    }
}

impl Drop for Filter {
    /// Envoy destroys the filter (and cancels its callout): a fetch this one made is asked
    /// again by a request waiting on it now, rather than on a tick.
    fn drop(&mut self) {
        host::unregister(self.id);
        if let Some((stream, _)) = self.stream.take() {
            // The runtime acts only on the live streams it looks up by id.
            let _hook = Hook::enter();
            stream.on_destroyed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route_policy;

    #[test]
    fn a_route_names_a_policy() {
        assert_eq!(route_policy(br#"{"policy": "checkout"}"#).unwrap(), "checkout");
    }

    #[test]
    fn a_route_config_without_a_usable_name_is_refused_with_the_field() {
        assert!(route_policy(b"checkout").unwrap_err().contains("not JSON"));
        assert!(route_policy(b"[]").unwrap_err().contains("expected an object"));
        assert!(route_policy(br#"{}"#).unwrap_err().starts_with("policy: missing"));
        assert!(route_policy(br#"{"policy": ""}"#).unwrap_err().starts_with("policy: expected"));
        assert!(route_policy(br#"{"policy": 3}"#).unwrap_err().starts_with("policy: expected"));
        assert!(route_policy(br#"{"policy": "a", "x": 1}"#).unwrap_err().starts_with("x: unknown field"));
    }
}
