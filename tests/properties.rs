//! Property tests over generated input (a small deterministic PRNG, so every run checks the
//! same thousands of cases and a failure is reproducible): escaping, header hygiene, cache
//! keys, error-service answers, and hostile policies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests stop on what they did not expect

use custom_error_pages::cache;
use custom_error_pages::config::{load, Serve, Variant};
use custom_error_pages::error_service::{call_headers, evaluate, object_path, CallFacts};
use custom_error_pages::ids::ServiceId;
use custom_error_pages::negotiate;
use custom_error_pages::template::{render, Escape, Vars};
use serde_json::{json, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// A string mixing markup, quotes, escapes, control characters and non-ASCII.
    fn hostile(&mut self) -> String {
        const PARTS: &[&str] = &[
            "<",
            ">",
            "&",
            "\"",
            "'",
            "\\",
            "/",
            "\n",
            "\r",
            "\0",
            "\t",
            "{{",
            "}}",
            "{{path}}",
            "<script>",
            "</p>",
            "\u{2028}",
            "é",
            "😀",
            "a",
            "Z",
            "0",
            " ",
            "%3C",
            "&amp;",
            "javascript:",
            "\u{7f}",
            "\u{1b}",
            "=",
            ";",
        ];
        (0..self.below(12)).map(|_| *self.pick(PARTS)).collect()
    }
}

#[test]
fn a_redirects_location_never_carries_a_control_character_a_space_or_a_fragment() {
    let mut rng = Rng(0x2545F4914F6CDD1D);
    for _ in 0..5_000 {
        let (path, host) = (rng.hostile(), rng.hostile());
        let vars =
            Vars { status: 302, original_status: 401, host: &host, path: &path, scheme: "https", ..Vars::default() };
        for template in ["/login?next={{url}}", "https://new.test{{path}}", "//{{host}}/x"] {
            let location = custom_error_pages::template::render_location(template, &vars);
            assert!(
                !location.contains(|c: char| c.is_control() || c == ' ' || c == '#' || !c.is_ascii()),
                "{location:?}"
            );
        }
        let next = custom_error_pages::template::render_location("{{url}}", &vars);
        assert!(!next.contains(['/', '?', '&', '=']), "the URL is one parameter value: {next:?}");
    }
}

#[test]
fn request_input_never_appears_unescaped_in_html_or_json() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for _ in 0..5_000 {
        let (path, host, id, method) = (rng.hostile(), rng.hostile(), rng.hostile(), rng.hostile());
        let vars = Vars {
            status: 404,
            original_status: 404,
            request_id: &id,
            host: &host,
            path: &path,
            method: &method,
            source: "upstream",
            code_details: "via_upstream",
            scheme: "https",
            lang: "de",
        };
        let html = render("<p>{{path}}|{{host}}|{{requestId}}|{{method}}</p>", &vars, Escape::Html);
        let inner = &html["<p>".len()..html.len() - "</p>".len()];
        assert!(!inner.contains(['<', '>', '"', '\'']), "unescaped markup for {path:?}: {html}");
        for (i, _) in inner.match_indices('&') {
            let rest = &inner[i..];
            let entity = rest.find(';').map(|end| &rest[..=end]).unwrap_or("");
            assert!(
                entity.len() > 2 && entity[1..entity.len() - 1].chars().all(|c| c.is_ascii_alphanumeric() || c == '#'),
                "bare & in {html}"
            );
        }
        let json_text =
            render("{\"path\":\"{{path}}\",\"host\":\"{{host}}\",\"id\":\"{{requestId}}\"}", &vars, Escape::JsonString);
        let parsed: Value = serde_json::from_str(&json_text).unwrap_or_else(|e| panic!("{e}: {json_text}"));
        assert_eq!(parsed["path"], path.as_str());
        assert_eq!(parsed["host"], host.as_str());
        assert!(!json_text.contains('<'), "raw < in JSON: {json_text}");
    }
}

