//! CR chest (PA) phantom.
//!
//! Built as a projection: an attenuation map accumulates the chord length
//! through each structure (torso, lungs as negative attenuation, heart,
//! mediastinum, spine, clavicles, ribs, lung vessels); pixel values then
//! follow `MONOCHROME1` conventions (direct exposure high = shown black,
//! bone low = shown white).

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};

use crate::dataset::{self, InstanceUids, Patient, PixelFormat, SeriesDef, StudyDef};
use crate::raster::{Canvas, ChordLut, Ellipse, smoothstep};
use crate::uid::{NOISE_LEN, noise_offset, noise_table};
use crate::{Ctx, SynthError, SynthInstance};

pub(crate) const STUDY: StudyDef = StudyDef {
    key: 3,
    patient: Patient {
        name: "DEMO^CR^Phantom",
        id: "DEMO-0003",
        birth_date: "19910105",
        sex: "M",
    },
    modality: "CR",
    code: "CR",
    description: "XR CHEST PA SYNTHETIC PHANTOM",
    body_part: "CHEST",
    sop_class: uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
};

const SERIES: SeriesDef = SeriesDef {
    number: 1,
    description: "CHEST PA SYNTHETIC",
};

pub(crate) const COLS: usize = 1760;
pub(crate) const ROWS: usize = 2140;
const PIXEL_SPACING: f64 = 0.2;
const AIR: i32 = 3950;

pub(crate) fn instance(ctx: &Ctx) -> Result<SynthInstance, SynthError> {
    let Rendered {
        bytes: px,
        min: lo,
        max: hi,
    } = render();

    let uids = InstanceUids::new(ctx.seed, &STUDY, &SERIES, 0, 0);
    let mut b = dataset::header(ctx, &STUDY, &SERIES, &uids, 1, &["ORIGINAL", "PRIMARY"]);
    b.strs(tags::PATIENT_ORIENTATION, VR::CS, &["L", "F"]);
    b.str(tags::VIEW_POSITION, VR::CS, "PA");
    b.ds(tags::KVP, 120.0);
    b.ds_multi(tags::IMAGER_PIXEL_SPACING, &[PIXEL_SPACING, PIXEL_SPACING]);
    b.image_pixel(PixelFormat {
        rows: ROWS as u16,
        cols: COLS as u16,
        samples: 1,
        photometric: "MONOCHROME1",
        bits_allocated: 16,
        bits_stored: 12,
        signed: false,
    });
    let (lo, hi) = (f64::from(lo), f64::from(hi.max(lo + 1)));
    b.ds(tags::WINDOW_CENTER, ((lo + hi) / 2.0).round());
    b.ds(tags::WINDOW_WIDTH, (hi - lo).round());
    b.str(tags::PIXEL_INTENSITY_RELATIONSHIP, VR::CS, "LOG");
    b.is(tags::PIXEL_INTENSITY_RELATIONSHIP_SIGN, 1);

    b.finish(
        VR::OW,
        px,
        "CR chest phantom, PA".to_string(),
        uids.instance,
        uids.study,
    )
}

/// Adds `amount * chord` across row `y` for a horizontal extent centred on
/// `cx` with half-width `hw`, where `keep(x)` holds.
fn add_row(
    c: &mut Canvas<i32>,
    lut: &ChordLut,
    y: usize,
    cx: f32,
    hw: f32,
    amount: i32,
    mut keep: impl FnMut(usize) -> bool,
) {
    if hw <= 0.0 || y >= c.h {
        return;
    }
    let x0 = (cx - hw).ceil().max(0.0) as usize;
    let x1 = ((cx + hw).floor() + 1.0).clamp(0.0, c.w as f32) as usize;
    let inv = 1.0 / hw;
    let x1 = x1.max(x0);
    let row = &mut c.px[y * c.w + x0..y * c.w + x1];
    for (x, p) in (x0..x1).zip(row.iter_mut()) {
        if keep(x) {
            let u = (x as f32 - cx) * inv;
            *p += (amount * lut.chord(u * u)) >> 10;
        }
    }
}

/// Adds a bony tube (brighter cortex) across column `x` centred on `cy`.
fn add_tube_col(c: &mut Canvas<i32>, lut: &ChordLut, x: usize, cy: f32, hw: f32, amount: i32) {
    if hw <= 0.0 || x >= c.w {
        return;
    }
    let y0 = (cy - hw).ceil().max(0.0) as usize;
    let y1 = ((cy + hw).floor() + 1.0).clamp(0.0, c.h as f32) as usize;
    for y in y0..y1.max(y0) {
        let u = (y as f32 - cy) / hw;
        let outer = lut.chord(u * u);
        let ui = u / 0.7;
        let inner = (lut.chord(ui * ui) * 7) / 10;
        c.px[y * c.w + x] += (amount * (outer - inner / 2)) >> 10;
    }
}

