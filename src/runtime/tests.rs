//! The per-request state machine against the fake proxy: what Envoy's callbacks, in
//! Envoy's order, make the filter do. The end-to-end suite proves the same against the
//! real Envoy; these pin down the orderings that are hard to provoke there.

use super::fake::{delivered, Answer, Fake, StreamLog};
use super::{Action, Stream, Worker};
use crate::config;
use serde_json::json;
use std::collections::BTreeMap;
use std::rc::Rc;

const ROOT: u32 = 0;

struct Proxy {
    host: Fake,
    worker: Rc<Worker<Fake>>,
    streams: BTreeMap<u32, Stream<Fake>>,
}

fn rules(rules: serde_json::Value) -> serde_json::Value {
    json!({"errorService": {"cluster": "errors", "timeoutMs": 1000, "maxBodyBytes": 100},
           "defaultCustomErrorResponsePolicy": {"errorResponseRules": rules}})
}

fn page_rule() -> serde_json::Value {
    rules(json!([{"matchResponseCodes": ["5xx", "404"], "path": "/e/{status}.html"}]))
}

fn ok_answer(body: &str) -> Answer {
    let headers = [(":status", "200"), ("content-type", "text/html"), ("x-envoy-upstream-service-time", "1")];
    (headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(), Some(body.as_bytes().to_vec()))
}

impl Proxy {
    fn new(policy: serde_json::Value) -> Proxy {
        let host = Fake::default();
        host.state().now_ms = 1_000_000;
        let cfg = config::load(policy.to_string().as_bytes()).unwrap();
        let worker = Rc::new(Worker::new(host.clone(), std::sync::Arc::new(cfg)));
        Proxy { host, worker, streams: BTreeMap::new() }
    }

    /// A request for `path` passes the filter (request phase).
    fn request(&mut self, id: u32, method: &str, path: &str) {
        {
            let mut s = self.host.state();
            s.alive.insert(id);
            let log = s.streams.entry(id).or_default();
            let extra = std::mem::take(&mut log.request); // headers a test set before the request
            log.request = [(":method", method), (":path", path), (":authority", "shop.test"), ("x-request-id", "r1")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain(extra)
                .collect();
        }
        let mut stream = Stream::new(id, self.worker.clone());
        stream.on_request_headers(&self.host.ctx(id));
        self.streams.insert(id, stream);
    }

    /// The response headers reach the filter.
    fn respond(&mut self, id: u32, status: u16, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        {
            let mut s = self.host.state();
            let log = s.streams.entry(id).or_default();
            log.response = vec![(":status".into(), status.to_string())];
            log.response.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            log.code_details = "via_upstream".into();
        }
        self.streams.get_mut(&id).unwrap().on_response_headers(&self.host.ctx(id), end_of_stream)
    }

    /// A `GET /` whose response is `status` with a body to come.
    fn error(&mut self, id: u32, status: u16) -> Action {
        self.request(id, "GET", "/");
        self.respond(id, status, &[], false)
    }

    fn body(&mut self, id: u32, size: usize, end_of_stream: bool) -> Action {
        self.streams.get_mut(&id).unwrap().on_response_body(&self.host.ctx(id), size, end_of_stream)
    }

    /// The error service's answer to the call with `token` reaches the stream that made it.
    fn answer(&mut self, token: u32, answer: Answer) {
        let from = self.call(token).from;
        let ctx = self.host.ctx(from);
        match self.streams.get_mut(&from) {
            Some(stream) => stream.on_call_response(&ctx, token, &mut delivered(answer)),
            None => super::on_root_call_response(&self.worker, &ctx, token, &mut delivered(answer)), // the root's
        }
    }

    fn call(&self, token: u32) -> super::fake::Call {
        let s = self.host.0.borrow();
        let c = s.calls.iter().find(|c| c.token == token).unwrap();
        super::fake::Call { token: c.token, from: c.from, cluster: c.cluster.clone(), headers: c.headers.clone() }
    }

    fn calls(&self) -> usize {
        self.host.0.borrow().calls.len()
    }

    /// The client of stream `id` went away: Envoy destroys the stream (and cancels its call).
    fn gone(&mut self, id: u32) {
        self.host.state().alive.remove(&id);
        self.streams.remove(&id);
    }

    fn tick(&mut self) {
        super::on_tick(&self.worker, &self.host.ctx(ROOT));
    }

    fn log<T>(&self, id: u32, f: impl FnOnce(&StreamLog) -> T) -> T {
        f(&self.host.0.borrow().streams[&id])
    }

    /// A whole exchange: the response with a body of `chunks`, all delivered.
    fn body_chunks(&mut self, id: u32, chunks: &[usize]) {
        for (i, size) in chunks.iter().enumerate() {
            assert_eq!(self.body(id, *size, i + 1 == chunks.len()), Action::Continue);
        }
    }
}

#[test]
fn a_status_no_rule_covers_passes_untouched() {
    let mut p = Proxy::new(page_rule());
    assert_eq!(p.error(1, 200), Action::Continue);
    p.body_chunks(1, &[10]);
    assert_eq!(p.calls(), 0);
    p.log(1, |s| assert!(s.set_headers.is_none() && s.chunks == 0 && s.filter_state.is_none()));
}

#[test]
fn leader_fetches_then_cache_serves_in_place() {
    let mut p = Proxy::new(page_rule());
    p.request(1, "GET", "/a");
    assert_eq!(p.respond(1, 404, &[("content-length", "5"), ("set-cookie", "x")], false), Action::Pause);
    assert_eq!(p.calls(), 1);
    let call = p.call(100);
    assert_eq!((call.from, call.cluster.as_str()), (1, "errors"));
    assert!(call.headers.iter().any(|(k, v)| k == ":path" && v == "/e/404.html"));
    p.answer(100, ok_answer("<h1>404</h1>"));
    p.log(1, |s| {
        assert_eq!(s.resumed, 1, "the paused headers go on");
        assert_eq!(s.header(":status"), Some("404"));
        assert_eq!(s.header("content-length"), Some("12"), "the original announced a short body: our length");
        assert_eq!(s.header("set-cookie"), None);
        assert!(s.filter_state.as_deref().unwrap().starts_with("original=404 served=404 outcome=fetched rule="));
    });
    p.body_chunks(1, &[5]);
    p.log(1, |s| assert_eq!(s.body_out, b"<h1>404</h1>"));

    // The second request is a cache hit: no pause, no call.
    p.request(2, "GET", "/b");
    assert_eq!(p.respond(2, 404, &[], false), Action::Continue);
    assert_eq!(p.calls(), 1);
    p.body_chunks(2, &[3, 3]);
    p.log(2, |s| {
        assert_eq!(s.body_out, b"<h1>404</h1>");
        assert_eq!(s.header("content-length"), None, "no announced length: stays chunked");
        assert!(s.filter_state.as_deref().unwrap().contains("outcome=cache"));
    });
    p.tick();
    assert_eq!((p.host.counter("intercepted"), p.host.counter("fetched"), p.host.counter("cache_hit")), (2, 1, 1));
}

#[test]
fn a_body_in_many_chunks_is_dropped_and_the_page_rides_the_last() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["500"], "body": "page"}])));
    assert_eq!(p.error(1, 500), Action::Continue);
    for _ in 0..9 {
        p.body(1, 1000, false);
        p.log(1, |s| assert!(s.body_out.is_empty(), "nothing before the last chunk"));
    }
    p.body(1, 1000, true);
    p.log(1, |s| assert_eq!((s.body_out.as_slice(), s.chunks), (&b"page"[..], 10)));
}

impl Proxy {
    fn trailers(&mut self, id: u32) -> Action {
        self.streams.get_mut(&id).unwrap().on_response_trailers(&self.host.ctx(id))
    }
}

#[test]
fn a_response_ending_with_trailers_gets_its_page_before_them() {
    for holds in [true, false] {
        let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["500"], "body": "page"}])));
        p.host.state().holds_emptied_chunks = holds;
        assert_eq!(p.error(1, 500), Action::Continue);
        // proxy-wasm: Envoy holds the emptied chunks, the only body its trailers callback
        // can write; a dynamic module lets them go and adds the page from its hook.
        let held = if holds { Action::Pause } else { Action::Continue };
        assert_eq!((p.body(1, 10, false), p.body(1, 10, false)), (held, held), "holds={holds}");
        p.log(1, |s| assert!(s.body_out.is_empty()));
        assert_eq!(p.trailers(1), Action::Continue);
        p.log(1, |s| assert_eq!((s.body_out.as_slice(), s.before_trailers), (&b"page"[..], 1), "holds={holds}"));
    }
}

#[test]
fn trailers_after_the_last_chunk_or_of_a_response_left_alone_add_nothing() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["500"], "body": "page"}])));
    p.host.state().holds_emptied_chunks = true;
    p.error(1, 500);
    p.body(1, 5000, false);
    p.body(1, 64 * 1024, false); // past the drop limit: the page went with this chunk
    assert_eq!(p.trailers(1), Action::Continue);
    p.log(1, |s| assert_eq!((s.body_out.as_slice(), s.before_trailers), (&b"page"[..], 0)));

    assert_eq!(p.error(2, 200), Action::Continue);
    assert_eq!(p.body(2, 10, false), Action::Continue, "a response left alone is never held");
    assert_eq!(p.trailers(2), Action::Continue);
    p.log(2, |s| assert!(s.body_out.is_empty() && s.chunks == 0 && s.before_trailers == 0));
}

