//! Loading: every refusal names its field and reason; every accepted shape decides as
//! Google Cloud's load balancer would. Each "match" case has its "no match" twin.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests stop on what they did not expect

use custom_error_pages::config::{load, Level};
use custom_error_pages::decide::Decision;
use custom_error_pages::request::{Metadata, StaticRequest};
use serde_json::json;

fn err(policy: serde_json::Value) -> String {
    match load(policy.to_string().as_bytes()) {
        Ok(_) => panic!("policy should be refused: {policy}"),
        Err(e) => e.to_string(),
    }
}

fn svc() -> serde_json::Value {
    json!({"cluster": "error_pages"})
}

#[test]
fn spec_example_loads() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/spec-example.json")).unwrap();
    let cfg = load(text.as_bytes()).unwrap();
    assert_eq!(cfg.matchers.len(), 2);
    assert_eq!(cfg.warnings.len(), 2, "{:?}", cfg.warnings);
    assert_eq!(cfg.warnings[0], "path matcher \"api\" is not named by any host rule: it is never used");
    assert!(cfg.warnings[1].starts_with("pathMatchers[0].pathRules[0].customErrorResponsePolicy.errorResponseRules[0].overrideResponseCode: 200 is not an error"), "{}", cfg.warnings[1]);
}

/// An override to a non-error status whose fetched object says how caches may keep it is
/// worth a warning; the rule's own cache-control, an error status or an inline body is not.
#[test]
fn cacheable_override_warned_unless_the_rule_decides() {
    let warned = |rule: serde_json::Value| -> bool {
        let policy = json!({"errorService": svc(), "defaultCustomErrorResponsePolicy": {"errorResponseRules": [rule]}});
        let cfg = load(policy.to_string().as_bytes()).unwrap();
        cfg.warnings.iter().any(|w| w.contains("overrideResponseCode") && w.contains("cache-control"))
    };
    assert!(warned(json!({"matchResponseCodes": ["503"], "path": "/m.html", "overrideResponseCode": 200})));
    assert!(warned(json!({"matchResponseCodes": ["503"], "path": "/m.html", "overrideResponseCode": 302,
                          "headers": {"location": "/down"}})));
    assert!(warned(json!({"matchResponseCodes": ["503"], "body": "x", "overrideResponseCode": 200,
                          "variants": [{"contentType": "application/json", "path": "/m.json"}]})));
    assert!(!warned(json!({"matchResponseCodes": ["503"], "path": "/m.html", "overrideResponseCode": 200,
                           "headers": {"Cache-Control": "no-store"}})));
    assert!(!warned(json!({"matchResponseCodes": ["503"], "path": "/m.html", "overrideResponseCode": 400})));
    assert!(!warned(json!({"matchResponseCodes": ["503"], "path": "/m.html"})));
    assert!(!warned(json!({"matchResponseCodes": ["503"], "body": "x", "overrideResponseCode": 200})));
}

#[test]
fn empty_configuration_is_an_empty_policy() {
    let cfg = load(b"").unwrap();
    assert!(cfg.codes.is_empty());
    let cfg = load(b"  {}  ").unwrap();
    assert!(!cfg.interested_in(404));
}

