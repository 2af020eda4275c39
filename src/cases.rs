//! Policy tests (`policy test POLICY CASES`): requests and responses run through the
//! filter's own decision, each checked against what its author expects, as Envoy's
//! `router_check_tool` checks routes. The cases file's format is `schema/policy-tests.schema.json`.

use crate::config::reader::{as_obj, as_str, Obj};
use crate::config::{Config, ConfigError, POLICY_KEY};
use crate::decide::Decision;
use crate::request::{RequestView, StaticRequest};
use crate::{error_service, negotiate, reply};
use std::collections::BTreeSet;

/// What a case expects; a field left out is not checked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expect {
    /// `served`, `passthrough` or `untouched` (no rule covers the response).
    pub result: Option<String>,
    /// The JSON path of the deciding rule (served or passthrough).
    pub rule: Option<String>,
    pub status: Option<u16>,
    /// The object fetched from the error service (`{status}` filled in); `inline` for an
    /// inline body.
    pub object: Option<String>,
    pub content_type: Option<String>,
    /// The language chosen from the rule's `languages` (`Accept-Language`).
    pub language: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub request: StaticRequest,
    pub status: u16,
    pub expect: Expect,
}

/// What the engine decided for a case, in the terms of `Expect`, and how (its trace).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decided {
    pub result: String,
    pub rule: Option<String>,
    pub status: u16,
    pub object: Option<String>,
    pub content_type: Option<String>,
    pub language: Option<String>,
    pub trace: Vec<String>,
}

type Result<T> = std::result::Result<T, ConfigError>;

/// The cases file: `{"cases": [...]}`. Every error names the field's JSON path.
pub fn parse(text: &[u8], cfg: &Config) -> Result<Vec<Case>> {
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
    let mut top = as_obj(&doc, "")?;
    let cases = top.opt_array("cases")?;
    top.finish()?;
    if cases.is_empty() {
        return Err(ConfigError::new("cases", "is required and must not be empty"));
    }
    cases.iter().map(|(path, v)| case(path, v, cfg)).collect()
}

/// An object of header names to values: `(lower-case name, value)` pairs.
fn string_map(o: &mut Obj<'_>, field: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    if let Some(mut h) = o.opt_obj(field)? {
        for k in h.keys() {
            let p = h.field_path(&k);
            let v = h.get(&k).map(|v| as_str(v, &p)).transpose()?.unwrap_or_default();
            pairs.push((k.to_ascii_lowercase(), v.to_string()));
        }
        h.finish()?;
    }
    Ok(pairs)
}

fn case(path: &str, v: &serde_json::Value, cfg: &Config) -> Result<Case> {
    let mut o = as_obj(v, path)?;
    let name = o.opt_str("name")?.unwrap_or(path).to_string();
    let request = match o.opt_obj("request")? {
        Some(r) => request(r, cfg)?,
        None => StaticRequest { path: "/".into(), ..StaticRequest::default() },
    };
    let mut resp = o.opt_obj("response")?.ok_or_else(|| ConfigError::new(o.field_path("response"), "is required"))?;
    let status =
        resp.opt_uint("status", 100, 599)?.ok_or_else(|| ConfigError::new(resp.field_path("status"), "is required"))?;
    let mut request = request;
    request.response_headers = string_map(&mut resp, "headers")?;
    match resp.opt_str("source")? {
        None | Some("upstream") => {}
        Some("proxy") => request.made_by_proxy = true,
        Some(other) => {
            return Err(ConfigError::new(resp.field_path("source"), format!("\"{other}\": expected upstream or proxy")))
        }
    }
    resp.finish()?;
    let mut e = o.opt_obj("expect")?.ok_or_else(|| ConfigError::new(o.field_path("expect"), "is required"))?;
    let mut expect = Expect {
        result: match e.opt_str("result")? {
            None => None,
            Some(r @ ("served" | "passthrough" | "untouched")) => Some(r.to_string()),
            Some(other) => {
                return Err(ConfigError::new(
                    e.field_path("result"),
                    format!("\"{other}\": expected served, passthrough or untouched"),
                ))
            }
        },
        rule: e.opt_str("rule")?.map(str::to_string),
        status: e.opt_uint("status", 100, 599)?.map(|n| n as u16),
        object: e.opt_str("object")?.map(str::to_string),
        content_type: e.opt_str("contentType")?.map(str::to_string),
        language: e.opt_str("language")?.map(str::to_string),
    };
    // A rule is named by its JSON path or by the name its counters go by.
    if let Some(rule) = &mut expect.rule {
        match cfg.rules().find(|r| r.id == *rule || r.stat == *rule) {
            Some(r) => *rule = r.id.clone(),
            None => {
                return Err(ConfigError::new(e.field_path("rule"), format!("\"{rule}\" is not a rule of the policy")))
            }
        }
    }
    e.finish()?;
    o.finish()?;
    Ok(Case { name, request, status: status as u16, expect })
}

