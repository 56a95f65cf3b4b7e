//! Image decoding: encoded bytes to RGB8 pixels with the EXIF orientation
//! applied (alpha dropped, grey and palette expanded, a GIF's first frame).
//! The header is read first: an image that claims more than `max_pixels`
//! is rejected before a byte of it is decoded, and the decoder's
//! allocations are bounded whatever the header says. A JPEG with no
//! end-of-image marker is rejected as truncated rather than padded with
//! grey.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use crate::rejects::Rejection;

/// Pixels `(rgb, width, height)`, or why not.
pub type Decoded = std::result::Result<(Vec<u8>, u32, u32), Rejection>;

/// Decode encoded image bytes to RGB8, orientation applied.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Decoded {
    let (decoder, orientation, _) = open(bytes, max_pixels)?;
    decode_all(decoder, orientation)
}

/// Pixels [`decode_into`] left in its buffer: `width` x `height`, which is
/// the image's `full` size (orientation applied) at 1/`scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoding {
    pub width: u32,
    pub height: u32,
    pub full: (u32, u32),
    /// 1, or 2, 4 or 8 for a JPEG decoded at a reduced DCT scale.
    pub scale: u32,
}

impl Decoding {
    pub fn whole(width: u32, height: u32) -> Self {
        Decoding {
            width,
            height,
            full: (width, height),
            scale: 1,
        }
    }

    pub fn bytes(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }
}

/// [`decode`] into `buf`, which a caller keeps from image to image: the
/// pixels are `buf[..width * height * 3]`. An RGB image with no rotation (a
/// colour JPEG, most photos) is decoded in place, without a new full-size
/// buffer for the kernel to zero.
///
/// With `draft` (a shorter side), a JPEG is decoded by libjpeg-turbo at the
/// smallest DCT scale of 1/8, 1/4 and 1/2 that keeps its shorter side at
/// least that long, as Pillow's `draft` does; one it cannot decode so
/// (CMYK, lossless, a warning on damaged data) is decoded in full.
pub fn decode_into(
    bytes: &[u8],
    max_pixels: u64,
    draft: Option<u32>,
    buf: &mut Vec<u8>,
) -> Result<Decoding, Rejection> {
    let (decoder, orientation, format) = open(bytes, max_pixels)?;
    if let (Some(short), ImageFormat::Jpeg) = (draft, format) {
        let (w, h) = decoder.dimensions();
        if let Some(d) = draft_jpeg(bytes, (w, h), short, orientation, buf) {
            return Ok(d);
        }
    }
    let plain = matches!(orientation, Orientation::NoTransforms);
    if plain && decoder.color_type() == ColorType::Rgb8 {
        let (w, h) = decoder.dimensions();
        let d = Decoding::whole(w, h);
        decoder
            .read_image(grown(buf, d.bytes()))
            .map_err(classify)?;
        return Ok(d);
    }
    let (rgb, w, h) = decode_all(decoder, orientation)?;
    *buf = rgb;
    Ok(Decoding::whole(w, h))
}

/// The first `n` bytes of `buf`, a buffer kept from image to image, which
/// grows (never shrinks) to hold them; what it held before is left there.
pub fn grown(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    &mut buf[..n]
}

/// The largest of 8, 4 and 2 that keeps the shorter side of `w` x `h` at
/// least `short` (libjpeg-turbo rounds a scaled side up).
pub fn draft_scale(w: u32, h: u32, short: u32) -> Option<u32> {
    [8, 4, 2]
        .into_iter()
        .find(|s| w.min(h).div_ceil(*s) >= short)
}

thread_local! {
    /// Each thread's libjpeg-turbo decompressor.
    static TJ: std::cell::RefCell<Option<turbojpeg::Decompressor>> = const { std::cell::RefCell::new(None) };
}