fn body_half_width(y: f32) -> f32 {
    210.0 + 620.0 * smoothstep(240.0, 440.0, y) - 70.0 * smoothstep(1200.0, 2140.0, y)
}

fn render() -> Rendered {
    let lut = ChordLut::new();
    let mut c = Canvas::new(COLS, ROWS, 0i32);
    let mid = (COLS / 2) as f32;

    // Torso, neck and shoulders.
    for y in 0..ROWS {
        add_row(
            &mut c,
            &lut,
            y,
            mid,
            body_half_width(y as f32),
            1350,
            |_| true,
        );
    }
    // Humeral heads.
    for s in [-1.0f32, 1.0] {
        c.add_ellipsoid(&lut, Ellipse::circle(mid + s * 790.0, 470.0, 120.0), 520);
    }

    // Lungs (negative attenuation), domes of the diaphragm cut the bases;
    // the right hemidiaphragm (image left) sits higher.
    for (s, base) in [(-1.0f32, 1560.0f32), (1.0, 1610.0)] {
        let lcx = mid + s * 370.0;
        let full = 300.0f32;
        let top = 360.0f32;
        let dome: Vec<f32> = (0..COLS)
            .map(|x| {
                let u = ((x as f32 - lcx) / full).clamp(-1.0, 1.0);
                base - 230.0 * (1.0 - u * u)
            })
            .collect();
        for y in top as usize..base as usize {
            let p = ((y as f32 - top) / 480.0).clamp(0.0, 1.0);
            let hw = full * p.sqrt() * (1.0 - 0.08 * smoothstep(1100.0, 1560.0, y as f32));
            let cx = lcx - s * 60.0 * (1.0 - p);
            let yf = y as f32;
            add_row(&mut c, &lut, y, cx, hw, -820, |x| yf < dome[x]);
        }
    }

    // Mediastinum, aortic knob, heart.
    for y in 150..1300 {
        let yf = y as f32;
        let taper = smoothstep(150.0, 450.0, yf) * (1.0 - smoothstep(1100.0, 1300.0, yf));
        add_row(
            &mut c,
            &lut,
            y,
            mid + 5.0,
            150.0,
            (380.0 * taper) as i32,
            |_| true,
        );
    }
    c.add_ellipsoid(&lut, Ellipse::circle(mid + 135.0, 720.0, 78.0), 420);
    c.add_ellipsoid(
        &lut,
        Ellipse::new(mid + 95.0, 1225.0, 330.0, 240.0).rotated(-0.3),
        950,
    );
    // Gastric air bubble under the left hemidiaphragm (image right).
    c.add_ellipsoid(&lut, Ellipse::new(mid + 330.0, 1700.0, 130.0, 80.0), -260);

    // Airway: trachea and main bronchi.
    for y in 0..720 {
        add_row(&mut c, &lut, y, mid, 30.0, -170, |_| true);
    }
    for s in [-1.0f32, 1.0] {
        c.add_ellipsoid(
            &lut,
            Ellipse::new(mid + s * 85.0, 810.0, 17.0, 100.0).rotated(-s * 0.95),
            -120,
        );
    }

    // Spine with disc spaces, pedicles and spinous processes.
    for y in 0..ROWS {
        let disc = (y % 150) < 22;
        add_row(
            &mut c,
            &lut,
            y,
            mid,
            72.0,
            if disc { 170 } else { 300 },
            |_| true,
        );
    }
    for k in 0..(ROWS / 150 + 1) {
        let yv = (k * 150 + 85) as f32;
        for s in [-1.0f32, 1.0] {
            c.add_ellipsoid(
                &lut,
                Ellipse::new(mid + s * 50.0, yv - 22.0, 15.0, 23.0),
                220,
            );
        }
        c.add_ellipsoid(&lut, Ellipse::new(mid, yv + 12.0, 10.0, 28.0), 160);
    }

    // Clavicles.
    for s in [-1.0f32, 1.0] {
        let (x0, y0, x1, y1) = (mid + s * 95.0, 565.0f32, mid + s * 600.0, 455.0f32);
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len = (dx * dx + dy * dy).sqrt();
        c.add_ellipsoid(
            &lut,
            Ellipse::new((x0 + x1) / 2.0, (y0 + y1) / 2.0, len / 2.0, 30.0).rotated(dy.atan2(dx)),
            520,
        );
    }

    // Posterior ribs (arching up then sweeping down laterally) and fainter
    // anterior ribs (sloping down medially).
    for k in 0..9 {
        let y0 = 500.0 + k as f32 * 118.0;
        let hw = 23.0 + k as f32 * 1.2;
        for s in [-1.0f32, 1.0] {
            for d in 70..760 {
                let x = (mid + s * d as f32) as usize;
                let cy = y0 - 60.0 + 0.0014 * (d as f32 - 230.0).powi(2);
                if (d as f32) < body_half_width(cy) - 40.0 {
                    add_tube_col(&mut c, &lut, x, cy, hw, 300);
                }
            }
        }
    }
    for k in 0..6 {
        let ya = 470.0 + k as f32 * 118.0;
        for s in [-1.0f32, 1.0] {
            for d in 180..720 {
                let x = (mid + s * d as f32) as usize;
                let cy = ya + 260.0 * (720.0 - d as f32) / 540.0;
                add_tube_col(&mut c, &lut, x, cy, 18.0, 130);
            }
        }
    }

    // Lung vessels: tapering branches radiating from each hilum.
    let mut vessels = Canvas::new(COLS, ROWS, 0u8);
    for s in [-1.0f32, 1.0] {
        let (hx, hy) = (mid + s * 190.0, 1020.0f32);
        let base = if s < 0.0 { std::f32::consts::PI } else { 0.0 };
        for k in 0..9 {
            let spread = (k as f32 / 8.0 - 0.5) * 2.5;
            let phi = base - s * spread;
            let len = 330.0 + 90.0 * ((k as f32 * 0.618).fract());
            branch(&mut vessels, hx, hy, phi, len, 10.0, 2);
        }
    }

    // Exposure, quantum noise, 12-bit clamp; little-endian output.
    let noise = noise_table();
    let mask = NOISE_LEN - 1;
    let (mut lo, mut hi) = (u16::MAX, 0u16);
    let mut out = vec![0u8; COLS * ROWS * 2];
    for y in 0..ROWS {
        let mut k = noise_offset(0xC4, 0, y);
        for i in y * COLS..(y + 1) * COLS {
            let a = c.px[i] + (i32::from(vessels.px[i]) * 150) / 255;
            let v = (AIR - a + i32::from(noise[k])).clamp(0, 4095) as u16;
            k = (k + 1) & mask;
            lo = lo.min(v);
            hi = hi.max(v);
            out[2 * i] = v as u8;
            out[2 * i + 1] = (v >> 8) as u8;
        }
    }
    Rendered {
        bytes: out,
        min: lo,
        max: hi,
    }
}

