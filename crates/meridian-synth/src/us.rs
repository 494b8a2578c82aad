//! Ultrasound multi-frame (cine) phantom, RGB.
//!
//! A curvilinear-probe sector with layered, speckled tissue, an anechoic
//! gallbladder with posterior enhancement, a pulsating cystic chamber, a
//! bright shadowing blob moving on a loop, a vessel with pulsatile colour
//! Doppler, a depth scale and a sweeping ECG trace. The loop is seamless
//! (frame `US_FRAMES` would equal frame 0).

use std::f32::consts::TAU;

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};

use crate::dataset::{self, InstanceUids, Patient, PixelFormat, SeriesDef, StudyDef};
use crate::raster::Ellipse;
use crate::uid::hash2;
use crate::{Ctx, SynthError, SynthInstance, US_FRAMES};

pub(crate) const STUDY: StudyDef = StudyDef {
    key: 4,
    patient: Patient {
        name: "DEMO^US^Phantom",
        id: "DEMO-0004",
        birth_date: "19840630",
        sex: "F",
    },
    modality: "US",
    code: "US",
    description: "US ABDOMEN SYNTHETIC PHANTOM",
    body_part: "ABDOMEN",
    sop_class: uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
};

const SERIES: SeriesDef = SeriesDef {
    number: 1,
    description: "RUQ CINE SYNTHETIC",
};

pub(crate) const W: usize = 640;
pub(crate) const H: usize = 480;
const FPS: usize = 30;

// Sector geometry: virtual apex above the image, radii in pixels.
const APEX_X: i32 = 320;
const APEX_Y: i32 = -60;
const R_MIN: i32 = 75;
const R_MAX: i32 = 490;
const TAN_HALF_ANGLE_MILLI: i32 = 700; // ~35 degrees

pub(crate) fn instance(ctx: &Ctx) -> Result<SynthInstance, SynthError> {
    let pixels = render(US_FRAMES);
    let uids = InstanceUids::new(ctx.seed, &STUDY, &SERIES, 0, 0);
    let mut b = dataset::header(ctx, &STUDY, &SERIES, &uids, 1, &["ORIGINAL", "PRIMARY"]);
    b.str(tags::PATIENT_ORIENTATION, VR::CS, "");
    b.image_pixel(PixelFormat {
        rows: H as u16,
        cols: W as u16,
        samples: 3,
        photometric: "RGB",
        bits_allocated: 8,
        bits_stored: 8,
        signed: false,
    });
    b.is(tags::NUMBER_OF_FRAMES, US_FRAMES as i64);
    b.at(tags::FRAME_INCREMENT_POINTER, tags::FRAME_TIME);
    b.ds(tags::FRAME_TIME, 1000.0 / FPS as f64);
    b.is(tags::CINE_RATE, FPS as i64);
    b.is(tags::RECOMMENDED_DISPLAY_FRAME_RATE, FPS as i64);

    b.finish(
        VR::OB,
        pixels,
        format!("US cine phantom, {US_FRAMES} frames"),
        uids.instance,
        uids.study,
    )
}

/// Depth below the skin line (pixels) if `(x, y)` lies in the sector.
#[inline]
fn depth(x: i32, y: i32) -> Option<i32> {
    let dx = x - APEX_X;
    let dy = y - APEX_Y;
    if dy <= 0 || dx.abs() * 1000 > dy * TAN_HALF_ANGLE_MILLI {
        return None;
    }
    let r2 = dx * dx + dy * dy;
    if !(R_MIN * R_MIN..=R_MAX * R_MAX).contains(&r2) {
        return None;
    }
    Some((r2 as f32).sqrt() as i32 - R_MIN)
}

/// Speckle factor in 0..=510 (256 = unity), laterally elongated.
#[inline]
fn speckle(x: i32, y: i32) -> i32 {
    // two overlapping cell grids give a grainier, less salt-and-pepper look
    let h1 = hash2((x / 4) as u32, (y / 2) as u32, 0x55);
    let h2 = hash2(((x + 2) / 4) as u32, ((y + 1) / 2) as u32, 0x77);
    ((h1 & 0xFF) + (h2 & 0xFF)) as i32
}

