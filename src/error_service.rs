//! The call to the error service and the judgement of its answer. Built from configuration
//! and the numeric status only (plus a few request facts in dedicated `x-` headers): the
//! client's cookies, authorization and other headers never reach the error service.

use crate::config::ErrorService;
use crate::http::{is_media_type, valid_header_value};
use std::borrow::Cow;

/// The error object's path on the error service, `{status}` (or its other name
/// `{originalStatus}`) replaced by the original code, `{lang}` by the language chosen.
pub fn object_path(template: &str, original_status: u16, lang: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        match ["{status}", "{originalStatus}", "{lang}"].iter().find(|p| after.starts_with(**p)) {
            Some(&"{lang}") => {
                out.push_str(lang);
                rest = &after["{lang}".len()..];
            }
            Some(p) => {
                crate::push_decimal(&mut out, original_status.into());
                rest = &after[p.len()..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether a path template names the code (so it stands for one object per code).
pub fn per_code(template: &str) -> bool {
    template.contains("{status}") || template.contains("{originalStatus}")
}

/// Whether a path names one object per language (`{lang}`).
pub fn per_lang(template: &str) -> bool {
    template.contains("{lang}")
}

/// A fetch's headers: names are the filter's own, or a service's `requestHeaders`.
pub type CallHeaders = Vec<(Cow<'static, str>, String)>;

pub struct CallFacts<'a> {
    pub original_status: u16,
    pub format: &'a str,
    pub original_uri: &'a str,
    pub original_host: &'a str,
    pub request_id: &'a str,
}

/// Headers of the `GET`: nothing from the client but the sanitised facts below.
pub fn call_headers(svc: &ErrorService, path: &str, f: &CallFacts<'_>) -> CallHeaders {
    let mut h: CallHeaders = vec![
        (":method".into(), "GET".to_string()),
        (":path".into(), path.to_string()),
        (":authority".into(), svc.authority.clone()),
        ("x-code".into(), f.original_status.to_string()),
        ("x-format".into(), clean(f.format)),
    ];
    for (name, value) in
        [("x-original-uri", f.original_uri), ("x-original-host", f.original_host), ("x-request-id", f.request_id)]
    {
        if !value.is_empty() {
            h.push((name.into(), clean(value)));
        }
    }
    // Validated at load: names the filter does not set, values without control characters.
    h.extend(svc.request_headers.iter().map(|(k, v)| (Cow::Owned(k.clone()), v.clone())));
    h
}

/// Drops anything that could split a header (request values were validated by Envoy,
/// but the call must stay well-formed whatever reaches us).
fn clean(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).take(2048).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// `dispatch_http_call` refused (unknown cluster, bad headers).
    Dispatch,
    /// No response: connect failure or reset.
    Unreachable,
    /// No response within `timeoutMs`.
    Timeout,
    /// A status other than 2xx.
    Status,
    /// Body over `maxBodyBytes`.
    TooLarge,
    /// A header with control characters (CR, LF, NUL...) or bytes that are not UTF-8: an
    /// answer we do not trust, whatever its body.
    Malformed,
}

impl FetchFailure {
    pub const ALL: [FetchFailure; 6] = [
        FetchFailure::Dispatch,
        FetchFailure::Unreachable,
        FetchFailure::Timeout,
        FetchFailure::Status,
        FetchFailure::TooLarge,
        FetchFailure::Malformed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            FetchFailure::Dispatch => "dispatch",
            FetchFailure::Unreachable => "unreachable",
            FetchFailure::Timeout => "timeout",
            FetchFailure::Status => "status",
            FetchFailure::TooLarge => "too_large",
            FetchFailure::Malformed => "malformed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub content_type: String,
    pub cache_control: Option<String>,
}

/// Judges the answer. `headers` are the call's response headers (empty when Envoy
/// reports a failure); `elapsed_ms` tells a timeout from a connect failure, since Envoy
/// reports both the same way.
pub fn evaluate(
    svc: &ErrorService,
    headers: &[(String, Vec<u8>)],
    body_size: usize,
    elapsed_ms: u64,
    default_content_type: &str,
) -> Result<Meta, FetchFailure> {
    let get = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
    let Some(status) = get(":status") else {
        // Envoy's timeout fires at timeoutMs; allow some scheduling slack.
        return Err(if elapsed_ms + 50 >= svc.timeout_ms { FetchFailure::Timeout } else { FetchFailure::Unreachable });
    };
    let status = std::str::from_utf8(status).ok().and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
    if !(200..300).contains(&status) {
        // Envoy answers a failed call itself (503 on connect failure or reset, 504 on
        // timeout); those answers lack the header Envoy's router adds to every response
        // that really came from the error service.
        let from_envoy = get("x-envoy-upstream-service-time").is_none();
        return Err(match status {
            504 if from_envoy && elapsed_ms + 50 >= svc.timeout_ms => FetchFailure::Timeout,
            503 | 504 if from_envoy => FetchFailure::Unreachable,
            _ => FetchFailure::Status,
        });
    }
    if body_size > svc.max_body_bytes {
        return Err(FetchFailure::TooLarge);
    }
    let clean = |v: &[u8]| std::str::from_utf8(v).is_ok_and(valid_header_value);
    if headers.iter().any(|(k, v)| !clean(k.as_bytes()) || !clean(v)) {
        return Err(FetchFailure::Malformed);
    }
    // Every header is valid UTF-8 without control characters past the check above.
    let header_text = |name: &str| {
        get(name).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
    };
    let content_type =
        header_text("content-type").filter(|ct| is_media_type(ct)).unwrap_or_else(|| default_content_type.to_string());
    Ok(Meta { content_type, cache_control: header_text("cache-control") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ErrorService {
        ErrorService {
            cluster: "e".into(),
            authority: "errors.internal".into(),
            timeout_ms: 1000,
            max_body_bytes: 100,
            cache_ttl_s: 60,
            stale_if_error_s: 0,
            prewarm: false,
            prewarm_codes: Vec::new(),
            request_headers: Vec::new(),
        }
    }

    fn has(hs: &CallHeaders, name: &str, value: &str) -> bool {
        hs.iter().any(|(k, v)| k == name && v == value)
    }

    fn h(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect()
    }

    #[test]
    fn path_substitution() {
        assert_eq!(object_path("/shop/{status}.html", 404, ""), "/shop/404.html");
        assert_eq!(object_path("/a.html", 404, "de"), "/a.html");
        assert_eq!(object_path("/{status}/{status}.{x}", 503, ""), "/503/503.{x}");
        assert_eq!(object_path("/e/{originalStatus}-{status}.html", 502, ""), "/e/502-502.html", "two names, one code");
        assert_eq!(object_path("/{lang}/e/{status}.{lang}.html", 404, "de-CH"), "/de-CH/e/404.de-CH.html");
        assert!(per_code("/e/{originalStatus}.html") && per_code("/e/{status}.html") && !per_code("/e/x.html"));
        assert!(per_lang("/{lang}/x") && !per_lang("/x/{status}"));
    }

    #[test]
    fn headers_carry_facts_only() {
        let f = CallFacts {
            original_status: 502,
            format: "text/html",
            original_uri: "/x?y\r\nevil: 1",
            original_host: "h",
            request_id: "",
        };
        let hs = call_headers(&svc(), "/e/502.html", &f);
        assert!(has(&hs, ":authority", "errors.internal"));
        assert!(has(&hs, "x-code", "502"));
        assert!(has(&hs, "x-original-uri", "/x?yevil: 1"));
        assert!(!hs.iter().any(|(k, _)| *k == "x-request-id"));
        assert!(!hs.iter().any(|(k, _)| *k == "cookie" || *k == "authorization"));
        // A service's static headers ride along; without any, nothing more.
        let tenant = ErrorService { request_headers: vec![("x-tenant".into(), "shop".into())], ..svc() };
        let with = call_headers(&tenant, "/e/502.html", &f);
        assert!(has(&with, "x-tenant", "shop") && with.len() == hs.len() + 1);
    }

    #[test]
    fn good_answer() {
        let m = evaluate(
            &svc(),
            &h(&[(":status", b"200"), ("content-type", b"text/html"), ("cache-control", b"max-age=5")]),
            10,
            3,
            "x/y",
        )
        .unwrap();
        assert_eq!(m, Meta { content_type: "text/html".into(), cache_control: Some("max-age=5".into()) });
    }

    #[test]
    fn missing_or_bad_content_type_falls_back_to_variant_type() {
        let m = evaluate(&svc(), &h(&[(":status", b"200"), ("cache-control", b"")]), 10, 3, "text/plain").unwrap();
        assert_eq!(m.content_type, "text/plain");
        assert_eq!(m.cache_control, None);
        let m = evaluate(&svc(), &h(&[(":status", b"200"), ("content-type", b"html")]), 10, 3, "text/plain").unwrap();
        assert_eq!(m.content_type, "text/plain");
    }

    #[test]
    fn a_content_type_that_is_not_a_media_type_becomes_the_variants() {
        for bad in [&b"/html"[..], b"text/", b"te xt/html", b"text/html/x", b"  "] {
            let m = evaluate(&svc(), &h(&[(":status", b"200"), ("content-type", bad)]), 10, 3, "t/t").unwrap();
            assert_eq!(m.content_type, "t/t", "{:?}", String::from_utf8_lossy(bad));
        }
        let m =
            evaluate(&svc(), &h(&[(":status", b"200"), ("Content-Type", b" image/svg+xml ")]), 10, 3, "t/t").unwrap();
        assert_eq!(m.content_type, "image/svg+xml", "names compared case-insensitively, value trimmed");
    }

    #[test]
    fn timeout_slack_is_fifty_milliseconds() {
        // Envoy reports a timed-out call like a connect failure; only the elapsed time
        // tells them apart, with 50 ms for the scheduling of the timer.
        assert_eq!(evaluate(&svc(), &[], 0, 949, "t/t"), Err(FetchFailure::Unreachable));
        assert_eq!(evaluate(&svc(), &[], 0, 950, "t/t"), Err(FetchFailure::Timeout));
        let envoy_504 = h(&[(":status", b"504")]);
        assert_eq!(evaluate(&svc(), &envoy_504, 0, 949, "t/t"), Err(FetchFailure::Unreachable));
        assert_eq!(evaluate(&svc(), &envoy_504, 0, 950, "t/t"), Err(FetchFailure::Timeout));
    }

    #[test]
    fn control_characters_or_non_utf8_in_any_header_is_malformed() {
        for bad in [&b"text/html\r\nx: y"[..], b"a\0b", b"a\rb", &[0xff, 0xfe]] {
            assert_eq!(
                evaluate(&svc(), &h(&[(":status", b"200"), ("x-any", bad)]), 10, 3, "t/t"),
                Err(FetchFailure::Malformed)
            );
        }
        assert!(evaluate(&svc(), &h(&[(":status", b"200"), ("x-any", b"tab\tok")]), 10, 3, "t/t").is_ok());
    }

    #[test]
    fn failures() {
        assert_eq!(evaluate(&svc(), &[], 0, 10, "t/t"), Err(FetchFailure::Unreachable));
        assert_eq!(evaluate(&svc(), &[], 0, 990, "t/t"), Err(FetchFailure::Timeout));
        assert_eq!(evaluate(&svc(), &h(&[(":status", b"404")]), 0, 1, "t/t"), Err(FetchFailure::Status));
        let real = |s: &'static [u8]| h(&[(":status", s), ("x-envoy-upstream-service-time", b"3")]);
        assert_eq!(evaluate(&svc(), &real(b"503"), 0, 1, "t/t"), Err(FetchFailure::Status));
        assert_eq!(evaluate(&svc(), &real(b"504"), 0, 1000, "t/t"), Err(FetchFailure::Status));
        assert_eq!(evaluate(&svc(), &h(&[(":status", b"503")]), 0, 1, "t/t"), Err(FetchFailure::Unreachable));
        assert_eq!(evaluate(&svc(), &h(&[(":status", b"504")]), 0, 1000, "t/t"), Err(FetchFailure::Timeout));
        assert_eq!(evaluate(&svc(), &h(&[(":status", b"xx")]), 0, 1, "t/t"), Err(FetchFailure::Status));
        assert_eq!(evaluate(&svc(), &h(&[(":status", b"200")]), 101, 1, "t/t"), Err(FetchFailure::TooLarge));
        assert!(evaluate(&svc(), &h(&[(":status", b"200")]), 100, 1, "t/t").is_ok());
    }
}
