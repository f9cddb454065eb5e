//! Per-client limits: requests per client address, and failed authentications per client and
//! per token. The decisions are `governor`'s GCRA; what is ours is the store of per-key state,
//! bounded so that no client can grow it or, by filling it, reset another's count.
//!
//! When the store is full, keys whose state is indistinguishable from a fresh one go first,
//! then every key that has used less than its whole burst. A key over its limit is never
//! dropped. If every key tracked is over its limit, a newcomer is let through untracked: a
//! limiter that refused everyone new once it filled would hand an attacker a lock-out of the
//! whole school.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

/// Keys remembered at most per limiter, by default.
pub const MAX_TRACKED: usize = 100_000;

struct Inner<K> {
    /// Each key's theoretical arrival time (GCRA), in nanoseconds since `origin`, and when the
    /// full store was last swept.
    tats: Mutex<Tats<K>>,
    capacity: usize,
    /// When the limiter started: its clock's zero.
    origin: Instant,
    /// One emission interval (a cell), in nanoseconds; at least 1, as in governor.
    t: u64,
    /// The bucket's tolerance (burst − 1 emission intervals), in nanoseconds.
    tau: u64,
}

struct Tats<K> {
    map: HashMap<K, u64>,
    swept: Option<u64>,
}

/// The bounded state store, shared by the limiter and [`ClientLimiter::over`].
struct Bounded<K>(Arc<Inner<K>>);

impl<K: Hash + Eq + Clone> Inner<K> {
    fn now(&self) -> u64 {
        self.origin
            .elapsed()
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// The state, also after a panic elsewhere held the lock: a limiter must not turn itself
    /// off for good because one request panicked.
    fn lock(&self) -> std::sync::MutexGuard<'_, Tats<K>> {
        self.tats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Room for a new key: false when the store is full of keys still over their limit. A
    /// full store is swept at most once per emission interval, so a flood of newcomers costs
    /// one scan per interval, not one per request.
    fn room(&self, s: &mut Tats<K>) -> bool {
        if s.map.len() < self.capacity {
            return true;
        }
        let now = self.now();
        if s.swept.is_some_and(|at| now.saturating_sub(at) < self.t) {
            return false;
        }
        s.swept = Some(now);
        // Fresh again: the theoretical arrival time has passed.
        s.map.retain(|_, tat| *tat > now);
        if s.map.len() >= self.capacity {
            // Under their limit: a whole burst is not yet used up.
            s.map.retain(|_, tat| tat.saturating_sub(self.tau) > now);
        }
        s.map.len() < self.capacity
    }
}

impl<K: Hash + Eq + Clone> StateStore for Bounded<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let inner = &self.0;
        let mut s = inner.lock();
        let prev = s.map.get(key).copied();
        if prev.is_none() && !inner.room(&mut s) {
            return f(None).map(|(t, _)| t);
        }
        let (t, next) = f(prev.map(Nanos::from))?;
        s.map.insert(key.clone(), next.as_u64());
        Ok(t)
    }
}

/// A GCRA limiter per key over a bounded, expiring key set.
pub struct ClientLimiter<K: Hash + Eq + Clone> {
    gcra: RateLimiter<K, Bounded<K>, MonotonicClock, NoOpMiddleware<Instant>>,
    inner: Arc<Inner<K>>,
    clock: MonotonicClock,
}

impl<K: Hash + Eq + Clone> ClientLimiter<K> {
    /// `burst` cells at once, then one more every `every`; at most `capacity` keys.
    pub fn new(burst: NonZeroU32, every: Duration, capacity: usize) -> Self {
        let quota = Quota::with_period(every)
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        let t = u64::try_from(quota.replenish_interval().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let tau = t.saturating_mul(u64::from(burst.get() - 1));
        let clock = MonotonicClock;
        // Taken just before the limiter takes its own start from the same clock: the two
        // differ by the nanoseconds between the calls, nothing a limit of seconds can see.
        let inner = Arc::new(Inner {
            tats: Mutex::new(Tats {
                map: HashMap::new(),
                swept: None,
            }),
            capacity: capacity.max(1),
            origin: clock.now(),
            t,
            tau,
        });
        let gcra = RateLimiter::new(quota, Bounded(inner.clone()), clock.clone());
        ClientLimiter { gcra, inner, clock }
    }

    /// Spends one cell of `key`; `Err(wait)` when it has none left.
    pub fn spend(&self, key: &K) -> Result<(), Duration> {
        self.gcra
            .check_key(key)
            .map_err(|no| no.wait_time_from(self.clock.now()))
    }

    /// Counts one cell against `key` even when it is over its limit already (governor would
    /// refuse the cell and record nothing): what failed sign-ins use, so that failures sent
    /// all at once, which all passed the check before any was counted, each push the key's
    /// next allowed time further out instead of being forgotten.
    pub fn charge(&self, key: &K) {
        if self.spend(key).is_err() {
            let mut s = self.inner.lock();
            if let Some(tat) = s.map.get_mut(key) {
                *tat = tat.saturating_add(self.inner.t);
            }
        }
    }

    /// How long until `key` may spend again, if it is over its limit now; spends nothing.
    pub fn over(&self, key: &K) -> Option<Duration> {
        let tat = *self.inner.lock().map.get(key)?;
        let earliest = tat.saturating_sub(self.inner.tau);
        let now = self.inner.now();
        (now < earliest).then(|| Duration::from_nanos(earliest - now))
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.inner.lock().map.len()
    }
}

/// The key a client address is limited by: an IPv4 address as it is, an IPv6 address by its
/// /64 network. One IPv6 host is usually handed a whole /64, so keying by the full address
/// would give it 2^64 fresh bursts.
pub fn client_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(_) => ip,
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => {
                let s = v6.segments();
                std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0).into()
            }
        },
    }
}

