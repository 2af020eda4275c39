//! The `policy` command-line tool: check, explain, import-gcp (host binary, same engine).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests stop on what they did not expect

use serde_json::json;
use std::process::Command;

fn policy(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_policy")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sample() -> String {
    format!("{}/envoy/policy.json", env!("CARGO_MANIFEST_DIR"))
}

fn temp(name: &str, text: &str) -> String {
    let p = std::env::temp_dir().join(format!("policy-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn check_accepts_good_and_refuses_bad_with_field_path() {
    let (ok, out, _) = policy(&["check", &sample()]);
    assert!(ok, "{out}");
    assert!(out.starts_with("ok: "), "{out}");
    let bad = temp(
        "bad.json",
        r#"{"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["4x4"], "body": "x"}]}}"#,
    );
    let (ok, _, err) = policy(&["check", &bad]);
    assert!(!ok);
    assert_eq!(err.trim(), "defaultCustomErrorResponsePolicy.errorResponseRules[0].matchResponseCodes[0]: \"4x4\" is not a code (400-599), a class (\"4xx\", \"5xx\") or a range (\"502-504\")");
    let (ok, _, err) = policy(&["check", "/nonexistent/policy.json"]);
    assert!(!ok && err.contains("/nonexistent/policy.json"));
}

#[test]
fn check_warns_about_a_success_page_caches_may_keep() {
    let (ok, _, err) = policy(&["check", &sample()]);
    assert!(ok && err.is_empty(), "the sample says how to cache its 200 placeholder: {err}");
    let risky = temp(
        "risky.json",
        r#"{"errorService": "errors", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["503"], "path": "/maintenance.html", "overrideResponseCode": 200}]}}"#,
    );
    let (ok, out, err) = policy(&["check", &risky]);
    assert!(ok, "a warning, not a refusal: {out}");
    assert!(
        err.starts_with(
            "warning: defaultCustomErrorResponsePolicy.errorResponseRules[0].overrideResponseCode: 200 is not an error"
        ) && err.contains("\"cache-control\""),
        "{err}"
    );
}

#[test]
fn explain_takes_the_routes_and_virtual_hosts_metadata() {
    let f = temp(
        "named.json",
        r#"{"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "site"}]},
            "hostRules": [{"hosts": ["h"], "pathMatcher": "m"}],
            "pathMatchers": [{"name": "m", "routeRules": [{"priority": 1,
                "matchRules": [{"routeMetadataMatches": [{"namespace": "istio", "key": "config", "suffixMatch": "/virtual-service/shop"}]}],
                "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["502"], "body": "shop"}]}}]}],
            "policies": {"checkout": {"errorResponseRules": [{"matchResponseCodes": ["503"], "body": "checkout"}]}}}"#,
    );
    let (ok, out, err) = policy(&["explain", &f, "--host", "h", "--status", "503", "--route-policy", "checkout"]);
    assert!(ok, "{err}");
    assert!(out.contains("- the route's metadata selects policy \"checkout\" (policies.checkout)"), "{out}");
    assert!(out.contains("result: served by policies.checkout.errorResponseRules[0] (level: named)"), "{out}");
    let (_, out, _) = policy(&["explain", &f, "--host", "h", "--status", "503", "--vhost-policy", "nope"]);
    assert!(
        out.contains("- the virtual host's metadata names policy \"nope\", which policies does not have: skipped"),
        "{out}"
    );
    assert!(out.contains("result: served by defaultCustomErrorResponsePolicy.errorResponseRules[0]"), "{out}");
    let vs = "istio.config=/apis/networking.istio.io/v1alpha3/namespaces/web/virtual-service/shop";
    let (_, out, _) = policy(&["explain", &f, "--host", "h", "--status", "502", "--route-metadata", vs]);
    assert!(
        out.contains("result: served by pathMatchers[0].routeRules[0].customErrorResponsePolicy.errorResponseRules[0]"),
        "{out}"
    );
    let (_, out, _) = policy(&["explain", &f, "--host", "h", "--status", "502"]);
    assert!(
        out.contains("result: served by defaultCustomErrorResponsePolicy"),
        "without the VirtualService's routes: {out}"
    );
    let (ok, _, err) = policy(&["explain", &f, "--host", "h", "--status", "502", "--route-metadata", "novalue"]);
    assert!(!ok && err.contains("expected NAMESPACE.KEY=VALUE"), "{err}");
}

#[test]
fn explain_names_level_rule_and_object() {
    let (ok, out, err) =
        policy(&["explain", &sample(), "--host", "shop.localhost", "--path", "/images/a.png", "--status", "404"]);
    assert!(ok, "{err}");
    assert!(out.contains("host \"shop.localhost\" selects path matcher \"shop\""), "{out}");
    assert!(out.contains("the request matches pathMatchers[0].pathRules[0]"), "{out}");
    assert!(out.contains("result: served by pathMatchers[0].pathRules[0].customErrorResponsePolicy.errorResponseRules[0] (level: pathRule)"), "{out}");
    assert!(out.contains("status: 200 (overrides 404)"), "{out}");
    assert!(out.contains("object: GET /images/missing.svg from cluster \"error_pages\""), "{out}");
}

#[test]
fn explain_fall_through_negotiation_and_passthrough() {
    let (_, out, _) = policy(&[
        "explain",
        &sample(),
        "--host",
        "shop.localhost",
        "--path",
        "/x",
        "--status",
        "503",
        "--source",
        "upstream",
    ]);
    assert!(
        out.contains(
            "pathMatchers[0].defaultCustomErrorResponsePolicy has no rule for 503: deferring to the level above"
        ),
        "{out}"
    );
    assert!(
        out.contains("result: served by defaultCustomErrorResponsePolicy.errorResponseRules[1] (level: proxy)"),
        "{out}"
    );
    let (_, out, _) = policy(&[
        "explain",
        &sample(),
        "--host",
        "x",
        "--path",
        "/x",
        "--status",
        "404",
        "--header",
        "accept: application/json",
    ]);
    assert!(out.contains("variant: application/json") && out.contains("GET /errors/404.json"), "{out}");
    let (_, out, _) = policy(&["explain", &sample(), "--host", "api.localhost", "--path", "/x", "--status", "404"]);
    assert!(
        out.contains("result: 404 passes through untouched (passthrough rule pathMatchers[1].routeRules[1]"),
        "{out}"
    );
    let (_, out, _) = policy(&["explain", &sample(), "--host", "x", "--path", "/", "--status", "302"]);
    assert!(out.contains("no rule at any level covers 302"), "{out}");
    let (ok, _, err) = policy(&["explain", &sample(), "--host", "x"]);
    assert!(!ok && err.contains("--status is required"));
}

#[test]
fn import_gcp_url_map() {
    let (ok, out, err) = policy(&[
        "import-gcp",
        &data("gcp-urlmap.json"),
        "--service",
        "error-pages=error_pages",
        "--service",
        "error-api=error_api",
    ]);
    assert!(ok, "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["defaultCustomErrorResponsePolicy"]["errorService"], "error_pages");
    assert_eq!(p["defaultCustomErrorResponsePolicy"]["errorResponseRules"][0]["overrideResponseCode"], 503);
    assert_eq!(p["hostRules"][0]["hosts"][1], "*.shop.example.com");
    assert_eq!(
        p["pathMatchers"][0]["pathRules"].as_array().unwrap().len(),
        1,
        "a path rule without an error policy is routing only"
    );
    assert_eq!(p["pathMatchers"][1]["routeRules"][0]["customErrorResponsePolicy"]["errorService"], "error_api");
    assert_eq!(p["pathMatchers"][1]["routeRules"][0]["matchRules"].as_array().unwrap().len(), 1);
    assert!(err.contains("pathTemplateMatch: not supported"), "{err}");
    assert!(err.contains("metadataFilters: not used for error responses"), "{err}");
    // the output loads in the filter
    let f = temp("imported.json", &out);
    assert!(policy(&["check", &f]).0);
    // a backend without a mapping is an error naming it
    let (ok, _, err) = policy(&["import-gcp", &data("gcp-urlmap.json"), "--service", "error-pages=error_pages"]);
    assert!(!ok);
    assert!(err.contains("pathMatchers[1].routeRules[0].customErrorResponsePolicy.errorService: no --service mapping for backend \"error-api\""), "{err}");
}

#[test]
fn explain_says_whether_the_object_is_prewarmed_and_what_an_outage_serves() {
    let f = temp(
        "prewarm.json",
        r#"{"errorService": {"cluster": "e", "staleIfErrorSeconds": 600, "prewarmCodes": [502]},
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
                {"matchResponseCodes": ["5xx"], "path": "/e/{status}.html"},
                {"matchResponseCodes": ["404"], "path": "/e/404.html", "overrideResponseCode": 200},
                {"matchResponseCodes": ["410"], "path": "/e/410.html", "body": "gone"}]}}"#,
    );
    let explain = |status: &str| policy(&["explain", &f, "--host", "h", "--status", status]).1;
    let out = explain("502");
    assert!(out.contains("prewarmed: yes"), "{out}");
    assert!(
        out.contains(
            "if the error service is down: the stale copy (up to 600 s past its TTL), else the built-in generic page\n"
        ),
        "{out}"
    );
    let out = explain("503");
    assert!(
        out.contains("prewarmed: no (fetched on the first such error's path)"),
        "a class code not in prewarmCodes: {out}"
    );
    let out = explain("404");
    assert!(out.contains("prewarmed: yes"), "an exact code: {out}");
    assert!(out.contains("else the built-in generic page, as 404 (never a success)"), "{out}");
    assert!(explain("410").contains("else the rule's inline body"));
    let off = temp(
        "prewarm-off.json",
        r#"{"errorService": {"cluster": "e", "prewarm": false},
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/e/404.html"}]}}"#,
    );
    let out = policy(&["explain", &off, "--host", "h", "--status", "404"]).1;
    assert!(out.contains("prewarmed: no"), "{out}");
}

fn root(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn test_runs_the_sample_and_istio_cases_reaching_every_rule() {
    for (policy_file, cases, rules) in [
        ("envoy/policy.json", "tests/policy/envoy.cases.json", 9),
        ("istio/policy.json", "tests/policy/istio.cases.json", 6),
    ] {
        let (ok, out, err) = policy(&["test", &root(policy_file), &root(cases), "--coverage", "--fail-under", "100"]);
        assert!(ok, "{out}{err}");
        assert!(out.contains(&format!("0 failed; rules reached: {rules}/{rules} (100.0 %)")), "{out}");
        assert!(!out.contains("not reached"), "{out}");
    }
}

#[test]
fn test_a_wrong_expectation_fails_with_what_differs_and_the_engines_trace() {
    let cases = temp(
        "wrong.cases.json",
        r#"{"cases": [{"name": "images are placeholders", "request": {"host": "shop.localhost", "path": "/images/a.png"},
                       "response": {"status": 404}, "expect": {"status": 404, "object": "/images/missing.svg"}},
                      {"name": "right", "request": {"host": "www.localhost"}, "response": {"status": 200}, "expect": {"result": "untouched"}}]}"#,
    );
    let (ok, out, err) = policy(&["test", &sample(), &cases]);
    assert!(!ok);
    assert!(out.contains("FAIL images are placeholders: upstream shop.localhost/images/a.png -> 404"), "{out}");
    assert!(out.contains("  status: expected 404, got 200\n"), "{out}");
    assert!(!out.contains("object: expected"), "the object was right: {out}");
    assert!(out.contains("  - host \"shop.localhost\" selects path matcher \"shop\""), "the trace: {out}");
    assert!(!out.contains("FAIL right"), "{out}");
    assert!(out.contains("2 cases: 1 passed, 1 failed"), "{out}");
    assert!(err.contains("1 of 2 cases failed"), "{err}");
}

#[test]
fn test_coverage_is_exact_and_fail_under_fails_below_it() {
    // Two of the sample's nine rules reached.
    let cases = temp(
        "partial.cases.json",
        r#"{"cases": [{"response": {"status": 404}, "expect": {}}, {"response": {"status": 500}, "expect": {}}]}"#,
    );
    let (ok, out, _) = policy(&["test", &sample(), &cases, "--coverage"]);
    assert!(ok, "{out}");
    assert!(out.contains("rules reached: 2/9 (22.2 %)"), "{out}");
    assert_eq!(out.matches("not reached: ").count(), 7, "{out}");
    assert!(out.contains("not reached: defaultCustomErrorResponsePolicy.errorResponseRules[2]"), "{out}");
    assert!(!out.contains("not reached: defaultCustomErrorResponsePolicy.errorResponseRules[0]"), "{out}");
    let (ok, _, err) = policy(&["test", &sample(), &cases, "--fail-under", "50"]);
    assert!(!ok);
    assert!(err.contains("rule coverage 22.2 % is under 50 %"), "{err}");
    let (ok, _, _) = policy(&["test", &sample(), &cases, "--fail-under", "22"]);
    assert!(ok, "22.2 % is not under 22 %");
}

#[test]
fn test_a_bad_cases_file_is_refused_with_the_field() {
    let cases = temp("bad.cases.json", r#"{"cases": [{"response": {"status": 404}, "expect": {"stauts": 404}}]}"#);
    let (ok, _, err) = policy(&["test", &sample(), &cases]);
    assert!(!ok);
    assert!(err.contains("cases[0].expect.stauts: unknown field"), "{err}");
}

#[test]
fn explain_shows_which_rules_response_matches_failed_and_why() {
    let f = temp(
        "response-matches.json",
        r#"{"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"name": "api-own", "matchResponseCodes": ["404"], "passthrough": true,
             "responseHeaderMatches": [{"headerName": "content-type", "prefixMatch": "application/problem+json"}]},
            {"matchResponseCodes": ["404"], "body": "page"}]}}"#,
    );
    let args = ["explain", &f, "--host", "h", "--path", "/", "--status", "404"];
    let (ok, out, _) = policy(&[&args[..], &["--response-header", "content-type: text/html"]].concat());
    assert!(ok);
    assert!(
        out.contains("defaultCustomErrorResponsePolicy.errorResponseRules[0]: responseHeaderMatches[0] (content-type) does not hold for this response: the rule does not count"),
        "{out}"
    );
    assert!(out.contains("result: served by defaultCustomErrorResponsePolicy.errorResponseRules[1]"), "{out}");
    // The twin: the API's own error passes, and nothing failed on the way.
    let (_, out, _) = policy(&[&args[..], &["--response-header", "Content-Type: application/problem+json"]].concat());
    assert!(!out.contains("does not hold"), "{out}");
    assert!(out.contains("(counted as \"api-own\")") && out.contains("passthrough"), "{out}");
}

