//! Inference behind a bounded queue, on threads of its own, so that the
//! task threads decode and resize the next images while the model runs.
//!
//! A task thread normalises its batch's pixels, cuts them into jobs of at
//! most `batch_size` images and queues them (the queue holds a few jobs a
//! server: a full queue makes the task wait, so memory stays bounded). A
//! server takes a job and, while the batch it builds holds fewer than
//! `batch_size` images, the jobs waiting behind it, from any task; it runs
//! them in one call and sends each job its results. On CUDA one
//! server feeds the GPU large batches (`batch_size` 64 by default) gathered
//! from every task; on the CPU there is one server a thread, each with its
//! own single-threaded session, and `batch_size` 1.
//!
//! What a job gets does not depend on the jobs it ran with: an image's
//! features are the same in a batch of 1, 7 or 64 (tested on the CPU). A
//! batch the model fails on is run again an image at a time, so only the
//! image at fault is rejected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::features::{ImageFeatures, Inferred};

/// Jobs queued a server, at most.
const QUEUED_PER_SERVER: usize = 4;

/// Some images' pixels, normalised (`n` x 3 x H x W), and where their
/// results go: one for all the images, or one an image when their call
/// failed (so only the image at fault is rejected); or why no session could
/// be opened.
pub struct Job {
    pub data: Vec<f32>,
    pub n: usize,
    pub reply: SyncSender<std::result::Result<Vec<Inferred>, String>>,
}

pub struct Queue {
    tx: Option<SyncSender<Job>>,
    servers: Vec<JoinHandle<()>>,
    busy: Arc<Busy>,
}

/// The servers' time running the model, and when the last job finished
/// (nanoseconds since the queue started).
struct Busy {
    started: Instant,
    running_ns: AtomicU64,
    last_done_ns: AtomicU64,
}

impl Queue {
    /// Start `servers` threads serving `model`.
    pub fn start(model: Arc<ImageFeatures>, servers: usize) -> Queue {
        let (tx, rx) = sync_channel::<Job>(servers * QUEUED_PER_SERVER);
        let rx = Arc::new(Mutex::new(rx));
        let busy = Arc::new(Busy {
            started: Instant::now(),
            running_ns: AtomicU64::new(0),
            last_done_ns: AtomicU64::new(0),
        });
        let servers = (0..servers)
            .map(|i| {
                let (model, rx, busy) = (model.clone(), rx.clone(), busy.clone());
                std::thread::Builder::new()
                    .name(format!("kiln-inference-{i}"))
                    .spawn(move || serve(&model, &rx, &busy))
                    .expect("an inference thread starts")
            })
            .collect();
        Queue {
            tx: Some(tx),
            servers,
            busy,
        }
    }

    /// Queue a job; false once the servers are gone.
    pub fn send(&self, job: Job) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// The share of the time from the first batch to the last result that
    /// the servers spent running the model (1.0: always busy).
    pub fn busy_share(&self) -> f64 {
        let b = &self.busy;
        let wall = b.last_done_ns.load(Ordering::Relaxed) as f64 * self.servers.len().max(1) as f64;
        b.running_ns.load(Ordering::Relaxed) as f64 / wall.max(1.0)
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.tx = None;
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
    }
}

fn serve(model: &ImageFeatures, rx: &Mutex<Receiver<Job>>, busy: &Busy) {
    let mut session = None;
    loop {
        let mut jobs = Vec::new();
        {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => jobs.push(job),
                Err(_) => return,
            }
            let mut n = jobs[0].n;
            while n < model.batch_size {
                match rx.try_recv() {
                    Ok(job) => {
                        n += job.n;
                        jobs.push(job);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
        }
        if session.is_none() {
            match model.session() {
                Ok(s) => session = Some(s),
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(e.to_string()));
                    }
                    continue;
                }
            }
        }
        let session = session.as_mut().expect("opened above");
        let t = Instant::now();
        let results = run_jobs(model, session, &jobs);
        busy.running_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        busy.last_done_ns
            .fetch_max(busy.started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        for (job, r) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(Ok(r));
        }
    }
}

/// The jobs' images in one call; if it fails, each image alone.
fn run_jobs(
    model: &ImageFeatures,
    session: &mut ort::session::Session,
    jobs: &[Job],
) -> Vec<Vec<Inferred>> {
    let n: usize = jobs.iter().map(|j| j.n).sum();
    let joined: Vec<f32>;
    let data = match jobs {
        [one] => &one.data,
        _ => {
            joined = jobs.iter().flat_map(|j| j.data.iter().copied()).collect();
            &joined
        }
    };
    let (fd, ld) = (model.features_dim, model.logits_dim);
    if let Ok((features, logits)) = model.infer_data(session, data, n) {
        let mut at = 0;
        return jobs
            .iter()
            .map(|j| {
                let f = features[at * fd..(at + j.n) * fd].to_vec();
                let l = logits
                    .as_ref()
                    .map(|l| l[at * ld..(at + j.n) * ld].to_vec());
                at += j.n;
                vec![Ok((f, l))]
            })
            .collect();
    }
    // Find the image at fault: run each alone.
    jobs.iter()
        .map(|j| {
            let one = j.data.len() / j.n.max(1);
            j.data
                .chunks_exact(one)
                .map(|d| model.infer_data(session, d, 1))
                .collect()
        })
        .collect()
}
