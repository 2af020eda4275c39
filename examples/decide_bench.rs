//! Host-side micro-benchmark of one decision (`Config::decide`) as the policy grows:
//! ns per decision for policies of 10 to 1,000 rules, spread over 1 to 1,000 hosts.
//! Run: `cargo run --release --example decide_bench`.

// A benchmark program, not filter code: a policy that does not load is a bug to stop on.
#![allow(clippy::expect_used)]

use custom_error_pages::config::load;
use custom_error_pages::request::StaticRequest;
use serde_json::json;
use std::hint::black_box;
use std::time::Instant;

/// `hosts` host rules, each with a path matcher holding path rules, route rules (header
/// and regex matches) and a default policy: about `rules_per_host` rules each.
fn policy(hosts: usize, rules_per_host: usize) -> serde_json::Value {
    let mut host_rules = vec![];
    let mut matchers = vec![];
    for h in 0..hosts {
        let name = format!("m{h}");
        host_rules
            .push(json!({"hosts": [format!("h{h}.example.com"), format!("*.w{h}.example.org")], "pathMatcher": name}));
        let route_rules: Vec<_> = (0..rules_per_host.saturating_sub(2))
            .map(|r| json!({
                "priority": r,
                "matchRules": [{"prefixMatch": format!("/api/v{r}/"), "headerMatches": [{"headerName": "x-tenant", "exactMatch": format!("t{r}")}]},
                               {"regexMatch": format!("/svc{r}/[a-z]+/[0-9]+")}],
                "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "path": format!("/e/{h}/{r}.html")}]}
            }))
            .collect();
        matchers.push(json!({
            "name": name,
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
                {"matchResponseCodes": ["404"], "path": format!("/e/{h}/404.html")},
                {"matchResponseCodes": ["502-504"], "path": format!("/e/{h}/50x.html")}]},
            "routeRules": route_rules
        }));
    }
    json!({
        "errorService": "errors",
        "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["4xx"], "path": "/e/4xx.html"}, {"matchResponseCodes": ["5xx"], "path": "/e/5xx.html"}]},
        "hostRules": host_rules,
        "pathMatchers": matchers,
    })
}

fn main() {
    println!("| hosts | rules | decision | ns per decision |");
    println!("|---:|---:|---|---:|");
    for (hosts, per_host) in [(1, 10), (10, 10), (100, 10), (1000, 1), (10, 100), (1, 1000)] {
        let p = policy(hosts, per_host);
        let cfg = load(p.to_string().as_bytes()).expect("benchmark policy loads");
        let rules: usize = cfg.policies.iter().map(|p| p.rules.len()).sum();
        let last = hosts - 1;
        let cases = [
            ("200 (no rule: early exit)", 200u16, format!("h{last}.example.com"), "/api/v0/x".to_string()),
            ("404 host default", 404, format!("h{last}.example.com"), "/x".to_string()),
            ("404 wildcard host", 404, format!("a.w{last}.example.org"), "/x".to_string()),
            (
                "503 last route rule (regex)",
                503,
                format!("h{last}.example.com"),
                format!("/svc{}/abc/42", per_host.saturating_sub(3)),
            ),
        ];
        for (label, status, host, path) in cases {
            let mut req = StaticRequest { authority: host, path, ..Default::default() };
            let iterations = 200_000;
            let start = Instant::now();
            for _ in 0..iterations {
                black_box(cfg.decide(black_box(status), &mut req));
            }
            let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
            println!("| {hosts} | {rules} | {label} | {ns:.0} |");
        }
    }
}