#[test]
fn a_policy_test_case_gives_the_responses_headers() {
    let p = temp(
        "empty-bodies.json",
        r#"{"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"name": "empty-502", "matchResponseCodes": ["502"], "body": "page",
             "responseHeaderMatches": [{"headerName": "content-length", "exactMatch": "0"}]}]}}"#,
    );
    let cases = temp(
        "empty-bodies.cases.json",
        r#"{"cases": [
            {"name": "empty", "response": {"status": 502, "headers": {"Content-Length": "0"}}, "expect": {"result": "served", "rule": "empty-502"}},
            {"name": "with a body", "response": {"status": 502, "headers": {"content-length": "12"}}, "expect": {"result": "untouched"}}]}"#,
    );
    let (ok, out, err) = policy(&["test", &p, &cases]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    // The twin: a wrong expectation fails on the response's headers.
    let wrong = temp(
        "empty-bodies-wrong.cases.json",
        r#"{"cases": [{"name": "with a body", "response": {"status": 502, "headers": {"content-length": "12"}}, "expect": {"result": "served"}}]}"#,
    );
    let (ok, out, _) = policy(&["test", &p, &wrong]);
    assert!(!ok && out.contains("result: expected served, got untouched"), "{out}");
}

#[test]
fn explain_and_policy_tests_show_the_language_accept_language_chooses() {
    let f = temp(
        "languages.json",
        r#"{"errorService": "error_pages", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
            {"matchResponseCodes": ["404"], "path": "/{lang}/404.html", "languages": ["en", "de", "fr"]}]}}"#,
    );
    let explain = |extra: &[&str]| {
        let args = [&["explain", f.as_str(), "--host", "h", "--path", "/", "--status", "404"][..], extra].concat();
        policy(&args).1
    };
    let out = explain(&["--header", "accept-language: de-CH,de;q=0.9,en;q=0.5"]);
    assert!(out.contains("  language: de (from accept-language \"de-CH,de;q=0.9,en;q=0.5\"; of en, de, fr)"), "{out}");
    assert!(out.contains("object: GET /de/404.html"), "{out}");
    let out = explain(&[]);
    assert!(out.contains("language: en (no accept-language: the default") && out.contains("GET /en/404.html"), "{out}");
    let cases = temp(
        "languages.cases.json",
        r#"{"cases": [
            {"request": {"headers": {"Accept-Language": "fr-CA, en;q=0.5"}}, "response": {"status": 404},
             "expect": {"language": "fr", "object": "/fr/404.html"}},
            {"request": {"headers": {"accept-language": "ja"}}, "response": {"status": 404}, "expect": {"language": "de"}}]}"#,
    );
    let (ok, out, _) = policy(&["test", &f, &cases]);
    assert!(!ok, "{out}");
    assert!(out.contains("1 passed, 1 failed") && out.contains("language: expected de, got en"), "{out}");
}

