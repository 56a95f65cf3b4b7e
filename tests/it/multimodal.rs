//! Multimodal records: pipelines/multimodal.toml joins each table row with
//! its image and its audio file, and writes the caption's token ids, the
//! image features, the spectrogram and the label in one row; a row whose
//! image or audio fails is rejected with that file's reason; the bytes are
//! the same at any thread count.

use crate::common::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, UInt32Type};

#[test]
fn the_example_joins_text_image_and_audio_in_one_row() {
    let out = tempfile::tempdir().unwrap();
    let one = run_example("multimodal.toml", &out.path().join("one"), "1");
    let three = run_example("multimodal.toml", &out.path().join("three"), "3");
    assert_eq!(one, three, "byte-identical at 1 and 3 threads");
    let dir = out.path().join("one");
    let batches = read_dataset(&dir);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    // The 13 good committed rows and the 300 that setup generates.
    assert_eq!(rows, 313);
    for b in &batches {
        let features = b
            .column_by_name("image_features")
            .unwrap()
            .as_fixed_size_list();
        assert_eq!(features.value_length(), 1280);
        let mel = b.column_by_name("mel").unwrap().as_list::<i32>();
        let frames = b
            .column_by_name("mel_frames")
            .unwrap()
            .as_primitive::<UInt32Type>();
        let ids = b.column_by_name("input_ids").unwrap().as_list::<i32>();
        let label = b
            .column_by_name("label")
            .unwrap()
            .as_primitive::<Int64Type>();
        let audio = b.column_by_name("audio_path").unwrap().as_string::<i32>();
        let image = b.column_by_name("path").unwrap().as_string::<i32>();
        for r in 0..b.num_rows() {
            assert_eq!(mel.value(r).len(), 80, "80 mel bands");
            assert_eq!(frames.value(r), 101, "1 s at hop 160, centred");
            assert!(ids.value(r).len() > 5);
            assert!((0..3).contains(&label.value(r)) && !label.is_null(r));
            let (image, audio) = (image.value(r), audio.value(r));
            assert!(
                (image.starts_with("images/") && audio.starts_with("audio/"))
                    || (image.starts_with("multimodal/generated/")
                        && audio.starts_with("multimodal/generated/")),
                "{image} {audio}"
            );
        }
    }
    // Each failing file rejects its row with the reason of that file.
    let mut kinds: Vec<(String, String)> = rejects(&dir)
        .into_iter()
        .map(|(_, stage, kind)| (stage, kind))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("decode_image".into(), "unknown_format".into()),
            ("decode_image".into(), "unknown_format".into()),
            ("read_audio".into(), "missing_file".into()),
            ("read_image".into(), "missing_file".into()),
        ]
    );
    let m = manifest(&dir);
    assert_eq!(m["kind"], "multimodal");
    assert_eq!(m["totals"]["samples_in"], 317);
}
