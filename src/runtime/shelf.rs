//! Objects one thread fetched ahead, for the others. The dynamic module's worker threads
//! cannot fetch on their own (a filter's calls live within its request), but its main
//! thread can: one `Worker` there prewarms and refreshes a configuration's objects, puts
//! each copy here, and every worker thread takes a copy into its own cache on a miss. The
//! wasm build has no use for it: each VM's root context fetches for its own cache.

use super::flight::Ask;
use crate::cache::Object;
use crate::fasthash::FastMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// One object on the shelf, with the lifetimes its fetch gave it.
#[derive(Clone)]
pub struct Shelved {
    body: Arc<[u8]>,
    content_type: String,
    cache_control: Option<String>,
    pub expires_ms: u64,
    pub stale_until_ms: u64,
}

impl Shelved {
    fn of(object: &Object, expires_ms: u64, stale_until_ms: u64) -> Shelved {
        Shelved {
            body: Arc::from(&*object.body),
            content_type: object.content_type.clone(),
            cache_control: object.cache_control.clone(),
            expires_ms,
            stale_until_ms,
        }
    }

    /// A thread's own copy (`ahead`: it was fetched before any error asked for it).
    pub fn object(&self) -> Rc<Object> {
        Rc::new(Object {
            body: Rc::from(&*self.body),
            content_type: self.content_type.clone(),
            cache_control: self.cache_control.clone(),
            ahead: true,
        })
    }
}

/// A configuration's shelf, shared by its threads; at most `max_entries` objects, none
/// kept past its stale window.
pub struct Shelf {
    entries: Mutex<FastMap<String, Shelved>>,
    /// Objects worker threads fetched on a request's path, with how to ask for them again,
    /// until the fetching thread takes them (at most `max_entries` waiting).
    handed: Mutex<Vec<(String, Ask, Shelved)>>,
    max_entries: usize,
}

impl Shelf {
    pub fn new(max_entries: usize) -> Shelf {
        Shelf { entries: Mutex::new(FastMap::default()), handed: Mutex::new(Vec::new()), max_entries }
    }

    /// Puts (or replaces) the copy of `key`. Copies past their stale window go first; a new
    /// key beyond the bound is not put (the fetching thread's cache has the same bound).
    pub fn put(&self, key: &str, object: &Object, expires_ms: u64, stale_until_ms: u64, now_ms: u64) {
        let Ok(mut entries) = self.entries.lock() else { return };
        entries.retain(|_, s| s.stale_until_ms > now_ms);
        if !entries.contains_key(key) && entries.len() >= self.max_entries {
            return;
        }
        entries.insert(key.to_string(), Shelved::of(object, expires_ms, stale_until_ms));
    }

    /// From a worker thread: an object it fetched on a request's path (`ask` without the
    /// request's facts), for the fetching thread to shelve and keep fresh.
    pub(super) fn hand_over(&self, key: &str, ask: &Ask, object: &Object, expires_ms: u64, stale_until_ms: u64) {
        let Ok(mut handed) = self.handed.lock() else { return };
        if handed.len() < self.max_entries {
            handed.push((key.to_string(), ask.background(), Shelved::of(object, expires_ms, stale_until_ms)));
        }
    }

    /// For the fetching thread: what worker threads handed over since it last looked.
    pub(super) fn take_handed(&self) -> Vec<(String, Ask, Shelved)> {
        self.handed.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default()
    }

    /// The copy of `key`, if one is within its stale window at `now_ms`.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<Shelved> {
        let entries = self.entries.lock().ok()?;
        entries.get(key).filter(|s| s.stale_until_ms > now_ms).cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(body: &str) -> Object {
        Object { body: body.as_bytes().into(), content_type: "text/html".into(), cache_control: None, ahead: true }
    }

    #[test]
    fn a_copy_is_had_within_its_stale_window_only() {
        let shelf = Shelf::new(4);
        shelf.put("k", &object("page"), 2_000, 5_000, 1_000);
        let got = shelf.get("k", 1_500).expect("fresh");
        assert_eq!((&*got.object().body, got.expires_ms, got.stale_until_ms), (&b"page"[..], 2_000, 5_000));
        assert!(got.object().ahead, "a thread's copy says it was fetched ahead");
        assert!(shelf.get("k", 4_999).is_some(), "stale, still had");
        assert!(shelf.get("k", 5_000).is_none(), "past its stale window");
        assert!(shelf.get("other", 1_500).is_none());
    }

    #[test]
    fn a_newer_copy_replaces_the_old_and_the_bound_holds_for_new_keys() {
        let shelf = Shelf::new(2);
        shelf.put("a", &object("a1"), 2_000, 2_000, 1_000);
        shelf.put("b", &object("b"), 2_000, 2_000, 1_000);
        shelf.put("c", &object("c"), 2_000, 2_000, 1_000);
        assert_eq!((shelf.len(), shelf.get("c", 1_000).is_none()), (2, true), "full: a new key waits");
        shelf.put("a", &object("a2"), 9_000, 9_000, 1_500);
        assert_eq!(&*shelf.get("a", 1_500).unwrap().object().body, b"a2", "a key it holds is replaced");
        shelf.put("c", &object("c"), 9_000, 9_000, 3_000);
        assert!(shelf.get("c", 3_000).is_some(), "b's window passed: room for c");
        assert!(shelf.get("b", 3_000).is_none());
        assert!(!shelf.is_empty());
        assert!(Shelf::new(1).is_empty());
    }

    #[test]
    fn at_most_the_bound_is_handed_over_and_taking_empties_it() {
        let shelf = Shelf::new(2);
        let ask = Ask {
            cluster: "errors".into(),
            headers: vec![(":path".into(), "/a.html".into()), ("x-request-id".into(), "r1".into())],
            timeout_ms: 1000,
            service: crate::ids::ServiceId(0),
            default_type: "text/html".into(),
        };
        for key in ["a", "b", "c"] {
            shelf.hand_over(key, &ask, &object(key), 2_000, 2_000);
        }
        let handed = shelf.take_handed();
        assert_eq!(handed.iter().map(|(k, _, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(handed[0].1.headers.iter().all(|(n, _)| n != "x-request-id"), "without the request's facts");
        assert!(shelf.take_handed().is_empty(), "taken once");
        assert!(shelf.get("a", 1_000).is_none(), "handed over, not shelved: the fetching thread shelves it");
    }

    #[test]
    fn a_copy_whose_window_ends_now_makes_room() {
        let shelf = Shelf::new(1);
        shelf.put("a", &object("a"), 1_500, 2_000, 1_000);
        shelf.put("b", &object("b"), 2_500, 3_000, 2_000);
        assert!(shelf.get("b", 2_000).is_some(), "a's window ended at 2,000: b took its place");
        assert_eq!(shelf.len(), 1);
    }
}
