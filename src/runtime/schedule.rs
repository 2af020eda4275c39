//! What a worker fetches on its own, off every request's path: the policy's objects when
//! the configuration goes live (prewarm), and every object it holds before it expires
//! (refresh), each retried with backoff while the error service fails. State only: the
//! worker dispatches what `due` returns and reports each answer to `done`.

use super::flight::{Ask, Purpose};
use crate::cache::{self, Cache, State};
use crate::config::{Config, RuleKind};
use crate::error_service;
use crate::fasthash::FastMap;
use log::warn;

/// Background fetches in flight at once, per worker (per cache): the error service never
/// sees a storm from a policy with many objects.
pub const CONCURRENCY: usize = 4;
/// Backoff after a failed background fetch: 1 s, doubled per failure, at most this.
pub const MAX_BACKOFF_MS: u64 = 10_000;
/// Attempts to prewarm an object the cache has never held (about 25 s of backoff): an
/// object the error service does not have (a `{status}` page for a code it has no page
/// for) is not asked for forever. Held objects are retried while their stale copy lasts.
pub const PREWARM_ATTEMPTS: u32 = 5;

/// How a background fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Stored,
    /// The object came but may not be cached (`no-store`, TTL 0): nothing to keep fresh.
    Uncacheable,
    /// The object came but the cache is full: prewarming stops there.
    NoRoom,
    /// The error service answered that it has no such object (a non-2xx answer): a prewarm
    /// is not asked again; a held object's refresh is, as after any failure.
    Absent,
    Failed,
}

struct Known {
    ask: Ask,
    /// The cache has held it (a refresh, not a prewarm, brings it back).
    held: bool,
    failures: u32,
    retry_at_ms: u64,
}

impl Known {
    /// The cache holds it now: kept fresh, failures forgotten.
    fn held_now(&mut self) {
        (self.held, self.failures, self.retry_at_ms) = (true, 0, 0);
    }
}

#[derive(Default)]
pub(super) struct Schedule {
    known: FastMap<String, Known>,
    /// The prewarm met the cache's bounds (logged once).
    full: bool,
}

impl Schedule {
    /// Every object `config` can serve from a service with `prewarm` on, at most `room`.
    pub(super) fn plan(config: &Config, room: usize) -> Schedule {
        let mut s = Schedule::default();
        let mut wanted = 0usize;
        for (key, ask) in objects(config) {
            if s.known.contains_key(&key) {
                continue; // the same object named by two rules
            }
            wanted += 1;
            if s.known.len() < room {
                s.known.insert(key, Known { ask, held: false, failures: 0, retry_at_ms: 0 });
            }
        }
        if wanted > room {
            warn!("custom-error-pages: the policy names more objects than the cache holds ({room}): the rest is not prewarmed");
            s.full = true;
        }
        s
    }

    /// Whether this worker keeps `key` fresh in the background (so a stale copy may be
    /// served at once while it is fetched again).
    #[cfg(test)]
    pub(super) fn ask_of(&self, key: &str) -> Option<Ask> {
        self.known.get(key).map(|k| k.ask.clone())
    }

    pub fn keeps(&self, key: &str) -> bool {
        self.known.get(key).is_some_and(|k| k.held)
    }

    /// An object a request fetched and the cache stored: kept fresh from now on. The ask
    /// loses what belonged to that request (its URI, host and id).
    pub(super) fn learn(&mut self, key: &str, ask: &Ask) {
        match self.known.get_mut(key) {
            Some(k) => k.held_now(),
            None => {
                let ask = ask.background();
                self.known.insert(key.to_string(), Known { ask, held: true, failures: 0, retry_at_ms: 0 });
            }
        }
    }

    /// Up to `room` fetches due at `now`: objects never held and not waiting out a
    /// backoff; held ones past three quarters of their TTL, or expired. Objects gone from
    /// the cache (evicted, past their stale window) are forgotten; `busy` keys already
    /// have a fetch in flight.
    pub(super) fn due(
        &mut self,
        cache: &Cache,
        now: u64,
        busy: impl Fn(&str) -> bool,
        room: usize,
    ) -> Vec<(String, Ask, Purpose)> {
        let mut out = Vec::new();
        // One look at the cache per object: forget the held ones it lost, pick the due ones.
        self.known.retain(|key, k| {
            let state = cache.state(key, now);
            if k.held && state == State::Gone {
                return false;
            }
            if out.len() >= room || now < k.retry_at_ms || busy(key) {
                return true;
            }
            let purpose = match state {
                State::Fresh { stored_ms, expires_ms } if now < stored_ms + (expires_ms - stored_ms) * 3 / 4 => None,
                State::Fresh { .. } | State::Stale => Some(Purpose::Refresh),
                State::Gone => Some(Purpose::Prewarm),
            };
            if let Some(purpose) = purpose {
                out.push((key.clone(), k.ask.clone(), purpose));
            }
            true
        });
        out
    }

