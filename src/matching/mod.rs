//! Matching pieces: response codes, hosts, paths and route rules. Pure data structures
//! built at load; no host calls.

pub mod codes;
pub mod hosts;
pub mod routes;
