//! MR head phantom: two series (T1- and T2-weighted) over the same anatomy.
//!
//! A tissue label map is drawn per slice (scalp fat, skull, diploë, CSF,
//! cortex with gyri, white matter, ventricles, deep grey nuclei, eyes), then
//! mapped to sequence-specific intensities with a gentle bias field and noise.

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};

use crate::dataset::{self, InstanceUids, Patient, PixelFormat, SeriesDef, StudyDef};
use crate::raster::{Canvas, Ellipse, smoothstep};
use crate::uid::Noise;
use crate::{Ctx, MR_SLICES_PER_SERIES, SynthError, SynthInstance};

pub(crate) const STUDY: StudyDef = StudyDef {
    key: 2,
    patient: Patient {
        name: "DEMO^MR^Phantom",
        id: "DEMO-0002",
        birth_date: "19790823",
        sex: "F",
    },
    modality: "MR",
    code: "MR",
    description: "MR BRAIN SYNTHETIC PHANTOM",
    body_part: "HEAD",
    sop_class: uids::MR_IMAGE_STORAGE,
};

const SIZE: usize = 256;
const PIXEL_SPACING: f64 = 0.9375; // 240 mm field of view
const THICKNESS: f64 = 5.0;
const SPACING: f64 = 6.0;
const Z_BOTTOM_MM: f64 = -40.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Weighting {
    T1,
    T2,
}

/// Tissue labels, also indices into the intensity tables.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Tissue {
    Air = 0,
    Fat,
    Bone,
    Marrow,
    Csf,
    Grey,
    White,
    Vitreous,
    Lens,
    Muscle,
}

/// Signal per tissue (12-bit scale), same order as [`Tissue`].
const T1_SIGNAL: [i32; 10] = [0, 1750, 70, 1250, 260, 760, 1080, 210, 900, 620];
const T2_SIGNAL: [i32; 10] = [0, 1050, 55, 780, 2300, 1180, 800, 2150, 420, 520];

struct Sequence {
    series: SeriesDef,
    signal: &'static [i32; 10],
    tr: f64,
    te: f64,
    etl: i64,
    variant: &'static str,
    window: (f64, f64),
}

const T1: Sequence = Sequence {
    series: SeriesDef {
        number: 3,
        description: "AX T1 SE SYNTHETIC",
    },
    signal: &T1_SIGNAL,
    tr: 500.0,
    te: 12.0,
    etl: 1,
    variant: "NONE",
    window: (700.0, 1400.0),
};

const T2: Sequence = Sequence {
    series: SeriesDef {
        number: 4,
        description: "AX T2 FSE SYNTHETIC",
    },
    signal: &T2_SIGNAL,
    tr: 4000.0,
    te: 100.0,
    etl: 16,
    variant: "SK",
    window: (1100.0, 2200.0),
};

