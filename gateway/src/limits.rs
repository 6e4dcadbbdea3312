//! Bounds on work a flood of requests could pile up: password hashing
//! (argon2id needs 19 MiB and tens of milliseconds per call) and uploads in
//! flight per user (each holds a spool file and, later, a connection).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Password hashing and verifying, at most `permits` at a time. A request
/// that cannot start within `wait` is turned away ([`Busy`]) rather than
/// queued without end: an unbounded queue of logins is unbounded memory and
/// answers that come too late to matter.
#[derive(Debug, Clone)]
pub struct Hashing {
    permits: Arc<Semaphore>,
    wait: Duration,
}

/// No hashing slot came free in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing is saturated")]
pub struct Busy;

impl Hashing {
    /// `permits == 0` means one per core: argon2 is CPU-bound, so more at
    /// once only adds memory.
    pub fn new(permits: usize, wait: Duration) -> Hashing {
        let permits = if permits == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            permits
        };
        Hashing {
            permits: Arc::new(Semaphore::new(permits)),
            wait,
        }
    }

    /// Run `work` on the blocking pool once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .expect("the hashing semaphore is never closed");
        let done = tokio::task::spawn_blocking(move || {
            // Held until the hash is done, even if the request went away.
            let _permit = permit;
            work()
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Ok(done)
    }
}

/// Uploads in flight per user.
#[derive(Debug, Clone)]
pub struct UploadSlots {
    max: usize,
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// One upload's slot; given back when dropped, however the upload ends.
#[derive(Debug)]
pub struct UploadSlot {
    user: Uuid,
    counts: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("upload slots lock");
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

impl UploadSlots {
    pub fn new(max: usize) -> UploadSlots {
        UploadSlots {
            max: max.max(1),
            counts: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for `user`, or `None` when they already have `max` uploads
    /// in flight.
    pub fn acquire(&self, user: Uuid) -> Option<UploadSlot> {
        let mut counts = self.counts.lock().expect("upload slots lock");
        let n = counts.entry(user).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(UploadSlot {
            user,
            counts: self.counts.clone(),
        })
    }

    /// Users with an upload in flight (the map holds no one else).
    pub fn users(&self) -> usize {
        self.counts.lock().expect("upload slots lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_slots_are_per_user_and_come_back() {
        let slots = UploadSlots::new(2);
        let (ann, bo) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = slots.acquire(ann).unwrap();
        let a2 = slots.acquire(ann).unwrap();
        assert!(slots.acquire(ann).is_none(), "a third for ann is refused");
        let b1 = slots.acquire(bo).expect("bo has his own");
        drop(a1);
        let a3 = slots.acquire(ann).expect("a slot came back");
        drop((a2, a3, b1));
        assert_eq!(slots.users(), 0, "no entries left behind");
    }

    #[tokio::test]
    async fn hashing_turns_requests_away_when_saturated() {
        let h = Hashing::new(1, Duration::from_millis(50));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let busy = h.clone();
        let first = tokio::spawn(async move {
            busy.run(move || {
                wait.recv().ok();
                1
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(h.run(|| 2).await, Err(Busy), "the only slot is taken");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(h.run(|| 3).await, Ok(3), "free again");
    }
}
