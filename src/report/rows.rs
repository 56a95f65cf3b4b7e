//! The sampled rows on the page, and the statistics over the rows read.
//! Each sampled original is a card with everything the row holds: its
//! text (decoded from the token ids with the dataset's tokenizer, or the
//! `text` column), its image (the stored image, or the source file when
//! the dataset keeps only features), its spectrogram with its clip, its
//! label and EfficientNet's top classes; then its copies: a mixed image
//! beside its two sources with the CutMix box drawn, a SpecAugment
//! spectrogram with its masks and warp outlined, an augmented text with
//! the words that changed marked.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::Options;
use super::dataset::Stats;
use super::html::{Page, data_url, escape};
use super::row::{Group, Row};
use super::spectrogram::{self, Axes, Marks};
use crate::config::PipelineConfig;
use crate::stages::StageConfig;

/// What the cards need besides the rows.
pub struct Context<'a> {
    pub tokenizer: Option<&'a tokenizers::Tokenizer>,
    pub pipeline: Option<&'a PipelineConfig>,
    pub opts: &'a Options,
}

impl Context<'_> {
    fn stage<T>(&self, pick: impl Fn(&StageConfig) -> Option<&T>) -> Option<&T> {
        self.pipeline?.stages.iter().find_map(pick)
    }

    fn axes(&self, row: &Row) -> Option<Axes> {
        let mel = self.stage(|s| match s {
            StageConfig::MelSpectrogram(c) => Some(c),
            _ => None,
        })?;
        Some(Axes::of(mel, row.u64("sample_rate")? as u32))
    }

    /// A source file a row names (`path`, `audio_path`), when it is on
    /// this disk under one of the pipeline's inputs and not too large.
    fn source(&self, row: &Row, column: &str) -> Option<(PathBuf, Vec<u8>)> {
        let rel = row.str(column)?;
        for (root, allow) in super::dataset::source_roots(self.pipeline?) {
            let p = root.join(&rel);
            // A row's path is data: it is shown only from inside its root,
            // as the pipeline read it.
            let inside = allow
                || std::fs::canonicalize(&root).is_ok_and(|r| {
                    crate::sources::media::check_local(&p.to_string_lossy(), Some(&r)).is_ok()
                });
            if inside && std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() <= 64 << 20) {
                return Some((p.clone(), std::fs::read(&p).ok()?));
            }
        }
        None
    }
}

/// The token-length histogram, the labels and the copies.
pub fn statistics(
    page: &mut Page,
    stats: &Stats,
    pipeline: Option<&PipelineConfig>,
    partial: bool,
) {
    page.h2("Statistics", "statistics");
    if partial {
        page.note(&format!(
            "Over the {} rows of the shards read for this page (kiln report --full reads every shard).",
            stats.rows
        ));
    }
    let stages = pipeline.map(|p| p.stages.as_slice()).unwrap_or_default();
    if !stats.lengths.is_empty() {
        let mut markers = Vec::new();
        for s in stages {
            match s {
                StageConfig::Chunk(c) => {
                    markers.push((
                        c.max_tokens as f64,
                        format!("chunk window: {} tokens", c.max_tokens),
                    ));
                    if c.stride > 0 {
                        let step = c.max_tokens.saturating_sub(c.stride);
                        markers.push((
                            step as f64,
                            format!("window step: {step} (stride {})", c.stride),
                        ));
                    }
                }
                StageConfig::FilterLength(f) => {
                    if let Some(m) = f.min_tokens {
                        markers.push((m as f64, format!("filter: at least {m}")));
                    }
                    if let Some(m) = f.max_tokens {
                        markers.push((m as f64, format!("filter: at most {m}")));
                    }
                }
                _ => {}
            }
        }
        let bins = crate::chart::bin_counts(&stats.lengths, 40);
        push_chart(
            page,
            crate::chart::histogram("Tokens per row", "tokens", &bins, &markers),
        );
    }
    if !stats.labels_after.is_empty() {
        let labels: Vec<String> = stats.labels_after.keys().cloned().collect();
        let after: Vec<f64> = labels
            .iter()
            .map(|l| stats.labels_after[l] as f64)
            .collect();
        let chart = if stats.copies.is_empty() {
            crate::chart::bars(
                "Rows per label",
                "label",
                "rows",
                &labels,
                &[("rows", after)],
            )
        } else {
            let before: Vec<f64> = labels
                .iter()
                .map(|l| stats.labels_before.get(l).copied().unwrap_or(0) as f64)
                .collect();
            crate::chart::bars(
                "Rows per label, before and after the copies",
                "label",
                "rows",
                &labels,
                &[("originals", before), ("with copies", after)],
            )
        };
        push_chart(page, chart);
    }
    if !stats.copies.is_empty() {
        let rows: Vec<Vec<String>> = stats
            .copies
            .iter()
            .map(|(m, n)| vec![m.clone(), n.to_string()])
            .collect();
        page.table(&["copies made by", "rows"], &rows);
    }
}

