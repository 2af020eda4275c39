//! Which rule answers a response: Google Cloud's precedence, decided per code. The most
//! specific level that has a rule for the code decides; a level without one defers. From
//! the most specific: the named policy the route's metadata selects, the path or route
//! rule of the host's path matcher, the named policy the virtual host's metadata selects,
//! the path matcher's default, the proxy-wide default. Each level is looked at only when
//! the ones before it had nothing for the code, so metadata and route names are read only
//! when they can matter.
//!
//! One decision path serves the filter and `policy explain`: it reports each step to an
//! `Observer`, which the filter leaves empty (`()`, compiled away) and `explain` writes out.

use crate::config::{Config, PathMatcher, Policy, PolicyId, Routing, Rule, RuleKind, Serve, POLICY_KEY};
use crate::matching::codes::{rank, Source};
use crate::matching::routes::{first_route, RouteRule};
use crate::request::{Metadata, RequestView};
use std::fmt;

#[derive(Debug, Clone, Copy)]
pub enum Decision<'c> {
    /// No rule covers this response: leave it alone.
    None,
    /// A `passthrough` rule: leave it alone, and do not fall through.
    Passthrough(&'c Rule),
    Serve(&'c Rule, &'c Serve),
}

/// One step of a decision, as `explain` tells it.
pub enum Step<'c, 'a> {
    /// No rule at any level covers the status.
    NotCovered,
    /// The status has a source-specific rule somewhere: who made the response.
    Source {
        made_by_proxy: bool,
    },
    HostSelects {
        authority: &'a str,
        matcher: &'c PathMatcher,
    },
    NoHostRule {
        authority: &'a str,
    },
    /// No path or route rule of the matcher covers the status: not matched at all.
    RulesSilent {
        matcher: &'c PathMatcher,
    },
    /// Route rules after `last` cannot change the outcome: not evaluated.
    RoutesAfter {
        last: &'c Policy,
    },
    NoRouteCovers,
    Matches {
        policy: &'c Policy,
    },
    NothingMatches,
    /// The route's or virtual host's metadata names a policy.
    Selects {
        of: Metadata,
        name: &'a str,
        policy: &'c Policy,
    },
    /// ... a name `policies` does not have: that level is skipped.
    UnknownPolicy {
        of: Metadata,
        name: &'a str,
    },
    Decides {
        policy: &'c Policy,
        rule: &'c Rule,
    },
    /// A rule for the code whose `responseHeaderMatches[index]` fails: it does not count.
    ResponseMismatch {
        rule: &'c Rule,
        index: usize,
    },
    Defers {
        policy: &'c Policy,
    },
    NoLevel,
}

/// Sees each step of a decision.
pub trait Observer {
    fn step(&mut self, status: u16, step: Step<'_, '_>);
}

/// The filter's observer: sees nothing, costs nothing.
impl Observer for () {
    #[inline(always)]
    fn step(&mut self, _: u16, _: Step<'_, '_>) {}
}

/// `policy explain`'s observer: one line per step.
impl Observer for Vec<String> {
    fn step(&mut self, status: u16, step: Step<'_, '_>) {
        self.push(Line(status, step).to_string());
    }
}

struct Line<'c, 'a>(u16, Step<'c, 'a>);

fn whose(of: Metadata) -> &'static str {
    match of {
        Metadata::Route => "route's",
        Metadata::VirtualHost => "virtual host's",
    }
}

fn short(p: &Policy) -> &str {
    p.id.trim_end_matches(".customErrorResponsePolicy")
}

