//! Policy JSON -> validated `Config`. Every refusal names the JSON path of the field.

use super::error::{ConfigError, Result};
use super::model::*;
use super::reader::{as_obj, as_str, Obj};
use crate::error_service;
use crate::http::{is_media_type, is_token, valid_header_value};
use crate::matching::codes::{CodeSet, CodeSpec, CodeTable, Source, MAX_CODE, MAX_RULES, MIN_CODE};
use crate::matching::hosts::{HostIndex, HostPattern};
use crate::matching::routes::{
    literal_prefix, validate_path_rule_path, HeaderCond, MatchRule, MetadataCond, PathCond, PathRules, QueryCond,
    RouteRule, StrCond,
};
use crate::template;
use regex_lite::Regex;
use serde_json::Value;
use std::collections::HashMap;

/// Parses and validates a policy. An empty configuration is an empty policy (the filter
/// then passes everything through), as Envoy passes an empty string when none is set.
pub fn load(text: &[u8]) -> Result<Config> {
    let trimmed = std::str::from_utf8(text).map_err(|_| ConfigError::new("", "the configuration is not UTF-8"))?.trim();
    let value: Value = if trimmed.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(trimmed).map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?
    };
    Loader::default().config(&value)
}

#[derive(Default)]
struct Loader {
    services: Vec<ErrorService>,
    policies: Vec<Policy>,
    codes: CodeSet,
    source_codes: CodeSet,
    /// Rules loaded so far: the next rule's ordinal.
    rule_count: usize,
}

/// What a policy inherits from above it.
#[derive(Clone, Copy)]
struct Scope {
    service: Option<ServiceId>,
    level: Level,
}

impl Loader {
    fn config(mut self, root: &Value) -> Result<Config> {
        let mut o = as_obj(root, "")?;
        let top_service = match o.get("errorService") {
            Some(v) => Some(self.service(v, &o.field_path("errorService"))?),
            None => None,
        };
        let proxy_policy = match o.opt_obj("defaultCustomErrorResponsePolicy")? {
            Some(p) => Some(self.policy(p, Scope { service: top_service, level: Level::Proxy })?.0),
            None => None,
        };

        let named_policies = self.named_policies(&mut o, top_service)?;
        let named_codes = self.codes_of(named_policies.values().copied());
        let metadata_namespace = match o.opt_str("metadataNamespace")? {
            Some(ns) if ns.is_empty() || !ns.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(ConfigError::new(o.field_path("metadataNamespace"), "must be a name without spaces"));
            }
            Some(ns) => ns.to_string(),
            None => DEFAULT_METADATA_NAMESPACE.to_string(),
        };

        let route_timeouts = route_timeouts(&mut o)?;
        #[cfg(feature = "trap-test")]
        let test_trap_on_path = o.opt_str("testTrapOnPath")?.map(str::to_string);
        let (matchers, by_name) = self.path_matchers(&mut o, top_service)?;
        let (hosts, named) = host_rules(&mut o, &by_name, matchers.len())?;
        o.finish()?;

        let mut warnings: Vec<String> = matchers
            .iter()
            .zip(&named)
            .filter(|(_, n)| !**n)
            .map(|(m, _)| format!("path matcher \"{}\" is not named by any host rule: it is never used", m.name))
            .collect();
        warnings.extend(self.policies.iter().flat_map(|p| &p.rules).filter_map(cacheable_override));
        unique_stat_names(&self.policies)?;

