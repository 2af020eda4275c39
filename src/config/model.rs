//! The compiled, validated policy: what the decision code walks on every error response.
//! Built once by `load`; never changed afterwards.

pub use crate::ids::{MatcherId, PolicyId, RuleAt, ServiceId};
use crate::matching::codes::{CodeSet, CodeSpec, CodeTable, Source};
use crate::matching::hosts::HostIndex;
use crate::matching::routes::{HeaderCond, PathRules, RouteRule};

pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// The largest value in `routeTimeoutsMs` (one hour; Envoy's own route timeouts are usually seconds).
pub const MAX_ROUTE_TIMEOUT_MS: u64 = 3_600_000;
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
pub const DEFAULT_CACHE_TTL_S: u64 = 300;
/// How long an expired object is still served while its refresh fails (RFC 5861's
/// `stale-if-error`, one day by default; the object's own directive wins).
pub const DEFAULT_STALE_IF_ERROR_S: u64 = 86_400;
/// The codes a class or range in `matchResponseCodes` is prewarmed for when its `path`
/// has `{status}`: the errors clients meet most.
pub const DEFAULT_PREWARM_CODES: [u16; 17] =
    [400, 401, 403, 404, 405, 408, 409, 410, 413, 414, 429, 431, 500, 501, 502, 503, 504];
pub const DEFAULT_CONTENT_TYPE: &str = "text/html; charset=utf-8";
/// The codes a rule may redirect with (`overrideResponseCode` and `headers.location`).
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];
/// The content type of an empty reply (`"body": ""` and no `contentType`): none is sent.
pub const NO_CONTENT_TYPE: &str = "";
/// The `filter_metadata` namespace a route or virtual host names its policy in.
pub const DEFAULT_METADATA_NAMESPACE: &str = "custom_error_pages";
/// The key under that namespace.
pub const POLICY_KEY: &str = "policy";
/// What a replacement tells caches in front of the proxy when it answers a non-error
/// status and neither the rule's `headers` nor the object say how to cache it: a
/// maintenance page served as 200 must not become the URL's cached answer.
pub const NON_ERROR_CACHE_CONTROL: &str = "no-store";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorService {
    pub cluster: String,
    /// `:authority` of the call; the cluster name when not configured.
    pub authority: String,
    pub timeout_ms: u64,
    pub max_body_bytes: usize,
    /// 0 disables caching for this service.
    pub cache_ttl_s: u64,
    pub stale_if_error_s: u64,
    /// Fetch every object the policy can serve when the configuration goes live.
    pub prewarm: bool,
    /// For a class or range whose path has `{status}`: the codes to prewarm.
    pub prewarm_codes: Vec<u16>,
    /// Static headers on every fetch (`requestHeaders`: a tenant, a token the service wants).
    pub request_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Proxy,
    Host,
    PathRule,
    RouteRule,
    /// A named policy (`policies`), chosen by a route's or virtual host's metadata.
    Named,
}

impl Level {
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Proxy => "proxy",
            Level::Host => "host",
            Level::PathRule => "pathRule",
            Level::RouteRule => "routeRule",
            Level::Named => "named",
        }
    }
}

