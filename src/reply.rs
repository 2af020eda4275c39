//! What the client gets instead of the original error: status, headers and body.

use crate::cache::Object;
use crate::config::{Serve, Variant, NON_ERROR_CACHE_CONTROL};
use crate::fallback;
use crate::template::{self, Escape, Vars};
use std::borrow::Cow;
use std::rc::Rc;

/// Where the served body came from (for the access log and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Cache,
    Fetched,
    Inline,
    Fallback,
    /// An expired copy, served because the object could not be fetched again.
    Stale,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Cache => "cache",
            Outcome::Fetched => "fetched",
            Outcome::Inline => "inline",
            Outcome::Fallback => "fallback",
            Outcome::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub cache_control: Option<String>,
    pub body: Rc<[u8]>,
    pub outcome: Outcome,
    /// A redirect's `location`, rendered.
    pub location: Option<String>,
}

/// Original response headers that survive the replacement: they carry meaning for the
/// client (auth challenges, back-off, CORS, tracing), not the backend's error page. `vary`
/// goes with them: a shared cache must keep telling apart what the kept headers vary on
/// (`access-control-allow-origin` on `Origin`, typically).
pub fn preserved(name: &str) -> bool {
    matches!(name, "www-authenticate" | "proxy-authenticate" | "retry-after" | "allow" | "x-request-id" | "vary")
        || name.starts_with("access-control-")
}

/// `vary` with `header` merged in (once, case-insensitively; `*` already covers it).
fn vary_with<'a>(vary: Option<Cow<'a, str>>, header: &'static str) -> Cow<'a, str> {
    match vary {
        None => Cow::Borrowed(header),
        Some(v) if v.split(',').map(str::trim).any(|t| t == "*" || t.eq_ignore_ascii_case(header)) => v,
        Some(v) if v.trim().is_empty() => Cow::Borrowed(header),
        Some(v) => Cow::Owned(format!("{v}, {header}")),
    }
}

pub fn served_status(serve: &Serve, original: u16) -> u16 {
    serve.override_code.unwrap_or(original)
}

/// Whether building the reply will render a template (so the request facts are needed).
pub fn needs_vars(serve: &Serve, variant: &Variant, object: Option<&Object>) -> bool {
    let page = match object {
        Some(obj) => serve.template && obj.body.windows(2).any(|w| w == b"{{"),
        None => variant.body.as_deref().or(serve.default.body.as_deref()).is_some_and(template::has_variables),
    };
    page || serve.location.as_deref().is_some_and(template::has_variables)
}

/// The reply from an inline body or a fetched object; `None` object means the fetch
/// failed (the variant's body, else the rule's body, else the built-in page).
pub fn build(serve: &Serve, variant: &Variant, object: Option<(Rc<Object>, Outcome)>, vars: &Vars<'_>) -> Reply {
    let mut reply = page(serve, variant, object, vars);
    // A redirect goes where the rule says, unless the built-in page went back to the
    // original error status.
    if (300..400).contains(&reply.status) {
        reply.location = serve.location.as_deref().map(|l| template::render_location(l, vars));
    }
    reply
}

