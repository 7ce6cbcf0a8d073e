//! Rate limiters for the devices' queues: token buckets for bytes and for
//! operations, and a timer that says when a throttled queue may go on.
//!
//! # The model
//!
//! A [`TokenBucket`] holds at most `size` tokens and gains `size` tokens per
//! `refill_time`, continuously (whole tokens as they accrue; the remainder
//! is carried exactly, so no rounding drifts the rate). It starts full. An
//! optional one-time burst is a second pot of tokens that is spent first and
//! never refilled: it lets a guest start faster (boot, a first big read)
//! without raising its sustained rate.
//!
//! A request of `n` tokens passes when the burst and the bucket together
//! hold `n`. A request larger than everything the bucket can ever hold
//! (`n > size + burst`) would otherwise never pass: it passes once the
//! bucket is full, takes everything, and leaves the bucket in debt for the
//! rest. Refills pay the debt before anything else passes, so the long-run
//! rate stays exact and such a request costs its full size in time, only
//! paid after instead of before.
//!
//! A [`RateLimiter`] is an optional bandwidth bucket (bytes) and an optional
//! ops bucket (requests or frames), taken from together or not at all, and
//! a timerfd. When a request cannot pass, [`RateLimiter::consume`] arms the
//! timer for exactly when both buckets will hold enough and reports the
//! limiter blocked; the device stops serving that queue (the request stays
//! in the ring, or pending in the device) and registers the timer with the
//! event loop, whose firing ([`RateLimiter::on_timer`]) unblocks it. Nothing
//! polls, sleeps or blocks the loop: a throttled queue costs one timer
//! wake-up per retry, and the other queues and devices run meanwhile.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::virtio::Error;

/// How long an empty bucket takes to refill when the command line sets it:
/// a rate of N per second is a bucket of N refilled over one second.
pub const DEFAULT_REFILL_TIME: Duration = Duration::from_secs(1);

/// One bucket's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens a full bucket holds, and how many it gains per `refill_time`.
    pub size: u64,
    /// Tokens to spend before the bucket's own, once; never refilled.
    pub one_time_burst: u64,
    /// How long an empty bucket takes to fill.
    pub refill_time: Duration,
}

impl BucketConfig {
    /// `rate` tokens per second, refilled over [`DEFAULT_REFILL_TIME`].
    pub fn per_second(rate: u64, one_time_burst: u64) -> Self {
        Self {
            size: rate,
            one_time_burst,
            refill_time: DEFAULT_REFILL_TIME,
        }
    }
}

/// What a queue's limiter limits; both `None` means no limiter at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimiterConfig {
    /// Bytes.
    pub bandwidth: Option<BucketConfig>,
    /// Requests (virtio-blk) or frames (virtio-net).
    pub ops: Option<BucketConfig>,
}

impl RateLimiterConfig {
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }
}

