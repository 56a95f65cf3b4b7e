//! The audio path end to end: every bad file rejected with its reason,
//! SpecAugment copies within their bounds and byte-identical at any thread
//! count, tables and tar shards joined with their clips, a killed run
//! resumed to the same bytes, and configurations refused before any data
//! is read.

use std::collections::BTreeMap;

use crate::common::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Int32Type, UInt32Type};

fn fixture(rel: &str) -> String {
    fixture_path(&format!("audio/{rel}"))
}

/// Run `pipeline` (without its `[output]`) in `s` into the folder `name`.
fn build(s: &Scratch, name: &str, pipeline: &str) -> std::path::PathBuf {
    build_in(s, name, pipeline, &[])
}

#[test]
fn every_bad_file_is_rejected_with_its_reason() {
    let s = Scratch::new();
    let pipeline = format!(
        r#"
[[inputs]]
path = "{}"
format = "audio"
labels = "none"

[[stages]]
type = "decode_audio"

[limits]
max_audio_seconds = 20
"#,
        fixture("bad")
    );
    let out = build(&s, "bad", &pipeline);
    let m = manifest(&out);
    assert_eq!(m["totals"]["samples_in"], 9);
    assert_eq!(m["totals"]["samples_out"], 0);
    let mut got: Vec<(String, String)> = rejects(&out)
        .into_iter()
        .map(|(id, stage, kind)| {
            let file = id.rsplit('/').next().unwrap().trim_end_matches(":0");
            assert_eq!(stage, "decode_audio");
            (file.to_string(), kind)
        })
        .collect();
    got.sort();
    let want = [
        ("adpcm.wav", "unsupported_codec"),
        ("empty.wav", "empty_file"),
        ("garbage.wav", "unknown_format"),
        ("huge_header.wav", "too_long"),
        ("image.wav", "unknown_format"),
        ("long.flac", "too_long"),
        ("truncated.flac", "truncated"),
        ("truncated.wav", "truncated"),
        ("zero_frames.wav", "empty_audio"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// A mono 32-bit float WAV of `samples` at 16 kHz.
fn float_wav(samples: &[f32]) -> Vec<u8> {
    let data = (samples.len() * 4) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&3u16.to_le_bytes()); // IEEE float
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&16000u32.to_le_bytes());
    b.extend_from_slice(&(16000u32 * 4).to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&32u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data.to_le_bytes());
    for v in samples {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

#[test]
fn a_clip_with_nan_or_infinite_samples_is_rejected_not_made_finite() {
    let s = Scratch::new();
    let clean: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.01).sin() * 0.5).collect();
    s.write("clips/clean.wav", float_wav(&clean));
    for (name, bad) in [("nan.wav", f32::NAN), ("inf.wav", f32::INFINITY)] {
        let mut samples = clean.clone();
        samples[4000] = bad;
        s.write(&format!("clips/{name}"), float_wav(&samples));
    }
    let pipeline = format!(
        "[[inputs]]\npath = \"{}\"\nformat = \"audio\"\nlabels = \"none\"\n\n[[stages]]\ntype = \"decode_audio\"\nsample_rate = 16000\n\n[[stages]]\ntype = \"encode_audio\"\n\n[[stages]]\ntype = \"mel_spectrogram\"\n",
        s.path("clips").display()
    );
    let out = build(&s, "out", &pipeline);
    let m = manifest(&out);
    assert_eq!(m["totals"]["samples_in"], 3);
    assert_eq!(m["totals"]["samples_out"], 1);
    let mut got: Vec<(String, String)> = rejects(&out)
        .into_iter()
        .map(|(id, stage, kind)| (id, format!("{stage}/{kind}")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "inf.wav:0".to_string(),
                "decode_audio/non_finite".to_string()
            ),
            (
                "nan.wav:0".to_string(),
                "decode_audio/non_finite".to_string()
            ),
        ]
    );
    // Asked to, decode_audio keeps them with those samples at 0, and each
    // row says how many it zeroed.
    let zero = pipeline.replace(
        "sample_rate = 16000\n",
        "sample_rate = 16000\nnon_finite = \"zero\"\n",
    );
    let out = build(&s, "zeroed", &zero);
    let m = manifest(&out);
    assert_eq!(m["totals"]["samples_out"], 3);
    let mut zeroed = BTreeMap::new();
    for b in read_dataset(&out) {
        let ids = b.column_by_name("sample_id").unwrap().as_string::<i32>();
        let n = b
            .column_by_name("non_finite_zeroed")
            .unwrap()
            .as_primitive::<UInt32Type>();
        let mel = b.column_by_name("mel").unwrap().as_list::<i32>();
        for r in 0..b.num_rows() {
            zeroed.insert(ids.value(r).to_string(), n.value(r));
            let rows = mel.value(r);
            let rows = rows.as_list::<i32>();
            let values = rows.values().as_primitive::<Float32Type>();
            assert!(values.values().iter().all(|v| v.is_finite()));
        }
    }
    assert_eq!(
        zeroed,
        BTreeMap::from([
            ("clean.wav:0".to_string(), 0),
            ("inf.wav:0".to_string(), 1),
            ("nan.wav:0".to_string(), 1)
        ])
    );
}