#[test]
fn import_envoy_gateway_keeps_first_match_wins_and_says_what_it_needs() {
    let btp = data("envoy-gateway-btp.json");
    // The ConfigMap body and the redirect's host are outside the policy: asked for by name.
    let (ok, _, err) = policy(&["import-envoy-gateway", &btp, "--service", "errors.example.com=error_pages"]);
    assert!(!ok && err.contains("--configmap response-override-config=FILE"), "{err}");
    let cm = temp("cm-body.json", r#"{"error":"internal"}"#);
    let (ok, _, err) =
        policy(&["import-envoy-gateway", &btp, "--configmap", &format!("response-override-config={cm}")]);
    assert!(!ok && err.contains("--service errors.example.com=CLUSTER"), "{err}");
    let (ok, out, err) = policy(&[
        "import-envoy-gateway",
        &btp,
        "--service",
        "errors.example.com=error_pages",
        "--configmap",
        &format!("response-override-config={cm}"),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("attach the filter there") && err.contains("HTTPRoute \"backend\""), "{err}");
    let imported: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rules = imported["defaultCustomErrorResponsePolicy"]["errorResponseRules"].as_array().unwrap();
    let codes: Vec<&serde_json::Value> = rules.iter().map(|r| &r["matchResponseCodes"]).collect();
    // 404 stays with the 4xx range before it (Envoy Gateway: first match wins): the third
    // override keeps 500 only; 403 made by Envoy is already the range's.
    assert_eq!(codes, [&json!(["404"]), &json!(["400-499"]), &json!(["500"]), &json!(["501-511"])], "{out}");
    assert_eq!(rules[0]["body"], "{\"status\":{{status}},\"path\":\"{{path}}\"}");
    assert_eq!(rules[2]["body"], r#"{"error":"internal"}"#);
    assert_eq!(
        (&rules[3]["path"], &rules[3]["source"], &rules[3]["errorService"]["cluster"]),
        (&json!("/5xx.html"), &json!("upstream"), &json!("error_pages"))
    );
    // It decides as Envoy Gateway would: written to a file and explained.
    let f = temp("imported-eg.json", &out);
    let explain = |status: &str, extra: &[&str]| {
        let args = [&["explain", f.as_str(), "--host", "h", "--path", "/", "--status", status][..], extra].concat();
        policy(&args).1
    };
    assert!(explain("404", &["--response-header", "content-type:application/problem+json"])
        .contains("errorResponseRules[0]"));
    assert!(explain("404", &[]).contains("result: served by defaultCustomErrorResponsePolicy.errorResponseRules[1]"));
    assert!(explain("500", &[]).contains("errorResponseRules[2]"));
    assert!(
        explain("503", &["--source", "proxy"]).contains("passes through"),
        "a Backend-only override leaves Envoy's own 503"
    );
}

#[test]
fn import_envoy_gateway_refuses_what_is_not_a_response_override() {
    let f = temp("not-btp.json", r#"{"kind": "HTTPRoute", "spec": {}}"#);
    let (ok, _, err) = policy(&["import-envoy-gateway", &f]);
    assert!(!ok && err.contains("expected a BackendTrafficPolicy"), "{err}");
    let f = temp(
        "bad-btp.json",
        r#"{"kind": "BackendTrafficPolicy", "spec": {"responseOverride": [{"match": {"statusCodes": [{"value": 404}], "source": "Nowhere"}, "response": {}}]}}"#,
    );
    let (ok, _, err) = policy(&["import-envoy-gateway", &f]);
    assert!(!ok && err.contains("spec.responseOverride[0].match.source"), "{err}");
    // The twin: the same without the bad source imports as an empty reply.
    let f = temp(
        "good-btp.json",
        r#"{"kind": "BackendTrafficPolicy", "spec": {"responseOverride": [{"match": {"statusCodes": [{"value": 404}]}, "response": {}}]}}"#,
    );
    let (ok, out, err) = policy(&["import-envoy-gateway", &f]);
    assert!(ok && out.contains("\"body\": \"\""), "{out}{err}");
}

/// The migration page's policies are real: each JSON block loads in the filter's engine.
#[test]
fn every_policy_on_the_migration_page_loads() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/migration.md")).unwrap();
    let blocks: Vec<&str> = page.split("```json\n").skip(1).filter_map(|b| b.split("\n```").next()).collect();
    assert_eq!(blocks.len(), 4, "one policy per peer");
    for (i, block) in blocks.iter().enumerate() {
        let f = temp(&format!("migration-{i}.json"), block);
        let (ok, out, err) = policy(&["check", &f]);
        assert!(ok, "block {i}: {out}{err}\n{block}");
    }
}
