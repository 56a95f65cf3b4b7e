//! A line reader over a byte range of a file that never holds more than the
//! line limit in memory, whatever the file contains.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

/// One line, without its `\n` (and `\r`).
pub enum Line<'a> {
    Data(&'a [u8]),
    /// The line was longer than the limit; its length in bytes.
    TooLong(u64),
}

pub struct LineReader {
    inner: BufReader<Box<dyn crate::storage::ReadSeek>>,
    /// Offset of the next unread byte.
    pos: u64,
    /// Lines starting at or after `end` belong to the next split.
    end: u64,
    max: usize,
    buf: Vec<u8>,
    /// Offset of the line in `buf`.
    last: u64,
}

impl LineReader {
    /// Open `path` for the lines that start in `start..end`.
    pub fn open(path: &str, start: u64, end: u64, max: usize) -> std::io::Result<Self> {
        let mut file = crate::storage::open(path)?;
        let mut pos = start;
        let mut skip_partial = false;
        if start > 0 {
            // The line at `start` is ours only if the byte before it ends a line.
            file.seek(SeekFrom::Start(start - 1))?;
            let mut b = [0u8; 1];
            file.read_exact(&mut b)?;
            skip_partial = b[0] != b'\n';
        }
        let mut inner = BufReader::with_capacity(256 << 10, file);
        if skip_partial {
            pos += skip_line(&mut inner)?;
        }
        Ok(LineReader {
            inner,
            pos,
            end,
            max,
            buf: Vec::new(),
            last: 0,
        })
    }

    /// The next line and the offset it starts at.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, Line<'_>)>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let start = self.pos;
        self.last = start;
        self.buf.clear();
        let mut len: u64 = 0;
        let mut too_long = false;
        let mut saw_any = false;
        loop {
            let chunk = self.inner.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            saw_any = true;
            let (take, done) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                if self.buf.len() + take > self.max {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            len += take as u64;
            let consumed = take + usize::from(done);
            self.inner.consume(consumed);
            self.pos += consumed as u64;
            if done {
                break;
            }
        }
        if !saw_any {
            return Ok(None);
        }
        if too_long {
            return Ok(Some((start, Line::TooLong(len))));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some((start, Line::Data(&self.buf))))
    }
}

impl LineReader {
    /// Offset of the next unread byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The line the last call to [`LineReader::next_line`] returned as data.
    pub fn last_line(&self) -> (u64, &[u8]) {
        (self.last, &self.buf)
    }
}

/// Skip to just after the next `\n`; returns the bytes skipped.
fn skip_line(reader: &mut BufReader<Box<dyn crate::storage::ReadSeek>>) -> std::io::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(skipped);
        }
        match memchr::memchr(b'\n', chunk) {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(skipped + i as u64 + 1);
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
                skipped += n as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines_of(path: &str, start: u64, end: u64, max: usize) -> Vec<(u64, String)> {
        let mut r = LineReader::open(path, start, end, max).unwrap();
        let mut out = Vec::new();
        while let Some((off, line)) = r.next_line().unwrap() {
            out.push(match line {
                Line::Data(d) => (off, String::from_utf8_lossy(d).into_owned()),
                Line::TooLong(n) => (off, format!("<too long: {n}>")),
            });
        }
        out
    }

    #[test]
    fn splits_partition_the_lines_exactly() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let text = "alpha\nbe\r\n\ngamma delta\nlast-no-newline";
        f.write_all(text.as_bytes()).unwrap();
        let path = f.path().to_str().unwrap();
        let whole = lines_of(path, 0, text.len() as u64, 100);
        for cut in 0..=text.len() as u64 {
            let mut parts = lines_of(path, 0, cut, 100);
            parts.extend(lines_of(path, cut, text.len() as u64, 100));
            assert_eq!(parts, whole, "cut at {cut}");
        }
        assert_eq!(whole[1], (6, "be".to_string()));
        assert_eq!(whole.last().unwrap(), &(23, "last-no-newline".to_string()));
    }

    #[test]
    fn long_lines_are_reported_not_buffered() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"ok\n0123456789abcdef\nfine\n").unwrap();
        let got = lines_of(f.path().to_str().unwrap(), 0, 100, 8);
        assert_eq!(got[1], (3, "<too long: 16>".to_string()));
        assert_eq!(got[2], (20, "fine".to_string()));
    }
}
