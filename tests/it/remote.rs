//! Inputs and outputs in an object store: a real S3-compatible server
//! (moto, from the project's Python environment) started on 127.0.0.1 by
//! each test. The same corpus gives the same bytes from any directory and
//! from the store; parallel, racing and killed task processes commit the
//! same dataset as one local process; secrets stay in the environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A secret kiln must never print or store.
const CANARY: &str = "kiln-canary-secret-5e1f0c";

/// A port of 127.0.0.1 nobody listens on.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto server on a free port of 127.0.0.1, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        Self::start_with(&[])
    }

    /// With moto's settings in `env`.
    fn start_with(env: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let child = Command::new(root().join(".venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is installed by scripts/setup.sh");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "moto started");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The environment kiln and the helper read the store's address and
    /// credentials from.
    fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "kiln-test")
            .env("AWS_SECRET_ACCESS_KEY", CANARY)
            .env("AWS_REGION", "us-east-1")
    }

    /// `tests/support/s3.py ARGS...`, which must succeed.
    fn helper(&self, args: &[&str]) -> String {
        let mut c = Command::new(root().join(".venv/bin/python"));
        c.arg(root().join("tests/support/s3.py")).args(args);
        let o = self.env(&mut c).output().unwrap();
        assert!(o.status.success(), "s3.py {args:?}: {}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    fn put(&self, local: &Path, url: &str) {
        self.helper(&["put", local.to_str().unwrap(), url]);
    }

    /// Every object under `url`, downloaded into `to`.
    fn get(&self, url: &str, to: &Path) -> PathBuf {
        self.helper(&["get", url, to.to_str().unwrap()]);
        to.to_path_buf()
    }

    /// The dataset at `url` is committed (no `.kiln/` work area left) and
    /// has the shards of the local dataset `want`; it is downloaded to `to`.
    fn assert_committed(&self, url: &str, want: &Path, to: &Path) {
        let keys = self.keys(url);
        assert!(
            keys.iter().all(|k| !k.contains(".kiln")),
            "the work area is gone after commit: {keys:?}"
        );
        same_shards(want, &self.get(url, to));
    }

    fn keys(&self, url: &str) -> Vec<String> {
        self.helper(&["ls", url])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `kiln ARGS` in `dir` against this store.
    fn kiln(&self, dir: &Path, args: &[&str]) -> Output {
        let mut c = kiln();
        c.current_dir(dir).args(args);
        self.env(&mut c).output().unwrap()
    }

    /// `tests/support/faulty_proxy.py` in front of this store, with
    /// `args`: its port, the process, and its output once it is ready.
    fn proxy(&self, args: &[&str]) -> (u16, Child, std::io::BufReader<std::process::ChildStdout>) {
        let port = free_port();
        let upstream = self.endpoint.rsplit(':').next().unwrap().to_string();
        let mut proxy = Command::new(root().join(".venv/bin/python"))
            .arg(root().join("tests/support/faulty_proxy.py"))
            .args([&port.to_string(), &upstream])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(proxy.stdout.take().unwrap());
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut ready).unwrap();
        assert_eq!(ready.trim(), "ready");
        (port, proxy, stdout)
    }

    fn spawn(&self, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Child {
        let mut c = kiln();
        c.current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            c.env(k, v);
        }
        self.env(&mut c).spawn().unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The shards of two datasets are the same bytes, listed alike.
fn same_shards(a: &Path, b: &Path) {
    let (ma, mb) = (manifest(a), manifest(b));
    assert_eq!(ma["shards"], mb["shards"], "shards of {a:?} and {b:?}");
    assert_eq!(ma["totals"], mb["totals"]);
    for s in ma["shards"].as_array().unwrap() {
        let f = s["file"].as_str().unwrap();
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn the_same_corpus_from_two_directories_and_the_store_is_the_same_dataset() {
    let moto = Moto::start();
    let s = Scratch::new();
    corpus(&s, "a/in", 3, 300);
    corpus(&s, "b/deep/er/in", 3, 300);
    moto.put(&s.path("a/in"), "s3://data/corpus");
    s.write(
        "p.toml",
        text_pipeline("a/in/*.jsonl", "out-a", "", "")
            .replace("[output]", "[plan]\ntask_bytes = 20000\n\n[output]"),
    );
    let run = |input: &str, output: &str| {
        let o = moto.kiln(
            s.dir.path(),
            &["run", "p.toml", "-q", "--input", input, "--output", output],
        );
        assert_ok(&o);
        assert!(!stderr(&o).contains(CANARY));
    };
    run("a/in/*.jsonl", "out-a");
    run("b/deep/er/in/*.jsonl", "out-b");
    run("s3://data/corpus/*.jsonl", "out-s");
    run("s3://data/corpus/*.jsonl", "s3://data/built");
    same_shards(&s.path("out-a"), &s.path("out-b"));
    same_shards(&s.path("out-a"), &s.path("out-s"));
    let got = s.path("got");
    moto.assert_committed("s3://data/built", &s.path("out-a"), &got);
    assert!(got.join("tokenizer.json").exists() && got.join("rejects.arrow").exists());
    assert_eq!(
        std::fs::read(s.path("out-a/tokenizer.json")).unwrap(),
        std::fs::read(got.join("tokenizer.json")).unwrap()
    );
    // A second run finds the dataset complete.
    let o = moto.kiln(
        s.dir.path(),
        &[
            "run",
            "p.toml",
            "--input",
            "s3://data/corpus/*.jsonl",
            "--output",
            "s3://data/built",
        ],
    );
    assert_ok(&o);
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));
}

#[test]
fn media_tables_tar_shards_and_parquet_are_read_from_the_store() {
    let moto = Moto::start();
    let s = Scratch::new();
    moto.put(&root().join("fixtures"), "s3://data/fixtures");
    // A Parquet table, made by kiln, read back by row groups.
    s.write(
        "p.toml",
        text_pipeline("in/*.jsonl", "pq", "", "keep_text = true")
            .replace("[output]", "[output]\nformat = \"parquet\""),
    );
    corpus(&s, "in", 1, 200);
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    moto.put(&s.path("pq"), "s3://data/pq");
    for (example, local, remote) in [
        (
            "multimodal.toml",
            "fixtures/multimodal/rows.jsonl",
            "s3://data/fixtures/multimodal/rows.jsonl",
        ),
        (
            "image_mix.toml",
            "fixtures/images/shard-*.tar",
            "s3://data/fixtures/images/shard-*.tar",
        ),
        (
            "audio_specaug.toml",
            "fixtures/audio/folder",
            "s3://data/fixtures/audio/folder",
        ),
    ] {
        let pipeline = root().join("pipelines").join(example);
        let pipeline = pipeline.to_str().unwrap();
        let here = root();
        let a = s.path(&format!("{example}-local"));
        let b = s.path(&format!("{example}-remote"));
        let o = moto.kiln(
            here,
            &[
                "run",
                pipeline,
                "-q",
                "--input",
                local,
                "--output",
                a.to_str().unwrap(),
            ],
        );
        assert_ok(&o);
        // The table's files are read from the store too: its roots move
        // there with it.
        let moved = std::fs::read_to_string(pipeline)
            .unwrap()
            .replace("_root = \"fixtures\"", "_root = \"s3://data/fixtures\"");
        let moved = s.write(&format!("{example}-remote.toml"), moved);
        let o = moto.kiln(
            here,
            &[
                "run",
                moved.to_str().unwrap(),
                "-q",
                "--input",
                remote,
                "--output",
                b.to_str().unwrap(),
            ],
        );
        assert_ok(&o);
        same_shards(&a, &b);
        assert_eq!(rejects(&a), rejects(&b), "{example}");
    }
    let pq = s.path("pq");
    let shard = manifest(&pq)["shards"][0]["file"]
        .as_str()
        .unwrap()
        .to_string();
    s.write(
        "q.toml",
        text_pipeline("x", "from-pq", "", "")
            .replace("path = \"x\"", "path = \"x\"\nformat = \"parquet\""),
    );
    let local = pq.join(&shard);
    let remote = format!("s3://data/pq/{shard}");
    for (input, out) in [
        (local.to_str().unwrap(), "pq-local"),
        (remote.as_str(), "pq-remote"),
    ] {
        assert_ok(&moto.kiln(
            s.dir.path(),
            &["run", "q.toml", "-q", "--input", input, "--output", out],
        ));
    }
    same_shards(&s.path("pq-local"), &s.path("pq-remote"));
}

/// A store holding the corpus of [`reference`] at `s3://data/in/`, the
/// scratch folder, and the one-process local dataset.
fn job() -> (Moto, Scratch, PathBuf) {
    let moto = Moto::start();
    let s = Scratch::new();
    let local = reference(&s);
    moto.put(&s.path("in"), "s3://data/in");
    (moto, s, local)
}

/// `kiln run p.toml -q --input s3://data/in/*.jsonl --output OUT EXTRA...`
/// in `s` against `moto`.
fn run_job(moto: &Moto, s: &Scratch, out: &str, extra: &[&str]) -> Output {
    moto.kiln(s.dir.path(), &job_args(out, extra))
}

/// The arguments of [`run_job`].
fn job_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "p.toml",
        "-q",
        "--input",
        "s3://data/in/*.jsonl",
        "--output",
        out,
    ];
    args.extend_from_slice(extra);
    args
}

