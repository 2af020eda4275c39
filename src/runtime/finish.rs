//! Sending a request's replacement once its object (or the lack of one) is known: the
//! reply built, counted, recorded for the access log, and put on the wire in place or as a
//! local reply. Used by the stream for an object at hand and by `complete.rs` for requests
//! whose wait is over; acts only through the request's own `Context`.

use super::held::{Pending, Phase};
use super::host::{Context, Host};
use super::metrics::RuleOutcome;
use super::worker::Worker;
use super::Action;
use crate::cache::Object;
use crate::config::{Config, Rule, RuleAt, RuleKind, Serve, Variant};
use crate::decide::{Observer, Step};
use crate::reply::{self, Outcome};
use crate::request::Metadata;
use log::{debug, warn};
use std::rc::Rc;

/// Original error body we drop while waiting for its end before we send the object anyway.
pub(super) const MAX_DROP_BYTES: usize = 64 * 1024;

/// The least time to Envoy's deadline for which the page still rides the original body's
/// last chunk; closer to it, the page goes at once as a local reply.
const STREAM_BUDGET_MS: u64 = 1000;

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
pub(super) fn resume(ctx: &impl Context) {
    if !ctx.resume_response() {
        debug!("custom-error-pages: [ctx {}] could not resume the response: the stream is gone", ctx.id());
    }
}

/// Builds the replacement for the request of `ctx` and sends it: counts, records the
/// access-log fields, rewrites headers or answers locally. Returns the request's next
/// phase and what to do with its paused headers.
pub(super) fn finish<H: Host>(
    ctx: &H::Context,
    worker: &Worker<H>,
    pending: &mut Pending<H::Map>,
    object: Option<(Rc<Object>, Outcome)>,
    resumed: bool,
) -> (Phase, Action) {
    let id = ctx.id();
    let config = worker.config.clone();
    let Some((rule, serve)) = rule_serve(&config, pending.rule) else {
        return (Phase::Done, Action::Continue);
    };
    let variant = variant_of(serve, pending.variant);
    let needed = reply::needs_vars(serve, variant, object.as_ref().map(|(o, _)| &**o));
    let ahead = object.as_ref().is_some_and(|(o, _)| o.ahead);
    let mut vars = pending.facts.vars_for(needed, ctx);
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
    let near_deadline = pending.deadline.is_some_and(|d| worker.host.now_ms() + STREAM_BUDGET_MS > d);
    if pending.headers_only || near_deadline {
        // Envoy sets `:status` and content-length, and drops the body for HEAD itself.
        if !ctx.send_response(reply.status, &headers, &reply.body) {
            warn!("custom-error-pages: [ctx {id}] local reply refused by the proxy; the original response stands");
            return (Phase::Done, Action::Continue);
        }
        record(ctx, &fields, cache, pending.fetch_ms, pending.cause);
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
    if !ctx.set_response_headers(&headers) {
        // Streaming the page under the original headers would mislabel it: leave the
        // response as it came rather than send a hybrid.
        warn!("custom-error-pages: [ctx {id}] the proxy refused the replacement headers; the original response stands");
        return (Phase::Done, Action::Continue);
    }
    record(ctx, &fields, cache, pending.fetch_ms, pending.cause);
    worker.metrics.rule(rule, RuleOutcome::Served(reply.outcome));
    drop(headers); // it borrows from `reply`, whose body moves on
    let first_chunk = resumed;
    (Phase::Streaming { body: reply.body, sent: false, dropped: 0, first_chunk }, Action::Continue)
}

/// The access log's first four fields.
pub(super) struct Logged<'a> {
    pub original: u16,
    pub served: u16,
    /// The deciding rule's JSON path.
    pub rule: &'a str,
    pub outcome: &'a str,
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
pub(super) fn record(
    ctx: &impl Context,
    f: &Logged<'_>,
    cache: Option<&str>,
    fetch_ms: Option<u64>,
    cause: Option<&str>,
) {
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
    if !ctx.set_filter_state("custom_error", &value) {
        debug!("custom-error-pages: access-log fields not recorded: {value}");
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
