//! HTTP syntax the policy and the error service's answers are checked against (RFC 9110):
//! tokens, header values, media types. One copy, used by the loader and the error-service
//! client alike.

/// A `tchar` of RFC 9110 (header names, media type and subtype).
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// A header value without control characters (tab allowed): nothing that could split a
/// header or end the head.
pub fn valid_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// `type/subtype` of a content type, without parameters.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Whether `ct` is a media type: `type/subtype` of tokens, parameters after `;`, and a
/// valid header value as a whole.
pub fn is_media_type(ct: &str) -> bool {
    essence(ct).split_once('/').is_some_and(|(t, s)| is_token(t) && is_token(s)) && valid_header_value(ct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        for good in ["text/html", "text/html; charset=utf-8", "application/problem+json", "image/svg+xml;x=1"] {
            assert!(is_media_type(good), "{good}");
        }
        for bad in ["html", "/html", "text/", "te xt/html", "text/ht ml", "text/html\r\nx: y", "", "text/html/x", ";/"]
        {
            assert!(!is_media_type(bad), "{bad}");
        }
        assert_eq!(essence(" text/html ; charset=utf-8"), "text/html");
    }

    #[test]
    fn header_values_and_tokens() {
        assert!(valid_header_value("a\tb ~"));
        for bad in ["a\rb", "a\nb", "a\0b", "a\u{7f}b", "\u{1f}"] {
            assert!(!valid_header_value(bad), "{bad:?}");
        }
        assert!(is_token("x-request-id") && !is_token("") && !is_token("a b") && !is_token("a:b"));
    }
}