fn push_chart(page: &mut Page, chart: std::result::Result<String, String>) {
    match chart {
        Ok(svg) => page.raw(&svg),
        Err(e) => page.problem(&e),
    }
}

/// A decoded image, fitted in `max` pixels, as an `<img>` (PNG up to
/// 128 px, else JPEG), or why not.
fn thumbnail(
    bytes: &[u8],
    max: u32,
    class: &str,
) -> std::result::Result<(String, u32, u32), String> {
    let img =
        image::load_from_memory(bytes).map_err(|e| format!("cannot decode the image: {e}"))?;
    let img = if img.width() > max || img.height() > max {
        img.thumbnail(max, max)
    } else {
        img
    };
    let (w, h) = (img.width(), img.height());
    let url = if w.max(h) <= 128 {
        data_url("image/png", &super::png(&img))
    } else {
        data_url("image/jpeg", &super::jpeg(&img))
    };
    Ok((
        format!("<img class=\"{class}\" src=\"{url}\" width=\"{w}\" height=\"{h}\" alt=\"\">"),
        w,
        h,
    ))
}

/// The mixed image scaled `k` times with the CutMix box over it.
fn mixed(row: &Row, bytes: &[u8]) -> String {
    let Ok(img) = image::load_from_memory(bytes) else {
        return "<p class=\"bad\">cannot decode the mixed image</p>".into();
    };
    // Small images scaled up k times (pixels kept, PNG); large ones down to
    // 192 px (JPEG), the box scaled alike.
    let (w, h) = (img.width(), img.height());
    let (f, url) = if w.max(h) <= 192 {
        let k = 192 / w.max(h).max(1);
        (k as f64, data_url("image/png", &super::png(&img)))
    } else {
        let small = img.thumbnail(192, 192);
        (
            192.0 / w.max(h) as f64,
            data_url("image/jpeg", &super::jpeg(&small)),
        )
    };
    let (dw, dh) = (w as f64 * f, h as f64 * f);
    let mut s = format!(
        "<svg class=\"mix\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{dw:.0}\" height=\"{dh:.0}\" data-id=\"{}\" data-scale=\"{f}\"><image x=\"0\" y=\"0\" width=\"{dw}\" height=\"{dh}\" style=\"image-rendering:pixelated\" href=\"{url}\"/>",
        escape(&row.id),
    );
    if let Some(b) = row.list("mix_box").filter(|b| b.len() == 4) {
        let [y0, y1, x0, x1] = [b[0], b[1], b[2], b[3]].map(|v| v as u32);
        write!(
            s,
            "<rect class=\"cutmix\" data-box=\"{y0} {y1} {x0} {x1}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ff2d55\" stroke-width=\"2\"/>",
            x0 as f64 * f,
            y0 as f64 * f,
            (x1 - x0) as f64 * f,
            (y1 - y0) as f64 * f
        )
        .ok();
    }
    s.push_str("</svg>");
    s
}