/// A JPEG of `size` (as stored) decoded by libjpeg-turbo at a reduced DCT
/// scale into `buf`, oriented; `None` when it is not to be or cannot be.
fn draft_jpeg(
    bytes: &[u8],
    size: (u32, u32),
    short: u32,
    orientation: Orientation,
    buf: &mut Vec<u8>,
) -> Option<Decoding> {
    let scale = draft_scale(size.0, size.1, short)?;
    let ((sw, sh), n) = TJ.with_borrow_mut(|tj| {
        let tj = match tj {
            Some(tj) => tj,
            None => tj.insert(turbojpeg::Decompressor::new().ok()?),
        };
        let header = tj.read_header(bytes).ok()?;
        let cmyk = matches!(
            header.colorspace,
            turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
        );
        // The header the checks passed is the one decoded.
        if (header.width, header.height) != (size.0 as usize, size.1 as usize)
            || header.is_lossless
            || cmyk
        {
            return None;
        }
        // A progressive JPEG of thousands of scans is work out of all
        // proportion to its bytes: refused here, decoded in full.
        tj.set_scan_limit(500).ok()?;
        let factor = turbojpeg::ScalingFactor::new(1, scale as usize);
        tj.set_scaling_factor(factor).ok()?;
        let (sw, sh) = (factor.scale(header.width), factor.scale(header.height));
        let n = sw * sh * 3;
        let image = turbojpeg::Image {
            pixels: grown(buf, n),
            width: sw,
            pitch: sw * 3,
            height: sh,
            format: turbojpeg::PixelFormat::RGB,
        };
        tj.decompress(bytes, image).ok()?;
        Some(((sw as u32, sh as u32), n))
    })?;
    if matches!(orientation, Orientation::NoTransforms) {
        return Some(Decoding {
            width: sw,
            height: sh,
            full: size,
            scale,
        });
    }
    // The pixels move out of `buf` to be turned and back, uncopied, as a
    // full decode's do.
    let mut raw = std::mem::take(buf);
    raw.truncate(n);
    let mut img = DynamicImage::ImageRgb8(image::RgbImage::from_raw(sw, sh, raw)?);
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    let (width, height) = rgb.dimensions();
    *buf = rgb.into_raw();
    let full = if (width, height) == (sw, sh) {
        size
    } else {
        (size.1, size.0)
    };
    Some(Decoding {
        width,
        height,
        full,
        scale,
    })
}

/// The decoder of `bytes` and the orientation its metadata asks for, once
/// the header has passed the checks.
fn open(
    bytes: &[u8],
    max_pixels: u64,
) -> Result<(Box<dyn ImageDecoder + '_>, Orientation, ImageFormat), Rejection> {
    if bytes.is_empty() {
        return Err(("empty_file", "the file is empty".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ("unreadable_image", e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err((
            "unknown_format",
            "the bytes are not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"
                .into(),
        ));
    };
    if format == ImageFormat::Jpeg && !ends_jpeg(bytes) {
        return Err((
            "truncated",
            "the JPEG has no end-of-image marker: the file is cut short".into(),
        ));
    }
    // Bound what the decoder may allocate, whatever the header says.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err((
            "too_many_pixels",
            format!(
                "the image claims {w} x {h} = {pixels} pixels, over limits.max_image_pixels = {max_pixels}"
            ),
        ));
    }
    if pixels == 0 {
        return Err(("empty_image", format!("the image is {w} x {h}")));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok((Box::new(decoder), orientation, format))
}

/// Any image to RGB8: alpha dropped, grey and palette expanded, rotated.
fn decode_all(decoder: Box<dyn ImageDecoder + '_>, orientation: Orientation) -> Decoded {
    let mut img = DynamicImage::from_decoder(decoder).map_err(classify)?;
    img.apply_orientation(orientation);
    let (w, h) = (img.width(), img.height());
    Ok((img.into_rgb8().into_raw(), w, h))
}

/// [`decode`], with a decoder's panic on hostile bytes made a reject.
pub fn decode_guarded(bytes: &[u8], max_pixels: u64) -> Decoded {
    guarded(|| decode(bytes, max_pixels))
}

/// [`decode_into`], with a decoder's panic on hostile bytes made a reject.
pub fn decode_into_guarded(
    bytes: &[u8],
    max_pixels: u64,
    draft: Option<u32>,
    buf: &mut Vec<u8>,
) -> Result<Decoding, Rejection> {
    guarded(std::panic::AssertUnwindSafe(|| {
        decode_into(bytes, max_pixels, draft, buf)
    }))
}

fn guarded<T>(
    f: impl FnOnce() -> Result<T, Rejection> + std::panic::UnwindSafe,
) -> Result<T, Rejection> {
    std::panic::catch_unwind(f).unwrap_or_else(|_| {
        Err((
            "corrupt_image",
            "the decoder failed on these bytes (it panicked)".into(),
        ))
    })
}

/// Whether a JPEG ends with its end-of-image marker (trailing padding of a
/// few bytes is allowed, as writers leave it).
fn ends_jpeg(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn classify(e: ImageError) -> Rejection {
    match &e {
        ImageError::Limits(_) => ("too_many_pixels", format!("over the decoding limits: {e}")),
        ImageError::Unsupported(_) => ("unsupported_image", e.to_string()),
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ("truncated", format!("the file is cut short: {e}"))
        }
        _ => ("corrupt_image", e.to_string()),
    }
}
