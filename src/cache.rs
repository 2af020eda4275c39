//! Cache of fetched error objects. One per wasm VM, i.e. per Envoy worker thread: a hit is
//! a hash lookup with no host call and no copy (objects are shared `Rc`s). Envoy's shared
//! data would let workers share entries, but every read would copy the object across the
//! VM boundary and shared data has no expiry or size bound; with N workers the error
//! service sees at most N fetches per object per TTL, which is cheap.

use crate::fasthash::FastMap;
use crate::ids::ServiceId;
use std::rc::Rc;

pub const MAX_ENTRIES: usize = 512;
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub body: Rc<[u8]>,
    pub content_type: String,
    pub cache_control: Option<String>,
    /// Fetched ahead of any error (prewarm or refresh), not for a client's request.
    pub ahead: bool,
}

struct Entry {
    object: Rc<Object>,
    stored_ms: u64,
    expires_ms: u64,
    /// Until when the expired object may still be served while its refresh fails.
    stale_until_ms: u64,
    last_used: u64,
}

/// Where a cached object stands (for the background schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Within its TTL: stored at `stored_ms`, expires at `expires_ms`.
    Fresh { stored_ms: u64, expires_ms: u64 },
    /// Past its TTL but within its stale-if-error window.
    Stale,
    /// Not in the cache (never stored, evicted, or past its stale window).
    Gone,
}

pub struct Cache {
    entries: FastMap<String, Entry>,
    bytes: usize,
    tick: u64,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new(MAX_ENTRIES, MAX_BYTES)
    }
}

/// Cache key: error service, path after substitution, chosen variant.
pub fn key(service: ServiceId, path: &str, content_type: &str) -> String {
    let mut key = String::with_capacity(path.len() + content_type.len() + 8);
    crate::push_decimal(&mut key, service.0 as u64);
    key.push('|');
    key.push_str(path);
    key.push('|');
    key.push_str(content_type);
    key
}

/// How long an object may be reused, and how long past that it may still be served while
/// it cannot be fetched again, from one reading of its `cache-control`:
/// - reuse: the smaller of `ttl` and the object's own `max-age` (`s-maxage` first, as we
///   are a shared cache); never for `no-store`, `private` or `no-cache`;
/// - stale: the object's own `stale-if-error=N` (RFC 5861) when present (unreadable: 0),
///   else `stale`.
pub fn lifetimes(cache_control: Option<&str>, ttl: u64, stale: u64) -> (u64, u64) {
    let (mut max_age, mut s_maxage, mut stale_if_error, mut never) = (None, None, None, false);
    for directive in cache_control.unwrap_or("").split(',') {
        let d = directive.trim().to_ascii_lowercase();
        let (name, value) = match d.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (d.as_str(), None),
        };
        let seconds = value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match name {
            "no-store" | "private" | "no-cache" => never = true,
            "max-age" => max_age = Some(seconds),
            "s-maxage" => s_maxage = Some(seconds),
            "stale-if-error" if stale_if_error.is_none() => stale_if_error = Some(seconds),
            _ => {}
        }
    }
    let reuse = if never { 0 } else { s_maxage.or(max_age).map_or(ttl, |age| ttl.min(age)) };
    (reuse, stale_if_error.unwrap_or(stale))
}

