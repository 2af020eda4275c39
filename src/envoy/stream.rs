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
//! - An original body over `MAX_DROP_BYTES` is not waited for: the object goes out with
//!   the chunk that crosses the limit.
//! - The upstream response has no body (HEAD, `content-length: 0`, Envoy's own replies
//!   without body): nothing can carry the object in place, so a local reply. The
//!   upstream exchange is complete, nothing is cut short.

use super::facts::Facts;
use super::host;
use super::Worker;
use crate::cache::{self, Object};
use crate::config::{Config, RuleKind, Serve, Variant};
use crate::decide::Decision;
use crate::error_service::{self, CallFacts, FetchFailure};
use crate::negotiate;
use crate::reply::{self, Outcome, Reply};
use crate::request::RequestView;
use log::{debug, warn};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// Original error body we drop while waiting for its end before we send the object anyway.
const MAX_DROP_BYTES: usize = 64 * 1024;

/// Where this request is, replacing loose flags.
enum Phase {
    /// Nothing decided yet (or nothing to do).
    Idle,
    /// Headers paused while the error object is fetched.
    Fetching(Box<Fetch>),
    /// Replacement headers sent; the original body is dropped and the object goes out with
    /// its last chunk.
    Streaming { body: Rc<[u8]>, sent: bool, dropped: usize },
    /// Our reply is out, or the response is left alone on purpose. Also the marker that
    /// keeps the filter off its own local reply if Envoy runs it through the chain.
    Done,
}

/// A fetch in flight and what is needed to finish the reply when it answers.
struct Fetch {
    call: Call,
    rule: (usize, usize),
    variant: Option<usize>,
    facts: Facts,
    /// The upstream response ended with its headers (no body to carry the object).
    headers_only: bool,
}

/// The dispatched call to the error service.
struct Call {
    token: u32,
    service: usize,
    cache_key: String,
    started_ms: u64,
}

/// A replacement ready to send: full header list (with `:status`) and body.
struct Ready {
    status: u16,
    headers: Vec<(String, String)>,
    body: Rc<[u8]>,
}

pub(crate) struct Stream {
    id: u32,
    worker: Rc<Worker>,
    phase: Phase,
    /// The request headers as Envoy serialised them, kept unparsed: Envoy no longer lets
    /// a filter read request headers (or `request.*` properties) once the request phase
    /// has continued, so this one copy is all the response path can know of the request.
    request: Vec<u8>,
}

impl Stream {
    pub fn new(id: u32, worker: Rc<Worker>) -> Stream {
        Stream { id, worker, phase: Phase::Idle, request: Vec::new() }
    }

    fn config(&self) -> Rc<Config> {
        self.worker.config.clone()
    }

    /// Decides; returns the header action.
    fn intercept(&mut self, status: u16, end_of_stream: bool) -> Action {
        let mut facts = Facts::new(status, std::mem::take(&mut self.request));
        if facts.excluded() {
            return Action::Continue;
        }
        let config = self.config();
        #[cfg(feature = "trap-test")]
        if config.test_trap_on_path.as_deref().is_some_and(|p| facts.path() == p) {
            panic!("trap-test: deliberate trap on {}", facts.path());
        }
        let (rule, serve) = match config.decide(status, &mut facts) {
            Decision::None => return Action::Continue,
            Decision::Passthrough(rule) => {
                self.worker.metrics.passthrough.bump();
                debug!("[ctx {}] {status} passes through by {}", self.id, rule.id);
                record(status, status, &rule.id, "passthrough");
                self.phase = Phase::Done;
                return Action::Continue;
            }
            Decision::Serve(rule, serve) => (rule, serve),
        };
        self.worker.metrics.intercepted.bump();
        let accept = facts.header("accept");
        let variant = negotiate::choose(serve, accept.as_deref());
        facts.served = reply::served_status(serve, status);
        match self.lookup(serve, variant, &mut facts) {
            Ok(object) => {
                let needed = reply::needs_vars(serve, variant, object.as_ref().map(|(o, _)| &**o));
                let r = reply::build(serve, variant, object, &facts.vars_for(needed));
                let ready = self.prepare(r, serve, &rule.id, &facts);
                self.send(ready, end_of_stream)
            }
            Err(call) => {
                let variant = serve.variants.iter().position(|v| std::ptr::eq(v, variant));
                self.phase = Phase::Fetching(Box::new(Fetch { call, rule: rule.at, variant, facts, headers_only: end_of_stream }));
                Action::Pause
            }
        }
    }

    /// The object from the cache, or none to fetch (inline body) — or a fetch dispatched.
    fn lookup(&self, serve: &Serve, variant: &Variant, facts: &mut Facts) -> Result<Option<(Rc<Object>, Outcome)>, Call> {
        let config = &self.worker.config;
        let Some(path_template) = &variant.path else { return Ok(None) };
        // Validation guarantees a service for every path; without one, serve the fallback.
        let Some((service, svc)) = serve.service.and_then(|i| config.services.get(i).map(|s| (i, s))) else {
            return Ok(None);
        };
        let path = error_service::object_path(path_template, facts.status);
        let key = cache::key(service, &path, &variant.content_type);
        if let Some(object) = self.worker.cache.borrow_mut().get(&key, self.worker.clock.get()) {
            self.worker.metrics.cache_hit.bump();
            return Ok(Some((object, Outcome::Cache)));
        }
        let format = negotiate::essence(&variant.content_type).to_string();
        let (uri, host_name, request_id) = (facts.path(), facts.authority(), facts.request_id());
        let call = CallFacts { original_status: facts.status, format: &format, original_uri: &uri, original_host: &host_name, request_id: &request_id };
        let headers = error_service::call_headers(svc, &path, &call);
        match host::dispatch(&svc.cluster, &headers, svc.timeout_ms) {
            Some(token) => {
                debug!("[ctx {}] {}: fetching {path} from {}", self.id, facts.status, svc.cluster);
                Err(Call { token, service, cache_key: key, started_ms: host::now_ms() })
            }
            None => {
                warn!("[ctx {}] cannot call error service cluster \"{}\" (is it defined?)", self.id, svc.cluster);
                self.worker.metrics.fetch_failed(FetchFailure::Dispatch).bump();
                Ok(None)
            }
        }
    }