        Ok(Config {
            services: self.services,
            policies: self.policies,
            proxy_policy,
            hosts,
            matchers,
            named: named_policies,
            named_codes,
            metadata_namespace,
            codes: self.codes,
            source_codes: self.source_codes,
            route_timeouts,
            #[cfg(feature = "trap-test")]
            test_trap_on_path,
            warnings,
        })
    }

    /// `policies`: named policies, selected by routes' and virtual hosts' metadata.
    fn named_policies(&mut self, o: &mut Obj<'_>, top_service: Option<ServiceId>) -> Result<HashMap<String, PolicyId>> {
        let mut named = HashMap::new();
        let Some(mut ps) = o.opt_obj("policies")? else { return Ok(named) };
        for name in ps.keys() {
            if name.is_empty() {
                return Err(ConfigError::new(ps.path(), "a policy name must not be empty"));
            }
            let policy = ps
                .opt_obj(&name)?
                .ok_or_else(|| ConfigError::new(ps.field_path(&name), "expected an object, found null"))?;
            let (i, _) = self.policy(policy, Scope { service: top_service, level: Level::Named })?;
            named.insert(name, i);
        }
        ps.finish()?;
        Ok(named)
    }

    /// The codes some rule of these policies covers.
    fn codes_of(&self, policies: impl Iterator<Item = PolicyId> + Clone) -> CodeSet {
        let mut codes = CodeSet::default();
        for code in MIN_CODE..=MAX_CODE {
            if policies.clone().filter_map(|i| self.policies.get(i.0)).any(|p| p.table.mentions(code)) {
                codes.insert(code);
            }
        }
        codes
    }

    /// `pathMatchers`, and their indices by name.
    fn path_matchers(
        &mut self,
        o: &mut Obj<'_>,
        top_service: Option<ServiceId>,
    ) -> Result<(Vec<PathMatcher>, HashMap<String, MatcherId>)> {
        let mut matchers = Vec::new();
        let mut by_name: HashMap<String, MatcherId> = HashMap::new();
        for (path, v) in o.opt_array("pathMatchers")? {
            let m = self.path_matcher(as_obj(v, &path)?, top_service)?;
            if by_name.insert(m.name.clone(), MatcherId(matchers.len())).is_some() {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("path matcher \"{}\" is defined twice", m.name),
                ));
            }
            matchers.push(m);
        }
        Ok((matchers, by_name))
    }

    fn service(&mut self, v: &Value, path: &str) -> Result<ServiceId> {
        let svc = match v {
            Value::String(s) => {
                let cluster = cluster_name(s, path)?;
                ErrorService {
                    authority: cluster.clone(),
                    cluster,
                    timeout_ms: DEFAULT_TIMEOUT_MS,
                    max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                    cache_ttl_s: DEFAULT_CACHE_TTL_S,
                    stale_if_error_s: DEFAULT_STALE_IF_ERROR_S,
                    prewarm: true,
                    prewarm_codes: DEFAULT_PREWARM_CODES.to_vec(),
                    request_headers: Vec::new(),
                }
            }
            _ => {
                let mut o = as_obj(v, path)?;
                let cluster = cluster_name(o.req_str("cluster")?, &o.field_path("cluster"))?;
                let authority = match o.opt_str("authority")? {
                    Some(a) => {
                        if a.is_empty() || !a.bytes().all(|b| b.is_ascii_graphic()) {
                            return Err(ConfigError::new(
                                o.field_path("authority"),
                                "must be a host name without spaces",
                            ));
                        }
                        a.to_string()
                    }
                    None => cluster.clone(),
                };
                let svc = ErrorService {
                    cluster,
                    authority,
                    timeout_ms: o.opt_uint("timeoutMs", 1, 60_000)?.unwrap_or(DEFAULT_TIMEOUT_MS),
                    max_body_bytes: o
                        .opt_uint("maxBodyBytes", 1, 16 * 1024 * 1024)?
                        .map_or(DEFAULT_MAX_BODY_BYTES, |n| n as usize),
                    cache_ttl_s: o.opt_uint("cacheTtlSeconds", 0, 86_400 * 365)?.unwrap_or(DEFAULT_CACHE_TTL_S),
                    stale_if_error_s: o
                        .opt_uint("staleIfErrorSeconds", 0, 86_400 * 365)?
                        .unwrap_or(DEFAULT_STALE_IF_ERROR_S),
                    prewarm: o.opt_bool("prewarm")?.unwrap_or(true),
                    prewarm_codes: prewarm_codes(&mut o)?,
                    request_headers: request_headers(&mut o)?,
                };
                o.finish()?;
                svc
            }
        };
        if let Some(i) = self.services.iter().position(|s| *s == svc) {
            return Ok(ServiceId(i));
        }
        self.services.push(svc);
        Ok(ServiceId(self.services.len() - 1))
    }

    fn path_matcher(&mut self, mut o: Obj<'_>, top_service: Option<ServiceId>) -> Result<PathMatcher> {
        let name = o.req_str("name")?.to_string();
        if name.is_empty() {
            return Err(ConfigError::new(o.field_path("name"), "must not be empty"));
        }
        o.opt_str("description")?;
        let (default_policy, service) = match o.opt_obj("defaultCustomErrorResponsePolicy")? {
            Some(p) => {
                let (i, svc) = self.policy(p, Scope { service: top_service, level: Level::Host })?;
                (Some(i), svc)
            }
            None => (None, top_service),
        };
        let path_rules = o.opt_array("pathRules")?;
        let route_rules = o.opt_array("routeRules")?;
        if !path_rules.is_empty() && !route_rules.is_empty() {
            return Err(ConfigError::new(
                o.field_path("routeRules"),
                "a path matcher has either pathRules or routeRules, not both",
            ));
        }
        let scope = |level| Scope { service, level };
        let (routing, policies) = if !path_rules.is_empty() {
            let (rules, policies) = self.path_rules(path_rules, scope(Level::PathRule))?;
            (Routing::Paths(rules), policies)
        } else if !route_rules.is_empty() {
            let rules = self.route_rules(route_rules, scope(Level::RouteRule))?;
            let policies = rules.iter().map(|r| r.policy).collect();
            (Routing::Routes(rules), policies)
        } else {
            (Routing::None, Vec::new())
        };
        // Codes that some path/route rule of this matcher covers: for any other code the
        // (linear) route-rule walk cannot change the decision and is skipped.
        let rule_codes = self.codes_of(policies.into_iter());
        o.finish()?;
        Ok(PathMatcher { name, default_policy, routing, rule_codes })
    }

    /// `pathRules`, and the policies they hold.
    fn path_rules(
        &mut self,
        list: Vec<(String, &Value)>,
        scope: Scope,
    ) -> Result<(PathRules<PolicyId>, Vec<PolicyId>)> {
        let mut pr = PathRules::default();
        let mut policies = Vec::new();
        for (rp, rv) in list {
            let mut r = as_obj(rv, &rp)?;
            r.opt_str("description")?;
            let policy_obj = r
                .opt_obj("customErrorResponsePolicy")?
                .ok_or_else(|| ConfigError::new(r.field_path("customErrorResponsePolicy"), "is required"))?;
            let (policy, _) = self.policy(policy_obj, scope)?;
            policies.push(policy);
            let paths = r.opt_array("paths")?;
            if paths.is_empty() {
                return Err(ConfigError::new(r.field_path("paths"), "must list at least one path"));
            }
            for (pp, pv) in paths {
                let p = as_str(pv, &pp)?;
                validate_path_rule_path(p).map_err(|e| ConfigError::new(&pp, e))?;
                if pr.insert(p, policy).is_some() {
                    return Err(ConfigError::new(&pp, format!("path \"{p}\" appears in two path rules")));
                }
            }
            r.finish()?;
        }
        Ok((pr, policies))
    }

    /// `routeRules`, sorted by priority.
    fn route_rules(&mut self, list: Vec<(String, &Value)>, scope: Scope) -> Result<Vec<RouteRule>> {
        let mut rules = Vec::new();
        let mut priorities: HashMap<u64, String> = HashMap::new();
        for (rp, rv) in list {
            let mut r = as_obj(rv, &rp)?;
            r.opt_str("description")?;
            let priority = r
                .opt_uint("priority", 0, 2_147_483_647)?
                .ok_or_else(|| ConfigError::new(r.field_path("priority"), "is required"))?;
            if let Some(prev) = priorities.insert(priority, rp.clone()) {
                return Err(ConfigError::new(
                    r.field_path("priority"),
                    format!("priority {priority} is already used by {prev}"),
                ));
            }
            let mut match_rules = Vec::new();
            for (mp, mv) in r.opt_array("matchRules")? {
                match_rules.push(match_rule(as_obj(mv, &mp)?)?);
            }
            let policy_obj = r
                .opt_obj("customErrorResponsePolicy")?
                .ok_or_else(|| ConfigError::new(r.field_path("customErrorResponsePolicy"), "is required"))?;
            let (policy, _) = self.policy(policy_obj, scope)?;
            r.finish()?;
            rules.push(RouteRule { priority, match_rules, policy });
        }
        rules.sort_unstable_by_key(|r| r.priority);
        Ok(rules)
    }
    /// Returns the policy's index and the error service its rules use.
    fn policy(&mut self, mut o: Obj<'_>, scope: Scope) -> Result<(PolicyId, Option<ServiceId>)> {
        let id = o.path().to_string();
        let service = match o.get("errorService") {
            Some(v) => Some(self.service(v, &o.field_path("errorService"))?),
            None => scope.service,
        };
        // Rules know their address in `Config::policies`: this policy goes in next (the
        // rules below add error services, never policies).
        let policy = PolicyId(self.policies.len());
        let mut rules = Vec::new();
        // Each code spec so far, its source, its rule's path, and whether that rule has
        // response matches (a later rule for the same code is then reached when they fail).
        let mut seen: Vec<(CodeSpec, Source, String, bool)> = Vec::new();
        let list = o.opt_array("errorResponseRules")?;
        if list.len() > MAX_RULES {
            return Err(ConfigError::new(
                o.field_path("errorResponseRules"),
                format!("at most {MAX_RULES} rules in one policy"),
            ));
        }
        for (i, (rp, rv)) in list.into_iter().enumerate() {
            let rule = self.rule(as_obj(rv, &rp)?, RuleAt { policy, index: i }, scope.level, service)?;
            for (i, spec) in rule.specs.iter().enumerate() {
                let shadowed = |(s, src, _, conditional): &&(CodeSpec, Source, String, bool)| {
                    s == spec && src.overlaps(rule.source) && !conditional
                };
                if let Some((_, _, prev, _)) = seen.iter().find(shadowed) {
                    return Err(ConfigError::new(
                        format!("{rp}.matchResponseCodes[{i}]"),
                        format!(
                            "this code or range is already matched by {prev} in the same policy (two rules may share a code only when the earlier one has responseHeaderMatches)"
                        ),
                    ));
                }
                seen.push((*spec, rule.source, rp.clone(), !rule.response_matches.is_empty()));
                for c in spec.lo..=spec.hi {
                    self.codes.insert(c);
                }
            }
            rules.push(rule);
        }
        o.finish()?;
        let table = CodeTable::build(&rules.iter().map(|r| (r.specs.clone(), r.source)).collect::<Vec<_>>());
        self.policies.push(Policy { id, rules, table });
        Ok((policy, service))
    }

    fn rule(&mut self, mut o: Obj<'_>, at: RuleAt, level: Level, service: Option<ServiceId>) -> Result<Rule> {
        let id = o.path().to_string();
        let stat = match o.opt_str("name")? {
            Some(name) => {
                check_rule_name(name).map_err(|e| ConfigError::new(o.field_path("name"), e))?;
                name.to_string()
            }
            None => derived_name(&id),
        };
        let ordinal = self.rule_count;
        self.rule_count += 1;
        let response_matches = header_conds(&mut o, "responseHeaderMatches")?;
        let (specs, source) = codes_and_source(&mut o)?;
        if source != Source::Any {
            for spec in &specs {
                for c in spec.lo..=spec.hi {
                    self.source_codes.insert(c);
                }
            }
        }
        let service = match o.get("errorService") {
            Some(v) => Some(self.service(v, &o.field_path("errorService"))?),
            None => service,
        };
        let passthrough = o.opt_bool("passthrough")?.unwrap_or(false);
        let override_code = match o.opt_uint("overrideResponseCode", 200, 599)? {
            Some(c @ (204 | 205 | 304)) => {
                return Err(ConfigError::new(
                    o.field_path("overrideResponseCode"),
                    format!("{c} cannot carry a body, so it cannot serve an error page"),
                ))
            }
            Some(c @ (300..=399)) if !REDIRECT_CODES.contains(&(c as u16)) => {
                return Err(ConfigError::new(
                    o.field_path("overrideResponseCode"),
                    format!("{c} is not a redirect code a rule may answer with (301, 302, 303, 307, 308)"),
                ))
            }
            other => other.map(|c| c as u16),
        };
        let redirect = override_code.is_some_and(|c| REDIRECT_CODES.contains(&c));
        let mut default = variant(&mut o, service, true)?;
        let template = o.opt_bool("template")?.unwrap_or(false);
        let mut variants = Vec::new();
        for (vp, vv) in o.opt_array("variants")? {
            let mut v = as_obj(vv, &vp)?;
            let parsed = variant(&mut v, service, false)?;
            if parsed.path.is_none() && parsed.body.is_none() {
                return Err(ConfigError::new(&vp, "a variant needs a path or a body"));
            }
            v.finish()?;
            variants.push(parsed);
        }
        let mut headers = rule_headers(&mut o)?;
        let location = match headers.iter().position(|(n, _)| n == "location") {
            Some(i) if redirect => {
                let (_, value) = headers.remove(i);
                let p = o.field_path("headers.location");
                template::validate(&value).map_err(|e| ConfigError::new(&p, e))?;
                Some(value)
            }
            _ if redirect => {
                return Err(ConfigError::new(
                    o.field_path("headers"),
                    "a redirect (overrideResponseCode 3xx) needs headers.location",
                ))
            }
            _ => None,
        };
        // A redirect carries no page unless the rule gives one: an empty reply.
        if redirect && default.path.is_none() && default.body.is_none() && variants.is_empty() {
            default.body = Some(String::new());
            default.content_type = NO_CONTENT_TYPE.to_string();
        }
        o.opt_str("description")?;
        let kind = if passthrough {
            if default.path.is_some()
                || default.body.is_some()
                || !variants.is_empty()
                || override_code.is_some()
                || o.get("languages").is_some()
            {
                return Err(ConfigError::new(
                    o.field_path("passthrough"),
                    "a passthrough rule leaves the response as it is: it cannot also have path, body, variants, languages or overrideResponseCode",
                ));
            }
            RuleKind::Passthrough
        } else {
            if default.path.is_none() && default.body.is_none() {
                return Err(ConfigError::new(
                    o.path(),
                    "a rule needs a path (fetched from the error service), a body, or \"passthrough\": true",
                ));
            }
            let languages = languages(&mut o, &default, &variants, location.as_deref(), template)?;
            RuleKind::Serve(Box::new(Serve {
                override_code,
                default,
                variants,
                headers,
                template,
                service,
                location,
                languages,
            }))
        };
        o.finish()?;
        Ok(Rule { id, stat, ordinal, at, level, specs, source, response_matches, kind })
    }
}

