//! Policy configuration: the JSON policy (reference: docs/policy.md) parsed, validated
//! and compiled into the structures matching walks.

pub mod error;
pub mod load;
pub mod model;
pub(crate) mod reader;

pub use error::ConfigError;
pub use load::load;
pub use model::*;
