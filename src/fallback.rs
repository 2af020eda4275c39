//! The built-in, non-branded page served when the error object cannot be fetched and the
//! rule has no inline `body`.

use crate::template::Escape;

pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        c if (400..500).contains(&c) => "Client Error",
        c if (500..600).contains(&c) => "Server Error",
        _ => "Error",
    }
}

/// A generic page in the variant's content type.
pub fn page(status: u16, content_type: &str) -> String {
    let reason = reason_phrase(status);
    match Escape::for_content_type(content_type) {
        Escape::JsonString => format!("{{\"status\":{status},\"error\":\"{reason}\"}}"),
        Escape::Html => format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{status} {reason}</title></head>\n<body><h1>{status} {reason}</h1><p>The request could not be completed.</p></body></html>\n"
        ),
        Escape::Text => format!("{status} {reason}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_content_type() {
        assert!(page(503, "text/html").contains("<h1>503 Service Unavailable</h1>"));
        let v: serde_json::Value = serde_json::from_str(&page(404, "application/json")).unwrap();
        assert_eq!(v["status"], 404);
        assert_eq!(page(418, "text/plain"), "418 Client Error\n");
    }
}
