//! Import from Google Cloud: the custom error response policies of a URL map (as
//! `gcloud compute url-maps describe NAME --format=json` prints it) turned into our policy.
//! Backend bucket/service URLs become Envoy cluster names through a mapping; everything
//! that is about routing rather than error responses (services, route actions, header
//! actions, metadata filters) is dropped, with a note.

use serde_json::{json, Map, Value};

pub struct Imported {
    pub policy: Value,
    pub notes: Vec<String>,
}

/// `services`: (backend name or full URL, cluster). A backend matches by full URL or by its
/// last path segment (`.../backendBuckets/error-pages` matches `error-pages`).
pub fn import(url_map: &Value, services: &[(String, String)]) -> Result<Imported, String> {
    let mut notes = Vec::new();
    let map = url_map.as_object().ok_or("the URL map must be a JSON object")?;
    let mut out = Map::new();
    if let Some(p) = map.get("defaultCustomErrorResponsePolicy") {
        out.insert(
            "defaultCustomErrorResponsePolicy".into(),
            policy(p, services, "defaultCustomErrorResponsePolicy", &mut notes)?,
        );
    }
    if let Some(hrs) = map.get("hostRules").and_then(Value::as_array) {
        let rules: Vec<Value> = hrs
            .iter()
            .map(|h| json!({"hosts": h.get("hosts").cloned().unwrap_or(json!([])), "pathMatcher": h.get("pathMatcher").cloned().unwrap_or(Value::Null)}))
            .collect();
        out.insert("hostRules".into(), Value::Array(rules));
    }
    let mut matchers = Vec::new();
    for (i, m) in map.get("pathMatchers").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let at = format!("pathMatchers[{i}]");
        let mut pm = Map::new();
        pm.insert("name".into(), m.get("name").cloned().unwrap_or(Value::Null));
        if let Some(p) = m.get("defaultCustomErrorResponsePolicy") {
            pm.insert(
                "defaultCustomErrorResponsePolicy".into(),
                policy(p, services, &format!("{at}.defaultCustomErrorResponsePolicy"), &mut notes)?,
            );
        }
        let mut path_rules = Vec::new();
        for (j, r) in m.get("pathRules").and_then(Value::as_array).into_iter().flatten().enumerate() {
            if let Some(p) = r.get("customErrorResponsePolicy") {
                path_rules.push(json!({"paths": r.get("paths").cloned().unwrap_or(json!([])),
                    "customErrorResponsePolicy": policy(p, services, &format!("{at}.pathRules[{j}].customErrorResponsePolicy"), &mut notes)?}));
            }
        }
        let mut route_rules = Vec::new();
        for (j, r) in m.get("routeRules").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let Some(p) = r.get("customErrorResponsePolicy") else { continue };
            let rat = format!("{at}.routeRules[{j}]");
            let mut match_rules = Vec::new();
            for (k, mr) in r.get("matchRules").and_then(Value::as_array).into_iter().flatten().enumerate() {
                match match_rule(mr, &format!("{rat}.matchRules[{k}]"), &mut notes) {
                    Some(v) => match_rules.push(v),
                    None => continue,
                }
            }
            if match_rules.is_empty() {
                // Without match rules a route rule matches every request: far wider than
                // the rule it comes from.
                notes.push(format!("{rat}: no match rule could be imported, route rule dropped"));
                continue;
            }
            let mut rr = Map::new();
            rr.insert("priority".into(), r.get("priority").cloned().unwrap_or(json!(j)));
            rr.insert("matchRules".into(), Value::Array(match_rules));
            rr.insert(
                "customErrorResponsePolicy".into(),
                policy(p, services, &format!("{rat}.customErrorResponsePolicy"), &mut notes)?,
            );
            route_rules.push(Value::Object(rr));
        }
        if !path_rules.is_empty() {
            pm.insert("pathRules".into(), Value::Array(path_rules));
        }
        if !route_rules.is_empty() {
            pm.insert("routeRules".into(), Value::Array(route_rules));
        }
        matchers.push(Value::Object(pm));
    }
    if !matchers.is_empty() {
        out.insert("pathMatchers".into(), Value::Array(matchers));
    }
    Ok(Imported { policy: Value::Object(out), notes })
}

