//! Typed indices into the compiled policy: a policy, an error service, a path matcher, a
//! rule's address. Plain `usize`s would let one be passed for another.

/// A policy in `Config::policies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(pub usize);

/// An error service in `Config::services`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceId(pub usize);

/// A path matcher in `Config::matchers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatcherId(pub usize);

/// Where a rule is: its policy, and its place in that policy's `errorResponseRules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleAt {
    pub policy: PolicyId,
    pub index: usize,
}