impl fmt::Display for Line<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0;
        match &self.1 {
            Step::NotCovered => write!(f, "no rule at any level covers {status}: the response passes through"),
            Step::Source { made_by_proxy } => {
                write!(f, "the response counts as made by the {}", if *made_by_proxy { "proxy" } else { "upstream" })
            }
            Step::HostSelects { authority, matcher } => {
                write!(f, "host \"{authority}\" selects path matcher \"{}\"", matcher.name)
            }
            Step::NoHostRule { authority } => {
                write!(f, "no host rule names \"{authority}\": only the proxy-wide policy applies")
            }
            Step::RulesSilent { matcher } => {
                write!(f, "no path or route rule of \"{}\" covers {status}: not matched", matcher.name)
            }
            Step::RoutesAfter { last } => {
                write!(f, "route rules after {} have no rule for {status}: not evaluated", short(last))
            }
            Step::NoRouteCovers => write!(f, "no route rule has a rule for {status}: none evaluated"),
            Step::Matches { policy } => write!(f, "the request matches {}", short(policy)),
            Step::NothingMatches => write!(f, "no path or route rule matches the request"),
            Step::Selects { of, name, policy } => {
                write!(f, "the {} metadata selects policy \"{name}\" ({})", whose(*of), policy.id)
            }
            Step::UnknownPolicy { of, name } => {
                write!(f, "the {} metadata names policy \"{name}\", which policies does not have: skipped", whose(*of))
            }
            Step::Decides { policy, rule } => {
                write!(f, "{} has a rule for {status}: {} (counted as \"{}\")", policy.id, rule.id, rule.stat)
            }
            Step::ResponseMismatch { rule, index } => {
                let name = rule.response_matches.get(*index).map_or("", |h| h.name.as_str());
                write!(
                    f,
                    "{}: responseHeaderMatches[{index}] ({name}) does not hold for this response: the rule does not count",
                    rule.id
                )
            }
            Step::Defers { policy } => {
                write!(f, "{} has no rule for {status}: deferring to the level above", policy.id)
            }
            Step::NoLevel => {
                write!(f, "no level has a rule for {status} for this request: the response passes through")
            }
        }
    }
}

impl Config {
    /// Cheap pre-check for the hot path: does any rule anywhere cover this status?
    pub fn interested_in(&self, status: u16) -> bool {
        self.codes.contains(status)
    }