#[test]
fn after_a_wait_the_page_rides_the_first_chunk() {
    // Resumed, Envoy hands over what it held (body and trailers) inside its continuation,
    // where body a filter holds or adds before the trailers is lost (measured, both
    // builds): the page goes with the first chunk, and nothing is held.
    for holds in [true, false] {
        let mut p = Proxy::new(page_rule());
        p.host.state().holds_emptied_chunks = holds;
        assert_eq!(p.error(1, 404), Action::Pause);
        p.answer(100, ok_answer("<h1>404</h1>"));
        assert_eq!(p.body(1, 7, false), Action::Continue);
        p.log(1, |s| assert_eq!(s.body_out, b"<h1>404</h1>"));
        assert_eq!((p.body(1, 7, false), p.trailers(1)), (Action::Continue, Action::Continue));
        p.log(1, |s| assert_eq!((s.body_out.as_slice(), s.chunks, s.before_trailers), (&b"<h1>404</h1>"[..], 2, 0)));
        // The twin: from the cache, the page waits for the end.
        assert_eq!(p.error(2, 404), Action::Continue);
        p.body(2, 7, false);
        p.log(2, |s| assert!(s.body_out.is_empty(), "holds={holds}"));
    }
}

#[test]
fn an_empty_reply_has_no_content_type_and_says_its_length_is_zero() {
    let mut p = Proxy::new(rules(
        json!([{"matchResponseCodes": ["403"], "body": ""}, {"matchResponseCodes": ["404"], "body": "x"}]),
    ));
    p.request(1, "GET", "/");
    assert_eq!(
        p.respond(1, 403, &[("content-type", "text/html"), ("content-length", "900000")], false),
        Action::Continue
    );
    p.body_chunks(1, &[10, 10]);
    p.log(1, |s| {
        assert_eq!(
            (s.header(":status"), s.header("content-type"), s.header("content-length")),
            (Some("403"), None, Some("0"))
        );
        assert!(s.body_out.is_empty());
    });
    // Headers only: a local reply, no content type either.
    p.request(2, "HEAD", "/");
    p.respond(2, 403, &[], true);
    p.log(2, |s| {
        let (status, headers, body) = s.local_reply.clone().unwrap();
        assert_eq!((status, body.len()), (403, 0));
        assert!(!headers.iter().any(|(k, _)| k == "content-type"), "{headers:?}");
    });
    // The twin: a one-byte page keeps its type, and its length only when the original's is known and short.
    p.error(3, 404);
    p.body_chunks(3, &[10]);
    p.log(3, |s| {
        assert_eq!((s.header("content-type"), s.header("content-length")), (Some("text/html; charset=utf-8"), None))
    });
}

#[test]
fn a_redirect_goes_to_its_rendered_location_with_no_page() {
    let mut p = Proxy::new(rules(json!([
        {"matchResponseCodes": ["401"], "overrideResponseCode": 302, "headers": {"location": "/login?next={{url}}"}},
        {"matchResponseCodes": ["403"], "overrideResponseCode": 307, "path": "/e/403.html", "headers": {"location": "/denied"}}])));
    p.host.state().streams.entry(1).or_default().request = vec![("x-forwarded-proto".into(), "https".into())];
    p.request(1, "GET", "/cart?x=1");
    assert_eq!(p.respond(1, 401, &[("content-length", "30")], false), Action::Continue);
    p.body_chunks(1, &[30]);
    p.log(1, |s| {
        assert_eq!(s.header(":status"), Some("302"));
        assert_eq!(s.header("location"), Some("/login?next=https%3A%2F%2Fshop.test%2Fcart%3Fx%3D1"));
        assert_eq!((s.header("content-type"), s.header("content-length")), (None, Some("0")));
        assert!(s.body_out.is_empty());
    });
    // A redirect with a page whose fetch fails: the built-in page under the original 403,
    // and no location (it is not a redirect any more).
    p.error(2, 403);
    p.answer(100, (vec![(":status".into(), b"503".to_vec())], None));
    p.body_chunks(2, &[5]);
    p.log(2, |s| assert_eq!((s.header(":status"), s.header("location")), (Some("403"), None)));
}

#[test]
fn an_original_body_over_the_drop_limit_is_not_waited_for() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["500"], "body": "page"}])));
    p.error(1, 500);
    p.body(1, 64 * 1024, false);
    p.log(1, |s| assert!(s.body_out.is_empty(), "64 KiB exactly: still waiting"));
    p.body(1, 1, false);
    p.log(1, |s| assert_eq!(s.body_out, b"page", "past the limit: sent with this chunk"));
    p.body(1, 16, true);
    p.log(1, |s| assert_eq!(s.body_out, b"page", "sent once"));
}

#[test]
fn headers_only_and_head_get_a_local_reply() {
    for (method, end_of_stream) in [("GET", true), ("HEAD", true)] {
        let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["404"], "body": "inline page"}])));
        p.request(1, method, "/");
        assert_eq!(p.respond(1, 404, &[], end_of_stream), Action::Pause, "the local reply replaces the response");
        p.log(1, |s| {
            let (status, headers, body) = s.local_reply.clone().unwrap();
            assert_eq!((status, body.as_slice()), (404, &b"inline page"[..]));
            assert!(headers.iter().all(|(k, _)| !k.starts_with(':')));
            assert!(s.set_headers.is_none());
            assert!(s.filter_state.as_deref().unwrap().contains("outcome=inline"));
        });
    }
}

#[test]
fn a_refused_local_reply_or_header_set_leaves_the_original() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["404"], "body": "inline page"}])));
    p.request(1, "GET", "/");
    p.host.state().refuse_headers = true;
    assert_eq!(p.respond(1, 404, &[], false), Action::Continue);
    p.body_chunks(1, &[4]);
    p.log(1, |s| {
        assert!(s.set_headers.is_none() && s.chunks == 0, "no page under the original headers");
        assert!(s.filter_state.is_none(), "nothing served, nothing recorded");
    });
}

#[test]
fn waiters_share_the_leaders_fetch() {
    let mut p = Proxy::new(page_rule());
    for id in 1..=3 {
        assert_eq!(p.error(id, 503), Action::Pause);
    }
    assert_eq!(p.calls(), 1, "one fetch for three misses");
    p.answer(100, ok_answer("down"));
    for id in 1..=3 {
        p.log(id, |s| {
            assert_eq!(s.resumed, 1, "stream {id}");
            assert_eq!(s.header(":status"), Some("503"));
        });
        p.body_chunks(id, &[7]);
        p.log(id, |s| assert_eq!(s.body_out, b"down", "stream {id}"));
    }
    p.log(2, |s| assert!(s.filter_state.as_deref().unwrap().contains("outcome=cache")));
    p.tick();
    assert_eq!((p.host.counter("fetched"), p.host.counter("cache_hit")), (1, 2));
}

#[test]
fn a_dead_leaders_flight_is_taken_over_by_the_next_miss() {
    let mut p = Proxy::new(page_rule());
    p.error(1, 503);
    p.error(2, 503);
    p.gone(1); // Envoy cancels the leader's call: its answer never comes
    assert_eq!(p.error(3, 503), Action::Pause);
    assert_eq!(p.calls(), 2, "the next miss fetches again");
    assert_eq!(p.call(101).from, 3);
    p.answer(101, ok_answer("taken over"));
    for id in [2, 3] {
        p.body_chunks(id, &[1]);
        p.log(id, |s| assert_eq!(s.body_out, b"taken over", "stream {id}"));
    }
}

#[test]
fn the_tick_has_a_dead_leaders_fetch_asked_again_by_a_live_waiter() {
    let mut p = Proxy::new(page_rule());
    p.error(1, 502);
    p.error(2, 502);
    p.tick();
    assert_eq!(p.calls(), 1, "a live leader: keep waiting");
    p.gone(1);
    p.tick();
    assert_eq!(p.calls(), 2);
    assert_eq!(p.call(101).from, 2, "asked again through the waiter (calls need a live request)");
    p.log(2, |s| assert_eq!(s.resumed, 0));
    p.answer(101, ok_answer("asked again"));
    p.body_chunks(2, &[1]);
    p.log(2, |s| assert_eq!(s.body_out, b"asked again"));
}

#[test]
fn with_detached_calls_the_root_asks_again_even_for_nobody_and_fills_the_cache() {
    let mut p = Proxy::new(page_rule());
    p.host.state().detached_calls = true;
    p.error(1, 502);
    p.gone(1);
    p.tick();
    assert_eq!(p.call(101).from, ROOT, "asked again from the root context, which Envoy never cancels");
    p.answer(101, ok_answer("from root"));
    assert_eq!(p.error(2, 502), Action::Continue, "the object is in the cache");
    p.body_chunks(2, &[1]);
    p.log(2, |s| assert_eq!(s.body_out, b"from root"));
}

#[test]
fn a_dead_leaders_waiters_get_the_fallback_when_nobody_can_ask_again() {
    let mut p = Proxy::new(page_rule());
    p.error(1, 502);
    p.error(2, 502);
    p.gone(1);
    p.host.state().refuse_dispatch = true;
    p.tick();
    p.log(2, |s| {
        assert_eq!(s.resumed, 1);
        assert!(s.filter_state.as_deref().unwrap().contains("served=502 outcome=fallback"));
    });
    p.body_chunks(2, &[1]);
    p.log(2, |s| assert!(String::from_utf8_lossy(&s.body_out).contains("502 Bad Gateway")));
    p.tick();
    assert_eq!(p.host.counter("fallback"), 1);
}

/// A 404 page fetched from the error service, a 504 rule with an inline body, and the route
/// timeout of 1 s (every route) the wasm build is told in the policy.
fn deadline_rules(gateway: serde_json::Value) -> serde_json::Value {
    let mut policy = rules(json!([{"matchResponseCodes": ["404"], "path": "/e/404.html"}, gateway]));
    policy["routeTimeoutsMs"] = json!({"*": 1000});
    policy
}

