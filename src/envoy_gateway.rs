//! Import from Envoy Gateway: a `BackendTrafficPolicy`'s `responseOverride` (as `kubectl get
//! backendtrafficpolicy NAME -o json` prints it) turned into our policy, with the same
//! answer for every status, source and response: Envoy Gateway takes the first override
//! that matches, our rules rank exact codes before ranges, so codes an earlier override
//! already answers are left out of later rules, and the result is checked code by code.
//! A redirect (Envoy Gateway follows it inside Envoy) becomes an object fetched from the
//! error service; everything else that is about routing is dropped, with a note.

use crate::gcp::Imported;
use crate::matching::codes::{rank, CodeSpec, Source, MAX_CODE, MIN_CODE};
use serde_json::{json, Map, Value};

const CODES: usize = (MAX_CODE - MIN_CODE + 1) as usize;

/// One override, as our rule sees it.
struct Override {
    at: String,
    codes: Vec<u16>,
    source: Source,
    conditional: bool,
    /// The rule's fields but `matchResponseCodes` and `source`.
    rule: Map<String, Value>,
}

/// `services`: (redirect hostname, cluster); `config_maps`: (ConfigMap name, the body it
/// holds), for a body given as a `valueRef`.
pub fn import(
    policy: &Value,
    services: &[(String, String)],
    config_maps: &[(String, String)],
) -> Result<Imported, String> {
    let mut notes = Vec::new();
    let kind = policy.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "BackendTrafficPolicy" {
        return Err(format!(
            "expected a BackendTrafficPolicy (kubectl get backendtrafficpolicy NAME -o json), found kind \"{kind}\""
        ));
    }
    let spec = policy.get("spec").ok_or("spec: missing")?;
    for target in spec.get("targetRefs").and_then(Value::as_array).into_iter().flatten().chain(spec.get("targetRef")) {
        let (k, n) = (target.get("kind").and_then(Value::as_str), target.get("name").and_then(Value::as_str));
        notes.push(format!(
            "the policy applied to {} \"{}\": attach the filter there (an EnvoyExtensionPolicy with the same target, this policy as its configuration)",
            k.unwrap_or("?"),
            n.unwrap_or("?")
        ));
    }
    let list = spec.get("responseOverride").and_then(Value::as_array).ok_or("spec.responseOverride: missing")?;
    let mut overrides = Vec::new();
    for (i, o) in list.iter().enumerate() {
        let at = format!("spec.responseOverride[{i}]");
        overrides.push(override_of(o, &at, services, config_maps, &mut notes)?);
    }
    let rules = rules_in_order(&overrides)?;
    Ok(Imported { policy: json!({"defaultCustomErrorResponsePolicy": {"errorResponseRules": rules}}), notes })
}

