//! Hostile inputs: every folder entry is a sample or a reject (names that
//! are not UTF-8, other kinds of files, FIFOs, devices, broken and looping
//! links), names kept losslessly in folders, globs and tar shards, and
//! paths from data that lead outside their root.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use arrow::array::AsArray;

use crate::common::*;

const DECODE: &str = "\n[[stages]]\ntype = \"decode_image\"\n";

fn image(rel: &str) -> Vec<u8> {
    std::fs::read(root().join("fixtures/images/folder").join(rel)).unwrap()
}

/// `sample_id -> path` of every row.
fn paths(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for b in read_dataset(dir) {
        let ids = b.column_by_name("sample_id").unwrap().as_string::<i32>();
        let path = b.column_by_name("path").unwrap().as_string::<i32>();
        for r in 0..b.num_rows() {
            out.insert(ids.value(r).to_string(), path.value(r).to_string());
        }
    }
    out
}

/// The dataset's rejects by source name: `name -> kind`.
fn reject_kinds(dir: &Path) -> BTreeMap<String, String> {
    rejects(dir)
        .into_iter()
        .map(|(id, _, kind)| (id.split(':').next().unwrap().to_string(), kind))
        .collect()
}

fn assert_counts_add_up(dir: &Path, entries: u64) {
    let t = &manifest(dir)["totals"];
    assert_eq!(t["samples_in"], entries, "{t}");
    assert_eq!(
        t["samples_in"].as_u64().unwrap(),
        t["samples_out"].as_u64().unwrap()
            + t["rejected"].as_u64().unwrap()
            + t["filtered"].as_u64().unwrap(),
        "{t}"
    );
}

#[test]
fn every_folder_entry_is_a_sample_or_a_reject_whatever_it_is() {
    let s = Scratch::new();
    let cat = s.path("in/cat");
    std::fs::create_dir_all(&cat).unwrap();
    std::fs::create_dir_all(s.path("elsewhere")).unwrap();
    // A Latin-1 name (not UTF-8), a plain one, and one that looks like the
    // escaped form of a name but is UTF-8.
    std::fs::write(
        cat.join(OsStr::from_bytes(b"caf\xe9.jpg")),
        image("cat/cat_0.jpg"),
    )
    .unwrap();
    std::fs::write(cat.join("plain.png"), image("cat/cat_1.png")).unwrap();
    std::fs::write(cat.join("lit\\xE9.jpg"), image("bird/bird_0.jpg")).unwrap();
    std::fs::write(cat.join("notes.txt"), "not a picture").unwrap();
    std::fs::write(s.path("elsewhere/far.jpg"), image("dog/dog_0.jpg")).unwrap();
    let fifo = cat.join("pipe.jpg");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    symlink("/dev/zero", cat.join("zero.jpg")).unwrap();
    symlink("gone.jpg", cat.join("broken.jpg")).unwrap();
    symlink("loop.jpg", cat.join("loop.jpg")).unwrap();
    symlink("..", cat.join("up")).unwrap();
    symlink(s.path("elsewhere/far.jpg"), cat.join("far.jpg")).unwrap();
    symlink("plain.png", cat.join("twin.png")).unwrap();
    let entries = 11;

    let out = build_in(
        &s,
        "strict",
        &format!(
            "[[inputs]]\npath = \"{}\"\n{DECODE}",
            s.path("in").display()
        ),
        &[],
    );
    assert_counts_add_up(&out, entries);
    let kinds = reject_kinds(&out);
    let want = [
        ("cat/notes.txt", "unsupported_file"),
        ("cat/pipe.jpg", "special_file"),
        ("cat/zero.jpg", "path_outside_root"),
        ("cat/broken.jpg", "missing_file"),
        ("cat/loop.jpg", "symlink_loop"),
        ("cat/up", "symlink_loop"),
        ("cat/far.jpg", "path_outside_root"),
    ];
    assert_eq!(
        kinds,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    );
    let read: Vec<String> = paths(&out).into_values().collect();
    assert_eq!(
        read,
        [
            "cat/caf\\xE9.jpg",
            "cat/lit\\xE9.jpg",
            "cat/plain.png",
            "cat/twin.png"
        ]
    );

    // Allowed outside its folder, the input reads the far file; /dev/zero
    // is still a device, refused unread.
    let out = build_in(
        &s,
        "open",
        &format!(
            "[[inputs]]\npath = \"{}\"\nallow_outside_root = true\n{DECODE}",
            s.path("in").display()
        ),
        &[],
    );
    assert_counts_add_up(&out, entries);
    let kinds = reject_kinds(&out);
    assert_eq!(kinds["cat/zero.jpg"], "special_file");
    assert!(!kinds.contains_key("cat/far.jpg"), "{kinds:?}");
    assert_eq!(paths(&out).len(), 5);
    // The Latin-1 file's row holds its own bytes.
    let rows = read_dataset(&out);
    assert!(rows.iter().any(|b| {
        let p = b.column_by_name("path").unwrap().as_string::<i32>();
        (0..b.num_rows()).any(|r| p.value(r) == "cat/caf\\xE9.jpg")
    }));
}