/// Static echo amplitude (before speckle) at a point of depth `d`.
fn tissue(x: i32, y: i32, d: i32) -> i32 {
    let base = if d < 10 {
        185
    } else if d < 35 {
        55
    } else if d < 90 {
        if (y + x / 10).rem_euclid(13) < 3 {
            165
        } else {
            95
        }
    } else if d < 96 {
        205
    } else {
        // liver parenchyma with a faint coarse texture
        112 + ((hash2((x / 24) as u32, (y / 24) as u32, 9) & 15) as i32)
    };
    base * (1100 - d) / 1100
}

fn gray(v: i32) -> [u8; 3] {
    let g = v.clamp(0, 255) as u8;
    [g, g, g]
}

/// Renders `frames` RGB frames, interleaved (planar configuration 0).
pub(crate) fn render(frames: usize) -> Vec<u8> {
    let frame_len = W * H * 3;
    let base = base_frame();
    let mut out = Vec::with_capacity(frame_len * frames);
    for f in 0..frames {
        let start = out.len();
        out.extend_from_slice(&base);
        draw_dynamic(&mut out[start..start + frame_len], f, frames);
    }
    out
}

fn put(frame: &mut [u8], x: i32, y: i32, rgb: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
        let i = (y as usize * W + x as usize) * 3;
        frame[i..i + 3].copy_from_slice(&rgb);
    }
}

const GALLBLADDER: Ellipse = Ellipse {
    cx: 215.0,
    cy: 235.0,
    a: 62.0,
    b: 34.0,
    angle: 0.2,
};

fn vessel_centre(x: f32) -> f32 {
    300.0 + 12.0 * ((x - 330.0) / 60.0).sin()
}
const VESSEL_X: (i32, i32) = (335, 545);
const VESSEL_R: f32 = 11.0;

fn base_frame() -> Vec<u8> {
    let mut frame = vec![0u8; W * H * 3];
    let (gs, gc) = GALLBLADDER.angle.sin_cos();
    for y in 0..H as i32 {
        for x in 0..W as i32 {
            let Some(d) = depth(x, y) else { continue };
            let mut v = tissue(x, y, d);
            let r2 = GALLBLADDER.r2(x as f32, y as f32, gs, gc);
            if r2 < 1.0 {
                v = 6;
            } else if r2 < 1.25 {
                v = 190;
            } else if (y as f32) > GALLBLADDER.cy && (x as f32 - GALLBLADDER.cx).abs() < 45.0 {
                v = v * 135 / 100; // posterior acoustic enhancement
            }
            if (VESSEL_X.0..VESSEL_X.1).contains(&x) {
                let dy = (y as f32 - vessel_centre(x as f32)).abs();
                if dy < VESSEL_R {
                    v = 10;
                } else if dy < VESSEL_R + 4.0 {
                    v = 210;
                }
            }
            put(&mut frame, x, y, gray(v * speckle(x, y) / 256));
        }
    }
    // Colour Doppler box (dashed outline).
    let (bx0, by0, bx1, by1) = (320, 268, 560, 336);
    for x in (bx0..=bx1).filter(|x| (x / 4) % 2 == 0) {
        put(&mut frame, x, by0, [150, 150, 150]);
        put(&mut frame, x, by1, [150, 150, 150]);
    }
    for y in (by0..=by1).filter(|y| (y / 4) % 2 == 0) {
        put(&mut frame, bx0, y, [150, 150, 150]);
        put(&mut frame, bx1, y, [150, 150, 150]);
    }
    // Depth scale (every 40 px) and focal-zone marker.
    for k in 0..11 {
        let y = 20 + k * 40;
        for x in 604..(if k % 5 == 0 { 616 } else { 610 }) {
            put(&mut frame, x, y, [230, 230, 230]);
            put(&mut frame, x, y + 1, [230, 230, 230]);
        }
    }
    for i in 0..7 {
        for x in 620..(620 + 7 - i) {
            put(&mut frame, x, 260 - 3 + i / 2 + i % 2, [240, 200, 40]);
        }
    }
    // Colour scale bar: red (towards) on top, blue (away) below.
    for y in 60..180 {
        let t = (y - 60) as f32 / 120.0;
        let rgb = if t < 0.5 {
            let k = 1.0 - t * 2.0;
            [(60.0 + 195.0 * k) as u8, (40.0 * k * k) as u8, 0]
        } else {
            let k = t * 2.0 - 1.0;
            [0, (40.0 * k * k) as u8, (60.0 + 195.0 * k) as u8]
        };
        for x in 12..20 {
            put(&mut frame, x, y, rgb);
        }
    }
    frame
}