#[test]
fn clips_with_no_frame_are_rejected_as_too_short() {
    let s = Scratch::new();
    let pipeline = format!(
        r#"
[[inputs]]
path = "{}"

[[stages]]
type = "decode_audio"
sample_rate = 8000

[[stages]]
type = "mel_spectrogram"
n_fft = 8192
center = false
"#,
        fixture("folder")
    );
    let out = build(&s, "short", &pipeline);
    let m = manifest(&out);
    assert_eq!(m["totals"]["samples_out"], 0);
    let rejects = rejects(&out);
    assert_eq!(rejects.len(), 9);
    assert!(
        rejects
            .iter()
            .all(|r| r.1 == "mel_spectrogram" && r.2 == "too_short"),
        "{rejects:?}"
    );
}

/// `(n_mels, frames, values)` of a `mel` row.
fn mel_of(b: &arrow::array::RecordBatch, row: usize) -> (usize, usize, Vec<f32>) {
    let mel = b.column_by_name("mel").unwrap().as_list::<i32>();
    let rows = mel.value(row);
    let rows = rows.as_list::<i32>();
    let mut values = Vec::new();
    for m in 0..rows.len() {
        values.extend_from_slice(rows.value(m).as_primitive::<Float32Type>().values());
    }
    let frames = b
        .column_by_name("mel_frames")
        .unwrap()
        .as_primitive::<UInt32Type>()
        .value(row) as usize;
    (rows.len(), frames, values)
}

fn pairs(b: &arrow::array::RecordBatch, name: &str, row: usize) -> Vec<(usize, usize)> {
    let col = b.column_by_name(name).unwrap().as_list::<i32>();
    let v = col.value(row);
    let v = v.as_fixed_size_list();
    (0..v.len())
        .map(|i| {
            let p = v.value(i);
            let p = p.as_primitive::<UInt32Type>();
            (p.value(0) as usize, p.value(1) as usize)
        })
        .collect()
}