/// The text job with several tasks, to a local folder by one process.
fn reference(s: &Scratch) -> PathBuf {
    corpus(s, "in", 4, 300);
    s.write(
        "p.toml",
        text_pipeline("in/*.jsonl", "local", "", "").replace(
            "[output]",
            "[plan]\ntask_bytes = 15000\nbatch_rows = 64\n\n[output]",
        ),
    );
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--threads", "1"]));
    let tasks = manifest(&s.path("local"))["tasks"].as_u64().unwrap();
    assert!(tasks >= 4, "{tasks} tasks");
    s.path("local")
}

#[test]
fn separate_task_processes_and_racing_attempts_commit_the_same_bytes() {
    let (moto, s, local) = job();
    let out = "s3://data/job";
    let dir = s.dir.path();
    let args = |extra: &[&'static str]| job_args(out, extra);
    assert_ok(&moto.kiln(dir, &args(&["--prepare"])));
    assert!(
        moto.keys(out)
            .iter()
            .any(|k| k.ends_with(".kiln/plan.json"))
    );
    // Three slots as a Kubernetes Indexed Job runs them, and a second
    // attempt of slot 1 racing the first.
    let mut children = Vec::new();
    for (i, index) in ["0", "1", "2", "1"].iter().enumerate() {
        children.push((
            i,
            moto.spawn(
                dir,
                &args(&[
                    "--tasks",
                    "3",
                    "--task-from-env",
                    "--no-commit",
                    "--threads",
                    "1",
                ]),
                &[("JOB_COMPLETION_INDEX", index)],
            ),
        ));
    }
    for (i, c) in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "slot {i}: {}", stderr(&o));
    }
    let keys = moto.keys(out);
    assert!(
        !keys.iter().any(|k| k.starts_with("job/data-")),
        "not committed yet"
    );
    assert_ok(&moto.kiln(dir, &["commit", out]));
    moto.assert_committed(out, &local, &s.path("job"));
    // Committing again is a no-op.
    let o = moto.kiln(dir, &["commit", out]);
    assert_ok(&o);
    assert!(stderr(&o).contains("already committed"), "{}", stderr(&o));
}