/// Requests per second one client address may make to the API (`--rate-limit`); off at 0.
/// Liveness, readiness, metrics and the API description are never limited: a monitor must see
/// a server under load.
pub struct RequestLimit(Option<ClientLimiter<std::net::IpAddr>>);

impl RequestLimit {
    /// `per_second` sustained, bursts of twice that, for at most `capacity` addresses; none at 0.
    pub fn per_second(per_second: u32, capacity: usize) -> Self {
        RequestLimit(NonZeroU32::new(per_second).map(|n| {
            let burst = n.saturating_add(n.get());
            ClientLimiter::new(burst, Duration::from_secs(1) / n.get(), capacity)
        }))
    }

    /// `Err(wait)` when `client` is over its limit; spends one of its requests otherwise.
    pub fn admit(&self, client: std::net::IpAddr) -> Result<(), Duration> {
        match &self.0 {
            Some(l) => l.spend(&client_key(client)),
            None => Ok(()),
        }
    }
}

/// The paths no limit applies to.
pub fn unlimited(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn ip(i: u32) -> IpAddr {
        let [_, a, b, c] = i.to_be_bytes();
        [127, a, b, c].into()
    }

    #[test]
    fn a_request_limit_of_zero_is_off_and_otherwise_allows_two_seconds_of_burst() {
        let off = RequestLimit::per_second(0, 10);
        for _ in 0..10_000 {
            off.admit(ip(1)).unwrap();
        }
        let on = RequestLimit::per_second(5, 10);
        for _ in 0..10 {
            on.admit(ip(1)).unwrap();
        }
        assert!(on.admit(ip(1)).is_err());
        assert!(on.admit(ip(2)).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64_network() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.1.2.3"), key("10.1.2.3"));
        assert_ne!(key("10.1.2.3"), key("10.1.2.4"));
        let on = RequestLimit::per_second(1, 10);
        on.admit("2001:db8::1".parse().unwrap()).unwrap();
        on.admit("2001:db8::2".parse().unwrap()).unwrap();
        assert!(
            on.admit("2001:db8::3".parse().unwrap()).is_err(),
            "a new address in the same /64 is the same client"
        );
    }

    #[test]
    fn charges_past_the_limit_push_the_wait_out() {
        let l = ClientLimiter::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(10), 10);
        let k = ip(1);
        // 12 failures that all passed the check at once: 2 fit the burst, 10 more are owed.
        for _ in 0..12 {
            l.charge(&k);
        }
        let wait = l.over(&k).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(110),
            "{wait:?}"
        );
    }

    #[test]
    fn a_flood_into_a_full_store_sweeps_it_once_per_interval() {
        let l = ClientLimiter::new(NonZeroU32::new(1).unwrap(), Duration::from_secs(60), 3);
        for i in 1..=3 {
            l.spend(&ip(i)).unwrap();
        }
        assert!(l.spend(&ip(10)).is_ok(), "a newcomer passes untracked");
        let first = l.inner.lock().swept;
        assert!(first.is_some(), "the first newcomer swept the full store");
        for i in 11..1_000 {
            assert!(l.spend(&ip(i)).is_ok(), "newcomers pass untracked");
        }
        assert_eq!(l.tracked(), 3);
        assert_eq!(
            l.inner.lock().swept,
            first,
            "no sweep again within the interval"
        );
    }

    #[test]
    fn a_poisoned_lock_keeps_limiting() {
        let l = Arc::new(ClientLimiter::new(
            NonZeroU32::new(1).unwrap(),
            Duration::from_secs(60),
            10,
        ));
        l.spend(&ip(1)).unwrap();
        let held = l.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.inner.tats.lock();
            panic!("a panic while holding the lock");
        })
        .join();
        assert!(l.inner.tats.is_poisoned());
        assert!(l.spend(&ip(1)).is_err() && l.over(&ip(1)).is_some());
    }

    #[test]
    fn a_burst_then_nothing_until_the_period_refills_it() {
        let l = ClientLimiter::new(NonZeroU32::new(3).unwrap(), Duration::from_secs(20), 10);
        let k = ip(1);
        for _ in 0..3 {
            assert!(l.over(&k).is_none());
            l.spend(&k).unwrap();
        }
        let wait = l.spend(&k).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        let over = l.over(&k).unwrap();
        assert!(
            over > Duration::from_secs(15) && over <= Duration::from_secs(20),
            "{over:?}"
        );
        assert!(l.over(&ip(2)).is_none(), "another key is not touched");
    }

    #[test]
    fn clients_cycling_addresses_never_clear_one_over_its_limit() {
        let l = ClientLimiter::new(NonZeroU32::new(5).unwrap(), Duration::from_secs(12), 100);
        let over = ip(1);
        while l.spend(&over).is_ok() {}
        for i in 2..10_002 {
            let _ = l.spend(&ip(i));
            assert!(l.tracked() <= 100, "memory stays bounded");
        }
        assert!(l.over(&over).is_some(), "still over its limit");
        assert!(l.spend(&over).is_err());
    }

    #[test]
    fn a_full_store_of_keys_over_their_limit_lets_newcomers_through_untracked() {
        let l = ClientLimiter::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(30), 3);
        for i in 1..=3 {
            while l.spend(&ip(i)).is_ok() {}
        }
        assert_eq!(l.tracked(), 3);
        for _ in 0..5 {
            assert!(l.spend(&ip(9)).is_ok(), "a newcomer is never refused");
        }
        assert_eq!(l.tracked(), 3);
        for i in 1..=3 {
            assert!(l.over(&ip(i)).is_some(), "{i} keeps its count");
        }
    }
}