#[test]
fn a_glob_and_a_tar_shard_keep_names_that_are_not_utf8() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("g")).unwrap();
    for name in [&b"a\xe9.jpg"[..], b"a\xe8.jpg", b"b.jpg"] {
        std::fs::write(
            s.path("g").join(OsStr::from_bytes(name)),
            image("cat/cat_0.jpg"),
        )
        .unwrap();
    }
    let out = build_in(
        &s,
        "glob",
        &format!(
            "[[inputs]]\npath = \"{}/*.jpg\"\nlabels = \"none\"\n{DECODE}",
            s.path("g").display()
        ),
        &[],
    );
    assert_counts_add_up(&out, 3);
    let got: Vec<String> = paths(&out).into_values().collect();
    assert_eq!(got, ["a\\xE8.jpg", "a\\xE9.jpg", "b.jpg"]);

    // Two members whose names differ only in bytes that are not UTF-8 are
    // two samples, not one key seen twice.
    let mut tar = tar::Builder::new(Vec::new());
    for name in [&b"s\xe9.jpg"[..], b"s\xe8.jpg"] {
        let data = image("cat/cat_0.jpg");
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        tar.append(&h, data.as_slice()).unwrap();
    }
    s.write("t/shard.tar", tar.into_inner().unwrap());
    let out = build_in(
        &s,
        "tar",
        &format!(
            "[[inputs]]\npath = \"{}\"\n{DECODE}",
            s.path("t/shard.tar").display()
        ),
        &[],
    );
    assert_counts_add_up(&out, 2);
    let ids: Vec<String> = paths(&out).into_keys().collect();
    assert_eq!(ids, ["shard.tar:s\\xE8", "shard.tar:s\\xE9"]);
}

#[test]
fn table_paths_that_leave_their_root_are_rejected_unless_allowed() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("t/img")).unwrap();
    std::fs::write(s.path("t/img/in.jpg"), image("cat/cat_0.jpg")).unwrap();
    std::fs::write(s.path("secret.jpg"), image("dog/dog_0.jpg")).unwrap();
    symlink(s.path("secret.jpg"), s.path("t/img/link.jpg")).unwrap();
    let secret = s.path("secret.jpg").display().to_string();
    let rows = [
        "img/in.jpg".to_string(),
        "../secret.jpg".into(),
        secret.clone(),
        "img/link.jpg".into(),
        "img/../img/in.jpg".into(),
    ];
    let table: String = rows
        .iter()
        .map(|f| format!("{}\n", serde_json::json!({ "file": f })))
        .collect();
    s.write("t/rows.jsonl", table);
    let input = format!(
        "[[inputs]]\npath = \"{}\"\nimage_column = \"file\"\n",
        s.path("t/rows.jsonl").display()
    );
    let out = build_in(&s, "strict", &format!("{input}{DECODE}"), &[]);
    assert_counts_add_up(&out, 5);
    let kinds: Vec<String> = rejects(&out).into_iter().map(|r| r.2).collect();
    assert_eq!(kinds, ["path_outside_root"; 3]);
    assert_eq!(paths(&out).len(), 2);
    let f = std::fs::File::open(out.join("rejects.arrow")).unwrap();
    for b in arrow::ipc::reader::StreamReader::try_new(f, None).unwrap() {
        let b = b.unwrap();
        let m = b.column_by_name("message").unwrap().as_string::<i32>();
        for r in 0..b.num_rows() {
            assert!(
                m.value(r).contains("allow_outside_root = true"),
                "{}",
                m.value(r)
            );
        }
    }

    let out = build_in(
        &s,
        "open",
        &format!("{input}allow_outside_root = true\n{DECODE}"),
        &[],
    );
    assert_counts_add_up(&out, 5);
    assert_eq!(manifest(&out)["totals"]["rejected"], 0);
}

