//! `kiln train --nproc N`: N local ranks of one training job, as
//! `torchrun --nproc-per-node N` starts them.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// `kiln train --nproc N`: run this command as N local ranks (the
/// environment of [`DistEnv`], a free port on 127.0.0.1, the cores shared
/// among them) and wait. When one fails the others fail within moments
/// (their links to it close); any still running after 30 s are killed.
/// The exit code is the first failure's (1 for a rank killed by a signal).
pub fn spawn_local(nproc: usize, args: &[std::ffi::OsString]) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find the kiln executable", e))?;
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("find a free port", e))?;
        l.local_addr()
            .map_err(|e| Error::io("find a free port", e))?
            .port()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / nproc).max(1).to_string();
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut c = std::process::Command::new(&exe);
        c.args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        for var in ["RAYON_NUM_THREADS", "MATMUL_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                c.env(var, &threads);
            }
        }
        match c.spawn() {
            Ok(child) => children.push(Some(child)),
            Err(e) => {
                for mut started in children.into_iter().flatten() {
                    let _ = started.kill();
                    let _ = started.wait();
                }
                return Err(Error::io(format!("start rank {rank}"), e));
            }
        }
    }
    // The first rank to fail, its exit code, and whether a signal ended it.
    let mut failed: Option<(usize, i32, bool)> = None;
    let mut failed_at: Option<Instant> = None;
    loop {
        let mut running = 0;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(Some(status)) => {
                    *slot = None;
                    if status.success() {
                        continue;
                    }
                    let signalled = status.code().is_none();
                    if signalled {
                        eprintln!("kiln: rank {rank} was killed ({status})");
                    }
                    // A killed rank is the cause of the others' errors.
                    if failed.is_none_or(|(_, _, s)| signalled && !s) {
                        failed = Some((rank, status.code().unwrap_or(3), signalled));
                    }
                    failed_at.get_or_insert_with(Instant::now);
                }
                Ok(None) => running += 1,
                Err(e) => return Err(Error::io(format!("wait for rank {rank}"), e)),
            }
        }
        if running == 0 {
            break;
        }
        if failed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            for (rank, slot) in children.iter_mut().enumerate() {
                if let Some(child) = slot {
                    eprintln!("kiln: rank {rank} still running 30 s after a rank failed: killed");
                    let _ = child.kill();
                    let _ = child.wait();
                    *slot = None;
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(match failed {
        Some((rank, code, _)) => {
            eprintln!("kiln: rank {rank} failed and the job stopped; resume it with --resume");
            code
        }
        None => 0,
    })
}