/// One representation of the error object.
#[derive(Debug, Clone)]
pub struct Variant {
    pub content_type: String,
    /// Path on the error service; may contain `{status}`.
    pub path: Option<String>,
    /// Inline object, or the fallback when the fetch of `path` fails.
    pub body: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Serve {
    pub override_code: Option<u16>,
    /// The rule's own `path`/`body`/`contentType`.
    pub default: Variant,
    pub variants: Vec<Variant>,
    /// Response headers to set on the replacement (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Render `{{...}}` variables in fetched objects too.
    pub template: bool,
    pub service: Option<ServiceId>,
    /// A redirect's `location` (its `headers.location`, templated), with a 3xx override.
    pub location: Option<String>,
    /// `languages`: BCP 47 tags as configured, the first the default; `{lang}` in a path
    /// and `{{lang}}` in a template stand for the one `Accept-Language` chooses.
    pub languages: Vec<String>,
}

impl Serve {
    /// Whether the rule's `headers` set this (lower-case) header.
    pub fn sets(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name) || (name == "location" && self.location.is_some())
    }
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    Passthrough,
    Serve(Box<Serve>),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's JSON path in the policy, e.g. `pathMatchers[0].pathRules[1]
    /// .customErrorResponsePolicy.errorResponseRules[0]`: what logs and `explain` print.
    pub id: String,
    /// The name its counters go by: the rule's `name`, else one derived from its place
    /// (`matcher0_path1_rule0`); unique within the configuration.
    pub stat: String,
    /// The rule's place among all rules of the configuration (policies in order, then
    /// their rules): the index of its counters.
    pub ordinal: usize,
    /// Where the rule is in `Config::policies`.
    pub at: RuleAt,
    pub level: Level,
    pub specs: Vec<CodeSpec>,
    pub source: Source,
    /// `responseHeaderMatches`: conditions on the original response's headers, all of
    /// which must hold for the rule to count for the code.
    pub response_matches: Vec<HeaderCond>,
    pub kind: RuleKind,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy's JSON path, e.g. `pathMatchers[1].routeRules[0].customErrorResponsePolicy`.
    pub id: String,
    pub rules: Vec<Rule>,
    pub table: CodeTable,
}

#[derive(Debug, Clone)]
pub enum Routing {
    None,
    Paths(PathRules<PolicyId>),
    Routes(Vec<RouteRule>),
}

#[derive(Debug, Clone)]
pub struct PathMatcher {
    pub name: String,
    pub default_policy: Option<PolicyId>,
    pub routing: Routing,
    /// Codes covered by some path/route rule policy of this matcher.
    pub rule_codes: CodeSet,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub services: Vec<ErrorService>,
    pub policies: Vec<Policy>,
    pub proxy_policy: Option<PolicyId>,
    pub hosts: HostIndex<MatcherId>,
    pub matchers: Vec<PathMatcher>,
    /// Named policies (`policies`) by name, for routes' and virtual hosts' metadata.
    pub named: std::collections::HashMap<String, PolicyId>,
    /// Codes some named policy covers: only for these is a route's metadata worth reading.
    pub named_codes: CodeSet,
    /// The `filter_metadata` namespace a route names its policy in.
    pub metadata_namespace: String,
    /// Every code some rule covers: any other status passes with no further work.
    pub codes: CodeSet,
    /// Codes some rule with a `source` covers: only for these does the decision need to
    /// know who made the response (a host call to read Envoy's code details).
    pub source_codes: CodeSet,
    /// `routeTimeoutsMs`: the route timeouts Envoy applies, for a build that cannot read
    /// them (the wasm build): a response held for an error object is answered before it.
    pub route_timeouts: RouteTimeouts,
    /// Test-only (feature `trap-test`): trap on this request path.
    #[cfg(feature = "trap-test")]
    pub test_trap_on_path: Option<String>,
    /// Non-fatal findings, logged at load (e.g. a path matcher no host rule names).
    pub warnings: Vec<String>,
}

/// Envoy's route timeouts by route name (`xds.route_name`), and one for any other route.
#[derive(Debug, Clone, Default)]
pub struct RouteTimeouts {
    pub by_route: std::collections::HashMap<String, u64>,
    pub other: Option<u64>,
}

impl RouteTimeouts {
    pub fn is_empty(&self) -> bool {
        self.by_route.is_empty() && self.other.is_none()
    }

    /// The timeout of the route named `route` (unnamed: any other route's).
    pub fn of(&self, route: Option<&str>) -> Option<u64> {
        route.and_then(|r| self.by_route.get(r).copied()).or(self.other)
    }
}

impl Config {
    pub fn policy(&self, id: PolicyId) -> Option<&Policy> {
        self.policies.get(id.0)
    }

    pub fn rule(&self, at: RuleAt) -> Option<&Rule> {
        self.policy(at.policy).and_then(|p| p.rules.get(at.index))
    }

    /// Every rule, in `Rule::ordinal` order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.policies.iter().flat_map(|p| &p.rules)
    }

    pub fn service(&self, id: Option<ServiceId>) -> Option<&ErrorService> {
        id.and_then(|i| self.services.get(i.0))
    }
}