fn override_of(
    o: &Value,
    at: &str,
    services: &[(String, String)],
    config_maps: &[(String, String)],
    notes: &mut Vec<String>,
) -> Result<Override, String> {
    let m = o.get("match").ok_or_else(|| format!("{at}.match: missing"))?;
    let mut codes = Vec::new();
    for (j, sc) in m.get("statusCodes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let sat = format!("{at}.match.statusCodes[{j}]");
        let (lo, hi) = match (sc.get("value").and_then(Value::as_u64), sc.get("range")) {
            (Some(v), _) => (v, v),
            (None, Some(r)) => (
                r.get("start").and_then(Value::as_u64).ok_or_else(|| format!("{sat}.range.start: missing"))?,
                r.get("end").and_then(Value::as_u64).ok_or_else(|| format!("{sat}.range.end: missing"))?,
            ),
            (None, None) => return Err(format!("{sat}: neither value nor range")),
        };
        let (lo, hi) = (lo.max(u64::from(MIN_CODE)), hi.min(u64::from(MAX_CODE)));
        if lo > hi {
            notes.push(format!("{sat}: not an error code (400-599): the filter never answers it, dropped"));
            continue;
        }
        codes.extend((lo as u16)..=(hi as u16));
    }
    let mut rule = Map::new();
    let mut response_matches = Vec::new();
    for (k, h) in m.get("responseHeaders").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let hat = format!("{at}.match.responseHeaders[{k}]");
        let name = h.get("name").and_then(Value::as_str).ok_or_else(|| format!("{hat}.name: missing"))?;
        let value = h.get("value").and_then(Value::as_str).unwrap_or("");
        let mut cond = Map::new();
        cond.insert("headerName".into(), json!(name));
        match h.get("type").and_then(Value::as_str).unwrap_or("Exact") {
            "Exact" => cond.insert("exactMatch".into(), json!(value)),
            "RegularExpression" => cond.insert("regexMatch".into(), json!(value)),
            other => return Err(format!("{hat}.type: \"{other}\" is not Exact or RegularExpression")),
        };
        if h.get("invert").and_then(Value::as_bool) == Some(true) {
            cond.insert("invertMatch".into(), json!(true));
        }
        response_matches.push(Value::Object(cond));
    }
    if m.get("statusCodes").is_none() && !response_matches.is_empty() {
        notes.push(format!(
            "{at}.match: no status codes: the filter answers errors only, so this override covers 400-599"
        ));
        codes.extend(MIN_CODE..=MAX_CODE);
    }
    let conditional = !response_matches.is_empty();
    if conditional {
        rule.insert("responseHeaderMatches".into(), Value::Array(response_matches));
    }
    let source = match m.get("source").and_then(Value::as_str).unwrap_or("All") {
        "All" => Source::Any,
        "Backend" => Source::Upstream,
        "Local" => Source::Proxy,
        other => return Err(format!("{at}.match.source: \"{other}\" is not All, Backend or Local")),
    };
    match (o.get("response"), o.get("redirect")) {
        (Some(r), None) => response(r, &format!("{at}.response"), config_maps, &mut rule, notes)?,
        (None, Some(r)) => redirect(r, &format!("{at}.redirect"), services, &mut rule, notes)?,
        _ => return Err(format!("{at}: needs one of response or redirect")),
    }
    Ok(Override { at: at.to_string(), codes, source, conditional, rule })
}

/// A `response`: its body (inline, or a ConfigMap's from `config_maps`), content type and
/// status code as the rule's; no body is an empty reply.
fn response(
    r: &Value,
    at: &str,
    config_maps: &[(String, String)],
    rule: &mut Map<String, Value>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let body = match r.get("body") {
        None => None,
        Some(b) => {
            match (b.get("type").and_then(Value::as_str).unwrap_or("Inline"), b.get("inline"), b.get("valueRef")) {
                ("Inline", Some(text), _) => Some(text.as_str().unwrap_or("").to_string()),
                ("ValueRef", _, Some(vr)) => {
                    let name = vr.get("name").and_then(Value::as_str).unwrap_or("");
                    match config_maps.iter().find(|(n, _)| n == name) {
                    Some((_, text)) => Some(text.clone()),
                    None => {
                        return Err(format!(
                            "{at}.body.valueRef: the ConfigMap \"{name}\" holds the body: pass --configmap {name}=FILE (its response.body)"
                        ))
                    }
                }
                }
                (kind, _, _) => return Err(format!("{at}.body: type \"{kind}\" without its value")),
            }
        }
    };
    let content_type = r.get("contentType").and_then(Value::as_str);
    match (body, content_type) {
        (Some(text), ct) => {
            rule.insert("body".into(), json!(command_operators(&text, &format!("{at}.body"), notes)));
            // Envoy's local replies are text/plain unless told otherwise.
            rule.insert("contentType".into(), json!(ct.unwrap_or("text/plain")));
        }
        (None, Some(ct)) => {
            rule.insert("body".into(), json!(""));
            rule.insert("contentType".into(), json!(ct));
        }
        // Status (and headers) only: an empty reply.
        (None, None) => {
            rule.insert("body".into(), json!(""));
        }
    }
    if let Some(code) = r.get("statusCode").and_then(Value::as_u64) {
        rule.insert("overrideResponseCode".into(), json!(code));
    }
    for k in r.as_object().into_iter().flat_map(|o| o.keys()) {
        if !matches!(k.as_str(), "body" | "contentType" | "statusCode") {
            notes.push(format!("{at}.{k}: not imported, dropped"));
        }
    }
    Ok(())
}

