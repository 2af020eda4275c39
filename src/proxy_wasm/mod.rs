//! The proxy-wasm adapter: the root context (policy load, tick) and one HTTP context per
//! request, each a thin shell over `runtime::Stream` with `host::Wasm` as its `Host`; each
//! callback hands the runtime its own context (`host::Ctx`) and restores it at the end.
//! Everything decided here comes from the host-free engine and runtime in the crate root.

mod host;

use crate::runtime::{self, Stream, Worker};
use host::{CallResponse, Ctx, Wasm};
use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;
use std::sync::Arc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, worker: None }) });
}}

struct Root {
    id: u32,
    worker: Option<Rc<Worker<Wasm>>>,
}

impl Context for Root {
    /// A fetch the root asked again for a request that is gone (see `runtime::Worker`).
    fn on_http_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(w) = &self.worker {
            let to = Ctx::entered(self.id);
            runtime::on_root_call_response(w, &to, token, &mut CallResponse { to, body_size });
            to.leave();
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        // Envoy's level for its wasm component decides what reaches its log (the release
        // build compiles debug lines out).
        if let Some(level) = host::log_level() {
            proxy_wasm::set_log_level(level);
        }
        info!("custom-error-pages: version {} (proxy-wasm) started", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let text = host::plugin_configuration(size).unwrap_or_default();
        // None makes Envoy refuse the filter configuration (load_policy logged why).
        let Some(cfg) = runtime::load_policy(&text) else { return false };
        if let Some(old) = &self.worker {
            old.flush_counters(&Ctx::entered(self.id));
        }
        self.worker = Some(Rc::new(Worker::new(Wasm, Arc::new(cfg))));
        if !host::set_tick_ms(runtime::TICK_MS) {
            warn!("custom-error-pages: no tick: counters will not reach /stats");
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(w) = &self.worker {
            let root = Ctx::entered(self.id);
            runtime::on_tick(w, &root);
            root.leave();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without a loaded policy (cannot happen after a successful configure) requests
        // pass through untouched rather than failing.
        let worker = self.worker.clone()?;
        Some(Box::new(Http { id: context_id, stream: Stream::new(context_id, worker) }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The SDK's HTTP context, delegating to the runtime. Only the callbacks below are
/// exported to Envoy (scripts/build.sh removes the rest: each one costs a VM entry).
struct Http {
    id: u32,
    stream: Stream<Wasm>,
}

impl Http {
    /// Runs `f` with this context as the callback's own, and makes it the effective
    /// context again afterwards.
    fn hook<T>(&mut self, f: impl FnOnce(&mut Stream<Wasm>, &Ctx) -> T) -> T {
        let ctx = Ctx::entered(self.id);
        let out = f(&mut self.stream, &ctx);
        ctx.leave();
        out
    }
}

fn action(a: runtime::Action) -> Action {
    match a {
        runtime::Action::Continue => Action::Continue,
        runtime::Action::Pause => Action::Pause,
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        self.hook(|s, ctx| s.on_call_response(ctx, token, &mut CallResponse { to: *ctx, body_size }));
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.hook(|s, ctx| s.on_request_headers(ctx));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.hook(|s, ctx| s.on_response_headers(ctx, end_of_stream)))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.hook(|s, ctx| s.on_response_body(ctx, body_size, end_of_stream)))
    }

    /// Exported, unlike the request's trailers: Envoy calls it only for a response that
    /// has trailers, so ordinary traffic never enters the VM for it.
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.hook(|s, ctx| s.on_response_trailers(ctx)))
    }
}