fn gateway_rule() -> serde_json::Value {
    json!({"matchResponseCodes": ["504"], "source": "proxy", "body": "gateway {{status}} for {{originalStatus}} {{codeDetails}}"})
}

impl Proxy {
    /// Request `id` started at `start` (ms) and its response is a 404 with a body to come.
    fn late_404(&mut self, id: u32, start: u64) -> Action {
        self.host.state().streams.entry(id).or_default().start_ms = Some(start);
        self.error(id, 404)
    }

    fn at(&mut self, ms: u64) {
        self.host.state().now_ms = ms;
    }
}

const T0: u64 = 1_000_000;

#[test]
fn a_held_request_is_answered_in_envoys_place_before_its_route_timeout() {
    let mut p = Proxy::new(deadline_rules(gateway_rule()));
    assert_eq!(p.late_404(1, T0), Action::Pause);
    p.at(T0 + 849);
    p.tick();
    p.log(1, |s| assert!(s.local_reply.is_none(), "before the mark: still waiting"));
    p.at(T0 + 850); // 1000 ms less the margin
    p.tick();
    p.log(1, |s| {
        let (status, _, body) = s.local_reply.clone().expect("answered in Envoy's place");
        assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (504, "gateway 504 for 404 response_timeout"));
        assert_eq!(s.resumed, 0, "a local reply, not the held original");
        let fields = s.filter_state.clone().unwrap();
        assert!(fields.starts_with("original=404 served=504 outcome=inline rule="), "{fields}");
        assert!(fields.contains("errorResponseRules[1] cause=response_timeout"), "{fields}");
    });
    // The fetch had nobody else: Envoy cancels it with the request. Should its answer
    // still arrive, nothing is sent twice.
    p.tick();
    assert_eq!(p.host.counter("deadline"), 1);
    p.answer(100, ok_answer("late page"));
    p.log(1, |s| assert_eq!((s.resumed, s.chunks), (0, 0)));
}

#[test]
fn without_a_rule_for_envoys_504_the_request_stays_held_for_its_object() {
    let mut p = Proxy::new(deadline_rules(json!({"matchResponseCodes": ["503"], "body": "other"})));
    p.late_404(1, T0);
    p.at(T0 + 900);
    p.tick();
    p.log(1, |s| assert!(s.local_reply.is_none() && s.resumed == 0 && s.filter_state.is_none()));
    assert_eq!(p.host.counter("deadline"), 0);
    // Envoy's own reply overtakes it when the deadline is Envoy's. Should the policy have
    // said a timeout the route does not have, the object still comes: no hang.
    p.at(T0 + 2000);
    p.answer(100, (ok_answer("the {{codeDetails}} page").0, Some(b"the 404 page".to_vec())));
    p.body_chunks(1, &[5]);
    p.log(1, |s| {
        assert_eq!((s.resumed, s.body_out.as_slice()), (1, &b"the 404 page"[..]));
        assert!(s.filter_state.as_deref().unwrap().contains("served=404 outcome=fetched"));
    });
}

#[test]
fn the_request_facts_are_the_upstreams_again_when_no_rule_answers_in_envoys_place() {
    let mut policy = rules(json!([{"matchResponseCodes": ["404"], "path": "/e/404.html", "template": true}]));
    policy["routeTimeoutsMs"] = json!({"*": 1000});
    let mut p = Proxy::new(policy);
    p.late_404(1, T0);
    p.at(T0 + 900);
    p.tick();
    p.answer(100, ok_answer("made by {{source}} ({{codeDetails}})"));
    p.body_chunks(1, &[5]);
    p.log(1, |s| assert_eq!(s.body_out, b"made by upstream (via_upstream)"));
}

#[test]
fn without_a_known_deadline_nothing_is_answered_early() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["404"], "path": "/e/404.html"}, gateway_rule()])));
    p.late_404(1, T0);
    p.at(T0 + 60_000);
    p.tick();
    p.log(1, |s| assert!(s.local_reply.is_none()));
    p.answer(100, ok_answer("page"));
    p.log(1, |s| assert_eq!(s.resumed, 1));
}

#[test]
fn the_waiters_keep_the_fetch_going_and_get_the_object_when_the_leader_is_answered_early() {
    let mut p = Proxy::new(deadline_rules(gateway_rule()));
    p.late_404(1, T0);
    p.late_404(2, T0 + 500);
    p.at(T0 + 850);
    p.tick();
    p.log(1, |s| assert_eq!(s.local_reply.as_ref().map(|r| r.0), Some(504)));
    p.log(2, |s| assert!(s.local_reply.is_none() && s.resumed == 0, "its own deadline is later"));
    assert_eq!(p.call(101).from, 2, "the leader's call died with it: the waiter asks again at once");
    p.at(T0 + 1100);
    p.answer(101, ok_answer("the 404 page"));
    p.log(2, |s| {
        let (status, _, body) = s.local_reply.clone().expect("under a second to its deadline: at once");
        assert_eq!((status, body.as_slice()), (404, &b"the 404 page"[..]));
        assert!(s.filter_state.as_deref().unwrap().contains("original=404 served=404 outcome=fetched"));
    });
    p.late_404(3, T0 + 1200);
    assert_eq!(p.calls(), 2, "the object filled the cache");
    p.log(3, |s| assert!(s.filter_state.as_deref().unwrap().contains("outcome=cache")));
}

#[test]
fn a_waiter_answered_early_is_released_and_the_others_still_get_the_object() {
    let mut p = Proxy::new(deadline_rules(gateway_rule()));
    p.late_404(1, T0 + 400);
    p.late_404(2, T0);
    p.at(T0 + 850);
    p.tick();
    p.log(2, |s| assert_eq!(s.local_reply.as_ref().map(|r| r.0), Some(504)));
    assert_eq!(p.calls(), 1, "the leader is alive: its call goes on");
    p.answer(100, ok_answer("the 404 page"));
    p.log(1, |s| assert_eq!(s.local_reply.as_ref().map(|r| r.0), Some(404)));
    p.log(2, |s| {
        assert_eq!(s.local_reply.as_ref().map(|r| r.0), Some(504), "answered once, never again");
        assert_eq!((s.resumed, s.chunks), (0, 0));
    });
}

#[test]
fn envoys_504_object_comes_from_the_cache_when_it_is_there() {
    let gateway = json!({"matchResponseCodes": ["504"], "path": "/e/504.html", "overrideResponseCode": 503});
    let mut p = Proxy::new(deadline_rules(gateway));
    // A 504 from upstream fetches the 504 object once.
    p.error(9, 504);
    p.answer(100, ok_answer("gateway page"));
    p.late_404(1, T0);
    p.at(T0 + 850);
    p.tick();
    p.log(1, |s| {
        let (status, _, body) = s.local_reply.clone().unwrap();
        assert_eq!((status, body.as_slice()), (503, &b"gateway page"[..]), "the rule's override applies");
        assert!(s.filter_state.as_deref().unwrap().contains("served=503 outcome=cache"));
    });
}

#[test]
fn far_from_envoys_deadline_the_page_rides_the_original_body_and_close_to_it_goes_at_once() {
    let mut policy = rules(json!([{"matchResponseCodes": ["404"], "body": "page"}]));
    policy["routeTimeoutsMs"] = json!({"*": 15_000});
    let mut p = Proxy::new(policy);
    p.at(T0 + 13_849); // 1001 ms to the mark (15 s less the margin)
    assert_eq!(p.late_404(1, T0), Action::Continue);
    p.body_chunks(1, &[2]);
    p.log(1, |s| assert!(s.local_reply.is_none() && s.body_out == b"page"));
    p.at(T0 + 13_850); // a second exactly: still in place
    assert_eq!(p.late_404(2, T0), Action::Continue);
    p.at(T0 + 13_851);
    assert_eq!(p.late_404(3, T0), Action::Pause);
    p.log(3, |s| assert_eq!(s.local_reply.as_ref().map(|r| r.2.as_slice()), Some(&b"page"[..])));
}

#[test]
fn a_build_with_a_timer_is_told_the_deadline_of_a_held_request_and_answers_when_it_fires() {
    let mut p = Proxy::new(deadline_rules(gateway_rule()));
    p.at(T0);
    assert_eq!(p.streams.get(&1).map(|s| s.deadline()), None);
    p.late_404(1, T0);
    let stream = p.streams.get_mut(&1).unwrap();
    assert_eq!((stream.deadline(), stream.now_ms()), (Some(T0 + 850), T0), "held: the adapter sets its timer");
    p.at(T0 + 850);
    p.streams.get_mut(&1).unwrap().on_deadline();
    p.log(1, |s| assert_eq!(s.local_reply.as_ref().map(|r| r.0), Some(504)));
    assert_eq!(p.streams[&1].deadline(), None, "answered: nothing more to time");
    // A request that is not held has no deadline to set.
    p.error(2, 200);
    assert_eq!(p.streams[&2].deadline(), None);
}

#[test]
fn a_route_timeout_in_the_policy_applies_to_its_route_only() {
    let mut policy = rules(json!([{"matchResponseCodes": ["404"], "path": "/e/404.html"}, gateway_rule()]));
    policy["routeTimeoutsMs"] = json!({"checkout": 1000});
    let mut p = Proxy::new(policy);
    for (id, route) in [(1, "checkout"), (2, "catalog")] {
        p.host.state().streams.entry(id).or_default().route_name = Some(route.into());
        p.late_404(id, T0);
    }
    p.at(T0 + 900);
    p.tick();
    p.log(1, |s| assert_eq!(s.local_reply.as_ref().map(|r| r.0), Some(504)));
    p.log(2, |s| assert!(s.local_reply.is_none(), "another route: Envoy's deadline for it is unknown"));
}