/// Envoy Gateway's redirect is followed inside Envoy: the client gets what the target
/// answers. Here that is an object fetched from the error service (a cluster), and the
/// client keeps the original status.
fn redirect(
    r: &Value,
    at: &str,
    services: &[(String, String)],
    rule: &mut Map<String, Value>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let host = r
        .get("hostname")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at}.hostname: needed to name the error service"))?;
    let cluster = services.iter().find(|(h, _)| h == host).map(|(_, c)| c.clone()).ok_or_else(|| {
        format!("{at}.hostname: \"{host}\" serves the pages: pass --service {host}=CLUSTER (the Envoy cluster that reaches it)")
    })?;
    let path = match (
        r.pointer("/path/type").and_then(Value::as_str),
        r.pointer("/path/replaceFullPath").and_then(Value::as_str),
    ) {
        (Some("ReplaceFullPath"), Some(p)) => p.to_string(),
        (None, None) => "/".to_string(),
        _ => return Err(format!("{at}.path: only ReplaceFullPath can name one page for the filter to fetch")),
    };
    rule.insert("path".into(), json!(path));
    rule.insert("errorService".into(), json!({"cluster": cluster, "authority": host}));
    notes.push(format!(
        "{at}: fetched from the error service and sent with the original status (Envoy Gateway sends its redirect's {})",
        r.get("statusCode").and_then(Value::as_u64).unwrap_or(302)
    ));
    Ok(())
}

/// Envoy's command operators in a body, as our template variables where one exists.
fn command_operators(text: &str, at: &str, notes: &mut Vec<String>) -> String {
    const MAP: [(&str, &str); 6] = [
        ("%RESPONSE_CODE%", "{{status}}"),
        ("%RESPONSE_CODE_DETAILS%", "{{codeDetails}}"),
        ("%REQ(:PATH)%", "{{path}}"),
        ("%REQ(:AUTHORITY)%", "{{host}}"),
        ("%REQ(:METHOD)%", "{{method}}"),
        ("%REQ(X-REQUEST-ID)%", "{{requestId}}"),
    ];
    let mut out = text.to_string();
    for (op, var) in MAP {
        out = out.replace(op, var);
    }
    if out.matches('%').count() >= 2 {
        notes.push(format!("{at}: a %...% command operator without an equivalent is left as text"));
    }
    out
}

/// Our rules, in Envoy Gateway's order: each override keeps only the codes (per source)
/// no earlier unconditional override answers; then the order every code and source would
/// try rules in is compared with Envoy Gateway's, with ranges (compact) and else with exact
/// codes (where list order alone decides).
fn rules_in_order(overrides: &[Override]) -> Result<Vec<Value>, String> {
    // What each override still answers: per code, for upstream and proxy responses.
    let mut covered = [[false; 2]; CODES];
    let mut parts: Vec<(usize, Vec<u16>, Source)> = Vec::new();
    for (i, o) in overrides.iter().enumerate() {
        let sides = sides(o.source);
        let mut by_sides: [Vec<u16>; 3] = Default::default(); // both, upstream only, proxy only
        for &c in &o.codes {
            let slot = usize::from(c - MIN_CODE);
            let open: Vec<usize> = sides.iter().copied().filter(|&s| !covered[slot][s]).collect();
            match open.as_slice() {
                [0, 1] => by_sides[0].push(c),
                [0] => by_sides[1].push(c),
                [1] => by_sides[2].push(c),
                _ => {}
            }
            if !o.conditional {
                for &s in &sides {
                    covered[slot][s] = true;
                }
            }
        }
        for (k, codes) in by_sides.into_iter().enumerate() {
            if !codes.is_empty() {
                let source = [Source::Any, Source::Upstream, Source::Proxy][k];
                parts.push((i, codes, source));
            }
        }
    }
    for exact in [false, true] {
        let specs: Vec<Vec<CodeSpec>> = parts.iter().map(|(_, codes, _)| spec_list(codes, exact)).collect();
        if same_order(overrides, &parts, &specs) {
            return Ok(parts
                .iter()
                .zip(&specs)
                .map(|((i, _, source), s)| rule_json(&overrides[*i], s, *source))
                .collect());
        }
    }
    Err("the overrides' order cannot be kept by the filter's precedence (a source-specific override after a broader one for the same code with conditions): reorder them".into())
}

fn sides(source: Source) -> Vec<usize> {
    match source {
        Source::Any => vec![0, 1],
        Source::Upstream => vec![0],
        Source::Proxy => vec![1],
    }
}

