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
    assert_eq!(o.status.code(), Some(2), "{:?} {err}", o.status);
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
    // kiln may write a file into a folder while it is being removed (the
    // removal then finds the folder not empty): remove until it is gone.
    let mut tries = 0;
    while let Err(e) = std::fs::remove_dir_all(s.path("gone")) {
        if e.kind() == std::io::ErrorKind::NotFound {
            break;
        }
        tries += 1;
        assert!(tries < 1000, "cannot remove the output folder: {e}");
    }
    let o = child.wait_with_output().unwrap();
    fails_with(&o, "No such file or directory", "gone/");
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "gone"]));
    assert_same_dataset(&s.path("clean"), &s.path("gone"));
}

/// The memory bound of a run over large and hostile media at 2 threads
/// with the default limits (images to 64 megapixels, files to 64 MiB,
/// clips to 600 s), enforced by a memory cgroup: going over it is an OOM
/// kill, and the test fails. Measured: about 240 MiB for the images, 290
/// MiB for the audio.
const MEMORY_BOUND_MIB: u64 = 1024;

/// A memory cgroup (v1 or v2) below this process's own, limited to
/// `mib`; removed when dropped. `None` where cgroups cannot be made.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn new(mib: u64) -> Option<MemoryCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let name = format!("kiln-memory-test-{}", std::process::id());
        let v1 = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p));
        let (dir, v2) = match v1 {
            Some(path) => (
                Path::new("/sys/fs/cgroup/memory")
                    .join(path.trim_start_matches('/'))
                    .join(&name),
                false,
            ),
            None => {
                let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
                (
                    Path::new("/sys/fs/cgroup")
                        .join(path.trim_start_matches('/'))
                        .join(&name),
                    true,
                )
            }
        };
        std::fs::create_dir(&dir).ok()?;
        let cg = MemoryCgroup { dir, v2 };
        let bytes = (mib << 20).to_string();
        let limit = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cg.dir.join(limit), &bytes).ok()?;
        if !v2 {
            // No swap to spill into: over the limit is an OOM kill.
            let _ = std::fs::write(cg.dir.join("memory.memsw.limit_in_bytes"), &bytes);
        }
        Some(cg)
    }

    /// `kiln ARGS` run inside the cgroup.
    fn kiln(&self, cwd: &Path, args: &[&str]) -> std::process::Output {
        Command::new("sh")
            .current_dir(cwd)
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                self.dir.display()
            ))
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Start the high-water mark again.
    fn reset_peak(&self) {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        let _ = std::fs::write(self.dir.join(file), "0");
    }

    fn peak_mib(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        let bytes: u64 = std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(bytes >> 20)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A JPEG of `w` x `h` (it decodes to w*h*3 bytes): gradients with a
/// little noise, rows of one row shifted (fast even in a test build).
fn big_jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    let row: Vec<u8> = (0..w * 3)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((i * 255 / (w * 3)) as u8).wrapping_add((x >> 29) as u8)
        })
        .collect();
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h as usize {
        let cut = (y * 3) % row.len();
        pixels.extend_from_slice(&row[cut..]);
        pixels.extend_from_slice(&row[..cut]);
    }
    let img = image::RgbImage::from_raw(w, h, pixels).unwrap();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&img)
        .unwrap();
    out
}

/// A 16-bit PCM WAV of `seconds` of stereo at 48 kHz.
fn long_wav(seconds: u32) -> Vec<u8> {
    let frames = seconds * 48_000;
    let data = frames * 4;
    let mut b = Vec::with_capacity(44 + data as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&48_000u32.to_le_bytes());
    b.extend_from_slice(&(48_000u32 * 4).to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data.to_le_bytes());
    // One second of a tone, repeated (fast even in a test build).
    let second: Vec<u8> = (0..48_000)
        .flat_map(|i| {
            let v = ((i as f32 * 0.031).sin() * 12000.0) as i16;
            [v.to_le_bytes(), (-v).to_le_bytes()].concat()
        })
        .collect();
    for _ in 0..seconds {
        b.extend_from_slice(&second);
    }
    b
}