#[test]
fn killed_task_processes_resume_on_the_store_without_loss_or_duplicates() {
    let (moto, s, local) = job();
    let n = std::cell::Cell::new(0);
    kill_ten_times(
        &moto,
        &s,
        "s3://data/killed",
        &["--input", "s3://data/in/*.jsonl"],
        |out| {
            n.set(n.get() + 1);
            moto.assert_committed(out, &local, &s.path(&format!("got-{}", n.get())));
        },
    );
}

#[test]
fn killed_task_processes_resume_on_local_disk_without_loss_or_duplicates() {
    let moto = Moto::start();
    let s = Scratch::new();
    let local = reference(&s);
    kill_ten_times(&moto, &s, "killed", &[], |out| {
        same_shards(&local, &s.path(out))
    });
}

/// Ten SIGKILLs of `kiln run p.toml` into `OUT-1`, `OUT-2`... at random
/// moments (a seeded draw, 0.15 s to 0.9 s into a run), each run resuming
/// the one before. A job that finishes is checked by `check` and the next
/// output started, until ten kills have landed; the last is run to the end.
fn kill_ten_times(moto: &Moto, s: &Scratch, out: &str, extra: &[&str], check: impl Fn(&str)) {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let (mut killed, mut job) = (0, 1);
    let tmp = s.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let args = |job: usize| -> Vec<String> {
        let mut a: Vec<String> = ["run", "p.toml", "-q", "--threads", "2", "--output"]
            .map(String::from)
            .to_vec();
        a.push(format!("{out}-{job}"));
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    };
    while killed < 10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let a = args(job);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut child = moto.spawn(
            s.dir.path(),
            &a,
            &[
                ("KILN_THROTTLE_MS", "40"),
                ("TMPDIR", tmp.to_str().unwrap()),
            ],
        );
        std::thread::sleep(Duration::from_millis(150 + x % 750));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            killed += 1;
        } else {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            check(&format!("{out}-{job}"));
            job += 1;
        }
    }
    let mut last = kiln();
    last.current_dir(s.dir.path())
        .args(args(job))
        .env("TMPDIR", &tmp);
    assert_ok(&moto.env(&mut last).output().unwrap());
    check(&format!("{out}-{job}"));
    // The killed attempts' spool folders are gone: the next attempt on the
    // machine removed them.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_urls_missing_buckets_and_empty_prefixes_are_clear_errors_without_secrets() {
    let moto = Moto::start();
    let s = Scratch::new();
    corpus(&s, "in", 1, 20);
    moto.put(&s.path("in"), "s3://data/in");
    s.write("p.toml", text_pipeline("in/*.jsonl", "out", "", ""));
    let dir = s.dir.path();
    let fails = |input: &str, output: &str, code: i32, says: &str| {
        let o = moto.kiln(
            dir,
            &[
                "run", "p.toml", "-q", "-vv", "--input", input, "--output", output,
            ],
        );
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{input} -> {output}: {e}");
        assert!(e.contains(says), "{input} -> {output}: {e}");
        assert!(!e.contains(CANARY), "a secret in: {e}");
    };
    fails("ftp://host/x.jsonl", "out", 2, "unknown URL scheme");
    fails("s3://data/nothing/*.jsonl", "out", 2, "matches no objects");
    fails("s3://no-such-bucket/in/*.jsonl", "out", 2, "no-such-bucket");
    fails("s3://data/in/missing.jsonl", "out", 2, "no such object");
    fails("https://127.0.0.1:9/x/*.jsonl", "out", 2, "cannot list");
    fails("https://user:pw@127.0.0.1:9/x.jsonl", "out", 2, "user name");
    fails(
        "s3://data/in/*.jsonl",
        "s3://no-such-bucket/out",
        3,
        "no-such-bucket",
    );
    // An output prefix that holds something else is not written into.
    fails("s3://data/in/*.jsonl", "s3://data", 2, "not a kiln dataset");
    // What a run stores holds no secret either.
    assert_ok(&run_job(&moto, &s, "s3://data/out", &["--no-commit"]));
    let got = moto.get("s3://data/out", &s.path("got"));
    let plan = std::fs::read_to_string(got.join(".kiln/plan.json")).unwrap();
    assert!(plan.contains("s3://data/in/") && !plan.contains(CANARY));
    assert_ok(&moto.kiln(dir, &["commit", "s3://data/out"]));
    let got = moto.get("s3://data/out", &s.path("got2"));
    let m = std::fs::read_to_string(got.join("manifest.json")).unwrap();
    assert!(!m.contains(CANARY));
}