#[test]
fn specaugment_copies_stay_in_bounds_and_are_byte_identical_at_any_thread_count() {
    let s = Scratch::new();
    let mut shas = Vec::new();
    for threads in ["1", "4"] {
        let out = s.path(&format!("sa{threads}"));
        let out_shas = run_example("audio_specaug.toml", &out, threads);
        let m = manifest(&out);
        assert_eq!(m["totals"]["samples_in"], 9);
        assert_eq!(m["totals"]["samples_out"], 9);
        assert_eq!(m["totals"]["rows"], 27);
        shas.push(out_shas);
        // The SM policy: W 40, F 15, mF 2, T 70, p 0.2, mT 2.
        let mut original = Vec::new();
        let mut warped = 0;
        for b in read_dataset(&out) {
            let augment = b
                .column_by_name("augment")
                .unwrap()
                .as_primitive::<UInt32Type>();
            let anchor = b
                .column_by_name("warp_anchor")
                .unwrap()
                .as_primitive::<UInt32Type>();
            let shift = b
                .column_by_name("warp_shift")
                .unwrap()
                .as_primitive::<Int32Type>();
            let value = b
                .column_by_name("mask_value")
                .unwrap()
                .as_primitive::<Float32Type>();
            let ids = b.column_by_name("sample_id").unwrap().as_string::<i32>();
            let audio = b.column_by_name("audio").unwrap().as_struct();
            let wav = audio.column(0).as_binary::<i32>();
            for r in 0..b.num_rows() {
                let (n_mels, frames, mel) = mel_of(&b, r);
                assert_eq!((n_mels, frames), (80, 101), "1 s at 16 kHz, hop 160");
                let k = augment.value(r);
                // The WAV once, on the original row: a copy's is null.
                assert_eq!(audio.is_null(r), k > 0, "row {r}");
                if k == 0 {
                    assert_eq!(&wav.value(r)[..4], b"RIFF");
                    assert!(anchor.is_null(r) && value.is_null(r));
                    assert!(pairs(&b, "freq_masks", r).is_empty());
                    original = mel;
                    continue;
                }
                assert!(ids.value(r).ends_with(&format!("#specaug{k}")));
                assert_ne!(mel, original, "a copy differs from its sample");
                if !anchor.is_null(r) {
                    warped += 1;
                    let (a, w) = (anchor.value(r) as i64, shift.value(r) as i64);
                    assert!(a > 40 && a < frames as i64 - 40, "anchor {a}");
                    assert!(w.abs() <= 40, "shift {w}");
                }
                let v = value.value(r);
                let freq = pairs(&b, "freq_masks", r);
                let time = pairs(&b, "time_masks", r);
                assert_eq!((freq.len(), time.len()), (2, 2));
                for &(f0, f) in &freq {
                    assert!(f <= 15 && f0 + f <= n_mels);
                    for m in f0..f0 + f {
                        assert!(mel[m * frames..(m + 1) * frames].iter().all(|&x| x == v));
                    }
                }
                for &(t0, t) in &time {
                    assert!(t <= 20 && t0 + t <= frames, "p * frames caps the width");
                    for m in 0..n_mels {
                        assert!(
                            mel[m * frames + t0..m * frames + t0 + t]
                                .iter()
                                .all(|&x| x == v)
                        );
                    }
                }
            }
        }
        assert!(warped >= 9, "most copies are warped: {warped} of 18");
        let o = s.kiln(&["inspect", out.to_str().unwrap()]);
        assert_ok(&o);
        let text = String::from_utf8_lossy(&o.stdout);
        for needle in [
            "audio kind",
            "audio 1.00 s at 16000 Hz",
            "mel [80x101]",
            "label 0 (no)",
        ] {
            assert!(text.contains(needle), "`{needle}` not in:\n{text}");
        }
    }
    assert_eq!(shas[0], shas[1]);
}

#[test]
fn tables_and_tar_shards_join_their_clips_with_transcripts_and_labels() {
    let s = Scratch::new();
    for table in ["transcripts.jsonl", "transcripts.csv"] {
        let pipeline = format!(
            r#"
[[inputs]]
path = "{}"
audio_column = "audio"
transcript_column = "transcript"
label_column = "label"
classes = ["no", "yes"]

[[inputs]]
path = "{}"
classes = ["no", "yes"]

[[stages]]
type = "decode_audio"
sample_rate = 8000
duration = 0.5
trim = "random"
"#,
            fixture(table),
            fixture("shard-000000.tar")
        );
        let out = build(&s, table.split('.').nth(1).unwrap(), &pipeline);
        let rejects = rejects(&out);
        assert_eq!(rejects.len(), 1, "{rejects:?}");
        assert_eq!(rejects[0].1, "read_audio");
        assert_eq!(rejects[0].2, "missing_file");
        let mut rows = Vec::new();
        for b in read_dataset(&out) {
            let text = b.column_by_name("text").unwrap().as_string::<i32>();
            let label = b
                .column_by_name("label")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>();
            let n = b
                .column_by_name("num_samples")
                .unwrap()
                .as_primitive::<UInt32Type>();
            let rate = b
                .column_by_name("sample_rate")
                .unwrap()
                .as_primitive::<UInt32Type>();
            for r in 0..b.num_rows() {
                assert_eq!((n.value(r), rate.value(r)), (4000, 8000));
                rows.push((text.value(r).to_string(), label.value(r)));
            }
        }
        let want = [
            ("yes", 1),
            ("yes", 1),
            ("no", 0),
            ("no", 0),
            ("no", 0),
            ("hello world", 0),
            ("good morning", 1),
            ("thank you", 0),
        ];
        let want: Vec<(String, i64)> = want.iter().map(|(t, l)| (t.to_string(), *l)).collect();
        assert_eq!(rows, want);
    }
}

