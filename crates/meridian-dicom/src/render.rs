//! Pixel access for WADO-RS: frames (raw or decoded) and rendered images.

use dicom_core::header::HasLength;
use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions, file::ReadPreamble};
pub use dicom_pixeldata::VoiLutFunction as WindowFunction;
use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutFunction, VoiLutOption, WindowLevel};
use image::{DynamicImage, ImageFormat, imageops::FilterType};
use thiserror::Error;

use crate::parse::get_str;

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("cannot read stored object: {0}")]
    Read(String),
    #[error("the instance has no pixel data")]
    NoPixelData,
    #[error("frame {0} does not exist (the instance has {1})")]
    NoSuchFrame(u32, u32),
    #[error("cannot decode pixel data: {0}")]
    Decode(String),
    #[error("cannot encode image: {0}")]
    Encode(String),
}

/// Opens a stored (already validated) Part 10 file from memory.
pub fn open_stored(bytes: &[u8]) -> Result<DefaultDicomObject, RenderError> {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| RenderError::Read(e.to_string()))
}

/// Opens a stored file up to (not including) its pixel data: for metadata.
pub fn open_stored_header(bytes: &[u8]) -> Result<DefaultDicomObject, RenderError> {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(bytes)
        .map_err(|e| RenderError::Read(e.to_string()))
}

/// Number of frames of an instance (1 when NumberOfFrames is absent).
pub fn number_of_frames(obj: &DefaultDicomObject) -> u32 {
    get_str(obj, tags::NUMBER_OF_FRAMES)
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The frame as stored: the encapsulated bitstream for compressed syntaxes,
/// the native bytes otherwise. `frame` is 0-based.
pub fn stored_frame(obj: &DefaultDicomObject, frame: u32) -> Result<Vec<u8>, RenderError> {
    let n = number_of_frames(obj);
    if frame >= n {
        return Err(RenderError::NoSuchFrame(frame + 1, n));
    }
    let e = obj.get(tags::PIXEL_DATA).ok_or(RenderError::NoPixelData)?;
    match e.value() {
        Value::PixelSequence(ps) => {
            let frags = ps.fragments();
            let bot = ps.offset_table();
            if frags.len() == n as usize {
                return Ok(frags[frame as usize].to_vec());
            }
            if n == 1 {
                return Ok(frags.iter().flat_map(|f| f.iter().copied()).collect());
            }
            if bot.len() == n as usize {
                // Map byte offsets (from the first fragment's item tag) to fragments.
                let mut pos = 0u32;
                let start = bot[frame as usize];
                let end = bot.get(frame as usize + 1).copied().unwrap_or(u32::MAX);
                let mut out = Vec::new();
                for f in frags {
                    if pos >= start && pos < end {
                        out.extend_from_slice(f);
                    }
                    pos = pos.saturating_add(8 + f.len() as u32);
                }
                return Ok(out);
            }
            Err(RenderError::Decode(
                "cannot split fragments into frames".into(),
            ))
        }
        Value::Primitive(p) => {
            let bytes = p.to_bytes();
            let len = bytes.len() / n as usize;
            let start = len * frame as usize;
            Ok(bytes[start..start + len].to_vec())
        }
        Value::Sequence(_) => Err(RenderError::NoPixelData),
    }
}

/// The frame decoded to native little-endian samples (interleaved).
pub fn decoded_frame(obj: &DefaultDicomObject, frame: u32) -> Result<Vec<u8>, RenderError> {
    let n = number_of_frames(obj);
    if frame >= n {
        return Err(RenderError::NoSuchFrame(frame + 1, n));
    }
    let d = obj
        .decode_pixel_data_frame(frame)
        .map_err(|e| RenderError::Decode(e.to_string()))?;
    Ok(d.data().to_vec())
}

/// Output format of a rendered image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg { quality: u8 },
    Png,
}

/// Rendering parameters (PS3.18 8.3.5).
#[derive(Debug, Clone, Default)]
pub struct RenderParams {
    /// 0-based frame.
    pub frame: u32,
    /// Window centre and width.
    pub window: Option<(f64, f64)>,
    /// VOI LUT function for the window (linear when absent).
    pub function: Option<VoiLutFunction>,
    /// Viewport width and height: the image is scaled to fit inside.
    pub viewport: Option<(u32, u32)>,
}

