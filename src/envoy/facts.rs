//! What the response path knows of the request: the request headers captured when the
//! request passed (Envoy hides them afterwards), parsed only on the error path and only
//! the fields a decision asks for.

use super::host;
use crate::request::RequestView;
use crate::template::Vars;

fn remember(slot: &mut Option<String>, raw: &[u8], name: &str) -> String {
    slot.get_or_insert_with(|| host::find_header(raw, name).unwrap_or_default()).clone()
}

/// Request facts, read from Envoy on first use and kept. Only the error path reads them.
pub(crate) struct Facts {
    request: Vec<u8>,
    /// The original response headers, read once (one host call) when the status is one a
    /// rule covers: for the gRPC check and for the headers a replacement keeps.
    pub response: Vec<(String, String)>,
    pub status: u16,
    pub served: u16,
    authority: Option<String>,
    path: Option<String>,
    method: Option<String>,
    request_id: Option<String>,
    code_details: Option<String>,
}

impl Facts {
    pub fn new(status: u16, request: Vec<u8>, response_raw: &[u8]) -> Facts {
        Facts { request, response: host::parse_map(response_raw), status, served: status, authority: None, path: None, method: None, request_id: None, code_details: None }
    }

    pub fn method(&mut self) -> String {
        remember(&mut self.method, &self.request, ":method")
    }

    fn req(&self, name: &str) -> Option<String> {
        host::find_header(&self.request, name)
    }

    pub fn request_id(&mut self) -> String {
        remember(&mut self.request_id, &self.request, "x-request-id")
    }

    fn code_details(&mut self) -> String {
        self.code_details
            .get_or_insert_with(|| host::property(&["response", "code_details"]).unwrap_or_default())
            .clone()
    }

    /// Never touched: CONNECT tunnels and gRPC (whose errors travel in trailers and must
    /// stay machine-readable).
    pub fn excluded(&mut self) -> bool {
        let method = self.method();
        if method == "CONNECT" {
            return true;
        }
        let grpc = |ct: Option<&str>| ct.is_some_and(|c| c.to_ascii_lowercase().starts_with("application/grpc"));
        let response_type = self.response.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str());
        grpc(self.req("content-type").as_deref()) || grpc(response_type)
    }

    /// Template variables; reads the request facts only when the reply renders a template.
    pub fn vars_for(&mut self, needed: bool) -> Vars<'_> {
        if needed {
            self.vars()
        } else {
            Vars { status: self.served, original_status: self.status, ..Default::default() }
        }
    }

    fn vars(&mut self) -> Vars<'_> {
        self.authority();
        self.path();
        self.request_id();
        self.code_details();
        let source = if self.from_proxy() { "proxy" } else { "upstream" };
        Vars {
            status: self.served,
            original_status: self.status,
            request_id: self.request_id.as_deref().unwrap_or(""),
            host: self.authority.as_deref().unwrap_or(""),
            path: self.path.as_deref().unwrap_or(""),
            method: self.method.as_deref().unwrap_or(""),
            source,
            code_details: self.code_details.as_deref().unwrap_or(""),
        }
    }
}

impl RequestView for Facts {
    fn authority(&mut self) -> String {
        remember(&mut self.authority, &self.request, ":authority")
    }

    fn path(&mut self) -> String {
        remember(&mut self.path, &self.request, ":path")
    }

    fn header(&mut self, name: &str) -> Option<String> {
        self.req(name)
    }

    fn route_name(&mut self) -> Option<String> {
        host::property(&["xds", "route_name"]).filter(|s| !s.is_empty())
    }

    /// Envoy marks responses that came from a backend with code details `via_upstream`;
    /// everything else (no healthy upstream, connect failure, timeout, reset, no route,
    /// a filter's local reply) the proxy made itself.
    fn from_proxy(&mut self) -> bool {
        self.code_details() != "via_upstream"
    }
}