#[test]
fn a_commit_killed_at_any_step_is_finished_by_the_next() {
    let (moto, s, local) = job();
    let out = "s3://data/commit";
    let dir = s.dir.path();
    assert_ok(&run_job(&moto, &s, out, &["--no-commit"]));
    // The commit sleeps after each shard it copies and before it cleans
    // up: kills land between its steps.
    let mut killed = 0;
    for ms in [30u64, 120, 250, 400, 600, 850, 1150, 1500] {
        let mut child = moto.spawn(dir, &["commit", out], &[("KILN_THROTTLE_MS", "150")]);
        std::thread::sleep(Duration::from_millis(ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        killed >= 3,
        "only {killed} commits were killed before they finished"
    );
    assert_ok(&moto.kiln(dir, &["commit", out]));
    moto.assert_committed(out, &local, &s.path("got"));
}

#[test]
fn failing_requests_resets_lost_answers_and_stalls_change_no_byte() {
    let (moto, s, local) = job();
    let (port, mut proxy, mut stdout) = moto.proxy(&[
        "--error",
        "0.1",
        "--reset",
        "0.05",
        "--lose",
        "0.05",
        "--stall",
        "0.04",
        "--stall-seconds",
        "3",
        "--seed",
        "7",
    ]);
    // Requests give up after 1 s and are retried.
    let p = std::fs::read_to_string(s.path("p.toml")).unwrap();
    s.write("faulty.toml", format!("{p}\n[storage]\ntimeout_s = 1\n"));
    let mut c = kiln();
    c.current_dir(s.dir.path()).args([
        "run",
        "faulty.toml",
        "-q",
        "--input",
        "s3://data/in/*.jsonl",
        "--output",
        "s3://data/faulty",
    ]);
    moto.env(&mut c)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    let o = c.output().unwrap();
    // SIGTERM: the proxy prints what it did, then exits.
    Command::new("kill")
        .args(["-TERM", &proxy.id().to_string()])
        .status()
        .unwrap();
    let mut counts = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut counts).unwrap();
    proxy.wait().unwrap();
    assert_ok(&o);
    for fault in ["error=", "reset=", "lose=", "stall="] {
        let n: u64 = counts
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(fault))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "the proxy injected no {fault}: {counts}");
    }
    moto.assert_committed("s3://data/faulty", &local, &s.path("got"));
}