/// The most languages one rule may list (each is an object to prewarm per code and variant).
const MAX_LANGUAGES: usize = 64;

/// A BCP 47 language tag as RFC 4647 matches them: alphanumeric subtags of 1 to 8
/// characters joined by `-`, the first alphabetic (`en`, `de-CH`, `zh-Hant-TW`).
fn is_language_tag(tag: &str) -> bool {
    let mut subtags = tag.split('-');
    let first_ok =
        subtags.next().is_some_and(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic()));
    first_ok && subtags.all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A rule's `languages`, checked against where `{lang}` and `{{lang}}` are used: a path with
/// `{lang}` needs them, and a list nothing uses would change nothing.
fn languages(
    o: &mut Obj<'_>,
    default: &Variant,
    variants: &[Variant],
    location: Option<&str>,
    template: bool,
) -> Result<Vec<String>> {
    let given = o.get("languages").is_some();
    let list = o.opt_array("languages")?;
    if given && list.is_empty() {
        return Err(ConfigError::new(o.field_path("languages"), "must list at least one language"));
    }
    let paths: Vec<&str> = std::iter::once(default).chain(variants).filter_map(|v| v.path.as_deref()).collect();
    let bodies = std::iter::once(default).chain(variants).filter_map(|v| v.body.as_deref()).chain(location);
    let by_path = paths.iter().any(|p| error_service::per_lang(p));
    if list.is_empty() {
        if by_path {
            return Err(ConfigError::new(o.field_path("languages"), "a path with {lang} needs the rule's languages"));
        }
        return Ok(Vec::new());
    }
    if list.len() > MAX_LANGUAGES {
        return Err(ConfigError::new(o.field_path("languages"), format!("at most {MAX_LANGUAGES} languages")));
    }
    let mut tags: Vec<String> = Vec::with_capacity(list.len());
    for (p, v) in list {
        let tag = as_str(v, &p)?;
        if !is_language_tag(tag) {
            return Err(ConfigError::new(&p, format!("\"{tag}\" is not a language tag such as \"en\" or \"de-CH\"")));
        }
        if tags.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
            return Err(ConfigError::new(&p, format!("\"{tag}\" is listed twice")));
        }
        tags.push(tag.to_string());
    }
    // A fetched object may use `{{lang}}` too when the rule renders fetched objects.
    let by_template = template || bodies.into_iter().any(|b| template::uses(b, "lang"));
    if !by_path && !by_template {
        return Err(ConfigError::new(
            o.field_path("languages"),
            "no path has {lang}, no inline body or location uses {{lang}} and the rule renders no fetched object: the language would change nothing",
        ));
    }
    Ok(tags)
}

