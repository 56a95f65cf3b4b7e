//! kiln's decode + resize against Pillow, on all cores, same images, in the
//! same run: read the file, decode to RGB (EXIF applied), shorter side to
//! 256 (bicubic), centre crop 224. The reference is
//! `benches/reference_image.py decode` (Pillow, multiprocessing).
//!
//!     python3 benches/gen_images.py --n 2000 --out bench-data/images
//!     cargo bench --bench image_decode [-- DIR]

use std::process::Command;
use std::time::Instant;

use fast_image_resize::Resizer;
use kiln::sources::media::{Media, media_files, walk_media};
use kiln::stages::image::decode::decode;
use kiln::stages::image::resize::resize_crop;
use kiln::stages::image::resize::{CropMode, ResizeFilter, ResizeImageConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

fn kiln_pass(files: &[String]) -> (usize, f64) {
    let cfg = ResizeImageConfig {
        size: 256,
        crop: Some(224),
        crop_mode: CropMode::Center,
        filter: ResizeFilter::Bicubic,
    };
    let start = Instant::now();
    let done = files
        .par_iter()
        .map_init(Resizer::new, |resizer, f| {
            let bytes = std::fs::read(f).expect("readable");
            let (rgb, w, h) = decode(&bytes, 64_000_000).expect("decodes");
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let (out, _, _) =
                resize_crop(resizer, &rgb, w, h, &cfg, 64_000_000, &mut rng).expect("resizes");
            assert_eq!(out.len(), 224 * 224 * 3);
        })
        .count();
    (done, start.elapsed().as_secs_f64())
}

/// Decoding alone, for the breakdown.
fn decode_pass(files: &[String]) -> f64 {
    let start = Instant::now();
    files.par_iter().for_each(|f| {
        let bytes = std::fs::read(f).expect("readable");
        decode(&bytes, 64_000_000).expect("decodes");
    });
    start.elapsed().as_secs_f64()
}

fn pillow_pass(dir: &str) -> (usize, f64) {
    let o = Command::new(".venv/bin/python")
        .args(["benches/reference_image.py", "decode", dir])
        .output()
        .expect("run the Python reference (scripts/setup.sh)");
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert!(
        parts.len() == 4,
        "reference printed: {line} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (parts[1].parse().unwrap(), parts[3].parse().unwrap())
}

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "bench-data/images".into());
    let files: Vec<String> = media_files(
        &walk_media(&dir, false).expect("list the images (benches/gen_images.py)"),
        Media::Image,
    )
    .cloned()
    .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "decode + resize 256 + crop 224, {} JPEGs ({:.1} MB), {} threads, load {}",
        files.len(),
        bytes as f64 / 1e6,
        rayon::current_num_threads(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Warm the page cache for both.
    kiln_pass(&files);
    for round in 1..=2 {
        let d = decode_pass(&files);
        let (n, k) = kiln_pass(&files);
        let (m, p) = pillow_pass(&dir);
        assert_eq!(n, m);
        println!(
            "round {round}: kiln {:.0} img/s (decoding alone {:.0} img/s), Pillow {:.0} img/s: {:.2}x",
            n as f64 / k,
            n as f64 / d,
            m as f64 / p,
            p / k
        );
    }
}
