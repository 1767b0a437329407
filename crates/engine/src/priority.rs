//! The engine's threads run at a lower scheduling priority than the server.
//!
//! A generation keeps every core busy for seconds to minutes; at equal
//! priority the HTTP and MCP handlers queue behind tensor work, and a
//! status poll's tail latency becomes the scheduler's time slice. With the
//! engine's threads niced (Linux), the kernel runs the server's threads
//! first whenever they are ready, and the engine still gets every cycle the
//! server leaves idle. Elsewhere this is a no-op.

use std::cell::Cell;

/// Sets the compute pool's threads (rayon's global pool, which candle, the
/// GEMM and our kernels share) to `nice` as they start. Returns false when
/// the pool was already built (by an earlier generator in this process, or
/// by a tensor operation): its threads keep the priority they had.
pub fn lower_pool_priority(nice: i32) -> bool {
    rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("engine-compute-{i}"))
        .start_handler(move |_| set_current_thread_nice(nice))
        .build_global()
        .is_ok()
}

thread_local! {
    static NICED: Cell<bool> = const { Cell::new(false) };
}

/// Sets the calling thread to `nice`, once per thread.
pub fn lower_current_thread_priority(nice: i32) {
    if !NICED.with(|done| done.replace(true)) {
        set_current_thread_nice(nice);
    }
}

#[cfg(target_os = "linux")]
fn set_current_thread_nice(nice: i32) {
    // On Linux, PRIO_PROCESS with a thread id sets that one thread. Raising
    // the value needs no privilege; a failure leaves the thread as it was.
    // SAFETY: plain system calls on the calling thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

#[cfg(not(target_os = "linux"))]
fn set_current_thread_nice(_nice: i32) {}

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
            lower_current_thread_priority(before + 5);
            current_nice()
        })
        .join()
        .unwrap();
        assert_eq!(niced, (before + 5).min(19));
        assert_eq!(current_nice(), before);
    }
}