/// The longest rule `name`: it is part of a counter's name.
const MAX_RULE_NAME: usize = 64;

/// A rule's `name` becomes one segment of a counter's name, which `stats_tags` turn into a
/// Prometheus label: no dots (Envoy's segment separator) nor anything a tag regex or a
/// label would have to escape.
fn check_rule_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_RULE_NAME {
        return Err(format!("must be 1 to {MAX_RULE_NAME} characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(format!("\"{name}\" may hold only letters, digits, '_' and '-' (it names the rule's counters)"));
    }
    Ok(())
}

/// The name an unnamed rule's counters go by, from its JSON path: stable while the policy's
/// shape stays (`pathMatchers[0].pathRules[1].customErrorResponsePolicy
/// .errorResponseRules[2]` -> `matcher0_path1_rule2`).
fn derived_name(id: &str) -> String {
    let mut out = String::with_capacity(id.len() / 2);
    for segment in id.split('.').filter(|s| !s.is_empty() && *s != "customErrorResponsePolicy") {
        let (word, index) = match segment.split_once('[') {
            Some((w, rest)) => (w, rest.trim_end_matches(']')),
            None => (segment, ""),
        };
        let word = match word {
            "defaultCustomErrorResponsePolicy" => "default",
            "errorResponseRules" => "rule",
            "pathMatchers" => "matcher",
            "pathRules" => "path",
            "routeRules" => "route",
            "policies" => "policy",
            other => other,
        };
        if !out.is_empty() {
            out.push('_');
        }
        out.extend(
            word.chars().chain(index.chars()).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }),
        );
    }
    out
}

