//! Content negotiation: pick the error object's variant from the request's `Accept`
//! (q-values, `type/*`, `*/*`), as browsers get HTML and API clients JSON; and its language
//! from `Accept-Language` (q-values, RFC 4647 lookup).

use crate::config::{Serve, Variant};
use crate::request::RequestView;

struct Range<'a> {
    kind: &'a str,
    sub: &'a str,
    /// q-value in thousandths (RFC 9110 allows three decimals).
    q: u16,
}

/// `1`, `1.0`, `0.5`, `0.125` -> thousandths; anything else is 0 (not acceptable). Parsed by
/// hand: float parsing alone would add kilobytes to the module.
fn parse_q(v: &str) -> u16 {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let thousandths =
        frac.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match int {
        "0" => thousandths,
        "1" if thousandths == 0 => 1000,
        _ => 0,
    }
}

fn parse_accept(accept: &str) -> Vec<Range<'_>> {
    accept
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let media = parts.next()?.trim();
            let (kind, sub) = media.split_once('/')?;
            let mut q = 1000;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim());
                    }
                }
            }
            Some(Range { kind: kind.trim(), sub: sub.trim(), q })
        })
        .collect()
}

/// The q-value the client gives a content type: that of the most specific matching range.
fn quality(ranges: &[Range<'_>], content_type: &str) -> u16 {
    let essence = crate::http::essence(content_type);
    let (kind, sub) = essence.split_once('/').unwrap_or((essence, ""));
    let mut best: Option<(u8, u16)> = None;
    for r in ranges {
        let specificity = if r.kind.eq_ignore_ascii_case(kind) && r.sub.eq_ignore_ascii_case(sub) {
            3
        } else if r.kind.eq_ignore_ascii_case(kind) && r.sub == "*" {
            2
        } else if r.kind == "*" && r.sub == "*" {
            1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, r.q));
        }
    }
    best.map_or(0, |(_, q)| q)
}

/// The variant to serve: highest q-value wins, ties go to declaration order (the rule's
/// own object first). No `Accept`, or nothing acceptable: the rule's own object, since an
/// error page is still better than a 406.
pub fn choose<'s>(serve: &'s Serve, accept: Option<&str>) -> &'s Variant {
    if serve.variants.is_empty() {
        return &serve.default;
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return &serve.default;
    };
    let ranges = parse_accept(accept);
    let mut best = &serve.default;
    let mut best_q = quality(&ranges, &best.content_type);
    for v in &serve.variants {
        let q = quality(&ranges, &v.content_type);
        if q > best_q {
            best = v;
            best_q = q;
        }
    }
    best
}

/// The language to serve, as an index into a rule's `languages` (BCP 47 tags, the first
/// the default): RFC 4647 "lookup". The client's ranges in q order (highest first, ties in
/// their order), each tried whole and then shortened a subtag at a time (`de-CH-1996`,
/// `de-CH`, `de`; a single-letter subtag goes with the one after it), the first that names
/// a language of the rule wins. `*`, ranges with q=0 and anything unparsable are skipped:
/// when nothing matches, the default, since a page in some language beats none.
pub fn language(languages: &[String], accept_language: Option<&str>) -> usize {
    let Some(header) = accept_language.filter(|_| languages.len() > 1) else {
        return 0;
    };
    let mut ranges: Vec<(u16, usize, &str)> = header
        .split(',')
        .enumerate()
        .filter_map(|(i, item)| {
            let mut parts = item.split(';');
            let tag = parts.next()?.trim();
            let mut q = 1000;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim());
                    }
                }
            }
            (q > 0 && tag != "*" && !tag.is_empty()).then_some((q, i, tag))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, range) in ranges {
        let mut candidate = range;
        loop {
            if let Some(i) = languages.iter().position(|l| l.eq_ignore_ascii_case(candidate)) {
                return i;
            }
            let Some(cut) = candidate.rfind('-') else { break };
            candidate = &candidate[..cut];
            // A singleton (`x` in `de-x-priv`) never ends a lookup candidate.
            if let Some(cut) = candidate.rfind('-').filter(|c| candidate.len() - c == 2) {
                candidate = &candidate[..cut];
            }
        }
    }
    0
}