#[test]
fn large_and_hostile_media_stay_within_the_memory_bound() {
    let Some(cg) = MemoryCgroup::new(MEMORY_BOUND_MIB) else {
        eprintln!("SKIPPED: no memory cgroup can be made here (the memory-bound test needs root)");
        return;
    };
    let s = Scratch::new();
    // One 35-megapixel JPEG (encoding is the slow part here), three times.
    let big = big_jpeg(7000, 5000, 2654435761);
    for i in 0..3 {
        s.write(&format!("img/big/{i}.jpg"), &big);
    }
    for f in ["bomb.png", "corrupt_header.png", "truncated.jpg"] {
        s.write(
            &format!("img/bad/{f}"),
            std::fs::read(root().join("fixtures/images/bad").join(f)).unwrap(),
        );
    }
    s.write("snd/long/a.wav", long_wav(300));
    s.write("snd/long/b.wav", long_wav(100));
    for f in ["huge_header.wav", "garbage.wav", "long.flac"] {
        s.write(
            &format!("snd/bad/{f}"),
            std::fs::read(root().join("fixtures/audio/bad").join(f)).unwrap(),
        );
    }
    s.write(
        "images.toml",
        "[[inputs]]\npath = \"img\"\n\n[[stages]]\ntype = \"decode_image\"\n\n[[stages]]\ntype = \"resize_image\"\nsize = 256\ncrop = 224\n\n[output]\npath = \"out-img\"\n",
    );
    s.write(
        "audio.toml",
        "[[inputs]]\npath = \"snd\"\n\n[[stages]]\ntype = \"decode_audio\"\nsample_rate = 16000\n\n[[stages]]\ntype = \"mel_spectrogram\"\n\n[output]\npath = \"out-snd\"\n",
    );
    for (pipeline, out, good, bad) in [
        ("images.toml", "out-img", 3, 3),
        ("audio.toml", "out-snd", 3, 2),
    ] {
        cg.reset_peak();
        let o = cg.kiln(s.dir.path(), &["run", pipeline, "-q", "--threads", "2"]);
        let peak = cg.peak_mib().unwrap_or(0);
        eprintln!("{pipeline}: peak {peak} MiB of the {MEMORY_BOUND_MIB} MiB bound");
        assert!(
            o.status.success(),
            "{pipeline} did not finish within {MEMORY_BOUND_MIB} MiB ({:?}): {}",
            o.status,
            stderr(&o)
        );
        let t = &manifest(&s.path(out))["totals"];
        assert_eq!(t["samples_out"], good, "{t}");
        assert_eq!(t["rejected"], bad, "{t}");
    }
}

#[test]
fn an_input_deleted_during_the_run_stops_it_and_the_rerun_once_it_is_back_is_clean() {
    let s = Scratch::new();
    job(&s);
    let input = s.path("docs/part-003.jsonl");
    let bytes = std::fs::read(&input).unwrap();
    let modified = std::fs::metadata(&input).unwrap().modified().unwrap();
    let child = kiln()
        .current_dir(s.dir.path())
        .env("KILN_THROTTLE_MS", "30")
        .args(["run", "p.toml", "-q", "--output", "moved", "--threads", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = s.path("moved/.kiln/tasks/00000.json");
    let start = std::time::Instant::now();
    while !marker.exists() {
        assert!(start.elapsed().as_secs() < 60, "a task finished");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::fs::remove_file(&input).unwrap();
    let o = child.wait_with_output().unwrap();
    fails_with(&o, "was deleted during the run", "part-003.jsonl");
    std::fs::write(&input, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&input)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "moved"]));
    assert_same_dataset(&s.path("clean"), &s.path("moved"));
}

/// `kiln` in `s` as the user nobody, for whom permissions hold (root reads
/// everything); `None` where this process cannot switch users.
fn as_nobody(s: &Scratch, args: &[&str]) -> Option<std::process::Output> {
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(s.dir.path())
        .output()
        .ok()?;
    let err = stderr(&o);
    (!err.contains("setpriv:")).then_some(o)
}

#[test]
fn an_input_kiln_may_not_read_stops_the_run_and_the_rerun_once_readable_is_clean() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    job(&s);
    for (i, rel) in ["cat/cat_0.jpg", "cat/cat_1.png", "bird/bird_0.jpg"]
        .iter()
        .enumerate()
    {
        let bytes = std::fs::read(root().join("fixtures/images/folder").join(rel)).unwrap();
        s.write(&format!("photos/{rel}"), bytes);
        s.write(
            &format!("photos/dog/d{i}.jpg"),
            std::fs::read(root().join("fixtures/images/folder/cat/cat_0.jpg")).unwrap(),
        );
    }
    s.write(
        "img.toml",
        "[[inputs]]\npath = \"photos\"\nformat = \"images\"\n\n[[stages]]\ntype = \"decode_image\"\n\n[[stages]]\ntype = \"resize_image\"\nsize = 16\ncrop = 16\n\n[[stages]]\ntype = \"encode_image\"\n\n[output]\npath = \"clean_img\"\n",
    );
    assert_ok(&s.kiln(&["run", "img.toml", "-q"]));
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(s.dir.path(), 0o777);
    let Some(probe) = as_nobody(&s, &["--version"]) else {
        eprintln!("skipped: cannot run kiln as another user here (setpriv needs root)");
        return;
    };
    assert_ok(&probe);
    for (pipeline, out, input) in [
        ("p.toml", "denied", "docs/part-002.jsonl"),
        ("img.toml", "denied_img", "photos/cat/cat_1.png"),
    ] {
        let input = s.path(input);
        mode(&input, 0o000);
        let o = as_nobody(&s, &["run", pipeline, "-q", "--output", out]).unwrap();
        fails_with(
            &o,
            "permission denied",
            input.file_name().unwrap().to_str().unwrap(),
        );
        mode(&input, 0o644);
        assert_ok(&as_nobody(&s, &["run", pipeline, "-q", "--output", out]).unwrap());
        let clean = if out == "denied" {
            "clean"
        } else {
            "clean_img"
        };
        assert_same_dataset(&s.path(clean), &s.path(out));
    }
}
