//! `{{variable}}` templates in error objects, escaped for the object's content type, so
//! that a request path such as `/<script>` comes back as text, never as markup.

pub const VARIABLES: &[&str] =
    &["status", "originalStatus", "requestId", "host", "path", "method", "source", "codeDetails", "url", "lang"];

/// How a value must be escaped to stay data inside an object of a content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Html,
    JsonString,
    Text,
}

impl Escape {
    pub fn for_content_type(ct: &str) -> Escape {
        let ct = ct.to_ascii_lowercase();
        if ct.contains("json") {
            Escape::JsonString
        } else if ct.contains("html") || ct.contains("xml") || ct.contains("svg") {
            Escape::Html
        } else {
            Escape::Text
        }
    }
}

/// Values for the template variables.
#[derive(Debug, Clone, Default)]
pub struct Vars<'a> {
    pub status: u16,
    pub original_status: u16,
    pub request_id: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    pub source: &'a str,
    pub code_details: &'a str,
    /// `https` or `http`, for `{{url}}`.
    pub scheme: &'a str,
    /// The language chosen from the rule's `languages` (empty without them).
    pub lang: &'a str,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "status" => self.status.to_string(),
            "originalStatus" => self.original_status.to_string(),
            "requestId" => self.request_id.to_string(),
            "host" => self.host.to_string(),
            "path" => self.path.to_string(),
            "method" => self.method.to_string(),
            "source" => self.source.to_string(),
            "codeDetails" => self.code_details.to_string(),
            "lang" => self.lang.to_string(),
            "url" => {
                format!("{}://{}{}", if self.scheme.is_empty() { "http" } else { self.scheme }, self.host, self.path)
            }
            _ => return None,
        })
    }
}

/// Refuses unknown variables at load (a typo would otherwise reach users verbatim).
/// Whether `text` uses the variable `name` (`{{name}}`, spaces allowed inside the braces).
pub fn uses(text: &str, name: &str) -> bool {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { return false };
        if after[..end].trim() == name {
            return true;
        }
        rest = &after[end + 2..];
    }
    false
}

