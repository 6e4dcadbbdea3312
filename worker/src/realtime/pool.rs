//! The decode pool shared by every realtime session of a worker: a fixed
//! number of decoding threads (their Whisper threads together at most the
//! cores), one queue, and [`pick_next`] choosing what runs: finals first,
//! then the partial of the session furthest behind; partials of sessions
//! too far behind are shed (answered [`Decoded::Shed`]) so a loaded worker
//! falls back to finals only instead of falling further behind. A final
//! that would wait because every decoder is busy cancels the newest running
//! partial ([`preempt`]), so a final waits only for other finals and
//! speculations, and while finals wait they are decoded greedily
//! ([`greedy_when_behind`]) so the backlog drains faster.
//!
//! The decode itself is a function given to [`DecodePool::start`], so the
//! scheduling is tested here without a model.

use super::policy::{greedy_when_behind, pick_next, preempt, Action, Pending, Running, Word};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Set by the pool when a final or speculation starts while the pool is
    /// behind ([`greedy_when_behind`]): decode it greedily.
    pub greedy: bool,
}

/// What became of a request.
#[derive(Debug)]
pub enum Decoded {
    Words {
        words: Vec<Word>,
        /// Time in the queue and decoding, for the session's lag.
        queued_ms: u64,
        decode_ms: u64,
        /// Decoded greedily because the pool was behind.
        greedy: bool,
    },
    /// A partial dropped because its session is too far behind.
    Shed,
    /// Not decoded: a speculative decode's words, adopted as the final.
    Speculated(Vec<Word>),
    Failed(String),
}

/// Decodes one request; the flag is set when the pool cancels it (the
/// decode should stop soon, and its answer is then [`Decoded::Shed`]).
pub type DecodeFn = dyn Fn(&Request, &Arc<AtomicBool>) -> Result<Vec<Word>, String> + Send + Sync;

struct Queued {
    request: Request,
    at: Instant,
    reply: oneshot::Sender<Decoded>,
}

/// A decode in progress.
struct Slot {
    partial: bool,
    started_ms: i64,
    cancel: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    queue: Vec<Queued>,
    closed: bool,
    running: Vec<Slot>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    epoch: Instant,
    shed_ms: i64,
    decoders: usize,
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
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            epoch: Instant::now(),
            shed_ms,
            decoders: decoders.max(1),
        });
        let threads = (0..shared.decoders)
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
        let is_final = matches!(request.action, Action::Final { .. });
        let mut st = self.shared.state.lock().expect("decode queue");
        st.queue.push(Queued {
            request,
            at: Instant::now(),
            reply,
        });
        if is_final {
            let waiting = st
                .queue
                .iter()
                .filter(|j| matches!(j.request.action, Action::Final { .. }))
                .count();
            let idle = self.shared.decoders.saturating_sub(st.running.len());
            let running: Vec<Running> = st
                .running
                .iter()
                .map(|r| Running {
                    partial: r.partial,
                    started_ms: r.started_ms,
                    cancelled: r.cancel.load(Ordering::Relaxed),
                })
                .collect();
            for i in preempt(waiting, idle, &running) {
                st.running[i].cancel.store(true, Ordering::Relaxed);
            }
        }
        drop(st);
        self.shared.ready.notify_one();
        answer
    }

    /// Decodes waiting (not running).
    pub fn queued(&self) -> usize {
        self.shared.state.lock().expect("decode queue").queue.len()
    }
}