    /// Counts, records for the access log, and assembles the header list while the
    /// original response headers are still readable.
    fn prepare(&self, reply: Reply, serve: &Serve, rule_id: &str, facts: &Facts) -> Ready {
        let m = &self.worker.metrics;
        match reply.outcome {
            Outcome::Cache | Outcome::Fetched => {} // counted where they happen
            Outcome::Inline => m.inline.bump(),
            Outcome::Fallback => m.fallback.bump(),
        }
        record(facts.status, reply.status, rule_id, reply.outcome.as_str());
        let headers = reply::headers(&reply, serve, &host::response_headers());
        Ready { status: reply.status, headers, body: reply.body }
    }

    /// Sends a ready replacement (see the module comment); returns the header action.
    fn send(&mut self, ready: Ready, headers_only: bool) -> Action {
        if headers_only {
            // Envoy sets `:status` and content-length, and drops the body for HEAD itself.
            let headers: Vec<(String, String)> =
                ready.headers.into_iter().filter(|(k, _)| !k.starts_with(':') && k != "content-length").collect();
            if !host::send_response(ready.status, &headers, &ready.body) {
                warn!("[ctx {}] local reply refused by Envoy; the original response stands", self.id);
                host::resume_response();
            }
            self.phase = Phase::Done;
            return Action::Pause;
        }
        // The body goes out with the last original chunk; should the original end in
        // trailers instead, no length must promise bytes that never come.
        let headers: Vec<(String, String)> = ready.headers.into_iter().filter(|(k, _)| k != "content-length").collect();
        host::set_response_headers(&headers);
        self.phase = Phase::Streaming { body: ready.body, sent: false, dropped: 0 };
        Action::Continue
    }

    fn finish_fetch(&mut self, mut fetch: Box<Fetch>, body_size: usize) {
        let config = self.config();
        let found = config.rule(fetch.rule.0, fetch.rule.1).and_then(|rule| match &rule.kind {
            RuleKind::Serve(serve) => Some((rule, serve)),
            RuleKind::Passthrough => None,
        });
        let (Some((rule, serve)), Some(svc)) = (found, config.services.get(fetch.call.service)) else {
            self.phase = Phase::Done;
            host::resume_response();
            return;
        };
        let variant: &Variant = fetch.variant.and_then(|i| serve.variants.get(i)).unwrap_or(&serve.default);
        let now = host::now_ms();
        let headers = host::call_response_headers();
        let object = match error_service::evaluate(svc, &headers, body_size, now.saturating_sub(fetch.call.started_ms), &variant.content_type) {
            Ok(meta) => match host::call_response_body(body_size) {
                Some(body) => {
                    self.worker.metrics.fetched.bump();
                    let ttl = cache::ttl_seconds(meta.cache_control.as_deref(), svc.cache_ttl_s);
                    let object = Rc::new(Object { body: body.into(), content_type: meta.content_type, cache_control: meta.cache_control });
                    self.worker.cache.borrow_mut().put(std::mem::take(&mut fetch.call.cache_key), object.clone(), ttl, now);
                    Some((object, Outcome::Fetched))
                }
                None => {
                    self.worker.metrics.fetch_failed(FetchFailure::Unreachable).bump();
                    None
                }
            },
            Err(f) => {
                debug!("[ctx {}] error service {}: fetch failed: {}", self.id, svc.cluster, f.as_str());
                self.worker.metrics.fetch_failed(f).bump();
                None
            }
        };
        let needed = reply::needs_vars(serve, variant, object.as_ref().map(|(o, _)| &**o));
        let r = reply::build(serve, variant, object, &fetch.facts.vars_for(needed));
        let ready = self.prepare(r, serve, &rule.id, &fetch.facts);
        if matches!(self.send(ready, fetch.headers_only), Action::Continue) {
            host::resume_response();
        }
    }
}

/// Access-log fields, as filter state (see the sample envoy.yaml).
fn record(original: u16, served: u16, rule: &str, outcome: &str) {
    host::set_filter_state("custom_error.original_status", &original.to_string());
    host::set_filter_state("custom_error.served_status", &served.to_string());
    host::set_filter_state("custom_error.rule", rule);
    host::set_filter_state("custom_error.outcome", outcome);
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Fetching(fetch) if fetch.call.token == token => self.finish_fetch(fetch, body_size),
            other => self.phase = other,
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // A policy without rules never needs the request: keep the success path bare.
        if !self.worker.config.codes.is_empty() {
            self.request = host::request_headers_raw();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !matches!(self.phase, Phase::Idle) {
            return Action::Continue;
        }
        let Some(status) = host::response_header(":status").and_then(|s| s.parse::<u16>().ok()) else {
            return Action::Continue;
        };
        if !self.worker.config.interested_in(status) {
            return Action::Continue;
        }
        self.intercept(status, end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Phase::Streaming { body, sent, dropped } = &mut self.phase {
            // The original body never reaches the client: each chunk is dropped as it
            // arrives (nothing accumulates), and the last one carries the object.
            *dropped += body_size;
            let now = !*sent && (end_of_stream || *dropped > MAX_DROP_BYTES);
            host::replace_response_body(body_size, if now { body } else { &[] });
            *sent |= now;
        }
        Action::Continue
    }
}