pub fn validate(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { return Ok(()) };
        let name = after[..end].trim();
        if !VARIABLES.contains(&name) {
            return Err(format!("unknown template variable \"{{{{{name}}}}}\" (known: {})", VARIABLES.join(", ")));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

pub fn has_variables(text: &str) -> bool {
    text.contains("{{")
}

/// A redirect's `location`: `{{url}}` (the original URL) percent-encoded whole, as the value
/// of a query parameter (`/login?next={{url}}`); the other variables percent-encoded where
/// a URL cannot hold their bytes (controls, space, quotes, `<>\^`{|}`, `#`, non-ASCII),
/// keeping their `/`, `?`, `&`, `=` and the client's own `%` escapes
/// (`https://new.example.com{{path}}`). Never a CR or LF.
pub fn render_location(text: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            rest = &rest[start..];
            break;
        };
        let name = after[..end].trim();
        let whole = name == "url";
        if let Some(value) = vars.get(name) {
            for b in value.bytes() {
                // In a URL already (`{{path}}`): its structure and the client's own `%`
                // escapes stay. As one parameter (`{{url}}`): only unreserved bytes stay.
                let structure = b"/?&=:@+,;!$'()*%";
                let keep = b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (!whole && structure.contains(&b));
                if keep {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        rest = &after[end + 2..];
    }
    // What is left (no more `{{`, or one never closed: validation refused those) stays as
    // written, but never a control character.
    out.extend(rest.chars().filter(|c| !c.is_control()));
    out
}

/// Replaces known `{{variables}}`; anything else is left as written.
pub fn render(text: &str, vars: &Vars<'_>, escape: Escape) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => match vars.get(after[..end].trim()) {
                Some(value) => {
                    push_escaped(&mut out, &value, escape);
                    rest = &after[end + 2..];
                }
                None => {
                    out.push_str("{{");
                    rest = after;
                }
            },
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn push_escaped(out: &mut String, value: &str, escape: Escape) {
    for c in value.chars() {
        match escape {
            Escape::Html => match c {
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '&' => out.push_str("&amp;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c if c.is_control() => out.push_str(&format!("&#{};", c as u32)),
                c => out.push(c),
            },
            Escape::JsonString => match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                // `<` escaped too, so a JSON body sniffed as HTML still carries no markup.
                '<' => out.push_str("\\u003c"),
                '>' => out.push_str("\\u003e"),
                '&' => out.push_str("\\u0026"),
                c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => out.push(c),
            },
            Escape::Text => {
                if c.is_control() && c != '\t' {
                    out.push('?');
                } else {
                    out.push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(path: &'a str) -> Vars<'a> {
        Vars {
            status: 503,
            original_status: 502,
            request_id: "r-1",
            host: "h",
            path,
            method: "GET",
            source: "proxy",
            code_details: "x",
            scheme: "https",
            lang: "de-CH",
        }
    }

    #[test]
    fn renders_known_variables() {
        let out = render("{{status}} {{ originalStatus }} {{requestId}} {{path}} {{lang}}", &vars("/a"), Escape::Text);
        assert_eq!(out, "503 502 r-1 /a de-CH");
        assert!(uses("x {{ lang }} y", "lang") && !uses("{{language}} {{lang", "lang"));
        assert!(uses("{{abcd}}{{lang}}", "lang") && uses("{{a}}{{lang}}", "lang"), "the next variable after another");
    }

    #[test]
    fn leaves_unknown_and_unclosed() {
        assert_eq!(render("{{nope}} {{status", &vars("/"), Escape::Text), "{{nope}} {{status");
    }

    #[test]
    fn escapes_html() {
        let out = render("<p>{{path}}</p>", &vars("/<script>alert('x')&\"</script>"), Escape::Html);
        assert_eq!(out, "<p>/&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;</p>");
        assert!(!out.contains("<script>"));
    }

    #[test]
    fn escapes_json_string() {
        let out = render("{\"path\":\"{{path}}\"}", &vars("/a\"b\\c\n<x>"), Escape::JsonString);
        assert_eq!(out, "{\"path\":\"/a\\\"b\\\\c\\u000a\\u003cx\\u003e\"}");
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["path"], "/a\"b\\c\n<x>");
    }

    #[test]
    fn escape_by_content_type() {
        for (ct, want) in [
            ("application/problem+json", Escape::JsonString),
            ("text/html; charset=utf-8", Escape::Html),
            ("image/svg+xml", Escape::Html),
            // XML and SVG are markup too, whatever the spelling.
            ("application/xml", Escape::Html),
            ("Text/XML", Escape::Html),
            ("image/svg", Escape::Html),
            ("text/plain", Escape::Text),
            ("application/octet-stream", Escape::Text),
        ] {
            assert_eq!(Escape::for_content_type(ct), want, "{ct}");
        }
    }

    #[test]
    fn renders_every_variable() {
        let out = render("{{method}} {{source}} {{codeDetails}} {{host}}", &vars("/"), Escape::Text);
        assert_eq!(out, "GET proxy x h");
        for name in VARIABLES {
            let text = format!("{{{{{name}}}}}");
            assert_ne!(render(&text, &vars("/"), Escape::Text), text, "{name} is never rendered");
        }
    }

    #[test]
    fn control_characters_per_content_type() {
        assert_eq!(render("{{path}}", &vars("a\u{1}b\u{7f}"), Escape::Html), "a&#1;b&#127;");
        assert_eq!(render("{{path}}", &vars("a\u{1}b\tc\u{7f}"), Escape::Text), "a?b\tc?");
        // JSON: below 0x20 escaped, 0x20 itself kept; the two line separators JavaScript
        // would break a string on are escaped too.
        assert_eq!(
            render("{{path}}", &vars("\u{1f} \u{2028}\u{2029}\u{2027}"), Escape::JsonString),
            "\\u001f \\u2028\\u2029\u{2027}"
        );
    }

    #[test]
    fn validate_names() {
        assert!(validate("{{status}} {{ path }}").is_ok());
        assert!(validate("no vars").is_ok());
        assert_eq!(
            validate("{{stauts}}").unwrap_err(),
            "unknown template variable \"{{stauts}}\" (known: status, originalStatus, requestId, host, path, method, source, codeDetails, url, lang)"
        );
    }
}

#[cfg(test)]
mod location_tests {
    use super::*;

    fn vars<'a>(host: &'a str, path: &'a str, scheme: &'a str) -> Vars<'a> {
        Vars { status: 302, original_status: 401, host, path, scheme, ..Vars::default() }
    }

    #[test]
    fn the_url_is_one_encoded_parameter_and_the_path_keeps_its_shape() {
        let v = vars("shop.test", "/cart?item=a b&x=1%2F", "https");
        assert_eq!(
            render_location("/login?next={{url}}", &v),
            "/login?next=https%3A%2F%2Fshop.test%2Fcart%3Fitem%3Da%20b%26x%3D1%252F"
        );
        assert_eq!(
            render_location("https://new.test{{path}}", &v),
            "https://new.test/cart?item=a%20b&x=1%2F",
            "its escapes kept"
        );
        assert_eq!(render_location("/e/{{status}}?from={{originalStatus}}", &v), "/e/302?from=401");
        assert_eq!(render_location("/plain", &v), "/plain", "no variable: as written");
    }

    #[test]
    fn no_control_character_or_fragment_survives() {
        let v = vars("a\r\nset-cookie: x", "/p#frag\u{7f}é", "");
        assert_eq!(render_location("//{{host}}{{path}}", &v), "//a%0D%0Aset-cookie:%20x/p%23frag%7F%C3%A9");
        assert!(render_location("{{url}}", &v).starts_with("http%3A%2F%2Fa%0D%0A"), "no scheme known: http");
        assert_eq!(render_location("/x{{host", &v), "/x{{host", "an unclosed variable stays as written");
    }
}
