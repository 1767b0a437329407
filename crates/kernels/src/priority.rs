//! The engine's threads run at a lower scheduling priority than the server.
//!
//! A generation keeps every core busy for seconds to minutes; at equal
//! priority the HTTP and MCP handlers queue behind tensor work, and a
//! status poll's tail latency becomes the scheduler's time slice. With the
//! engine's threads niced (Linux), the kernel runs the server's threads
//! first whenever they are ready, and the engine still gets every cycle the
//! server leaves idle. `SCHED_IDLE` goes further: a server thread that
//! wakes takes the core at once (measured during a generation, 16
//! connections: status p99 4.8-5.7 -> 2.9-3.7 ms), but then any other busy
//! process on the machine stalls generations too, so it is a choice
//! (`[engine] idle_priority`), not the default. Elsewhere than Linux this
//! is a no-op.

use std::cell::Cell;

/// How far below the server the engine's threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadPriority {
    /// A niceness, 0–19.
    Nice(i32),
    /// Linux's `SCHED_IDLE` policy.
    Idle,
}

/// Sets the compute pool's threads (rayon's global pool, which candle, the
/// GEMM and our kernels share) to `priority` as they start. Returns false
/// when the pool was already built (by an earlier generator in this
/// process, or by a tensor operation): its threads keep the priority they
/// had.
pub fn lower_pool_priority(priority: ThreadPriority) -> bool {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("engine-compute-{i}"))
        .start_handler(move |_| set_current_thread_priority(priority))
        .build_global()
        .is_ok()
}

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Sets the calling thread to `priority`, once per thread. Threads it
/// starts later inherit it (candle's own worker pool among them).
pub fn lower_current_thread_priority(priority: ThreadPriority) {
    if !LOWERED.with(|done| done.replace(true)) {
        set_current_thread_priority(priority);
    }
}

#[cfg(target_os = "linux")]
fn set_current_thread_priority(priority: ThreadPriority) {
    // Lowering needs no privilege; a failure leaves the thread as it was.
    // SAFETY: plain system calls on the calling thread's own id.
    unsafe {
        match priority {
            ThreadPriority::Nice(nice) => {
                // PRIO_PROCESS with a thread id sets that one thread.
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, nice);
            }
            ThreadPriority::Idle => {
                // Pid 0: the calling thread only.
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set_current_thread_priority(_priority: ThreadPriority) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn current_nice() -> i32 {
        // SAFETY: reads the calling thread's own priority.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[test]
    fn lowers_the_calling_thread_only() {
        let before = current_nice();
        let niced = std::thread::spawn(move || {
            lower_current_thread_priority(ThreadPriority::Nice(before + 5));
            current_nice()
        })
        .join()
        .unwrap();
        assert_eq!(niced, (before + 5).min(19));
        assert_eq!(current_nice(), before);
    }

    #[test]
    fn idle_policy_applies_to_the_calling_thread_only() {
        // SAFETY: reads the calling thread's own policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let lowered = std::thread::spawn(move || {
            lower_current_thread_priority(ThreadPriority::Idle);
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, libc::SCHED_IDLE);
        assert_eq!(policy(), before);
    }
}
