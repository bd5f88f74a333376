//! Images as they cross the API: data URLs / base64 in, PNG out. Shared by the server (validating
//! requests) and the browser (decoding results for the canvas).

use std::io::Cursor;

use base64::Engine as _;
use image::{ImageFormat, ImageReader, RgbaImage};

use crate::error::ApiError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Accepted input formats.
const FORMATS: [(ImageFormat, &str); 3] = [
    (ImageFormat::Png, "png"),
    (ImageFormat::Jpeg, "jpeg"),
    (ImageFormat::WebP, "webp"),
];

/// Strips an optional `data:<mime>;base64,` prefix and decodes the base64 payload.
pub fn decode_base64_payload(input: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match input.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ApiError::bad_request("image: malformed data URL (no comma)"))?;
            if !meta.ends_with(";base64") {
                return Err(ApiError::bad_request("image: data URL must be base64-encoded"));
            }
            data
        }
        None => input,
    };
    let cleaned: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if cleaned.is_empty() {
        return Err(ApiError::bad_request("image is empty"));
    }
    B64.decode(cleaned.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("image: invalid base64: {e}")))
}

/// Decodes a PNG/JPEG/WebP image given as a data URL or bare base64, refusing images over
/// `max_pixels` before allocating them.
pub fn decode_image(input: &str, max_pixels: u64) -> Result<RgbaImage, ApiError> {
    let bytes = decode_base64_payload(input)?;
    decode_image_bytes(&bytes, max_pixels)
}

/// Decodes image bytes (PNG/JPEG/WebP) to RGBA8 with a pixel limit.
pub fn decode_image_bytes(bytes: &[u8], max_pixels: u64) -> Result<RgbaImage, ApiError> {
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| FORMATS.iter().any(|(g, _)| g == f))
        .ok_or_else(|| ApiError::unprocessable("image must be a PNG, JPEG or WebP file"))?;
    let reader = || ImageReader::with_format(Cursor::new(bytes), format);
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|e| ApiError::unprocessable(format!("image could not be read: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels == 0 {
        return Err(ApiError::unprocessable("image has no pixels"));
    }
    if pixels > max_pixels {
        return Err(ApiError::too_large(format!(
            "image is {w}×{h} = {pixels} pixels; the limit is {max_pixels}"
        )));
    }
    let mut reader = reader();
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| ApiError::unprocessable(format!("image could not be decoded: {e}")))?;
    Ok(img.into_rgba8())
}

/// Encodes RGBA8 pixels as PNG.
pub fn encode_png(img: &RgbaImage) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("PNG encoding failed: {e}")))?;
    Ok(out)
}

pub fn png_data_url(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", B64.encode(png))
}

pub fn to_base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        encode_png(&RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([x as u8, y as u8, 7, 200])
        }))
        .unwrap()
    }

    #[test]
    fn data_url_and_bare_base64_decode_to_the_same_pixels() {
        let bytes = png(5, 4);
        let a = decode_image(&png_data_url(&bytes), 100).unwrap();
        let b = decode_image(&to_base64(&bytes), 100).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get_pixel(4, 3).0, [4, 3, 7, 200]);
    }

    #[test]
    fn jpeg_is_accepted() {
        let rgb = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 10, 10]));
        let mut jpg = Vec::new();
        rgb.write_to(&mut Cursor::new(&mut jpg), ImageFormat::Jpeg).unwrap();
        let img = decode_image(&to_base64(&jpg), 100).unwrap();
        assert_eq!(img.dimensions(), (8, 8));
        assert_eq!(img.get_pixel(3, 3).0[3], 255, "JPEG gets opaque alpha");
    }

    #[test]
    fn bad_inputs_are_client_errors() {
        let too_big = decode_image(&to_base64(&png(20, 20)), 399).unwrap_err();
        assert_eq!(too_big.status, 413);
        assert!(too_big.error.contains("400 pixels"), "{too_big}");
        assert_eq!(decode_image("data:image/png;base64,@@@", 10).unwrap_err().status, 400);
        assert_eq!(decode_image("", 10).unwrap_err().status, 400);
        assert_eq!(decode_image("data:image/png,abc", 10).unwrap_err().status, 400);
        let gif = to_base64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
        assert_eq!(decode_image(&gif, 10).unwrap_err().status, 422);
        let truncated = to_base64(&png(4, 4)[..30]);
        assert_eq!(decode_image(&truncated, 100).unwrap_err().status, 422);
    }
}
