//! CT chest phantom in Hounsfield units.
//!
//! The phantom spans 300 mm from the lung apices (slice 1, superior) to the
//! upper abdomen (last slice). Large structures (lungs, heart, liver, great
//! vessels) follow the normalised position `t` in `0..=1`; periodic ones
//! (vertebrae, ribs) follow the table position in mm, so scrolling looks
//! anatomical whatever the slice count.

use std::f32::consts::{PI, TAU};

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};

use crate::dataset::{self, InstanceUids, Patient, PixelFormat, SeriesDef, StudyDef};
use crate::raster::{Canvas, Ellipse, smoothstep};
use crate::uid::{NOISE_LEN, noise_offset, noise_table};
use crate::{Ctx, SynthError, SynthInstance};

pub(crate) const STUDY: StudyDef = StudyDef {
    key: 1,
    patient: Patient {
        name: "DEMO^CT^Phantom",
        id: "DEMO-0001",
        birth_date: "19580412",
        sex: "M",
    },
    modality: "CT",
    code: "CT",
    description: "CT CHEST SYNTHETIC PHANTOM",
    body_part: "CHEST",
    sop_class: uids::CT_IMAGE_STORAGE,
};

const SERIES: SeriesDef = SeriesDef {
    number: 2,
    description: "AXIAL CHEST SYNTHETIC",
};

const SIZE: usize = 512;
const PIXEL_SPACING: f64 = 0.9765625; // 500 mm field of view
const Z_EXTENT_MM: f64 = 300.0;
const Z_TOP_MM: f64 = 150.0;
const INTERCEPT: i32 = -1024;

/// Slice spacing (= thickness) and table position of slice `index` of `total`.
fn geometry(index: usize, total: usize) -> (f64, f64) {
    let spacing = Z_EXTENT_MM / total.max(1) as f64;
    (spacing, Z_TOP_MM - index as f64 * spacing)
}

