//! The current task's `task_work` list (`kernel/task_work.c`): callbacks queued by
//! `task_work_add()` and run by `task_work_run()` on the way back to user space. The last
//! `fput()` of a file queues its release here, as the kernel's `____fput` does, so the window
//! between the refcount reaching zero and `->release()` exists in the simulator and loom can
//! schedule other threads into it.
//!
//! Per thread: `std::thread_local!`, or `loom::thread_local!` under loom (loom model threads are
//! coroutines on one OS thread, so a std thread-local would be shared between them).
//! Not modelled: `exit_task_work()`; work still queued when a thread exits is dropped unrun (and
//! logged), so the simulator's syscall-return path must call [`task_work_run`].

use std::cell::RefCell;
use std::collections::VecDeque;

type Work = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue(VecDeque<Work>);

impl Drop for Queue {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            tracing::warn!(
                pending = self.0.len(),
                "thread exited with task_work queued; it is dropped without running"
            );
        }
    }
}

#[cfg(not(gmem_loom))]
std::thread_local! {
    static TASK_WORK: RefCell<Queue> = RefCell::new(Queue::default());
}

#[cfg(gmem_loom)]
loom::thread_local! {
    static TASK_WORK: RefCell<Queue> = RefCell::new(Queue::default());
}

/// `task_work_add(current, work, TWA_RESUME)`: defers `work` until the current task next returns
/// to user space (the next [`task_work_run`] on this thread).
pub fn task_work_add(work: Box<dyn FnOnce() + Send>) {
    TASK_WORK.with(|q| q.borrow_mut().0.push_back(work));
}

/// `task_work_run()`: runs queued work in FIFO order, including work queued while running,
/// until the queue is empty; returns how many items ran.
pub fn task_work_run() -> usize {
    let mut ran = 0;
    // The borrow is released before each item runs, so items may queue more work.
    while let Some(work) = TASK_WORK.with(|q| q.borrow_mut().0.pop_front()) {
        work();
        ran += 1;
    }
    ran
}

/// How many items are queued on the current thread (tests check that an fput deferred its
/// release).
pub fn task_work_pending() -> usize {
    TASK_WORK.with(|q| q.borrow().0.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arc;
    use std::sync::Mutex as StdMutex;

    #[test]
    fn fifo_nested_and_pending() {
        crate::check(|| {
            let log = Arc::new(StdMutex::new(Vec::new()));
            assert_eq!(task_work_pending(), 0);
            assert_eq!(task_work_run(), 0);
            for i in 0..3 {
                let log = Arc::clone(&log);
                task_work_add(Box::new(move || {
                    log.lock().unwrap().push(i);
                    if i == 1 {
                        let log = Arc::clone(&log);
                        task_work_add(Box::new(move || log.lock().unwrap().push(10)));
                    }
                }));
            }
            assert_eq!(task_work_pending(), 3);
            assert!(log.lock().unwrap().is_empty(), "work ran before task_work_run");
            assert_eq!(task_work_run(), 4);
            assert_eq!(*log.lock().unwrap(), [0, 1, 2, 10]);
            assert_eq!(task_work_pending(), 0);
        });
    }

    #[cfg(not(gmem_loom))]
    #[test]
    fn per_thread() {
        task_work_add(Box::new(|| {}));
        let other = std::thread::spawn(task_work_pending).join().unwrap();
        assert_eq!(other, 0);
        assert_eq!(task_work_pending(), 1);
        assert_eq!(task_work_run(), 1);
    }
}
