//! Failed-login throttling: after a few failures for one login name (or,
//! with a larger allowance, one client address), further attempts wait,
//! with the wait doubling. Also: which address a request comes from when
//! the gateway sits behind a reverse proxy.

use std::collections::HashMap;
use std::net::IpAddr;
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
            first_wait: Duration::from_secs(2),
            max_wait: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
        }
    }
}

impl Policy {
    /// For one client address: many people can share one (an office, a
    /// carrier's NAT), so it tolerates more failures than one login does.
    pub fn per_address() -> Self {
        Policy {
            free_failures: 30,
            ..Policy::default()
        }
    }
}

/// The address a request really comes from. `peer` is the TCP peer; when
/// it is one of our `trusted` proxies, the `X-Forwarded-For` list is read
/// from the right (each proxy appends the address it saw), skipping our own
/// proxies; the first address that is not one of them is the client. A
/// malformed entry stops the walk at the last address we could trust.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let trusted_ip = |ip: &IpAddr| trusted.contains(&ip.to_canonical());
    if !trusted_ip(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        let hop = hop.trim();
        if hop.is_empty() {
            continue;
        }
        let Ok(ip) = hop.parse::<IpAddr>() else {
            return client;
        };
        client = ip.to_canonical();
        if !trusted_ip(&client) {
            return client;
        }
    }
    client
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
        assert_eq!(t.wait("ann", now), Some(Duration::from_secs(2)));
        t.failed("ann", now);
        assert_eq!(t.wait("ann", now), Some(Duration::from_secs(4)));
        assert_eq!(t.wait("bo", now), None, "keys are separate");
        assert_eq!(t.wait("ann", now + Duration::from_secs(5)), None);
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
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("10.0.0.2");
        let trusted = [proxy, ip("10.0.0.3")];
        // Straight from the internet: the header is whatever the client wrote.
        assert_eq!(
            client_address(ip("198.51.100.7"), Some("1.2.3.4"), &trusted),
            ip("198.51.100.7")
        );
        // Through our proxy: its appended entry names the client; anything
        // to its left was written by the client and is not believed.
        assert_eq!(
            client_address(proxy, Some("1.2.3.4, 203.0.113.9"), &trusted),
            ip("203.0.113.9")
        );
        // Through two of our proxies.
        assert_eq!(
            client_address(proxy, Some("203.0.113.9,10.0.0.3"), &trusted),
            ip("203.0.113.9")
        );
        // No header, an empty one, or garbage: the last trusted hop.
        assert_eq!(client_address(proxy, None, &trusted), proxy);
        assert_eq!(client_address(proxy, Some(" , "), &trusted), proxy);
        assert_eq!(
            client_address(proxy, Some("203.0.113.9, junk, 10.0.0.3"), &trusted),
            ip("10.0.0.3")
        );
        // IPv4 seen as IPv6-mapped matches the IPv4 entry.
        assert_eq!(
            client_address(ip("::ffff:10.0.0.2"), Some("2001:db8::1"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_address(proxy, Some("203.0.113.9"), &[]),
            proxy,
            "no trusted proxies: the peer"
        );
    }

    #[test]
    fn an_address_tolerates_more_failures_than_a_login() {
        let t = LoginThrottle::new(Policy::per_address());
        let now = Instant::now();
        for _ in 0..30 {
            t.failed("ip:1", now);
        }
        assert_eq!(t.wait("ip:1", now), None);
        t.failed("ip:1", now);
        assert!(t.wait("ip:1", now).is_some());
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