fn page(serve: &Serve, variant: &Variant, object: Option<(Rc<Object>, Outcome)>, vars: &Vars<'_>) -> Reply {
    let status = vars.status;
    match object {
        Some((obj, outcome)) => {
            let body = if serve.template { render(&obj.body, &obj.content_type, vars) } else { obj.body.clone() };
            Reply {
                status,
                content_type: obj.content_type.clone(),
                cache_control: obj.cache_control.clone(),
                body,
                outcome,
                location: None,
            }
        }
        None => {
            let inline = variant
                .body
                .as_ref()
                .map(|b| (b, &variant.content_type))
                .or_else(|| serve.default.body.as_ref().map(|b| (b, &serve.default.content_type)));
            match inline {
                Some((body, ct)) => {
                    let outcome = if variant.path.is_some() { Outcome::Fallback } else { Outcome::Inline };
                    let text = template::render(body, vars, Escape::for_content_type(ct));
                    Reply {
                        status,
                        content_type: ct.clone(),
                        cache_control: None,
                        body: text.into_bytes().into(),
                        outcome,
                        location: None,
                    }
                }
                None => {
                    // The built-in page is never a success: a rule overriding to a non-error
                    // code (a maintenance page as 200) keeps the original error status when
                    // nothing of the policy can be served, so an outage never reads as a
                    // success to clients, caches and monitors. An override to another error
                    // code still applies.
                    let status = if status < 400 { vars.original_status } else { status };
                    Reply {
                        status,
                        content_type: variant.content_type.clone(),
                        cache_control: None,
                        body: fallback::page(status, &variant.content_type).into_bytes().into(),
                        outcome: Outcome::Fallback,
                        location: None,
                    }
                }
            }
        }
    }
}

fn render(body: &Rc<[u8]>, content_type: &str, vars: &Vars<'_>) -> Rc<[u8]> {
    match std::str::from_utf8(body) {
        Ok(text) if template::has_variables(text) => {
            template::render(text, vars, Escape::for_content_type(content_type)).into_bytes().into()
        }
        _ => body.clone(),
    }
}