/// A token bucket. Time is passed in, so tests can drive it with a clock of
/// their own.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    /// `refill_time` in nanoseconds, at least 1.
    refill_ns: u128,
    burst: u64,
    budget: u64,
    /// Tokens owed by an oversized request; `budget` is 0 while this is not.
    debt: u64,
    /// Part of the next token earned so far, in token-nanoseconds: a token
    /// accrues every `refill_ns` of this.
    frac: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket, as of `now`.
    pub fn new(cfg: BucketConfig, now: Instant) -> Result<Self, Error> {
        if cfg.size == 0 {
            return Err(Error::RateLimit(
                "a bucket of size 0 would never let anything through",
            ));
        }
        let refill_ns = cfg.refill_time.as_nanos();
        if refill_ns == 0 {
            return Err(Error::RateLimit("a bucket's refill time must not be 0"));
        }
        Ok(Self {
            size: cfg.size,
            refill_ns,
            burst: cfg.one_time_burst,
            budget: cfg.size,
            debt: 0,
            frac: 0,
            last: now,
        })
    }

    /// Tokens available now in the bucket itself (the burst not included).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// What is left of the one-time burst.
    pub fn one_time_burst(&self) -> u64 {
        self.burst
    }

    /// Tokens owed by an oversized request.
    pub fn debt(&self) -> u64 {
        self.debt
    }

    /// Adds what accrued since the last call. Time that goes backwards
    /// counts as none.
    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        if self.budget == self.size && self.debt == 0 {
            // A full bucket gains nothing, not even part of a token.
            self.frac = 0;
            return;
        }
        let acc = self
            .frac
            .saturating_add(elapsed.saturating_mul(u128::from(self.size)));
        let tokens = acc / self.refill_ns;
        self.frac = acc % self.refill_ns;
        let mut tokens = u64::try_from(tokens).unwrap_or(u64::MAX);
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        tokens -= paid;
        self.budget = self.budget.saturating_add(tokens).min(self.size);
        if self.budget == self.size {
            self.frac = 0;
        }
    }

    /// Tokens that must still accrue before `n` can be taken; 0 when it can
    /// be now. Call [`Self::refill`] first.
    fn shortfall(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // While in debt the burst and the budget are both spent.
        let avail = self.burst.saturating_add(self.budget);
        if self.debt == 0 && n <= avail {
            return 0;
        }
        let target = if n > self.size.saturating_add(self.burst) {
            // Never fits: wait for a full bucket (and no debt), then take
            // it all and owe the rest.
            self.size
        } else {
            // The burst is spent first, so the bucket must hold the rest.
            n.saturating_sub(self.burst)
        };
        self.debt.saturating_add(target.saturating_sub(self.budget))
    }

    /// How long until `n` tokens can be taken, as of the last refill; zero
    /// when they can be now.
    pub fn wait_for(&self, n: u64) -> Duration {
        let k = self.shortfall(n);
        if k == 0 {
            return Duration::ZERO;
        }
        // frac + t * size >= k * refill_ns, for the least whole t.
        let need = u128::from(k).saturating_mul(self.refill_ns) - self.frac;
        let ns = need.div_ceil(u128::from(self.size));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Takes `n` tokens: the burst's first, then the bucket's, and, for an
    /// oversized request, debt for the rest. Only call it when
    /// [`Self::wait_for`] is zero.
    fn take(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        let rest = n - from_burst;
        if rest <= self.budget {
            self.budget -= rest;
        } else {
            self.debt = self.debt.saturating_add(rest - self.budget);
            self.budget = 0;
        }
    }

    /// Refills as of `now`, then takes `n` tokens if it can; otherwise says
    /// how long until it could, and takes nothing.
    pub fn try_take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        match self.wait_for(n) {
            Duration::ZERO => {
                self.take(n);
                Ok(())
            }
            wait => Err(wait),
        }
    }
}

/// What a limiter let through and held back, for `--verbose` and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RateLimiterCounters {
    /// Times a request had to wait: each is one timer armed and one stop
    /// of the queue.
    pub throttled: u64,
    /// Bytes and operations let through.
    pub bytes: u64,
    pub ops: u64,
    /// The timer could not be armed; the request was let through rather
    /// than left waiting for a wake-up that would never come.
    pub timer_errors: u64,
}

