//! Response-code specs (`"404"`, `"5xx"`, `"502-504"`) and the per-policy lookup table
//! that applies Google Cloud's precedence: an exact code beats a range, a narrower
//! range beats a wider one. The table is built once at load, so a lookup is one index.

pub const MIN_CODE: u16 = 400;
pub const MAX_CODE: u16 = 599;
const SLOTS: usize = (MAX_CODE - MIN_CODE + 1) as usize;
const NONE: u16 = u16::MAX;
/// Rules one policy may have: their indices fit the table's `u16` slots, beside `NONE`.
pub const MAX_RULES: usize = 10_000;

/// An inclusive range of codes; an exact code is a range of width one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeSpec {
    pub lo: u16,
    pub hi: u16,
}

impl CodeSpec {
    pub fn parse(s: &str) -> Result<CodeSpec, String> {
        let bad = || format!("\"{s}\" is not a code (400-599), a class (\"4xx\", \"5xx\") or a range (\"502-504\")");
        let t = s.trim();
        let spec = match t.to_ascii_lowercase().as_str() {
            "4xx" => CodeSpec { lo: 400, hi: 499 },
            "5xx" => CodeSpec { lo: 500, hi: 599 },
            other => match other.split_once('-') {
                Some((a, b)) => CodeSpec { lo: num(a).ok_or_else(bad)?, hi: num(b).ok_or_else(bad)? },
                None => {
                    let n = num(other).ok_or_else(bad)?;
                    CodeSpec { lo: n, hi: n }
                }
            },
        };
        if spec.lo < MIN_CODE || spec.hi > MAX_CODE {
            return Err(format!("\"{s}\" is outside the error codes 400-599"));
        }
        if spec.lo > spec.hi {
            return Err(format!("\"{s}\" is an empty range (start after end)"));
        }
        Ok(spec)
    }

    pub fn width(&self) -> u16 {
        self.hi - self.lo
    }

    pub fn contains(&self, code: u16) -> bool {
        self.lo <= code && code <= self.hi
    }
}

fn num(s: &str) -> Option<u16> {
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Which responses a rule applies to, by who produced them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Any,
    Upstream,
    Proxy,
}

impl Source {
    pub fn overlaps(&self, other: Source) -> bool {
        *self == Source::Any || other == Source::Any || *self == other
    }
}

/// For each code 400-599 and each origin (upstream, proxy): the index of the rule that
/// decides, or nothing. 800 bytes per policy buys a branch-free lookup on the error path.
/// How a rule (the `index`th of its policy) ranks for `code`, lowest first: its narrowest
/// spec that holds the code (an exact code beats a range, a range a class), then a
/// source-specific rule before an `any` one, then the list's order. `None`: no spec holds it.
pub fn rank(specs: &[CodeSpec], source: Source, code: u16, index: usize) -> Option<(u16, u8, usize)> {
    let width = specs.iter().filter(|s| s.contains(code)).map(|s| s.width()).min()?;
    Some((width, u8::from(source == Source::Any), index))
}

#[derive(Debug, Clone)]
pub struct CodeTable {
    upstream: Box<[u16]>,
    proxy: Box<[u16]>,
}

impl CodeTable {
    /// `rules` lists, per rule, its specs and source, in declaration order.
    pub fn build(rules: &[(Vec<CodeSpec>, Source)]) -> CodeTable {
        let mut upstream = vec![NONE; SLOTS].into_boxed_slice();
        let mut proxy = vec![NONE; SLOTS].into_boxed_slice();
        for (slot, code) in (MIN_CODE..=MAX_CODE).enumerate() {
            // Rank: (width of the narrowest spec of the rule covering `code`, source-specific
            // before "any", declaration order).
            let mut best_up: Option<(u16, u8, usize)> = None;
            let mut best_px: Option<(u16, u8, usize)> = None;
            for (i, (specs, source)) in rules.iter().enumerate() {
                let Some(rank) = rank(specs, *source, code, i) else {
                    continue;
                };
                if source.overlaps(Source::Upstream) && best_up.is_none_or(|b| rank < b) {
                    best_up = Some(rank);
                }
                if source.overlaps(Source::Proxy) && best_px.is_none_or(|b| rank < b) {
                    best_px = Some(rank);
                }
            }
            // Rule indices stay below `NONE`: the loader refuses policies of MAX_RULES or more.
            if let Some((_, _, i)) = best_up {
                upstream[slot] = u16::try_from(i).unwrap_or(NONE);
            }
            if let Some((_, _, i)) = best_px {
                proxy[slot] = u16::try_from(i).unwrap_or(NONE);
            }
        }
        CodeTable { upstream, proxy }
    }

