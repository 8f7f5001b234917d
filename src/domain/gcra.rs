//! GCRA (the generic cell rate algorithm), the arithmetic of a token bucket kept as one number:
//! the bucket's theoretical arrival time (TAT), the instant at which it would be full again.
//! Taking `n` tokens moves the TAT `n` intervals later; a take is allowed while the TAT stays
//! within `burst` intervals of now. This is the algorithm `governor` implements in process;
//! here it is written out in integer microseconds so the Redis script that shares buckets
//! between instances (`adapters::outbound::redis::rate`) can do exactly the same sums (Lua
//! numbers are doubles: every value here stays far below 2^53).

/// A bucket's shape: `rate` tokens a second, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval_us: u64,
    burst: u64,
}

impl Gcra {
    /// `None` for a rate of 0 (no limit). A burst of 0 means one second's worth. Rates above
    /// a million a second are treated as a million (one token a microsecond).
    pub fn new(rate_per_second: u32, burst: u32) -> Option<Self> {
        if rate_per_second == 0 {
            return None;
        }
        let burst = if burst == 0 { rate_per_second } else { burst };
        Some(Self {
            interval_us: (1_000_000 / u64::from(rate_per_second)).max(1),
            burst: u64::from(burst),
        })
    }

    /// Microseconds between two tokens.
    pub fn interval_us(self) -> u64 {
        self.interval_us
    }

    /// Most tokens taken at once.
    pub fn burst(self) -> u64 {
        self.burst
    }

    /// Takes `n` tokens at `now_us` from a bucket whose TAT is `tat_us` (0: never used).
    /// `Ok(new TAT)` to store, or `Err(wait_us)`: how long until `n` tokens are there (for
    /// `n` above the burst, how long until the bucket is full, which is never enough).
    pub fn take(self, tat_us: u64, now_us: u64, n: u64) -> Result<u64, u64> {
        let new_tat = tat_us.max(now_us) + n * self.interval_us;
        let limit = now_us + self.burst * self.interval_us;
        if new_tat > limit {
            Err(new_tat - limit)
        } else {
            Ok(new_tat)
        }
    }
}

/// Takes `n` from every bucket or from none: `Ok(new TATs)` in order, or `Err(longest wait)`.
/// `buckets` pairs each bucket's shape with its current TAT.
pub fn take_all(buckets: &[(Gcra, u64)], now_us: u64, n: u64) -> Result<Vec<u64>, u64> {
    let mut tats = Vec::with_capacity(buckets.len());
    let mut wait = 0;
    for &(gcra, tat) in buckets {
        match gcra.take(tat, now_us, n) {
            Ok(t) => tats.push(t),
            Err(w) => wait = wait.max(w),
        }
    }
    if wait > 0 {
        Err(wait)
    } else {
        Ok(tats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000;
    /// Any instant: the sums do not care where time starts.
    const T0: u64 = 1_764_000_000 * SEC;

    #[test]
    fn a_full_bucket_gives_exactly_its_burst_then_one_token_an_interval() {
        let g = Gcra::new(10, 5).unwrap();
        let mut tat = 0;
        for _ in 0..5 {
            tat = g.take(tat, T0, 1).unwrap();
        }
        let wait = g.take(tat, T0, 1).unwrap_err();
        assert_eq!(wait, SEC / 10, "the next token comes one interval later");
        assert!(g.take(tat, T0 + SEC / 10 - 1, 1).is_err());
        let tat = g.take(tat, T0 + SEC / 10, 1).unwrap();
        assert!(g.take(tat, T0 + SEC / 10, 1).is_err());
    }

    #[test]
    fn taking_several_at_once_costs_as_much_as_one_by_one() {
        let g = Gcra::new(100, 50).unwrap();
        let at_once = g.take(0, T0, 30).unwrap();
        let one_by_one = (0..30).fold(0, |tat, _| g.take(tat, T0, 1).unwrap());
        assert_eq!(at_once, one_by_one);
        assert_eq!(g.take(at_once, T0, 21).unwrap_err(), SEC / 100);
        assert!(g.take(at_once, T0, 20).is_ok());
    }

    #[test]
    fn more_than_the_burst_never_passes() {
        let g = Gcra::new(1, 3).unwrap();
        assert!(g.take(0, T0, 4).is_err());
        assert!(g.take(0, T0 + 3600 * SEC, 4).is_err());
    }

    #[test]
    fn an_idle_bucket_refills_to_its_burst_and_no_further() {
        let g = Gcra::new(2, 4).unwrap();
        let empty = g.take(0, T0, 4).unwrap();
        // An hour later: full again, but only 4 deep.
        let later = T0 + 3600 * SEC;
        assert!(g.take(empty, later, 4).is_ok());
        assert!(g.take(empty, later, 5).is_err());
    }

    #[test]
    fn zero_rate_is_no_limit_and_zero_burst_is_a_second() {
        assert_eq!(Gcra::new(0, 10), None);
        let g = Gcra::new(20, 0).unwrap();
        assert_eq!(g.burst(), 20);
        assert_eq!(g.interval_us(), SEC / 20);
    }

    #[test]
    fn take_all_takes_from_every_bucket_or_none() {
        let client = Gcra::new(10, 10).unwrap();
        let total = Gcra::new(10, 15).unwrap();
        let tats = take_all(&[(client, 0), (total, 0)], T0, 10).unwrap();
        // The client's bucket is empty, the total has 5 left: the client's wait wins and
        // neither bucket changes.
        let wait = take_all(&[(client, tats[0]), (total, tats[1])], T0, 5).unwrap_err();
        assert_eq!(wait, 5 * SEC / 10);
        // A second client of the same key has a full bucket but meets the total.
        let t = take_all(&[(client, 0), (total, tats[1])], T0, 5).unwrap();
        assert!(take_all(&[(client, 0), (total, t[1])], T0, 1).is_err());
    }

    proptest! {
        /// Over any schedule of takes, what is granted in [T0, T0 + d] never exceeds
        /// burst + rate × d, and a client that waits as told is then served.
        #[test]
        fn never_more_than_burst_plus_rate_times_elapsed(
            rate in 1u32..5_000,
            burst_extra in 0u32..500,
            steps in proptest::collection::vec((0u64..200_000, 1u64..20), 1..300),
        ) {
            let g = Gcra::new(rate, rate + burst_extra).unwrap();
            let (mut tat, mut now, mut granted) = (0, T0, 0u64);
            for (advance, n) in steps {
                now += advance;
                match g.take(tat, now, n) {
                    Ok(t) => { tat = t; granted += n; }
                    Err(wait) if n <= g.burst() => {
                        prop_assert!(g.take(tat, now + wait, n).is_ok());
                    }
                    Err(_) => {}
                }
                let allowed = g.burst() * g.interval_us() + (now - T0);
                prop_assert!(granted * g.interval_us() <= allowed);
            }
        }
    }
}
