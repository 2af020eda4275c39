//! Which rule answers a response: Google Cloud's precedence, decided per code. The most
//! specific level (route/path rule, then the host's path matcher default, then the
//! proxy-wide default) that has a rule for the code decides; a level without one defers.

use crate::config::{Config, Rule, RuleKind, Serve};
use crate::matching::routes::first_route;
use crate::config::Routing;
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
        if !self.interested_in(status) {
            return Decision::None;
        }
        let from_proxy = self.uses_source && req.from_proxy();
        let mut chain: [Option<usize>; 3] = [None, None, self.proxy_policy];
        if !self.matchers.is_empty() {
            let authority = req.authority();
            if let Some(m) = self.hosts.lookup(&authority).and_then(|i| self.matchers.get(i)) {
                chain[1] = m.default_policy;
                chain[0] = match &m.routing {
                    _ if !m.rule_codes.contains(status) => None,
                    Routing::None => None,
                    Routing::Paths(pr) => pr.lookup(&req.path()),
                    Routing::Routes(rr) => {
                        let path = req.path();
                        first_route(rr, req, &path)
                    }
                };
            }
        }
        for policy in chain.iter().flatten().filter_map(|&p| self.policies.get(p)) {
            if let Some(rule) = policy.table.lookup(status, from_proxy).and_then(|i| policy.rules.get(i)) {
                return match &rule.kind {
                    RuleKind::Passthrough => Decision::Passthrough(rule),
                    RuleKind::Serve(s) => Decision::Serve(rule, s),
                };
            }
        }
        Decision::None
    }
}
