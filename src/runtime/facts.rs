//! What the response path knows of the request: the request headers captured when the
//! request passed (Envoy hides them afterwards), parsed only on the error path and only
//! the fields a decision asks for.

use super::host::{Context, HeaderMap};
use crate::request::{Metadata, RequestView};
use crate::template::Vars;
use std::borrow::Cow;

fn remember(slot: &mut Option<String>, map: &impl HeaderMap, name: &str) -> String {
    slot.get_or_insert_with(|| map.joined(name).unwrap_or_default()).clone()
}

/// Request facts, read on first use and kept. Only the error path reads them.
pub(crate) struct Facts<M: HeaderMap> {
    request: M,
    /// The original response headers as the proxy handed them over (read once, with
    /// `:status`), for the gRPC check and for the headers a replacement keeps.
    response: M,
    pub status: u16,
    pub served: u16,
    authority: Option<String>,
    path: Option<String>,
    method: Option<String>,
    request_id: Option<String>,
    code_details: Option<String>,
    scheme: Option<String>,
}

impl<M: HeaderMap> Facts<M> {
    pub fn new(status: u16, request: M, response: M) -> Facts<M> {
        Facts {
            request,
            response,
            status,
            served: status,
            authority: None,
            path: None,
            method: None,
            request_id: None,
            code_details: None,
            scheme: None,
        }
    }

    pub fn method(&mut self) -> String {
        remember(&mut self.method, &self.request, ":method")
    }

    pub fn request_id(&mut self) -> String {
        remember(&mut self.request_id, &self.request, "x-request-id")
    }

    /// These facts as a decision reads them: what is not captured (the route, its
    /// metadata, Envoy's code details) is asked of `ctx`, the request's own context.
    pub fn seen<'a, C: Context>(&'a mut self, ctx: &'a C) -> Seen<'a, M, C> {
        Seen { facts: self, ctx }
    }

    fn code_details(&mut self, ctx: &impl Context) -> String {
        self.code_details.get_or_insert_with(|| ctx.response_code_details().unwrap_or_default()).clone()
    }

    pub fn authority(&mut self) -> String {
        remember(&mut self.authority, &self.request, ":authority")
    }

    pub fn path(&mut self) -> String {
        remember(&mut self.path, &self.request, ":path")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.request.joined(name)
    }

    /// Replaces Envoy's code details as the decision sees them (the filter answering in
    /// Envoy's place decides for Envoy's reply); returns what they were.
    pub fn set_code_details(&mut self, details: Option<String>) -> Option<String> {
        std::mem::replace(&mut self.code_details, details)
    }

    /// Never touched: CONNECT tunnels and gRPC (whose errors travel in trailers and must
    /// stay machine-readable).
    pub fn excluded(&self) -> bool {
        let grpc = |ct: Option<&[u8]>| {
            ct.is_some_and(|c| c.get(..16).is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc")))
        };
        self.request.first(":method") == Some(b"CONNECT")
            || grpc(self.request.first("content-type"))
            || grpc(self.response.first("content-type"))
    }

    /// The original response's announced body length.
    pub fn original_length(&self) -> Option<usize> {
        self.response
            .first("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok())
    }

    /// The original response headers (values not valid UTF-8 are mended, never dropped).
    pub fn response_headers(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        self.response.entries().map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
    }

    /// Template variables; reads the request facts only when the reply renders a template.
    pub fn vars_for(&mut self, needed: bool, ctx: &impl Context) -> Vars<'_> {
        if needed {
            self.vars(ctx)
        } else {
            // Nothing is rendered: only the built-in page reads the statuses (the original
            // one where it is not served as a success).
            Vars { status: self.served, original_status: self.status, ..Default::default() }
        }
    }

    fn vars(&mut self, ctx: &impl Context) -> Vars<'_> {
        self.authority();
        self.path();
        self.method();
        self.request_id();
        self.code_details(ctx);
        // What the client used: a proxy in front says so in x-forwarded-proto.
        if self.scheme.is_none() {
            let forwarded = self.request.joined("x-forwarded-proto").unwrap_or_default();
            let first = forwarded.split(',').next().unwrap_or("").trim().to_ascii_lowercase();
            self.scheme = Some(if first.is_empty() {
                self.request.joined(":scheme").unwrap_or_default().to_ascii_lowercase()
            } else {
                first
            });
        }
        let source = if self.code_details(ctx) != VIA_UPSTREAM { "proxy" } else { "upstream" };
        Vars {
            status: self.served,
            original_status: self.status,
            request_id: self.request_id.as_deref().unwrap_or(""),
            host: self.authority.as_deref().unwrap_or(""),
            path: self.path.as_deref().unwrap_or(""),
            method: self.method.as_deref().unwrap_or(""),
            source,
            code_details: self.code_details.as_deref().unwrap_or(""),
            scheme: self.scheme.as_deref().unwrap_or(""),
            lang: "",
        }
    }
}

/// What Envoy's code details say of a response a backend sent.
const VIA_UPSTREAM: &str = "via_upstream";

/// Request facts as a decision reads them (`Facts::seen`).
pub(crate) struct Seen<'a, M: HeaderMap, C: Context> {
    facts: &'a mut Facts<M>,
    ctx: &'a C,
}

impl<M: HeaderMap, C: Context> RequestView for Seen<'_, M, C> {
    fn authority(&mut self) -> String {
        self.facts.authority()
    }

    fn path(&mut self) -> String {
        self.facts.path()
    }

    fn header(&mut self, name: &str) -> Option<String> {
        self.facts.header(name)
    }

    fn response_header(&mut self, name: &str) -> Option<String> {
        self.facts.response.joined(name)
    }

    fn route_name(&mut self) -> Option<String> {
        self.ctx.route_name().filter(|s| !s.is_empty())
    }

    fn metadata(&mut self, of: Metadata, namespace: &str, key: &str) -> Option<String> {
        self.ctx.metadata(of, namespace, key).filter(|s| !s.is_empty())
    }

    /// Envoy marks responses that came from a backend with code details `via_upstream`;
    /// everything else (no healthy upstream, connect failure, timeout, reset, no route,
    /// a filter's local reply) the proxy made itself.
    fn made_by_proxy(&mut self) -> bool {
        self.facts.code_details(self.ctx) != VIA_UPSTREAM
    }
}