#[test]
fn refusals_name_field_and_reason() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "colour": 1}]}}),
         "defaultCustomErrorResponsePolicy.errorResponseRules[0].colour: unknown field"),
        (json!({"hostRuless": []}), "hostRuless: unknown field"),
        (json!({"routeTimeoutsMs": {"checkout": 0}}), "routeTimeoutsMs.checkout: expected milliseconds, a whole number 1-3600000"),
        (json!({"routeTimeoutsMs": {"checkout": "1s"}}), "routeTimeoutsMs.checkout: expected milliseconds"),
        (json!({"routeTimeoutsMs": {"": 1000}}), "routeTimeoutsMs: a route name must not be empty"),
        (json!({"routeTimeoutsMs": [1000]}), "routeTimeoutsMs: expected an object"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["4x4"], "body": "x"}]}}),
         "defaultCustomErrorResponsePolicy.errorResponseRules[0].matchResponseCodes[0]: \"4x4\" is not a code (400-599), a class (\"4xx\", \"5xx\") or a range (\"502-504\")"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["504-502"], "body": "x"}]}}),
         "defaultCustomErrorResponsePolicy.errorResponseRules[0].matchResponseCodes[0]: \"504-502\" is an empty range (start after end)"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["302"], "body": "x"}]}}),
         "matchResponseCodes[0]: \"302\" is outside the error codes 400-599"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["404"], "body": "x"}, {"matchResponseCodes": ["500", "404"], "body": "y"}]}}),
         "defaultCustomErrorResponsePolicy.errorResponseRules[1].matchResponseCodes[1]: this code or range is already matched by defaultCustomErrorResponsePolicy.errorResponseRules[0] in the same policy"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["4xx"], "body": "x"}, {"matchResponseCodes": ["400-499"], "body": "y"}]}}),
         "errorResponseRules[1].matchResponseCodes[0]: this code or range is already matched"),
        (json!({"errorService": svc(), "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "errors/404.html"}]}}),
         "defaultCustomErrorResponsePolicy.errorResponseRules[0].path: \"errors/404.html\" must start with \"/\""),
        (json!({"errorService": svc(), "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/errors/"}]}}),
         "errorResponseRules[0].path: \"/errors/\" must not end with \"/\""),
        (json!({"errorService": svc(), "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/e/{code}.html"}]}}),
         "errorResponseRules[0].path: \"/e/{code}.html\": the only placeholders are {status} and {originalStatus} (both the original code)"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "overrideResponseCode": 700}]}}),
         "errorResponseRules[0].overrideResponseCode: 700 is outside 200-599"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "overrideResponseCode": 199}]}}),
         "errorResponseRules[0].overrideResponseCode: 199 is outside 200-599"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "overrideResponseCode": 204}]}}),
         "errorResponseRules[0].overrideResponseCode: 204 cannot carry a body"),
        (json!({"hostRules": [{"hosts": ["a.com"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m", "routeRules": [
            {"priority": 1, "matchRules": [{"regexMatch": "/(unclosed"}], "customErrorResponsePolicy": {"errorResponseRules": []}}]}]}),
         "pathMatchers[0].routeRules[0].matchRules[0].regexMatch: invalid regex"),
        (json!({"hostRules": [{"hosts": ["a.com"], "pathMatcher": "missing"}], "pathMatchers": [{"name": "m"}]}),
         "hostRules[0].pathMatcher: no path matcher is named \"missing\""),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"]}]}}),
         "defaultCustomErrorResponsePolicy.errorResponseRules[0]: a rule needs a path (fetched from the error service), a body, or \"passthrough\": true"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/e.html"}]}}),
         "defaultCustomErrorResponsePolicy.errorResponseRules[0].path: no errorService is in scope for this rule"),
        (json!({"pathMatchers": [{"name": "m", "pathRules": [{"paths": ["/a"], "customErrorResponsePolicy": {}}],
                                  "routeRules": [{"priority": 1, "customErrorResponsePolicy": {}}]}]}),
         "pathMatchers[0].routeRules: a path matcher has either pathRules or routeRules, not both"),
        (json!({"pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "customErrorResponsePolicy": {}}, {"priority": 1, "customErrorResponsePolicy": {}}]}]}),
         "pathMatchers[0].routeRules[1].priority: priority 1 is already used by pathMatchers[0].routeRules[0]"),
        (json!({"pathMatchers": [{"name": "m"}, {"name": "m"}]}), "pathMatchers[1].name: path matcher \"m\" is defined twice"),
        (json!({"hostRules": [{"hosts": ["a.com"], "pathMatcher": "m"}, {"hosts": ["A.com"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m"}]}),
         "hostRules[1].hosts[0]: host \"A.com\" is already named by a host rule"),
        (json!({"pathMatchers": [{"name": "m", "pathRules": [{"paths": ["/a*"], "customErrorResponsePolicy": {}}]}]}),
         "pathMatchers[0].pathRules[0].paths[0]: \"/a*\": \"*\" is only allowed at the end, after a \"/\""),
        (json!({"pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "matchRules": [{"prefixMatch": "/a", "fullPathMatch": "/b"}], "customErrorResponsePolicy": {}}]}]}),
         "pathMatchers[0].routeRules[0].matchRules[0]: at most one of prefixMatch, fullPathMatch and regexMatch may be set"),
        (json!({"pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "matchRules": [{"headerMatches": [{"headerName": "x"}]}], "customErrorResponsePolicy": {}}]}]}),
         "pathMatchers[0].routeRules[0].matchRules[0].headerMatches[0]: needs one of exactMatch, prefixMatch, suffixMatch, regexMatch, presentMatch"),
        (json!({"pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "matchRules": [{"queryParameterMatches": [{"name": "q", "exactMatch": "1", "presentMatch": true}]}], "customErrorResponsePolicy": {}}]}]}),
         "queryParameterMatches[0]: only one of exactMatch, regexMatch, presentMatch may be set"),
        (json!({"pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "matchRules": [{"queryParameterMatches": [{"name": "q", "regexMatch": "(["}]}], "customErrorResponsePolicy": {}}]}]}),
         "queryParameterMatches[0].regexMatch: invalid regex"),
        (json!({"errorService": ""}), "errorService: must be the name of an Envoy cluster"),
        (json!({"errorService": {"cluster": "e", "timeoutMs": 0}}), "errorService.timeoutMs: 0 is outside 1-60000"),
        (json!({"errorService": {"cluster": "e", "timeoutMs": "1s"}}), "errorService.timeoutMs: expected a whole number, found a string"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "{{stauts}}"}]}}),
         "errorResponseRules[0].body: unknown template variable \"{{stauts}}\""),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "headers": {"retry-after": "1\r\nx: y"}}]}}),
         "errorResponseRules[0].headers.retry-after: a header value must not contain control characters"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "headers": {"content-length": "1"}}]}}),
         "errorResponseRules[0].headers.content-length: \"content-length\" cannot be set by a rule"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "headers": {"Cache-Control": "no-store", "cache-control": "max-age=5"}}]}}),
         "errorResponseRules[0].headers.cache-control: \"cache-control\" is set twice (header names are case-insensitive)"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "source": "backend"}]}}),
         "errorResponseRules[0].source: \"backend\" is not one of \"any\", \"upstream\", \"proxy\""),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "passthrough": true, "body": "x"}]}}),
         "errorResponseRules[0].passthrough: a passthrough rule leaves the response as it is"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "contentType": "html"}]}}),
         "errorResponseRules[0].contentType: \"html\" is not a media type"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x", "variants": [{"contentType": "application/json"}]}]}}),
         "errorResponseRules[0].variants[0]: a variant needs a path or a body"),
        (json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": [], "body": "x"}]}}),
         "errorResponseRules[0].matchResponseCodes: must list at least one code"),
        (json!({"hostRules": [{"hosts": [], "pathMatcher": "m"}], "pathMatchers": [{"name": "m"}]}), "hostRules[0].hosts: must list at least one host"),
        (json!({"hostRules": [{"hosts": ["a*b.com"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m"}]}), "hostRules[0].hosts[0]: \"a*b.com\""),
        (json!([1, 2]), "<policy>: expected an object, found an array"),
        (json!({"hostRules": {"hosts": []}}), "hostRules: expected an array, found an object"),
    ];
    for (policy, want) in cases {
        let got = err(policy.clone());
        assert!(got.contains(want), "policy {policy}\n  got:  {got}\n  want: {want}");
    }
}

#[test]
fn invalid_json_is_refused_with_position() {
    let e = load(b"{\"errorService\": ").unwrap_err();
    assert_eq!(e.path, "");
    assert!(e.reason.starts_with("not valid JSON: "), "{e}");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn same_code_for_different_sources_is_allowed_but_not_overlapping() {
    let ok = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["503"], "body": "p", "source": "proxy"},
        {"matchResponseCodes": ["503"], "body": "u", "source": "upstream"}]}});
    assert!(load(ok.to_string().as_bytes()).is_ok());
    let bad = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["503"], "body": "p", "source": "proxy"},
        {"matchResponseCodes": ["503"], "body": "u"}]}});
    assert!(err(bad).contains("errorResponseRules[1].matchResponseCodes[0]: this code or range is already matched"));
}

// ---- decisions ----

fn req(host: &str, path: &str) -> StaticRequest {
    StaticRequest { authority: host.into(), path: path.into(), ..Default::default() }
}

/// (level, rule id) of the decision, or "none"/"passthrough".
fn decide(policy: &serde_json::Value, status: u16, r: &mut StaticRequest) -> String {
    let cfg = load(policy.to_string().as_bytes()).unwrap();
    match cfg.decide(status, r) {
        Decision::None => "none".into(),
        Decision::Passthrough(rule) => format!("passthrough {}", rule.id),
        Decision::Serve(rule, serve) => {
            let what = serve.default.path.clone().or(serve.default.body.clone()).unwrap_or_default();
            format!("{} {}", rule.level.as_str(), what)
        }
    }
}

fn four_levels() -> serde_json::Value {
    json!({
        "errorService": "error_pages",
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["4xx"], "path": "/proxy/4xx"},
            {"matchResponseCodes": ["5xx"], "path": "/proxy/5xx"},
            {"matchResponseCodes": ["401"], "path": "/proxy/401"}]},
        "hostRules": [{"hosts": ["shop.example.com", "*.example.org"], "pathMatcher": "shop"},
                      {"hosts": ["api.example.com"], "pathMatcher": "api"}],
        "pathMatchers": [{
            "name": "shop",
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/shop/404"},
                                                                         {"matchResponseCodes": ["502-504"], "path": "/shop/50x"}]},
            "pathRules": [{"paths": ["/images/*", "/logo.png"], "customErrorResponsePolicy": {"errorResponseRules": [
                {"matchResponseCodes": ["404"], "path": "/images/missing.svg", "overrideResponseCode": 200}]}},
                          {"paths": ["/images/icons/*"], "customErrorResponsePolicy": {"errorResponseRules": [
                {"matchResponseCodes": ["4xx"], "path": "/icons/4xx"}]}}]
        }, {
            "name": "api",
            "routeRules": [
                {"priority": 10, "matchRules": [{"prefixMatch": "/api/"}], "customErrorResponsePolicy": {"errorResponseRules": [
                    {"matchResponseCodes": ["5xx"], "body": "{\"error\":\"api\"}", "contentType": "application/json"}]}},
                {"priority": 1, "matchRules": [{"prefixMatch": "/api/", "headerMatches": [{"headerName": "x-beta", "exactMatch": "1"}]},
                                               {"fullPathMatch": "/beta", "ignoreCase": true}],
                 "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "path": "/beta/5xx"}]}},
                {"priority": 5, "matchRules": [{"regexMatch": "/v[0-9]+/.*", "queryParameterMatches": [{"name": "debug", "presentMatch": true}]}],
                 "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "passthrough": true}]}},
                {"priority": 7, "matchRules": [{"routeName": "checkout"}],
                 "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["503"], "path": "/checkout/503"}]}}]
        }]
    })
}