pub(crate) fn instance(ctx: &Ctx, index: usize, total: usize) -> Result<SynthInstance, SynthError> {
    let (thickness, z) = geometry(index, total);
    let t = if total > 1 {
        index as f32 / (total - 1) as f32
    } else {
        0.5
    };
    let pixels = stored_bytes(&render(t, z as f32), index as u64);

    let uids = InstanceUids::new(ctx.seed, &STUDY, &SERIES, total as u64, index);
    let mut b = dataset::header(
        ctx,
        &STUDY,
        &SERIES,
        &uids,
        index + 1,
        &["ORIGINAL", "PRIMARY", "AXIAL"],
    );
    // Frame of reference, general series, image plane
    b.str(tags::PATIENT_POSITION, VR::CS, "HFS");
    b.str(
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        uids.frame_of_reference.as_str(),
    );
    b.str(tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    let origin = -((SIZE - 1) as f64) / 2.0 * PIXEL_SPACING;
    b.ds_multi(tags::IMAGE_POSITION_PATIENT, &[origin, origin, z]);
    b.ds_multi(
        tags::IMAGE_ORIENTATION_PATIENT,
        &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    );
    b.ds_multi(tags::PIXEL_SPACING, &[PIXEL_SPACING, PIXEL_SPACING]);
    b.ds(tags::SLICE_THICKNESS, thickness);
    b.ds(tags::SPACING_BETWEEN_SLICES, thickness);
    b.ds(tags::SLICE_LOCATION, z);
    // CT image
    b.ds(tags::KVP, 120.0);
    b.ds(tags::RECONSTRUCTION_DIAMETER, PIXEL_SPACING * SIZE as f64);
    b.str(tags::CONVOLUTION_KERNEL, VR::SH, "STANDARD");
    b.image_pixel(PixelFormat {
        rows: SIZE as u16,
        cols: SIZE as u16,
        samples: 1,
        photometric: "MONOCHROME2",
        bits_allocated: 16,
        bits_stored: 16,
        signed: true,
    });
    b.ds(tags::WINDOW_CENTER, 40.0);
    b.ds(tags::WINDOW_WIDTH, 400.0);
    b.str(tags::WINDOW_CENTER_WIDTH_EXPLANATION, VR::LO, "SOFT TISSUE");
    b.ds(tags::RESCALE_INTERCEPT, f64::from(INTERCEPT));
    b.ds(tags::RESCALE_SLOPE, 1.0);
    b.str(tags::RESCALE_TYPE, VR::LO, "HU");

    b.finish(
        VR::OW,
        pixels,
        format!("CT chest phantom, slice {}/{}", index + 1, total),
        uids.instance,
        uids.study,
    )
}

/// Bell curve: 0 outside `[a, b]`, 1 in the middle.
fn bell(t: f32, a: f32, b: f32) -> f32 {
    if t <= a || t >= b {
        0.0
    } else {
        (PI * (t - a) / (b - a)).sin()
    }
}

/// Cortical shell + marrow bone.
fn bone(c: &mut Canvas<i16>, e: Ellipse, cortex: i16, marrow: i16, shell: f32) {
    c.fill(e, cortex);
    c.fill(e.grown(-shell), marrow);
}

/// Renders one axial slice in HU, without noise. `t` is 0 at the apex, 1 at the last slice;
/// `z` is the table position in mm.
pub(crate) fn render(t: f32, z: f32) -> Vec<i16> {
    let mut c = Canvas::new(SIZE, SIZE, -1000i16);
    let mid = 256.0;

    // Patient table (carbon top, foam core).
    c.fill_rect(70, 384, 442, 388, 250);
    c.fill_rect(80, 388, 432, 398, -400);
    c.fill_rect(70, 398, 442, 401, 250);

    // Body: subcutaneous fat shell around muscle / soft tissue.
    let body_a = 172.0 + 14.0 * (1.0 - smoothstep(0.0, 0.15, t)) - 6.0 * smoothstep(0.8, 1.0, t);
    let body_b = 124.0 + 4.0 * smoothstep(0.75, 1.0, t);
    let body = Ellipse::new(mid, 252.0, body_a, body_b);
    c.fill(body, -100);
    c.fill(body.grown(-13.0), 40);

    // Scapulae (upper chest, posterior).
    if t < 0.45 {
        for s in [-1.0f32, 1.0] {
            c.fill(
                Ellipse::new(mid + s * 118.0, 322.0, 42.0, 5.0).rotated(-s * 0.45),
                650,
            );
        }
    }

    // Upper abdomen: liver (patient right = image left), spleen, stomach.
    let g = smoothstep(0.5, 0.8, t);
    if g > 0.0 {
        c.fill(
            Ellipse::new(196.0, 245.0, 105.0 * g, 92.0 * g).rotated(0.2),
            60,
        );
        c.fill(
            Ellipse::new(338.0, 292.0, 30.0 * g, 48.0 * g).rotated(0.5),
            48,
        );
        let level = 196.0;
        c.apply(Ellipse::new(318.0, 205.0, 46.0 * g, 36.0 * g), |_, y, p| {
            *p = if (y as f32) < level { -995 } else { 18 };
        });
    }

    // Lungs: grow from the apices, shrink over the diaphragm domes
    // (right dome higher). Centres drift posteriorly towards the recesses.
    let rise = 0.3 + 0.7 * (PI / 2.0 * (t / 0.5).min(1.0)).sin();
    for (side, cx, a, b, end) in [
        (-1.0f32, mid - 86.0, 56.0, 88.0, 0.83f32),
        (1.0f32, mid + 88.0, 53.0, 86.0, 0.87f32),
    ] {
        let f = if t < 0.5 {
            rise
        } else {
            (1.0 - ((t - 0.5) / (end - 0.5)).powi(2)).max(0.0)
        };
        if f <= 0.05 {
            continue;
        }
        let cy = 242.0 + (1.0 - f) * 45.0 * smoothstep(0.45, 0.6, t);
        let lung =
            Ellipse::new(cx - side * (1.0 - f) * 10.0, cy, a * f, b * f).rotated(side * 0.08);
        c.fill(lung, -840);
        // Vessels: branches radiating from the hilum, drifting with z.
        for k in 0..16u32 {
            let kf = k as f32;
            let theta = kf * 2.4 + 0.6 * (t * 7.0 + kf).sin() + side;
            let rho = 0.18 + 0.7 * ((kf * 0.618).fract());
            let r = (4.2 - 3.2 * rho) * f.sqrt();
            let vx = lung.cx + lung.a * rho * theta.cos();
            let vy = lung.cy + lung.b * rho * theta.sin();
            c.apply(Ellipse::circle(vx, vy, r.max(1.0)), |_, _, p| {
                if *p < -500 {
                    *p = 35;
                }
            });
        }
        // Small bronchi near the hilum.
        for k in 0..3u32 {
            let kf = k as f32;
            let bx = lung.cx - side * lung.a * 0.45 + 6.0 * (kf - 1.0);
            let by = lung.cy - lung.b * 0.1 + 14.0 * (kf - 1.0) + 4.0 * (t * 9.0 + kf).sin();
            if t > 0.3 && t < 0.75 {
                c.fill(Ellipse::circle(bx, by, 3.5 * f), 20);
                c.fill(Ellipse::circle(bx, by, 2.2 * f), -900);
            }
        }
    }

    // Anterior mediastinal fat and great vessels.
    if (0.08..0.45).contains(&t) {
        c.fill(Ellipse::new(mid + 4.0, 205.0, 34.0, 28.0), -85);
    }
    if (0.18..0.42).contains(&t) {
        c.fill(Ellipse::circle(mid + 8.0, 208.0, 15.0), 42); // ascending aorta
        c.fill(Ellipse::circle(mid - 24.0, 204.0, 10.0), 38); // SVC
    }
    if (0.33..0.44).contains(&t) {
        c.fill(Ellipse::circle(mid + 30.0, 200.0, 14.0), 40); // pulmonary trunk
    }
    if (0.14..0.19).contains(&t) {
        c.fill(
            Ellipse::new(mid + 14.0, 238.0, 13.0, 36.0).rotated(-0.55),
            42,
        ); // arch
    }
    if t >= 0.17 {
        c.fill(Ellipse::circle(mid + 22.0, 272.0, 12.0), 42); // descending aorta
    }

    // Heart with epicardial fat, apex towards patient left (image right).
    let h = bell(t, 0.38, 0.84);
    if h > 0.0 {
        let heart = Ellipse::new(mid + 20.0, 218.0, 72.0 * h, 58.0 * h).rotated(-0.5);
        c.fill(heart.grown(4.0), -90);
        c.fill(heart, 45);
        c.fill(
            Ellipse::new(heart.cx + 14.0 * h, heart.cy + 4.0, 30.0 * h, 24.0 * h).rotated(-0.5),
            52,
        ); // left ventricular wall, slightly denser
    }

    // Airway: trachea, then main bronchi below the carina.
    if t < 0.31 {
        c.fill(Ellipse::circle(mid, 250.0, 12.0), 40);
        c.fill(Ellipse::circle(mid, 250.0, 9.0), -1000);
        c.fill(Ellipse::circle(mid + 3.0, 268.0, 5.0), 30); // oesophagus
    } else if t < 0.4 {
        let d = 7.0 + (t - 0.31) * 260.0;
        for s in [-1.0f32, 1.0] {
            c.fill(Ellipse::circle(mid + s * d, 252.0, 8.0), 40);
            c.fill(Ellipse::circle(mid + s * d, 252.0, 5.5), -1000);
        }
    }

    // Sternum.
    if (0.04..0.72).contains(&t) {
        bone(&mut c, Ellipse::new(mid, 142.0, 15.0, 6.5), 620, 220, 2.0);
    }

    // Rib cross-sections around the cage. Ribs slope down anteriorly, so at
    // a given level they show as alternating arcs that rotate while scrolling.
    if t < 0.93 {
        let cage = Ellipse::new(
            mid,
            248.0,
            146.0 + 8.0 * (1.0 - smoothstep(0.0, 0.2, t)),
            103.0,
        );
        for j in 0..44u32 {
            let theta = -PI / 2.0 + 0.16 + (TAU - 0.32) * (j as f32 + 0.5) / 44.0;
            // angular distance from the spine (posterior, +PI/2)
            let from_spine = (theta - PI / 2.0).abs();
            if from_spine < 0.32 {
                continue;
            }
            let phase = (z / 26.0 + from_spine * 0.55 + 10.0).rem_euclid(1.0);
            if phase > 0.42 {
                continue;
            }
            let rx = cage.cx + cage.a * theta.cos();
            let ry = cage.cy + cage.b * theta.sin();
            bone(
                &mut c,
                Ellipse::new(rx, ry, 7.5, 4.5).rotated(theta + PI / 2.0),
                720,
                230,
                1.8,
            );
        }
    }

    // Spine: vertebral body (disc every 26 mm), canal, posterior elements.
    let level = (z / 26.0).rem_euclid(1.0);
    let vb = Ellipse::new(mid, 302.0, 23.0, 19.0);
    if level < 0.15 {
        c.fill(vb, 85);
    } else {
        bone(&mut c, vb, 760, 260, 2.5);
    }
    c.fill(Ellipse::new(mid, 334.0, 17.0, 14.0), 700);
    c.fill(Ellipse::new(mid, 333.0, 10.0, 8.5), 20);
    if (0.25..0.8).contains(&level) {
        c.fill(Ellipse::new(mid, 356.0, 5.0, 12.0), 700); // spinous process
        for s in [-1.0f32, 1.0] {
            bone(
                &mut c,
                Ellipse::new(mid + s * 30.0, 336.0, 15.0, 6.0).rotated(s * 0.3),
                680,
                240,
                1.5,
            );
        }
    }

    c.px
}

/// Adds quantum noise and converts HU to stored values (little endian).
fn stored_bytes(hu: &[i16], slice: u64) -> Vec<u8> {
    let noise = noise_table();
    let mask = NOISE_LEN - 1;
    let mut out = vec![0u8; hu.len() * 2];
    for y in 0..hu.len() / SIZE {
        let mut k = noise_offset(0xC7, slice, y);
        for i in y * SIZE..(y + 1) * SIZE {
            // air stays above -1024 HU
            let v = (i32::from(hu[i]) + i32::from(noise[k])).clamp(-1024, 3071) - INTERCEPT;
            k = (k + 1) & mask;
            out[2 * i] = v as u8;
            out[2 * i + 1] = (v >> 8) as u8;
        }
    }
    out
}
