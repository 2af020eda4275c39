//! What the engine may ask about the request. The Envoy adapter answers lazily with host
//! calls (only on the error path); host tests answer from a map.

pub trait RequestView {
    /// `:authority` (may carry a port).
    fn authority(&mut self) -> String;
    /// `:path`, with its query string.
    fn path(&mut self) -> String;
    /// A request header by lower-case name; several values joined with ",".
    fn header(&mut self, name: &str) -> Option<String>;
    /// The Envoy route's name (`xds.route_name`).
    fn route_name(&mut self) -> Option<String>;
    /// Whether Envoy made the response itself (no healthy upstream, connect failure,
    /// timeout, reset, no route, a filter's local reply) rather than a backend.
    fn made_by_proxy(&mut self) -> bool;
    /// A string in the route's or the virtual host's metadata,
    /// `filter_metadata.<namespace>.<key>` (`xds.route_metadata`, `xds.virtual_host_metadata`).
    fn metadata(&mut self, of: Metadata, namespace: &str, key: &str) -> Option<String>;
    /// A header of the response being decided on (the upstream's, or Envoy's own reply's), by
    /// lower-case name; several values joined with ",".
    fn response_header(&mut self, name: &str) -> Option<String>;
}

/// Whose metadata: the route Envoy chose, or its virtual host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metadata {
    Route,
    VirtualHost,
}

/// The path without query string or fragment, as rules match it.
pub fn path_only(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

/// The raw query string (without `?`), if any.
pub fn query_of(path: &str) -> &str {
    match path.find('?') {
        Some(i) => {
            let q = &path[i + 1..];
            let end = q.find('#').unwrap_or(q.len());
            &q[..end]
        }
        None => "",
    }
}

/// The first value of a query parameter, percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A map-backed request for host tests and the `policy explain` tool.
#[derive(Debug, Clone, Default)]
pub struct StaticRequest {
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub route_name: Option<String>,
    pub made_by_proxy: bool,
    /// `(namespace, key, value)` of the route's `filter_metadata`.
    pub route_metadata: Vec<(String, String, String)>,
    /// The same for the virtual host.
    pub virtual_host_metadata: Vec<(String, String, String)>,
    /// The response's headers.
    pub response_headers: Vec<(String, String)>,
}

/// Several values of one header, as one value joined with ",".
fn joined(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> =
        headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
    if values.is_empty() {
        None
    } else {
        Some(values.join(","))
    }
}

impl RequestView for StaticRequest {
    fn authority(&mut self) -> String {
        self.authority.clone()
    }
    fn path(&mut self) -> String {
        self.path.clone()
    }
    fn header(&mut self, name: &str) -> Option<String> {
        joined(&self.headers, name)
    }
    fn response_header(&mut self, name: &str) -> Option<String> {
        joined(&self.response_headers, name)
    }
    fn route_name(&mut self) -> Option<String> {
        self.route_name.clone()
    }
    fn made_by_proxy(&mut self) -> bool {
        self.made_by_proxy
    }
    fn metadata(&mut self, of: Metadata, namespace: &str, key: &str) -> Option<String> {
        let list = match of {
            Metadata::Route => &self.route_metadata,
            Metadata::VirtualHost => &self.virtual_host_metadata,
        };
        list.iter().find(|(n, k, _)| n == namespace && k == key).map(|(_, _, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_path_and_query() {
        assert_eq!(path_only("/a/b?x=1#f"), "/a/b");
        assert_eq!(path_only("/a#f"), "/a");
        assert_eq!(query_of("/a?x=1&y=2#f"), "x=1&y=2");
        assert_eq!(query_of("/a"), "");
    }

    #[test]
    fn query_params_decoded() {
        let q = "a=1&b=hello%20world&c=x+y&flag&d=%zz";
        assert_eq!(query_param(q, "a").as_deref(), Some("1"));
        assert_eq!(query_param(q, "b").as_deref(), Some("hello world"));
        assert_eq!(query_param(q, "c").as_deref(), Some("x y"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "d").as_deref(), Some("%zz"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41"), "A");
    }
}