/// The full header list of the replacement: `:status`, the preserved original headers,
/// content type, cache-control, the rule's own headers, `vary`. Each name once: a rule's
/// header replaces the original's and the object's of the same name (Envoy would append a
/// second one). Borrowed where it can be (this runs for every intercepted error). No
/// content-length: a local reply gets Envoy's, and the in-place sender adds the length of
/// the body it sends.
pub fn headers<'a>(
    reply: &'a Reply,
    serve: &'a Serve,
    original: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
    let mut out: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(8 + serve.headers.len());
    let mut status = String::with_capacity(3);
    crate::push_decimal(&mut status, reply.status.into());
    out.push((":status".into(), status.into()));
    let mut vary: Option<Cow<'a, str>> = None;
    for (k, v) in original {
        // Envoy keeps header names lower-case; anything else is lowered to compare.
        let name = if k.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(k.to_ascii_lowercase()) } else { k };
        if !preserved(&name) || serve.sets(&name) {
            continue;
        }
        if name == "vary" {
            // Several `vary` lines are one list; merged so `Accept` can join it once.
            vary = Some(match vary {
                None => v,
                Some(prev) => Cow::Owned(format!("{prev}, {v}")),
            });
        } else {
            out.push((name, v));
        }
    }
    // An empty reply has no representation to describe.
    if !reply.content_type.is_empty() {
        out.push(("content-type".into(), reply.content_type.as_str().into()));
    }
    if !serve.sets("cache-control") {
        match &reply.cache_control {
            Some(cc) => out.push(("cache-control".into(), cc.as_str().into())),
            None if reply.status < 400 => out.push(("cache-control".into(), NON_ERROR_CACHE_CONTROL.into())),
            None => {}
        }
    }
    if let Some(location) = &reply.location {
        out.push(("location".into(), location.as_str().into()));
    }
    for (k, v) in &serve.headers {
        if k == "vary" {
            vary = Some(v.as_str().into());
        } else {
            out.push((k.as_str().into(), v.as_str().into()));
        }
    }
    // A rule with variants chose the representation from `Accept`, whichever it served
    // (the fallback included): caches must not hand it to a client that asks for another.
    if !serve.variants.is_empty() {
        vary = Some(vary_with(vary, "Accept"));
    }
    // The same for a language chosen from `Accept-Language`.
    if serve.languages.len() > 1 {
        vary = Some(vary_with(vary, "Accept-Language"));
    }
    if let Some(v) = vary {
        out.push(("vary".into(), v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ServiceId;

    fn serve(default: Variant) -> Serve {
        Serve {
            override_code: None,
            default,
            variants: vec![],
            headers: vec![("retry-after".into(), "120".into())],
            template: false,
            service: Some(ServiceId(0)),
            location: None,
            languages: vec![],
        }
    }

    fn vars(path: &str) -> Vars<'_> {
        Vars { status: 503, original_status: 503, path, ..Default::default() }
    }

    fn html(path: Option<&str>, body: Option<&str>) -> Variant {
        Variant { content_type: "text/html".into(), path: path.map(Into::into), body: body.map(Into::into) }
    }

    #[test]
    fn fetched_object_served_as_is() {
        let s = serve(html(Some("/e"), None));
        let obj = Rc::new(Object {
            body: b"<h1>{{path}}</h1>".to_vec().into(),
            content_type: "text/html".into(),
            cache_control: Some("max-age=1".into()),
            ahead: false,
        });
        let r = build(&s, &s.default, Some((obj, Outcome::Fetched)), &vars("/<x>"));
        assert_eq!(&*r.body, b"<h1>{{path}}</h1>");
        assert_eq!(r.outcome, Outcome::Fetched);
        assert_eq!(r.cache_control.as_deref(), Some("max-age=1"));
    }

    #[test]
    fn fetched_object_templated_when_asked() {
        let mut s = serve(html(Some("/e"), None));
        s.template = true;
        let obj = Rc::new(Object {
            body: b"<h1>{{path}}</h1>".to_vec().into(),
            content_type: "text/html".into(),
            cache_control: None,
            ahead: false,
        });
        let r = build(&s, &s.default, Some((obj, Outcome::Cache)), &vars("/<x>"));
        assert_eq!(&*r.body, b"<h1>/&lt;x&gt;</h1>");
    }

    #[test]
    fn failed_fetch_uses_rule_body_else_builtin() {
        let s = serve(html(Some("/e"), Some("down {{status}}")));
        let r = build(&s, &s.default, None, &vars("/"));
        assert_eq!(&*r.body, b"down 503");
        assert_eq!(r.outcome, Outcome::Fallback);
        let s = serve(html(Some("/e"), None));
        let r = build(&s, &s.default, None, &vars("/"));
        assert!(std::str::from_utf8(&r.body).unwrap().contains("503 Service Unavailable"));
        assert_eq!(r.outcome, Outcome::Fallback);
    }

    #[test]
    fn inline_body() {
        let s = serve(html(None, Some("<p>{{path}}</p>")));
        let r = build(&s, &s.default, None, &vars("/<script>"));
        assert_eq!(&*r.body, b"<p>/&lt;script&gt;</p>");
        assert_eq!(r.outcome, Outcome::Inline);
    }

    #[test]
    fn vars_needed_only_for_templates() {
        let plain = Rc::new(Object {
            body: b"<h1>x</h1>".to_vec().into(),
            content_type: "text/html".into(),
            cache_control: None,
            ahead: false,
        });
        let templated = Rc::new(Object {
            body: b"<h1>{{path}}</h1>".to_vec().into(),
            content_type: "text/html".into(),
            cache_control: None,
            ahead: false,
        });
        let mut s = serve(html(Some("/e"), None));
        assert!(!needs_vars(&s, &s.default, Some(&templated)));
        s.template = true;
        assert!(needs_vars(&s, &s.default, Some(&templated)));
        assert!(!needs_vars(&s, &s.default, Some(&plain)));
        assert!(!needs_vars(&s, &s.default, None), "built-in page needs only the status");
        let s = serve(html(Some("/e"), Some("down {{status}}")));
        assert!(needs_vars(&s, &s.default, None));
    }

    #[test]
    fn header_list_keeps_only_preserved() {
        let s = serve(html(None, Some("x")));
        let r = build(&s, &s.default, None, &vars("/"));
        let orig: Vec<(String, String)> = [
            ("Set-Cookie", "a=b"),
            ("server", "x"),
            ("WWW-Authenticate", "Basic"),
            ("access-control-allow-origin", "*"),
            ("retry-after", "5"),
            ("content-length", "999"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let hs = headers(&r, &s, orig.iter().map(|(k, v)| (k.as_str().into(), v.as_str().into())));
        let names: Vec<&str> = hs.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            names,
            [":status", "www-authenticate", "access-control-allow-origin", "content-type", "retry-after"]
        );
        assert!(hs.contains(&("retry-after".into(), "120".into())), "rule header wins over the original");
        assert!(!hs.iter().any(|(k, _)| k == "content-length"), "the original length never survives");
    }

    fn header_list(r: &Reply, s: &Serve, orig: &[(&str, &str)]) -> Vec<(String, String)> {
        headers(r, s, orig.iter().map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v))))
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn values<'h>(hs: &'h [(String, String)], name: &str) -> Vec<&'h str> {
        hs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    fn object(cache_control: Option<&str>) -> Option<(Rc<Object>, Outcome)> {
        let obj = Object {
            body: b"page".to_vec().into(),
            content_type: "text/html".into(),
            cache_control: cache_control.map(Into::into),
            ahead: false,
        };
        Some((Rc::new(obj), Outcome::Cache))
    }

    #[test]
    fn rule_header_replaces_the_objects_cache_control() {
        let mut s = serve(html(Some("/e"), None));
        s.headers.push(("cache-control".into(), "public, max-age=5".into()));
        let r = build(&s, &s.default, object(Some("public, max-age=3600")), &vars("/"));
        assert_eq!(values(&header_list(&r, &s, &[]), "cache-control"), ["public, max-age=5"]);
        s.headers.pop();
        assert_eq!(
            values(&header_list(&r, &s, &[]), "cache-control"),
            ["public, max-age=3600"],
            "the object's, when the rule is silent"
        );
    }

    #[test]
    fn every_name_once() {
        let mut s = serve(html(Some("/e"), None));
        s.headers.push(("cache-control".into(), "no-cache".into()));
        s.headers.push(("vary".into(), "Origin".into()));
        s.headers.push(("access-control-allow-origin".into(), "*".into()));
        s.variants.push(Variant { content_type: "application/json".into(), path: Some("/e.json".into()), body: None });
        let r = build(&s, &s.default, object(Some("max-age=60")), &vars("/"));
        let orig = [
            ("Retry-After", "5"),
            ("vary", "Cookie"),
            ("access-control-allow-origin", "https://a"),
            ("cache-control", "max-age=9"),
        ];
        let hs = header_list(&r, &s, &orig);
        let mut names: Vec<&str> = hs.iter().map(|(k, _)| k.as_str()).collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "a name twice: {hs:?}");
        assert_eq!(values(&hs, "vary"), ["Origin, Accept"], "the rule's vary replaces the original's");
        assert_eq!(values(&hs, "access-control-allow-origin"), ["*"]);
    }

    #[test]
    fn non_error_status_not_stored_unless_someone_says_so() {
        let mut s = serve(html(Some("/e"), None));
        s.override_code = Some(200);
        let r = build(&s, &s.default, object(None), &Vars { status: 200, original_status: 503, ..Default::default() });
        assert_eq!(values(&header_list(&r, &s, &[]), "cache-control"), ["no-store"]);
        let mut inline = serve(html(Some("/e"), Some("<p>back soon</p>")));
        inline.override_code = Some(200);
        let r =
            build(&inline, &inline.default, None, &Vars { status: 200, original_status: 503, ..Default::default() });
        assert_eq!(values(&header_list(&r, &inline, &[]), "cache-control"), ["no-store"], "the inline fallback too");
        let r = build(
            &s,
            &s.default,
            object(Some("max-age=30")),
            &Vars { status: 200, original_status: 503, ..Default::default() },
        );
        assert_eq!(values(&header_list(&r, &s, &[]), "cache-control"), ["max-age=30"], "the object decides");
        let r = build(&s, &s.default, object(None), &Vars { status: 399, original_status: 503, ..Default::default() });
        assert_eq!(values(&header_list(&r, &s, &[]), "cache-control"), ["no-store"]);
        // An error status keeps what HTTP says of errors: no cache-control added.
        let r = build(&s, &s.default, object(None), &Vars { status: 400, original_status: 503, ..Default::default() });
        assert!(values(&header_list(&r, &s, &[]), "cache-control").is_empty());
    }

    #[test]
    fn the_built_in_page_is_never_a_success() {
        let mut s = serve(html(Some("/e"), None));
        s.override_code = Some(200);
        let v = Vars { status: 200, original_status: 503, ..Default::default() };
        let r = build(&s, &s.default, None, &v);
        assert_eq!((r.status, r.outcome), (503, Outcome::Fallback), "nothing of the policy: the original error");
        assert!(std::str::from_utf8(&r.body).unwrap().contains("503 Service Unavailable"));
        assert!(values(&header_list(&r, &s, &[]), "cache-control").is_empty(), "an error: no no-store added");
        s.override_code = Some(302);
        let r = build(&s, &s.default, None, &Vars { status: 302, original_status: 404, ..Default::default() });
        assert_eq!(r.status, 404, "any non-error override");
    }

    #[test]
    fn what_the_policy_serves_keeps_its_override() {
        let mut s = serve(html(Some("/e"), None));
        s.override_code = Some(200);
        let v = Vars { status: 200, original_status: 503, ..Default::default() };
        assert_eq!(build(&s, &s.default, object(None), &v).status, 200, "the object");
        let r = build(&s, &s.default, Some((object(None).unwrap().0, Outcome::Stale)), &v);
        assert_eq!((r.status, r.outcome), (200, Outcome::Stale), "a stale copy is the policy's page");
        let mut inline = serve(html(Some("/e"), Some("<p>maintenance</p>")));
        inline.override_code = Some(200);
        assert_eq!(build(&inline, &inline.default, None, &v).status, 200, "the rule's inline body");
        s.override_code = Some(500);
        let r = build(&s, &s.default, None, &Vars { status: 500, original_status: 404, ..Default::default() });
        assert_eq!(r.status, 500, "an override to another error still applies to the built-in page");
        s.override_code = Some(400);
        let r = build(&s, &s.default, None, &Vars { status: 400, original_status: 404, ..Default::default() });
        assert_eq!(r.status, 400, "400 is an error code too");
        s.override_code = Some(399);
        let r = build(&s, &s.default, None, &Vars { status: 399, original_status: 404, ..Default::default() });
        assert_eq!(r.status, 404, "399 is not");
    }

    #[test]
    fn vary_accept_only_where_negotiated() {
        let mut s = serve(html(Some("/e"), Some("fallback")));
        let r = build(&s, &s.default, None, &vars("/"));
        assert!(values(&header_list(&r, &s, &[]), "vary").is_empty(), "nothing negotiated, nothing varies");
        assert_eq!(
            values(&header_list(&r, &s, &[("vary", "Origin")]), "vary"),
            ["Origin"],
            "the kept vary stays as it is"
        );
        s.variants.push(Variant { content_type: "application/json".into(), path: None, body: Some("{}".into()) });
        let r = build(&s, &s.default, None, &vars("/"));
        assert_eq!(values(&header_list(&r, &s, &[]), "vary"), ["Accept"], "the fallback of a negotiated rule");
        let cases = [
            (vec![("vary", "Origin")], "Origin, Accept"),
            (vec![("Vary", "origin"), ("vary", "Accept-Encoding")], "origin, Accept-Encoding, Accept"),
            (vec![("vary", "accept, Origin")], "accept, Origin"),
            (vec![("vary", "*")], "*"),
            (vec![("vary", " ")], "Accept"),
        ];
        for (orig, want) in cases {
            assert_eq!(values(&header_list(&r, &s, &orig), "vary"), [want], "{orig:?}");
        }
    }
}