fn policy(p: &Value, services: &[(String, String)], at: &str, notes: &mut Vec<String>) -> Result<Value, String> {
    let mut out = Map::new();
    if let Some(svc) = p.get("errorService").and_then(Value::as_str) {
        out.insert("errorService".into(), json!(cluster_for(svc, services, at)?));
    }
    let mut rules = Vec::new();
    for (i, r) in p.get("errorResponseRules").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let mut rule = Map::new();
        for field in ["matchResponseCodes", "path", "overrideResponseCode"] {
            if let Some(v) = r.get(field) {
                rule.insert(field.into(), v.clone());
            }
        }
        if let Some(extra) = r.as_object().map(|o| {
            o.keys()
                .filter(|k| !["matchResponseCodes", "path", "overrideResponseCode"].contains(&k.as_str()))
                .cloned()
                .collect::<Vec<_>>()
        }) {
            for k in extra {
                notes.push(format!("{at}.errorResponseRules[{i}].{k}: not a custom error response field, dropped"));
            }
        }
        rules.push(Value::Object(rule));
    }
    out.insert("errorResponseRules".into(), Value::Array(rules));
    Ok(Value::Object(out))
}

fn cluster_for(url: &str, services: &[(String, String)], at: &str) -> Result<String, String> {
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or(url);
    services
        .iter()
        .find(|(backend, _)| backend == url || backend == last)
        .map(|(_, cluster)| cluster.clone())
        .ok_or_else(|| format!("{at}.errorService: no --service mapping for backend \"{last}\" ({url})"))
}

fn match_rule(mr: &Value, at: &str, notes: &mut Vec<String>) -> Option<Value> {
    let o = mr.as_object()?;
    let mut out = Map::new();
    for (k, v) in o {
        match k.as_str() {
            "prefixMatch" | "fullPathMatch" | "regexMatch" | "ignoreCase" | "queryParameterMatches" => {
                out.insert(k.clone(), v.clone());
            }
            "headerMatches" => {
                let mut kept = Vec::new();
                for (i, h) in v.as_array().into_iter().flatten().enumerate() {
                    if h.get("rangeMatch").is_some() {
                        // Dropping one condition would widen the match rule: drop all of it.
                        notes.push(format!("{at}.headerMatches[{i}].rangeMatch: not supported, match rule dropped"));
                        return None;
                    } else {
                        kept.push(h.clone());
                    }
                }
                out.insert(k.clone(), Value::Array(kept));
            }
            "pathTemplateMatch" => {
                notes.push(format!("{at}.pathTemplateMatch: not supported, match rule dropped"));
                return None;
            }
            other => notes.push(format!("{at}.{other}: not used for error responses, dropped")),
        }
    }
    if out.is_empty() && !o.is_empty() {
        notes.push(format!("{at}: nothing left to match on, match rule dropped"));
        return None;
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_rules(match_rules: Value) -> (Value, Vec<String>) {
        let map = json!({"pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "matchRules": match_rules,
            "customErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "path": "/e"}]}}]}],
            "defaultCustomErrorResponsePolicy": {"errorService": "svc", "errorResponseRules": []}});
        let out = import(&map, &[("svc".into(), "cluster".into())]).unwrap();
        (out.policy["pathMatchers"][0].get("routeRules").cloned().unwrap_or(Value::Null), out.notes)
    }

    #[test]
    fn a_route_rule_never_widens_to_match_everything() {
        let (rules, notes) = route_rules(json!([{"pathTemplateMatch": "/a/{x=*}"}]));
        assert_eq!(rules, Value::Null, "{notes:?}");
        assert!(notes
            .iter()
            .any(|n| n.ends_with("routeRules[0]: no match rule could be imported, route rule dropped")));
        let (rules, notes) = route_rules(json!([{"metadataFilters": [{}]}]));
        assert_eq!(rules, Value::Null, "{notes:?}");
        let (rules, _) =
            route_rules(json!([{"prefixMatch": "/a", "headerMatches": [{"headerName": "x", "rangeMatch": {}}]}]));
        assert_eq!(rules, Value::Null, "a condition that cannot be imported drops its match rule");
        let (rules, _) = route_rules(json!([]));
        assert_eq!(rules, Value::Null);
    }

    #[test]
    fn importable_match_rules_are_kept() {
        let (rules, notes) = route_rules(json!([{"pathTemplateMatch": "/a/{x=*}"}, {"prefixMatch": "/b"}]));
        assert_eq!(rules[0]["matchRules"], json!([{"prefixMatch": "/b"}]), "{notes:?}");
        let (rules, _) =
            route_rules(json!([{"prefixMatch": "/a", "headerMatches": [{"headerName": "x", "exactMatch": "1"}]}]));
        assert_eq!(rules[0]["matchRules"][0]["headerMatches"][0]["exactMatch"], "1");
    }
}
