//! `kiln report`: the page of every example dataset and of a training run
//! opened in a real headless Chromium (no console error, every image
//! decoded, every chart with its axes; screenshots kept in
//! `target/report-screenshots/`, or `$KILN_SCREENSHOTS`), the spectrogram
//! picture against a reference rendering, SpecAugment outlines against the
//! masked cells, CutMix boxes against `mix_box`, broken datasets, and the
//! bytes a report reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::{Array, AsArray};
use base64::Engine as _;

use crate::common::*;

/// `kiln report PATH -o OUT` from the repository root; the page.
fn report(path: &Path, out: &Path, extra: &[&str]) -> String {
    let o = kiln()
        .current_dir(root())
        .arg("report")
        .arg(path)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert_ok(&o);
    std::fs::read_to_string(out).unwrap()
}

/// A page needs nothing from the network.
fn assert_offline(html: &str) {
    for bad in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "<script src",
        "<link ",
    ] {
        assert!(!html.contains(bad), "the page loads {bad}...");
    }
}

/// Headless Chromium with a fresh profile of its own and nothing started
/// in the background (no network calls, no updater, no sync), so each run
/// leaves no process and no state behind.
fn headless(browser: &str, profile: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

fn chromium() -> Option<&'static str> {
    let profile = tempfile::tempdir().ok()?;
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            headless(b, profile.path())
                .args(["--dump-dom", "about:blank"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The page's own check, run by Chromium in a frame beside the report:
/// every `<img>` and SVG `<image>` decodes, every chart carries its axis
/// descriptions as text, and the counts.
const CHECK: &str = r#"<!DOCTYPE html><html><body><iframe id="f" src="PAGE" style="width:1280px;height:900px"></iframe><pre id="result">pending</pre>
<script>
document.getElementById('f').onload = async () => {
  const d = document.getElementById('f').contentDocument;
  const urls = [...d.querySelectorAll('img')].map(i => i.src)
    .concat([...d.querySelectorAll('image')].map(i => i.getAttribute('href')));
  const decoded = await Promise.all(urls.map(u => new Promise(ok => {
    const i = new Image(); i.onload = () => ok(i.naturalWidth > 0); i.onerror = () => ok(false); i.src = u; })));
  const charts = [...d.querySelectorAll('svg.chart')];
  const texts = c => [...c.querySelectorAll('text')].map(t => t.textContent.trim());
  const noAxes = charts.filter(c => { const t = texts(c);
    return !(t.includes(c.dataset.xAxis) && t.includes(c.dataset.yAxis) && t.length >= 6); }).length;
  document.getElementById('result').textContent = JSON.stringify({
    images: urls.length, broken: decoded.filter(x => !x).length,
    charts: charts.length, no_axes: noAxes,
    spectrograms: d.querySelectorAll('svg.spec').length, audio: d.querySelectorAll('audio').length });
};
</script></body></html>"#;

/// What Chromium saw on `page` (and a screenshot of it as `name`.png).
fn browse(browser: &str, page: &Path, name: &str) -> serde_json::Value {
    let dir = page.parent().unwrap();
    let check = dir.join(format!("check-{name}.html"));
    std::fs::write(
        &check,
        CHECK.replace("PAGE", page.file_name().unwrap().to_str().unwrap()),
    )
    .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let o = headless(browser, profile.path())
        .args([
            "--allow-file-access-from-files",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=30000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", check.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "{name}: console messages: {console:#?}");
    let json = dom
        .split("<pre id=\"result\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| panic!("{name}: no result in {dom}"));
    let result: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|_| panic!("{name}: the check did not finish: {json}"));
    let shots = std::env::var_os("KILN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/report-screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let o = headless(browser, profile.path())
        .args(["--hide-scrollbars", "--window-size=1280,3000"])
        .arg(format!(
            "--screenshot={}",
            shots.join(format!("{name}.png")).display()
        ))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{name}: screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    result
}

#[test]
fn every_example_report_renders_in_a_real_browser() {
    let s = Scratch::new();
    let mut pages = Vec::new();
    for name in [
        "text",
        "image_features",
        "image_mix",
        "audio_specaug",
        "text_augment",
        "multimodal",
    ] {
        let data = s.path(name);
        run_example(&format!("{name}.toml"), &data, "2");
        let page = s.path(&format!("{name}.html"));
        let html = report(&data, &page, &[]);
        assert_offline(&html);
        assert!(html.contains("\u{2713} holds"), "{name}: the invariant");
        assert!(html.contains("<h2 id=\"samples\">"), "{name}");
        pages.push((name, page, html));
    }
    // A training run on the committed multimodal rows.
    let o = kiln()
        .current_dir(root())
        .args(["train", "pipelines/train.toml", "-q", "--data"])
        .arg(s.path("multimodal"))
        .arg("--output")
        .arg(s.path("train"))
        .output()
        .unwrap();
    assert_ok(&o);
    let page = s.path("train.html");
    let html = report(&s.path("train"), &page, &[]);
    assert_offline(&html);
    for axis in [
        "data-y-axis=\"loss (nats per sample)\"",
        "data-x-axis=\"epoch\"",
        "data-y-axis=\"learning rate\"",
    ] {
        assert!(html.contains(axis), "train: {axis}");
    }
    pages.push(("train", page, html));

    // What each page must hold.
    let count = |html: &str, what: &str| html.matches(what).count();
    for (name, _, html) in &pages {
        match *name {
            "text" => assert!(count(html, "class=\"chart\"") >= 1),
            "image_features" => assert!(
                count(html, "<img class=\"sample\"") >= 8 && html.contains("ImageNet class")
            ),
            "image_mix" => assert!(
                count(html, "class=\"cutmix\"") >= 1 && count(html, "<svg class=\"mix\"") >= 8
            ),
            "audio_specaug" => {
                assert!(count(html, "<svg class=\"spec\"") >= 12 && count(html, "<audio") >= 4)
            }
            "text_augment" => assert!(html.contains("<mark>") && html.contains("back_translation")),
            "multimodal" => {
                assert!(
                    count(html, "<svg class=\"spec\"") >= 10
                        && count(html, "<img class=\"sample\"") >= 10
                );
                assert!(html.contains("rows per label") || html.contains("Rows per label"));
            }
            _ => assert!(count(html, "class=\"chart\"") >= 4),
        }
    }

    let Some(browser) = chromium() else {
        eprintln!(
            "SKIPPED the browser checks: no Chromium runs here (scripts/setup.sh installs Debian's chromium)"
        );
        return;
    };
    for (name, page, _) in &pages {
        let r = browse(browser, page, name);
        assert_eq!(r["broken"], 0, "{name}: images that do not decode: {r}");
        assert_eq!(r["no_axes"], 0, "{name}: charts without axes: {r}");
        assert!(
            r["images"].as_u64().unwrap() + r["charts"].as_u64().unwrap() > 0,
            "{name}: {r}"
        );
    }
}

/// The `data:` URL payload of the first `<image>` inside the element that
/// starts at `at`.
fn first_png(html: &str, at: usize) -> image::RgbImage {
    let rest = &html[at..];
    let start = rest.find("href=\"data:image/png;base64,").unwrap() + 28;
    let end = start + rest[start..].find('"').unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&rest[start..end])
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

/// An attribute of the tag that starts at `at`.
fn attr(html: &str, at: usize, name: &str) -> String {
    let tag = &html[at..at + html[at..].find('>').unwrap()];
    let key = format!(" {name}=\"");
    let i = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len();
    tag[i..i + tag[i..].find('"').unwrap()].to_string()
}

/// Each row of a dataset by sample id.
fn rows_by_id(dir: &Path) -> std::collections::HashMap<String, (arrow::array::RecordBatch, usize)> {
    let mut out = std::collections::HashMap::new();
    for b in read_dataset(dir) {
        let ids = b
            .column_by_name("sample_id")
            .unwrap()
            .as_string::<i32>()
            .clone();
        for i in 0..b.num_rows() {
            out.insert(ids.value(i).to_string(), (b.clone(), i));
        }
    }
    out
}

fn mel_of(b: &arrow::array::RecordBatch, i: usize) -> Vec<Vec<f32>> {
    let m = b.column_by_name("mel").unwrap().as_list::<i32>().value(i);
    let m = m.as_list::<i32>();
    (0..m.len())
        .map(|k| {
            m.value(k)
                .as_primitive::<arrow::datatypes::Float32Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// The report's stated colour map: matplotlib's viridis at t = 0, 1/8,
/// ..., 1, interpolated linearly by the reference below.
use kiln::report::spectrogram::VIRIDIS;

/// The reference rendering: the top row is the highest band; scaled from
/// the maximum down 80 dB (or to the minimum); viridis interpolated.
fn reference(mel: &[Vec<f32>]) -> image::RgbImage {
    let all: Vec<f64> = mel.iter().flatten().map(|&v| v as f64).collect();
    let hi = all.iter().cloned().fold(f64::MIN, f64::max);
    let lo = all.iter().cloned().fold(f64::MAX, f64::min).max(hi - 80.0);
    let (n, frames) = (mel.len() as u32, mel[0].len() as u32);
    image::RgbImage::from_fn(frames, n, |x, y| {
        let v = mel[(n - 1 - y) as usize][x as usize] as f64;
        let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 8.0;
        let i = (t.floor() as usize).min(7);
        let f = t - i as f64;
        image::Rgb(
            [0, 1, 2]
                .map(|c| (VIRIDIS[i][c] + (VIRIDIS[i + 1][c] - VIRIDIS[i][c]) * f).round() as u8),
        )
    })
}

#[test]
fn spectrograms_match_the_reference_rendering_and_outline_exactly_the_masked_cells() {
    let s = Scratch::new();
    let data = s.path("audio");
    run_example("audio_specaug.toml", &data, "2");
    let html = report(&data, &s.path("a.html"), &["--samples", "100"]);
    let rows = rows_by_id(&data);
    let mut checked = (0, 0);
    for (at, _) in html.match_indices("<svg class=\"spec\"") {
        let id = attr(&html, at, "data-id");
        let (b, i) = &rows[&id];
        let mel = mel_of(b, *i);
        let (n, frames) = (mel.len(), mel[0].len());
        let png = first_png(&html, at);
        assert!(
            png == reference(&mel),
            "{id}: the picture is not the reference rendering"
        );
        checked.0 += 1;
        // The outlines: each mask's rectangle, and together exactly the
        // cells that hold the mask value.
        let end = at + html[at..].find("</svg>").unwrap();
        let svg = &html[at..end];
        let (cw, ch): (f64, f64) = (
            attr(&html, at, "data-cell-width").parse().unwrap(),
            attr(&html, at, "data-cell-height").parse().unwrap(),
        );
        let (left, top): (f64, f64) = (
            attr(&html, at, "data-left").parse().unwrap(),
            attr(&html, at, "data-top").parse().unwrap(),
        );
        let mut outlined = BTreeSet::new();
        for (r, _) in svg.match_indices("<rect class=\"mask\"") {
            let (kind, start, width) = (
                attr(svg, r, "data-kind"),
                attr(svg, r, "data-start").parse::<usize>().unwrap(),
                attr(svg, r, "data-width").parse::<usize>().unwrap(),
            );
            let g = |k: &str| attr(svg, r, k).parse::<f64>().unwrap();
            let near = |a: f64, b: f64| (a - b).abs() < 0.02;
            if kind == "freq" {
                assert!(
                    near(g("y"), top + (n - start - width) as f64 * ch)
                        && near(g("height"), width as f64 * ch),
                    "{id}"
                );
                assert!(
                    near(g("x"), left) && near(g("width"), frames as f64 * cw),
                    "{id}"
                );
                for band in start..start + width {
                    outlined.extend((0..frames).map(|t| (band, t)));
                }
            } else {
                assert!(
                    near(g("x"), left + start as f64 * cw) && near(g("width"), width as f64 * cw),
                    "{id}"
                );
                outlined
                    .extend((0..n).flat_map(|band| (start..start + width).map(move |t| (band, t))));
            }
        }
        let value = b.column_by_name("mask_value").unwrap();
        if value.is_null(*i) {
            assert!(outlined.is_empty(), "{id}: an original has no masks");
            continue;
        }
        let value = value
            .as_primitive::<arrow::datatypes::Float32Type>()
            .value(*i);
        let masked: BTreeSet<(usize, usize)> = (0..n)
            .flat_map(|band| (0..frames).map(move |t| (band, t)))
            .filter(|&(band, t)| mel[band][t] == value)
            .collect();
        assert!(!masked.is_empty(), "{id}");
        assert!(
            masked == outlined,
            "{id}: outlined cells differ from the masked ones"
        );
        checked.1 += 1;
    }
    assert_eq!(checked, (27, 18), "every original and copy of the example");
}

#[test]
fn every_cutmix_box_drawn_is_the_stored_mix_box() {
    let s = Scratch::new();
    let data = s.path("mix");
    run_example("image_mix.toml", &data, "2");
    let html = report(&data, &s.path("m.html"), &["--samples", "100"]);
    let rows = rows_by_id(&data);
    let mut boxes = 0;
    for (at, _) in html.match_indices("<svg class=\"mix\"") {
        let id = attr(&html, at, "data-id");
        let k: u32 = attr(&html, at, "data-scale").parse().unwrap();
        let (b, i) = &rows[&id];
        let stored = b.column_by_name("mix_box").unwrap();
        let end = at + html[at..].find("</svg>").unwrap();
        let svg = &html[at..end];
        let Some(r) = svg.find("<rect class=\"cutmix\"") else {
            assert!(stored.is_null(*i), "{id}: a CutMix box that is not drawn");
            continue;
        };
        let want: Vec<u32> = stored
            .as_fixed_size_list()
            .value(*i)
            .as_primitive::<arrow::datatypes::UInt32Type>()
            .values()
            .to_vec();
        let drawn: Vec<u32> = attr(svg, r, "data-box")
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(drawn, want, "{id}");
        let [y0, y1, x0, x1] = [want[0], want[1], want[2], want[3]];
        let g = |a: &str| attr(svg, r, a).parse::<u32>().unwrap();
        assert_eq!(
            (g("x"), g("y"), g("width"), g("height")),
            (x0 * k, y0 * k, (x1 - x0) * k, (y1 - y0) * k),
            "{id}"
        );
        // The picture under it is the stored image, scaled.
        let png = first_png(&html, at);
        let b_img = b
            .column_by_name("image")
            .unwrap()
            .as_struct()
            .column(0)
            .as_binary::<i32>()
            .value(*i)
            .to_vec();
        assert!(
            png == image::load_from_memory(&b_img).unwrap().to_rgb8(),
            "{id}"
        );
        boxes += 1;
    }
    let stored = rows
        .values()
        .filter(|(b, i)| !b.column_by_name("mix_box").unwrap().is_null(*i))
        .count();
    assert!(
        boxes > 0 && boxes == stored,
        "{boxes} boxes drawn, {stored} stored"
    );
}

#[test]
fn broken_and_empty_datasets_still_render_and_say_what_is_wrong() {
    let s = Scratch::new();
    // Every sample rejected: a folder of files that are not images.
    for f in [
        "bomb.png",
        "corrupt_header.png",
        "empty.png",
        "notes.jpg",
        "truncated.jpg",
    ] {
        s.write(
            &format!("bad_images/{f}"),
            std::fs::read(root().join("fixtures/images/bad").join(f)).unwrap(),
        );
    }
    let all_bad = s.path("all_bad");
    let pipeline = s.write(
        "bad.toml",
        format!(
            "[[inputs]]\npath = \"{}\"\nformat = \"images\"\nlabels = \"none\"\n\n[[stages]]\ntype = \"decode_image\"\n\n[[stages]]\ntype = \"encode_image\"\n\n[output]\npath = \"{}\"\n",
            s.path("bad_images").display(),
            all_bad.display()
        ),
    );
    let o = kiln().arg("run").arg(&pipeline).arg("-q").output().unwrap();
    assert!(o.status.code() == Some(0), "{}", stderr(&o));
    let html = report(&all_bad, &s.path("all_bad.html"), &[]);
    assert!(html.contains("every sample was rejected"), "{html}");
    assert!(html.contains("decode_image") && html.contains("No row to show."));

    // An empty input.
    s.write("empty/docs.jsonl", "");
    let empty = s.path("empty_out");
    s.write(
        "empty.toml",
        format!(
            "[[inputs]]\npath = \"empty/docs.jsonl\"\n\n[[stages]]\ntype = \"tokenize\"\ntokenizer = \"{}\"\n\n[output]\npath = \"empty_out\"\n",
            fixture_path("text/tokenizer.json")
        ),
    );
    assert_ok(&s.kiln(&["run", "empty.toml", "-q"]));
    let html = report(&empty, &s.path("empty.html"), &[]);
    assert!(html.contains("the dataset has no rows"), "{html}");

    // A shard whose bytes no longer match the manifest (same size), and
    // then a missing one.
    let data = s.path("mix");
    run_example("image_mix.toml", &data, "2");
    let shard = data.join(manifest(&data)["shards"][0]["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&shard).unwrap();
    let k = bytes.len() - 200;
    bytes[k] ^= 0x55;
    std::fs::write(&shard, &bytes).unwrap();
    let html = report(&data, &s.path("damaged.html"), &[]);
    assert!(html.contains("damaged: its SHA-256 is"), "{html}");
    let mut pages = vec![
        ("all_bad", s.path("all_bad.html")),
        ("empty", s.path("empty.html")),
        ("damaged", s.path("damaged.html")),
    ];
    std::fs::remove_file(&shard).unwrap();
    let html = report(&data, &s.path("missing.html"), &[]);
    assert!(html.contains(": missing</div>"), "{html}");
    pages.push(("missing", s.path("missing.html")));
    if let Some(browser) = chromium() {
        for (name, page) in pages {
            let r = browse(browser, &page, &format!("broken-{name}"));
            assert_eq!(r["broken"], 0, "{name}: {r}");
            assert_eq!(r["no_axes"], 0, "{name}: {r}");
        }
    }
}

#[test]
fn a_report_reads_only_the_shards_of_its_sample() {
    let s = Scratch::new();
    // 24,000 rows in 24 shards.
    corpus(&s, "docs", 4, 6000);
    let p = text_pipeline("docs/*.jsonl", "out", "", "");
    let p = p.replace("[output]\n", "[output]\nmax_shard_rows = 1000\n");
    s.write("p.toml", p);
    assert_ok(&s.kiln(&["run", "p.toml", "-q"]));
    let data = s.path("out");
    let m = manifest(&data);
    let shards = m["shards"].as_array().unwrap();
    assert!(shards.len() >= 20, "{}", shards.len());
    let opts = kiln::report::Options {
        samples: 5,
        seed: 3,
        full: false,
    };
    let page = kiln::report::report(&data, &opts).unwrap();
    let size = |f: &str| std::fs::metadata(data.join(f)).unwrap().len();
    let read: u64 = page.shards_read.iter().map(|f| size(f)).sum();
    let rejects = size(m["rejects_file"].as_str().unwrap());
    // The shards that hold 10,000 rows (the least the statistics read),
    // each read once, and the rejects file; nothing else.
    assert!(
        page.shards_read.len() >= 10 && page.shards_read.len() < shards.len() / 2 + 2,
        "{:?}",
        page.shards_read
    );
    assert_eq!(page.bytes_read, read + rejects);
    // The same seed, the same page; another seed, another sample.
    let again = kiln::report::report(&data, &opts).unwrap();
    assert!(again.html == page.html);
    let other = kiln::report::report(
        &data,
        &kiln::report::Options {
            seed: 4,
            ..opts.clone()
        },
    )
    .unwrap();
    assert!(other.html != page.html);
    // --full reads every shard, once.
    let full = kiln::report::report(&data, &kiln::report::Options { full: true, ..opts }).unwrap();
    assert_eq!(full.shards_read.len(), shards.len());
    assert_eq!(full.bytes_read, m["bytes"].as_u64().unwrap() + rejects);
    // The command's memory stays flat: under 200 MiB of peak resident set.
    let o = kiln()
        .arg("report")
        .arg(&data)
        .arg("-o")
        .arg(s.path("r.html"))
        .arg("--full")
        .output()
        .unwrap();
    assert_ok(&o);
    let e = stderr(&o);
    let peak: f64 = e
        .split("peak memory ")
        .nth(1)
        .and_then(|r| r.split(" MiB").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{e}"));
    assert!(peak < 200.0, "peak {peak} MiB");
}
