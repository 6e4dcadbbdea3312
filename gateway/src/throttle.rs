//! Failed-login throttling: after a few failures for one login name (or one
//! client address), further attempts wait, with the wait doubling.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures allowed before waits start.
    pub free_failures: u32,
    pub first_wait: Duration,
    pub max_wait: Duration,
    /// A key with no failure for this long starts over.
    pub forget_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            free_failures: 5,
            first_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

/// Keyed failure counters; cheap enough to check on every login.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    policy: Policy,
    entries: Mutex<HashMap<String, Entry>>,
}

impl LoginThrottle {
    pub fn new(policy: Policy) -> Self {
        LoginThrottle {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` must still wait, if at all.
    pub fn wait(&self, key: &str, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().expect("throttle lock");
        let e = entries.get(key)?;
        (e.blocked_until > now).then(|| e.blocked_until - now)
    }

    pub fn failed(&self, key: &str, now: Instant) {
        let p = self.policy;
        let mut entries = self.entries.lock().expect("throttle lock");
        if entries.len() > 100_000 {
            // Bound the memory an attacker can make us use.
            entries.retain(|_, e| now.duration_since(e.last_failure) < p.forget_after);
        }
        let e = entries.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: now,
        });
        if now.duration_since(e.last_failure) >= p.forget_after {
            e.failures = 0;
        }
        e.failures += 1;
        e.last_failure = now;
        if e.failures > p.free_failures {
            let doublings = (e.failures - p.free_failures - 1).min(20);
            let wait = p.first_wait.saturating_mul(1 << doublings).min(p.max_wait);
            e.blocked_until = now + wait;
        }
    }

    pub fn succeeded(&self, key: &str) {
        self.entries.lock().expect("throttle lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_start_after_the_free_failures_and_double() {
        let t = LoginThrottle::new(Policy::default());
        let now = Instant::now();
        for _ in 0..5 {
            t.failed("ann", now);
        }
        assert_eq!(t.wait("ann", now), None);
        t.failed("ann", now);
        assert_eq!(t.wait("ann", now), Some(Duration::from_secs(1)));
        t.failed("ann", now);
        assert_eq!(t.wait("ann", now), Some(Duration::from_secs(2)));
        assert_eq!(t.wait("bo", now), None, "keys are separate");
        assert_eq!(t.wait("ann", now + Duration::from_secs(3)), None);
    }

    #[test]
    fn success_and_time_forget() {
        let t = LoginThrottle::new(Policy::default());
        let now = Instant::now();
        for _ in 0..8 {
            t.failed("ann", now);
        }
        assert!(t.wait("ann", now).is_some());
        t.succeeded("ann");
        assert_eq!(t.wait("ann", now), None);
        for _ in 0..6 {
            t.failed("bo", now);
        }
        let later = now + Duration::from_secs(901);
        t.failed("bo", later);
        assert_eq!(t.wait("bo", later), None, "old failures were forgotten");
    }

    #[test]
    fn the_wait_is_capped() {
        let t = LoginThrottle::new(Policy::default());
        let now = Instant::now();
        for _ in 0..60 {
            t.failed("x", now);
        }
        assert_eq!(t.wait("x", now), Some(Duration::from_secs(300)));
    }
}