/// Runs of consecutive codes as ranges, or each code alone.
fn spec_list(codes: &[u16], exact: bool) -> Vec<CodeSpec> {
    let mut sorted = codes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<CodeSpec> = Vec::new();
    for c in sorted {
        match out.last_mut() {
            Some(s) if !exact && s.hi + 1 == c => s.hi = c,
            _ => out.push(CodeSpec { lo: c, hi: c }),
        }
    }
    out
}

/// Whether, for every code and source, our precedence tries the parts in Envoy Gateway's
/// order (the first unconditional one ending the list).
fn same_order(overrides: &[Override], parts: &[(usize, Vec<u16>, Source)], specs: &[Vec<CodeSpec>]) -> bool {
    for code in MIN_CODE..=MAX_CODE {
        for side in [Source::Upstream, Source::Proxy] {
            let covering = |p: &(usize, Vec<u16>, Source)| p.1.contains(&code) && p.2.overlaps(side);
            let conditional = |k: usize| parts.get(k).and_then(|p| overrides.get(p.0)).is_some_and(|o| o.conditional);
            let theirs =
                until_unconditional(parts.iter().enumerate().filter(|(_, p)| covering(p)).map(|(k, _)| k), conditional);
            let mut ranked: Vec<((u16, u8, usize), usize)> = parts
                .iter()
                .enumerate()
                .filter(|(_, p)| covering(p))
                .filter_map(|(k, p)| rank(&specs[k], p.2, code, k).map(|r| (r, k)))
                .collect();
            ranked.sort_unstable();
            let ours = until_unconditional(ranked.into_iter().map(|(_, k)| k), conditional);
            let parts_of = |ks: &[usize]| ks.iter().map(|&k| parts[k].0).collect::<Vec<_>>();
            if parts_of(&theirs) != parts_of(&ours) {
                return false;
            }
        }
    }
    true
}

/// The parts `order` tries, up to and with the first that has no conditions.
fn until_unconditional(order: impl Iterator<Item = usize>, conditional: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut out = Vec::new();
    for k in order {
        out.push(k);
        if !conditional(k) {
            break;
        }
    }
    out
}