#[test]
fn the_proxys_timeout_and_the_policys_the_shorter_wins_and_no_time_left_means_no_fetch() {
    let mut p = Proxy::new(deadline_rules(gateway_rule()));
    p.host.state().proxy_timeout_ms = Some(400);
    p.late_404(1, T0);
    p.at(T0 + 250);
    p.tick();
    p.log(1, |s| assert_eq!(s.local_reply.as_ref().map(|r| r.0), Some(504), "400 ms less the margin"));
    // Past the mark already when the response arrives: the 404's own fallback, no fetch.
    let calls = p.calls();
    p.at(T0 + 10_000);
    assert_eq!(p.late_404(2, T0 + 9_700), Action::Pause, "a local reply");
    assert_eq!(p.calls(), calls);
    p.log(2, |s| assert!(s.filter_state.as_deref().unwrap().contains("served=404 outcome=fallback")));
}

#[test]
fn a_waiter_that_is_gone_is_skipped() {
    let mut p = Proxy::new(page_rule());
    for id in 1..=3 {
        p.error(id, 500);
    }
    p.gone(2);
    p.answer(100, ok_answer("page"));
    p.log(3, |s| assert_eq!(s.resumed, 1));
    p.log(2, |s| assert!(s.filter_state.is_none() && s.resumed == 0));
    p.tick();
    assert_eq!(p.host.counter("cache_hit"), 1, "only the live waiter");
}

#[test]
fn a_refused_dispatch_serves_the_fallback_at_once() {
    let mut p = Proxy::new(page_rule());
    p.host.state().refuse_dispatch = true;
    assert_eq!(p.error(1, 500), Action::Continue, "nothing to wait for");
    p.body_chunks(1, &[1]);
    p.log(1, |s| assert!(String::from_utf8_lossy(&s.body_out).contains("500 Internal Server Error")));
    p.tick();
    assert_eq!((p.host.counter("fetch_failed.dispatch"), p.host.counter("fallback")), (1, 1));
}

#[test]
fn every_fetch_failure_falls_back_and_is_counted_and_never_cached() {
    let hs = |list: &[(&str, &[u8])]| list.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect::<Vec<_>>();
    let cases: Vec<(&str, Answer, u64)> = vec![
        ("unreachable", (vec![], None), 10),
        ("timeout", (vec![], None), 1000),
        ("status", (hs(&[(":status", b"404"), ("x-envoy-upstream-service-time", b"1")]), Some(b"no".to_vec())), 10),
        ("too_large", (hs(&[(":status", b"200")]), Some(vec![b'x'; 101])), 10),
        ("malformed", (hs(&[(":status", b"200"), ("x-bad", b"a\r\nb")]), Some(b"page".to_vec())), 10),
        ("unreachable", (hs(&[(":status", b"200")]), None), 10), // a 200 whose body the proxy cannot give
    ];
    for (reason, answer, elapsed) in cases {
        let mut p = Proxy::new(page_rule());
        p.error(1, 500);
        p.host.state().now_ms += elapsed;
        p.answer(100, answer);
        p.log(1, |s| {
            assert_eq!(s.resumed, 1, "{reason}");
            assert!(s.filter_state.as_deref().unwrap().contains("outcome=fallback"), "{reason}");
        });
        p.tick();
        assert_eq!((p.host.counter(&format!("fetch_failed.{reason}")), p.host.counter("fallback")), (1, 1), "{reason}");
        assert_eq!(p.error(2, 500), Action::Pause, "{reason}: a failure is never cached");
    }
}

#[test]
fn an_answer_to_another_token_is_ignored() {
    let mut p = Proxy::new(page_rule());
    p.error(1, 500);
    p.streams.get_mut(&1).unwrap().on_call_response(&p.host.ctx(1), 999, &mut delivered(ok_answer("x")));
    p.log(1, |s| assert_eq!(s.resumed, 0));
    p.answer(100, ok_answer("mine"));
    p.log(1, |s| assert_eq!(s.resumed, 1));
}

#[test]
fn the_replacement_is_not_intercepted_again() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["404"], "body": "page"}])));
    p.request(1, "HEAD", "/");
    assert_eq!(p.respond(1, 404, &[], true), Action::Pause);
    // Envoy runs the filter's own local reply through the chain: the stream is done.
    assert_eq!(p.respond(1, 404, &[], true), Action::Continue);
    p.log(1, |s| assert!(s.local_reply.is_some()));
    p.tick();
    assert_eq!(p.host.counter("intercepted"), 1);
}

#[test]
fn grpc_and_connect_are_never_touched() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["5xx"], "body": "page"}])));
    p.request(1, "CONNECT", "/");
    assert_eq!(p.respond(1, 503, &[], false), Action::Continue);
    p.request(2, "GET", "/");
    assert_eq!(p.respond(2, 503, &[("content-type", "application/grpc+proto")], false), Action::Continue);
    p.request(3, "GET", "/");
    assert_eq!(p.respond(3, 503, &[("content-type", "text/plain")], false), Action::Continue);
    p.body_chunks(3, &[1]);
    p.log(1, |s| assert!(s.set_headers.is_none()));
    p.log(2, |s| assert!(s.set_headers.is_none()));
    p.log(3, |s| assert_eq!(s.body_out, b"page"));
}

#[test]
fn counters_survive_a_refused_flush() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["404"], "passthrough": true}])));
    assert_eq!(p.error(1, 404), Action::Continue);
    assert_eq!(p.worker.metrics.passthrough.pending(), 1);
    let saved = std::mem::take(&mut p.host.state().counters);
    p.tick(); // the counter ids point nowhere: the proxy refuses
    assert_eq!(p.worker.metrics.passthrough.pending(), 1, "kept for the next tick");
    p.host.state().counters = saved;
    p.tick();
    assert_eq!((p.host.counter("passthrough"), p.worker.metrics.passthrough.pending()), (1, 0));
}

#[test]
fn a_routes_policy_is_read_from_its_metadata_and_an_unknown_one_is_counted() {
    let mut p = Proxy::new(json!({
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "site"}]},
        "policies": {"checkout": {"errorResponseRules": [{"matchResponseCodes": ["503"], "body": "checkout"}]}}
    }));
    let md = |name: &str| vec![("custom_error_pages".to_string(), "policy".to_string(), name.to_string())];
    for (id, name, want) in [(1, "checkout", "checkout"), (2, "chekout", "site"), (3, "chekout", "site")] {
        p.request(id, "GET", "/");
        p.host.state().streams.get_mut(&id).unwrap().route_metadata = md(name);
        p.respond(id, 503, &[], false);
        p.body_chunks(id, &[1]);
        p.log(id, |s| {
            assert_eq!(String::from_utf8_lossy(&s.body_out), want, "stream {id}");
            let rule = if want == "checkout" {
                "rule=policies.checkout.errorResponseRules[0]"
            } else {
                "rule=defaultCustomErrorResponsePolicy"
            };
            assert!(s.filter_state.as_deref().unwrap().contains(rule), "{:?}", s.filter_state);
        });
    }
    p.tick();
    assert_eq!(p.host.counter("unknown_policy"), 2, "counted per request");
    assert_eq!(p.worker.warned.borrow().len(), 1, "logged once per name");
}

#[test]
fn templates_get_the_request_facts_and_kept_headers_survive() {
    let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["502"], "contentType": "text/plain",
        "body": "{{method}} {{host}}{{path}} {{requestId}} {{codeDetails}} {{source}} {{originalStatus}}"}])));
    p.request(1, "POST", "/a?b=1");
    p.respond(1, 502, &[("retry-after", "9"), ("set-cookie", "s=1"), ("content-length", "3")], false);
    p.body_chunks(1, &[3]);
    p.log(1, |s| {
        assert_eq!(String::from_utf8_lossy(&s.body_out), "POST shop.test/a?b=1 r1 via_upstream upstream 502");
        assert_eq!(s.header("retry-after"), Some("9"), "kept from the original");
        assert_eq!(s.header("set-cookie"), None);
    });
}

#[test]
fn decisions_see_host_path_headers_route_and_origin() {
    let mut p = Proxy::new(json!({
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "proxy-wide"}]},
        "hostRules": [{"hosts": ["shop.test"], "pathMatcher": "m"}],
        "pathMatchers": [{"name": "m", "routeRules": [
            {"priority": 1, "matchRules": [{"prefixMatch": "/beta/", "headerMatches": [{"headerName": "x-beta", "exactMatch": "1,2"}]}],
             "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["500"], "body": "beta"}]}},
            {"priority": 2, "matchRules": [{"routeName": "checkout"}],
             "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["500"], "body": "checkout"}]}},
            {"priority": 3, "matchRules": [{}],
             "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["503"], "source": "proxy", "body": "made by envoy"}]}}]}]
    }));
    // `setup` adjusts the stream before its request passes (the filter copies the request
    // headers then) and before its response comes.
    let serve = |p: &mut Proxy, id: u32, path: &str, setup: &dyn Fn(&mut super::fake::StreamLog), status: u16| {
        p.host.state().alive.insert(id);
        setup(p.host.state().streams.entry(id).or_default());
        p.request(id, "GET", path);
        setup(p.host.state().streams.get_mut(&id).unwrap());
        p.respond(id, status, &[], false);
        p.body_chunks(id, &[1]);
        p.log(id, |s| String::from_utf8_lossy(&s.body_out).into_owned())
    };
    let beta = |s: &mut super::fake::StreamLog| {
        if s.request.is_empty() {
            s.request.push(("x-beta".into(), "1".into()));
            s.request.push(("x-beta".into(), "2".into())); // two values: matched joined with ","
        }
    };
    assert_eq!(serve(&mut p, 1, "/beta/x", &beta, 500), "beta");
    assert_eq!(serve(&mut p, 2, "/beta/x", &|_| {}, 500), "proxy-wide", "no header: no match");
    let route = |s: &mut super::fake::StreamLog| s.route_name = Some("checkout".into());
    assert_eq!(serve(&mut p, 3, "/x", &route, 500), "checkout");
    let empty_route = |s: &mut super::fake::StreamLog| s.route_name = Some(String::new());
    assert_eq!(serve(&mut p, 4, "/x", &empty_route, 500), "proxy-wide");
    let mut other_host = Proxy::new(
        json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "proxy-wide"}]},
        "hostRules": [{"hosts": ["other.test"], "pathMatcher": "m"}],
        "pathMatchers": [{"name": "m", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["500"], "body": "other"}]}}]}),
    );
    assert_eq!(serve(&mut other_host, 1, "/", &|_| {}, 500), "proxy-wide", "the request's host is shop.test");
}