#[test]
fn proxy_level_applies_to_unnamed_hosts() {
    let p = four_levels();
    assert_eq!(decide(&p, 404, &mut req("other.net", "/x")), "proxy /proxy/4xx");
    assert_eq!(decide(&p, 502, &mut req("other.net", "/x")), "proxy /proxy/5xx");
    assert_eq!(decide(&p, 401, &mut req("other.net", "/x")), "proxy /proxy/401");
    assert_eq!(decide(&p, 302, &mut req("other.net", "/x")), "none");
    assert_eq!(decide(&p, 200, &mut req("other.net", "/x")), "none");
}

#[test]
fn host_level_wins_for_its_codes_and_defers_for_others() {
    let p = four_levels();
    assert_eq!(decide(&p, 404, &mut req("shop.example.com", "/x")), "host /shop/404");
    assert_eq!(decide(&p, 503, &mut req("SHOP.example.com:8443", "/x")), "host /shop/50x");
    // per-code fall-through: the shop has no 403 and no 500 rule
    assert_eq!(decide(&p, 403, &mut req("shop.example.com", "/x")), "proxy /proxy/4xx");
    assert_eq!(decide(&p, 500, &mut req("shop.example.com", "/x")), "proxy /proxy/5xx");
    // wildcard host and its no-match twin (the apex)
    assert_eq!(decide(&p, 404, &mut req("a.example.org", "/x")), "host /shop/404");
    assert_eq!(decide(&p, 404, &mut req("example.org", "/x")), "proxy /proxy/4xx");
}

#[test]
fn path_rules_longest_match_then_fall_through() {
    let p = four_levels();
    assert_eq!(decide(&p, 404, &mut req("shop.example.com", "/images/a.png")), "pathRule /images/missing.svg");
    assert_eq!(decide(&p, 404, &mut req("shop.example.com", "/logo.png?v=1")), "pathRule /images/missing.svg");
    assert_eq!(decide(&p, 404, &mut req("shop.example.com", "/images/icons/x.png")), "pathRule /icons/4xx");
    assert_eq!(decide(&p, 403, &mut req("shop.example.com", "/images/icons/x.png")), "pathRule /icons/4xx");
    // path rule has no 403 -> host has none -> proxy
    assert_eq!(decide(&p, 403, &mut req("shop.example.com", "/images/a.png")), "proxy /proxy/4xx");
    // path rule has no 503 -> host's range
    assert_eq!(decide(&p, 503, &mut req("shop.example.com", "/images/a.png")), "host /shop/50x");
    // no-match twins
    assert_eq!(decide(&p, 404, &mut req("shop.example.com", "/images")), "host /shop/404");
    assert_eq!(decide(&p, 404, &mut req("shop.example.com", "/logo.png/x")), "host /shop/404");
}

#[test]
fn route_rules_priority_header_query_regex_route_name() {
    let p = four_levels();
    assert_eq!(decide(&p, 503, &mut req("api.example.com", "/api/users")), "routeRule {\"error\":\"api\"}");
    let mut beta = req("api.example.com", "/api/users");
    beta.headers.push(("X-Beta".into(), "1".into()));
    assert_eq!(decide(&p, 503, &mut beta), "routeRule /beta/5xx");
    let mut not_beta = req("api.example.com", "/api/users");
    not_beta.headers.push(("x-beta".into(), "2".into()));
    assert_eq!(decide(&p, 503, &mut not_beta), "routeRule {\"error\":\"api\"}");
    assert_eq!(decide(&p, 500, &mut req("api.example.com", "/BETA")), "routeRule /beta/5xx");
    assert_eq!(
        decide(&p, 500, &mut req("api.example.com", "/v2/x?debug")),
        "passthrough pathMatchers[1].routeRules[2].customErrorResponsePolicy.errorResponseRules[0]"
    );
    assert_eq!(decide(&p, 500, &mut req("api.example.com", "/v2/x")), "proxy /proxy/5xx");
    let mut checkout = req("api.example.com", "/cart");
    checkout.route_name = Some("checkout".into());
    assert_eq!(decide(&p, 503, &mut checkout), "routeRule /checkout/503");
    assert_eq!(decide(&p, 502, &mut checkout), "proxy /proxy/5xx");
    checkout.route_name = Some("cart".into());
    assert_eq!(decide(&p, 503, &mut checkout), "proxy /proxy/5xx");
}

#[test]
fn source_splits_proxy_and_upstream_errors() {
    let p = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["503"], "body": "proxy-made", "source": "proxy"},
        {"matchResponseCodes": ["5xx"], "body": "any"}]}});
    let mut r = req("h", "/");
    r.made_by_proxy = true;
    assert_eq!(decide(&p, 503, &mut r), "proxy proxy-made");
    r.made_by_proxy = false;
    assert_eq!(decide(&p, 503, &mut r), "proxy any");
}

