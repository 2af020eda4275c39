//! Custom error response policies for Envoy and Istio.
//!
//! Layout: `config` (policy JSON -> validated structures), `matching` (codes, hosts,
//! routes), `decide` (which rule answers a response), `negotiate` (Accept),
//! `template`, `cache`, `error_service` (the call and its answer), `fallback` (built-in
//! pages), `reply` (what the client gets), `runtime` (one request's life over a `Host`
//! trait). Only the adapters touch the host, each named after Envoy's ABI it speaks:
//! `proxy_wasm` (compiled for wasm32 only) and `dynamic_module` (feature `native`);
//! everything else is tested as plain Rust on the host. docs/architecture.md draws it.

pub mod cache;
pub mod cases;
pub mod config;
pub mod decide;
pub mod envoy_gateway;
pub mod error_service;
pub mod fallback;
pub mod fasthash;
pub mod gcp;
pub mod http;
pub mod ids;
pub mod matching;
pub mod negotiate;
pub mod reply;
pub mod request;
pub mod runtime;
pub mod template;

#[cfg(target_arch = "wasm32")]
mod proxy_wasm;

#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod dynamic_module;

/// Appends `n` in decimal. The hot path builds its few strings by hand: `format!`'s
/// machinery is measurably slow inside the wasm VM (bench/FINDINGS.md).
pub fn push_decimal(out: &mut String, n: u64) {
    if n >= 10 {
        push_decimal(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
}

#[cfg(test)]
mod tests {
    #[test]
    fn push_decimal_writes_every_width() {
        for n in [0u64, 7, 10, 99, 404, 503, 1000, 65535, 65536, u64::MAX] {
            let mut s = String::from("x");
            super::push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }
}