#[test]
fn the_origin_of_a_response_comes_from_envoys_code_details() {
    for (details, want) in [
        ("via_upstream", "proxy-wide"),
        ("upstream_reset_before_response_started{connection_failure}", "made by envoy"),
    ] {
        let mut p = Proxy::new(rules(json!([{"matchResponseCodes": ["5xx"], "body": "proxy-wide"},
                                            {"matchResponseCodes": ["503"], "source": "proxy", "body": "made by envoy"}])));
        p.request(1, "GET", "/");
        {
            let mut s = p.host.state();
            let log = s.streams.get_mut(&1).unwrap();
            log.response = vec![(":status".into(), "503".into())];
            log.code_details = details.into();
        }
        p.streams.get_mut(&1).unwrap().on_response_headers(&p.host.ctx(1), false);
        p.body_chunks(1, &[1]);
        p.log(1, |s| assert_eq!(String::from_utf8_lossy(&s.body_out), want, "{details}"));
    }
}

#[test]
fn idle_counters_cost_no_host_call_and_a_new_policy_flushes_the_old_counts() {
    let mut p = Proxy::new(page_rule());
    p.tick();
    assert_eq!(p.host.0.borrow().counter_adds, 0, "nothing counted, nothing added");
    p.error(1, 200);
    p.request(2, "GET", "/");
    p.respond(2, 404, &[], false); // a miss: intercepted, fetching
    p.worker.flush_counters(&p.host.ctx(ROOT));
    assert_eq!(p.host.counter("intercepted"), 1, "flushed without waiting for a tick");
    assert_eq!(p.host.0.borrow().counter_adds, 1);
}

#[test]
fn a_build_without_a_timer_ticks_from_requests_once_a_tick_is_due() {
    let mut p = Proxy::new(page_rule());
    p.request(1, "GET", "/");
    p.respond(1, 404, &[], false); // intercepted: one count pending
    let ctx = p.host.ctx(1);
    super::complete::tick_if_due(&p.worker, &ctx);
    assert_eq!(p.host.counter("intercepted"), 0, "no tick is due yet: nothing added");
    p.host.state().now_ms += u64::from(super::TICK_MS) - 1;
    super::complete::tick_if_due(&p.worker, &ctx);
    assert_eq!(p.host.counter("intercepted"), 0, "one millisecond short of a tick");
    p.host.state().now_ms += 1;
    super::complete::tick_if_due(&p.worker, &ctx);
    assert_eq!(p.host.counter("intercepted"), 1, "due: the tick's work ran");
    super::complete::tick_if_due(&p.worker, &ctx);
    assert_eq!(p.host.0.borrow().counter_adds, 1, "the clock moved: not due again");
}

#[test]
fn a_build_without_a_tick_runs_the_workers_work_from_its_streams() {
    let mut p = Proxy::new(page_rule());
    p.error(1, 502);
    p.error(2, 502);
    p.error(3, 502);
    // Envoy destroys the filter whose call was in flight: a waiter asks again at once.
    p.host.state().alive.remove(&1);
    p.streams.remove(&1).unwrap().on_destroyed();
    assert_eq!(p.call(101).from, 2);
    // Counts reach the proxy when a stream completes...
    p.streams[&2].flush_counters(&p.host.ctx(2));
    assert_eq!(p.host.counter("intercepted"), 3);
    // ...and the tick's work runs from a stream's hook once due.
    p.error(4, 503);
    p.host.state().now_ms += u64::from(super::TICK_MS);
    p.streams[&3].tick_if_due(&p.host.ctx(3));
    assert_eq!(p.host.counter("intercepted"), 4);
}

#[test]
fn the_counter_names_a_host_may_define_ahead_are_the_ones_the_runtime_asks_for() {
    let policy = rules(
        json!([{"matchResponseCodes": ["404"], "body": "a"}, {"name": "b", "matchResponseCodes": ["500"], "passthrough": true}]),
    );
    let p = Proxy::new(policy.clone());
    let asked: Vec<String> = p.host.0.borrow().counters.iter().map(|(n, _)| n.clone()).collect();
    let cfg = config::load(policy.to_string().as_bytes()).unwrap();
    assert_eq!(super::counter_names(&cfg), asked);
    assert!(asked.contains(&"custom_error_pages.decisions.b.passthrough".to_string()));
    assert!(asked.contains(&"custom_error_pages.decisions.default_rule0.fetched".to_string()));
}

/// Each reply counts once under the rule that decided it and what it served: fetched, from
/// the cache, inline, the fallback, a stale copy; a passthrough under its rule too. Together
/// they add up to the filter's own counters.
#[test]
fn every_decision_counts_under_its_rule_and_outcome() {
    let mut p = Proxy::new(json!({
        "errorService": {"cluster": "errors", "cacheTtlSeconds": 10},
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"name": "missing", "matchResponseCodes": ["404"], "path": "/404.html"},
            {"matchResponseCodes": ["403"], "passthrough": true},
            {"name": "gone", "matchResponseCodes": ["410"], "body": "gone"},
            {"name": "down", "matchResponseCodes": ["503"], "path": "/503.html", "body": "fallback"}
        ]}
    }));
    let failed: Answer = (vec![(":status".into(), b"500".to_vec())], None);
    assert_eq!(p.error(1, 404), Action::Pause);
    p.host.state().now_ms += 7;
    p.answer(100, ok_answer("page"));
    p.body_chunks(1, &[1]);
    assert_eq!(p.error(2, 404), Action::Continue); // cached
    p.body_chunks(2, &[1]);
    assert_eq!(p.error(3, 403), Action::Continue);
    assert_eq!(p.error(4, 410), Action::Continue);
    p.body_chunks(4, &[1]);
    assert_eq!(p.error(5, 503), Action::Pause);
    p.answer(101, failed.clone());
    p.body_chunks(5, &[1]);
    // The 404 page expires; its next fetch fails: the expired copy goes out, stale.
    p.host.state().now_ms += 11_000;
    p.tick();
    assert_eq!(p.error(6, 404), Action::Pause);
    p.answer(102, failed);
    p.body_chunks(6, &[1]);
    p.tick();
    let rule = |name: &str, outcome: &str| p.host.counter(&format!("decisions.{name}.{outcome}"));
    let counted = [
        rule("missing", "fetched"),
        rule("missing", "cache"),
        rule("missing", "stale"),
        rule("default_rule1", "passthrough"),
        rule("gone", "inline"),
        rule("down", "fallback"),
    ];
    assert_eq!(counted, [1, 1, 1, 1, 1, 1]);
    let nowhere =
        [rule("missing", "inline"), rule("gone", "cache"), rule("down", "fetched"), rule("default_rule1", "stale")];
    assert_eq!(nowhere, [0; 4], "no reply counts twice or under another outcome");
    // The access log says where each page came from, and how long a fetch waited on took.
    let logged: Vec<String> = (1..=6).map(|id| p.log(id, |s| s.filter_state.clone().unwrap())).collect();
    let tail = |s: &str| s.split_once(" rule=").map(|(_, t)| t.split_once(' ').map_or("", |(_, t)| t).to_string());
    let tails: Vec<String> = logged.iter().filter_map(|l| tail(l)).collect();
    assert_eq!(
        tails,
        ["cache=miss fetch_ms=7", "cache=hit", "", "", "cache=miss fetch_ms=0", "cache=stale fetch_ms=0"]
    );
    assert!(logged[2].starts_with("original=403 served=403 outcome=passthrough rule="), "{}", logged[2]);
    let served: u64 = counted.iter().sum::<u64>() - rule("default_rule1", "passthrough");
    assert_eq!(served, p.host.counter("intercepted"));
    assert_eq!(
        (rule("missing", "stale"), rule("gone", "inline"), rule("down", "fallback")),
        (p.host.counter("stale"), p.host.counter("inline"), p.host.counter("fallback"))
    );
}

// Pages ready before the error: prewarm, refresh, stale copies (a worker whose calls outlive
// requests, as the proxy-wasm root context's do).

impl Proxy {
    fn with_background(policy: serde_json::Value) -> Proxy {
        let host = Fake::default();
        host.state().now_ms = 1_000_000;
        host.state().detached_calls = true;
        let cfg = config::load(policy.to_string().as_bytes()).unwrap();
        let worker = Rc::new(Worker::new(host.clone(), std::sync::Arc::new(cfg)));
        Proxy { host, worker, streams: BTreeMap::new() }
    }

