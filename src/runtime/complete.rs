//! Applying what the worker returns: requests whose wait is over (a fetch answered, or
//! given up) finished through their own context, held requests answered in Envoy's place
//! when its deadline comes, and the worker's tick. The worker decides what each request
//! gets; this is the one place that turns that into replies, by stream id.
//!
//! Deadlines: Envoy answers a request itself when its route timeout fires, and once a
//! filter holds the response headers that reply goes straight to the client, past every
//! filter (Envoy's filter manager sends it as a "direct local reply"). So a held request
//! whose deadline is known is answered by the filter a little before it, as Envoy would
//! have answered: a 504 made by the proxy (code details `response_timeout`), decided by
//! the policy again for that code (from the cache, else the rule's inline body or the
//! built-in page: there is no time left for a fetch).

use super::finish::{finish, resume, Unknowns};
use super::flight::{Released, ROUTE_TIMEOUT};
use super::held::{Pending, Phase};
use super::host::{CallAnswer, Context, Host};
use super::worker::{Worker, TICK_MS};
use super::Action;
use crate::decide::Decision;
use crate::negotiate;
use crate::reply::{self, Outcome};
use log::debug;

/// Every `TICK_MS`, in context `here` (the proxy-wasm root; for a build without a timer,
/// the request whose hook runs): refreshes the clock, adds the counts to the proxy's
/// counters, answers held requests whose Envoy deadline has come, has fetches whose
/// request is gone asked again, and (where calls outlive requests) fetches ahead.
pub fn on_tick<H: Host>(worker: &Worker<H>, here: &H::Context) {
    worker.clock.set(worker.host.now_ms());
    worker.metrics.flush(here);
    expire_due(worker, Some(here));
    release_orphans(worker, Some(here));
    if worker.background {
        worker.take_handed();
        worker.fetch_due(here);
    }
}

/// For a build without a timer (the dynamic module): the tick's work, from the hook of
/// the request of `here`, when `TICK_MS` have passed since the last.
pub fn tick_if_due<H: Host>(worker: &Worker<H>, here: &H::Context) {
    if worker.host.now_ms().saturating_sub(worker.clock.get()) >= u64::from(TICK_MS) {
        on_tick(worker, here);
    }
}

/// The answer to a call the worker's own context (`root`, the proxy-wasm root) made.
pub fn on_root_call_response<H: Host>(worker: &Worker<H>, root: &H::Context, token: u32, answer: &mut dyn CallAnswer) {
    call_answered(worker, root, token, answer);
    // A background fetch done leaves room for the next at once, not a tick later.
    if worker.background {
        worker.fetch_due(root);
    }
}

/// The answer to call `token`, delivered to `here` (the context that made it): the
/// requests waiting on it get their replies.
pub(super) fn call_answered<H: Host>(worker: &Worker<H>, here: &H::Context, token: u32, answer: &mut dyn CallAnswer) {
    if let Some(released) = worker.complete(here, token, answer) {
        release(worker, released);
    }
}

/// Has the fetches whose request is gone asked again (from `here` where calls outlive
/// requests), and releases the waiters of those nobody can ask again.
pub(super) fn release_orphans<H: Host>(worker: &Worker<H>, here: Option<&H::Context>) {
    for released in worker.reassign_orphans(here) {
        release(worker, released);
    }
}

/// Finishes each waiter still alive with the object (or, when there is none, the cache's
/// stale copy, else the fallback), through its own context. For the request whose call
/// brought it the object was fetched; the others share it (a cache hit).
fn release<H: Host>(worker: &Worker<H>, released: Released<H::Map>) {
    let Released { key, waiters, object, fetch_ms, fetched_by } = released;
    let stale = match (&object, waiters.is_empty()) {
        (None, false) => worker.stale(&key),
        _ => None,
    };
    for mut w in waiters {
        let Some(ctx) = worker.host.context(w.id) else {
            continue; // that request is gone
        };
        let served = match (&object, &stale) {
            (Some(o), _) if fetched_by == Some(w.id) => Some((o.clone(), Outcome::Fetched)),
            (Some(o), _) => {
                worker.metrics.cache_hit.bump();
                Some((o.clone(), Outcome::Cache))
            }
            (None, Some(s)) => Some((s.clone(), Outcome::Stale)),
            (None, None) => None,
        };
        w.pending.fetch_ms = fetch_ms;
        let (phase, action) = finish(&ctx, worker, &mut w.pending, served, true);
        *w.slot.borrow_mut() = Some(phase);
        if action == Action::Continue {
            resume(&ctx);
        }
    }
}

/// Answers every held request whose deadline has come, in Envoy's place (see the module
/// comment); then has the fetches whose context was among them asked again. A request for
/// which the policy has no rule for Envoy's reply stays held for its object: Envoy's own
/// reply will overtake it if Envoy's deadline is the one the filter was told (and if the
/// policy's `routeTimeoutsMs` says a timeout the route does not have, the object comes).
pub(super) fn expire_due<H: Host>(worker: &Worker<H>, here: Option<&H::Context>) {
    let due = worker.take_expired(worker.host.now_ms());
    if due.is_empty() {
        return;
    }
    let mut answered = false;
    for (key, mut w) in due {
        let Some(ctx) = worker.host.context(w.id) else { continue };
        match in_envoys_place(&ctx, worker, &mut w.pending) {
            Some((phase, action)) => {
                *w.slot.borrow_mut() = Some(phase);
                if action == Action::Continue {
                    resume(&ctx);
                }
                // Its request ends, and Envoy cancels its call with it.
                worker.disown(&key, w.id);
                answered = true;
            }
            None => {
                w.pending.deadline = None;
                worker.wait_again(&key, w);
            }
        }
    }
    if answered {
        release_orphans(worker, here);
    }
}

/// The reply Envoy would make for its route timeout, as the policy decides it: the rule for
/// a 504 made by the proxy, its object from the cache, else its inline body or the
/// built-in page, always as a local reply (the original body may never end). `None` where
/// no rule covers that 504 (or a `passthrough` rule does): Envoy's own reply is what the
/// policy asks for, and the request is left as it was.
fn in_envoys_place<H: Host>(
    ctx: &H::Context,
    worker: &Worker<H>,
    held: &mut Pending<H::Map>,
) -> Option<(Phase, Action)> {
    let (status, details) = ROUTE_TIMEOUT;
    let config = worker.config.clone();
    let before = held.facts.set_code_details(Some(details.to_string()));
    let (rule, serve) = match config.decide_observed(status, &mut held.facts.seen(ctx), &mut Unknowns(worker)) {
        Decision::Serve(rule, serve) => (rule, serve),
        Decision::None | Decision::Passthrough(_) => {
            let id = ctx.id();
            debug!("custom-error-pages: [ctx {id}] Envoy's deadline: no rule for its {status}, its reply stands");
            held.facts.set_code_details(before);
            return None;
        }
    };
    worker.metrics.deadline.bump();
    let accept = held.facts.header("accept");
    let variant = negotiate::choose(serve, accept.as_deref());
    held.facts.served = reply::served_status(serve, status);
    let language = negotiate::language_for(serve, &mut held.facts.seen(ctx));
    let object = worker.held_copy(serve, variant, language, status);
    held.rule = rule.at;
    held.variant = serve.variants.iter().position(|v| std::ptr::eq(v, variant));
    held.language = language;
    held.headers_only = true;
    held.cause = Some(details);
    Some(finish(ctx, worker, held, object, true))
}