#[test]
fn override_code_and_levels_recorded() {
    let cfg = load(four_levels().to_string().as_bytes()).unwrap();
    match cfg.decide(404, &mut req("shop.example.com", "/images/x")) {
        Decision::Serve(rule, serve) => {
            assert_eq!(serve.override_code, Some(200));
            assert_eq!(rule.level, Level::PathRule);
            assert_eq!(rule.id, "pathMatchers[0].pathRules[0].customErrorResponsePolicy.errorResponseRules[0]");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn error_service_inheritance() {
    let p = json!({
        "errorService": "top",
        "hostRules": [{"hosts": ["*"], "pathMatcher": "m"}],
        "pathMatchers": [{"name": "m",
            "defaultCustomErrorResponsePolicy": {"errorService": {"cluster": "matcher", "timeoutMs": 200}, "errorResponseRules": [
                {"matchResponseCodes": ["500"], "path": "/m"}]},
            "pathRules": [{"paths": ["/a/*"], "customErrorResponsePolicy": {"errorResponseRules": [
                {"matchResponseCodes": ["404"], "path": "/a"},
                {"matchResponseCodes": ["410"], "path": "/b", "errorService": "rule"}]}}]}]
    });
    let cfg = load(p.to_string().as_bytes()).unwrap();
    let cluster = |status, path: &str| match cfg.decide(status, &mut req("x", path)) {
        Decision::Serve(_, s) => cfg.service(s.service).unwrap().cluster.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(cluster(500, "/"), "matcher");
    assert_eq!(cluster(404, "/a/x"), "matcher");
    assert_eq!(cluster(410, "/a/x"), "rule");
    assert_eq!(cfg.service(Some(custom_error_pages::ids::ServiceId(0))).unwrap().cluster, "top");
}

/// Counts how often the decision asks for the route name or metadata (host calls in Envoy).
struct CountingRequest {
    inner: StaticRequest,
    route_name_reads: usize,
    metadata_reads: usize,
    response_header_reads: usize,
}

impl custom_error_pages::request::RequestView for CountingRequest {
    fn authority(&mut self) -> String {
        self.inner.authority()
    }
    fn path(&mut self) -> String {
        self.inner.path()
    }
    fn header(&mut self, name: &str) -> Option<String> {
        self.inner.header(name)
    }
    fn route_name(&mut self) -> Option<String> {
        self.route_name_reads += 1;
        self.inner.route_name()
    }
    fn made_by_proxy(&mut self) -> bool {
        self.inner.made_by_proxy()
    }
    fn metadata(&mut self, of: Metadata, namespace: &str, key: &str) -> Option<String> {
        self.metadata_reads += 1;
        self.inner.metadata(of, namespace, key)
    }
    fn response_header(&mut self, name: &str) -> Option<String> {
        self.response_header_reads += 1;
        self.inner.response_header(name)
    }
}

fn routes_then_route_name() -> serde_json::Value {
    json!({
        "errorService": "error_pages",
        "hostRules": [{"hosts": ["h"], "pathMatcher": "m"}],
        "pathMatchers": [{"name": "m",
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["4xx", "5xx"], "path": "/host"}]},
            "routeRules": [
                {"priority": 1, "matchRules": [{"prefixMatch": "/shadow/"}],
                 "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["500"], "path": "/shadow/500"}]}},
                {"priority": 2, "matchRules": [{"prefixMatch": "/api/"}],
                 "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/api/404"}]}},
                {"priority": 3, "matchRules": [{"routeName": "checkout"}],
                 "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["503"], "path": "/checkout/503"}]}}]}]
    })
}

fn decide_counting(policy: &serde_json::Value, status: u16, path: &str) -> (String, usize) {
    let cfg = load(policy.to_string().as_bytes()).unwrap();
    let mut r = CountingRequest {
        inner: StaticRequest { route_name: Some("checkout".into()), ..req("h", path) },
        route_name_reads: 0,
        metadata_reads: 0,
        response_header_reads: 0,
    };
    let what = match cfg.decide(status, &mut r) {
        Decision::Serve(_, serve) => serve.default.path.clone().unwrap_or_default(),
        other => format!("{other:?}"),
    };
    (what, r.route_name_reads)
}

#[test]
fn route_rules_after_the_last_one_covering_the_code_are_not_evaluated() {
    let p = routes_then_route_name();
    // 404 on /x: no rule up to the last one with a 404 rule matches; the route-name rule
    // after it would match but cannot change the outcome, so the route name is never read.
    assert_eq!(decide_counting(&p, 404, "/x"), ("/host".to_string(), 0));
    assert_eq!(decide_counting(&p, 404, "/api/x"), ("/api/404".to_string(), 0));
    // A matching rule without a rule for the code still shadows later ones (Google Cloud's
    // first match), even though it is evaluated only because a later rule covers the code.
    assert_eq!(decide_counting(&p, 404, "/shadow/api/x"), ("/host".to_string(), 0));
}

#[test]
fn route_rules_up_to_the_last_one_covering_the_code_are_evaluated() {
    let p = routes_then_route_name();
    // 503: the route-name rule covers it, so the walk reaches it and reads the name.
    assert_eq!(decide_counting(&p, 503, "/x"), ("/checkout/503".to_string(), 1));
    // ...unless an earlier rule matches first.
    assert_eq!(decide_counting(&p, 503, "/shadow/x"), ("/host".to_string(), 0));
}

// ---------- named policies chosen by Envoy's route and virtual host metadata ----------

fn named_levels() -> serde_json::Value {
    let rule = |code: &str, body: &str| json!({"matchResponseCodes": [code], "body": body});
    json!({
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [rule("4xx", "proxy"), rule("5xx", "proxy")]},
        "hostRules": [{"hosts": ["h"], "pathMatcher": "m"}],
        "pathMatchers": [{"name": "m",
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [rule("404", "matcher"), rule("500", "matcher")]},
            "routeRules": [{"priority": 1, "matchRules": [{"prefixMatch": "/r/"}],
                            "customErrorResponsePolicy": {"errorResponseRules": [rule("410", "route rule"), rule("502", "route rule")]}}]}],
        "policies": {
            "checkout": {"errorResponseRules": [rule("503", "checkout"), rule("410", "checkout")]},
            "site": {"errorResponseRules": [rule("502", "site"), rule("500", "site"), rule("504", "site")]}
        }
    })
}

fn body_for(cfg: &custom_error_pages::config::Config, status: u16, r: &mut StaticRequest) -> String {
    match cfg.decide(status, r) {
        Decision::Serve(rule, serve) => format!("{} {}", serve.default.body.clone().unwrap_or_default(), rule.id),
        other => format!("{other:?}"),
    }
}

fn with_metadata(path: &str, route: Option<&str>, vhost: Option<&str>) -> StaticRequest {
    let md = |v: Option<&str>| {
        v.map(|v| ("custom_error_pages".to_string(), "policy".to_string(), v.to_string())).into_iter().collect()
    };
    StaticRequest { route_metadata: md(route), virtual_host_metadata: md(vhost), ..req("h", path) }
}

#[test]
fn route_metadata_policy_is_the_most_specific_level_per_code() {
    let cfg = load(named_levels().to_string().as_bytes()).unwrap();
    let mut r = with_metadata("/r/x", Some("checkout"), Some("site"));
    assert_eq!(
        body_for(&cfg, 410, &mut r),
        "checkout policies.checkout.errorResponseRules[1]",
        "route metadata beats the route rule"
    );
    assert_eq!(body_for(&cfg, 503, &mut r), "checkout policies.checkout.errorResponseRules[0]");
    // checkout has no 502: the route rule decides, before the virtual host's policy.
    assert!(body_for(&cfg, 502, &mut r).starts_with("route rule "));
    // Neither route level has 500: the virtual host's policy beats the matcher default.
    assert_eq!(body_for(&cfg, 500, &mut r), "site policies.site.errorResponseRules[1]");
    assert_eq!(
        body_for(&cfg, 404, &mut r),
        "matcher pathMatchers[0].defaultCustomErrorResponsePolicy.errorResponseRules[0]"
    );
    assert!(body_for(&cfg, 403, &mut r).starts_with("proxy "));
}

#[test]
fn without_metadata_the_google_cloud_levels_decide() {
    let cfg = load(named_levels().to_string().as_bytes()).unwrap();
    let mut r = with_metadata("/r/x", None, None);
    assert!(body_for(&cfg, 410, &mut r).starts_with("route rule "));
    assert!(body_for(&cfg, 503, &mut r).starts_with("proxy "));
    assert!(body_for(&cfg, 500, &mut r).starts_with("matcher "));
    // The virtual host's policy applies to hosts without a path matcher too.
    let mut other = StaticRequest {
        virtual_host_metadata: with_metadata("/", None, Some("site")).virtual_host_metadata,
        ..req("other", "/")
    };
    assert_eq!(body_for(&cfg, 504, &mut other), "site policies.site.errorResponseRules[2]");
}

#[test]
fn an_unknown_policy_name_skips_its_level_and_is_reported() {
    let cfg = load(named_levels().to_string().as_bytes()).unwrap();
    let mut r = with_metadata("/r/x", Some("chekout"), Some("site"));
    assert_eq!(body_for(&cfg, 500, &mut r), "site policies.site.errorResponseRules[1]");
    let mut trace = Vec::new();
    cfg.decide_observed(503, &mut r, &mut trace);
    assert!(
        trace
            .iter()
            .any(|l| l == "the route's metadata names policy \"chekout\", which policies does not have: skipped"),
        "{trace:?}"
    );
    assert!(trace.iter().any(|l| l.starts_with("the virtual host's metadata selects policy \"site\"")), "{trace:?}");
}

#[test]
fn metadata_namespace_is_configurable() {
    let mut policy = named_levels();
    policy["metadataNamespace"] = json!("errors_b");
    let cfg = load(policy.to_string().as_bytes()).unwrap();
    let mut default_ns = with_metadata("/", Some("checkout"), None);
    assert!(body_for(&cfg, 503, &mut default_ns).starts_with("proxy "), "another filter's namespace is not ours");
    let mut r = StaticRequest {
        route_metadata: vec![("errors_b".into(), "policy".into(), "checkout".into())],
        ..req("h", "/")
    };
    assert!(body_for(&cfg, 503, &mut r).starts_with("checkout "));
}

#[test]
fn metadata_is_read_only_when_a_named_policy_covers_the_code() {
    let count = |policy: serde_json::Value, status: u16| {
        let cfg = load(policy.to_string().as_bytes()).unwrap();
        let mut r = CountingRequest {
            inner: with_metadata("/", Some("checkout"), None),
            route_name_reads: 0,
            metadata_reads: 0,
            response_header_reads: 0,
        };
        cfg.decide(status, &mut r);
        r.metadata_reads
    };
    assert_eq!(count(named_levels(), 503), 1, "the route's policy decides: the virtual host's is never read");
    assert_eq!(count(named_levels(), 500), 2, "checkout has no 500: the virtual host's is read too");
    assert_eq!(count(named_levels(), 404), 0, "no named policy covers 404");
    let mut plain = named_levels();
    plain.as_object_mut().unwrap().remove("policies");
    assert_eq!(count(plain, 503), 0, "no named policies: metadata never read");
}

#[test]
fn named_policy_refusals() {
    let cases = [
        (json!({"policies": {"": {"errorResponseRules": []}}}), "policies: a policy name must not be empty"),
        (
            json!({"policies": {"a": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/x"}]}}}),
            "policies.a.errorResponseRules[0].path: no errorService is in scope",
        ),
        (json!({"policies": {"a": {"errorResponseRules": [], "colour": 1}}}), "policies.a.colour: unknown field"),
        (json!({"policies": {"a": []}}), "policies.a: expected an object"),
        (json!({"metadataNamespace": ""}), "metadataNamespace: must be a name without spaces"),
        (
            json!({"hostRules": [{"hosts": ["h"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m", "routeRules": [{"priority": 1,
            "matchRules": [{"routeMetadataMatches": [{"namespace": "istio", "exactMatch": "x"}]}],
            "customErrorResponsePolicy": {"errorResponseRules": []}}]}]}),
            "pathMatchers[0].routeRules[0].matchRules[0].routeMetadataMatches[0].key",
        ),
        (
            json!({"hostRules": [{"hosts": ["h"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m", "routeRules": [{"priority": 1,
            "matchRules": [{"routeMetadataMatches": [{"namespace": "istio", "key": "config"}]}],
            "customErrorResponsePolicy": {"errorResponseRules": []}}]}]}),
            "routeMetadataMatches[0]: needs one of exactMatch, prefixMatch, suffixMatch, regexMatch, presentMatch",
        ),
    ];
    for (policy, want) in cases {
        let got = err(policy.clone());
        assert!(got.contains(want), "policy {policy}\n  got:  {got}\n  want: {want}");
    }
    // A named policy nothing in the configuration refers to is valid: routes refer to it.
    let cfg = load(
        json!({"policies": {"lonely": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x"}]}}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert!(cfg.interested_in(404) && cfg.warnings.is_empty());
}

// ---------- edges mutation testing found unguarded ----------

#[test]
fn limits_are_inclusive_and_one_past_is_refused() {
    let svc = |field: &str, n: u64| json!({"errorService": {"cluster": "c", field: n}});
    assert!(load(svc("maxBodyBytes", 16 * 1024 * 1024).to_string().as_bytes()).is_ok());
    assert!(err(svc("maxBodyBytes", 16 * 1024 * 1024 + 1)).contains("errorService.maxBodyBytes"));
    assert!(load(svc("cacheTtlSeconds", 86_400 * 365).to_string().as_bytes()).is_ok());
    assert!(err(svc("cacheTtlSeconds", 86_400 * 365 + 1)).contains("errorService.cacheTtlSeconds"));
    let regex = |n: usize| {
        json!({"hostRules": [{"hosts": ["h"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m", "routeRules": [{"priority": 1,
            "matchRules": [{"regexMatch": format!("/{}", "a".repeat(n - 1))}], "customErrorResponsePolicy": {"errorResponseRules": []}}]}]})
    };
    assert!(load(regex(1024).to_string().as_bytes()).is_ok());
    assert!(err(regex(1025)).contains("a regex is limited to 1024 characters"));
}

#[test]
fn each_field_alone_is_checked() {
    let rule = |extra: serde_json::Value| {
        let mut r = json!({"matchResponseCodes": ["404"]});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"errorService": "c", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [r]}})
    };
    for extra in [
        json!({"passthrough": true, "overrideResponseCode": 200}),
        json!({"passthrough": true, "variants": [{"contentType": "text/plain", "body": "x"}]}),
        json!({"passthrough": true, "path": "/x"}),
        json!({"passthrough": true, "body": "x"}),
    ] {
        assert!(
            err(rule(extra.clone())).contains("passthrough: a passthrough rule leaves the response as it is"),
            "{extra}"
        );
    }
    for (authority, ok) in [("", false), ("a b", false), ("errors.internal", true)] {
        let policy = json!({"errorService": {"cluster": "c", "authority": authority}});
        assert_eq!(load(policy.to_string().as_bytes()).is_ok(), ok, "authority {authority:?}");
    }
    for (path, ok) in [("/e#x", false), ("/e x", false), ("/e.html", true)] {
        assert_eq!(load(rule(json!({"path": path})).to_string().as_bytes()).is_ok(), ok, "path {path:?}");
    }
    let matcher = |cond: serde_json::Value| {
        json!({"hostRules": [{"hosts": ["h"], "pathMatcher": "m"}], "pathMatchers": [{"name": "m", "routeRules": [{"priority": 1,
            "matchRules": [cond], "customErrorResponsePolicy": {"errorResponseRules": []}}]}]})
    };
    assert!(err(matcher(json!({"prefixMatch": "api/"})))
        .contains("matchRules[0].prefixMatch: \"api/\" must start with \"/\""));
    assert!(err(matcher(json!({"fullPathMatch": "api"}))).contains("matchRules[0].fullPathMatch"));
    // A variant must say its type; the rule's own object defaults to HTML.
    assert!(err(rule(json!({"body": "x", "variants": [{"body": "{}"}]})))
        .contains("variants[0].contentType: is required for a variant"));
}

#[test]
fn a_policy_has_at_most_ten_thousand_rules() {
    let rules = |n: usize| -> Vec<serde_json::Value> {
        (0..n).map(|i| json!({"matchResponseCodes": [format!("{}", 400 + i % 200)], "source": if i / 200 % 2 == 0 { "proxy" } else { "upstream" }, "body": "x"})).collect()
    };
    let policy = |n| json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": rules(n)}});
    // 400 rules fit: each code once per source. Beyond 10,000 the count alone is refused.
    assert!(load(policy(400).to_string().as_bytes()).is_ok());
    // Exactly 10,000 (all different ranges) is allowed.
    let ranges: Vec<serde_json::Value> = (400..600u16)
        .flat_map(|lo| (lo..600).map(move |hi| json!({"matchResponseCodes": [format!("{lo}-{hi}")], "body": "x"})))
        .take(10_000)
        .collect();
    let most = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": ranges}});
    assert_eq!(load(most.to_string().as_bytes()).unwrap().policies[0].rules.len(), 10_000);
    assert!(err(policy(10_001))
        .contains("defaultCustomErrorResponsePolicy.errorResponseRules: at most 10000 rules in one policy"));
}

#[test]
fn a_source_specific_rule_asks_who_made_the_response() {
    let policy = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["5xx"], "body": "any"},
        {"matchResponseCodes": ["503"], "source": "proxy", "body": "proxy"}]}});
    let cfg = load(policy.to_string().as_bytes()).unwrap();
    let body = |made_by_proxy: bool| match cfg.decide(503, &mut StaticRequest { made_by_proxy, ..req("h", "/") }) {
        Decision::Serve(_, s) => s.default.body.clone().unwrap_or_default(),
        other => format!("{other:?}"),
    };
    assert_eq!(body(true), "proxy");
    assert_eq!(body(false), "any");
}

