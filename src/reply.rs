//! What the client gets instead of the original error: status, headers and body.

use crate::cache::Object;
use crate::config::{Serve, Variant};
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
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Cache => "cache",
            Outcome::Fetched => "fetched",
            Outcome::Inline => "inline",
            Outcome::Fallback => "fallback",
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
}

/// Original response headers that survive the replacement: they carry meaning for the
/// client (auth challenges, back-off, CORS, tracing), not the backend's error page.
pub fn preserved(name: &str) -> bool {
    matches!(name, "www-authenticate" | "proxy-authenticate" | "retry-after" | "allow" | "x-request-id")
        || name.starts_with("access-control-")
}

pub fn served_status(serve: &Serve, original: u16) -> u16 {
    serve.override_code.unwrap_or(original)
}

/// Whether building the reply will render a template (so the request facts are needed).
pub fn needs_vars(serve: &Serve, variant: &Variant, object: Option<&Object>) -> bool {
    match object {
        Some(obj) => serve.template && obj.body.windows(2).any(|w| w == b"{{"),
        None => variant
            .body
            .as_deref()
            .or(serve.default.body.as_deref())
            .is_some_and(template::has_variables),
    }
}

/// The reply from an inline body or a fetched object; `None` object means the fetch
/// failed (the variant's body, else the rule's body, else the built-in page).
pub fn build(serve: &Serve, variant: &Variant, object: Option<(Rc<Object>, Outcome)>, vars: &Vars<'_>) -> Reply {
    let status = vars.status;
    match object {
        Some((obj, outcome)) => {
            let body = if serve.template {
                render(&obj.body, &obj.content_type, vars)
            } else {
                obj.body.clone()
            };
            Reply { status, content_type: obj.content_type.clone(), cache_control: obj.cache_control.clone(), body, outcome }
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
                    Reply { status, content_type: ct.clone(), cache_control: None, body: text.into_bytes().into(), outcome }
                }
                None => Reply {
                    status,
                    content_type: variant.content_type.clone(),
                    cache_control: None,
                    body: fallback::page(status, &variant.content_type).into_bytes().into(),
                    outcome: Outcome::Fallback,
                },
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
/// content type, the object's cache-control, then the rule's own headers. Borrowed where
/// it can be (this runs for every intercepted error). No content-length: a local reply
/// gets Envoy's, and the in-place sender adds the length of the body it sends.
pub fn headers<'a>(
    reply: &'a Reply,
    serve: &'a Serve,
    original: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
    let mut out: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(8 + serve.headers.len());
    let mut status = String::with_capacity(3);
    crate::push_decimal(&mut status, reply.status.into());
    out.push((":status".into(), status.into()));
    for (k, v) in original {
        // Envoy keeps header names lower-case; anything else is lowered to compare.
        let name = if k.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(k.to_ascii_lowercase()) } else { k };
        if preserved(&name) && !serve.headers.iter().any(|(n, _)| *n == *name) {
            out.push((name, v));
        }
    }
    out.push(("content-type".into(), reply.content_type.as_str().into()));
    if let Some(cc) = &reply.cache_control {
        out.push(("cache-control".into(), cc.as_str().into()));
    }
    for (k, v) in &serve.headers {
        out.push((k.as_str().into(), v.as_str().into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(default: Variant) -> Serve {
        Serve { override_code: None, default, variants: vec![], headers: vec![("retry-after".into(), "120".into())], template: false, service: Some(0) }
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
        let obj = Rc::new(Object { body: b"<h1>{{path}}</h1>".to_vec().into(), content_type: "text/html".into(), cache_control: Some("max-age=1".into()) });
        let r = build(&s, &s.default, Some((obj, Outcome::Fetched)), &vars("/<x>"));
        assert_eq!(&*r.body, b"<h1>{{path}}</h1>");
        assert_eq!(r.outcome, Outcome::Fetched);
        assert_eq!(r.cache_control.as_deref(), Some("max-age=1"));
    }

    #[test]
    fn fetched_object_templated_when_asked() {
        let mut s = serve(html(Some("/e"), None));
        s.template = true;
        let obj = Rc::new(Object { body: b"<h1>{{path}}</h1>".to_vec().into(), content_type: "text/html".into(), cache_control: None });
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
        let plain = Rc::new(Object { body: b"<h1>x</h1>".to_vec().into(), content_type: "text/html".into(), cache_control: None });
        let templated = Rc::new(Object { body: b"<h1>{{path}}</h1>".to_vec().into(), content_type: "text/html".into(), cache_control: None });
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
        let orig: Vec<(String, String)> = [("Set-Cookie", "a=b"), ("server", "x"), ("WWW-Authenticate", "Basic"), ("access-control-allow-origin", "*"), ("retry-after", "5"), ("content-length", "999")]
            .iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let hs = headers(&r, &s, orig.iter().map(|(k, v)| (k.as_str().into(), v.as_str().into())));
        let names: Vec<&str> = hs.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(names, [":status", "www-authenticate", "access-control-allow-origin", "content-type", "retry-after"]);
        assert!(hs.contains(&("retry-after".into(), "120".into())), "rule header wins over the original");
        assert!(!hs.iter().any(|(k, _)| k == "content-length"), "the original length never survives");
    }
}