fn rule_json(o: &Override, specs: &[CodeSpec], source: Source) -> Value {
    let mut rule = Map::new();
    let codes: Vec<String> =
        specs.iter().map(|s| if s.lo == s.hi { s.lo.to_string() } else { format!("{}-{}", s.lo, s.hi) }).collect();
    rule.insert("matchResponseCodes".into(), json!(codes));
    match source {
        Source::Any => {}
        Source::Upstream => {
            rule.insert("source".into(), json!("upstream"));
        }
        Source::Proxy => {
            rule.insert("source".into(), json!("proxy"));
        }
    }
    rule.insert("description".into(), json!(format!("from {}", o.at)));
    rule.extend(o.rule.clone());
    Value::Object(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import_overrides(overrides: Value) -> Result<Vec<Value>, String> {
        let btp = json!({"kind": "BackendTrafficPolicy", "spec": {"responseOverride": overrides}});
        let imported = import(&btp, &[], &[])?;
        crate::config::load(imported.policy.to_string().as_bytes()).map_err(|e| e.to_string())?;
        Ok(imported.policy["defaultCustomErrorResponsePolicy"]["errorResponseRules"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn codes(rules: &[Value]) -> Vec<Value> {
        rules.iter().map(|r| r["matchResponseCodes"].clone()).collect()
    }

    const WHEN_JSON: &str = r#"[{"name": "content-type", "value": "application/json"}]"#;

    #[test]
    fn a_conditional_range_before_an_exact_code_becomes_exact_codes_to_keep_its_turn() {
        let when: Value = serde_json::from_str(WHEN_JSON).unwrap();
        let rules = import_overrides(json!([
            {"match": {"statusCodes": [{"type": "Range", "range": {"start": 400, "end": 403}}], "responseHeaders": when},
             "response": {"body": {"inline": "json"}}},
            {"match": {"statusCodes": [{"value": 403}]}, "response": {"body": {"inline": "page"}}}]))
        .unwrap();
        assert_eq!(codes(&rules), [json!(["400", "401", "402", "403"]), json!(["403"])]);
        // The twin: without the later exact code, the range stays a range.
        let rules = import_overrides(json!([
            {"match": {"statusCodes": [{"type": "Range", "range": {"start": 400, "end": 403}}], "responseHeaders": when},
             "response": {"body": {"inline": "json"}}},
            {"match": {"statusCodes": [{"value": 500}]}, "response": {"body": {"inline": "page"}}}]))
        .unwrap();
        assert_eq!(codes(&rules), [json!(["400-403"]), json!(["500"])]);
    }

    #[test]
    fn a_conditional_class_between_two_rules_for_its_code_keeps_its_turn() {
        let when: Value = serde_json::from_str(WHEN_JSON).unwrap();
        let rules = import_overrides(json!([
            {"match": {"statusCodes": [{"value": 404}], "responseHeaders": when}, "response": {"body": {"inline": "a"}}},
            {"match": {"statusCodes": [{"type": "Range", "range": {"start": 400, "end": 499}}], "responseHeaders": when},
             "response": {"body": {"inline": "b"}}},
            {"match": {"statusCodes": [{"value": 404}]}, "response": {"body": {"inline": "c"}}}]))
        .unwrap();
        // Tried for a 404 in Envoy Gateway's order (a, b, then c): as exact codes, all three.
        let middle = rules[1]["matchResponseCodes"].as_array().unwrap();
        assert_eq!((middle.len(), &middle[4]), (100, &json!("404")));
    }

    #[test]
    fn response_headers_alone_cover_every_error_and_what_is_not_imported_is_said() {
        let btp = json!({"kind": "BackendTrafficPolicy", "spec": {"responseOverride": [
            {"match": {"statusCodes": [{"value": 503}]}, "redirect": {"hostname": "pages"}},
            {"match": {"responseHeaders": [{"name": "x-empty", "value": "1"}]},
             "response": {"body": {"inline": "x"}, "header": {"set": [{"name": "a", "value": "b"}]}}}]}});
        let imported = import(&btp, &[("pages".into(), "error_pages".into())], &[]).unwrap();
        let rules = imported.policy["defaultCustomErrorResponsePolicy"]["errorResponseRules"].clone();
        assert_eq!(rules[0]["path"], json!("/"), "a redirect without a path asks for the root");
        assert_eq!(rules[1]["matchResponseCodes"], json!(["400-502", "504-599"]), "every error the redirect leaves");
        assert!(imported.notes.iter().any(|n| n == "spec.responseOverride[1].response.header: not imported, dropped"));
        assert!(!imported.notes.iter().any(|n| n.contains(".body: not imported")), "{:?}", imported.notes);
    }

    #[test]
    fn an_earlier_unconditional_override_takes_its_codes_from_later_ones_per_source() {
        let rules = import_overrides(json!([
            {"match": {"statusCodes": [{"value": 503}], "source": "Backend"}, "response": {"body": {"inline": "backend"}}},
            {"match": {"statusCodes": [{"value": 503}, {"value": 504}]}, "response": {"body": {"inline": "any"}}}]))
        .unwrap();
        assert_eq!(codes(&rules), [json!(["503"]), json!(["504"]), json!(["503"])]);
        let sources: Vec<&Value> = rules.iter().map(|r| &r["source"]).collect();
        assert_eq!(sources, [&json!("upstream"), &Value::Null, &json!("proxy")], "{rules:?}");
    }

    #[test]
    fn an_order_the_precedence_cannot_keep_is_refused() {
        let when: Value = serde_json::from_str(WHEN_JSON).unwrap();
        let e = import_overrides(json!([
            {"match": {"statusCodes": [{"value": 404}], "responseHeaders": when}, "response": {"body": {"inline": "a"}}},
            {"match": {"statusCodes": [{"value": 404}], "source": "Backend"}, "response": {"body": {"inline": "b"}}}]))
        .unwrap_err();
        assert!(e.contains("reorder"), "{e}");
    }

    #[test]
    fn command_operators_become_template_variables_and_others_are_noted() {
        let mut notes = Vec::new();
        let out = command_operators("%RESPONSE_CODE% %REQ(:PATH)% %REQ(X-REQUEST-ID)%", "b", &mut notes);
        assert_eq!((out.as_str(), notes.len()), ("{{status}} {{path}} {{requestId}}", 0));
        let out = command_operators("%START_TIME% done", "b", &mut notes);
        assert_eq!((out.as_str(), notes.len()), ("%START_TIME% done", 1));
    }
}