// ---------- pages ready before the error ----------

#[test]
fn prewarm_and_stale_settings_default_and_load() {
    let cfg = load(json!({"errorService": "c"}).to_string().as_bytes()).unwrap();
    let svc = &cfg.services[0];
    assert!(svc.prewarm);
    assert_eq!(svc.stale_if_error_s, 86_400);
    assert_eq!(
        svc.prewarm_codes,
        [400, 401, 403, 404, 405, 408, 409, 410, 413, 414, 429, 431, 500, 501, 502, 503, 504]
    );
    let cfg = load(
        json!({"errorService": {"cluster": "c", "prewarm": false, "staleIfErrorSeconds": 0, "prewarmCodes": [404, "503"]}})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let svc = &cfg.services[0];
    assert!(!svc.prewarm);
    assert_eq!(svc.stale_if_error_s, 0);
    assert_eq!(svc.prewarm_codes, [404, 503]);
}

#[test]
fn bad_prewarm_and_stale_settings_are_refused_with_their_path() {
    let svc = |field: &str, v: serde_json::Value| json!({"errorService": {"cluster": "c", field: v}});
    assert!(err(svc("prewarmCodes", json!([404, 399]))).contains("errorService.prewarmCodes[1]"));
    assert!(err(svc("prewarmCodes", json!([404, "4xx"]))).contains("errorService.prewarmCodes[1]"));
    assert!(err(svc("prewarmCodes", json!([404, 404]))).contains("listed twice"));
    assert!(err(svc("prewarmCodes", json!("404"))).contains("errorService.prewarmCodes"));
    assert!(err(svc("prewarm", json!("yes"))).contains("errorService.prewarm"));
    assert!(load(svc("staleIfErrorSeconds", json!(86_400 * 365)).to_string().as_bytes()).is_ok());
    assert!(err(svc("staleIfErrorSeconds", json!(86_400 * 365 + 1))).contains("errorService.staleIfErrorSeconds"));
    assert!(load(svc("prewarmCodes", json!([])).to_string().as_bytes()).is_ok(), "an empty list prewarms no class");
}

/// `"body": ""` without `contentType` is an empty reply (no content type); its twins keep the
/// default type: a non-empty body, a given type, or a path whose fallback is empty.
#[test]
fn an_empty_body_without_a_content_type_is_an_empty_reply() {
    let content_type = |rule: serde_json::Value| -> String {
        let policy = json!({"errorService": svc(), "defaultCustomErrorResponsePolicy": {"errorResponseRules": [rule]}});
        let cfg = load(policy.to_string().as_bytes()).unwrap();
        let mut req = StaticRequest { path: "/".into(), ..StaticRequest::default() };
        match cfg.decide(403, &mut req) {
            Decision::Serve(_, serve) => serve.default.content_type.clone(),
            _ => panic!("no rule for 403"),
        }
    };
    assert_eq!(content_type(json!({"matchResponseCodes": ["403"], "body": ""})), "");
    assert_eq!(content_type(json!({"matchResponseCodes": ["403"], "body": "x"})), "text/html; charset=utf-8");
    assert_eq!(
        content_type(json!({"matchResponseCodes": ["403"], "body": "", "contentType": "text/plain"})),
        "text/plain"
    );
    assert_eq!(
        content_type(json!({"matchResponseCodes": ["403"], "body": "", "path": "/e.html"})),
        "text/html; charset=utf-8"
    );
}

/// A redirect: 301, 302, 303, 307 or 308 with `headers.location` (templated, checked); no
/// object needed. Its twins: no location, another 3xx, an unknown variable.
#[test]
fn a_redirect_needs_a_location_and_a_redirect_code() {
    let rule = |extra: serde_json::Value| {
        let mut r = json!({"matchResponseCodes": ["401"], "overrideResponseCode": 302});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [r]}})
    };
    let cfg = load(rule(json!({"headers": {"Location": "/login?next={{url}}"}})).to_string().as_bytes()).unwrap();
    let mut req = StaticRequest { path: "/".into(), ..StaticRequest::default() };
    match cfg.decide(401, &mut req) {
        Decision::Serve(_, serve) => {
            assert_eq!(serve.location.as_deref(), Some("/login?next={{url}}"));
            assert!(serve.headers.is_empty(), "location is the redirect's, not a plain header");
            assert_eq!(
                (serve.default.body.as_deref(), serve.default.content_type.as_str()),
                (Some(""), ""),
                "an empty reply"
            );
        }
        _ => panic!("no rule for 401"),
    }
    assert_eq!(
        err(rule(json!({"body": "x"}))),
        "defaultCustomErrorResponsePolicy.errorResponseRules[0].headers: a redirect (overrideResponseCode 3xx) needs headers.location"
    );
    let mut other = rule(json!({"headers": {"location": "/x"}}));
    other["defaultCustomErrorResponsePolicy"]["errorResponseRules"][0]["overrideResponseCode"] = json!(305);
    assert!(err(other).ends_with(
        "overrideResponseCode: 305 is not a redirect code a rule may answer with (301, 302, 303, 307, 308)"
    ));
    assert!(err(rule(json!({"headers": {"location": "/x?{{nope}}"}}))).starts_with(
        "defaultCustomErrorResponsePolicy.errorResponseRules[0].headers.location: unknown template variable"
    ));
    // Not a redirect: a location header is an ordinary header, left as written.
    let plain = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "body": "x", "headers": {"location": "/{{path}}"}}]}});
    let cfg = load(plain.to_string().as_bytes()).unwrap();
    match cfg.decide(404, &mut req) {
        Decision::Serve(_, serve) => assert!(serve.location.is_none() && serve.headers.len() == 1),
        _ => panic!("no rule for 404"),
    }
}