fn request(mut r: Obj<'_>, cfg: &Config) -> Result<StaticRequest> {
    let mut req = StaticRequest {
        authority: r.opt_str("host")?.unwrap_or_default().to_string(),
        path: r.opt_str("path")?.unwrap_or("/").to_string(),
        route_name: r.opt_str("route")?.map(str::to_string),
        ..StaticRequest::default()
    };
    // The method matters to Envoy (HEAD gets no body), not to the decision.
    r.opt_str("method")?;
    req.headers = string_map(&mut r, "headers")?;
    if let Some(p) = r.opt_str("routePolicy")? {
        req.route_metadata.push((cfg.metadata_namespace.clone(), POLICY_KEY.into(), p.to_string()));
    }
    if let Some(p) = r.opt_str("vhostPolicy")? {
        req.virtual_host_metadata.push((cfg.metadata_namespace.clone(), POLICY_KEY.into(), p.to_string()));
    }
    req.route_metadata.extend(metadata(&mut r, "routeMetadata")?);
    req.virtual_host_metadata.extend(metadata(&mut r, "vhostMetadata")?);
    r.finish()?;
    Ok(req)
}

/// `{"NAMESPACE": {"KEY": "VALUE"}}`, as Envoy's `filter_metadata`.
fn metadata(r: &mut Obj<'_>, field: &str) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    if let Some(mut m) = r.opt_obj(field)? {
        for ns in m.keys() {
            if let Some(mut keys) = m.opt_obj(&ns)? {
                for key in keys.keys() {
                    let value = keys.req_str(&key)?;
                    out.push((ns.clone(), key, value.to_string()));
                }
                keys.finish()?;
            }
        }
        m.finish()?;
    }
    Ok(out)
}

/// The engine's decision for a case: the same decision path as the filter in Envoy.
pub fn decide(cfg: &Config, case: &Case) -> Decided {
    let mut req = case.request.clone();
    let mut trace = Vec::new();
    let status = case.status;
    let decision = cfg.decide_observed(status, &mut req, &mut trace);
    match decision {
        // The status is the served one: only a served response has one to check.
        Decision::None => Decided { result: "untouched".into(), trace, ..Decided::default() },
        Decision::Passthrough(rule) => {
            Decided { result: "passthrough".into(), rule: Some(rule.id.clone()), trace, ..Decided::default() }
        }
        Decision::Serve(rule, serve) => {
            let accept = req.header("accept");
            let variant = negotiate::choose(serve, accept.as_deref());
            let language = serve.languages.get(negotiate::language_for(serve, &mut req));
            let object = match &variant.path {
                Some(p) => error_service::object_path(p, status, language.map_or("", String::as_str)),
                None => "inline".into(),
            };
            Decided {
                result: "served".into(),
                rule: Some(rule.id.clone()),
                status: reply::served_status(serve, status),
                object: Some(object),
                content_type: Some(variant.content_type.clone()),
                language: language.cloned(),
                trace,
            }
        }
    }
}

/// What differs from the expectation, one line each (empty: the case passes).
pub fn mismatches(expect: &Expect, got: &Decided) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, want: Option<String>, have: Option<String>| {
        if let Some(want) = want {
            if Some(&want) != have.as_ref() {
                out.push(format!("{what}: expected {want}, got {}", have.as_deref().unwrap_or("(none)")));
            }
        }
    };
    check("result", expect.result.clone(), Some(got.result.clone()));
    check("rule", expect.rule.clone(), got.rule.clone());
    let served = got.result == "served";
    check("status", expect.status.map(|s| s.to_string()), served.then(|| got.status.to_string()));
    check("object", expect.object.clone(), got.object.clone());
    check("contentType", expect.content_type.clone(), got.content_type.clone());
    check("language", expect.language.clone(), got.language.clone());
    out
}