#[test]
fn the_trainer_reads_a_dataset_from_the_store() {
    use crate::train::{last_checkpoint, tensors, topics, train_file};
    let moto = Moto::start();
    let s = Scratch::new();
    let data = topics(&s);
    moto.put(&data, "s3://data/topics");
    let optim = "max_steps = 12\nbatch_size = 8\nlr = 0.003\nwarmup_steps = 2";
    let local = train_file(&s, "local", &data, optim);
    assert_ok(&s.kiln(&["train", local.to_str().unwrap(), "-q"]));
    let remote = train_file(&s, "remote", &data, optim);
    let mut c = kiln();
    c.current_dir(s.dir.path())
        .env("KILN_CACHE", s.path("cache"))
        .args([
            "train",
            remote.to_str().unwrap(),
            "-q",
            "--data",
            "s3://data/topics",
        ]);
    assert_ok(&moto.env(&mut c).output().unwrap());
    let (a, b) = (
        last_checkpoint(&s.path("local")),
        last_checkpoint(&s.path("remote")),
    );
    assert_eq!(
        tensors(&a.join("model.safetensors")),
        tensors(&b.join("model.safetensors")),
        "the same weights from the local and the remote dataset"
    );
    // The copy is checked and kept: its shards are the dataset's.
    let copies: Vec<_> = std::fs::read_dir(s.path("cache/datasets"))
        .unwrap()
        .collect();
    assert_eq!(copies.len(), 1);
    // `kiln report` of the URL reads that copy: the same rejects, statistics
    // and samples as the local dataset's page (the title and the copy's
    // time differ).
    let page = |from: &str, out: &str| {
        let mut c = kiln();
        c.current_dir(s.dir.path())
            .env("KILN_CACHE", s.path("cache"))
            .args(["report", from, "-o", out]);
        assert_ok(&moto.env(&mut c).output().unwrap());
        let html = std::fs::read_to_string(s.path(out)).unwrap();
        assert!(html.contains("read, SHA-256 matches"), "{html}");
        html[html.find("<h2 id=\"rejects\"").unwrap()..].to_string()
    };
    let local = page(data.to_str().unwrap(), "local.html");
    let remote = page("s3://data/topics", "remote.html");
    assert!(local == remote, "the remote page differs");
}