/// `errorService.requestHeaders`: static headers on every fetch; the filter's own and
/// Envoy's are refused, as are bad names, control characters and the same name twice.
#[test]
fn request_headers_are_static_and_never_the_filters_own() {
    let with = |headers: serde_json::Value| {
        json!({"errorService": {"cluster": "e", "requestHeaders": headers},
               "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/e/{originalStatus}.html"}]}})
    };
    let cfg = load(with(json!({"X-Tenant": "shop", "authorization": "Bearer t"})).to_string().as_bytes()).unwrap();
    assert_eq!(
        cfg.services[0].request_headers,
        [("x-tenant".to_string(), "shop".to_string()), ("authorization".to_string(), "Bearer t".to_string())]
    );
    for (headers, reason) in [
        (json!({"x-code": "1"}), "\"x-code\" is set by the filter or by Envoy on every fetch"),
        (json!({"Host": "x"}), "\"Host\" is set by the filter or by Envoy on every fetch"),
        (json!({"content-length": "1"}), "\"content-length\" is set by the filter or by Envoy on every fetch"),
        (json!({"bad name": "1"}), "\"bad name\" is not a header name"),
        (json!({"x-a": "1\r\nx-b: 2"}), "a header value must not contain control characters (CR, LF, NUL)"),
        (json!({"x-a": "1", "X-A": "2"}), "is set twice (header names are case-insensitive)"),
    ] {
        let e = err(with(headers.clone()));
        assert!(e.starts_with("errorService.requestHeaders.") && e.contains(reason), "{headers}: {e}");
    }
}

