//! One request's life in the filter. All work happens on the response path; a response
//! whose status no rule covers costs one header read.
//!
//! How the replacement reaches the client, and why:
//! - The upstream response still has a body coming: rewrite status and headers in place
//!   and swap the body chunk by chunk. Envoy reads the upstream response to its end, so
//!   the upstream connection stays in the pool (a local reply here would reset the
//!   upstream request and close the connection, as Envoy's native filter does).
//! - The upstream response is complete (no body, or it ended while the error object was
//!   being fetched): a local reply. Nothing upstream is cut short, and it is the only way
//!   to add a body to a response that has none.

use super::host;
use super::Worker;
use crate::cache::{self, Object};
use crate::config::{Config, Serve, Variant};
use crate::decide::Decision;
use crate::error_service::{self, CallFacts, FetchFailure};
use crate::negotiate;
use crate::reply::{self, Outcome, Reply};
use crate::request::RequestView;
use crate::template::Vars;
use log::{debug, warn};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

/// What this request is waiting for, replacing loose flags.
enum Phase {
    /// Nothing decided yet (or nothing to do).
    Idle,
    /// Headers paused while the error object is fetched.
    Fetching(Box<Pending>),
    /// Headers rewritten; the next body chunk becomes the error object, later ones vanish.
    Replacing { body: Rc<[u8]>, sent: bool },
    /// Our reply is out (or the response was left alone on purpose). Also the marker that
    /// keeps the filter from touching its own local reply if Envoy runs it through again.
    Done,
}

/// A fetch in flight and what is needed to finish the reply when it answers.
struct Pending {
    token: u32,
    rule: (usize, usize),
    variant: Option<usize>,
    service: usize,
    cache_key: String,
    started_ms: u64,
    facts: Facts,
    /// The upstream response ended (its body was swallowed while we waited).
    upstream_done: bool,
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

    fn intercept(&mut self, status: u16, end_of_stream: bool) -> Action {
        let mut facts = Facts::new(status, std::mem::take(&mut self.request));
        if facts.excluded() {
            return Action::Continue;
        }
        let config = self.config();
        let (rule, serve) = match config.decide(status, &mut facts) {
            Decision::None => return Action::Continue,
            Decision::Passthrough(rule) => {
                host::increment(self.worker.metrics.passthrough);
                debug!("[ctx {}] {status} passes through by {}", self.id, rule.id);
                record(status, status, &rule.id, "passthrough");
                self.phase = Phase::Done;
                return Action::Continue;
            }
            Decision::Serve(rule, serve) => (rule, serve),
        };
        host::increment(self.worker.metrics.intercepted);
        let accept = facts.header("accept");
        let variant = negotiate::choose(serve, accept.as_deref());
        let variant_index = serve.variants.iter().position(|v| std::ptr::eq(v, variant));
        facts.served = reply::served_status(serve, status);

        let Some(path_template) = &variant.path else {
            let reply = reply::build(serve, variant, None, &facts.vars());
            return self.deliver(reply, serve, &rule.id, &facts, end_of_stream);
        };
        let Some((service_index, svc)) = serve.service.and_then(|i| config.services.get(i).map(|s| (i, s))) else {
            // Validation makes this unreachable; serve the fallback rather than fail.
            let reply = reply::build(serve, variant, None, &facts.vars());
            return self.deliver(reply, serve, &rule.id, &facts, end_of_stream);
        };
        let path = error_service::object_path(path_template, status);
        let key = cache::key(service_index, &path, &variant.content_type);
        let now = host::now_ms();
        let hit = self.worker.cache.borrow_mut().get(&key, now);
        if let Some(object) = hit {
            host::increment(self.worker.metrics.cache_hit);
            let reply = reply::build(serve, variant, Some((object, Outcome::Cache)), &facts.vars());
            return self.deliver(reply, serve, &rule.id, &facts, end_of_stream);
        }
        let format = negotiate::essence(&variant.content_type).to_string();
        let uri = facts.path();
        let host_name = facts.authority();
        let request_id = facts.request_id();
        let call = CallFacts { original_status: status, format: &format, original_uri: &uri, original_host: &host_name, request_id: &request_id };
        let headers = error_service::call_headers(svc, &path, &call);
        match host::dispatch(&svc.cluster, &headers, svc.timeout_ms) {
            Some(token) => {
                debug!("[ctx {}] {status}: fetching {path} from {} for {}", self.id, svc.cluster, rule.id);
                self.phase = Phase::Fetching(Box::new(Pending {
                    token,
                    rule: rule.at,
                    variant: variant_index,
                    service: service_index,
                    cache_key: key,
                    started_ms: now,
                    facts,
                    upstream_done: end_of_stream,
                }));
                Action::Pause
            }
            None => {
                warn!("[ctx {}] cannot call error service cluster \"{}\" (is it defined?)", self.id, svc.cluster);
                host::increment(self.worker.metrics.fetch_failed(FetchFailure::Dispatch));
                let reply = reply::build(serve, variant, None, &facts.vars());
                self.deliver(reply, serve, &rule.id, &facts, end_of_stream)
            }
        }
    }

