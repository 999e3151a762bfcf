//! A team of worker threads for splitting one kernel, built for latency:
//! the calling thread runs part 0 itself, each worker runs one other part,
//! and workers spin on an atomic between jobs for a while before they
//! sleep, so a kernel launched right after another starts without a
//! wake-up. On the 2-vCPU machine this was built on, a rayon scope with two
//! empty tasks took 21 us (59 us after a 200 us pause): more than many
//! whole kernels. The team here hands out a job in about a microsecond
//! while its workers spin.
//!
//! One team serves the process; a caller that finds it busy (another
//! session running on another thread) runs every part itself.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: long enough to span
/// a model's unsplit kernels between two split ones. At 300 us the
/// workers slept inside MobileNet-V2's runs and paid a wake-up (tens of
/// microseconds on this VM) at most split kernels: its batch-1 run on two
/// threads took 19.0-19.4 ms, against 13.6-13.9 ms at 3 ms (Zen 1,
/// `kiln bench ... --threads 2`; LSTM b8 3.37 -> 2.68 ms).
const SPIN: Duration = Duration::from_micros(3000);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped for every job.
    epoch: AtomicU64,
    /// The current job and its part count (valid while `pending` > 0).
    job: UnsafeCell<(Job, usize)>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// Workers asleep (or about to be) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    quit: AtomicBool,
}

// SAFETY: `job` is written only by the team's owner while no worker reads
// it (pending == 0), then published by the release store of `epoch`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// Worker threads plus the caller; see the module docs.
pub struct Team {
    shared: Arc<Shared>,
    workers: usize,
    /// Held by the caller running a job.
    busy: Mutex<()>,
}

impl Team {
    fn new(workers: usize) -> Team {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new((std::ptr::null::<fn(usize)>() as Job, 0)),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            quit: AtomicBool::new(false),
        });
        let mut started = 0;
        for w in 0..workers {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kiln-worker-{}", w + 1))
                .spawn(move || worker(&s, w + 1));
            if spawned.is_err() {
                break;
            }
            started += 1;
        }
        Team {
            shared,
            workers: started,
            busy: Mutex::new(()),
        }
    }

    /// The process's team: one worker fewer than the available cores.
    pub fn global() -> &'static Team {
        static TEAM: OnceLock<Team> = OnceLock::new();
        TEAM.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Team::new(cores.saturating_sub(1))
        })
    }

    /// Threads a job can use (workers plus the caller).
    pub fn size(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(0)`, ..., `f(parts - 1)`, part 0 on the calling thread and
    /// the others on workers, and returns when all are done. With more
    /// parts than threads, or the team busy, the caller runs the rest.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        if parts <= 1 || self.workers == 0 {
            (0..parts).for_each(f);
            return;
        }
        let Ok(_guard) = self.busy.try_lock() else {
            (0..parts).for_each(f);
            return;
        };
        let s = &*self.shared;
        // SAFETY: no worker reads `job` until the epoch moves (below), and
        // every worker finished the last job (pending was 0).
        unsafe {
            // The borrow outlives the job: this call waits for every part.
            let job = std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(f);
            *s.job.get() = (job, parts);
        }
        s.pending.store(self.workers, Ordering::Relaxed);
        // SeqCst with the load of `sleepers`: either this sees a sleeper or
        // the sleeper sees the new epoch.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        f(0);
        // Parts beyond the team's size run here too.
        (self.size()..parts).for_each(f);
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        let _l = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for the next job: spin, then sleep.
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.quit.load(Ordering::Relaxed) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) || started.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            while s.epoch.load(Ordering::SeqCst) == seen && !s.quit.load(Ordering::SeqCst) {
                l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
            }
            drop(l);
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        // SAFETY: the epoch's acquire load published the job, which stays
        // alive until `pending` reaches 0.
        let (f, parts) = unsafe { *s.job.get() };
        if index < parts {
            // SAFETY: as above.
            unsafe { (*f)(index) };
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once() {
        let team = Team::new(3);
        for parts in [0, 1, 2, 4, 7] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..100 {
                team.run(parts, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 100));
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let team = Team::new(1);
        let n = AtomicUsize::new(0);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            team.run(2, &|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(n.load(Ordering::Relaxed), 6);
    }
}