/// Two rules must not count under one name: named alike, or a name equal to the one an
/// unnamed rule derives from its place.
fn unique_stat_names(policies: &[Policy]) -> Result<()> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for rule in policies.iter().flat_map(|p| &p.rules) {
        if let Some(other) = seen.insert(&rule.stat, &rule.id) {
            return Err(ConfigError::new(
                format!("{}.name", rule.id),
                format!("\"{}\" already names the counters of {other}", rule.stat),
            ));
        }
    }
    Ok(())
}

/// `matchResponseCodes` and `source` of a rule.
fn codes_and_source(o: &mut Obj<'_>) -> Result<(Vec<CodeSpec>, Source)> {
    let codes = o.opt_array("matchResponseCodes")?;
    if codes.is_empty() {
        return Err(ConfigError::new(o.field_path("matchResponseCodes"), "must list at least one code"));
    }
    let mut specs = Vec::new();
    for (cp, cv) in codes {
        specs.push(CodeSpec::parse(as_str(cv, &cp)?).map_err(|e| ConfigError::new(&cp, e))?);
    }
    let source = match o.opt_str("source")? {
        None | Some("any") => Source::Any,
        Some("upstream") => Source::Upstream,
        Some("proxy") => Source::Proxy,
        Some(other) => {
            return Err(ConfigError::new(
                o.field_path("source"),
                format!("\"{other}\" is not one of \"any\", \"upstream\", \"proxy\""),
            ))
        }
    };
    Ok((specs, source))
}

/// A rule's `headers`: lower-case names, each once.
fn rule_headers(o: &mut Obj<'_>) -> Result<Vec<(String, String)>> {
    header_map(o, "headers", check_set_header)
}

