//! Faults of the machine, not of the data: a full disk, a read-only output,
//! an output folder deleted during the run. Each stops the run with exit
//! code 2 and a message naming the file and the fault, and the same
//! command, once the fault is fixed, finishes with the bytes of a clean run.
//!
//! The disk faults need a small tmpfs, mounted by the test (root, as in CI);
//! where mounting is refused they are skipped, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn remount(&self, options: &str) {
        let o = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A text job of a few tasks whose output is about 300 KB.
fn job(s: &Scratch) {
    corpus(s, "docs", 4, 300);
    s.write(
        "p.toml",
        text_pipeline("docs/*.jsonl", "clean", "[plan]\ntask_bytes = 20000\n", ""),
    );
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
}

fn fails_with(o: &std::process::Output, fault: &str, under: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(fault) && err.contains(under), "{err}");
}

#[test]
fn a_full_disk_and_a_read_only_output_stop_with_exit_2_and_the_rerun_is_clean() {
    let s = Scratch::new();
    job(&s);
    let Some(disk) = Tmpfs::mount(&s.path("disk"), "150k") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (the disk-fault tests need root)");
        return;
    };
    let o = s.kiln(&["run", "p.toml", "-q", "--output", "disk/full"]);
    fails_with(&o, "No space left on device", "disk/full/");
    disk.remount("size=20m");
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "disk/full"]));
    assert_same_dataset(&s.path("clean"), &s.path("disk/full"));

    // A read-only output: refused at once, naming it.
    disk.remount("ro");
    let o = s.kiln(&["run", "p.toml", "-q", "--output", "disk/ro"]);
    fails_with(&o, "Read-only file system", "disk/ro");
    disk.remount("rw");
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "disk/ro"]));
    assert_same_dataset(&s.path("clean"), &s.path("disk/ro"));
}

#[test]
fn an_output_folder_deleted_during_the_run_stops_it_with_exit_2() {
    let s = Scratch::new();
    job(&s);
    let child = kiln()
        .current_dir(s.dir.path())
        .env("KILN_THROTTLE_MS", "30")
        .args(["run", "p.toml", "-q", "--output", "gone", "--threads", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = s.path("gone/.kiln/tasks/00000.json");
    let start = std::time::Instant::now();
    while !marker.exists() {
        assert!(start.elapsed().as_secs() < 60, "a task finished");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::fs::remove_dir_all(s.path("gone")).unwrap();
    let o = child.wait_with_output().unwrap();
    fails_with(&o, "No such file or directory", "gone/");
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "gone"]));
    assert_same_dataset(&s.path("clean"), &s.path("gone"));
}
