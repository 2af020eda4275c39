//! Custom error response policies for Envoy and Istio.
//!
//! Layout: `config` (policy JSON -> validated structures), `matching` (codes, hosts,
//! routes), `decide` (which rule answers a response), `negotiate` (Accept),
//! `template`, `cache`, `error_service` (the call and its answer), `fallback` (built-in
//! pages), `reply` (what the client gets). Only `envoy` touches the proxy-wasm host; it is
//! compiled for wasm32 only, so everything else is tested as plain Rust on the host.

pub mod config;
pub mod decide;
pub mod negotiate;
pub mod matching;
pub mod cache;
pub mod error_service;
pub mod fallback;
pub mod gcp;
pub mod reply;
pub mod request;
pub mod template;

#[cfg(target_arch = "wasm32")]
mod envoy;