impl Cache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Cache {
        Cache { entries: FastMap::default(), bytes: 0, tick: 0, max_entries, max_bytes }
    }

    /// How many objects it holds at most.
    pub fn capacity(&self) -> usize {
        self.max_entries
    }

    /// The object while it is fresh. An expired one stays for `stale` until its stale
    /// window ends.
    pub fn get(&mut self, key: &str, now_ms: u64) -> Option<Rc<Object>> {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(key) {
            Some(e) if e.expires_ms > now_ms => {
                e.last_used = tick;
                Some(e.object.clone())
            }
            Some(e) if e.stale_until_ms > now_ms => None,
            Some(_) => {
                self.remove(key);
                None
            }
            None => None,
        }
    }

    /// An expired object still within its stale-if-error window.
    pub fn stale(&mut self, key: &str, now_ms: u64) -> Option<Rc<Object>> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(key).filter(|e| e.expires_ms <= now_ms && now_ms < e.stale_until_ms)?;
        e.last_used = tick;
        Some(e.object.clone())
    }

    pub fn state(&self, key: &str, now_ms: u64) -> State {
        match self.entries.get(key) {
            Some(e) if e.expires_ms > now_ms => State::Fresh { stored_ms: e.stored_ms, expires_ms: e.expires_ms },
            Some(e) if e.stale_until_ms > now_ms => State::Stale,
            _ => State::Gone,
        }
    }

    /// Whether an object of `size` bytes under `key` would be stored without evicting
    /// another (the prewarm stops at the cache's bounds rather than evict in a loop).
    pub fn fits(&self, key: &str, size: usize) -> bool {
        let size = size + key.len();
        match self.entries.get(key) {
            // A replacement frees its old copy's room first.
            Some(old) => self.bytes - (old.object.body.len() + key.len()) + size <= self.max_bytes,
            None => self.entries.len() < self.max_entries && self.bytes + size <= self.max_bytes,
        }
    }

    /// Stores an object for `ttl_s` seconds, then `stale_s` more as a stale copy; a TTL
    /// of 0 or an object too large for the cache stores nothing. Evicts what is past its
    /// stale window first, then stale copies, then the least recently used.
    pub fn put(&mut self, key: String, object: Rc<Object>, ttl_s: u64, stale_s: u64, now_ms: u64) {
        if ttl_s == 0 {
            return;
        }
        let expires_ms = now_ms.saturating_add(ttl_s.saturating_mul(1000));
        let stale_until_ms = expires_ms.saturating_add(stale_s.saturating_mul(1000));
        self.put_until(key, object, expires_ms, stale_until_ms, now_ms);
    }

    /// Stores an object until `expires_ms`, then as a stale copy until `stale_until_ms`
    /// (a copy another thread fetched, with the lifetimes it was given there).
    pub fn put_until(&mut self, key: String, object: Rc<Object>, expires_ms: u64, stale_until_ms: u64, now_ms: u64) {
        let size = object.body.len() + key.len();
        if stale_until_ms <= now_ms || size > self.max_bytes {
            return;
        }
        self.remove(&key);
        while !self.entries.is_empty() && (self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes)
        {
            self.evict_one(now_ms);
        }
        self.tick += 1;
        self.bytes += size;
        self.entries.insert(key, Entry { object, stored_ms: now_ms, expires_ms, stale_until_ms, last_used: self.tick });
    }

    fn evict_one(&mut self, now_ms: u64) {
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| (e.stale_until_ms > now_ms, e.expires_ms > now_ms, e.last_used))
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.remove(&k);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.object.body.len() + key.len();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl_seconds(cache_control: Option<&str>, configured: u64) -> u64 {
        lifetimes(cache_control, configured, 0).0
    }

    fn stale_seconds(cache_control: Option<&str>, configured: u64) -> u64 {
        lifetimes(cache_control, 0, configured).1
    }

    #[test]
    fn one_reading_gives_both_lifetimes() {
        let cc = Some("public, max-age=60, stale-if-error=600");
        assert_eq!(lifetimes(cc, 300, 86_400), (60, 600));
        assert_eq!(lifetimes(Some("no-store, stale-if-error=5"), 300, 86_400), (0, 5));
        assert_eq!(lifetimes(None, 300, 86_400), (300, 86_400));
        assert_eq!(
            lifetimes(Some("stale-if-error=5, stale-if-error=9"), 300, 86_400),
            (300, 5),
            "the first one counts"
        );
    }

    fn obj(n: usize) -> Rc<Object> {
        Rc::new(Object {
            body: vec![b'x'; n].into(),
            content_type: "text/html".into(),
            cache_control: None,
            ahead: false,
        })
    }

    #[test]
    fn ttl_rules() {
        assert_eq!(ttl_seconds(None, 300), 300);
        assert_eq!(ttl_seconds(Some("max-age=60"), 300), 60);
        assert_eq!(ttl_seconds(Some("public, max-age=600"), 300), 300);
        assert_eq!(ttl_seconds(Some("max-age=600, s-maxage=30"), 300), 30);
        assert_eq!(ttl_seconds(Some("no-store"), 300), 0);
        assert_eq!(ttl_seconds(Some("private, max-age=60"), 300), 0);
        assert_eq!(ttl_seconds(Some("No-Cache"), 300), 0);
        assert_eq!(ttl_seconds(Some("max-age=abc"), 300), 0);
        assert_eq!(ttl_seconds(Some("public"), 0), 0);
    }

    #[test]
    fn hit_until_expiry_then_miss() {
        let mut c = Cache::default();
        c.put("k".into(), obj(10), 5, 0, 1_000);
        assert!(c.get("k", 5_999).is_some());
        assert!(c.get("k", 6_000).is_none());
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert!(c.get("other", 0).is_none());
    }

    #[test]
    fn zero_ttl_and_oversized_not_stored() {
        let mut c = Cache::new(10, 100);
        c.put("a".into(), obj(10), 0, 0, 0);
        c.put("b".into(), obj(200), 60, 0, 0);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_in_entries_lru() {
        let mut c = Cache::new(2, 1_000);
        c.put("a".into(), obj(1), 60, 0, 0);
        c.put("b".into(), obj(1), 60, 0, 0);
        assert!(c.get("a", 1).is_some()); // b is now least recently used
        c.put("c".into(), obj(1), 60, 0, 2);
        assert_eq!(c.len(), 2);
        assert!(c.get("b", 3).is_none());
        assert!(c.get("a", 3).is_some() && c.get("c", 3).is_some());
    }

    #[test]
    fn bounded_in_bytes_expired_first() {
        let mut c = Cache::new(100, 50);
        c.put("old".into(), obj(20), 1, 0, 0);
        c.put("new".into(), obj(20), 60, 0, 0);
        // "old" expired at 1000 ms: it goes first even though "new" is older in use.
        assert!(c.get("new", 2_000).is_some());
        c.put("x".into(), obj(20), 60, 0, 2_000);
        assert!(c.get("new", 2_001).is_some());
        assert!(c.get("x", 2_001).is_some());
        assert!(c.bytes() <= 50);
    }

    #[test]
    fn expired_go_before_live_even_when_used_later() {
        let mut c = Cache::new(2, 1_000);
        c.put("live".into(), obj(1), 60, 0, 0);
        c.put("expiring".into(), obj(1), 1, 0, 0);
        assert!(c.get("expiring", 500).is_some()); // used after "live", still fresh
        c.put("new".into(), obj(1), 60, 0, 1_500); // "expiring" has expired by now
        assert!(c.get("live", 1_600).is_some(), "the live entry stays");
        assert!(c.get("new", 1_600).is_some());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn lru_among_entries_never_read() {
        let mut c = Cache::new(3, 1_000);
        for k in ["a", "b", "c"] {
            c.put(k.into(), obj(1), 60, 0, 0);
        }
        c.put("d".into(), obj(1), 60, 0, 0);
        assert!(c.get("a", 1).is_none(), "the first stored, never read, goes first");
        assert!(c.get("b", 1).is_some() && c.get("c", 1).is_some() && c.get("d", 1).is_some());
    }

    #[test]
    fn byte_limit_edges() {
        // Size counts body and key: 9 + 1 = 10 bytes each.
        let mut c = Cache::new(100, 20);
        c.put("a".into(), obj(9), 60, 0, 0);
        c.put("b".into(), obj(9), 60, 0, 0);
        assert_eq!((c.len(), c.bytes()), (2, 20), "exactly at the limit: both kept");
        c.put("c".into(), obj(9), 60, 0, 0);
        assert_eq!((c.len(), c.bytes()), (2, 20), "one over: one evicted");
        assert!(c.get("a", 1).is_none());
        let mut c = Cache::new(100, 10);
        c.put("k".into(), obj(9), 60, 0, 0);
        assert_eq!(c.len(), 1, "an object exactly the limit's size is stored");
        c.put("l".into(), obj(10), 60, 0, 0);
        assert_eq!((c.len(), c.bytes()), (1, 10), "one byte over the limit: not stored, nothing evicted");
        assert!(c.get("k", 1).is_some());
    }

    #[test]
    fn a_read_makes_an_entry_the_most_recently_used() {
        let mut c = Cache::default();
        c.put("a".into(), obj(1), 60, 0, 0);
        c.put("b".into(), obj(1), 60, 0, 0);
        let before = c.entries["b"].last_used;
        assert!(c.get("a", 1).is_some());
        assert!(c.entries["a"].last_used > before, "a read moves the entry past every other");
    }

    #[test]
    fn an_entry_expiring_right_now_is_evicted_as_expired() {
        let mut c = Cache::new(2, 1_000);
        c.put("ends-now".into(), obj(1), 1, 0, 0); // expires at 1,000 ms
        c.put("live".into(), obj(1), 60, 0, 0);
        assert!(c.get("ends-now", 999).is_some()); // now the most recently used
        c.put("new".into(), obj(1), 60, 0, 1_000);
        assert!(c.get("live", 1_000).is_some(), "the expired one went, not the least recently used");
    }

    #[test]
    fn default_bounds() {
        // Literal figures, not the constants: the documented bounds are what is tested.
        let mut c = Cache::default();
        c.put("k".into(), obj(16 * 1024 * 1024 - 1), 60, 0, 0);
        assert_eq!(c.len(), 1, "an object of 16 MiB (with its key) fits");
        c.put("l".into(), obj(16 * 1024 * 1024), 60, 0, 0);
        assert!(c.get("l", 1).is_none(), "one byte more does not");
        let mut c = Cache::default();
        for i in 0..=512 {
            c.put(i.to_string(), obj(1), 60, 0, 0);
        }
        assert_eq!(c.len(), 512);
    }

    #[test]
    fn expiry_boundary_and_ttl_in_seconds() {
        let mut c = Cache::default();
        c.put("k".into(), obj(1), 2, 0, 10);
        assert!(c.get("k", 2_009).is_some());
        assert!(c.get("k", 2_010).is_none(), "expires at now + ttl * 1000 exactly");
    }

    #[test]
    fn replacing_a_key_keeps_byte_count_right() {
        let mut c = Cache::default();
        c.put("k".into(), obj(10), 60, 0, 0);
        c.put("k".into(), obj(30), 60, 0, 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 31);
    }

    #[test]
    fn stale_window_after_expiry() {
        let mut c = Cache::default();
        c.put("k".into(), obj(1), 2, 3, 0); // fresh until 2,000 ms, stale until 5,000 ms
        assert!(c.stale("k", 1_999).is_none(), "a fresh object is not stale");
        assert_eq!(c.state("k", 1_999), State::Fresh { stored_ms: 0, expires_ms: 2_000 });
        assert!(c.get("k", 2_000).is_none(), "expired: no fresh hit");
        assert_eq!(c.state("k", 2_000), State::Stale);
        assert!(c.stale("k", 4_999).is_some(), "kept as a stale copy within the window");
        assert!(c.get("k", 5_000).is_none() && c.stale("k", 5_000).is_none());
        assert_eq!(c.state("k", 5_000), State::Gone);
        assert!(c.is_empty(), "past its window the entry is dropped");
    }

    #[test]
    fn no_stale_window_means_gone_at_expiry() {
        let mut c = Cache::default();
        c.put("k".into(), obj(1), 2, 0, 0);
        assert!(c.stale("k", 2_000).is_none());
        assert_eq!(c.state("k", 2_000), State::Gone);
    }

    #[test]
    fn eviction_takes_dead_then_stale_then_least_recently_used() {
        let mut c = Cache::new(3, 1_000);
        c.put("stale".into(), obj(1), 1, 100, 0);
        c.put("dead".into(), obj(1), 1, 0, 0);
        c.put("fresh".into(), obj(1), 60, 0, 0);
        c.put("new".into(), obj(1), 60, 0, 2_000);
        assert_eq!(c.state("dead", 2_000), State::Gone);
        assert_eq!(c.state("stale", 2_000), State::Stale, "a stale copy outlives a dead one");
        c.put("newer".into(), obj(1), 60, 0, 2_000);
        assert_eq!(c.state("stale", 2_000), State::Gone, "then the stale copy goes before a fresh one");
        assert!(c.get("fresh", 2_000).is_some());
    }

    #[test]
    fn a_stale_read_makes_the_copy_the_most_recently_used() {
        let mut c = Cache::default();
        c.put("a".into(), obj(1), 1, 60, 0);
        c.put("b".into(), obj(1), 1, 60, 0);
        let before = c.entries["b"].last_used;
        assert!(c.stale("a", 1_000).is_some());
        assert!(c.entries["a"].last_used > before);
    }

    #[test]
    fn at_the_very_end_of_its_ttl_or_window_an_entry_counts_as_past_it() {
        // "stale" expires now (stale until 61,000); "fresh" was read later; "dead"'s window
        // ends now.
        let mut c = Cache::new(3, 1_000);
        c.put("stale".into(), obj(1), 1, 60, 0);
        c.put("dead".into(), obj(1), 1, 1, 0);
        c.put("fresh".into(), obj(1), 60, 0, 0);
        assert!(c.get("fresh", 0).is_some());
        c.put("new".into(), obj(1), 60, 0, 2_000);
        assert_eq!(c.state("dead", 2_000), State::Gone, "a window ending now: dead, evicted first");
        assert_eq!(c.state("stale", 2_000), State::Stale);
        let mut c = Cache::new(2, 1_000);
        c.put("fresh".into(), obj(1), 60, 0, 0);
        c.put("stale".into(), obj(1), 1, 60, 0);
        assert!(c.get("stale", 999).is_some(), "read after the fresh one");
        c.put("new".into(), obj(1), 60, 0, 1_000);
        assert_eq!(c.state("stale", 1_000), State::Gone, "expiring now: stale, evicted before the fresh one");
        assert!(c.get("fresh", 1_000).is_some());
    }

    #[test]
    fn stale_if_error_directive() {
        assert_eq!(stale_seconds(None, 86_400), 86_400);
        assert_eq!(stale_seconds(Some("max-age=60"), 86_400), 86_400);
        assert_eq!(stale_seconds(Some("max-age=60, stale-if-error=600"), 86_400), 600);
        assert_eq!(stale_seconds(Some("Stale-If-Error=\"30\""), 86_400), 30);
        assert_eq!(stale_seconds(Some("stale-if-error=soon"), 86_400), 0, "unreadable: no stale copy");
        assert_eq!(stale_seconds(Some("stale-while-revalidate=60"), 10), 10);
    }

    #[test]
    fn fits_tells_whether_a_put_would_evict() {
        let mut c = Cache::new(2, 30);
        assert!(c.fits("a", 9));
        c.put("a".into(), obj(9), 60, 0, 0);
        assert!(c.fits("a", 9), "replacing a key evicts nothing");
        assert!(c.fits("b", 19) && !c.fits("b", 20), "bytes: key and body count");
        c.put("b".into(), obj(1), 60, 0, 0);
        assert!(!c.fits("c", 1), "entries: the cache is full");
        // 10 + 2 bytes held: "a" may grow to 27 bytes of body (28 with its key), not 28.
        assert!(c.fits("a", 27) && !c.fits("a", 28), "a replacement counts the room its old copy frees");
    }

    #[test]
    fn key_separates_service_path_variant() {
        let (a, b) = (ServiceId(0), ServiceId(1));
        assert_ne!(key(a, "/a", "text/html"), key(b, "/a", "text/html"));
        assert_ne!(key(a, "/a", "text/html"), key(a, "/a", "application/json"));
    }
}