/// A `{name: value}` field of headers to set: each checked by `check`, lower-cased, once.
fn header_map(
    o: &mut Obj<'_>,
    field: &str,
    check: impl Fn(&str, &str, &str) -> Result<()>,
) -> Result<Vec<(String, String)>> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let Some(mut h) = o.opt_obj(field)? else { return Ok(headers) };
    for name in h.keys() {
        let hp = h.field_path(&name);
        let value = h.take_str(&name)?;
        check(&name, value, &hp)?;
        let lower = name.to_ascii_lowercase();
        if headers.iter().any(|(n, _)| *n == lower) {
            return Err(ConfigError::new(hp, format!("\"{name}\" is set twice (header names are case-insensitive)")));
        }
        headers.push((lower, value.to_string()));
    }
    h.finish()?;
    Ok(headers)
}

/// One `matchRules[]` entry of a route rule.
fn match_rule(mut o: Obj<'_>) -> Result<MatchRule> {
    let ignore_case = o.opt_bool("ignoreCase")?.unwrap_or(false);
    let prefix = o.opt_str("prefixMatch")?;
    let full = o.opt_str("fullPathMatch")?;
    let regex = o.opt_str("regexMatch")?;
    let given = [prefix.is_some(), full.is_some(), regex.is_some()].iter().filter(|b| **b).count();
    if given > 1 {
        return Err(ConfigError::new(o.path(), "at most one of prefixMatch, fullPathMatch and regexMatch may be set"));
    }
    let path = if let Some(p) = prefix {
        check_match_path(p, &o.field_path("prefixMatch"))?;
        PathCond::Prefix(p.to_string())
    } else if let Some(p) = full {
        check_match_path(p, &o.field_path("fullPathMatch"))?;
        PathCond::Full(p.to_string())
    } else if let Some(r) = regex {
        let prefix = if ignore_case { String::new() } else { literal_prefix(r) };
        PathCond::Regex(compile_regex(r, ignore_case, &o.field_path("regexMatch"))?, prefix)
    } else {
        PathCond::Any
    };
    let headers = header_conds(&mut o, "headerMatches")?;
    let mut query = Vec::new();
    for (qp, qv) in o.opt_array("queryParameterMatches")? {
        let mut q = as_obj(qv, &qp)?;
        let name = q.req_str("name")?.to_string();
        if name.is_empty() {
            return Err(ConfigError::new(q.field_path("name"), "must not be empty"));
        }
        let cond = str_cond(&mut q, false)?;
        q.finish()?;
        query.push(QueryCond { name, cond });
    }
    let mut metadata = Vec::new();
    for (mp, mv) in o.opt_array("routeMetadataMatches")? {
        let mut m = as_obj(mv, &mp)?;
        let namespace = m.req_str("namespace")?.to_string();
        let key = m.req_str("key")?.to_string();
        for (field, value) in [("namespace", &namespace), ("key", &key)] {
            if value.is_empty() {
                return Err(ConfigError::new(m.field_path(field), "must not be empty"));
            }
        }
        let invert = m.opt_bool("invertMatch")?.unwrap_or(false);
        let cond = str_cond(&mut m, true)?;
        m.finish()?;
        metadata.push(MetadataCond { namespace, key, cond, invert });
    }
    let route_name = o.opt_str("routeName")?.map(str::to_string);
    o.finish()?;
    Ok(MatchRule { path, ignore_case, headers, query, route_name, metadata })
}

/// `headerMatches` of a match rule, `responseHeaderMatches` of an error response rule: one
/// shape (Google Cloud's), names lower-cased as Envoy hands headers over.
fn header_conds(o: &mut Obj<'_>, field: &str) -> Result<Vec<HeaderCond>> {
    let mut conds = Vec::new();
    for (hp, hv) in o.opt_array(field)? {
        let mut h = as_obj(hv, &hp)?;
        let name = h.req_str("headerName")?;
        if !is_token(name) {
            return Err(ConfigError::new(h.field_path("headerName"), format!("\"{name}\" is not a header name")));
        }
        let invert = h.opt_bool("invertMatch")?.unwrap_or(false);
        let cond = str_cond(&mut h, true)?;
        h.finish()?;
        conds.push(HeaderCond { name: name.to_ascii_lowercase(), cond, invert });
    }
    Ok(conds)
}

/// `hostRules` into the host index; also which path matchers some host rule names.
fn host_rules(
    o: &mut Obj<'_>,
    by_name: &HashMap<String, MatcherId>,
    matchers: usize,
) -> Result<(HostIndex<MatcherId>, Vec<bool>)> {
    let mut hosts = HostIndex::default();
    let mut named = vec![false; matchers];
    let mut host_origin: HashMap<MatcherId, String> = HashMap::new();
    for (path, v) in o.opt_array("hostRules")? {
        let mut hr = as_obj(v, &path)?;
        hr.opt_str("description")?;
        let name = hr.req_str("pathMatcher")?;
        let Some(&mi) = by_name.get(name) else {
            return Err(ConfigError::new(hr.field_path("pathMatcher"), format!("no path matcher is named \"{name}\"")));
        };
        if let Some(n) = named.get_mut(mi.0) {
            *n = true;
        }
        let list = hr.opt_array("hosts")?;
        if list.is_empty() {
            return Err(ConfigError::new(hr.field_path("hosts"), "must list at least one host"));
        }
        for (hp, hv) in list {
            let raw = as_str(hv, &hp)?;
            let pattern = HostPattern::parse(raw).map_err(|e| ConfigError::new(&hp, e))?;
            if let Some(prev) = hosts.insert(pattern, mi) {
                let owner = host_origin.get(&prev).cloned().unwrap_or_default();
                return Err(ConfigError::new(&hp, format!("host \"{raw}\" is already named by a host rule ({owner})")));
            }
            host_origin.entry(mi).or_insert_with(|| path.clone());
        }
        hr.finish()?;
    }
    Ok((hosts, named))
}

