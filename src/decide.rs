//! Which rule answers a response: Google Cloud's precedence, decided per code. The most
//! specific level (route/path rule, then the host's path matcher default, then the
//! proxy-wide default) that has a rule for the code decides; a level without one defers.

use crate::config::Routing;
use crate::config::{Config, Rule, RuleKind, Serve};
use crate::matching::routes::{first_route, RouteRule};
use crate::request::RequestView;

#[derive(Debug, Clone, Copy)]
pub enum Decision<'c> {
    /// No rule covers this response: leave it alone.
    None,
    /// A `passthrough` rule: leave it alone, and do not fall through.
    Passthrough(&'c Rule),
    Serve(&'c Rule, &'c Serve),
}

impl<'c> Decision<'c> {
    pub fn rule(&self) -> Option<&'c Rule> {
        match self {
            Decision::None => None,
            Decision::Passthrough(r) | Decision::Serve(r, _) => Some(r),
        }
    }
}

impl Config {
    /// Cheap pre-check for the hot path: does any rule anywhere cover this status?
    pub fn interested_in(&self, status: u16) -> bool {
        self.codes.contains(status)
    }

    pub fn decide(&self, status: u16, req: &mut dyn RequestView) -> Decision<'_> {
        self.decide_traced(status, req, None)
    }

    /// `decide`, with each step written to `trace` when given (for `policy explain`).
    pub fn decide_traced(
        &self,
        status: u16,
        req: &mut dyn RequestView,
        mut trace: Option<&mut Vec<String>>,
    ) -> Decision<'_> {
        let mut note = |line: &dyn Fn() -> String| {
            if let Some(t) = trace.as_deref_mut() {
                t.push(line());
            }
        };
        if !self.interested_in(status) {
            note(&|| format!("no rule at any level covers {status}: the response passes through"));
            return Decision::None;
        }
        let source_matters = self.source_codes.contains(status);
        let made_by_proxy = source_matters && req.made_by_proxy();
        if source_matters {
            note(&|| {
                format!("the response counts as made by the {}", if made_by_proxy { "proxy" } else { "upstream" })
            });
        }
        let mut chain: [Option<usize>; 3] = [None, None, self.proxy_policy];
        if !self.matchers.is_empty() {
            let authority = req.authority();
            match self.hosts.lookup(&authority).and_then(|i| self.matchers.get(i)) {
                Some(m) => {
                    note(&|| format!("host \"{authority}\" selects path matcher \"{}\"", m.name));
                    chain[1] = m.default_policy;
                    chain[0] = match &m.routing {
                        _ if !m.rule_codes.contains(status) => {
                            note(&|| format!("no path or route rule of \"{}\" covers {status}: not matched", m.name));
                            None
                        }
                        Routing::None => None,
                        Routing::Paths(pr) => pr.lookup(&req.path()),
                        Routing::Routes(rr) => {
                            // Google Cloud picks the first route rule that matches the
                            // request; if its policy has no rule for the code, the level
                            // defers. So rules after the last one with a rule for this code
                            // cannot change the outcome: they are not evaluated (a rule that
                            // needs `xds.route_name` would cost a host call).
                            let covers = |r: &RouteRule| {
                                self.policies
                                    .get(r.policy)
                                    .is_some_and(|p| p.table.lookup(status, made_by_proxy).is_some())
                            };
                            let upto = rr.iter().rposition(covers).map_or(0, |i| i + 1);
                            match upto.checked_sub(1).and_then(|i| rr.get(i)).and_then(|r| self.policies.get(r.policy))
                            {
                                Some(last) if upto < rr.len() => note(&|| {
                                    format!(
                                        "route rules after {} have no rule for {status}: not evaluated",
                                        last.id.trim_end_matches(".customErrorResponsePolicy")
                                    )
                                }),
                                None => note(&|| format!("no route rule has a rule for {status}: none evaluated")),
                                Some(_) => {}
                            }
                            let path = req.path();
                            first_route(&rr[..upto], req, &path)
                        }
                    };
                    match chain[0].and_then(|p| self.policies.get(p)) {
                        Some(p) => note(&|| {
                            format!("the request matches {}", p.id.trim_end_matches(".customErrorResponsePolicy"))
                        }),
                        None if m.rule_codes.contains(status) && !matches!(m.routing, Routing::None) => {
                            note(&|| "no path or route rule matches the request".to_string())
                        }
                        None => {}
                    }
                }
                None => note(&|| format!("no host rule names \"{authority}\": only the proxy-wide policy applies")),
            }
        }
        for policy in chain.iter().flatten().filter_map(|&p| self.policies.get(p)) {
            match policy.table.lookup(status, made_by_proxy).and_then(|i| policy.rules.get(i)) {
                Some(rule) => {
                    note(&|| format!("{} has a rule for {status}: {}", policy.id, rule.id));
                    return match &rule.kind {
                        RuleKind::Passthrough => Decision::Passthrough(rule),
                        RuleKind::Serve(s) => Decision::Serve(rule, s),
                    };
                }
                None => note(&|| format!("{} has no rule for {status}: deferring to the level above", policy.id)),
            }
        }
        note(&|| format!("no level has a rule for {status} for this request: the response passes through"));
        Decision::None
    }
}
