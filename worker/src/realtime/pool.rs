//! The decode pool shared by every realtime session of a worker: a fixed
//! number of decoding threads (their Whisper threads together at most the
//! cores), one queue, and [`pick_next`] choosing what runs: finals first,
//! then the partial of the session furthest behind; partials of sessions
//! too far behind are shed (answered [`Decoded::Shed`]) so a loaded worker
//! falls back to finals only instead of falling further behind.
//!
//! The decode itself is a function given to [`DecodePool::start`], so the
//! scheduling is tested here without a model.

use super::policy::{pick_next, Action, Pending, Word};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// One decode asked for by a session.
pub struct Request {
    pub session: u64,
    pub action: Action,
    /// 16 kHz audio: the session's buffer when the decode was asked for.
    pub window: Vec<f32>,
    pub language: String,
    /// The text committed before the window (conditions the decoder).
    pub prompt: Option<String>,
    /// How far behind real time the session is, in ms.
    pub lag_ms: i64,
}

/// What became of a request.
#[derive(Debug)]
pub enum Decoded {
    Words {
        words: Vec<Word>,
        /// Time in the queue and decoding, for the session's lag.
        queued_ms: u64,
        decode_ms: u64,
    },
    /// A partial dropped because its session is too far behind.
    Shed,
    /// Not decoded: a speculative decode's words, adopted as the final.
    Speculated(Vec<Word>),
    Failed(String),
}

pub type DecodeFn = dyn Fn(&Request) -> Result<Vec<Word>, String> + Send + Sync;

struct Queued {
    request: Request,
    at: Instant,
    reply: oneshot::Sender<Decoded>,
}

struct Shared {
    queue: Mutex<(Vec<Queued>, bool)>,
    ready: Condvar,
    epoch: Instant,
    shed_ms: i64,
}

pub struct DecodePool {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl DecodePool {
    /// `decoders` threads running `decode`; partials of sessions more than
    /// `shed_ms` behind are shed.
    pub fn start(decoders: usize, shed_ms: i64, decode: Arc<DecodeFn>) -> DecodePool {
        let shared = Arc::new(Shared {
            queue: Mutex::new((Vec::new(), false)),
            ready: Condvar::new(),
            epoch: Instant::now(),
            shed_ms,
        });
        let threads = (0..decoders.max(1))
            .map(|i| {
                let shared = shared.clone();
                let decode = decode.clone();
                std::thread::Builder::new()
                    .name(format!("s2t-decode-{i}"))
                    .spawn(move || decode_loop(&shared, &*decode))
                    .expect("spawn a decode thread")
            })
            .collect();
        DecodePool { shared, threads }
    }

    /// Queue a decode; the answer arrives on the returned receiver.
    pub fn submit(&self, request: Request) -> oneshot::Receiver<Decoded> {
        let (reply, answer) = oneshot::channel();
        let mut q = self.shared.queue.lock().expect("decode queue");
        q.0.push(Queued {
            request,
            at: Instant::now(),
            reply,
        });
        drop(q);
        self.shared.ready.notify_one();
        answer
    }

    /// Decodes waiting (not running).
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().expect("decode queue").0.len()
    }
}

impl Drop for DecodePool {
    fn drop(&mut self) {
        self.shared.queue.lock().expect("decode queue").1 = true;
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn decode_loop(shared: &Shared, decode: &DecodeFn) {
    loop {
        let job = {
            let mut q = shared.queue.lock().expect("decode queue");
            loop {
                if q.1 {
                    return;
                }
                if !q.0.is_empty() {
                    break;
                }
                q = shared.ready.wait(q).expect("decode queue");
            }
            let pending: Vec<Pending> =
                q.0.iter()
                    .map(|j| Pending {
                        session: j.request.session,
                        // A speculative final may be shed like a partial: the
                        // final itself is then decoded.
                        is_final: matches!(j.request.action, Action::Final { .. }),
                        lag_ms: j.request.lag_ms + j.at.elapsed().as_millis() as i64,
                        queued_ms: j.at.duration_since(shared.epoch).as_millis() as i64,
                    })
                    .collect();
            let (next, shed) = pick_next(&pending, shared.shed_ms);
            // Remove from the back so the indices stay valid.
            let mut take: Vec<usize> = shed.iter().copied().chain(next).collect();
            take.sort_unstable();
            take.dedup();
            let mut chosen = None;
            for i in take.into_iter().rev() {
                let job = q.0.swap_remove(i);
                if Some(i) == next {
                    chosen = Some(job);
                } else {
                    let _ = job.reply.send(Decoded::Shed);
                }
            }
            chosen
        };
        let Some(job) = job else { continue };
        let queued_ms = job.at.elapsed().as_millis() as u64;
        let began = Instant::now();
        let result = decode(&job.request);
        let decode_ms = began.elapsed().as_millis() as u64;
        let _ = job.reply.send(match result {
            Ok(words) => Decoded::Words {
                words,
                queued_ms,
                decode_ms,
            },
            Err(e) => Decoded::Failed(e),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn request(session: u64, action: Action, lag_ms: i64) -> Request {
        Request {
            session,
            action,
            window: vec![0.0; 16],
            language: "en".into(),
            prompt: None,
            lag_ms,
        }
    }

    #[test]
    fn while_one_decode_runs_a_final_overtakes_partials_and_partials_far_behind_are_shed() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let order = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(AtomicBool::new(false));
        let (g, o, s) = (gate.clone(), order.clone(), started.clone());
        let pool = DecodePool::start(
            1,
            3_000,
            Arc::new(move |r: &Request| {
                s.store(true, Ordering::SeqCst);
                // The first decode waits until everything else is queued.
                let mut open = g.0.lock().unwrap();
                while !*open {
                    open = g.1.wait(open).unwrap();
                }
                o.lock().unwrap().push(r.session);
                Ok(vec![Word {
                    text: format!("s{}", r.session),
                    start_ms: 0,
                    end_ms: 1,
                    probability: 1.0,
                }])
            }),
        );
        let first = pool.submit(request(1, Action::Partial, 0));
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let partial_near = pool.submit(request(2, Action::Partial, 500));
        let partial_far = pool.submit(request(3, Action::Partial, 10_000));
        let final_ = pool.submit(request(
            4,
            Action::Final {
                end_of_speech: true,
            },
            20_000,
        ));
        assert_eq!(pool.queued(), 3);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(first.await.unwrap(), Decoded::Words { .. }));
            assert!(matches!(final_.await.unwrap(), Decoded::Words { .. }));
            assert!(matches!(partial_far.await.unwrap(), Decoded::Shed));
            match partial_near.await.unwrap() {
                Decoded::Words { words, .. } => assert_eq!(words[0].text, "s2"),
                other => panic!("{other:?}"),
            }
        });
        assert_eq!(*order.lock().unwrap(), vec![1, 4, 2]);
    }

    #[test]
    fn a_failed_decode_is_reported_and_the_pool_goes_on() {
        let pool = DecodePool::start(
            2,
            3_000,
            Arc::new(|r: &Request| {
                if r.session == 1 {
                    Err("whisper failed".into())
                } else {
                    Ok(Vec::new())
                }
            }),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let bad = pool.submit(request(1, Action::Partial, 0)).await.unwrap();
            assert!(matches!(bad, Decoded::Failed(ref m) if m == "whisper failed"));
            let good = pool.submit(request(2, Action::Partial, 0)).await.unwrap();
            assert!(matches!(good, Decoded::Words { ref words, .. } if words.is_empty()));
        });
        drop(pool);
    }
}