/// A rule that serves a fetched object under a non-error status without saying how caches
/// may keep it: the object's own `cache-control` then reaches caches in front of the proxy,
/// which may keep the page as the URL's successful answer.
fn cacheable_override(rule: &Rule) -> Option<String> {
    let RuleKind::Serve(serve) = &rule.kind else { return None };
    let code = serve.override_code.filter(|c| *c < 400)?;
    let fetched = serve.default.path.is_some() || serve.variants.iter().any(|v| v.path.is_some());
    (fetched && !serve.sets("cache-control")).then(|| {
        format!(
            "{}.overrideResponseCode: {code} is not an error, and a cache in front of the proxy may keep this page as the \
             URL's answer for as long as the error object's own cache-control allows; set \"headers\": \
             {{\"cache-control\": ...}} on the rule to decide (without either, the filter sends \"{}\")",
            rule.id,
            NON_ERROR_CACHE_CONTROL
        )
    })
}

/// Reads `path`, `body` and `contentType` of a rule or a variant.
fn variant(o: &mut Obj<'_>, service: Option<ServiceId>, is_rule: bool) -> Result<Variant> {
    let path = o.opt_str("path")?;
    if let Some(p) = path {
        check_object_path(p, &o.field_path("path"))?;
        if service.is_none() {
            return Err(ConfigError::new(
                o.field_path("path"),
                "no errorService is in scope for this rule (set errorService at the top, on the policy or on the rule)",
            ));
        }
    }
    let body = o.opt_str("body")?;
    if let Some(b) = body {
        template::validate(b).map_err(|e| ConfigError::new(o.field_path("body"), e))?;
    }
    let content_type = match o.opt_str("contentType")? {
        Some(ct) => {
            check_content_type(ct, &o.field_path("contentType"))?;
            ct.to_string()
        }
        // An empty reply: the status and headers alone (Envoy Gateway's bare replies).
        None if is_rule && path.is_none() && body == Some("") => NO_CONTENT_TYPE.to_string(),
        None if is_rule => DEFAULT_CONTENT_TYPE.to_string(),
        None => return Err(ConfigError::new(o.field_path("contentType"), "is required for a variant")),
    };
    Ok(Variant { content_type, path: path.map(str::to_string), body: body.map(str::to_string) })
}

/// Headers the filter itself sets on every fetch: a service's `requestHeaders` cannot.
const CALL_HEADERS: &[&str] = &["host", "x-code", "x-format", "x-original-uri", "x-original-host", "x-request-id"];

/// `errorService.requestHeaders`: static headers on every fetch (lower-case names, each once).
fn request_headers(o: &mut Obj<'_>) -> Result<Vec<(String, String)>> {
    header_map(o, "requestHeaders", |name, value, path| {
        let lower = name.to_ascii_lowercase();
        if !is_token(name) {
            return Err(ConfigError::new(path, format!("\"{name}\" is not a header name")));
        }
        if CALL_HEADERS.contains(&lower.as_str()) || RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(ConfigError::new(path, format!("\"{name}\" is set by the filter or by Envoy on every fetch")));
        }
        if !valid_header_value(value) {
            return Err(ConfigError::new(path, "a header value must not contain control characters (CR, LF, NUL)"));
        }
        Ok(())
    })
}

/// `errorService.prewarmCodes`: exact codes 400-599 (numbers or strings), each once.
fn prewarm_codes(o: &mut Obj<'_>) -> Result<Vec<u16>> {
    let Some(list) = o.get("prewarmCodes") else { return Ok(DEFAULT_PREWARM_CODES.to_vec()) };
    let Value::Array(list) = list else {
        return Err(ConfigError::new(o.field_path("prewarmCodes"), "expected an array of error codes"));
    };
    let items = list.iter().enumerate().map(|(i, v)| (format!("{}[{i}]", o.field_path("prewarmCodes")), v));
    let mut codes = Vec::with_capacity(items.len());
    for (path, v) in items {
        let code = match v {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => s.trim().parse::<u16>().ok(),
            _ => None,
        }
        .filter(|c| (400..=599).contains(c))
        .ok_or_else(|| ConfigError::new(&path, "must be an error code 400-599"))?;
        if codes.contains(&code) {
            return Err(ConfigError::new(path, format!("{code} is listed twice")));
        }
        codes.push(code);
    }
    Ok(codes)
}

fn cluster_name(s: &str, path: &str) -> Result<String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(path, "must be the name of an Envoy cluster (no spaces)"));
    }
    Ok(s.to_string())
}

