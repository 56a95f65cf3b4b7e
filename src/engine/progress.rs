//! Progress while a run goes: a bar with samples/s, bytes/s and ETA on a
//! terminal, a plain line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Progress {
    pub samples: AtomicU64,
    pub bytes: AtomicU64,
    pub tasks: AtomicUsize,
    pub total_bytes: u64,
    pub total_tasks: usize,
    /// Set by [`Progress::finish`], which wakes the reporter at once: a
    /// run does not wait out the reporter's interval before it ends.
    done: Mutex<bool>,
    wake: Condvar,
}

impl Progress {
    pub fn new(total_bytes: u64, total_tasks: usize) -> Self {
        Progress {
            total_bytes,
            total_tasks,
            ..Default::default()
        }
    }

    pub fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Wait up to `d` for [`Progress::finish`]; whether it has been called.
    fn finished_within(&self, d: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .wake
            .wait_timeout_while(done, d, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }

    /// Report until [`Progress::finish`]; run it on its own thread.
    pub fn report(&self, quiet: bool) {
        let start = Instant::now();
        let tty = std::io::stderr().is_terminal() && !quiet;
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(self.total_bytes),
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {percent:>3}% {binary_bytes_per_sec} {msg} eta {eta}",
                )
                .expect("valid template"),
            );
            bar
        });
        let mut last_line = Instant::now();
        while !self.finished_within(Duration::from_millis(200)) {
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            let samples = self.samples.load(Ordering::Relaxed);
            let bytes = self.bytes.load(Ordering::Relaxed);
            let tasks = self.tasks.load(Ordering::Relaxed);
            let rate = samples as f64 / secs;
            if let Some(bar) = &bar {
                bar.set_position(bytes);
                bar.set_message(format!(
                    "{samples} samples ({rate:.0}/s), task {tasks}/{}",
                    self.total_tasks
                ));
            } else if !quiet && last_line.elapsed() >= Duration::from_secs(10) {
                last_line = Instant::now();
                let frac = bytes as f64 / self.total_bytes.max(1) as f64;
                let eta = if frac > 0.0 {
                    secs / frac - secs
                } else {
                    f64::NAN
                };
                eprintln!(
                    "kiln: {:.0}% ({tasks}/{} tasks), {samples} samples, {rate:.0} samples/s, {:.1} MB/s, eta {eta:.0}s",
                    frac * 100.0,
                    self.total_tasks,
                    bytes as f64 / secs / 1e6
                );
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
}