    pub fn decide(&self, status: u16, req: &mut dyn RequestView) -> Decision<'_> {
        self.decide_observed(status, req, &mut ())
    }

    /// `decide`, telling `obs` each step (for `policy explain`).
    pub fn decide_observed(&self, status: u16, req: &mut dyn RequestView, obs: &mut impl Observer) -> Decision<'_> {
        if !self.interested_in(status) {
            obs.step(status, Step::NotCovered);
            return Decision::None;
        }
        let source_matters = self.source_codes.contains(status);
        let made_by_proxy = source_matters && req.made_by_proxy();
        if source_matters {
            obs.step(status, Step::Source { made_by_proxy });
        }
        // Named policies are looked up only for codes one of them covers.
        let named = !self.named.is_empty() && self.named_codes.contains(status);
        let route_named = if named { self.named_policy(Metadata::Route, req, status, obs) } else { None };
        if let Some(d) = self.level(route_named, status, made_by_proxy, req, obs) {
            return d;
        }
        let matcher = self.matcher_for(req, status, obs);
        let rule_level = matcher.and_then(|m| self.rule_level(m, status, made_by_proxy, req, obs));
        if let Some(d) = self.level(rule_level, status, made_by_proxy, req, obs) {
            return d;
        }
        let host_named = if named { self.named_policy(Metadata::VirtualHost, req, status, obs) } else { None };
        for policy in [host_named, matcher.and_then(|m| m.default_policy), self.proxy_policy] {
            if let Some(d) = self.level(policy, status, made_by_proxy, req, obs) {
                return d;
            }
        }
        obs.step(status, Step::NoLevel);
        Decision::None
    }

    /// The decision of one level's policy, or `None` when it has no rule for the code (or
    /// there is no policy at that level): the next level decides.
    fn level(
        &self,
        policy: Option<PolicyId>,
        status: u16,
        made_by_proxy: bool,
        req: &mut dyn RequestView,
        obs: &mut impl Observer,
    ) -> Option<Decision<'_>> {
        let policy = self.policy(policy?)?;
        match rule_for(policy, status, made_by_proxy, req, obs) {
            Some(rule) => {
                obs.step(status, Step::Decides { policy, rule });
                Some(match &rule.kind {
                    RuleKind::Passthrough => Decision::Passthrough(rule),
                    RuleKind::Serve(s) => Decision::Serve(rule, s),
                })
            }
            None => {
                obs.step(status, Step::Defers { policy });
                None
            }
        }
    }

    /// The named policy the route's or virtual host's metadata selects.
    fn named_policy(
        &self,
        of: Metadata,
        req: &mut dyn RequestView,
        status: u16,
        obs: &mut impl Observer,
    ) -> Option<PolicyId> {
        let name = req.metadata(of, &self.metadata_namespace, POLICY_KEY)?;
        match self.named.get(&name) {
            Some(&i) => {
                if let Some(policy) = self.policy(i) {
                    obs.step(status, Step::Selects { of, name: &name, policy });
                }
                Some(i)
            }
            None => {
                obs.step(status, Step::UnknownPolicy { of, name: &name });
                None
            }
        }
    }

    /// The path matcher the request's host selects, if any.
    fn matcher_for(&self, req: &mut dyn RequestView, status: u16, obs: &mut impl Observer) -> Option<&PathMatcher> {
        if self.matchers.is_empty() {
            return None;
        }
        let authority = req.authority();
        let matcher = self.hosts.lookup(&authority).and_then(|i| self.matchers.get(i.0));
        match matcher {
            Some(matcher) => obs.step(status, Step::HostSelects { authority: &authority, matcher }),
            None => obs.step(status, Step::NoHostRule { authority: &authority }),
        }
        matcher
    }

    /// The policy of the path rule or route rule the request matches in `m`, when one of
    /// them can have a rule for `status`.
    fn rule_level(
        &self,
        m: &PathMatcher,
        status: u16,
        made_by_proxy: bool,
        req: &mut dyn RequestView,
        obs: &mut impl Observer,
    ) -> Option<PolicyId> {
        if !m.rule_codes.contains(status) {
            obs.step(status, Step::RulesSilent { matcher: m });
            return None;
        }
        let matched = match &m.routing {
            Routing::None => return None,
            Routing::Paths(pr) => pr.lookup(&req.path()),
            Routing::Routes(rr) => {
                // Google Cloud picks the first route rule that matches the request; if its
                // policy has no rule for the code, the level defers. So rules after the last
                // one with a rule for this code cannot change the outcome: they are not
                // evaluated (a rule that needs `xds.route_name` would cost a host call).
                let covers = |r: &RouteRule| {
                    self.policy(r.policy).is_some_and(|p| p.table.lookup(status, made_by_proxy).is_some())
                };
                let upto = rr.iter().rposition(covers).map_or(0, |i| i + 1);
                match upto.checked_sub(1).and_then(|i| rr.get(i)).and_then(|r| self.policy(r.policy)) {
                    Some(last) if upto < rr.len() => obs.step(status, Step::RoutesAfter { last }),
                    None => obs.step(status, Step::NoRouteCovers),
                    Some(_) => {}
                }
                let path = req.path();
                first_route(&rr[..upto], req, &path)
            }
        };
        match matched.and_then(|p| self.policy(p)) {
            Some(policy) => obs.step(status, Step::Matches { policy }),
            None => obs.step(status, Step::NothingMatches),
        }
        matched
    }
}