fn check_match_path(p: &str, path: &str) -> Result<()> {
    if !p.starts_with('/') {
        return Err(ConfigError::new(path, format!("\"{p}\" must start with \"/\"")));
    }
    Ok(())
}

/// An error object's path: starts with `/`, does not end with `/`, only `{status}` as a
/// placeholder, and nothing that could break the `:path` header of the call.
fn check_object_path(p: &str, path: &str) -> Result<()> {
    if !p.starts_with('/') {
        return Err(ConfigError::new(path, format!("\"{p}\" must start with \"/\"")));
    }
    if p.ends_with('/') {
        return Err(ConfigError::new(path, format!("\"{p}\" must not end with \"/\"")));
    }
    if !p.bytes().all(|b| b.is_ascii_graphic()) || p.contains('#') {
        return Err(ConfigError::new(path, format!("\"{p}\" must be printable ASCII without spaces or \"#\"")));
    }
    let without = p.replace("{status}", "").replace("{originalStatus}", "").replace("{lang}", "");
    if without.contains(['{', '}']) {
        return Err(ConfigError::new(
            path,
            format!(
                "\"{p}\": the only placeholders are {{status}} and {{originalStatus}} (both the original code) and {{lang}} (the language chosen)"
            ),
        ));
    }
    Ok(())
}

fn check_content_type(ct: &str, path: &str) -> Result<()> {
    if !is_media_type(ct) {
        return Err(ConfigError::new(
            path,
            format!("\"{ct}\" is not a media type such as \"text/html; charset=utf-8\""),
        ));
    }
    Ok(())
}

/// Headers a rule may not set: framing and pseudo headers belong to Envoy, content-type
/// to `contentType`.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "content-type",
    "host",
];

fn check_set_header(name: &str, value: &str, path: &str) -> Result<()> {
    let lower = name.to_ascii_lowercase();
    if !is_token(name) {
        return Err(ConfigError::new(path, format!("\"{name}\" is not a header name")));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(ConfigError::new(path, format!("\"{name}\" cannot be set by a rule")));
    }
    if !valid_header_value(value) {
        return Err(ConfigError::new(path, "a header value must not contain control characters (CR, LF, NUL)"));
    }
    Ok(())
}

fn compile_regex(re: &str, ignore_case: bool, path: &str) -> Result<Regex> {
    // Google Cloud's regexMatch must match the whole path (RE2 full match).
    let anchored = if ignore_case { format!("(?i)^(?:{re})$") } else { format!("^(?:{re})$") };
    if re.len() > 1024 {
        return Err(ConfigError::new(path, "a regex is limited to 1024 characters"));
    }
    regex_lite::RegexBuilder::new(&anchored).size_limit(1 << 20).nest_limit(64).build().map_err(|e| {
        ConfigError::new(path, format!("invalid regex: {}", e.to_string().lines().last().unwrap_or("").trim()))
    })
}

fn str_cond(o: &mut Obj<'_>, header: bool) -> Result<StrCond> {
    let mut found: Vec<StrCond> = Vec::new();
    if let Some(s) = o.opt_str("exactMatch")? {
        found.push(StrCond::Exact(s.to_string()));
    }
    if header {
        if let Some(s) = o.opt_str("prefixMatch")? {
            found.push(StrCond::Prefix(s.to_string()));
        }
        if let Some(s) = o.opt_str("suffixMatch")? {
            found.push(StrCond::Suffix(s.to_string()));
        }
    }
    if let Some(r) = o.opt_str("regexMatch")? {
        found.push(StrCond::Regex(compile_regex(r, false, &o.field_path("regexMatch"))?));
    }
    if let Some(b) = o.opt_bool("presentMatch")? {
        found.push(StrCond::Present(b));
    }
    let kinds = if header {
        "exactMatch, prefixMatch, suffixMatch, regexMatch, presentMatch"
    } else {
        "exactMatch, regexMatch, presentMatch"
    };
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ConfigError::new(o.path(), format!("needs one of {kinds}"))),
        _ => Err(ConfigError::new(o.path(), format!("only one of {kinds} may be set"))),
    }
}

/// `routeTimeoutsMs`: Envoy's route timeouts by route name, `*` for any other route.
fn route_timeouts(o: &mut Obj<'_>) -> Result<RouteTimeouts> {
    let mut out = RouteTimeouts::default();
    let Some(mut t) = o.opt_obj("routeTimeoutsMs")? else { return Ok(out) };
    for name in t.keys() {
        let path = t.field_path(&name);
        if name.is_empty() {
            return Err(ConfigError::new(t.path(), "a route name must not be empty"));
        }
        let ms = t.get(&name).and_then(Value::as_u64).filter(|n| (1..=MAX_ROUTE_TIMEOUT_MS).contains(n));
        let Some(ms) = ms else {
            return Err(ConfigError::new(
                path,
                format!("expected milliseconds, a whole number 1-{MAX_ROUTE_TIMEOUT_MS}"),
            ));
        };
        if name == "*" {
            out.other = Some(ms);
        } else {
            out.by_route.insert(name, ms);
        }
    }
    t.finish()?;
    Ok(out)
}
