//! The page: one HTML file with its style inline and every image and clip
//! a `data:` URL, so it opens from disk with no network. No script: hover
//! values are SVG `<title>`s.

use std::fmt::Write as _;

use base64::Engine as _;

pub use crate::chart::escape;

/// `bytes` as a `data:` URL of type `mime`.
pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 16px 24px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 28px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #b42318; font-weight: 600; }
.problem { background: #fdecea; border: 1px solid #f5c2c0; padding: 8px 12px; margin: 8px 0; }
.note { color: #666; font-size: 13px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px; font-size: 12px; background: #fff; }
.card img { display: block; image-rendering: auto; }
.row { display: flex; gap: 12px; align-items: flex-start; flex-wrap: wrap; }
.pix { image-rendering: pixelated; }
mark { background: #ffe08a; }
pre { background: #f6f8fa; padding: 8px; font-size: 12px; overflow-x: auto; }
code { font-size: 12px; }
svg.chart, svg.spec { display: block; margin: 6px 0; }
"#;

/// An HTML page built section by section.
pub struct Page {
    body: String,
    title: String,
}

impl Page {
    pub fn new(title: &str) -> Page {
        Page {
            body: String::new(),
            title: title.to_string(),
        }
    }

    /// Raw HTML (already escaped where needed).
    pub fn raw(&mut self, html: &str) {
        self.body.push_str(html);
        self.body.push('\n');
    }

    pub fn h2(&mut self, text: &str, id: &str) {
        writeln!(self.body, "<h2 id=\"{id}\">{}</h2>", escape(text)).ok();
    }

    pub fn h3(&mut self, text: &str) {
        writeln!(self.body, "<h3>{}</h3>", escape(text)).ok();
    }

    pub fn p(&mut self, text: &str) {
        writeln!(self.body, "<p>{}</p>", escape(text)).ok();
    }

    pub fn note(&mut self, text: &str) {
        writeln!(self.body, "<p class=\"note\">{}</p>", escape(text)).ok();
    }

    /// A problem the reader must see (a damaged shard, a broken invariant).
    pub fn problem(&mut self, text: &str) {
        writeln!(self.body, "<div class=\"problem\">{}</div>", escape(text)).ok();
    }

    /// A table of text cells; a cell starting with `\u{1}` is raw HTML.
    pub fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        self.body.push_str("<table>");
        if head.iter().any(|h| !h.is_empty()) {
            self.body.push_str("<tr>");
            for h in head {
                write!(self.body, "<th>{}</th>", escape(h)).ok();
            }
            self.body.push_str("</tr>\n");
        }
        for row in rows {
            self.body.push_str("<tr>");
            for cell in row {
                match cell.strip_prefix('\u{1}') {
                    Some(html) => write!(self.body, "<td>{html}</td>"),
                    None if cell.parse::<f64>().is_ok() => {
                        write!(self.body, "<td class=\"num\">{}</td>", escape(cell))
                    }
                    None => write!(self.body, "<td>{}</td>", escape(cell)),
                }
                .ok();
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</table>\n");
    }

    pub fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style></head>\n<body>\n<h1>{}</h1>\n{}</body></html>\n",
            escape(&self.title),
            escape(&self.title),
            self.body
        )
    }
}

/// A cell of raw HTML for [`Page::table`].
pub fn cell(html: String) -> String {
    format!("\u{1}{html}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape("<img src=x onerror='a'> & \"b\""),
            "&lt;img src=x onerror=&#39;a&#39;&gt; &amp; &quot;b&quot;"
        );
        assert_eq!(data_url("image/png", b"ab"), "data:image/png;base64,YWI=");
    }
}