/// The rules no case reached, in the policy's order, and how many there are in all.
pub fn unreached<'c>(cfg: &'c Config, decided: &[Decided]) -> (Vec<&'c str>, usize) {
    let reached: BTreeSet<&str> = decided.iter().filter_map(|d| d.rule.as_deref()).collect();
    let all: Vec<&str> = cfg.policies.iter().flat_map(|p| p.rules.iter().map(|r| r.id.as_str())).collect();
    let total = all.len();
    (all.into_iter().filter(|id| !reached.contains(id)).collect(), total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Config {
        let p = json!({
            "errorService": "errors",
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
                {"matchResponseCodes": ["404"], "path": "/e/404.html"},
                {"matchResponseCodes": ["5xx"], "path": "/e/{status}.html", "overrideResponseCode": 503},
                {"matchResponseCodes": ["403"], "passthrough": true}]},
            "hostRules": [{"hosts": ["api.test"], "pathMatcher": "api"}],
            "pathMatchers": [{"name": "api", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
                {"matchResponseCodes": ["404"], "body": "{}", "contentType": "application/json"}]}}]
        });
        crate::config::load(p.to_string().as_bytes()).unwrap()
    }

    fn run(cases: serde_json::Value) -> Vec<(Case, Decided)> {
        let cfg = policy();
        parse(cases.to_string().as_bytes(), &cfg).unwrap().into_iter().map(|c| (c.clone(), decide(&cfg, &c))).collect()
    }

    #[test]
    fn a_right_expectation_passes_and_a_wrong_one_says_what_differs() {
        let ran = run(json!({"cases": [
            {"name": "right", "request": {"host": "www.test", "path": "/a"}, "response": {"status": 502},
             "expect": {"result": "served", "rule": "defaultCustomErrorResponsePolicy.errorResponseRules[1]",
                        "status": 503, "object": "/e/502.html", "contentType": "text/html; charset=utf-8"}},
            {"name": "wrong", "request": {"host": "www.test"}, "response": {"status": 502},
             "expect": {"status": 502, "object": "/e/503.html"}}]}));
        assert_eq!(mismatches(&ran[0].0.expect, &ran[0].1), Vec::<String>::new());
        assert_eq!(
            mismatches(&ran[1].0.expect, &ran[1].1),
            ["status: expected 502, got 503", "object: expected /e/503.html, got /e/502.html"]
        );
        assert!(!ran[1].1.trace.is_empty(), "the engine's trace comes with a failure");
    }

    #[test]
    fn passthrough_untouched_and_a_host_level_inline_rule() {
        let ran = run(json!({"cases": [
            {"response": {"status": 403}, "expect": {"result": "passthrough", "rule": "defaultCustomErrorResponsePolicy.errorResponseRules[2]"}},
            {"response": {"status": 200}, "expect": {"result": "untouched"}},
            {"request": {"host": "api.test"}, "response": {"status": 404},
             "expect": {"rule": "pathMatchers[0].defaultCustomErrorResponsePolicy.errorResponseRules[0]", "object": "inline", "contentType": "application/json"}},
            {"request": {"host": "api.test"}, "response": {"status": 404}, "expect": {"result": "untouched"}}]}));
        for (case, got) in &ran[..3] {
            assert_eq!(mismatches(&case.expect, got), Vec::<String>::new(), "{}", case.name);
        }
        assert_eq!(mismatches(&ran[3].0.expect, &ran[3].1), ["result: expected untouched, got served"]);
        // Whatever the engine decided, a failure comes with its trace.
        let wrong = run(json!({"cases": [
            {"response": {"status": 403}, "expect": {"result": "served"}},
            {"response": {"status": 418}, "expect": {"result": "served"}}]}));
        for (case, got) in &wrong {
            assert!(!mismatches(&case.expect, got).is_empty() && !got.trace.is_empty(), "{got:?}");
        }
        assert_eq!(ran[0].0.name, "cases[0]", "an unnamed case is called by its place");
    }

    #[test]
    fn a_case_without_a_request_asks_for_the_root_path() {
        let cfg = crate::config::load(
            json!({"hostRules": [{"hosts": ["*"], "pathMatcher": "m"}],
                   "pathMatchers": [{"name": "m", "pathRules": [{"paths": ["/"], "customErrorResponsePolicy":
                       {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "root"}]}}]}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let cases = parse(
            json!({"cases": [{"response": {"status": 404}, "expect": {"result": "served"}}]}).to_string().as_bytes(),
            &cfg,
        )
        .unwrap();
        assert_eq!(mismatches(&cases[0].expect, &decide(&cfg, &cases[0])), Vec::<String>::new());
    }

    #[test]
    fn a_rule_may_be_expected_by_the_name_its_counters_go_by() {
        let ran = run(json!({"cases": [
            {"response": {"status": 403}, "expect": {"rule": "default_rule2"}},
            {"response": {"status": 404}, "expect": {"rule": "default_rule2"}}]}));
        assert_eq!(ran[0].0.expect.rule.as_deref(), Some("defaultCustomErrorResponsePolicy.errorResponseRules[2]"));
        assert_eq!(mismatches(&ran[0].0.expect, &ran[0].1), Vec::<String>::new());
        assert_eq!(
            mismatches(&ran[1].0.expect, &ran[1].1),
            ["rule: expected defaultCustomErrorResponsePolicy.errorResponseRules[2], got defaultCustomErrorResponsePolicy.errorResponseRules[0]"]
        );
    }

    #[test]
    fn coverage_counts_every_rule_and_lists_those_no_case_reached() {
        let cfg = policy();
        let ran = run(
            json!({"cases": [{"response": {"status": 404}, "expect": {}}, {"response": {"status": 404}, "expect": {}}]}),
        );
        let decided: Vec<Decided> = ran.into_iter().map(|(_, d)| d).collect();
        let (missed, total) = unreached(&cfg, &decided);
        assert_eq!(total, 4);
        assert_eq!(
            missed,
            [
                "defaultCustomErrorResponsePolicy.errorResponseRules[1]",
                "defaultCustomErrorResponsePolicy.errorResponseRules[2]",
                "pathMatchers[0].defaultCustomErrorResponsePolicy.errorResponseRules[0]"
            ]
        );
        let (none_missed, _) = unreached(&cfg, &[]);
        assert_eq!(none_missed.len(), 4, "no case: every rule unreached");
    }

    #[test]
    fn a_bad_cases_file_is_refused_with_the_field() {
        let cfg = policy();
        let err = |v: serde_json::Value| parse(v.to_string().as_bytes(), &cfg).unwrap_err().to_string();
        assert_eq!(err(json!({"cases": []})), "cases: is required and must not be empty");
        assert_eq!(err(json!({"cases": [{"expect": {}}]})), "cases[0].response: is required");
        assert_eq!(
            err(json!({"cases": [{"response": {"status": 99}, "expect": {}}]})),
            "cases[0].response.status: 99 is outside 100-599"
        );
        assert!(err(json!({"cases": [{"response": {"status": 404}, "expect": {"rule": "nope"}}]}))
            .starts_with("cases[0].expect.rule: \"nope\" is not a rule"));
        assert!(err(json!({"cases": [{"response": {"status": 404}, "expect": {"result": "maybe"}}]}))
            .starts_with("cases[0].expect.result: \"maybe\""));
        assert!(err(json!({"cases": [{"response": {"status": 404, "sorce": "proxy"}, "expect": {}}]}))
            .starts_with("cases[0].response.sorce: unknown field"));
        assert!(parse(b"{not json", &cfg).unwrap_err().to_string().starts_with("<policy>: not valid JSON"));
    }

    #[test]
    fn source_route_and_metadata_reach_the_decision() {
        let ran = run(
            json!({"cases": [{"request": {"route": "r", "routePolicy": "p", "routeMetadata": {"istio": {"config": "x"}}},
                                        "response": {"status": 404, "source": "proxy"}, "expect": {}}]}),
        );
        let req = &ran[0].0.request;
        assert!(req.made_by_proxy);
        assert_eq!(req.route_name.as_deref(), Some("r"));
        assert_eq!(req.route_metadata.len(), 2);
    }
}