#[test]
fn a_store_that_ignores_conditional_writes_refuses_parallel_tasks() {
    let moto = Moto::start();
    let s = Scratch::new();
    corpus(&s, "in", 1, 20);
    moto.put(&s.path("in"), "s3://data/in");
    s.write("p.toml", text_pipeline("in/*.jsonl", "out", "", ""));
    let (port, mut proxy, _) = moto.proxy(&[
        "--error",
        "0",
        "--reset",
        "0",
        "--lose",
        "0",
        "--stall",
        "0",
        "--strip-conditions",
    ]);
    let mut c = kiln();
    c.current_dir(s.dir.path())
        .args(job_args("s3://data/out", &["--task", "0", "--tasks", "2"]));
    moto.env(&mut c)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    let o = c.output().unwrap();
    proxy.kill().ok();
    proxy.wait().ok();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ignores create-only writes"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_http_server_serves_explicit_files() {
    let moto = Moto::start();
    let s = Scratch::new();
    corpus(&s, "in", 1, 200);
    moto.put(&s.path("in"), "s3://data/in");
    s.write(
        "p.toml",
        text_pipeline("in/part-000.jsonl", "local", "", ""),
    );
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    // moto serves a public object over plain HTTP, ranges included.
    let mut c = Command::new(root().join(".venv/bin/python"));
    c.args(["-c", "import boto3,os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).put_object_acl(Bucket='data', Key='in/part-000.jsonl', ACL='public-read')"]);
    assert!(moto.env(&mut c).status().unwrap().success());
    let url = format!("{}/data/in/part-000.jsonl", moto.endpoint);
    let o = moto.kiln(
        s.dir.path(),
        &["run", "p.toml", "-q", "--input", &url, "--output", "http"],
    );
    assert_ok(&o);
    same_shards(&s.path("local"), &s.path("http"));
}

