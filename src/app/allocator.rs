//! mimalloc's tuning, shared by the service and the discard server (examples/discard-server),
//! so the ceiling runs the allocator exactly as the service does.
//!
//! Each binary declares mimalloc its global allocator itself; this only sets its options.

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the sys crate names no constant for
/// it); `purge_delay_is_option_15` checks the index against the built library.
#[cfg(not(feature = "system-allocator"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before giving it back to the system, in ms.
///
/// - Its default, 1000, kept a second's worth of churn resident: in the soak RSS stood 20-35 MB
///   higher (RELIABILITY.md).
/// - 0, purging at once, gives memory back that is used again a moment later, and the kernel
///   faults it in and zeroes it again. Events live about a second (the forwarder's interval):
///   the server took 125-133 page faults per 1,000 events, against 12-18 with 1000.
/// - 250 takes 45, and in two 20-minute soaks side by side its RSS stayed at 60-69 MB while
///   0's went from 50 to 82 MB. Idle after a large drain it held 10-16 MB more than 0, since
///   a delayed purge waits for the allocator's next call; [`purge_expired`] runs them once a
///   second, which took back 5.5-7.3 MB of that (RELIABILITY.md, 2026-12-07).
pub const PURGE_DELAY_MS: std::os::raw::c_long = 250;

/// Sets mimalloc's options for this process: the purge delay above, unless
/// `MIMALLOC_PURGE_DELAY` is set (it still wins).
pub fn tune() {
    #[cfg(not(feature = "system-allocator"))]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer in mimalloc's option table; valid at any time.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        };
    }
}

/// [`tune`], then [`purge_expired`] on the current tokio runtime: what each binary calls first
/// thing in its `main`.
pub fn start() {
    tune();
    tokio::spawn(purge_expired());
}

/// How often [`purge_expired`] runs mimalloc's due purges.
pub const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs mimalloc's due purges every [`PURGE_EVERY`], forever. A delayed purge otherwise runs
/// only when the allocator is next called, and a server gone idle after a burst (an outage's
/// drain) hardly calls it: with the delay of 250 ms, RSS stayed 10-16 MB above the delay of
/// 0 for as long as it was idle (RELIABILITY.md). Once per process, through [`start`].
pub async fn purge_expired() {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(not(feature = "system-allocator"))]
        // SAFETY: mi_collect may be called from any thread at any time. Not forced: it only
        // gives back what has waited the purge delay, and frees this thread's empty pages.
        unsafe {
            libmimalloc_sys::mi_collect(false);
        }
    }
}

#[cfg(all(test, not(feature = "system-allocator")))]
mod tests {
    use super::{MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS};

    /// Index 15 is the purge delay: the only option whose default is 1000 (ms) in mimalloc v3,
    /// and it reads back what `mi_option_set` wrote. Fails if an upgrade renumbers the enum.
    #[test]
    fn purge_delay_is_option_15() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and writes one integer in mimalloc's option table.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            super::tune();
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                PURGE_DELAY_MS
            );
        }
    }
}
