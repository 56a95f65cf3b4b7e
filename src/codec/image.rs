//! Image decoding: encoded bytes to RGB8 pixels with the EXIF orientation
//! applied (alpha dropped, grey and palette expanded, a GIF's first frame).
//! The header is read first: an image that claims more than `max_pixels`
//! is rejected before a byte of it is decoded, and the decoder's
//! allocations are bounded whatever the header says. A JPEG with no
//! end-of-image marker is rejected as truncated rather than padded with
//! grey.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use crate::rejects::Rejection;

/// Pixels `(rgb, width, height)`, or why not.
pub type Decoded = std::result::Result<(Vec<u8>, u32, u32), Rejection>;

/// Decode encoded image bytes to RGB8, orientation applied.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Decoded {
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
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(classify)?;
    img.apply_orientation(orientation);
    let (w, h) = (img.width(), img.height());
    Ok((img.into_rgb8().into_raw(), w, h))
}

/// [`decode`], with a decoder's panic on hostile bytes made a reject.
pub fn decode_guarded(bytes: &[u8], max_pixels: u64) -> Decoded {
    std::panic::catch_unwind(|| decode(bytes, max_pixels)).unwrap_or_else(|_| {
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