#[test]
fn an_object_deleted_after_planning_is_a_reject_not_a_lost_sample() {
    let moto = Moto::start();
    let s = Scratch::new();
    corpus(&s, "in", 4, 100);
    moto.put(&s.path("in"), "s3://data/in");
    s.write(
        "p.toml",
        text_pipeline("in/*.jsonl", "out", "", "").replace(
            "[output]",
            "[plan]\ntask_bytes = 2000\nbatch_rows = 16\n\n[output]",
        ),
    );
    let child = moto.spawn(
        s.dir.path(),
        &job_args("out", &["--threads", "1"]),
        &[("KILN_THROTTLE_MS", "100")],
    );
    // Once the plan is frozen, the last file goes; its tasks run last.
    let start = Instant::now();
    while !s.path("out/.kiln/plan.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "planned");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = Command::new(root().join(".venv/bin/python"));
    c.args(["-c", "import boto3,os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).delete_object(Bucket='data', Key='in/part-003.jsonl')"]);
    assert!(moto.env(&mut c).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m = manifest(&s.path("out"));
    let t = &m["totals"];
    let (inn, out, rej) = (
        t["samples_in"].as_u64().unwrap(),
        t["samples_out"].as_u64().unwrap(),
        t["rejected"].as_u64().unwrap(),
    );
    assert_eq!(inn, out + rej + t["filtered"].as_u64().unwrap());
    let gone: Vec<_> = rejects(&s.path("out"))
        .into_iter()
        .filter(|(id, _, _)| id.starts_with("part-003.jsonl"))
        .collect();
    assert!(
        !gone.is_empty() && gone.iter().all(|(_, _, kind)| kind == "unreadable"),
        "{gone:?}"
    );
}

#[test]
fn a_zombie_attempt_finishing_after_the_commit_leaves_no_work_area() {
    let (moto, s, local) = job();
    let out = "s3://data/zombie";
    let dir = s.dir.path();
    let args = job_args(out, &[]);
    assert_ok(&moto.kiln(dir, &[&args[..], &["--prepare"]].concat()));
    // A slow attempt of slot 0, then the whole job beside it, committed
    // before the slow one ends.
    let zombie = moto.spawn(
        dir,
        &[
            &args[..],
            &[
                "--task",
                "0",
                "--tasks",
                "1",
                "--no-commit",
                "--threads",
                "1",
            ],
        ]
        .concat(),
        &[("KILN_THROTTLE_MS", "150")],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_ok(&moto.kiln(dir, &args));
    let o = zombie.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    moto.assert_committed(out, &local, &s.path("got"));
}

#[test]
fn refused_credentials_are_a_clear_error_and_not_retried() {
    // moto checks signatures after its first three requests (the helper's
    // bucket and upload); kiln's key is unknown to it.
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
    let s = Scratch::new();
    corpus(&s, "in", 1, 20);
    moto.put(&s.path("in"), "s3://data/in");
    s.write("p.toml", text_pipeline("in/*.jsonl", "out", "", ""));
    let o = moto.kiln(
        s.dir.path(),
        &["run", "p.toml", "-q", "--output", "s3://data/out"],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("privileges") || e.contains("denied") || e.contains("403"),
        "{e}"
    );
    assert!(!e.contains(CANARY), "{e}");
}

#[test]
fn a_shard_over_one_part_is_uploaded_in_parts_and_arrives_whole() {
    let moto = Moto::start();
    let s = Scratch::new();
    corpus(&s, "in", 1, 80_000);
    let pipeline = format!(
        "[[inputs]]\npath = \"in/*.jsonl\"\n\n[[stages]]\ntype = \"tokenize\"\ntokenizer = \"{}\"\nkeep_text = true\n\n[plan]\ntask_bytes = 1000000000\n\n[output]\npath = \"local\"\n",
        fixture_path("text/tokenizer.json")
    );
    s.write("p.toml", pipeline);
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    let shard = &manifest(&s.path("local"))["shards"][0];
    // Larger than one 8 MiB part: a multipart upload from the spool file.
    assert!(shard["bytes"].as_u64().unwrap() > 8 << 20, "{shard}");
    moto.put(&s.path("local"), "s3://data/unused"); // makes the bucket
    assert_ok(&moto.kiln(
        s.dir.path(),
        &["run", "p.toml", "-q", "--output", "s3://data/big"],
    ));
    moto.assert_committed("s3://data/big", &s.path("local"), &s.path("got"));
}

#[test]
fn a_bad_output_url_or_shard_size_is_refused_before_anything_is_read() {
    let s = Scratch::new();
    corpus(&s, "in", 1, 20);
    s.write("p.toml", text_pipeline("in/*.jsonl", "out", "", ""));
    let o = s.kiln(&["run", "p.toml", "-q", "--output", "ftp://host/out"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("output.path") && stderr(&o).contains("unknown URL scheme"),
        "{}",
        stderr(&o)
    );
    s.write(
        "big.toml",
        text_pipeline("in/*.jsonl", "s3://data/out", "", "")
            .replace("[output]", "[output]\nmax_shard_bytes = 6000000000"),
    );
    let o = s.kiln(&["run", "big.toml", "-q"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("max_shard_bytes"), "{}", stderr(&o));
}