    /// The paths of the calls made so far, in order.
    fn call_paths(&self) -> Vec<String> {
        let s = self.host.0.borrow();
        s.calls.iter().map(|c| c.headers.iter().find(|(n, _)| *n == ":path").unwrap().1.clone()).collect()
    }

    fn advance(&mut self, ms: u64) {
        self.host.state().now_ms += ms;
        self.tick();
    }

    /// Answers every call not answered yet with `answer` (from the root).
    fn answer_all(&mut self, answered: &mut usize, answer: impl Fn(&str) -> Answer) {
        let paths = self.call_paths();
        while *answered < paths.len() {
            let token = 100 + *answered as u32;
            *answered += 1;
            self.answer(token, answer(&paths[token as usize - 100]));
        }
    }
}

fn failed_answer() -> Answer {
    (Vec::new(), None) // no response: connect failure
}

fn warm_policy(ttl: u64, stale: u64) -> serde_json::Value {
    json!({"errorService": {"cluster": "errors", "timeoutMs": 1000, "cacheTtlSeconds": ttl,
                            "staleIfErrorSeconds": stale, "prewarmCodes": [500, 502]},
           "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
               {"matchResponseCodes": ["404"], "path": "/404.html",
                "variants": [{"contentType": "application/json", "path": "/404.json"}]},
               {"matchResponseCodes": ["5xx"], "path": "/{status}.html"},
               {"matchResponseCodes": ["503"], "body": "inline"}]}})
}

#[test]
fn the_first_tick_prewarms_every_object_the_policy_can_serve() {
    let mut p = Proxy::with_background(warm_policy(60, 0));
    assert_eq!(p.calls(), 0, "nothing before the first tick");
    p.tick();
    let mut paths = p.call_paths();
    paths.sort();
    assert_eq!(
        paths,
        ["/404.html", "/404.json", "/500.html", "/502.html"],
        "each variant, {{status}} over prewarmCodes"
    );
    assert!(p.host.0.borrow().calls.iter().all(|c| c.from == ROOT), "from the worker's own context");
    let call = p.call(100);
    assert!(call.headers.iter().all(|(n, _)| !n.starts_with("x-original") && *n != "x-request-id"));
    let mut answered = 0;
    p.answer_all(&mut answered, ok_answer);
    p.advance(100);
    assert_eq!(p.calls(), 4, "nothing more while every object is fresh");
    assert_eq!(p.error(1, 502), Action::Continue, "the first error finds its page: no fetch on its path");
    p.body_chunks(1, &[1]);
    p.log(1, |s| assert_eq!(s.body_out, b"/502.html"));
    let logged = p.log(1, |s| s.filter_state.clone().unwrap());
    assert!(logged.ends_with(" cache=prewarmed"), "a copy fetched ahead, no fetch waited on: {logged}");
    p.tick();
    assert_eq!((p.host.counter("prewarmed"), p.host.counter("cache_hit")), (4, 1));
}

#[test]
fn without_detached_calls_nothing_is_fetched_in_the_background() {
    let mut p = Proxy::new(warm_policy(60, 0));
    p.tick();
    assert_eq!(p.calls(), 0);
}

#[test]
fn prewarm_off_for_a_service_fetches_nothing_ahead() {
    let mut policy = warm_policy(60, 0);
    policy["errorService"]["prewarm"] = json!(false);
    let mut p = Proxy::with_background(policy);
    p.tick();
    assert_eq!(p.calls(), 0);
}

/// A `{status}` page for every error code, each prewarmed: 200 objects.
fn every_code_policy() -> serde_json::Value {
    let codes: Vec<u16> = (400..=599).collect();
    let mut policy = warm_policy(60, 0);
    policy["errorService"]["prewarmCodes"] = json!(codes);
    policy["defaultCustomErrorResponsePolicy"]["errorResponseRules"] =
        json!([{"matchResponseCodes": ["4xx", "5xx"], "path": "/{status}.html"}]);
    policy
}

#[test]
fn prewarm_keeps_at_most_four_fetches_in_flight() {
    let policy = every_code_policy();
    let mut p = Proxy::with_background(policy);
    p.tick();
    assert_eq!(p.calls(), 4);
    p.advance(100);
    assert_eq!(p.calls(), 4, "none more while four are in flight");
    p.answer(100, ok_answer("a"));
    p.advance(100);
    assert_eq!(p.calls(), 5, "one answered, one more asked");
}

#[test]
fn a_failed_prewarm_is_retried_with_backoff() {
    let mut p = Proxy::with_background(rules(json!([{"matchResponseCodes": ["404"], "path": "/404.html"}])));
    p.tick();
    p.answer(100, failed_answer());
    p.advance(900);
    assert_eq!(p.calls(), 1, "not before one second");
    p.advance(100);
    assert_eq!(p.calls(), 2, "after one second");
    p.answer(101, failed_answer());
    p.advance(1_900);
    assert_eq!(p.calls(), 2, "the second wait is two seconds");
    p.advance(100);
    assert_eq!(p.calls(), 3);
    p.answer(102, ok_answer("warm"));
    p.tick();
    assert_eq!((p.host.counter("prewarm_failed"), p.host.counter("prewarmed")), (2, 1));
}

#[test]
fn an_object_never_held_is_given_up_after_five_attempts() {
    let mut p = Proxy::with_background(rules(json!([{"matchResponseCodes": ["404"], "path": "/404.html"}])));
    p.tick();
    let mut answered = 0;
    for _ in 0..60 {
        p.answer_all(&mut answered, |_| failed_answer());
        p.advance(1_000);
    }
    assert_eq!(p.calls(), 5, "five attempts, then a request's miss fetches it");
    assert_eq!(p.error(1, 404), Action::Pause);
    assert_eq!(p.calls(), 6);
}

#[test]
fn backoff_doubles_up_to_ten_seconds() {
    use super::schedule::backoff_ms;
    assert_eq!([1, 2, 3, 4, 5, 6, 40].map(backoff_ms), [1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]);
}

#[test]
fn a_held_object_is_refreshed_before_it_expires() {
    let mut p = Proxy::with_background(rules(json!([{"matchResponseCodes": ["404"], "path": "/404.html"}])));
    p.host.state().now_ms = 1_000_000;
    p.tick();
    p.answer(100, ok_answer("v1")); // TTL: the default 300 s
    p.advance(224_000);
    assert_eq!(p.calls(), 1, "fresh for three quarters of its TTL");
    p.advance(1_000);
    assert_eq!(p.calls(), 2, "then fetched again, before it expires");
    p.answer(101, ok_answer("v2"));
    p.tick();
    assert_eq!(p.host.counter("refreshed"), 1);
    p.error(1, 404);
    p.body_chunks(1, &[1]);
    p.log(1, |s| assert_eq!(s.body_out, b"v2"));
}