/// Renders a frame to JPEG or PNG.
pub fn render(
    obj: &DefaultDicomObject,
    params: &RenderParams,
    format: Format,
) -> Result<Vec<u8>, RenderError> {
    if obj
        .get(tags::PIXEL_DATA)
        .map(|e| e.header().is_empty())
        .unwrap_or(true)
    {
        return Err(RenderError::NoPixelData);
    }
    let n = number_of_frames(obj);
    if params.frame >= n {
        return Err(RenderError::NoSuchFrame(params.frame + 1, n));
    }
    let decoded = obj
        .decode_pixel_data_frame(params.frame)
        .map_err(|e| RenderError::Decode(e.to_string()))?;
    let photometric = get_str(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let ts = obj.meta().transfer_syntax().to_owned();
    let native = matches!(
        ts.as_str(),
        "1.2.840.10008.1.2"
            | "1.2.840.10008.1.2.1"
            | "1.2.840.10008.1.2.2"
            | "1.2.840.10008.1.2.1.99"
    );
    let img = if photometric == "PALETTE COLOR" {
        palette_image(obj, &decoded)?
    } else if native
        && decoded.bits_allocated() == 8
        && (photometric == "YBR_FULL" || photometric == "YBR_FULL_422")
        && decoded.samples_per_pixel() == 3
    {
        ybr_full_image(&decoded)?
    } else {
        let mut opts = ConvertOptions::new().force_8bit();
        opts = match (params.window, params.function) {
            (Some((center, width)), Some(f)) => {
                opts.with_voi_lut(VoiLutOption::CustomWithFunction(
                    WindowLevel {
                        center,
                        width: width.max(1.0),
                    },
                    f,
                ))
            }
            (Some((center, width)), None) => opts.with_voi_lut(VoiLutOption::Custom(WindowLevel {
                center,
                width: width.max(1.0),
            })),
            (None, _) => opts.with_voi_lut(VoiLutOption::First),
        };
        decoded
            .to_dynamic_image_with_options(0, &opts)
            .map_err(|e| RenderError::Decode(e.to_string()))?
    };
    let img = match params.viewport {
        Some((w, h)) if w > 0 && h > 0 && (w < img.width() || h < img.height()) => {
            img.resize(w, h, FilterType::Triangle)
        }
        _ => img,
    };
    encode(img, format)
}

/// Applies the red/green/blue palette lookup tables (PS3.3 C.7.6.3.1.5).
fn palette_image(
    obj: &DefaultDicomObject,
    d: &dicom_pixeldata::DecodedPixelData<'_>,
) -> Result<DynamicImage, RenderError> {
    let lut =
        |desc: dicom_core::Tag, data: dicom_core::Tag| -> Result<(Vec<u8>, i64), RenderError> {
            let de = obj
                .get(desc)
                .ok_or_else(|| RenderError::Decode("palette LUT descriptor missing".into()))?;
            let dv: Vec<i64> = de
                .to_multi_int::<i64>()
                .map_err(|e| RenderError::Decode(e.to_string()))?;
            if dv.len() != 3 {
                return Err(RenderError::Decode(
                    "palette LUT descriptor needs 3 values".into(),
                ));
            }
            let entries = if dv[0] == 0 { 65536 } else { dv[0] as usize };
            let (first, bits) = (dv[1], dv[2]);
            let raw = obj
                .get(data)
                .ok_or_else(|| RenderError::Decode("palette LUT data missing".into()))?
                .to_bytes()
                .map_err(|e| RenderError::Decode(e.to_string()))?
                .into_owned();
            let vals: Vec<u8> = if bits == 8 && raw.len() == entries {
                raw
            } else {
                raw.chunks_exact(2)
                    .map(|c| {
                        let v = u16::from_le_bytes([c[0], c[1]]);
                        if bits == 8 {
                            (v & 0xFF) as u8
                        } else {
                            (v >> 8) as u8
                        }
                    })
                    .collect()
            };
            Ok((vals, first))
        };
    let (r, fr) = lut(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let (g, fg) = lut(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let (b, fb) = lut(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let (w, h) = (d.columns(), d.rows());
    let n = (w * h) as usize;
    let data = d.data();
    let idx: Vec<i64> = if d.bits_allocated() > 8 {
        data.chunks_exact(2)
            .take(n)
            .map(|c| i64::from(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    } else {
        data.iter().take(n).map(|&v| i64::from(v)).collect()
    };
    let look = |t: &[u8], first: i64, i: i64| -> u8 {
        if t.is_empty() {
            return 0;
        }
        t[((i - first).max(0) as usize).min(t.len() - 1)]
    };
    let mut out = Vec::with_capacity(n * 3);
    for i in idx {
        out.push(look(&r, fr, i));
        out.push(look(&g, fg, i));
        out.push(look(&b, fb, i));
    }
    image::RgbImage::from_raw(w, h, out)
        .map(DynamicImage::ImageRgb8)
        .ok_or_else(|| RenderError::Decode("palette image size".into()))
}

/// YCbCr (full range, ITU-R BT.601) to RGB for native 8-bit data (PS3.3 C.7.6.3.1.2).
fn ybr_full_image(d: &dicom_pixeldata::DecodedPixelData<'_>) -> Result<DynamicImage, RenderError> {
    let (w, h) = (d.columns(), d.rows());
    let n = (w * h) as usize;
    let data = d.data();
    if data.len() < n * 3 {
        return Err(RenderError::Decode("YBR pixel data too short".into()));
    }
    let planar = d.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst;
    let mut out = Vec::with_capacity(n * 3);
    for i in 0..n {
        let (y, cb, cr) = if planar {
            (data[i], data[n + i], data[2 * n + i])
        } else {
            (data[3 * i], data[3 * i + 1], data[3 * i + 2])
        };
        let (y, cb, cr) = (f64::from(y), f64::from(cb) - 128.0, f64::from(cr) - 128.0);
        let c = |v: f64| v.round().clamp(0.0, 255.0) as u8;
        out.push(c(y + 1.402 * cr));
        out.push(c(y - 0.344_136 * cb - 0.714_136 * cr));
        out.push(c(y + 1.772 * cb));
    }
    image::RgbImage::from_raw(w, h, out)
        .map(DynamicImage::ImageRgb8)
        .ok_or_else(|| RenderError::Decode("YBR image size".into()))
}

fn encode(img: DynamicImage, format: Format) -> Result<Vec<u8>, RenderError> {
    let mut out = std::io::Cursor::new(Vec::new());
    match format {
        Format::Png => img
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| RenderError::Encode(e.to_string()))?,
        Format::Jpeg { quality } => {
            let img = match img {
                DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => img,
                DynamicImage::ImageLumaA8(_)
                | DynamicImage::ImageLuma16(_)
                | DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLuma8(img.to_luma8()),
                _ => DynamicImage::ImageRgb8(img.to_rgb8()),
            };
            let enc =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
            img.write_with_encoder(enc)
                .map_err(|e| RenderError::Encode(e.to_string()))?;
        }
    }
    Ok(out.into_inner())
}