/// Simple ECG waveform for a beat phase `p` in `0..1` (R wave = 1).
fn ecg(p: f32) -> f32 {
    let g = |c: f32, w: f32, a: f32| a * (-((p - c) / w).powi(2)).exp();
    g(0.10, 0.025, 0.15)
        + g(0.20, 0.008, -0.12)
        + g(0.23, 0.010, 1.0)
        + g(0.26, 0.010, -0.25)
        + g(0.45, 0.045, 0.30)
}

fn draw_dynamic(frame: &mut [u8], f: usize, frames: usize) {
    let loop_phase = f as f32 / frames.max(1) as f32; // 0..1 over the cine
    let beat = (loop_phase * 2.0).fract(); // two beats per loop

    // Pulsating chamber: largest at end-diastole (R wave), smallest mid-cycle.
    let size = 1.0 + 0.2 * (TAU * (beat - 0.23)).cos();
    let ch = Ellipse::new(440.0, 180.0, 40.0 * size, 28.0 * size).rotated(0.3);
    let (cs, cc) = ch.angle.sin_cos();
    let reach = (ch.a.max(ch.b) * 1.2) as i32 + 2;
    for y in (180 - reach)..(180 + reach) {
        for x in (440 - reach)..(440 + reach) {
            if depth(x, y).is_none() {
                continue;
            }
            let r2 = ch.r2(x as f32, y as f32, cs, cc);
            let v = if r2 < 1.0 {
                5 + (speckle(x, y) >> 6)
            } else if r2 < 1.35 {
                205 * speckle(x, y) / 256
            } else {
                continue;
            };
            put(frame, x, y, gray(v));
        }
    }

    // Echogenic blob moving on a loop, casting an acoustic shadow.
    let bx = 270.0 + 70.0 * (TAU * loop_phase).cos();
    let by = 360.0 + 22.0 * (2.0 * TAU * loop_phase).sin();
    let r = 19.0f32;
    for y in (by - r) as i32..=(R_MAX + APEX_Y) {
        for x in (bx - r) as i32..=(bx + r) as i32 {
            let Some(d) = depth(x, y) else { continue };
            let (dx, dy) = (x as f32 - bx, y as f32 - by);
            if dx * dx + dy * dy < r * r {
                put(frame, x, y, gray(235 * speckle(x, y) / 256));
            } else if dy > 0.0 && dx.abs() < r * 0.8 {
                put(frame, x, y, gray(tissue(x, y, d) * speckle(x, y) / 256 / 4));
            }
        }
    }

    // Pulsatile colour Doppler inside the vessel: red where the vessel runs
    // towards the probe, blue where it runs away.
    let flow = 0.25 + 0.75 * (TAU * (beat - 0.2)).sin().max(0.0).powi(2);
    for x in VESSEL_X.0..VESSEL_X.1 {
        let xf = x as f32;
        let cy = vessel_centre(xf);
        let towards = vessel_centre(xf + 1.0) < cy;
        for y in (cy - VESSEL_R) as i32..=(cy + VESSEL_R) as i32 {
            let u = (y as f32 - cy) / VESSEL_R;
            if u.abs() >= 1.0 || depth(x, y).is_none() {
                continue;
            }
            let vel = flow * (1.0 - u * u) * (0.8 + 0.2 * speckle(x, y) as f32 / 255.0);
            let hi = (90.0 + 165.0 * vel) as u8;
            let mid = (50.0 * vel * vel) as u8;
            put(
                frame,
                x,
                y,
                if towards { [hi, mid, 0] } else { [0, mid, hi] },
            );
        }
    }

    // ECG trace, refreshed by a sweep moving left to right: the new trace is
    // drawn up to the sweep, a short gap follows, then the previous sweep's
    // trace (identical, as the loop is periodic).
    let sweep = ((f + 1) * W / frames.max(1)) as i32;
    let ecg_y = |x: i32| -> i32 {
        let p = (x as f32 / W as f32 * 2.0).fract();
        462 - (ecg(p) * 16.0) as i32
    };
    let mut prev = ecg_y(0);
    for x in 0..W as i32 {
        let cur = ecg_y(x);
        if !(sweep..sweep + 10).contains(&x) {
            let (lo, hi) = (prev.min(cur), prev.max(cur));
            for y in lo..=hi + 1 {
                put(frame, x, y, [40, 220, 60]);
            }
        }
        prev = cur;
    }
}