#[test]
fn error_service_call_is_built_from_configuration_and_status_only() {
    let mut rng = Rng(42);
    let svc = custom_error_pages::config::ErrorService {
        cluster: "e".into(),
        authority: "errors.internal".into(),
        timeout_ms: 1000,
        max_body_bytes: 1000,
        cache_ttl_s: 60,
        stale_if_error_s: 0,
        prewarm: false,
        prewarm_codes: Vec::new(),
        request_headers: vec![("x-tenant".into(), "shop".into())],
    };
    for _ in 0..5_000 {
        let status = rng.next() as u16;
        let path = object_path("/errors/{status}.html", status, "");
        assert_eq!(path, format!("/errors/{status}.html"));
        let (uri, host, id) = (rng.hostile(), rng.hostile(), rng.hostile());
        let facts = CallFacts {
            original_status: status,
            format: "text/html",
            original_uri: &uri,
            original_host: &host,
            request_id: &id,
        };
        let headers = call_headers(&svc, &path, &facts);
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_ref()).collect();
        for n in &names {
            assert!(
                [
                    ":method",
                    ":path",
                    ":authority",
                    "x-code",
                    "x-format",
                    "x-original-uri",
                    "x-original-host",
                    "x-request-id",
                    "x-tenant"
                ]
                .contains(n),
                "{n}"
            );
        }
        for (k, v) in &headers {
            assert!(!v.chars().any(|c| c.is_control()), "control character in {k}: {v:?}");
        }
        assert!(headers.iter().any(|(k, v)| k == ":path" && *v == path));
        assert!(headers.iter().any(|(k, v)| k == ":authority" && v == "errors.internal"));
        assert!(headers.iter().any(|(k, v)| k == "x-tenant" && v == "shop"), "the service's static headers");
    }
}

#[test]
fn cache_key_cannot_be_chosen_by_request_headers() {
    let mut rng = Rng(7);
    let v = |ct: &str| Variant { content_type: ct.into(), path: Some("/e".into()), body: None };
    let serve = Serve {
        override_code: None,
        default: v("text/html; charset=utf-8"),
        variants: vec![v("application/json"), v("text/plain")],
        headers: vec![],
        template: false,
        service: Some(ServiceId(0)),
        location: None,
        languages: vec![],
    };
    let allowed: Vec<String> = ["text/html; charset=utf-8", "application/json", "text/plain"]
        .iter()
        .map(|ct| cache::key(ServiceId(0), "/e", ct))
        .collect();
    const MEDIA: &[&str] = &[
        "text/html",
        "application/json",
        "*/*",
        "text/*",
        "image/png",
        "application/evil",
        "x",
        ";q=0.5",
        ",",
        ";q=abc",
        "\"",
        "\n",
    ];
    for _ in 0..5_000 {
        let accept: String =
            (0..rng.below(6)).map(|_| format!("{}{}", rng.pick(MEDIA), rng.hostile())).collect::<Vec<_>>().join(",");
        let chosen = negotiate::choose(&serve, Some(&accept));
        assert!(allowed.contains(&cache::key(ServiceId(0), "/e", &chosen.content_type)), "{accept:?}");
    }
}

#[test]
fn any_error_service_answer_is_judged_without_panic_and_without_bad_headers() {
    let mut rng = Rng(1234);
    let svc = custom_error_pages::config::ErrorService {
        cluster: "e".into(),
        authority: "e".into(),
        timeout_ms: 500,
        max_body_bytes: 1000,
        cache_ttl_s: 60,
        stale_if_error_s: 0,
        prewarm: false,
        prewarm_codes: Vec::new(),
        request_headers: Vec::new(),
    };
    const NAMES: &[&str] =
        &[":status", "content-type", "cache-control", "set-cookie", "x-envoy-upstream-service-time", "CONTENT-TYPE"];
    for _ in 0..5_000 {
        let headers: Vec<(String, Vec<u8>)> = (0..rng.below(5))
            .map(|_| {
                let value: Vec<u8> = match rng.below(3) {
                    0 => rng.pick(&["200", "204", "404", "503", "abc", "", "2000"]).as_bytes().to_vec(),
                    1 => rng.hostile().into_bytes(),
                    _ => (0..rng.below(8)).map(|_| rng.next() as u8).collect(),
                };
                (rng.pick(NAMES).to_string(), value)
            })
            .collect();
        if let Ok(meta) = evaluate(&svc, &headers, rng.below(2000), rng.below(1000) as u64, "text/html") {
            assert!(!meta.content_type.chars().any(|c| c.is_control()), "{:?}", meta.content_type);
            assert!(meta.cache_control.iter().all(|cc| !cc.chars().any(|c| c.is_control() && c != '\t')));
        }
    }
}