    /// Sends the reply the way the module comment explains; returns the header action.
    fn deliver(&mut self, reply: Reply, serve: &Serve, rule_id: &str, facts: &Facts, upstream_done: bool) -> Action {
        let m = &self.worker.metrics;
        host::increment(match reply.outcome {
            Outcome::Cache | Outcome::Fetched => None, // counted where they happen
            Outcome::Inline => m.inline,
            Outcome::Fallback => m.fallback,
        });
        record(facts.status, reply.status, rule_id, reply.outcome.as_str());
        let original = host::response_headers();
        let mut headers = reply::headers(&reply, serve, &original);
        if upstream_done {
            // Local reply: Envoy sets `:status` and, for HEAD, drops the body itself.
            headers.retain(|(k, _)| !k.starts_with(':') && k != "content-length");
            if !host::send_response(reply.status, &headers, &reply.body) {
                warn!("[ctx {}] local reply refused by Envoy; the original response stands", self.id);
            }
            self.phase = Phase::Done;
            return Action::Pause;
        }
        if facts.is_head() {
            // No body will be forwarded for HEAD; keep the headers honest about the object.
            self.phase = Phase::Done;
        } else {
            self.phase = Phase::Replacing { body: reply.body.clone(), sent: false };
        }
        host::set_response_headers(&headers);
        Action::Continue
    }

    fn finish_fetch(&mut self, mut pending: Box<Pending>, body_size: usize) {
        let config = self.config();
        let Some(rule) = config.rule(pending.rule.0, pending.rule.1) else { return self.resume_untouched() };
        let crate::config::RuleKind::Serve(serve) = &rule.kind else { return self.resume_untouched() };
        let variant: &Variant = pending.variant.and_then(|i| serve.variants.get(i)).unwrap_or(&serve.default);
        let Some(svc) = config.services.get(pending.service) else { return self.resume_untouched() };
        let now = host::now_ms();
        let headers = host::call_response_headers();
        let judged = error_service::evaluate(svc, &headers, body_size, now.saturating_sub(pending.started_ms), &variant.content_type);
        let object = match judged {
            Ok(meta) => match host::call_response_body(body_size) {
                Some(body) => {
                    host::increment(self.worker.metrics.fetched);
                    let ttl = cache::ttl_seconds(meta.cache_control.as_deref(), svc.cache_ttl_s);
                    let object = Rc::new(Object { body: body.into(), content_type: meta.content_type, cache_control: meta.cache_control });
                    self.worker.cache.borrow_mut().put(pending.cache_key.clone(), object.clone(), ttl, now);
                    Some((object, Outcome::Fetched))
                }
                None => {
                    host::increment(self.worker.metrics.fetch_failed(FetchFailure::Unreachable));
                    None
                }
            },
            Err(f) => {
                debug!("[ctx {}] error service {}: fetch failed: {}", self.id, svc.cluster, f.as_str());
                host::increment(self.worker.metrics.fetch_failed(f));
                None
            }
        };
        let reply = reply::build(serve, variant, object, &pending.facts.vars());
        let action = self.deliver(reply, serve, &rule.id, &pending.facts, pending.upstream_done);
        if matches!(action, Action::Continue) {
            host::resume_response();
        }
    }

