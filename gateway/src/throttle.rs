//! Login and registration throttling: after a few failures for one login
//! name (or, with a larger allowance, one client address), further attempts
//! wait, with the wait doubling. Also: which address a request comes from
//! behind a reverse proxy, and the key it is counted under (IPv6 per /64).

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
    /// Registrations from one client address: every one counts (a
    /// registration costs an argon2 hash and an account); an office can
    /// still sign up a team at once. The 20th sets the first wait, so the
    /// 21st within the hour waits.
    pub fn registrations() -> Self {
        Policy {
            free_failures: 19,
            first_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(3600),
            forget_after: Duration::from_secs(3600),
        }
    }

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

/// The key an address is counted under. IPv6 clients usually get a whole
/// /64 (and pick addresses in it at will), so one /64 is one client; IPv4
/// and IPv4-mapped IPv6 count per address.
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Attempts counted (in flight or failed) since the last success.
    attempts: u32,
    last_attempt: Instant,
    blocked_until: Instant,
}

/// Most keys one throttle tracks: an attacker cycling through login names
/// or addresses must not be able to grow it without bound.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Keyed attempt counters; cheap enough to check on every login.
///
/// An attempt is counted when it starts ([`LoginThrottle::begin`]), before
/// the password is verified, so parallel guesses see each other: verifying
/// takes tens of milliseconds, and counting only afterwards let any number
/// of simultaneous guesses through.
#[derive(Debug)]
pub struct LoginThrottle {
    policy: Policy,
    max_keys: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle::new(Policy::default())
    }
}

impl LoginThrottle {
    pub fn new(policy: Policy) -> Self {
        LoginThrottle::with_max_keys(policy, DEFAULT_MAX_KEYS)
    }

