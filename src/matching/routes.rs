//! Inside one path matcher: `pathRules` (longest path wins) or `routeRules` (lowest
//! priority first; any of its match rules; every condition of a match rule must hold).

use crate::fasthash::FastMap;
use crate::ids::PolicyId;
use crate::request::{path_only, query_of, query_param, Metadata, RequestView};
use regex_lite::Regex;

/// `pathRules`: `/x/*` is a prefix, `/x` is exact; the longest match wins. `T` is what a
/// path leads to (the policy of its path rule).
#[derive(Debug, Clone)]
pub struct PathRules<T> {
    exact: FastMap<String, T>,
    /// Stored with the trailing `/` (`/images/*` -> `/images/`).
    prefix: FastMap<String, T>,
}

impl<T> Default for PathRules<T> {
    fn default() -> Self {
        PathRules { exact: FastMap::default(), prefix: FastMap::default() }
    }
}

impl<T: Copy> PathRules<T> {
    /// Returns the owner of an identical path already present.
    pub fn insert(&mut self, path: &str, policy: T) -> Option<T> {
        let (map, key) = match path.strip_suffix('*') {
            Some(p) => (&mut self.prefix, p),
            None => (&mut self.exact, path),
        };
        match map.get(key) {
            Some(&prev) => Some(prev),
            None => {
                map.insert(key.to_string(), policy);
                None
            }
        }
    }