/// A bandwidth bucket, an ops bucket and the timer a blocked queue waits on.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
    counters: RateLimiterCounters,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .field("blocked", &self.blocked)
            .field("counters", &self.counters)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter with full buckets and a disarmed, non-blocking timer.
    pub fn new(cfg: RateLimiterConfig) -> Result<Self, Error> {
        let now = Instant::now();
        let bucket = |b: Option<BucketConfig>| b.map(|b| TokenBucket::new(b, now)).transpose();
        let bandwidth = bucket(cfg.bandwidth)?;
        let ops = bucket(cfg.ops)?;
        let timer = TimerFd::new().map_err(|e| Error::Timer(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(Error::Timer)?;
        Ok(Self {
            bandwidth,
            ops,
            timer,
            blocked: false,
            counters: RateLimiterCounters::default(),
        })
    }

    /// A limiter for `cfg`, or none when it limits nothing.
    pub fn for_config(cfg: RateLimiterConfig) -> Result<Option<Self>, Error> {
        if cfg.is_unlimited() {
            Ok(None)
        } else {
            Self::new(cfg).map(Some)
        }
    }

    /// The timer is armed: the queue waits for it.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    pub fn counters(&self) -> RateLimiterCounters {
        self.counters
    }

    /// How long until `bytes` and `ops` can both be taken, as of `now`
    /// (zero if they can be now); takes them if they can. Touches neither
    /// the timer nor the blocked state: [`Self::consume`] does that.
    pub fn consume_at(&mut self, bytes: u64, ops: u64, now: Instant) -> Duration {
        let mut wait = Duration::ZERO;
        for (bucket, n) in [(&mut self.bandwidth, bytes), (&mut self.ops, ops)] {
            if let Some(b) = bucket {
                b.refill(now);
                wait = wait.max(b.wait_for(n));
            }
        }
        if wait.is_zero() {
            if let Some(b) = &mut self.bandwidth {
                b.take(bytes);
            }
            if let Some(b) = &mut self.ops {
                b.take(ops);
            }
            self.counters.bytes += bytes;
            self.counters.ops += ops;
        }
        wait
    }

    /// Takes `bytes` and `ops` and says true, or, when the buckets do not
    /// hold them yet, arms the timer for when they will, blocks, and says
    /// false (taking nothing). While blocked it says false at once: the
    /// caller waits for [`Self::on_timer`].
    pub fn consume(&mut self, bytes: u64, ops: u64) -> bool {
        if self.blocked {
            return false;
        }
        let wait = self.consume_at(bytes, ops, Instant::now());
        if wait.is_zero() {
            return true;
        }
        // An it_value of zero would disarm the timer instead.
        match self.timer.reset(wait.max(Duration::from_nanos(1)), None) {
            Ok(()) => {
                self.blocked = true;
                self.counters.throttled += 1;
                false
            }
            Err(_) => {
                // Better too fast than stuck for good.
                self.counters.timer_errors += 1;
                self.force(bytes, ops);
                true
            }
        }
    }

    /// Takes what a request needs whether or not it is there (into debt).
    fn force(&mut self, bytes: u64, ops: u64) {
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(ops);
        }
        self.counters.bytes += bytes;
        self.counters.ops += ops;
    }

    /// The timer's fd is readable: reads it and, if the wait is over,
    /// unblocks; the caller then serves its queue again. A stale wake-up
    /// (the timer cleared or re-armed since epoll reported it) reads as
    /// EAGAIN, non-blocking, and leaves the limiter waiting for the timer
    /// that is armed now. Returns whether the limiter unblocked.
    pub fn on_timer(&mut self) -> bool {
        match self.timer.wait() {
            Err(e) if e.errno() == libc::EAGAIN => {}
            // Fired (or an error no retry would cure: unblocking is the
            // side that cannot hang the queue).
            _ => self.blocked = false,
        }
        !self.blocked
    }

    /// Forgets a wait: the device was reset, and its next driver starts
    /// afresh (the buckets keep their tokens, so a reset buys nothing).
    /// No system call: a reset runs on a vCPU thread, whose seccomp filter
    /// has no timerfd calls. A timer still armed fires later, once, for
    /// nothing (the loop finds the queue served or not yet throttled), or
    /// is re-armed first by the next wait.
    pub fn unblock(&mut self) {
        self.blocked = false;
    }

    /// One phrase for a device's summary.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        format!(
            "throttled {} times, {} bytes and {} ops admitted{}{}",
            c.throttled,
            c.bytes,
            c.ops,
            if c.timer_errors > 0 {
                format!(", {} timer errors", c.timer_errors)
            } else {
                String::new()
            },
            if self.blocked {
                ", waiting for tokens"
            } else {
                ""
            }
        )
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// vmm-sys-util makes a blocking timerfd; the event loop must never block
/// on a read, so it is switched to non-blocking.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on an fd we own reads its flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on an fd we own sets its status flags and touches no
    // memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(size: u64, burst: u64, t0: Instant) -> TokenBucket {
        TokenBucket::new(BucketConfig::per_second(size, burst), t0).unwrap()
    }

    #[test]
    fn a_bucket_starts_full_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = bucket(1000, 0, t0);
        assert_eq!(b.try_take(1000, t0), Ok(()));
        assert_eq!(b.budget(), 0);
        // 1000 per second: one token per millisecond, whole tokens only.
        b.refill(t0 + Duration::from_micros(1500));
        assert_eq!(b.budget(), 1);
        b.refill(t0 + 250 * MS);
        assert_eq!(b.budget(), 250);
        // Never more than its size.
        b.refill(t0 + Duration::from_secs(10));
        assert_eq!(b.budget(), 1000);
    }

    #[test]
    fn fractions_of_a_token_are_carried_not_lost() {
        // 3 tokens per second: one every 333.33 ms. Refilling in many
        // small steps must give what one step gives.
        let t0 = Instant::now();
        let mut b = bucket(3, 0, t0);
        b.try_take(3, t0).unwrap();
        for i in 1..=1000u32 {
            b.refill(t0 + MS * i);
        }
        assert_eq!(b.budget(), 3);
        let mut c = bucket(3, 0, t0);
        c.try_take(3, t0).unwrap();
        c.refill(t0 + Duration::from_nanos(666_666_666));
        assert_eq!(c.budget(), 1);
        c.refill(t0 + Duration::from_nanos(666_666_667));
        assert_eq!(c.budget(), 2);
    }

    #[test]
    fn waits_are_exact() {
        let t0 = Instant::now();
        let mut b = bucket(1 << 20, 0, t0);
        b.try_take(1 << 20, t0).unwrap();
        // 512 KiB at 1 MiB/s: exactly half a second.
        assert_eq!(b.try_take(512 << 10, t0), Err(Duration::from_millis(500)));
        // A quarter of a second later a quarter of a second is left.
        assert_eq!(
            b.try_take(512 << 10, t0 + 250 * MS),
            Err(Duration::from_millis(250))
        );
        // Not a nanosecond early...
        let early = t0 + Duration::from_nanos(499_999_999);
        assert!(b.try_take(512 << 10, early).is_err());
        // ... and on time.
        assert_eq!(b.try_take(512 << 10, t0 + 500 * MS), Ok(()));
        assert_eq!(b.budget(), 0);
        // A wait that is not a whole number of nanoseconds rounds up, so
        // the retry at its end succeeds: 1 token at 3 per second.
        let mut c = bucket(3, 0, t0);
        c.try_take(3, t0).unwrap();
        let w = c.try_take(1, t0).unwrap_err();
        assert_eq!(w, Duration::from_nanos(333_333_334));
        assert_eq!(c.try_take(1, t0 + w), Ok(()));
    }

    #[test]
    fn the_burst_goes_first_and_never_comes_back() {
        let t0 = Instant::now();
        let mut b = bucket(100, 250, t0);
        // 350 at once: all of the burst, then 100 of the bucket.
        assert_eq!(b.try_take(300, t0), Ok(()));
        assert_eq!((b.one_time_burst(), b.budget()), (0, 50));
        assert_eq!(b.try_take(50, t0), Ok(()));
        assert!(b.try_take(1, t0).is_err());
        // A long time later the bucket is full and the burst still gone.
        let t60 = t0 + Duration::from_secs(60);
        b.refill(t60);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 100));
        assert_eq!(b.try_take(100, t60), Ok(()));
        assert_eq!(b.try_take(1, t60), Err(10 * MS));
        // A small request takes from the burst while there is one.
        let mut c = bucket(100, 250, t0);
        c.try_take(10, t0).unwrap();
        assert_eq!((c.one_time_burst(), c.budget()), (240, 100));
    }

    #[test]
    fn an_oversized_request_passes_on_a_full_bucket_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = bucket(1000, 0, t0);
        // Larger than the bucket: passes on a full one, 2000 owed.
        assert_eq!(b.try_take(3000, t0), Ok(()));
        assert_eq!((b.budget(), b.debt()), (0, 2000));
        // Even one token waits for the debt: 2 s, then 1 ms.
        assert_eq!(b.try_take(1, t0), Err(Duration::from_millis(2001)));
        // Another oversized one waits for the debt and a full bucket: 3 s.
        assert_eq!(b.try_take(5000, t0), Err(Duration::from_secs(3)));
        b.refill(t0 + Duration::from_secs(1));
        assert_eq!((b.budget(), b.debt()), (0, 1000));
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(b.try_take(5000, t3), Ok(()));
        assert_eq!(b.debt(), 4000);
        // Not on a bucket that is merely not empty.
        let mut c = bucket(1000, 0, t0);
        c.try_take(1, t0).unwrap();
        assert_eq!(c.try_take(1001, t0), Err(MS));
        // With a burst, oversized means more than bucket and burst hold.
        let mut d = bucket(1000, 500, t0);
        assert_eq!(d.try_take(1500, t0), Ok(()));
        let mut e = bucket(1000, 500, t0);
        assert_eq!(e.try_take(1600, t0), Ok(()));
        assert_eq!(e.debt(), 100);
    }

    #[test]
    fn zero_tokens_always_pass_and_bad_buckets_are_refused() {
        let t0 = Instant::now();
        let mut b = bucket(10, 0, t0);
        b.try_take(20, t0).unwrap();
        assert_eq!(b.try_take(0, t0), Ok(()));
        assert!(TokenBucket::new(BucketConfig::per_second(0, 5), t0).is_err());
        let no_time = BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time: Duration::ZERO,
        };
        assert!(TokenBucket::new(no_time, t0).is_err());
        assert!(RateLimiter::new(RateLimiterConfig {
            bandwidth: Some(BucketConfig::per_second(0, 0)),
            ops: None,
        })
        .is_err());
    }

    #[test]
    fn a_limiter_takes_from_both_buckets_or_from_neither() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(RateLimiterConfig {
            bandwidth: Some(BucketConfig::per_second(1000, 0)),
            ops: Some(BucketConfig::per_second(2, 0)),
        })
        .unwrap();
        // Rebase the buckets on the test's clock.
        for b in [&mut l.bandwidth, &mut l.ops].into_iter().flatten() {
            b.last = t0;
        }
        assert_eq!(l.consume_at(100, 1, t0), Duration::ZERO);
        assert_eq!(l.consume_at(100, 1, t0), Duration::ZERO);
        // Bytes are there, ops are not: half a second for one op, and the
        // bytes stay untouched.
        assert_eq!(l.consume_at(100, 1, t0), 500 * MS);
        assert_eq!(l.bandwidth.as_ref().unwrap().budget(), 800);
        // Both short: the longer wait.
        assert_eq!(l.consume_at(900, 1, t0), 500 * MS);
        assert_eq!(l.consume_at(900, 1, t0 + 400 * MS), 100 * MS);
        assert_eq!(l.consume_at(900, 1, t0 + 500 * MS), Duration::ZERO);
        let c = l.counters();
        assert_eq!((c.bytes, c.ops), (1100, 3));
        assert!(RateLimiter::for_config(RateLimiterConfig::default())
            .unwrap()
            .is_none());
    }

    /// Whether the limiter's timer fd turns readable within `ms`.
    fn readable(l: &RateLimiter, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call, on an fd the limiter
        // keeps open.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        assert!(n >= 0, "poll: {}", io::Error::last_os_error());
        n == 1
    }

    #[test]
    fn a_blocked_limiter_arms_its_timer_for_the_wait() {
        let mut l = RateLimiter::new(RateLimiterConfig {
            bandwidth: Some(BucketConfig::per_second(1 << 20, 0)),
            ops: None,
        })
        .unwrap();
        assert!(l.consume(1 << 20, 1));
        assert!(!l.is_blocked());
        let start = Instant::now();
        // 100 KiB at 1 MiB/s: ~98 ms.
        assert!(!l.consume(100 << 10, 1));
        assert!(l.is_blocked());
        // Blocked: refused at once, without a second throttle.
        assert!(!l.consume(1, 1));
        assert_eq!(l.counters().throttled, 1);
        // A wake-up before the timer's time (a stale one) neither blocks
        // on the read nor unblocks the limiter.
        assert!(!l.on_timer());
        assert!(l.is_blocked());
        assert!(start.elapsed() < 90 * MS, "a read of the timer blocked");
        assert!(readable(&l, 2000));
        let waited = start.elapsed();
        assert!(waited >= 95 * MS, "the timer fired after {waited:?}");
        assert!(waited < 1000 * MS, "the timer fired after {waited:?}");
        assert!(l.on_timer());
        assert!(!l.is_blocked());
        // Exactly enough tokens by then.
        assert!(l.consume(100 << 10, 1));
        // Unblocking (a reset) forgets the wait at once; the timer still
        // fires, once, and unblocks what is unblocked already.
        assert!(!l.consume(200 << 10, 1));
        l.unblock();
        assert!(!l.is_blocked());
        assert!(readable(&l, 2000));
        assert!(l.on_timer());
        assert!(!readable(&l, 50));
        assert!(
            l.summary().starts_with("throttled 2 times"),
            "{}",
            l.summary()
        );
    }
}