pub(crate) fn instance(
    ctx: &Ctx,
    weighting: Weighting,
    index: usize,
) -> Result<SynthInstance, SynthError> {
    let seq = match weighting {
        Weighting::T1 => &T1,
        Weighting::T2 => &T2,
    };
    let n = MR_SLICES_PER_SERIES;
    let t = if n > 1 {
        index as f32 / (n - 1) as f32
    } else {
        0.5
    };
    let z = Z_BOTTOM_MM + index as f64 * SPACING;
    let labels = labels(t);
    let px = signal(&labels, seq.signal, weighting as u64 * 1000 + index as u64);

    let uids = InstanceUids::new(ctx.seed, &STUDY, &seq.series, 0, index);
    let mut b = dataset::header(
        ctx,
        &STUDY,
        &seq.series,
        &uids,
        index + 1,
        &["ORIGINAL", "PRIMARY", "M", "ND"],
    );
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
    b.ds(tags::SLICE_THICKNESS, THICKNESS);
    b.ds(tags::SPACING_BETWEEN_SLICES, SPACING);
    b.ds(tags::SLICE_LOCATION, z);
    // MR image
    b.str(tags::SCANNING_SEQUENCE, VR::CS, "SE");
    b.str(tags::SEQUENCE_VARIANT, VR::CS, seq.variant);
    b.str(tags::SCAN_OPTIONS, VR::CS, "");
    b.str(tags::MR_ACQUISITION_TYPE, VR::CS, "2D");
    b.ds(tags::REPETITION_TIME, seq.tr);
    b.ds(tags::ECHO_TIME, seq.te);
    b.is(tags::ECHO_TRAIN_LENGTH, seq.etl);
    b.ds(tags::NUMBER_OF_AVERAGES, 1.0);
    b.ds(tags::IMAGING_FREQUENCY, 63.87);
    b.str(tags::IMAGED_NUCLEUS, VR::SH, "1H");
    b.ds(tags::MAGNETIC_FIELD_STRENGTH, 1.5);
    b.image_pixel(PixelFormat {
        rows: SIZE as u16,
        cols: SIZE as u16,
        samples: 1,
        photometric: "MONOCHROME2",
        bits_allocated: 16,
        bits_stored: 12,
        signed: false,
    });
    b.ds(tags::WINDOW_CENTER, seq.window.0);
    b.ds(tags::WINDOW_WIDTH, seq.window.1);

    let name = match weighting {
        Weighting::T1 => "T1",
        Weighting::T2 => "T2",
    };
    b.finish(
        VR::OW,
        dataset::le_bytes_u16(&px),
        format!("MR head phantom {name}, slice {}/{}", index + 1, n),
        uids.instance,
        uids.study,
    )
}

