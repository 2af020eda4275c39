//! Pages ready before the error, for the dynamic module. A filter's calls live within its
//! request, but a filter configuration has calls of its own on Envoy's main thread (Envoy
//! 1.39 and later), which outlive every request. So each configuration runs one runtime
//! `Worker` on the main thread, with the configuration as its only context: it prewarms
//! the policy's objects and refreshes them before they expire, exactly as a proxy-wasm
//! root context does, and puts every copy on the configuration's `Shelf`, from which each
//! worker thread takes its own on a miss. The main thread has no timer for a module: a
//! thread per configuration commits an event to the configuration's scheduler every
//! `TICK_MS`, and Envoy runs the tick on the main thread.

use super::abi::{self, ConfigScheduler, EnvoyConfig};
use super::host::Map;
use crate::config::Config;
use crate::runtime::{self, Answer, Context, Headers, Host, Metadata, Sharing, Shelf, Worker, TICK_MS};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

thread_local! {
    /// The main-thread workers, by configuration generation. Only Envoy's main thread
    /// touches it (configuration hooks run there).
    static MAIN: RefCell<Vec<(u64, Rc<Worker<MainHost>>)>> = const { RefCell::new(Vec::new()) };
}

/// A configuration's fetching ahead: what worker threads read, and the tick's stop.
pub struct Ahead {
    pub shelf: Arc<Shelf>,
    stop: Arc<AtomicBool>,
}

impl Ahead {
    /// Starts fetching ahead for the configuration `envoy` of generation `generation`
    /// (from its `config_new` hook, on the main thread). `None` when the configuration
    /// has no error service (nothing to fetch) or Envoy gives no scheduler.
    pub fn start(
        envoy: EnvoyConfig,
        generation: u64,
        config: &Arc<Config>,
        counters: &Arc<HashMap<String, usize>>,
        live: &[u64],
    ) -> Option<Ahead> {
        if config.services.is_empty() {
            return None;
        }
        let scheduler = abi::config_scheduler(envoy)?;
        let shelf = Arc::new(Shelf::new(crate::cache::MAX_ENTRIES));
        let host = MainHost { envoy, counters: counters.clone() };
        let worker = Worker::new(host, config.clone()).sharing(Sharing::Publishes(shelf.clone()));
        MAIN.with(|m| {
            let mut main = m.borrow_mut();
            // Configurations Envoy destroyed on another thread left theirs here.
            main.retain(|(g, _)| live.contains(g));
            main.push((generation, Rc::new(worker)));
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let ticks = std::thread::Builder::new().name("cep-ahead".into()).spawn(move || tick(scheduler, &stopped));
        if ticks.is_err() {
            log::warn!("custom-error-pages: no thread for the main-thread tick: pages are fetched on a request's path");
            forget(generation);
            return None;
        }
        Some(Ahead { shelf, stop })
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Commits a tick every `TICK_MS` until stopped, then deletes the scheduler.
fn tick(scheduler: ConfigScheduler, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(u64::from(TICK_MS)));
        scheduler.commit(1);
    }
    scheduler.delete();
}

/// The configuration of generation `generation` is gone: its main-thread worker goes too
/// (when Envoy destroys it on the main thread; else the next `start` drops it).
pub fn forget(generation: u64) {
    MAIN.with(|m| m.borrow_mut().retain(|(g, _)| *g != generation));
}

fn main_worker(generation: u64) -> Option<Rc<Worker<MainHost>>> {
    MAIN.with(|m| m.borrow().iter().find(|(g, _)| *g == generation).map(|(_, w)| w.clone()))
}

/// The main thread's tick for the configuration.
pub fn on_tick(generation: u64, envoy: EnvoyConfig) {
    if let Some(worker) = main_worker(generation) {
        let ctx = MainCtx { envoy };
        runtime::on_tick(&worker, &ctx);
    }
}

/// The answer to one of the configuration's callouts.
pub fn on_callout_done(generation: u64, envoy: EnvoyConfig, callout_id: u64, answer: abi::Answer) {
    if let Some(worker) = main_worker(generation) {
        let (headers, body) = answer;
        let mut answer = Answer { headers, body: Some(body) };
        // Envoy numbers callouts per configuration from 1: the low 32 bits identify one
        // among the few in flight.
        runtime::on_root_call_response(&worker, &MainCtx { envoy }, callout_id as u32, &mut answer);
    }
}

/// The runtime's `Host` on the main thread: one context, the configuration's.
#[derive(Clone)]
pub struct MainHost {
    envoy: EnvoyConfig,
    counters: Arc<HashMap<String, usize>>,
}

impl Host for MainHost {
    type Map = Map;
    type Context = MainCtx;

    fn context(&self, id: u32) -> Option<MainCtx> {
        (id == 0).then_some(MainCtx { envoy: self.envoy })
    }

    /// The configuration's calls outlive every request.
    fn detached_calls(&self) -> bool {
        true
    }

    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        self.counters.get(name).and_then(|id| u32::try_from(*id).ok())
    }
}

/// The configuration as a context: it has calls and counters, and no request (what needs
/// one is refused, as Envoy refuses it a root context).
#[derive(Clone)]
pub struct MainCtx {
    envoy: EnvoyConfig,
}

impl Context for MainCtx {
    type Map = Map;

    fn id(&self) -> u32 {
        0
    }

    fn request_headers(&self) -> Map {
        Map::default()
    }

    fn response_headers(&self) -> Map {
        Map::default()
    }

    fn set_response_headers(&self, _: &Headers<'_>) -> bool {
        false
    }

    fn replace_response_body(&self, _: usize, _: &[u8]) -> bool {
        false
    }

    fn holds_emptied_chunks(&self) -> bool {
        false
    }

    fn body_before_trailers(&self, _: &[u8]) -> bool {
        false
    }

    fn send_response(&self, _: u16, _: &Headers<'_>, _: &[u8]) -> bool {
        false
    }

    fn resume_response(&self) -> bool {
        false
    }

    fn dispatch(&self, cluster: &str, headers: &crate::error_service::CallHeaders, timeout_ms: u64) -> Option<u32> {
        let list: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_ref(), v.as_str())).collect();
        abi::config_http_callout(self.envoy, cluster, &list, timeout_ms).map(|id| id as u32)
    }

    fn add_to_counter(&self, id: u32, n: u64) -> bool {
        abi::config_increment_counter(self.envoy, id as usize, n)
    }

    fn response_code_details(&self) -> Option<String> {
        None
    }

    fn route_name(&self) -> Option<String> {
        None
    }

    fn metadata(&self, _: Metadata, _: &str, _: &str) -> Option<String> {
        None
    }

    fn set_filter_state(&self, _: &str, _: &str) -> bool {
        false
    }

    fn request_start_ms(&self) -> Option<u64> {
        None
    }

    fn proxy_timeout_ms(&self) -> Option<u64> {
        None
    }
}