/// A text dataset of 4 tasks, its tasks run without the commit.
fn uncommitted(s: &Scratch) -> std::path::PathBuf {
    corpus(s, "docs", 4, 50);
    s.write(
        "p.toml",
        text_pipeline("docs/*.jsonl", "out", "[plan]\ntask_bytes = 1000\n", ""),
    );
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--no-commit"]));
    s.path("out")
}

#[test]
fn a_damaged_dataset_is_named_by_verify_inspect_train_and_commit() {
    let s = Scratch::new();
    let out = uncommitted(&s);
    assert_ok(&s.kiln(&["commit", "out"]));
    let shards: Vec<String> = manifest(&out)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap().to_string())
        .collect();
    assert!(shards.len() >= 4, "{shards:?}");
    let o = s.kiln(&["verify", "out"]);
    assert_ok(&o);
    let whole = format!("is whole: {} shards", shards.len());
    assert!(stderr(&o).contains(&whole), "{}", stderr(&o));
    // One shard truncated, one with a byte changed, one gone.
    let f = out.join(&shards[0]);
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let f = out.join(&shards[1]);
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    std::fs::remove_file(out.join(&shards[2])).unwrap();
    let train = root().join("pipelines/train.toml");
    let train = train.to_str().unwrap();
    for args in [
        &["verify", "out"][..],
        &["inspect", "out"],
        &["commit", "out"],
        &["train", train, "--data", "out", "--output", "model"],
    ] {
        let o = s.kiln(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for (shard, what) in [
            (&shards[0], "the manifest says"),
            (&shards[1], "its SHA-256 is"),
            (&shards[2], "missing"),
        ] {
            assert!(
                err.lines()
                    .any(|l| l.contains(shard.as_str()) && l.contains(what)),
                "{args:?} does not name {shard} ({what}): {err}"
            );
        }
        assert!(!err.contains(&shards[3]), "{args:?}: {err}");
    }
}

#[test]
fn a_tampered_task_marker_is_refused_naming_it() {
    let s = Scratch::new();
    let out = uncommitted(&s);
    let marker = out.join(".kiln/tasks/00001.json");
    let text = std::fs::read_to_string(&marker).unwrap();
    let tampered = text.replacen("\"samples_in\": ", "\"samples_in\": 1", 1);
    assert_ne!(text, tampered);
    std::fs::write(&marker, tampered).unwrap();
    for args in [&["commit", "out"][..], &["run", "p.toml", "-q"]] {
        let o = s.kiln(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("00001.json") && err.contains("changed after its task wrote it"),
            "{args:?}: {err}"
        );
    }
    assert!(!out.join("manifest.json").exists());
    // Deleted, the marker's task runs again and the dataset commits whole.
    std::fs::remove_file(&marker).unwrap();
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    assert_ok(&s.kiln(&["verify", "out"]));
}

#[test]
fn an_input_changed_in_place_is_caught_by_a_content_check() {
    let s = Scratch::new();
    corpus(&s, "docs", 2, 40);
    let input = s.path("docs/part-000.jsonl");
    for (verify, caught) in [("metadata", false), ("content", true)] {
        let out = format!("out-{verify}");
        s.write(
            "p.toml",
            text_pipeline(
                "docs/*.jsonl",
                &out,
                &format!("[plan]\nverify = \"{verify}\"\n"),
                "",
            ),
        );
        assert_ok(&s.kiln(&["run", "p.toml", "-q", "--prepare"]));
        // Same size, same modification time, other bytes.
        let before = std::fs::metadata(&input).unwrap().modified().unwrap();
        let original = std::fs::read(&input).unwrap();
        let changed = String::from_utf8(original.clone())
            .unwrap()
            .replacen("kiln", "KILN", 1);
        assert_eq!(changed.len(), original.len());
        let put = |bytes: &[u8]| {
            std::fs::write(&input, bytes).unwrap();
            let f = std::fs::File::options().write(true).open(&input).unwrap();
            f.set_modified(before).unwrap();
        };
        put(changed.as_bytes());
        let o = s.kiln(&["run", "p.toml", "-q"]);
        put(&original);
        match caught {
            false => assert_ok(&o),
            true => {
                assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
                assert!(
                    stderr(&o).contains("part-000.jsonl changed: its content (SHA-256) differs"),
                    "{}",
                    stderr(&o)
                );
            }
        }
    }
}