    pub fn lookup(&self, path: &str) -> Option<T> {
        let path = path_only(path);
        // An exact path is as long as the request path, so no prefix can beat it.
        if let Some(&p) = self.exact.get(path) {
            return Some(p);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Probe each `/`-terminated prefix of the request path, longest first: the cost
        // is the number of path segments, not the number of rules.
        let bytes = path.as_bytes();
        for end in (0..bytes.len()).rev() {
            if bytes[end] == b'/' {
                if let Some(&p) = self.prefix.get(&path[..=end]) {
                    return Some(p);
                }
            }
        }
        None
    }
}

pub fn validate_path_rule_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("\"{p}\" must start with \"/\""));
    }
    if p.contains(['?', '#']) {
        return Err(format!("\"{p}\" must not contain a query or fragment"));
    }
    let stars = p.matches('*').count();
    if stars > 1 || (stars == 1 && !p.ends_with("/*")) {
        return Err(format!("\"{p}\": \"*\" is only allowed at the end, after a \"/\""));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub enum PathCond {
    Any,
    Prefix(String),
    Full(String),
    /// A full-path regex and the literal text every match must start with: regex-lite
    /// has no literal prefilter, and most path regexes start with a fixed segment, so a
    /// `starts_with` rejects most paths before the regex runs.
    Regex(Regex, String),
}

/// The literal start of a regex (before any metacharacter), usable as a prefilter when
/// matching is case-sensitive. Stops before a char that a quantifier could make optional.
pub fn literal_prefix(re: &str) -> String {
    let mut out = String::new();
    let mut chars = re.chars().peekable();
    while let Some(c) = chars.next() {
        if "\\.[](){}*+?|^$".contains(c) {
            break;
        }
        if matches!(chars.peek(), Some('*' | '?' | '{')) {
            break;
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone)]
pub enum StrCond {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
    Present(bool),
}

impl StrCond {
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (StrCond::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (StrCond::Exact(s), Some(v)) => v == s,
            (StrCond::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
            (StrCond::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
            (StrCond::Regex(r), Some(v)) => r.is_match(v),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderCond {
    pub name: String,
    pub cond: StrCond,
    pub invert: bool,
}

impl HeaderCond {
    /// Whether the condition holds for the header's value (`None`: the header is absent).
    pub fn holds(&self, value: Option<&str>) -> bool {
        self.cond.holds(value) != self.invert
    }
}

#[derive(Debug, Clone)]
pub struct QueryCond {
    pub name: String,
    pub cond: StrCond,
}

/// A condition on a string in the route's metadata, `filter_metadata.<namespace>.<key>`
/// (Istio writes the VirtualService that made a route under `istio.config`).
#[derive(Debug, Clone)]
pub struct MetadataCond {
    pub namespace: String,
    pub key: String,
    pub cond: StrCond,
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub struct MatchRule {
    pub path: PathCond,
    pub ignore_case: bool,
    pub headers: Vec<HeaderCond>,
    pub query: Vec<QueryCond>,
    pub route_name: Option<String>,
    pub metadata: Vec<MetadataCond>,
}

impl MatchRule {
    /// `path` is `full_path` without its query (computed once by the caller).
    pub fn matches(&self, req: &mut dyn RequestView, full_path: &str, path: &str) -> bool {
        let path_ok = match &self.path {
            PathCond::Any => true,
            PathCond::Prefix(p) if self.ignore_case => {
                path.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p))
            }
            PathCond::Prefix(p) => path.starts_with(p.as_str()),
            PathCond::Full(p) if self.ignore_case => path.eq_ignore_ascii_case(p),
            PathCond::Full(p) => path == p,
            // Compiled anchored (and case-insensitive when asked) at load.
            PathCond::Regex(r, literal) => path.starts_with(literal.as_str()) && r.is_match(path),
        };
        if !path_ok {
            return false;
        }
        if let Some(name) = &self.route_name {
            if req.route_name().as_deref() != Some(name.as_str()) {
                return false;
            }
        }
        for h in &self.headers {
            if !h.holds(req.header(&h.name).as_deref()) {
                return false;
            }
        }
        for m in &self.metadata {
            let value = req.metadata(Metadata::Route, &m.namespace, &m.key);
            if m.cond.holds(value.as_deref()) == m.invert {
                return false;
            }
        }
        if !self.query.is_empty() {
            let query = query_of(full_path);
            for q in &self.query {
                let value = query_param(query, &q.name);
                if !q.cond.holds(value.as_deref()) {
                    return false;
                }
            }
        }
        true
    }
}

#[derive(Debug, Clone)]
pub struct RouteRule {
    pub priority: u64,
    pub match_rules: Vec<MatchRule>,
    pub policy: PolicyId,
}

/// Route rules sorted by priority; the first rule with a matching match rule wins.
pub fn first_route(rules: &[RouteRule], req: &mut dyn RequestView, full_path: &str) -> Option<PolicyId> {
    let path = path_only(full_path);
    rules
        .iter()
        .find(|r| r.match_rules.is_empty() || r.match_rules.iter().any(|m| m.matches(req, full_path, path)))
        .map(|r| r.policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::StaticRequest;

    fn req(path: &str, headers: &[(&str, &str)], route: Option<&str>) -> StaticRequest {
        StaticRequest {
            authority: "h".into(),
            path: path.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            route_name: route.map(str::to_string),
            ..Default::default()
        }
    }

    fn any_rule() -> MatchRule {
        MatchRule {
            path: PathCond::Any,
            ignore_case: false,
            headers: vec![],
            query: vec![],
            route_name: None,
            metadata: vec![],
        }
    }

    fn check(m: &MatchRule, path: &str, headers: &[(&str, &str)], route: Option<&str>) -> bool {
        let mut r = req(path, headers, route);
        m.matches(&mut r, path, path_only(path))
    }

    #[test]
    fn path_rules_longest_wins() {
        let mut pr = PathRules::default();
        assert_eq!(pr.insert("/images/*", 0), None);
        assert_eq!(pr.insert("/images/icons/*", 1), None);
        assert_eq!(pr.insert("/logo.png", 2), None);
        assert_eq!(pr.insert("/images/icons/x.png", 3), None);
        assert_eq!(pr.lookup("/images/a.png"), Some(0));
        assert_eq!(pr.lookup("/images/"), Some(0));
        assert_eq!(pr.lookup("/images/icons/a.png?x=1"), Some(1));
        assert_eq!(pr.lookup("/images/icons/x.png"), Some(3));
        assert_eq!(pr.lookup("/logo.png?v=2"), Some(2));
        // no-match twins
        assert_eq!(pr.lookup("/images"), None);
        assert_eq!(pr.lookup("/logo.png/x"), None);
        assert_eq!(pr.lookup("/imagesx/a"), None);
        assert_eq!(pr.insert("/images/*", 9), Some(0));
    }

    #[test]
    fn path_rule_paths_validated() {
        assert!(validate_path_rule_path("/a/*").is_ok());
        assert!(validate_path_rule_path("/a").is_ok());
        assert!(validate_path_rule_path("a").is_err());
        assert!(validate_path_rule_path("/a*").is_err());
        assert!(validate_path_rule_path("/*/a").is_err());
        assert!(validate_path_rule_path("/a?b").is_err());
    }

    #[test]
    fn prefix_full_and_case() {
        let mut m = any_rule();
        m.path = PathCond::Prefix("/api/".into());
        assert!(check(&m, "/api/x?q=1", &[], None));
        assert!(!check(&m, "/API/x", &[], None));
        m.ignore_case = true;
        assert!(check(&m, "/API/x", &[], None));
        assert!(!check(&m, "/ap", &[], None));
        m.path = PathCond::Full("/api".into());
        assert!(check(&m, "/Api?x", &[], None));
        assert!(!check(&m, "/api/", &[], None));
        m.ignore_case = false;
        assert!(check(&m, "/api?x", &[], None));
        assert!(!check(&m, "/Api", &[], None), "case-sensitive unless ignoreCase");
        assert!(!check(&m, "/api/", &[], None));
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("/svc1/[a-z]+"), "/svc1/");
        assert_eq!(literal_prefix("/ab?c"), "/a");
        assert_eq!(literal_prefix("/a*"), "/");
        assert_eq!(literal_prefix("/x{2}"), "/");
        assert_eq!(literal_prefix("(/a|/b)"), "");
        assert_eq!(literal_prefix("/a.b"), "/a");
        assert_eq!(literal_prefix("/a\\.b"), "/a");
    }

    #[test]
    fn regex_path() {
        let mut m = any_rule();
        m.path = PathCond::Regex(Regex::new("^(?:/v[0-9]+/.*)$").unwrap(), literal_prefix("/v[0-9]+/.*"));
        assert!(check(&m, "/v2/users?x", &[], None));
        assert!(!check(&m, "/x/v2/users", &[], None));
    }

    #[test]
    fn headers_all_kinds_and_invert() {
        let cases: Vec<(StrCond, Option<&str>, bool)> = vec![
            (StrCond::Exact("a".into()), Some("a"), true),
            (StrCond::Exact("a".into()), Some("ab"), false),
            (StrCond::Prefix("app".into()), Some("application/json"), true),
            (StrCond::Prefix("app".into()), Some("text/html"), false),
            (StrCond::Suffix("json".into()), Some("application/json"), true),
            (StrCond::Suffix("json".into()), Some("text/html"), false),
            (StrCond::Regex(Regex::new("^(?:b.t)$").unwrap()), Some("bot"), true),
            (StrCond::Regex(Regex::new("^(?:b.t)$").unwrap()), Some("robot"), false),
            (StrCond::Present(true), Some("x"), true),
            (StrCond::Present(true), None, false),
            (StrCond::Present(false), None, true),
            (StrCond::Exact("a".into()), None, false),
        ];
        for (cond, value, want) in cases {
            for invert in [false, true] {
                let mut m = any_rule();
                m.headers = vec![HeaderCond { name: "x-h".into(), cond: cond.clone(), invert }];
                let hs: Vec<(&str, &str)> = value.map(|v| vec![("x-h", v)]).unwrap_or_default();
                assert_eq!(check(&m, "/", &hs, None), want != invert, "{cond:?} {value:?} invert={invert}");
            }
        }
    }

    #[test]
    fn query_and_route_name() {
        let mut m = any_rule();
        m.query = vec![QueryCond { name: "debug".into(), cond: StrCond::Exact("1".into()) }];
        assert!(check(&m, "/p?debug=1", &[], None));
        assert!(!check(&m, "/p?debug=0", &[], None));
        assert!(!check(&m, "/p", &[], None));
        let mut r = any_rule();
        r.route_name = Some("checkout".into());
        assert!(check(&r, "/", &[], Some("checkout")));
        assert!(!check(&r, "/", &[], Some("cart")));
        assert!(!check(&r, "/", &[], None));
    }

    #[test]
    fn route_metadata_matches_and_invert() {
        let vs = "/apis/networking.istio.io/v1alpha3/namespaces/shop/virtual-service/checkout";
        let mut m = any_rule();
        m.metadata.push(MetadataCond {
            namespace: "istio".into(),
            key: "config".into(),
            cond: StrCond::Suffix("/virtual-service/checkout".into()),
            invert: false,
        });
        let mut r = req("/x", &[], None);
        r.route_metadata.push(("istio".into(), "config".into(), vs.into()));
        assert!(m.matches(&mut r, "/x", "/x"));
        let mut other = req("/x", &[], None);
        other.route_metadata.push(("istio".into(), "config".into(), vs.replace("checkout", "cart")));
        assert!(!m.matches(&mut other, "/x", "/x"));
        assert!(!m.matches(&mut req("/x", &[], None), "/x", "/x"), "no metadata: no match");
        let mut vhost_only = req("/x", &[], None);
        vhost_only.virtual_host_metadata.push(("istio".into(), "config".into(), vs.into()));
        assert!(!m.matches(&mut vhost_only, "/x", "/x"), "the route's metadata, not the virtual host's");
        m.metadata[0].invert = true;
        assert!(!m.matches(&mut r, "/x", "/x"));
        assert!(m.matches(&mut other, "/x", "/x"));
    }

    #[test]
    fn first_route_by_order() {
        let mut api = any_rule();
        api.path = PathCond::Prefix("/api/".into());
        let rules = vec![
            RouteRule { priority: 1, match_rules: vec![api], policy: PolicyId(7) },
            RouteRule { priority: 2, match_rules: vec![any_rule()], policy: PolicyId(8) },
        ];
        let mut r = req("/api/x", &[], None);
        assert_eq!(first_route(&rules, &mut r, "/api/x"), Some(PolicyId(7)));
        let mut r = req("/web", &[], None);
        assert_eq!(first_route(&rules, &mut r, "/web"), Some(PolicyId(8)));
        assert_eq!(first_route(&rules[..1], &mut r, "/web"), None);
    }
}