/// Tissue label map of the axial slice at `t` (0 = skull base, 1 = vertex).
fn labels(t: f32) -> Canvas<u8> {
    let mut c = Canvas::new(SIZE, SIZE, Tissue::Air as u8);
    let (cx, cy) = (128.0f32, 126.0f32);
    // Head size: full around the ventricles, tapering to the vertex.
    let s = if t < 0.3 {
        0.9 + 0.1 * (t / 0.3)
    } else {
        (1.0 - ((t - 0.3) / 0.8).powi(2)).max(0.05).sqrt()
    };
    let (a, b) = (76.0 * s, 96.0 * s);
    let head = Ellipse::new(cx, cy, a, b);
    c.fill(head, Tissue::Fat as u8);
    c.fill(head.grown(-4.0), Tissue::Muscle as u8);
    c.fill(head.grown(-5.5), Tissue::Bone as u8);
    c.fill(head.grown(-7.5), Tissue::Marrow as u8);
    c.fill(head.grown(-9.0), Tissue::Bone as u8);
    let dura = head.grown(-11.0);
    c.fill(dura, Tissue::Csf as u8);

    // Brain: cortex with a gyral (wavy) grey/white boundary, sulci, and the
    // interhemispheric fissure.
    let brain = head.grown(-12.5);
    let phase = t * 5.0;
    c.apply(brain, |x, y, p| {
        let dx = (x as f32 - cx) / brain.a;
        let dy = (y as f32 - cy) / brain.b;
        let rho = (dx * dx + dy * dy).sqrt();
        let theta = dy.atan2(dx);
        // irregular folding: three incommensurate harmonics
        let gyri = 0.5 * (theta * 13.0 + phase).sin()
            + 0.3 * (theta * 23.0 - 1.7 * phase + 1.3).sin()
            + 0.2 * (theta * 37.0 + 0.8 * phase + 0.4).sin();
        let fissure = (x as f32 - cx).abs() < 1.3 && rho > 0.12;
        let sulcus = rho > 0.9 && gyri > 0.62; // reaching the surface
        *p = if fissure || sulcus {
            Tissue::Csf as u8
        } else if rho < 0.8 + 0.06 * gyri {
            Tissue::White as u8
        } else {
            Tissue::Grey as u8
        };
    });

    // Lateral ventricles (butterfly), third ventricle, deep grey nuclei.
    let v = smoothstep(0.3, 0.45, t) * (1.0 - smoothstep(0.68, 0.8, t));
    if v > 0.0 {
        for side in [-1.0f32, 1.0] {
            c.fill(
                Ellipse::new(cx + side * 9.0, cy - 6.0, 5.0 * v + 1.0, 28.0 * v)
                    .rotated(side * 0.22),
                Tissue::Csf as u8,
            );
        }
    }
    let d = smoothstep(0.22, 0.32, t) * (1.0 - smoothstep(0.5, 0.58, t));
    if d > 0.0 {
        for side in [-1.0f32, 1.0] {
            c.fill(
                Ellipse::new(cx + side * 22.0, cy + 2.0, 9.0 * d, 18.0 * d).rotated(-side * 0.3),
                Tissue::Grey as u8,
            );
            c.fill(
                Ellipse::new(cx + side * 11.0, cy + 18.0, 8.0 * d, 9.0 * d),
                Tissue::Grey as u8,
            );
        }
        c.fill(
            Ellipse::new(cx, cy + 12.0, 1.6, 10.0 * d),
            Tissue::Csf as u8,
        );
    }

    // Orbits at the lowest slices: fat cone, globe with lens; frontal sinus.
    let o = 1.0 - smoothstep(0.1, 0.2, t);
    if o > 0.0 {
        let ey = cy - b + 20.0;
        for side in [-1.0f32, 1.0] {
            let ex = cx + side * 30.0;
            c.fill(
                Ellipse::new(ex - side * 3.0, ey + 12.0, 9.0 * o, 15.0 * o).rotated(side * 0.35),
                Tissue::Fat as u8,
            );
            c.fill(Ellipse::circle(ex, ey, 12.0 * o), Tissue::Bone as u8);
            c.fill(Ellipse::circle(ex, ey, 11.0 * o), Tissue::Vitreous as u8);
            c.fill(
                Ellipse::new(ex, ey - 9.0 * o, 4.5 * o, 1.8 * o),
                Tissue::Lens as u8,
            );
        }
        c.fill(
            Ellipse::new(cx, ey + 2.0, 9.0 * o, 8.0 * o),
            Tissue::Air as u8,
        );
    }
    // Cerebellar folia / posterior fossa hint at low slices.
    let pf = 1.0 - smoothstep(0.18, 0.3, t);
    if pf > 0.0 {
        let fy = cy + b * 0.58;
        c.apply(Ellipse::new(cx, fy, 42.0 * pf, 22.0 * pf), |x, y, p| {
            if *p == Tissue::White as u8 || *p == Tissue::Grey as u8 {
                let dx = x as f32 - cx;
                let dy = y as f32 - (fy - 30.0);
                *p = if ((dx * dx + dy * dy).sqrt() * 0.9).sin() > 0.1 {
                    Tissue::Grey as u8
                } else {
                    Tissue::White as u8
                };
            }
        });
        c.fill(
            Ellipse::new(cx, fy - 12.0, 5.0 * pf, 4.0 * pf),
            Tissue::Csf as u8,
        );
    }
    c
}

/// Maps labels to signal with a smooth receive-coil bias and Rician-like noise.
fn signal(labels: &Canvas<u8>, table: &[i32; 10], salt: u64) -> Vec<u16> {
    let mut out = Vec::with_capacity(labels.px.len());
    for (y, row) in labels.px.chunks(labels.w).enumerate() {
        let mut n = Noise::new(0x3D, salt, y as u64);
        // Bias: about +-8 % from anterior to posterior, 1024 = unity.
        let bias = 1024 + ((128 - y as i32) * 80) / 128;
        for (x, &l) in row.iter().enumerate() {
            let base = table.get(usize::from(l)).copied().unwrap_or(0);
            let lateral = 1024 + (((x as i32 - 128).abs() * 40) / 128);
            let v = (base * bias / 1024) * lateral / 1024;
            let v = if base == 0 {
                // background: magnitude of complex noise, never negative
                (n.next() & 31) as i32 + (n.next() & 15) as i32
            } else {
                v + n.tri(v / 30 + 12)
            };
            out.push(v.clamp(0, 4095) as u16);
        }
    }
    out
}
