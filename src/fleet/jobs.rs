//! Running one operation per process, at most N at a time.
//!
//! ptrace requests are only valid from the thread that attached (DESIGN.md), so each process's
//! whole operation — seize, remote calls, freeze, write, detach — runs on one worker thread from
//! start to end; workers take the next process when they are done with one. Processes are
//! independent: one failing neither stops nor undoes the others.

use crate::log::Log;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `work` on every item with at most `jobs` worker threads and returns the results in the
/// items' order. Each worker gets its own [`Log`] (see [`Log::for_worker`]).
pub fn run_each<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    log: &Log,
    work: impl Fn(&T, &Log) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    let workers = jobs.clamp(1, items.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let log = log.for_worker();
            let (next, results, work) = (&next, &results, &work);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = work(item, &log);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every item was run"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn runs_every_item_once_in_order_and_bounds_parallelism() {
        let items: Vec<u32> = (0..40).collect();
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let threads = Mutex::new(HashSet::new());
        let out = run_each(&items, 3, &Log::quiet(), |&i, _| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            threads.lock().unwrap().insert(std::thread::current().id());
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(threads.lock().unwrap().len() <= 3);
        assert!(run_each(&[] as &[u32], 4, &Log::quiet(), |&i, _| i).is_empty());
    }
}
