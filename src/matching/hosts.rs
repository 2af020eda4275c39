//! Host selection: `:authority` without its port, case-insensitive; exact beats wildcard,
//! a longer wildcard beats a shorter one, `*` matches everything. Lookups are hash probes
//! over the request host's own suffixes/prefixes, so the cost does not grow with the
//! number of hosts in the policy.

use crate::fasthash::FastMap;

/// Host patterns of `hostRules`, each leading to a `T` (its path matcher).
#[derive(Debug, Clone)]
pub struct HostIndex<T> {
    exact: FastMap<String, T>,
    /// `*.example.org` is stored as `.example.org`; `*-api.example.org` as `-api.example.org`.
    suffix: FastMap<String, T>,
    /// `www.*` is stored as `www.`.
    prefix: FastMap<String, T>,
    any: Option<T>,
    /// Longest wildcard parts, so probing stops early.
    max_suffix: usize,
    max_prefix: usize,
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        HostIndex {
            exact: FastMap::default(),
            suffix: FastMap::default(),
            prefix: FastMap::default(),
            any: None,
            max_suffix: 0,
            max_prefix: 0,
        }
    }
}

/// What kind of host pattern, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
    Prefix(String),
    Any,
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let h = raw.trim().to_ascii_lowercase();
        if h.is_empty() {
            return Err("a host must not be empty".into());
        }
        if h == "*" {
            return Ok(HostPattern::Any);
        }
        if h.bytes().any(|b| !(b.is_ascii_alphanumeric() || b"-._*[]:".contains(&b))) {
            return Err(format!("\"{raw}\" is not a host name"));
        }
        let stars = h.matches('*').count();
        if stars > 1 {
            return Err(format!("\"{raw}\": only one leading or trailing \"*\" is allowed"));
        }
        if let Some(rest) = h.strip_prefix('*') {
            return Ok(HostPattern::Suffix(rest.to_string()));
        }
        if let Some(rest) = h.strip_suffix('*') {
            return Ok(HostPattern::Prefix(rest.to_string()));
        }
        if stars == 1 {
            return Err(format!("\"{raw}\": \"*\" may only start or end a host"));
        }
        Ok(HostPattern::Exact(strip_port(&h).to_string()))
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`; a trailing dot is dropped.
pub fn strip_port(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rfind(':') {
            Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
            _ => authority,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

impl<T: Copy> HostIndex<T> {
    /// Adds a pattern; returns the matcher already holding the same pattern, if any.
    pub fn insert(&mut self, pattern: HostPattern, matcher: T) -> Option<T> {
        let slot = match pattern {
            HostPattern::Exact(h) => self.exact.entry(h),
            HostPattern::Suffix(s) => {
                self.max_suffix = self.max_suffix.max(s.len());
                self.suffix.entry(s)
            }
            HostPattern::Prefix(p) => {
                self.max_prefix = self.max_prefix.max(p.len());
                self.prefix.entry(p)
            }
            HostPattern::Any => {
                return match self.any {
                    Some(prev) => Some(prev),
                    None => {
                        self.any = Some(matcher);
                        None
                    }
                }
            }
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(matcher);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffix.is_empty() && self.prefix.is_empty() && self.any.is_none()
    }

    /// The path matcher for a request's `:authority`.
    pub fn lookup(&self, authority: &str) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let lowered;
        let host = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = authority.to_ascii_lowercase();
            strip_port(&lowered)
        } else {
            strip_port(authority)
        };
        if let Some(&m) = self.exact.get(host) {
            return Some(m);
        }
        // Longest suffix first; a wildcard never matches the empty string.
        if !self.suffix.is_empty() {
            let start = host.len().saturating_sub(self.max_suffix).max(1);
            for i in start..host.len() {
                if host.is_char_boundary(i) {
                    if let Some(&m) = self.suffix.get(&host[i..]) {
                        return Some(m);
                    }
                }
            }
        }
        if !self.prefix.is_empty() {
            let end = host.len().saturating_sub(1).min(self.max_prefix);
            for i in (1..=end).rev() {
                if host.is_char_boundary(i) {
                    if let Some(&m) = self.prefix.get(&host[..i]) {
                        return Some(m);
                    }
                }
            }
        }
        self.any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[(&str, usize)]) -> HostIndex<usize> {
        let mut ix = HostIndex::default();
        for (p, m) in patterns {
            assert_eq!(ix.insert(HostPattern::parse(p).unwrap(), *m), None);
        }
        ix
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.com:8080"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a.com."), "a.com");
        assert_eq!(strip_port("a.com:http"), "a.com:http", "not a port: the authority stays whole");
        assert_eq!(strip_port("a.com:"), "a.com", "an empty port");
        assert_eq!(strip_port("a.com:80x"), "a.com:80x");
    }

    #[test]
    fn exact_match_case_insensitive_and_port_free() {
        let ix = index(&[("shop.example.com", 0)]);
        assert_eq!(ix.lookup("shop.example.com"), Some(0));
        assert_eq!(ix.lookup("SHOP.Example.com:8443"), Some(0));
        assert_eq!(ix.lookup("shop.example.co"), None);
        assert_eq!(ix.lookup("xshop.example.com"), None);
    }

    #[test]
    fn wildcard_matches_subdomains_not_apex() {
        let ix = index(&[("*.example.org", 1)]);
        assert_eq!(ix.lookup("a.example.org"), Some(1));
        assert_eq!(ix.lookup("a.b.example.org:80"), Some(1));
        assert_eq!(ix.lookup("example.org"), None);
        assert_eq!(ix.lookup(".example.org"), None);
    }

    #[test]
    fn exact_beats_wildcard_and_longer_wildcard_beats_shorter() {
        let ix = index(&[("*.example.org", 1), ("a.example.org", 2), ("*.b.example.org", 3), ("*", 4)]);
        assert_eq!(ix.lookup("a.example.org"), Some(2));
        assert_eq!(ix.lookup("x.b.example.org"), Some(3));
        assert_eq!(ix.lookup("c.example.org"), Some(1));
        assert_eq!(ix.lookup("other.net"), Some(4));
    }

    #[test]
    fn prefix_wildcard() {
        let ix = index(&[("www.*", 5)]);
        assert_eq!(ix.lookup("www.example.com"), Some(5));
        assert_eq!(ix.lookup("www."), None);
        assert_eq!(ix.lookup("api.example.com"), None);
    }

    #[test]
    fn duplicate_reports_previous_owner() {
        let mut ix = index(&[("a.com", 0)]);
        assert_eq!(ix.insert(HostPattern::parse("A.com").unwrap(), 1), Some(0));
        assert_eq!(ix.insert(HostPattern::parse("*").unwrap(), 1), None);
        assert_eq!(ix.insert(HostPattern::parse("*").unwrap(), 2), Some(1));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "a*b.com", "*.*.com", "a b.com", "a/b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
