//! Brute-force protection for password logins: failures are counted per client address and per
//! user name in fixed windows; once either reaches the limit, attempts from that address or for
//! that user are refused without checking the password until its window ends.
//!
//! A success forgives the failures that user made from that address (a user who mistyped a
//! few times is not penalised), but not the address's failures for other user names, so an
//! attacker who owns one account cannot reset their count by logging into it. Knows nothing
//! about HTTP; takes the clock as a parameter so tests are exact.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Keys kept per map at most; beyond it the oldest windows are dropped.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    count: u32,
}

pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_addr: HashMap<IpAddr, Window>,
    by_user: HashMap<String, Window>,
    by_pair: HashMap<(IpAddr, String), Window>,
}

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter { max_failures: max_failures.max(1), window, state: Mutex::new(State::default()) }
    }

    fn live(&self, w: &Window, now: Instant) -> bool {
        now.saturating_duration_since(w.start) < self.window
    }

    /// `Err(retry_after)` when attempts from `addr` or for `user` are refused for now.
    pub fn check(&self, addr: IpAddr, user: &str, now: Instant) -> Result<(), Duration> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let blocked = |w: Option<&Window>| {
            w.filter(|w| w.count >= self.max_failures && self.live(w, now)).map(|w| self.window.saturating_sub(now.saturating_duration_since(w.start)))
        };
        match (blocked(st.by_addr.get(&addr)), blocked(st.by_user.get(user))) {
            (None, None) => Ok(()),
            (a, u) => Err(a.unwrap_or_default().max(u.unwrap_or_default())),
        }
    }

    pub fn failed(&self, addr: IpAddr, user: &str, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let window = self.window;
        let bump = |w: &mut Window| {
            if now.saturating_duration_since(w.start) >= window {
                *w = Window { start: now, count: 0 };
            }
            w.count = w.count.saturating_add(1);
        };
        bump(st.by_addr.entry(addr).or_insert(Window { start: now, count: 0 }));
        bump(st.by_user.entry(user.to_owned()).or_insert(Window { start: now, count: 0 }));
        bump(st.by_pair.entry((addr, user.to_owned())).or_insert(Window { start: now, count: 0 }));
        evict(&mut st.by_addr, window, now);
        evict(&mut st.by_user, window, now);
        evict(&mut st.by_pair, window, now);
    }

    /// Forgives `user`'s failures from `addr` (see the module docs).
    pub fn succeeded(&self, addr: IpAddr, user: &str, now: Instant) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pair) = st.by_pair.remove(&(addr, user.to_owned())) else { return };
        if !self.live(&pair, now) {
            return;
        }
        // The pair's failures are in the address's and user's counts if those windows began no
        // later than the pair's.
        let forgive = |w: Option<&mut Window>| {
            if let Some(w) = w.filter(|w| w.start <= pair.start) {
                w.count = w.count.saturating_sub(pair.count);
            }
        };
        forgive(st.by_addr.get_mut(&addr));
        forgive(st.by_user.get_mut(user));
    }
}

/// Keeps a map under [`MAX_KEYS`]: expired windows go first, then the oldest, down to 90% so the
/// sort is not paid on every failure.
fn evict<K: Eq + Hash + Clone>(map: &mut HashMap<K, Window>, window: Duration, now: Instant) {
    if map.len() <= MAX_KEYS {
        return;
    }
    map.retain(|_, w| now.saturating_duration_since(w.start) < window);
    if map.len() <= MAX_KEYS * 9 / 10 {
        return;
    }
    let mut starts: Vec<(Instant, K)> = map.iter().map(|(k, w)| (w.start, k.clone())).collect();
    starts.sort_by_key(|(s, _)| *s);
    let excess = map.len() - MAX_KEYS * 9 / 10;
    for (_, k) in starts.into_iter().take(excess) {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn blocks_an_address_after_the_limit_until_the_window_ends() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(l.check(A, &format!("u{i}"), t0), Ok(()));
            l.failed(A, &format!("u{i}"), t0);
        }
        // Blocked for any user from A, with the rest of the window as retry-after.
        assert_eq!(l.check(A, "someone", t0 + Duration::from_secs(10)), Err(Duration::from_secs(50)));
        // Other addresses, for users that did not fail, are not.
        assert_eq!(l.check(B, "someone", t0), Ok(()));
        assert_eq!(l.check(A, "x", t0 + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn blocks_a_user_name_from_every_address() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        l.failed(A, "alice", t0);
        l.failed(B, "alice", t0 + Duration::from_secs(30));
        assert_eq!(l.check(IpAddr::from([192, 168, 0, 9]), "alice", t0 + Duration::from_secs(40)), Err(Duration::from_secs(20)));
        assert_eq!(l.check(IpAddr::from([192, 168, 0, 9]), "bob", t0 + Duration::from_secs(40)), Ok(()));
        // A failure after the window starts a new one.
        l.failed(A, "carol", t0);
        l.failed(A, "carol", t0 + Duration::from_secs(61));
        assert_eq!(l.check(B, "carol", t0 + Duration::from_secs(62)), Ok(()));
    }

    #[test]
    fn success_forgives_only_that_users_failures_from_that_address() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        l.failed(A, "alice", t0);
        l.failed(A, "alice", t0);
        l.succeeded(A, "alice", t0);
        l.failed(A, "alice", t0);
        l.failed(A, "alice", t0);
        assert_eq!(l.check(A, "alice", t0), Ok(()), "the first two were forgiven");

        // An attacker owning "mallory" does not reset A's failures against others.
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        l.failed(A, "victim1", t0);
        l.failed(A, "victim2", t0);
        l.succeeded(A, "mallory", t0);
        l.failed(A, "victim3", t0);
        assert!(l.check(A, "mallory", t0).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let l = LoginLimiter::new(5, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS as u32 + 10) {
            l.failed(IpAddr::from(i.to_be_bytes()), "u", t0 + Duration::from_millis(u64::from(i)));
        }
        let st = l.state.lock().expect("lock");
        assert!(st.by_addr.len() <= MAX_KEYS && st.by_pair.len() <= MAX_KEYS);
        assert_eq!(st.by_user.len(), 1);
    }
}