    pub fn with_max_keys(policy: Policy, max_keys: usize) -> Self {
        LoginThrottle {
            policy,
            max_keys: max_keys.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Keys tracked right now.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("throttle lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn wait_for(&self, attempts: u32) -> Option<Duration> {
        let p = self.policy;
        (attempts > p.free_failures).then(|| {
            let doublings = (attempts - p.free_failures - 1).min(20);
            p.first_wait.saturating_mul(1 << doublings).min(p.max_wait)
        })
    }

    /// How long `key` must still wait, if at all.
    pub fn wait(&self, key: &str, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().expect("throttle lock");
        let e = entries.get(key)?;
        (e.blocked_until > now).then(|| e.blocked_until - now)
    }

    /// Start an attempt: refused with the wait while `key` is blocked,
    /// otherwise counted at once (as a failure until [`Self::succeeded`] or
    /// [`Self::refund`] says otherwise), so the next concurrent attempt
    /// already sees it.
    pub fn begin(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let p = self.policy;
        let mut entries = self.entries.lock().expect("throttle lock");
        if let Some(e) = entries.get(key) {
            if e.blocked_until > now {
                return Err(e.blocked_until - now);
            }
        } else if entries.len() >= self.max_keys {
            evict(&mut entries, self.max_keys, p.forget_after, now);
        }
        let e = entries.entry(key.to_string()).or_insert(Entry {
            attempts: 0,
            last_attempt: now,
            blocked_until: now,
        });
        if now.duration_since(e.last_attempt) >= p.forget_after {
            e.attempts = 0;
        }
        e.attempts += 1;
        e.last_attempt = now;
        let attempts = e.attempts;
        drop(entries);
        if let Some(wait) = self.wait_for(attempts) {
            self.block(key, now + wait);
        }
        Ok(())
    }

    fn block(&self, key: &str, until: Instant) {
        if let Some(e) = self.entries.lock().expect("throttle lock").get_mut(key) {
            e.blocked_until = e.blocked_until.max(until);
        }
    }

    /// The attempt failed: it is already counted; the wait it earned runs
    /// from now, the failure, not from the attempt's start (verifying took
    /// a noticeable while, and a slow machine would otherwise have served
    /// most of the wait before the client even heard back).
    pub fn failed(&self, key: &str, now: Instant) {
        let attempts = {
            let mut entries = self.entries.lock().expect("throttle lock");
            let Some(e) = entries.get_mut(key) else {
                return;
            };
            e.last_attempt = now;
            e.attempts
        };
        if let Some(wait) = self.wait_for(attempts) {
            self.block(key, now + wait);
        }
    }

    /// The attempt succeeded: the key starts over.
    pub fn succeeded(&self, key: &str) {
        self.entries.lock().expect("throttle lock").remove(key);
    }

    /// The attempt succeeded but the key should keep its other counts (a
    /// shared address where one person logged in): only this attempt is
    /// taken back.
    pub fn refund(&self, key: &str) {
        if let Some(e) = self.entries.lock().expect("throttle lock").get_mut(key) {
            e.attempts = e.attempts.saturating_sub(1);
            if e.attempts <= self.policy.free_failures {
                // The block this attempt set when it started is undone:
                // what is left are free failures.
                e.blocked_until = e.blocked_until.min(e.last_attempt);
            }
        }
    }
}

/// Make room for one key: drop what has been forgotten anyway, and if the
/// map is still full, the least recently active tenth (keys under attack
/// are active, so they stay). Amortised, this is O(1) per new key.
fn evict(
    entries: &mut HashMap<String, Entry>,
    max_keys: usize,
    forget_after: Duration,
    now: Instant,
) {
    entries
        .retain(|_, e| e.blocked_until > now || now.duration_since(e.last_attempt) < forget_after);
    if entries.len() < max_keys {
        return;
    }
    let mut ages: Vec<Instant> = entries.values().map(|e| e.last_attempt).collect();
    let drop_count = (max_keys / 10).max(1).min(ages.len());
    let (_, cutoff, _) = ages.select_nth_unstable(drop_count - 1);
    let cutoff = *cutoff;
    let mut dropped = 0;
    entries.retain(|_, e| {
        if dropped < drop_count && e.last_attempt <= cutoff {
            dropped += 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One failed attempt, as the login handler makes it.
    fn fail(t: &LoginThrottle, key: &str, now: Instant) -> Result<(), Duration> {
        t.begin(key, now)?;
        t.failed(key, now);
        Ok(())
    }

    #[test]
    fn waits_start_after_the_free_failures_and_double() {
        let t = LoginThrottle::new(Policy::default());
        let now = Instant::now();
        for _ in 0..5 {
            fail(&t, "ann", now).unwrap();
        }
        assert_eq!(t.wait("ann", now), None);
        fail(&t, "ann", now).unwrap();
        assert_eq!(t.wait("ann", now), Some(Duration::from_secs(2)));
        assert_eq!(t.begin("ann", now), Err(Duration::from_secs(2)));
        let later = now + Duration::from_secs(2);
        fail(&t, "ann", later).unwrap();
        assert_eq!(t.wait("ann", later), Some(Duration::from_secs(4)));
        assert_eq!(t.wait("bo", now), None, "keys are separate");
        assert_eq!(t.wait("ann", later + Duration::from_secs(5)), None);
    }

    #[test]
    fn attempts_in_flight_count_before_they_finish() {
        // Twenty guesses that all start before any is verified.
        let t = LoginThrottle::new(Policy::default());
        let now = Instant::now();
        let admitted = (0..20).filter(|_| t.begin("ann", now).is_ok()).count();
        assert_eq!(
            admitted, 6,
            "5 free attempts and the one that earns the wait"
        );
    }

    #[test]
    fn the_wait_runs_from_the_failure() {
        let t = LoginThrottle::new(Policy::default());
        let start = Instant::now();
        for _ in 0..6 {
            t.begin("ann", start).unwrap();
        }
        // Verifying the sixth took 1.5 s.
        let failed_at = start + Duration::from_millis(1500);
        t.failed("ann", failed_at);
        assert_eq!(t.wait("ann", failed_at), Some(Duration::from_secs(2)));
    }

    #[test]
    fn success_and_time_forget() {
        let t = LoginThrottle::new(Policy::default());
        let now = Instant::now();
        for _ in 0..6 {
            fail(&t, "ann", now).unwrap();
        }
        assert!(t.wait("ann", now).is_some());
        t.succeeded("ann");
        assert_eq!(t.wait("ann", now), None);
        for _ in 0..5 {
            fail(&t, "bo", now).unwrap();
        }
        let later = now + Duration::from_secs(901);
        fail(&t, "bo", later).unwrap();
        assert_eq!(t.wait("bo", later), None, "old failures were forgotten");
    }

    #[test]
    fn a_refund_takes_back_one_attempt_only() {
        let t = LoginThrottle::new(Policy::per_address());
        let now = Instant::now();
        for _ in 0..30 {
            fail(&t, "ip", now).unwrap();
        }
        // A successful login from the same address: not a failure.
        t.begin("ip", now).unwrap();
        t.refund("ip");
        assert_eq!(t.wait("ip", now), None);
        fail(&t, "ip", now).unwrap();
        assert!(t.wait("ip", now).is_some(), "the 31st failure still counts");
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        let max = 1000;
        let t = LoginThrottle::with_max_keys(Policy::default(), max);
        let now = Instant::now();
        // A key under attack, active all along.
        for _ in 0..6 {
            fail(&t, "target", now).unwrap();
        }
        for i in 0..50_000u32 {
            let at = now + Duration::from_millis(u64::from(i));
            let _ = fail(&t, &format!("junk-{i}"), at);
            if i % 100 == 0 {
                t.failed("target", at);
            }
            assert!(t.len() <= max, "{} keys after {i}", t.len());
        }
        assert!(t.len() > max / 2, "eviction keeps most keys: {}", t.len());
        assert!(
            t.wait("target", now + Duration::from_millis(49_999))
                .is_some(),
            "the blocked, active key survived the flood"
        );
        // Forgotten keys are dropped before live ones.
        let t = LoginThrottle::with_max_keys(Policy::default(), 10);
        for i in 0..10 {
            fail(&t, &format!("old-{i}"), now).unwrap();
        }
        let much_later = now + Duration::from_secs(3600);
        fail(&t, "new", much_later).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_ipv4_per_address() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            key("2001:db8:1:2::7")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.9"), "203.0.113.9");
        assert_ne!(key("203.0.113.9"), key("203.0.113.10"));
        assert_eq!(
            key("::ffff:203.0.113.9"),
            "203.0.113.9",
            "mapped IPv4 is IPv4"
        );
        assert_eq!(key("::1"), "::/64");
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
            fail(&t, "ip:1", now).unwrap();
        }
        assert_eq!(t.wait("ip:1", now), None);
        fail(&t, "ip:1", now).unwrap();
        assert!(t.wait("ip:1", now).is_some());
    }

    #[test]
    fn the_wait_is_capped() {
        let t = LoginThrottle::new(Policy::default());
        let mut now = Instant::now();
        for _ in 0..60 {
            if let Err(wait) = fail(&t, "x", now) {
                now += wait;
                fail(&t, "x", now).unwrap();
            }
        }
        assert_eq!(t.wait("x", now), Some(Duration::from_secs(300)));
    }
}