/// Words of `copy` not in its longest common subsequence with `original`
/// marked, and likewise the other way.
pub fn word_diff(original: &str, copy: &str) -> (String, String) {
    let a: Vec<&str> = original.split_whitespace().collect();
    let b: Vec<&str> = copy.split_whitespace().collect();
    if a.len() * b.len() > 4_000_000 {
        return (escape(original), escape(copy));
    }
    let mut l = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            l[i][j] = if a[i] == b[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut keep_a, mut keep_b) = (vec![false; a.len()], vec![false; b.len()]);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            keep_a[i] = true;
            keep_b[j] = true;
            i += 1;
            j += 1;
        } else if l[i + 1][j] >= l[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    let show = |words: &[&str], keep: &[bool]| {
        words
            .iter()
            .zip(keep)
            .map(|(w, k)| {
                if *k {
                    escape(w)
                } else {
                    format!("<mark>{}</mark>", escape(w))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (show(&a, &keep_a), show(&b, &keep_b))
}

fn text_of(row: &Row, cx: &Context) -> Option<String> {
    if let Some(t) = row.str("text") {
        return Some(t);
    }
    let ids: Vec<u32> = row
        .list("input_ids")?
        .into_iter()
        .map(|v| v as u32)
        .collect();
    cx.tokenizer?.decode(&ids, false).ok()
}

fn audio_player(row: &Row, cx: &Context) -> String {
    // About 30 s of 16 kHz 16-bit audio: a dozen clips keep the page small.
    const MAX: usize = 1 << 20;
    let (bytes, mime) = match row.media("audio") {
        Some(b) => (b, "audio/wav".to_string()),
        None => match cx.source(row, "audio_path") {
            Some((p, b)) => {
                let ext = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_lowercase();
                let mime = match ext.as_str() {
                    "mp3" => "audio/mpeg",
                    "flac" => "audio/flac",
                    "ogg" | "oga" => "audio/ogg",
                    _ => "audio/wav",
                };
                (b, mime.to_string())
            }
            None => return String::new(),
        },
    };
    if bytes.len() > MAX {
        return format!(
            "<p class=\"note\">clip of {} bytes: not inlined</p>",
            bytes.len()
        );
    }
    format!(
        "<audio controls preload=\"none\" src=\"{}\"></audio>",
        data_url(&mime, &bytes)
    )
}

/// Frames drawn at most (30 s at a hop of 10 ms); a longer clip's
/// spectrogram is drawn to there, and says so.
const MAX_FRAMES: usize = 3000;

fn spectrogram_of(row: &Row, cx: &Context, title: &str) -> Option<String> {
    let mut mel = row.mel()?;
    let frames = mel.first().map_or(0, Vec::len);
    for band in &mut mel {
        band.truncate(MAX_FRAMES);
    }
    let inside = |m: &[u32; 2]| (m[0] as usize) < MAX_FRAMES;
    let marks = Marks {
        freq_masks: row.pairs("freq_masks"),
        time_masks: row
            .pairs("time_masks")
            .into_iter()
            .filter(inside)
            .map(|[s, w]| [s, w.min(MAX_FRAMES as u32 - s)])
            .collect(),
        warp: row
            .u64("warp_anchor")
            .zip(row.f64("warp_shift"))
            .map(|(a, s)| (a as u32, s as i32))
            .filter(|&(a, s)| ((a as i64 + s as i64) as usize) < MAX_FRAMES),
    };
    let svg = spectrogram::svg(&mel, cx.axes(row).as_ref(), &marks, title);
    Some(if frames > MAX_FRAMES {
        format!("{svg}<div class=\"note\">the first {MAX_FRAMES} of {frames} frames</div>")
    } else {
        svg
    })
}

fn image_of(row: &Row, cx: &Context) -> Option<String> {
    let (bytes, from) = match row.media("image") {
        Some(b) => (b, None),
        // A dataset of image features keeps the image's path, not its bytes.
        None if row.col("image_features").is_some() || row.col("top_classes").is_some() => {
            let (p, b) = cx.source(row, "path")?;
            (b, Some(p))
        }
        None => return None,
    };
    Some(match thumbnail(&bytes, 192, "sample") {
        Ok((img, _, _)) => match from {
            Some(p) => format!(
                "{img}<div class=\"note\">source file {}</div>",
                escape(&p.display().to_string())
            ),
            None => img,
        },
        Err(e) => format!("<p class=\"bad\">{}</p>", escape(&e)),
    })
}

/// One card per sampled original.
pub fn samples(page: &mut Page, groups: &[Group], cx: &Context) {
    page.h2("Samples", "samples");
    let mut groups: Vec<&Group> = groups.iter().filter(|g| g.original.is_some()).collect();
    groups.sort_by(|a, b| {
        a.original
            .as_ref()
            .map(|r| &r.id)
            .cmp(&b.original.as_ref().map(|r| &r.id))
    });
    if groups.is_empty() {
        page.p("No row to show.");
        return;
    }
    page.note(&format!(
        "{} originals drawn with seed {} (kiln report --samples N --seed S), each with its copies.",
        groups.len(),
        cx.opts.seed
    ));
    page.raw("<div class=\"grid\">");
    for g in groups {
        let Some(o) = &g.original else { continue };
        let mut s = String::from("<div class=\"card\">");
        write!(s, "<div><b>{}</b>", escape(&o.id)).ok();
        if let Some(l) = o.label() {
            write!(s, " &middot; label <b>{}</b>", escape(&l)).ok();
        }
        s.push_str("</div><div class=\"row\">");
        if let Some(img) = image_of(o, cx) {
            write!(s, "<div>{img}</div>").ok();
        }
        if let Some(spec) = spectrogram_of(o, cx, &o.id) {
            write!(s, "<div>{spec}{}</div>", audio_player(o, cx)).ok();
        } else if o.col("audio").is_some() {
            s.push_str(&audio_player(o, cx));
        }
        s.push_str("</div>");
        if let Some(text) = text_of(o, cx) {
            let windows = 1 + g
                .members
                .iter()
                .filter(|m| m.u64("augment").unwrap_or(0) == 0)
                .count();
            let tokens = o
                .u64("length")
                .map(|n| {
                    format!(
                        " ({n} tokens{})",
                        if windows > 1 {
                            format!(", {windows} windows")
                        } else {
                            String::new()
                        }
                    )
                })
                .unwrap_or_default();
            write!(
                s,
                "<p style=\"max-width:520px\">{}{}</p>",
                escape(&text),
                escape(&tokens)
            )
            .ok();
        }
        if let (Some(classes), Some(scores)) = (o.list("top_classes"), o.list("top_scores")) {
            let top: Vec<String> = classes
                .iter()
                .zip(&scores)
                .map(|(c, p)| format!("ImageNet class {c}: {p:.3}"))
                .collect();
            write!(
                s,
                "<div class=\"note\">top classes: {}</div>",
                escape(&top.join("; "))
            )
            .ok();
        }
        for m in g
            .members
            .iter()
            .filter(|m| m.u64("augment").unwrap_or(0) > 0)
        {
            s.push_str(&copy_card(o, m, &g.partners, cx));
        }
        s.push_str("</div>");
        page.raw(&s);
    }
    page.raw("</div>");
}

/// A copy beside what it was made from.
fn copy_card(o: &Row, m: &Row, partners: &[Row], cx: &Context) -> String {
    let mut s = format!(
        "<div class=\"card\" style=\"margin-top:8px\"><div><b>{}</b>",
        escape(&m.id)
    );
    if let Some(method) = m.str("augmentation").or_else(|| m.str("mix_mode")) {
        write!(s, " &middot; {}", escape(&method)).ok();
    }
    if let Some(note) = m.str("augment_note") {
        write!(s, " &middot; <i>{}</i>", escape(&note)).ok();
    }
    s.push_str("</div>");
    if let Some(bytes) = m.media("image")
        && m.str("mix_mode").is_some()
    {
        let partner = m
            .str("mix_partner")
            .and_then(|p| partners.iter().find(|r| r.id == p));
        let src = |r: Option<&Row>, name: &str| match r.and_then(|r| r.media("image")) {
            Some(b) => match thumbnail(&b, 128, "pix") {
                Ok((img, _, _)) => format!("<div>{img}<div class=\"note\">{name}</div></div>"),
                Err(e) => format!("<div class=\"bad\">{}</div>", escape(&e)),
            },
            None => format!("<div class=\"note\">{name}: not in the shards read</div>"),
        };
        s.push_str("<div class=\"row\">");
        s.push_str(&src(
            Some(o),
            &format!("A: {}", o.label().unwrap_or_default()),
        ));
        s.push_str(&src(
            partner,
            &format!("B: {}", m.label_b().unwrap_or_default()),
        ));
        write!(
            s,
            "<div>{}<div class=\"note\">mixed</div></div></div>",
            mixed(m, &bytes)
        )
        .ok();
        let mixed_label = m
            .list("label_mixed")
            .map(|v| {
                v.iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        write!(
            s,
            "<div class=\"note\">lambda {:.3} (share of A) &middot; mixed label [{}]</div>",
            m.f64("lam").unwrap_or(f64::NAN),
            escape(&mixed_label)
        )
        .ok();
    } else if let Some(spec) = spectrogram_of(m, cx, &m.id) {
        s.push_str(&spec);
        if let Some(v) = m.f64("mask_value") {
            write!(s, "<div class=\"note\">masked cells hold {v}</div>").ok();
        }
    } else if let (Some(a), Some(b)) = (text_of(o, cx), text_of(m, cx)) {
        let (a, b) = word_diff(&a, &b);
        write!(s, "<table><tr><th>original</th><td>{a}</td></tr><tr><th>copy</th><td>{b}</td></tr></table>").ok();
    }
    s.push_str("</div>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_a_copy_changed_are_marked() {
        let (a, b) = word_diff("the room was dirty", "the chamber was dirty <b>");
        assert_eq!(a, "the <mark>room</mark> was dirty");
        assert_eq!(
            b,
            "the <mark>chamber</mark> was dirty <mark>&lt;b&gt;</mark>"
        );
    }
}