/// Random JSON in the policy's own vocabulary, so that generation reaches deep fields.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    const KEYS: &[&str] = &[
        "errorService",
        "cluster",
        "authority",
        "timeoutMs",
        "maxBodyBytes",
        "cacheTtlSeconds",
        "defaultCustomErrorResponsePolicy",
        "errorResponseRules",
        "matchResponseCodes",
        "path",
        "overrideResponseCode",
        "body",
        "contentType",
        "variants",
        "template",
        "source",
        "headers",
        "passthrough",
        "hostRules",
        "hosts",
        "pathMatcher",
        "pathMatchers",
        "name",
        "pathRules",
        "paths",
        "customErrorResponsePolicy",
        "routeRules",
        "priority",
        "matchRules",
        "prefixMatch",
        "fullPathMatch",
        "regexMatch",
        "ignoreCase",
        "headerMatches",
        "headerName",
        "exactMatch",
        "presentMatch",
        "invertMatch",
        "queryParameterMatches",
        "routeName",
        "bogus",
    ];
    const STRINGS: &[&str] = &[
        "404",
        "4xx",
        "5xx",
        "502-504",
        "600",
        "/e.html",
        "/e/{status}",
        "e.html",
        "*",
        "*.a.com",
        "a.com",
        "m",
        "(a+)+$",
        "([",
        "/x/*",
        "text/html",
        "proxy",
        "any",
        "{{path}}",
        "{{nope}}",
        "",
        "\u{0}",
        "retry-after",
    ];
    match (depth, rng.below(10)) {
        (d, 0..=3) if d < 6 => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(5) {
                m.insert(rng.pick(KEYS).to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        (d, 4..=5) if d < 6 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect()),
        (_, 6) => json!(rng.pick(&[0i64, 1, 200, 204, 404, 599, 600, -1, 1_000_000_000_000])),
        (_, 7) => json!(rng.below(2) == 0),
        (_, 8) => Value::Null,
        _ => json!(rng.pick(STRINGS)),
    }
}

#[test]
fn hostile_policies_load_or_fail_with_a_field_path_never_panic() {
    let mut rng = Rng(99);
    let example: Value = serde_json::from_str(include_str!("data/spec-example.json")).unwrap();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..20_000 {
        let policy = if i % 2 == 0 { random_value(&mut rng, 0) } else { mutate(&mut rng, example.clone()) };
        match load(policy.to_string().as_bytes()) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.reason.is_empty());
                refused += 1;
            }
        }
    }
    assert!(ok > 100 && refused > 100, "generation must reach both outcomes: {ok} ok, {refused} refused");
    // bytes that are not even JSON
    for _ in 0..2_000 {
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        let _ = load(&bytes);
    }
}

/// Replaces one random node of a valid policy with random JSON.
fn mutate(rng: &mut Rng, mut v: Value) -> Value {
    let mut pointer = String::new();
    let mut node = &v;
    for _ in 0..rng.below(7) {
        let step = match node {
            Value::Object(m) if !m.is_empty() => m.keys().nth(rng.below(m.len())).cloned(),
            Value::Array(a) if !a.is_empty() => Some(rng.below(a.len()).to_string()),
            _ => None,
        };
        let Some(step) = step else { break };
        pointer.push('/');
        pointer.push_str(&step.replace('~', "~0").replace('/', "~1"));
        match node.pointer(&pointer) {
            Some(n) => node = n,
            None => break,
        }
    }
    let replacement = random_value(rng, 3);
    match v.pointer_mut(&pointer) {
        Some(n) => *n = replacement,
        None => v = replacement,
    }
    v
}

#[test]
fn pathological_regexes_run_in_linear_time() {
    // regex-lite is a Pike VM: no backtracking, so these finish (a backtracking engine would not).
    let policy = json!({"hostRules": [{"hosts": ["*"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m", "routeRules": [
        {"priority": 1, "matchRules": [{"regexMatch": "(a+)+$"}, {"regexMatch": "(a|a?)+b"}, {"regexMatch": "(.*a){20}"}],
         "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x"}]}}]}]});
    let cfg = load(policy.to_string().as_bytes()).unwrap();
    let mut req = custom_error_pages::request::StaticRequest {
        authority: "h".into(),
        path: format!("/{}!", "a".repeat(20_000)),
        ..Default::default()
    };
    assert!(matches!(cfg.decide(404, &mut req), custom_error_pages::decide::Decision::None));
}

/// Whatever a client sends as `Accept-Language`, the language chosen is one of the rule's,
/// and so is every object path and cache key it leads to: a client cannot name an object.
#[test]
fn the_language_is_always_one_of_the_rules_whatever_the_client_sends() {
    let mut rng = Rng(11);
    let languages: Vec<String> = ["en", "de", "de-CH", "fr", "zh-Hant-TW"].iter().map(|s| s.to_string()).collect();
    const RANGES: &[&str] = &[
        "de",
        "DE-ch",
        "fr-CA",
        "*",
        "en-GB",
        "zh-Hant",
        "x-priv",
        "i-klingon",
        ";q=0.5",
        ";q=0",
        ";q=1.5",
        ",",
        "-",
        "--",
        "q=",
        "..",
        "de;q=0.9",
    ];
    for _ in 0..5_000 {
        let header: String =
            (0..rng.below(7)).map(|_| format!("{}{}", rng.pick(RANGES), rng.hostile())).collect::<Vec<_>>().join(",");
        let i = negotiate::language(&languages, Some(&header));
        assert!(i < languages.len(), "{header:?}");
        let path = object_path("/{lang}/{status}.html", 404, &languages[i]);
        assert!(languages.iter().any(|l| path == format!("/{l}/404.html")), "{header:?} -> {path}");
    }
}