impl Drop for DecodePool {
    fn drop(&mut self) {
        self.shared.state.lock().expect("decode queue").closed = true;
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn decode_loop(shared: &Shared, decode: &DecodeFn) {
    loop {
        let job = {
            let mut q = shared.state.lock().expect("decode queue");
            loop {
                if q.closed {
                    return;
                }
                if !q.queue.is_empty() {
                    break;
                }
                q = shared.ready.wait(q).expect("decode queue");
            }
            let pending: Vec<Pending> = q
                .queue
                .iter()
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
                let job = q.queue.swap_remove(i);
                if Some(i) == next {
                    chosen = Some(job);
                } else {
                    let _ = job.reply.send(Decoded::Shed);
                }
            }
            chosen.map(|mut job| {
                if job.request.action != Action::Partial {
                    let others = q
                        .queue
                        .iter()
                        .filter(|j| j.request.action != Action::Partial)
                        .count();
                    let waited = job.at.elapsed().as_millis() as i64;
                    job.request.greedy = greedy_when_behind(others, waited);
                }
                let cancel = Arc::new(AtomicBool::new(false));
                q.running.push(Slot {
                    partial: job.request.action == Action::Partial,
                    started_ms: shared.epoch.elapsed().as_millis() as i64,
                    cancel: cancel.clone(),
                });
                (job, cancel)
            })
        };
        let Some((job, cancel)) = job else { continue };
        let queued_ms = job.at.elapsed().as_millis() as u64;
        let began = Instant::now();
        let result = decode(&job.request, &cancel);
        let decode_ms = began.elapsed().as_millis() as u64;
        {
            let mut q = shared.state.lock().expect("decode queue");
            q.running.retain(|r| !Arc::ptr_eq(&r.cancel, &cancel));
        }
        if cancel.load(Ordering::Relaxed) {
            let _ = job.reply.send(Decoded::Shed);
            continue;
        }
        let _ = job.reply.send(match result {
            Ok(words) => Decoded::Words {
                words,
                queued_ms,
                decode_ms,
                greedy: job.request.greedy,
            },
            Err(e) => Decoded::Failed(e),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds every decode until opened, and tells when one has started.
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<bool>, Condvar, AtomicBool)>);

    impl Gate {
        /// In a decode: mark it started, then wait until the gate is open.
        fn pass(&self) {
            self.0 .2.store(true, Ordering::SeqCst);
            let mut open = self.0 .0.lock().unwrap();
            while !*open {
                open = self.0 .1.wait(open).unwrap();
            }
        }
        fn wait_started(&self) {
            while !self.0 .2.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
        fn set(&self, open: bool) {
            *self.0 .0.lock().unwrap() = open;
            if !open {
                self.0 .2.store(false, Ordering::SeqCst);
            }
            self.0 .1.notify_all();
        }
    }

    fn request(session: u64, action: Action, lag_ms: i64) -> Request {
        Request {
            session,
            action,
            window: vec![0.0; 16],
            language: "en".into(),
            prompt: None,
            lag_ms,
            greedy: false,
        }
    }

    #[test]
    fn while_one_decode_runs_a_final_overtakes_partials_and_partials_far_behind_are_shed() {
        let gate = Gate::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (g, o) = (gate.clone(), order.clone());
        let pool = DecodePool::start(
            1,
            3_000,
            Arc::new(move |r: &Request, _: &Arc<AtomicBool>| {
                // The first decode waits until everything else is queued.
                g.pass();
                o.lock().unwrap().push(r.session);
                Ok(vec![Word {
                    text: format!("s{}", r.session),
                    start_ms: 0,
                    end_ms: 1,
                    probability: 1.0,
                }])
            }),
        );
        // A speculation, which a final does not cancel.
        let first = pool.submit(request(1, Action::Speculate, 0));
        gate.wait_started();
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
        gate.set(true);
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
            Arc::new(|r: &Request, _: &Arc<AtomicBool>| {
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

    #[test]
    fn a_final_cancels_the_running_partial_instead_of_waiting_behind_it() {
        let pool = DecodePool::start(
            1,
            3_000,
            Arc::new(|r: &Request, cancel: &Arc<AtomicBool>| {
                if r.action == Action::Partial {
                    // A long partial: runs until cancelled (or 30 s).
                    let began = Instant::now();
                    while !cancel.load(Ordering::Relaxed) {
                        assert!(
                            began.elapsed().as_secs() < 30,
                            "the partial was never cancelled"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                Ok(vec![Word {
                    text: format!("s{}", r.session),
                    start_ms: 0,
                    end_ms: 1,
                    probability: 1.0,
                }])
            }),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let partial = pool.submit(request(1, Action::Partial, 0));
            // Let the partial start before the final comes.
            while pool.queued() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let final_ = pool.submit(request(
                2,
                Action::Final {
                    end_of_speech: true,
                },
                0,
            ));
            assert!(matches!(partial.await.unwrap(), Decoded::Shed));
            match final_.await.unwrap() {
                Decoded::Words { words, .. } => assert_eq!(words[0].text, "s2"),
                other => panic!("{other:?}"),
            }
            // A speculation is not cancelled by a final: it runs to its end.
            let spec = pool.submit(request(3, Action::Speculate, 0));
            let again = pool.submit(request(
                4,
                Action::Final {
                    end_of_speech: true,
                },
                0,
            ));
            assert!(matches!(spec.await.unwrap(), Decoded::Words { .. }));
            assert!(matches!(again.await.unwrap(), Decoded::Words { .. }));
        });
    }

    #[test]
    fn finals_waiting_behind_finals_are_decoded_greedily_and_a_lone_final_keeps_the_beam() {
        let gate = Gate::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (g, o) = (gate.clone(), seen.clone());
        let pool = DecodePool::start(
            1,
            3_000,
            Arc::new(move |r: &Request, _: &Arc<AtomicBool>| {
                g.pass();
                o.lock().unwrap().push((r.session, r.greedy));
                Ok(Vec::new())
            }),
        );
        let fin = |session| {
            request(
                session,
                Action::Final {
                    end_of_speech: true,
                },
                0,
            )
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = pool.submit(fin(1));
        gate.wait_started();
        let second = pool.submit(fin(2));
        let partial = pool.submit(request(9, Action::Partial, 0));
        let third = pool.submit(fin(3));
        gate.set(true);
        rt.block_on(async {
            for answer in [first, second, third, partial] {
                assert!(matches!(answer.await.unwrap(), Decoded::Words { .. }));
            }
        });
        // The first started with nothing waiting; the second with the third
        // behind it; the third alone and soon; a partial is greedy anyway.
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, false), (2, true), (3, false), (9, false)]
        );
        // Once it has waited long enough, even a lone final is greedy.
        gate.set(false);
        let blocker = pool.submit(request(7, Action::Partial, 0));
        gate.wait_started();
        let late = pool.submit(fin(8));
        std::thread::sleep(std::time::Duration::from_millis(
            super::super::policy::BEHIND_WAIT_MS as u64 + 50,
        ));
        gate.set(true);
        rt.block_on(async {
            let _ = blocker.await.unwrap();
            match late.await.unwrap() {
                Decoded::Words { greedy, .. } => assert!(greedy),
                other => panic!("{other:?}"),
            }
        });
    }
}