#[test]
fn a_failed_refresh_keeps_the_copy_and_it_is_served_stale_until_its_window_ends() {
    let mut p = Proxy::with_background(json!({
        "errorService": {"cluster": "errors", "cacheTtlSeconds": 2, "staleIfErrorSeconds": 30},
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/404.html"}]}}));
    p.tick();
    p.answer(100, ok_answer("kept"));
    let mut answered = 1;
    for step in 0..40 {
        p.advance(1_000);
        p.answer_all(&mut answered, |_| failed_answer());
        let id = 10 + step;
        let elapsed_s = u64::from(step) + 1;
        let action = p.error(id, 404);
        if elapsed_s < 32 {
            assert_eq!(action, Action::Continue, "never held: the copy goes at once ({elapsed_s} s)");
        } else {
            assert_eq!(action, Action::Pause, "past the window nothing is kept: fetched ({elapsed_s} s)");
            p.answer_all(&mut answered, |_| failed_answer());
        }
        p.body_chunks(id, &[1]);
        let out = p.log(id, |s| s.body_out.clone());
        if elapsed_s < 32 {
            assert_eq!(out, b"kept", "within TTL and stale window ({elapsed_s} s)");
        } else {
            assert!(String::from_utf8_lossy(&out).contains("404 Not Found"), "past the window: the built-in page");
        }
    }
    p.tick();
    assert!(p.host.counter("stale") >= 29 && p.host.counter("refresh_failed") >= 5);
}

#[test]
fn the_error_service_back_ends_the_stale_copies() {
    let mut p = Proxy::with_background(json!({
        "errorService": {"cluster": "errors", "cacheTtlSeconds": 2},
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/404.html"}]}}));
    p.tick();
    p.answer(100, ok_answer("old"));
    let mut answered = 1;
    for _ in 0..5 {
        p.advance(1_000);
        p.answer_all(&mut answered, |_| failed_answer());
    }
    p.error(1, 404);
    p.body_chunks(1, &[1]);
    p.log(1, |s| assert_eq!(s.body_out, b"old"));
    for _ in 0..12 {
        p.advance(1_000);
        p.answer_all(&mut answered, |_| ok_answer("new"));
    }
    p.error(2, 404);
    p.body_chunks(2, &[1]);
    p.log(2, |s| assert_eq!(s.body_out, b"new"));
    assert!(p.log(2, |s| s.filter_state.as_deref().unwrap_or("").contains("outcome=cache")), "fresh again, not stale");
}

#[test]
fn a_worker_without_background_calls_fetches_on_the_request_path_and_falls_back_to_its_stale_copy() {
    let mut p = Proxy::new(json!({
        "errorService": {"cluster": "errors", "cacheTtlSeconds": 2, "staleIfErrorSeconds": 60},
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/404.html"}]}}));
    p.error(1, 404);
    p.answer(100, ok_answer("first"));
    p.body_chunks(1, &[1]);
    p.host.state().now_ms += 3_000;
    p.tick();
    assert_eq!(p.error(2, 404), Action::Pause, "expired: fetched again on the request's path");
    p.answer(101, failed_answer());
    p.body_chunks(2, &[1]);
    p.log(2, |s| assert_eq!(s.body_out, b"first"));
    assert!(p.log(2, |s| s.filter_state.as_deref().unwrap_or("").contains("outcome=stale")));
    p.host.state().now_ms += 60_000;
    p.tick();
    assert_eq!(p.error(3, 404), Action::Pause);
    p.answer(102, failed_answer());
    p.body_chunks(3, &[1]);
    assert!(
        p.log(3, |s| s.filter_state.as_deref().unwrap_or("").contains("outcome=fallback")),
        "past the stale window"
    );
}

#[test]
fn an_object_that_may_not_be_cached_is_not_refreshed() {
    let mut p = Proxy::with_background(rules(json!([{"matchResponseCodes": ["404"], "path": "/404.html"}])));
    p.tick();
    let (mut headers, body) = ok_answer("private");
    headers.push(("cache-control".into(), b"no-store".to_vec()));
    p.answer(100, (headers, body));
    p.advance(10_000);
    assert_eq!(p.calls(), 1);
}

#[test]
fn prewarm_stops_at_the_cache_bound_and_evicts_nothing() {
    let mut policy = every_code_policy();
    policy["errorService"]["maxBodyBytes"] = json!(16 * 1024 * 1024);
    let mut p = Proxy::with_background(policy);
    let big = "x".repeat(6 * 1024 * 1024); // three of these do not fit in 16 MiB
    let mut answered = 0;
    for _ in 0..5 {
        p.advance(100);
        p.answer_all(&mut answered, |_| ok_answer(&big));
    }
    assert_eq!(p.worker.cache.borrow().len(), 2);
    let asked = p.calls();
    assert!(asked <= 8, "stopped once an object did not fit: {asked} asked");
    for _ in 0..20 {
        p.advance(1_000);
    }
    assert_eq!(p.calls(), asked, "and nothing asked after");
    assert_eq!(p.worker.cache.borrow().len(), 2, "the two that fit are kept, none evicted");
}

#[test]
fn the_built_in_page_goes_out_under_the_original_error_when_a_success_override_has_nothing_to_serve() {
    let mut p =
        Proxy::new(rules(json!([{"matchResponseCodes": ["503"], "path": "/m.html", "overrideResponseCode": 200}])));
    p.error(1, 503);
    p.answer(100, failed_answer());
    p.body_chunks(1, &[1]);
    p.log(1, |s| {
        assert_eq!(s.header(":status"), Some("503"));
        assert!(s.filter_state.as_deref().unwrap_or("").contains("original=503 served=503 outcome=fallback"));
    });
}

#[test]
fn the_override_to_a_success_stands_when_the_page_comes() {
    let mut p =
        Proxy::new(rules(json!([{"matchResponseCodes": ["503"], "path": "/m.html", "overrideResponseCode": 200}])));
    p.error(1, 503);
    p.answer(100, ok_answer("maintenance"));
    p.body_chunks(1, &[1]);
    p.log(1, |s| assert_eq!(s.header(":status"), Some("200")));
}

fn absent_answer() -> Answer {
    let headers = [(":status", "404"), ("content-type", "text/plain"), ("x-envoy-upstream-service-time", "1")];
    (headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(), Some(b"no such page".to_vec()))
}

#[test]
fn an_object_the_error_service_does_not_have_is_not_prewarmed_again() {
    let mut p = Proxy::with_background(rules(json!([{"matchResponseCodes": ["404"], "path": "/404.html"}])));
    p.tick();
    p.answer(100, absent_answer());
    for _ in 0..30 {
        p.advance(1_000);
    }
    assert_eq!(p.calls(), 1, "a non-2xx answer ends the prewarm of that object");
}

#[test]
fn a_held_object_whose_refresh_is_refused_is_still_retried() {
    let mut p = Proxy::with_background(json!({
        "errorService": {"cluster": "errors", "cacheTtlSeconds": 2},
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/404.html"}]}}));
    p.tick();
    p.answer(100, ok_answer("held"));
    p.advance(1_500);
    assert_eq!(p.calls(), 2, "the refresh");
    p.answer(101, absent_answer());
    p.advance(1_000);
    assert_eq!(p.calls(), 3, "asked again after the backoff: the copy is kept meanwhile");
}

#[test]
fn a_request_waiting_on_a_failed_prewarm_gets_a_fetch_of_its_own() {
    let mut p = Proxy::with_background(rules(json!([{"matchResponseCodes": ["404"], "path": "/404.html"}])));
    p.tick();
    assert_eq!(p.error(1, 404), Action::Pause, "waits on the prewarm in flight");
    assert_eq!(p.calls(), 1, "no second fetch while the first is in flight");
    p.answer(100, failed_answer());
    assert_eq!(p.calls(), 2, "the prewarm failed: asked again at once for the waiting request");
    assert_eq!(p.call(101).from, ROOT);
    p.answer(101, ok_answer("its own"));
    p.body_chunks(1, &[1]);
    p.log(1, |s| assert_eq!(s.body_out, b"its own"));
    let logged = p.log(1, |s| s.filter_state.clone().unwrap());
    assert!(logged.ends_with(" cache=miss fetch_ms=0"), "it waited on a fetch: {logged}");
    p.tick();
    let counts = ["prewarmed", "prewarm_failed", "fetched"].map(|c| p.host.counter(c));
    assert_eq!(counts, [0, 1, 1], "the second fetch is the request's, not a prewarm");
}

#[test]
fn the_fetch_asked_again_for_a_waiter_is_timed_from_when_it_was_asked() {
    let mut p = Proxy::with_background(rules(json!([{"matchResponseCodes": ["404"], "path": "/404.html"}])));
    p.tick();
    p.error(1, 404);
    p.host.state().now_ms += 600;
    p.answer(100, failed_answer()); // 600 ms after it was asked: unreachable, not a timeout
    p.host.state().now_ms += 500;
    p.answer(101, failed_answer()); // 500 ms after it was asked again, 1,100 after the first
    p.tick();
    assert_eq!((p.host.counter("fetch_failed.unreachable"), p.host.counter("fetch_failed.timeout")), (2, 0));
}

#[test]
fn an_object_a_request_fetched_is_kept_fresh_too() {
    let mut p = Proxy::with_background(json!({
        "errorService": {"cluster": "errors", "cacheTtlSeconds": 4, "prewarm": false},
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/404.html"}]}}));
    p.tick();
    assert_eq!(p.calls(), 0, "nothing prewarmed");
    p.error(1, 404);
    p.answer(100, ok_answer("v1"));
    p.body_chunks(1, &[1]);
    p.advance(2_900);
    assert_eq!(p.calls(), 1);
    p.advance(200);
    assert_eq!((p.calls(), p.call(101).from), (2, ROOT), "refreshed from the worker's own context");
    assert!(p.call(101).headers.iter().all(|(n, _)| *n != "x-request-id"), "without the first request's facts");
}

#[test]
fn a_rule_with_response_matches_reads_the_original_responses_headers() {
    let mut p = Proxy::new(rules(json!([
        {"matchResponseCodes": ["404"], "passthrough": true,
         "responseHeaderMatches": [{"headerName": "content-type", "prefixMatch": "application/problem+json"}]},
        {"matchResponseCodes": ["404"], "body": "page"}])));
    p.request(1, "GET", "/");
    assert_eq!(p.respond(1, 404, &[("content-type", "application/problem+json")], false), Action::Continue);
    p.body_chunks(1, &[5]);
    p.log(1, |s| {
        assert!(s.set_headers.is_none() && s.body_out.is_empty(), "left alone");
        assert!(s.filter_state.as_deref().unwrap().contains("outcome=passthrough"));
    });
    p.request(2, "GET", "/");
    assert_eq!(p.respond(2, 404, &[("content-type", "text/html")], false), Action::Continue);
    p.body_chunks(2, &[5]);
    p.log(2, |s| assert_eq!(s.body_out, b"page"));
}

#[test]
fn the_language_accept_language_chooses_names_the_object_and_varies_the_reply() {
    let mut p = Proxy::new(rules(json!([
        {"matchResponseCodes": ["404"], "path": "/{lang}/404.html", "languages": ["en", "de"]},
        {"matchResponseCodes": ["500"], "body": "<html lang=\"{{lang}}\">", "languages": ["en", "de", "fr"]}])));
    p.host.state().streams.entry(1).or_default().request =
        vec![("accept-language".into(), "de-CH,de;q=0.9,en;q=0.5".into())];
    p.request(1, "GET", "/");
    assert_eq!(p.respond(1, 404, &[], false), Action::Pause);
    assert!(p.call(100).headers.iter().any(|(k, v)| k == ":path" && v == "/de/404.html"));
    p.answer(100, ok_answer("Seite fehlt"));
    p.body_chunks(1, &[1]);
    p.log(1, |s| {
        assert_eq!(s.body_out, "Seite fehlt".as_bytes());
        assert_eq!(s.header("vary"), Some("Accept-Language"));
    });
    // An English-only client: the English object, its own fetch (another cache key).
    p.host.state().streams.entry(2).or_default().request = vec![("accept-language".into(), "en-US".into())];
    p.request(2, "GET", "/");
    assert_eq!(p.respond(2, 404, &[], false), Action::Pause);
    assert!(p.call(101).headers.iter().any(|(k, v)| k == ":path" && v == "/en/404.html"));
    // No Accept-Language: the default, English, now cached.
    assert_eq!(p.error(3, 404), Action::Pause, "waits on the English fetch in flight");
    // `{{lang}}` in an inline body.
    p.host.state().streams.entry(4).or_default().request = vec![("accept-language".into(), "fr".into())];
    p.request(4, "GET", "/");
    assert_eq!(p.respond(4, 500, &[], false), Action::Continue);
    p.body_chunks(4, &[1]);
    p.log(4, |s| assert_eq!(s.body_out, b"<html lang=\"fr\">"));
}

// The seams between the worker (which decides and returns data) and the completions
// (which act on each request through its own context).

#[test]
fn completing_a_flight_returns_its_waiters_and_acts_on_no_stream() {
    let mut p = Proxy::new(page_rule());
    p.error(1, 503);
    p.error(2, 503);
    let here = p.host.ctx(1);
    let released = p.worker.complete(&here, 100, &mut delivered(ok_answer("page"))).expect("its flight");
    assert_eq!(released.waiters.iter().map(|w| w.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(released.fetched_by, Some(1));
    assert_eq!(released.object.as_deref().map(|o| &*o.body), Some(&b"page"[..]));
    for id in [1, 2] {
        p.log(id, |s| {
            assert_eq!((s.resumed, s.set_headers.is_none(), s.filter_state.is_none()), (0, true, true), "{id}");
        });
    }
    assert!(p.worker.flights.borrow().is_empty(), "the flight is done");
    assert!(p.worker.complete(&here, 100, &mut delivered(ok_answer("again"))).is_none(), "answered once");
}

#[test]
fn an_answer_no_flight_waits_for_returns_nothing_to_apply() {
    let mut p = Proxy::new(page_rule());
    p.error(1, 503);
    let here = p.host.ctx(1);
    assert!(p.worker.complete(&here, 999, &mut delivered(ok_answer("x"))).is_none());
    assert_eq!(p.worker.flights.borrow().len(), 1, "the flight for token 100 still waits");
}

#[test]
fn only_the_waiters_whose_deadline_came_are_taken_and_one_put_back_waits_again() {
    let mut p = Proxy::new(deadline_rules(gateway_rule()));
    p.late_404(1, 1_000_000);
    p.late_404(2, 1_000_500);
    let first_deadline = p.streams[&1].deadline().expect("held with a deadline");
    assert!(p.worker.take_expired(first_deadline - 1).is_empty(), "none due a millisecond early");
    let due = p.worker.take_expired(first_deadline);
    assert_eq!(due.iter().map(|(_, w)| w.id).collect::<Vec<_>>(), [1], "only the first is due");
    assert_eq!(p.worker.flights.borrow().values().map(|f| f.waiters.len()).sum::<usize>(), 1);
    let (key, waiter) = due.into_iter().next().unwrap();
    p.worker.wait_again(&key, waiter);
    assert_eq!(p.worker.flights.borrow()[&key].waiters.len(), 2, "back on its flight");
}

#[test]
fn a_context_is_had_for_a_live_stream_only() {
    use super::host::{Context, Host};
    let mut p = Proxy::new(page_rule());
    p.error(1, 503);
    assert_eq!(p.host.context(1).map(|c| c.id()), Some(1));
    p.gone(1);
    assert!(p.host.context(1).is_none(), "gone: nothing to act on");
    assert!(p.host.context(7).is_none(), "never was");
}

#[test]
fn a_leader_answered_early_disowns_its_flight_and_a_waiter_does_not() {
    let mut p = Proxy::new(page_rule());
    p.error(1, 503);
    p.error(2, 503);
    let key = p.worker.flights.borrow().keys().next().cloned().unwrap();
    p.worker.disown(&key, 2);
    assert_eq!(p.worker.flights.borrow()[&key].owner, Some(1), "not the waiter's call");
    p.worker.disown(&key, 1);
    assert_eq!(p.worker.flights.borrow()[&key].owner, None, "its call ends with it");
}

// One thread fetches ahead for the others (the dynamic module's main thread and its worker
// threads, each with its own worker and cache).

/// A main-thread worker putting what it fetches on a shelf, and a worker thread reading it.
fn shelf_pair(policy: serde_json::Value) -> (Proxy, Proxy) {
    use super::{Sharing, Shelf};
    let shelf = std::sync::Arc::new(Shelf::new(crate::cache::MAX_ENTRIES));
    let mut main = Proxy::with_background(policy.clone());
    let host = main.host.clone();
    main.worker = Rc::new(Worker::new(host, main.worker.config.clone()).sharing(Sharing::Publishes(shelf.clone())));
    let mut thread = Proxy::new(policy);
    let host = thread.host.clone();
    thread.worker = Rc::new(Worker::new(host, thread.worker.config.clone()).sharing(Sharing::Reads(shelf)));
    (main, thread)
}

fn page_of(path: &str) -> Answer {
    ok_answer(&format!("page {path}"))
}

#[test]
fn a_worker_thread_serves_what_the_main_thread_fetched_ahead_with_no_fetch_of_its_own() {
    let (mut main, mut thread) = shelf_pair(warm_policy(60, 0));
    main.tick();
    let mut answered = 0;
    main.answer_all(&mut answered, page_of);
    assert!(answered >= 4, "the main thread prewarmed the policy's objects");
    assert_eq!(thread.error(1, 502), Action::Continue, "at hand: nothing held");
    thread.body_chunks(1, &[3]);
    thread.log(1, |s| {
        assert_eq!(s.body_out, b"page /502.html");
        let logged = s.filter_state.as_deref().unwrap();
        assert!(logged.contains("outcome=cache") && logged.contains("cache=prewarmed"), "{logged}");
    });
    assert_eq!(thread.calls(), 0, "the worker thread never called the error service");
    assert_eq!(thread.worker.cache.borrow().len(), 1, "taken into its own cache");
    // Its twin: an object the main thread does not hold is fetched on the request's path.
    assert_eq!(thread.error(2, 504), Action::Pause);
    assert_eq!(thread.calls(), 1);
}

#[test]
fn a_copy_past_its_ttl_on_the_shelf_goes_out_stale_at_once_and_never_after_its_window() {
    let (mut main, mut thread) = shelf_pair(warm_policy(2, 30));
    main.tick();
    let mut answered = 0;
    main.answer_all(&mut answered, page_of);
    thread.advance(5_000); // past the TTL, within the stale window
    assert_eq!(thread.error(1, 500), Action::Continue);
    thread.log(1, |s| assert!(s.filter_state.as_deref().unwrap().contains("outcome=stale")));
    assert_eq!(thread.calls(), 0, "the main thread is fetching it again: no client waits");
    thread.advance(30_000); // past the window too
    assert_eq!(thread.error(2, 500), Action::Pause, "nothing to serve: fetched on the request's path");
    assert_eq!(thread.calls(), 1);
}

#[test]
fn a_worker_that_shares_nothing_puts_nothing_on_a_shelf() {
    let mut p = Proxy::with_background(warm_policy(60, 0));
    p.tick();
    let mut answered = 0;
    p.answer_all(&mut answered, page_of);
    assert!(matches!(p.worker.sharing, super::Sharing::Alone));
    assert!(p.worker.shelf_copy("anything", 1_000_000).is_none());
}

#[test]
fn an_object_a_worker_thread_fetched_is_shelved_and_kept_fresh_by_the_main_thread() {
    let (mut main, mut thread) = shelf_pair(warm_policy(8, 0));
    main.tick();
    let mut answered = 0;
    main.answer_all(&mut answered, page_of);
    let prewarmed = main.calls();
    // 504 is not among the codes prewarmed: the worker thread fetches it on the request's path.
    assert_eq!(thread.error(1, 504), Action::Pause);
    thread.answer(100, page_of("/504.html"));
    main.tick();
    assert!(main.worker.flights.borrow().is_empty(), "taken over without a fetch");
    let mut other = Proxy::new(warm_policy(8, 0));
    let host = other.host.clone();
    other.worker =
        Rc::new(Worker::new(host, other.worker.config.clone()).sharing(super::Sharing::Reads(shelf_of(&thread))));
    assert_eq!(other.error(1, 504), Action::Continue, "another worker thread finds it on the shelf");
    assert_eq!(other.calls(), 0);
    main.advance(6_000); // past three quarters of its 8 s TTL
    let refreshed: Vec<String> = main.call_paths()[prewarmed..].to_vec();
    assert!(refreshed.contains(&"/504.html".to_string()), "the main thread refreshes it: {refreshed:?}");
    // Its twin: a worker thread's copy of an object the main thread keeps is left alone.
    let key = crate::cache::key(crate::ids::ServiceId(0), "/502.html", crate::config::DEFAULT_CONTENT_TYPE);
    let kept = main.worker.cache.borrow_mut().get(&key, main.worker.clock.get()).expect("prewarmed");
    let ask = main.worker.schedule.borrow().ask_of(&key).expect("kept");
    let copy = crate::cache::Object { body: b"a worker's copy".to_vec().into(), ..(*kept).clone() };
    shelf_of(&thread).hand_over(&key, &ask, &copy, u64::MAX, u64::MAX);
    main.tick();
    let now = main.worker.clock.get();
    assert_eq!(main.worker.cache.borrow_mut().get(&key, now).unwrap().body, kept.body, "the main thread's own copy");
}

fn shelf_of(p: &Proxy) -> std::sync::Arc<super::Shelf> {
    match &p.worker.sharing {
        super::Sharing::Reads(shelf) | super::Sharing::Publishes(shelf) => shelf.clone(),
        super::Sharing::Alone => panic!("shares nothing"),
    }
}