#[test]
fn killed_audio_run_resumes_to_the_same_bytes() {
    let s = Scratch::new();
    let pipeline = format!(
        r#"seed = 5

[[inputs]]
path = "{}"

[[stages]]
type = "decode_audio"
sample_rate = 16000
duration = 0.75
trim = "random"

[[stages]]
type = "mel_spectrogram"
n_fft = 512
hop_length = 128
n_mels = 64
log = "log"

[[stages]]
type = "spec_augment"
policy = "LD"
time_warp = 20
mask_value = "mean"

[output]
path = "unused"
max_shard_rows = 4

[plan]
task_bytes = 40000
batch_rows = 2
"#,
        fixture("folder")
    );
    s.write("p.toml", pipeline);
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "reference"]));
    let out = kill_after_tasks_then_rerun(&s, "killed", 2);
    assert_same_dataset(&s.path("reference"), &out);
    let m = manifest(&out);
    assert_eq!(m["totals"]["samples_in"], 9);
    assert_eq!(m["totals"]["rows"], 18);
}

/// The audio folder and `stages`, without an `[output]`.
fn clips(stages: &str) -> String {
    format!(
        "[[inputs]]\npath = \"{}\"\nformat = \"audio\"\n\n{stages}",
        fixture("folder")
    )
}

/// `filter_length` on durations: the clips outside `[min, max]` seconds are
/// filtered, not rejected, and the ones kept are within it.
#[test]
fn clips_outside_the_duration_bounds_are_filtered() {
    let s = Scratch::new();
    let all = build(&s, "all", &clips("[[stages]]\ntype = \"decode_audio\"\n"));
    let durations: Vec<f64> = read_dataset(&all)
        .iter()
        .flat_map(|b| {
            let n = b
                .column_by_name("num_samples")
                .unwrap()
                .as_primitive::<UInt32Type>();
            let r = b
                .column_by_name("sample_rate")
                .unwrap()
                .as_primitive::<UInt32Type>();
            (0..b.num_rows())
                .map(|i| n.value(i) as f64 / r.value(i) as f64)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut sorted = durations.clone();
    sorted.sort_by(f64::total_cmp);
    // Bounds between the shortest and the longest clip keep some and drop some.
    let (lo, hi) = (sorted[1] - 1e-9, sorted[sorted.len() - 2] + 1e-9);
    let kept = build(
        &s,
        "kept",
        &clips(&format!(
            "[[stages]]\ntype = \"decode_audio\"\n\n[[stages]]\ntype = \"filter_length\"\nmin_seconds = {lo}\nmax_seconds = {hi}\n"
        )),
    );
    let want = durations.iter().filter(|d| (lo..=hi).contains(*d)).count() as u64;
    let totals = &manifest(&kept)["totals"];
    assert_eq!(totals["samples_out"], want);
    assert_eq!(totals["filtered"], durations.len() as u64 - want);
    assert_eq!(
        totals["samples_in"],
        manifest(&all)["totals"]["samples_in"],
        "the same samples read"
    );
    assert_eq!(totals["rejected"], manifest(&all)["totals"]["rejected"]);
}
