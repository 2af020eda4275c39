//! Deadlines for the dynamic module, whose ABI has no timer for an HTTP filter: one thread
//! for the whole module sleeps until the earliest deadline and commits an event to that
//! filter's scheduler, and Envoy runs the filter's `on_http_filter_scheduled` hook on its
//! worker thread. A filter gone by then gets nothing (Envoy holds it weakly), so nothing
//! needs cancelling. The thread starts with the first deadline.

use super::abi::Scheduler;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Deadlines to fire, earliest first: (when, sequence, scheduler).
type Queue = BinaryHeap<Reverse<(Instant, u64, SchedulerAt)>>;

static QUEUE: Mutex<(Queue, u64)> = Mutex::new((BinaryHeap::new(), 0));
static WAKE: Condvar = Condvar::new();
static START: Once = Once::new();

/// Orders by the queue's other fields only: the scheduler itself is not compared.
struct SchedulerAt(Scheduler);

impl PartialEq for SchedulerAt {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for SchedulerAt {}
impl PartialOrd for SchedulerAt {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SchedulerAt {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Fires `scheduler` (event 1) at `deadline_ms` (ms since the epoch; at once if past).
pub fn fire_at(deadline_ms: u64, scheduler: Scheduler) {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let when = Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    START.call_once(|| {
        if let Err(e) = std::thread::Builder::new().name("custom-error-pages-timer".into()).spawn(run) {
            log::error!("custom-error-pages: no timer thread ({e}): deadlines are checked on requests only");
        }
    });
    if let Ok(mut q) = QUEUE.lock() {
        q.1 += 1;
        let seq = q.1;
        q.0.push(Reverse((when, seq, SchedulerAt(scheduler))));
        WAKE.notify_one();
    }
}

fn run() {
    let Ok(mut q) = QUEUE.lock() else { return };
    loop {
        let now = Instant::now();
        let next = q.0.peek().map(|Reverse((when, _, _))| *when);
        q = match next {
            Some(when) if when <= now => {
                if let Some(Reverse((_, _, SchedulerAt(s)))) = q.0.pop() {
                    s.commit_once(1);
                }
                q
            }
            Some(when) => match WAKE.wait_timeout(q, when - now) {
                Ok((guard, _)) => guard,
                Err(_) => return,
            },
            None => match WAKE.wait(q) {
                Ok(guard) => guard,
                Err(_) => return,
            },
        };
    }
}