/// The rule of `policy` that decides `status`: the code table's pick, unless it has
/// response matches; then the rules for the code in rank order (`codes::rank`), the first
/// whose response matches all hold. Response headers are read only for a policy that has
/// such a rule for the code.
fn rule_for<'c>(
    policy: &'c Policy,
    status: u16,
    made_by_proxy: bool,
    req: &mut dyn RequestView,
    obs: &mut impl Observer,
) -> Option<&'c Rule> {
    let first = policy.table.lookup(status, made_by_proxy).and_then(|i| policy.rules.get(i))?;
    if first.response_matches.is_empty() {
        return Some(first);
    }
    let side = if made_by_proxy { Source::Proxy } else { Source::Upstream };
    let mut ranked: Vec<(u16, u8, usize)> = (policy.rules.iter().enumerate())
        .filter(|(_, r)| r.source.overlaps(side))
        .filter_map(|(i, r)| rank(&r.specs, r.source, status, i))
        .collect();
    ranked.sort_unstable();
    for rule in ranked.into_iter().filter_map(|(_, _, i)| policy.rules.get(i)) {
        let failing = rule.response_matches.iter().position(|h| !h.holds(req.response_header(&h.name).as_deref()));
        match failing {
            None => return Some(rule),
            Some(index) => obs.step(status, Step::ResponseMismatch { rule, index }),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::load;
    use crate::request::StaticRequest;
    use serde_json::json;

    fn explain(status: u16, host: &str, path: &str) -> Vec<String> {
        let policy = json!({
            "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["5xx"], "body": "p"}]},
            "hostRules": [{"hosts": ["api.test"], "pathMatcher": "api"}, {"hosts": ["img.test"], "pathMatcher": "img"}],
            "pathMatchers": [
                {"name": "api", "routeRules": [
                    {"priority": 1, "matchRules": [{"prefixMatch": "/a/"}], "customErrorResponsePolicy":
                        {"errorResponseRules": [{"matchResponseCodes": ["502"], "body": "a"}]}},
                    {"priority": 2, "matchRules": [{"prefixMatch": "/b/"}], "customErrorResponsePolicy":
                        {"errorResponseRules": [{"matchResponseCodes": ["503"], "body": "b"}]}}]},
                {"name": "img", "defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"], "body": "i"}]},
                 "pathRules": [{"paths": ["/x/*"], "customErrorResponsePolicy":
                    {"errorResponseRules": [{"matchResponseCodes": ["410"], "body": "x"}]}}]}]
        });
        let cfg = load(policy.to_string().as_bytes()).unwrap();
        let mut req = StaticRequest { authority: host.into(), path: path.into(), ..Default::default() };
        let mut trace = Vec::new();
        cfg.decide_observed(status, &mut req, &mut trace);
        trace
    }

    #[test]
    fn explains_every_step() {
        assert_eq!(
            explain(404, "none.test", "/"),
            [
                "no host rule names \"none.test\": only the proxy-wide policy applies",
                "defaultCustomErrorResponsePolicy has no rule for 404: deferring to the level above",
                "no level has a rule for 404 for this request: the response passes through"
            ]
        );
        assert_eq!(explain(302, "api.test", "/"), ["no rule at any level covers 302: the response passes through"]);
        let t = explain(502, "api.test", "/a/1");
        assert_eq!(t[1], "route rules after pathMatchers[0].routeRules[0] have no rule for 502: not evaluated");
        assert_eq!(t[2], "the request matches pathMatchers[0].routeRules[0]");
        // The first matching route rule is the request's, even without a rule for the code.
        let t = explain(503, "api.test", "/a/1");
        assert_eq!(t[1], "the request matches pathMatchers[0].routeRules[0]", "{t:?}");
        assert_eq!(
            t[2],
            "pathMatchers[0].routeRules[0].customErrorResponsePolicy has no rule for 503: deferring to the level above"
        );
        assert_eq!(t.len(), 4, "the last route rule has 503, nothing skipped: {t:?}");
        let t = explain(503, "api.test", "/c/1");
        assert_eq!(t[1], "no path or route rule matches the request", "{t:?}");
        let t = explain(500, "api.test", "/a/1");
        assert_eq!(t[1], "no path or route rule of \"api\" covers 500: not matched");
        let t = explain(410, "img.test", "/x/1");
        assert_eq!(t[1], "the request matches pathMatchers[1].pathRules[0]");
        let t = explain(410, "img.test", "/y");
        assert_eq!(t[1], "no path or route rule matches the request");
    }
}