    pub fn lookup(&self, code: u16, made_by_proxy: bool) -> Option<usize> {
        if !(MIN_CODE..=MAX_CODE).contains(&code) {
            return None;
        }
        let slot = (code - MIN_CODE) as usize;
        let table = if made_by_proxy { &self.proxy } else { &self.upstream };
        match table.get(slot) {
            Some(&i) if i != NONE => Some(i as usize),
            _ => None,
        }
    }

    /// Whether any rule of this table covers `code` for some origin.
    pub fn mentions(&self, code: u16) -> bool {
        self.lookup(code, false).is_some() || self.lookup(code, true).is_some()
    }
}

/// A set of codes 400-599 (for the "is this status interesting at all" check).
#[derive(Debug, Clone, Default)]
pub struct CodeSet([u64; 4]);

impl CodeSet {
    pub fn insert(&mut self, code: u16) {
        if (MIN_CODE..=MAX_CODE).contains(&code) {
            let i = (code - MIN_CODE) as usize;
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn contains(&self, code: u16) -> bool {
        if !(MIN_CODE..=MAX_CODE).contains(&code) {
            return false;
        }
        let i = (code - MIN_CODE) as usize;
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_class_and_range() {
        assert_eq!(CodeSpec::parse("404"), Ok(CodeSpec { lo: 404, hi: 404 }));
        assert_eq!(CodeSpec::parse("4xx"), Ok(CodeSpec { lo: 400, hi: 499 }));
        assert_eq!(CodeSpec::parse("5XX"), Ok(CodeSpec { lo: 500, hi: 599 }));
        assert_eq!(CodeSpec::parse("502-504"), Ok(CodeSpec { lo: 502, hi: 504 }));
    }

    #[test]
    fn refuses_bad_specs() {
        for bad in [
            "40", "4044", "0404", "+404", "4o4", "3xx", "abc", "", "399", "600", "504-502", "500-", "x-500", "2xx",
            "+50-504",
        ] {
            assert!(CodeSpec::parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(CodeSpec::parse("504-502").unwrap_err(), "\"504-502\" is an empty range (start after end)");
        assert_eq!(CodeSpec::parse("600").unwrap_err(), "\"600\" is outside the error codes 400-599");
    }

    fn spec(s: &str) -> CodeSpec {
        CodeSpec::parse(s).unwrap()
    }

    #[test]
    fn exact_beats_range_and_narrow_beats_wide() {
        let t = CodeTable::build(&[
            (vec![spec("5xx")], Source::Any),
            (vec![spec("502-504")], Source::Any),
            (vec![spec("503")], Source::Any),
        ]);
        assert_eq!(t.lookup(503, false), Some(2));
        assert_eq!(t.lookup(502, false), Some(1));
        assert_eq!(t.lookup(500, false), Some(0));
        assert_eq!(t.lookup(404, false), None);
        assert_eq!(t.lookup(200, false), None);
    }

    #[test]
    fn source_specific_rule_only_for_its_origin() {
        let t = CodeTable::build(&[(vec![spec("503")], Source::Proxy), (vec![spec("5xx")], Source::Any)]);
        assert_eq!(t.lookup(503, true), Some(0));
        assert_eq!(t.lookup(503, false), Some(1));
        let only_proxy = CodeTable::build(&[(vec![spec("503")], Source::Proxy)]);
        assert_eq!(only_proxy.lookup(503, false), None);
        assert!(only_proxy.mentions(503));
    }

    #[test]
    fn source_specific_beats_any_of_the_same_width_either_way_round() {
        for (rules, proxy_rule) in [
            (vec![(vec![spec("5xx")], Source::Any), (vec![spec("5xx")], Source::Proxy)], 1),
            (vec![(vec![spec("5xx")], Source::Proxy), (vec![spec("5xx")], Source::Any)], 0),
        ] {
            let t = CodeTable::build(&rules);
            assert_eq!(t.lookup(503, true), Some(proxy_rule));
            assert_eq!(t.lookup(503, false), Some(1 - proxy_rule), "an upstream response never gets the proxy rule");
        }
        // A narrower "any" rule still beats a wider source-specific one.
        let t = CodeTable::build(&[(vec![spec("5xx")], Source::Upstream), (vec![spec("503")], Source::Any)]);
        assert_eq!(t.lookup(503, false), Some(1));
        assert_eq!(t.lookup(502, false), Some(0));
        assert_eq!(t.lookup(502, true), None, "an upstream-only rule never answers the proxy");
    }

    #[test]
    fn first_declared_wins_among_equals() {
        let t = CodeTable::build(&[(vec![spec("4xx")], Source::Proxy), (vec![spec("400-499")], Source::Proxy)]);
        assert_eq!(t.lookup(404, true), Some(0));
    }

    #[test]
    fn code_set() {
        let mut s = CodeSet::default();
        assert!(s.is_empty());
        s.insert(404);
        s.insert(599);
        assert!(s.contains(404) && s.contains(599));
        assert!(!s.contains(403) && !s.contains(200) && !s.contains(600));
    }
}
