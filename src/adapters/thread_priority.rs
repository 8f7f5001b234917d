//! Lowering the calling thread's CPU priority, for work that must yield to ingest when the CPU
//! is short: the tap's watchers and the embedded store's background writes. Linux schedules
//! threads, not processes, so this touches the calling thread alone.

/// Puts the calling thread at `nice` (0 to 19; 19 weighs 15 against a normal thread's 1024).
/// Raising a thread's nice needs no privilege.
///
/// # Errors
/// The system's, when it refuses.
pub(crate) fn nice_this_thread(nice: i32) -> std::io::Result<()> {
    // SAFETY: plain system calls on the calling thread's own id.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Puts the calling thread in the idle class (`SCHED_IDLE`): it runs only on CPU no other
/// thread wants, and any other thread that wakes takes its CPU at once.
///
/// # Errors
/// The system's, when it refuses.
pub(crate) fn idle_this_thread() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on the calling thread (0: itself); `param` outlives it.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's nice value.
#[cfg(test)]
pub(crate) fn this_threads_nice() -> i32 {
    // SAFETY: as above; `getpriority` may return -1 legitimately, so errno is cleared first.
    unsafe {
        *libc::__errno_location() = 0;
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_and_no_other() {
        let before = this_threads_nice();
        let lowered = std::thread::spawn(|| {
            nice_this_thread(19).unwrap();
            this_threads_nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, 19);
        assert_eq!(
            this_threads_nice(),
            before,
            "the caller's thread is untouched"
        );
    }
}