/// Every rule counts under a name: its own, or one derived from its place; the
/// ordinals number the rules in `Config::rules` order.
#[test]
fn rules_count_under_their_name_or_their_place() {
    let policy = json!({
        "errorService": svc(),
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["404"], "body": "a"},
            {"name": "upstream-5xx_pages", "matchResponseCodes": ["5xx"], "body": "b"}
        ]},
        "policies": {"api": {"errorResponseRules": [{"matchResponseCodes": ["403"], "passthrough": true}]}},
        "hostRules": [{"hosts": ["*"], "pathMatcher": "m"}],
        "pathMatchers": [{
            "name": "m",
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["410"], "body": "c"}]},
            "pathRules": [
                {"paths": ["/a"], "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["401"], "body": "d"}]}},
                {"paths": ["/b"], "customErrorResponsePolicy": {"errorResponseRules": [
                    {"matchResponseCodes": ["402"], "body": "e"}, {"matchResponseCodes": ["408"], "body": "f"}
                ]}}
            ]
        }]
    });
    let cfg = load(policy.to_string().as_bytes()).unwrap();
    let mut stats: Vec<&str> = cfg.rules().map(|r| r.stat.as_str()).collect();
    let ordinals: Vec<usize> = cfg.rules().map(|r| r.ordinal).collect();
    assert_eq!(ordinals, (0..stats.len()).collect::<Vec<_>>());
    stats.sort_unstable();
    assert_eq!(
        stats,
        [
            "default_rule0",
            "matcher0_default_rule0",
            "matcher0_path0_rule0",
            "matcher0_path1_rule0",
            "matcher0_path1_rule1",
            "policy_api_rule0",
            "upstream-5xx_pages"
        ]
    );
}

#[test]
fn a_rule_name_is_refused_where_it_cannot_name_a_counter() {
    let with_names = |a: serde_json::Value, b: serde_json::Value| {
        let mut r0 = json!({"matchResponseCodes": ["404"], "body": "a"});
        let mut r1 = json!({"matchResponseCodes": ["500"], "body": "b"});
        if !a.is_null() {
            r0["name"] = a;
        }
        if !b.is_null() {
            r1["name"] = b;
        }
        json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [r0, r1]}})
    };
    let at = "defaultCustomErrorResponsePolicy.errorResponseRules[0].name";
    for bad in [json!(""), json!("a.b"), json!("a b"), json!("é"), json!("x".repeat(65))] {
        let e = err(with_names(bad.clone(), json!(null)));
        assert!(e.starts_with(at), "{bad}: {e}");
    }
    let e = err(with_names(json!(7), json!(null)));
    assert!(e.starts_with(at) && e.contains("string"), "{e}");
    // Two rules under one name: named alike, or named as the other's place.
    let e = err(with_names(json!("same"), json!("same")));
    assert!(e.contains("errorResponseRules[1].name") && e.contains("already names"), "{e}");
    let e = err(with_names(json!(null), json!("default_rule0")));
    assert!(e.contains("errorResponseRules[1].name") && e.contains("errorResponseRules[0]"), "{e}");
    // Their twins load.
    for (a, b) in
        [(json!("x".repeat(64)), json!("other")), (json!(null), json!("default_rule1")), (json!("A-z_09"), json!(null))]
    {
        load(with_names(a, b).to_string().as_bytes()).unwrap();
    }
}

// Matching the response: `responseHeaderMatches` on error response rules.

fn responding(headers: &[(&str, &str)]) -> StaticRequest {
    StaticRequest {
        response_headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..req("h", "/api/x")
    }
}

/// An API's own problem+json errors pass; an HTML stack trace on the same code gets the page.
#[test]
fn a_rule_counts_for_its_code_only_when_its_response_matches_hold() {
    let p = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "passthrough": true,
         "responseHeaderMatches": [{"headerName": "Content-Type", "prefixMatch": "application/problem+json"}]},
        {"matchResponseCodes": ["404"], "body": "page"}]}});
    let passthrough = "passthrough defaultCustomErrorResponsePolicy.errorResponseRules[0]";
    assert_eq!(
        decide(&p, 404, &mut responding(&[("content-type", "application/problem+json; charset=utf-8")])),
        passthrough
    );
    assert_eq!(decide(&p, 404, &mut responding(&[("content-type", "text/html")])), "proxy page");
    assert_eq!(decide(&p, 404, &mut responding(&[])), "proxy page", "no content-type: the condition fails");
}

/// Only empty bodies: a 502 with `content-length: 0` is replaced, one with a body is not.
#[test]
fn when_no_rule_holds_the_level_defers_and_the_fall_through_goes_on() {
    let p = json!({
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "proxy"}]},
        "hostRules": [{"hosts": ["h"], "pathMatcher": "m"}],
        "pathMatchers": [{"name": "m", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["502"], "body": "empty",
             "responseHeaderMatches": [{"headerName": "content-length", "exactMatch": "0"}]}]}}]});
    assert_eq!(decide(&p, 502, &mut responding(&[("content-length", "0")])), "host empty");
    assert_eq!(decide(&p, 502, &mut responding(&[("content-length", "12")])), "proxy proxy");
    let alone = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["502"], "body": "empty",
         "responseHeaderMatches": [{"headerName": "content-length", "exactMatch": "0"}]}]}});
    assert_eq!(decide(&alone, 502, &mut responding(&[("content-length", "12")])), "none");
    assert_eq!(decide(&alone, 502, &mut responding(&[("content-length", "0")])), "proxy empty");
}

/// Exact codes still beat ranges, whatever the order; among rules of one rank, the list's
/// order; every condition of a rule must hold (and `invertMatch` turns one around).
#[test]
fn response_matches_keep_the_code_precedence() {
    let p = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["4xx"], "body": "class-json",
         "responseHeaderMatches": [{"headerName": "content-type", "exactMatch": "application/json"}]},
        {"matchResponseCodes": ["404"], "body": "exact-json",
         "responseHeaderMatches": [{"headerName": "content-type", "exactMatch": "application/json"},
                                   {"headerName": "x-debug", "presentMatch": true, "invertMatch": true}]},
        {"matchResponseCodes": ["404"], "body": "exact-any"},
        {"matchResponseCodes": ["4xx"], "body": "class-any"}]}});
    let json_type = [("content-type", "application/json")];
    assert_eq!(decide(&p, 404, &mut responding(&json_type)), "proxy exact-json");
    assert_eq!(
        decide(&p, 404, &mut responding(&[("content-type", "application/json"), ("x-debug", "1")])),
        "proxy exact-any"
    );
    assert_eq!(decide(&p, 404, &mut responding(&[])), "proxy exact-any");
    assert_eq!(decide(&p, 410, &mut responding(&json_type)), "proxy class-json");
    assert_eq!(decide(&p, 410, &mut responding(&[])), "proxy class-any");
}