/// The language `req` gets from `serve.languages` (0 without a choice to make:
/// `Accept-Language` is read only for a rule with two languages or more).
pub fn language_for(serve: &Serve, req: &mut dyn RequestView) -> usize {
    if serve.languages.len() < 2 {
        return 0;
    }
    language(&serve.languages, req.header("accept-language").as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ServiceId;

    fn serve() -> Serve {
        let v = |ct: &str, p: &str| Variant { content_type: ct.into(), path: Some(p.into()), body: None };
        Serve {
            override_code: None,
            default: v("text/html; charset=utf-8", "/e.html"),
            variants: vec![v("application/json", "/e.json"), v("text/plain", "/e.txt")],
            headers: vec![],
            template: false,
            service: Some(ServiceId(0)),
            location: None,
            languages: vec![],
        }
    }

    fn pick(accept: Option<&str>) -> String {
        let s = serve();
        choose(&s, accept).path.clone().unwrap()
    }

    #[test]
    fn browsers_get_html() {
        assert_eq!(pick(Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")), "/e.html");
    }

    #[test]
    fn api_clients_get_json() {
        assert_eq!(pick(Some("application/json")), "/e.json");
        assert_eq!(pick(Some("application/*")), "/e.json");
    }

    #[test]
    fn q_values_decide() {
        assert_eq!(pick(Some("text/html;q=0.5, application/json;q=0.9")), "/e.json");
        assert_eq!(pick(Some("text/html;q=0.9, application/json;q=0.5")), "/e.html");
        assert_eq!(pick(Some("text/*;q=0.3, text/plain")), "/e.txt");
    }

    #[test]
    fn a_range_listed_twice_counts_once_the_first() {
        assert_eq!(pick(Some("application/json;q=0.1, application/json;q=0.9, text/html;q=0.5")), "/e.html");
        assert_eq!(pick(Some("application/json;q=0.9, application/json;q=0.1, text/html;q=0.5")), "/e.json");
    }

    #[test]
    fn wildcard_ties_go_to_the_default() {
        assert_eq!(pick(Some("*/*")), "/e.html");
        assert_eq!(pick(None), "/e.html");
        assert_eq!(pick(Some("")), "/e.html");
    }

    #[test]
    fn nothing_acceptable_gives_default() {
        assert_eq!(pick(Some("image/png")), "/e.html");
        assert_eq!(pick(Some("application/json;q=0")), "/e.html");
    }

    #[test]
    fn q_values_parse() {
        assert_eq!(parse_q("1"), 1000);
        assert_eq!(parse_q("1.000"), 1000);
        assert_eq!(parse_q("0.5"), 500);
        assert_eq!(parse_q("0.125"), 125);
        assert_eq!(parse_q("0"), 0);
        for bad in ["1.5", "2", "0.1234", "abc", "-1", ""] {
            assert_eq!(parse_q(bad), 0, "{bad}");
        }
    }

    #[test]
    fn most_specific_range_sets_quality() {
        // json refused explicitly even though */* would accept it
        assert_eq!(pick(Some("application/json;q=0, */*;q=0.1, text/plain;q=0.05")), "/e.html");
    }

    fn lang(available: &[&str], header: Option<&str>) -> &'static str {
        let langs: Vec<String> = available.iter().map(|s| s.to_string()).collect();
        let i = language(&langs, header);
        ["first", "second", "third", "fourth"][i]
    }

    #[test]
    fn a_language_is_looked_up_from_the_most_wanted_range_down() {
        let site = ["en", "de", "fr-CA"];
        assert_eq!(lang(&site, Some("de-CH,de;q=0.9,en;q=0.5")), "second", "de-CH finds de");
        assert_eq!(lang(&site, Some("en")), "first");
        assert_eq!(
            lang(&site, Some("fr;q=0.9, de;q=0.8")),
            "second",
            "fr does not find fr-CA (lookup shortens the range only)"
        );
        assert_eq!(lang(&site, Some("fr-CA-x-private")), "third", "the singleton goes with its subtag");
        assert_eq!(lang(&site, Some("EN-gb;q=0.2, DE;q=0.3")), "second", "q order, case-insensitive");
        assert_eq!(lang(&site, Some("de;q=0.5, en;q=0.5")), "second", "ties: the client's order");
        assert_eq!(lang(&site, Some("de;q=0, en;q=0.1")), "first", "q=0 is not wanted");
        assert_eq!(lang(&site, Some("de;q=0")), "first", "not even as the only match");
        assert_eq!(lang(&site, Some("*")), "first");
        assert_eq!(lang(&site, Some("ja, zh-Hant-TW")), "first", "nothing matches: the default");
        assert_eq!(lang(&site, None), "first");
        assert_eq!(lang(&site, Some("")), "first");
        assert_eq!(lang(&site, Some(";;,,de;q=abc,q=1")), "first", "unparsable q is 0");
        assert_eq!(lang(&["de"], Some("fr")), "first");
        assert_eq!(lang(&["en", "fr-CA-x"], Some("fr-CA-x-private")), "first", "a range never ends with a singleton");
    }
}
