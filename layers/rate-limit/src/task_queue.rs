//! The queue of a limiter's background task (the exact-mode batcher, the lease renewals).
//!
//! The task starts on first use, on the caller's runtime. A limiter may outlive that runtime
//! (a test suite sharing it across `#[tokio::test]`s, a program that warms up on one runtime
//! and serves on another): the task then ended with it, and the next item sent starts a new
//! one on the sender's runtime instead of being lost.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

pub(crate) struct TaskQueue<T> {
    sender: ArcSwapOption<UnboundedSender<T>>,
    /// Held while a task starts, so that two senders do not start two.
    starting: Mutex<()>,
}

impl<T: Send + 'static> TaskQueue<T> {
    pub(crate) fn new() -> Self {
        TaskQueue {
            sender: ArcSwapOption::empty(),
            starting: Mutex::new(()),
        }
    }

    /// Sends `item` to the task, started first with `start` (on the current runtime) when
    /// there is none yet or its runtime shut down. Hands `item` back outside a runtime.
    pub(crate) fn send(&self, item: T, start: impl FnOnce(UnboundedReceiver<T>)) -> Result<(), T> {
        let item = match self.try_send(item) {
            Ok(()) => return Ok(()),
            Err(item) => item,
        };
        self.start_and_send(item, start)
    }

    #[inline]
    fn try_send(&self, item: T) -> Result<(), T> {
        match &*self.sender.load() {
            Some(tx) => tx.send(item).map_err(|unsent| unsent.0),
            None => Err(item),
        }
    }

    #[cold]
    fn start_and_send(&self, item: T, start: impl FnOnce(UnboundedReceiver<T>)) -> Result<(), T> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(item);
        }
        let _one = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        // Another sender may have started it meanwhile.
        let item = match self.try_send(item) {
            Ok(()) => return Ok(()),
            Err(item) => item,
        };
        let (tx, rx) = unbounded_channel();
        start(rx);
        let sent = tx.send(item).map_err(|unsent| unsent.0);
        self.sender.store(Some(Arc::new(tx)));
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that answers each item on the channel it carries.
    fn echo(mut rx: UnboundedReceiver<std::sync::mpsc::Sender<u32>>) {
        tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(1);
            }
        });
    }

    #[test]
    fn a_task_is_started_again_on_the_next_runtime() {
        let queue = TaskQueue::new();
        let (reply, answers) = std::sync::mpsc::channel();
        assert!(queue.send(reply.clone(), echo).is_err(), "no runtime");
        let mut starts = 0;
        for _ in 0..2 {
            let rt = omega_testkit::runtime();
            rt.block_on(async {
                for _ in 0..3 {
                    queue
                        .send(reply.clone(), |rx| {
                            starts += 1;
                            echo(rx)
                        })
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            });
        }
        assert_eq!(starts, 2, "one task per runtime");
        assert_eq!(answers.try_iter().count(), 6, "every item answered");
    }
}