    /// The answer to a background fetch of `key`.
    pub fn done(&mut self, key: &str, result: Done, now: u64) {
        match result {
            Done::Stored => {
                if let Some(k) = self.known.get_mut(key) {
                    k.held_now();
                }
            }
            Done::Uncacheable => {
                self.known.remove(key);
            }
            Done::NoRoom => {
                if !self.full {
                    warn!("custom-error-pages: the cache is full: the rest of the policy's objects are not prewarmed");
                    self.full = true;
                }
                self.known.retain(|_, k| k.held);
            }
            Done::Absent if self.known.get(key).is_some_and(|k| !k.held) => {
                self.known.remove(key); // a request's miss fetches it, as before
            }
            Done::Absent | Done::Failed => {
                if let Some(k) = self.known.get_mut(key) {
                    k.failures += 1;
                    k.retry_at_ms = now + backoff_ms(k.failures);
                    if !k.held && k.failures >= PREWARM_ATTEMPTS {
                        self.known.remove(key); // a request's miss fetches it, as before
                    }
                }
            }
        }
    }
}

/// The wait after `failures` failed fetches in a row.
pub fn backoff_ms(failures: u32) -> u64 {
    1000u64.saturating_mul(1 << failures.saturating_sub(1).min(20)).min(MAX_BACKOFF_MS)
}