/// Response headers are read only where a rule for the code has response matches.
#[test]
fn response_headers_are_read_only_where_a_rule_for_the_code_has_conditions() {
    let p = json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "body": "a", "responseHeaderMatches": [{"headerName": "x", "presentMatch": true}]},
        {"matchResponseCodes": ["5xx"], "body": "b"}]}});
    let cfg = load(p.to_string().as_bytes()).unwrap();
    let mut r =
        CountingRequest { inner: responding(&[]), route_name_reads: 0, metadata_reads: 0, response_header_reads: 0 };
    assert!(matches!(cfg.decide(503, &mut r), Decision::Serve(..)));
    assert_eq!(r.response_header_reads, 0);
    assert!(matches!(cfg.decide(404, &mut r), Decision::None));
    assert_eq!(r.response_header_reads, 1);
}

#[test]
fn a_rule_sharing_a_code_is_refused_unless_the_earlier_one_has_response_matches() {
    let rules = |first: serde_json::Value| json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [first, {"matchResponseCodes": ["404"], "body": "b"}]}});
    let e = err(rules(json!({"matchResponseCodes": ["404"], "body": "a"})));
    assert!(e.starts_with("defaultCustomErrorResponsePolicy.errorResponseRules[1].matchResponseCodes[0]: "), "{e}");
    assert!(e.contains("responseHeaderMatches"), "{e}");
    // The twin: the earlier rule has conditions, so the later one is reached when they fail.
    let conditional = json!({"matchResponseCodes": ["404"], "body": "a",
                             "responseHeaderMatches": [{"headerName": "x", "exactMatch": "1"}]});
    load(rules(conditional).to_string().as_bytes()).unwrap();
    // A conditional rule after an unconditional one for the code could never be reached.
    let e = err(json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "body": "a"},
        {"matchResponseCodes": ["404"], "body": "b", "responseHeaderMatches": [{"headerName": "x", "presentMatch": true}]}]}}));
    assert!(e.starts_with("defaultCustomErrorResponsePolicy.errorResponseRules[1].matchResponseCodes[0]"), "{e}");
    // Each condition is checked as a request header match is.
    let bad = |m: serde_json::Value| {
        err(rules(json!({"matchResponseCodes": ["404"], "body": "a", "responseHeaderMatches": [m]})))
    };
    let at = "defaultCustomErrorResponsePolicy.errorResponseRules[0].responseHeaderMatches[0]";
    assert!(bad(json!({"headerName": "bad name", "exactMatch": "x"})).starts_with(&format!("{at}.headerName: ")));
    assert!(bad(json!({"headerName": "x", "regexMatch": "("})).starts_with(&format!("{at}.regexMatch: ")));
    assert!(bad(json!({"headerName": "x", "exactMath": "1"})).starts_with(&format!("{at}: needs one of exactMatch")));
    assert!(bad(json!({"headerName": "x", "exactMatch": "1", "colour": "red"}))
        .starts_with(&format!("{at}.colour: unknown field")));
}

// Languages: `languages`, `{lang}` in paths, `{{lang}}` in templates.

#[test]
fn languages_are_refused_where_they_cannot_work() {
    let rule = |extra: serde_json::Value| {
        let mut r = json!({"matchResponseCodes": ["404"], "path": "/{lang}/404.html"});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        json!({"errorService": svc(), "defaultCustomErrorResponsePolicy": {"errorResponseRules": [r]}})
    };
    let at = "defaultCustomErrorResponsePolicy.errorResponseRules[0]";
    let e = err(rule(json!({})));
    assert_eq!(e, format!("{at}.languages: a path with {{lang}} needs the rule's languages"));
    for (bad, why) in [
        (json!(["en", "e n"]), "is not a language tag"),
        (json!(["en", "1de"]), "is not a language tag"),
        (json!(["en", "de-toolongsubtag"]), "is not a language tag"),
        (json!(["en", ""]), "is not a language tag"),
        (json!(["en", "EN"]), "is listed twice"),
    ] {
        let e = err(rule(json!({"languages": bad})));
        assert!(e.starts_with(&format!("{at}.languages[1]: ")) && e.contains(why), "{e}");
    }
    assert_eq!(err(rule(json!({"languages": []}))), format!("{at}.languages: must list at least one language"));
    let e = err(rule(json!({"languages": "en"})));
    assert!(e.starts_with(&format!("{at}.languages: ")), "{e}");
    // A list nothing uses would change nothing.
    let e = err(rule(json!({"path": "/404.html", "languages": ["en", "de"]})));
    assert!(e.starts_with(&format!("{at}.languages: no path has {{lang}}")), "{e}");
    let e = err(json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "passthrough": true, "languages": ["en", "de"]}]}}));
    assert!(e.starts_with(&format!("{at}.passthrough: ")), "{e}");
    // Their twins load: a path, a variant's path, an inline body or a rendered object using it.
    for good in [
        rule(json!({"languages": ["en", "de-CH", "zh-Hant-TW"]})),
        rule(
            json!({"path": "/404.html", "languages": ["en"], "variants": [{"contentType": "application/json", "path": "/{lang}.json"}]}),
        ),
        rule(json!({"path": null, "body": "<html lang=\"{{ lang }}\">", "languages": ["en", "de"]})),
        rule(json!({"path": "/404.html", "template": true, "languages": ["en", "de"]})),
    ] {
        let cfg = load(good.to_string().as_bytes()).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert!(!cfg.policies[0].rules.is_empty());
    }
}

#[test]
fn a_languages_tag_keeps_its_spelling_in_the_path() {
    let p = json!({"errorService": svc(), "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "path": "/{lang}/404.html", "languages": ["en", "de-CH"]}]}});
    let cfg = load(p.to_string().as_bytes()).unwrap();
    let mut r = StaticRequest { headers: vec![("accept-language".into(), "DE-ch".into())], ..req("h", "/") };
    match cfg.decide(404, &mut r) {
        Decision::Serve(_, serve) => assert_eq!(serve.languages, ["en", "de-CH"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rule_lists_at_most_sixty_four_languages_and_a_derived_name_keeps_dashes() {
    let with = |n: usize| {
        let langs: Vec<String> =
            (0..n as u8).map(|i| format!("{}{}", (b'a' + i / 26) as char, (b'a' + i % 26) as char)).collect();
        json!({"errorService": svc(), "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["404"], "path": "/{lang}.html", "languages": langs}]}})
    };
    load(with(64).to_string().as_bytes()).unwrap();
    assert!(err(with(65)).ends_with("languages: at most 64 languages"));
    let p = json!({"policies": {"api-v2": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "x"}]}}});
    let cfg = load(p.to_string().as_bytes()).unwrap();
    assert_eq!(cfg.rules().map(|r| r.stat.as_str()).collect::<Vec<_>>(), ["policy_api-v2_rule0"]);
}