    fn resume_untouched(&mut self) {
        self.phase = Phase::Done;
        host::resume_response();
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
            Phase::Fetching(p) if p.token == token => self.finish_fetch(p, body_size),
            other => self.phase = other,
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.request = host::request_headers_raw();
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
        match &mut self.phase {
            Phase::Idle | Phase::Done => Action::Continue,
            Phase::Fetching(p) => {
                // The original body never reaches the client; drop it as it arrives so
                // nothing accumulates in Envoy's buffer, whatever its size.
                host::replace_response_body(body_size, &[]);
                p.upstream_done = end_of_stream;
                Action::Pause
            }
            Phase::Replacing { body, sent } => {
                if *sent {
                    host::replace_response_body(body_size, &[]);
                } else {
                    host::replace_response_body(body_size, body);
                    *sent = true;
                }
                Action::Continue
            }
        }
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Phase::Fetching(p) = &mut self.phase {
            p.upstream_done = true;
            return Action::Pause;
        }
        Action::Continue
    }
}

fn remember(slot: &mut Option<String>, raw: &[u8], name: &str) -> String {
    slot.get_or_insert_with(|| host::find_header(raw, name).unwrap_or_default()).clone()
}

/// Request facts, read from Envoy on first use and kept. Only the error path reads them.
struct Facts {
    request: Vec<u8>,
    status: u16,
    served: u16,
    authority: Option<String>,
    path: Option<String>,
    method: Option<String>,
    request_id: Option<String>,
    code_details: Option<String>,
}

impl Facts {
    fn new(status: u16, request: Vec<u8>) -> Facts {
        Facts { request, status, served: status, authority: None, path: None, method: None, request_id: None, code_details: None }
    }

    fn method(&mut self) -> String {
        remember(&mut self.method, &self.request, ":method")
    }

    fn req(&self, name: &str) -> Option<String> {
        host::find_header(&self.request, name)
    }

    fn is_head(&self) -> bool {
        self.method.as_deref() == Some("HEAD")
    }

    fn request_id(&mut self) -> String {
        remember(&mut self.request_id, &self.request, "x-request-id")
    }

    fn code_details(&mut self) -> String {
        self.code_details
            .get_or_insert_with(|| host::property(&["response", "code_details"]).unwrap_or_default())
            .clone()
    }

    /// Never touched: CONNECT tunnels and gRPC (whose errors travel in trailers and must
    /// stay machine-readable).
    fn excluded(&mut self) -> bool {
        let method = self.method();
        if method == "CONNECT" {
            return true;
        }
        let grpc = |ct: Option<String>| ct.is_some_and(|c| c.to_ascii_lowercase().starts_with("application/grpc"));
        grpc(self.req("content-type")) || grpc(host::response_header("content-type"))
    }

    fn vars(&mut self) -> Vars<'_> {
        self.authority();
        self.path();
        self.request_id();
        self.code_details();
        let source = if self.from_proxy() { "proxy" } else { "upstream" };
        Vars {
            status: self.served,
            original_status: self.status,
            request_id: self.request_id.as_deref().unwrap_or(""),
            host: self.authority.as_deref().unwrap_or(""),
            path: self.path.as_deref().unwrap_or(""),
            method: self.method.as_deref().unwrap_or(""),
            source,
            code_details: self.code_details.as_deref().unwrap_or(""),
        }
    }
}

impl RequestView for Facts {
    fn authority(&mut self) -> String {
        remember(&mut self.authority, &self.request, ":authority")
    }

    fn path(&mut self) -> String {
        remember(&mut self.path, &self.request, ":path")
    }

    fn header(&mut self, name: &str) -> Option<String> {
        self.req(name)
    }

    fn route_name(&mut self) -> Option<String> {
        host::property(&["xds", "route_name"]).filter(|s| !s.is_empty())
    }

    /// Envoy marks responses that came from a backend with code details `via_upstream`;
    /// everything else (no healthy upstream, connect failure, timeout, reset, no route,
    /// a filter's local reply) the proxy made itself.
    fn from_proxy(&mut self) -> bool {
        self.code_details() != "via_upstream"
    }
}