/// Every object the policy can serve, with the ask that fetches it: each serving rule's
/// variants with a `path`, `{status}` expanded over the rule's exact codes, and over the
/// service's `prewarmCodes` for its classes and ranges.
fn objects(config: &Config) -> Vec<(String, Ask)> {
    let mut out = Vec::new();
    for rule in config.policies.iter().flat_map(|p| &p.rules) {
        let RuleKind::Serve(serve) = &rule.kind else { continue };
        let Some((service, svc)) = serve.service.and_then(|i| config.service(Some(i)).map(|s| (i, s))) else {
            continue;
        };
        if !svc.prewarm {
            continue;
        }
        let mut codes: Vec<u16> = rule.specs.iter().filter(|s| s.lo == s.hi).map(|s| s.lo).collect();
        for code in &svc.prewarm_codes {
            if !codes.contains(code) && rule.specs.iter().any(|s| s.lo != s.hi && s.contains(*code)) {
                codes.push(*code);
            }
        }
        if codes.is_empty() {
            // A range with none of the prewarm codes: its objects without `{status}` still
            // are, asked for as its first code.
            codes.extend(rule.specs.first().map(|s| s.lo));
        }
        // A path without `{lang}` is one object whatever the language.
        let all_languages: Vec<&str> = serve.languages.iter().map(String::as_str).collect();
        for variant in std::iter::once(&serve.default).chain(&serve.variants) {
            let Some(template) = &variant.path else { continue };
            let per_code = error_service::per_code(template);
            let languages = if error_service::per_lang(template) { &all_languages[..] } else { &[""][..] };
            for &code in codes.iter().take(if per_code { usize::MAX } else { 1 }) {
                for lang in languages {
                    let path = error_service::object_path(template, code, lang);
                    let ask = Ask::new(svc, service, &path, variant, code, None);
                    out.push((cache::key(service, &path, &variant.content_type), ask));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Object;
    use serde_json::json;
    use std::rc::Rc;

    fn config(rules: serde_json::Value, codes: &[u16]) -> Config {
        let policy = json!({"errorService": {"cluster": "e", "prewarmCodes": codes},
                            "defaultCustomErrorResponsePolicy": {"errorResponseRules": rules}});
        crate::config::load(policy.to_string().as_bytes()).unwrap()
    }

    fn paths(s: &Schedule) -> Vec<String> {
        let mut p: Vec<String> = s.known.keys().map(|k| k.split('|').nth(1).unwrap().to_string()).collect();
        p.sort();
        p
    }

    #[test]
    fn status_paths_expand_over_exact_codes_and_the_prewarm_codes_in_a_class() {
        let c = config(
            json!([{"matchResponseCodes": ["404", "410", "5xx"], "path": "/e/{status}.html"}]),
            &[404, 500, 503, 418],
        );
        let s = Schedule::plan(&c, 100);
        assert_eq!(paths(&s), ["/e/404.html", "/e/410.html", "/e/500.html", "/e/503.html"], "418 is not the rule's");
    }

    #[test]
    fn lang_paths_expand_over_the_rules_languages_and_others_do_not() {
        let c = config(
            json!([{"matchResponseCodes": ["404", "5xx"], "path": "/{lang}/{status}.html", "languages": ["en", "de"],
                    "variants": [{"contentType": "application/json", "path": "/e.json"}]}]),
            &[503],
        );
        let s = Schedule::plan(&c, 100);
        assert_eq!(paths(&s), ["/de/404.html", "/de/503.html", "/e.json", "/en/404.html", "/en/503.html"]);
    }

    #[test]
    fn a_path_without_status_is_one_object_asked_for_as_the_rules_first_code() {
        let c = config(json!([{"matchResponseCodes": ["460-470"], "path": "/e/range.html"}]), &[404]);
        let s = Schedule::plan(&c, 100);
        assert_eq!(paths(&s), ["/e/range.html"]);
        let ask = &s.known.values().next().unwrap().ask;
        assert!(ask.headers.iter().any(|(n, v)| *n == "x-code" && v == "460"));
    }

    #[test]
    fn the_plan_stops_at_the_room_and_says_so_only_beyond_it() {
        let rules = json!([{"matchResponseCodes": ["404"], "path": "/a.html"}, {"matchResponseCodes": ["410"], "path": "/b.html"},
                           {"matchResponseCodes": ["500"], "path": "/a.html"}]);
        let c = config(rules, &[]);
        let s = Schedule::plan(&c, 2);
        assert_eq!((s.known.len(), s.full), (2, false), "two objects (one named twice) in a room of two");
        let s = Schedule::plan(&c, 1);
        assert_eq!((s.known.len(), s.full), (1, true));
        let s = Schedule::plan(&c, 3);
        assert_eq!((s.known.len(), s.full), (2, false));
    }

    #[test]
    fn no_room_is_said_once_and_drops_only_what_was_never_held() {
        let c = config(
            json!([{"matchResponseCodes": ["404"], "path": "/a.html"}, {"matchResponseCodes": ["410"], "path": "/b.html"}]),
            &[],
        );
        let mut s = Schedule::plan(&c, 10);
        let held = s.known.keys().next().unwrap().clone();
        s.done(&held, Done::Stored, 0);
        assert!(!s.full);
        let other = s.known.keys().find(|k| **k != held).unwrap().clone();
        s.done(&other, Done::NoRoom, 0);
        assert!(s.full, "the cache is full: said once");
        assert!(s.keeps(&held) && !s.known.contains_key(&other));
    }

    #[test]
    fn learning_an_object_makes_it_kept_and_resets_its_failures() {
        let c = config(json!([{"matchResponseCodes": ["404"], "path": "/a.html"}]), &[]);
        let mut s = Schedule::plan(&c, 10);
        let key = s.known.keys().next().unwrap().clone();
        s.done(&key, Done::Failed, 0);
        assert!(!s.keeps(&key));
        let ask = s.known[&key].ask.clone();
        s.learn(&key, &ask);
        assert!(s.keeps(&key));
        assert_eq!((s.known[&key].failures, s.known[&key].retry_at_ms), (0, 0));
        let mut cache = Cache::default();
        let object = Rc::new(Object {
            body: b"x".to_vec().into(),
            content_type: "text/html".into(),
            cache_control: None,
            ahead: false,
        });
        cache.put(key.clone(), object, 4, 0, 0);
        assert!(s.due(&cache, 2_999, |_| false, 4).is_empty());
        assert_eq!(s.due(&cache, 3_000, |_| false, 4).len(), 1, "due at three quarters of its TTL");
        assert!(s.due(&cache, 3_000, |_| true, 4).is_empty(), "not while a fetch of it is in flight");
    }
}
