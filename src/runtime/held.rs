//! A request's place in its life (`Phase`), and what a request held for a fetch carries
//! until whoever completes the wait can finish it. Data only: the flights hold it, the
//! stream and the completions act on it.

use super::facts::Facts;
use crate::config::RuleAt;
use std::cell::RefCell;
use std::rc::Rc;

/// Where a request is, replacing loose flags.
pub(super) enum Phase {
    /// Nothing decided yet (or nothing to do).
    Idle,
    /// Headers paused while the error object is fetched (by this request or another);
    /// whoever completes the wait puts this request's next phase in the slot.
    Waiting(Slot),
    /// Replacement headers sent; the original body is dropped and the object goes out with
    /// its last chunk (`first_chunk`: with the first, see `stream.rs`).
    Streaming { body: Rc<[u8]>, sent: bool, dropped: usize, first_chunk: bool },
    /// Our reply is out, or the response is left alone on purpose. Also the marker that
    /// keeps the filter off its own local reply if Envoy runs it through the chain.
    Done,
}

/// Where a held request's next phase is put by whoever completes its wait; the stream
/// takes it on its next hook.
pub(super) type Slot = Rc<RefCell<Option<Phase>>>;

/// What a request needs to finish once its object (or the lack of one) is known.
pub(super) struct Pending<M: crate::runtime::HeaderMap> {
    pub rule: RuleAt,
    pub variant: Option<usize>,
    /// The language chosen, in the rule's `languages` (0 without any).
    pub language: usize,
    pub facts: Facts<M>,
    /// Answer with a local reply: the upstream response ended with its headers (no body
    /// to carry the object), or the filter answers in Envoy's place.
    pub headers_only: bool,
    /// Envoy's code details of the reply the filter made in Envoy's place.
    pub cause: Option<&'static str>,
    /// When the filter answers in Envoy's place (ms since the epoch), if Envoy's deadline
    /// for this request is known.
    pub deadline: Option<u64>,
    /// How long the fetch this request waited on took, once it has come back.
    pub fetch_ms: Option<u64>,
}

/// A request held for a fetch.
pub(super) struct Waiter<M: crate::runtime::HeaderMap> {
    pub id: u32,
    pub slot: Slot,
    pub pending: Box<Pending<M>>,
}