/// Little-endian 16-bit pixel data and its value range.
struct Rendered {
    pub bytes: Vec<u8>,
    pub min: u16,
    pub max: u16,
}

/// Stamps a tapering, gently meandering vessel into the mask (max-blended
/// tube profile), then recurses into two thinner side branches.
fn branch(mask: &mut Canvas<u8>, x0: f32, y0: f32, phi: f32, len: f32, r0: f32, depth: u32) {
    let (dx, dy) = (phi.cos(), phi.sin());
    let mut along = 0.0f32;
    while along < len {
        let r = (r0 * (1.0 - 0.7 * along / len)).max(1.5);
        let wob = 5.0 * (along * 0.025 + r0 + phi).sin();
        let cx = x0 + dx * along - dy * wob;
        let cy = y0 + dy * along + dx * wob;
        mask.apply(Ellipse::circle(cx, cy, r), |x, y, p| {
            let ex = (x as f32 - cx) / r;
            let ey = (y as f32 - cy) / r;
            let v = ((1.0 - ex * ex - ey * ey).max(0.0).sqrt() * 255.0) as u8;
            *p = (*p).max(v);
        });
        along += (r * 0.6).max(1.0);
    }
    if depth > 0 {
        for (frac, turn) in [(0.35f32, 0.5f32), (0.65, -0.45)] {
            let bx = x0 + dx * len * frac;
            let by = y0 + dy * len * frac;
            let r = r0 * (1.0 - 0.7 * frac) * 0.75;
            branch(mask, bx, by, phi + turn, len * 0.55, r, depth - 1);
        }
    }
}
