//! Minimal scan-line rasteriser: filled (optionally rotated) ellipses and
//! rectangles on a row-major canvas. Shapes are painted in order, so later
//! shapes cover earlier ones (painter's algorithm). Work is per row span, so
//! a shape costs one square root per row plus a `fill` of its span.

/// An ellipse in pixel coordinates: centre, semi-axes along x (`a`) and y
/// (`b`) before rotation, and a rotation angle in radians.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ellipse {
    pub cx: f32,
    pub cy: f32,
    pub a: f32,
    pub b: f32,
    pub angle: f32,
}

impl Ellipse {
    pub(crate) fn new(cx: f32, cy: f32, a: f32, b: f32) -> Self {
        Ellipse {
            cx,
            cy,
            a,
            b,
            angle: 0.0,
        }
    }

    pub(crate) fn circle(cx: f32, cy: f32, r: f32) -> Self {
        Self::new(cx, cy, r, r)
    }

    pub(crate) fn rotated(self, angle: f32) -> Self {
        Ellipse { angle, ..self }
    }

    /// Same centre and rotation, semi-axes grown (or shrunk) by `d` pixels.
    pub(crate) fn grown(self, d: f32) -> Self {
        Ellipse {
            a: self.a + d,
            b: self.b + d,
            ..self
        }
    }

    /// Row spans `(y, x_start, x_end_exclusive)` covered by the ellipse,
    /// clipped to a `w` x `h` canvas. Pixel `(x, y)` is sampled at its
    /// integer coordinates.
    pub(crate) fn spans(self, w: usize, h: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let Ellipse {
            cx,
            cy,
            a,
            b,
            angle,
        } = self;
        let valid = a > 0.0
            && b > 0.0
            && a.is_finite()
            && b.is_finite()
            && cx.is_finite()
            && cy.is_finite()
            && angle.is_finite();
        let (s, c) = angle.sin_cos();
        let (ia2, ib2) = if valid {
            (1.0 / (a * a), 1.0 / (b * b))
        } else {
            (0.0, 0.0)
        };
        // Inside test for offset (dx, dy): qa*dx^2 + qb*dx + qc <= 0.
        let qa = c * c * ia2 + s * s * ib2;
        let qb_k = 2.0 * c * s * (ia2 - ib2);
        let qc_k = s * s * ia2 + c * c * ib2;
        let half_h = (a * a * s * s + b * b * c * c).sqrt();
        let (y0, y1) = if valid {
            let y0 = (cy - half_h).ceil().max(0.0) as usize;
            let y1 = ((cy + half_h).floor() + 1.0).clamp(0.0, h as f32) as usize;
            (y0.min(y1), y1)
        } else {
            (0, 0)
        };
        let wf = w as f32;
        (y0..y1).filter_map(move |y| {
            let dy = y as f32 - cy;
            let qb = qb_k * dy;
            let qc = qc_k * dy * dy - 1.0;
            let disc = qb * qb - 4.0 * qa * qc;
            if disc < 0.0 || qa <= 0.0 {
                return None;
            }
            let sq = disc.sqrt();
            let lo = cx + (-qb - sq) / (2.0 * qa);
            let hi = cx + (-qb + sq) / (2.0 * qa);
            let x0 = lo.ceil().max(0.0);
            let x1 = (hi.floor() + 1.0).min(wf);
            if x1 <= x0 {
                return None;
            }
            Some((y, x0 as usize, x1 as usize))
        })
    }

    /// Squared normalised radius of point `(x, y)`: `< 1` inside the ellipse.
    #[inline]
    pub(crate) fn r2(&self, x: f32, y: f32, sin: f32, cos: f32) -> f32 {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let u = dx * cos + dy * sin;
        let v = -dx * sin + dy * cos;
        u * u / (self.a * self.a) + v * v / (self.b * self.b)
    }
}

/// A row-major image buffer.
pub(crate) struct Canvas<T> {
    pub w: usize,
    pub h: usize,
    pub px: Vec<T>,
}

impl<T: Copy> Canvas<T> {
    pub(crate) fn new(w: usize, h: usize, value: T) -> Self {
        Canvas {
            w,
            h,
            px: vec![value; w * h],
        }
    }

    /// Paints the ellipse with a constant value.
    pub(crate) fn fill(&mut self, e: Ellipse, value: T) {
        let w = self.w;
        for (y, x0, x1) in e.spans(w, self.h) {
            self.px[y * w + x0..y * w + x1].fill(value);
        }
    }

    /// Paints an axis-aligned rectangle `[x0, x1) x [y0, y1)` (clipped).
    pub(crate) fn fill_rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, value: T) {
        let w = self.w;
        let (x1, y1) = (x1.min(w), y1.min(self.h));
        if x0 >= x1 {
            return;
        }
        for y in y0..y1 {
            self.px[y * w + x0..y * w + x1].fill(value);
        }
    }

    /// Calls `f(x, y, pixel)` for every pixel inside the ellipse.
    pub(crate) fn apply(&mut self, e: Ellipse, mut f: impl FnMut(usize, usize, &mut T)) {
        let w = self.w;
        for (y, x0, x1) in e.spans(w, self.h) {
            for (i, p) in self.px[y * w + x0..y * w + x1].iter_mut().enumerate() {
                f(x0 + i, y, p);
            }
        }
    }
}

/// `sqrt(1 - r2)` for `r2` in `[0, 1)` in 1/1024 steps, scaled by 1024: the
/// normalised chord length through an ellipsoid, used for projection
/// (radiograph) shading.
pub(crate) struct ChordLut([u16; 1025]);

impl ChordLut {
    pub(crate) fn new() -> Self {
        let mut t = [0u16; 1025];
        for (i, v) in t.iter_mut().enumerate() {
            let r2 = i as f64 / 1024.0;
            *v = ((1.0 - r2).max(0.0).sqrt() * 1024.0).round() as u16;
        }
        ChordLut(t)
    }

    /// Chord (0..=1024) for a squared normalised radius.
    #[inline]
    pub(crate) fn chord(&self, r2: f32) -> i32 {
        if r2 >= 1.0 || r2.is_nan() {
            0
        } else {
            let i = (r2.max(0.0) * 1024.0) as usize;
            i32::from(self.0[i.min(1024)])
        }
    }
}

impl Canvas<i32> {
    /// Adds `amount * chord` over an ellipse: the projected thickness of an
    /// ellipsoid, so edges fade smoothly like in a real radiograph.
    pub(crate) fn add_ellipsoid(&mut self, lut: &ChordLut, e: Ellipse, amount: i32) {
        let (s, c) = e.angle.sin_cos();
        let w = self.w;
        for (y, x0, x1) in e.spans(w, self.h) {
            let yf = y as f32;
            for (i, p) in self.px[y * w + x0..y * w + x1].iter_mut().enumerate() {
                let r2 = e.r2((x0 + i) as f32, yf, s, c);
                *p += (amount * lut.chord(r2)) >> 10;
            }
        }
    }
}

/// Hermite smoothstep of `x` between `e0` and `e1`.
pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circle_area_is_about_right() {
        let mut c = Canvas::new(100, 100, 0u8);
        c.fill(Ellipse::circle(50.0, 50.0, 20.0), 1);
        let n = c.px.iter().filter(|&&p| p == 1).count() as f32;
        let expected = std::f32::consts::PI * 400.0;
        assert!((n - expected).abs() / expected < 0.03, "{n} vs {expected}");
    }

    #[test]
    fn rotated_ellipse_is_clipped_and_sane() {
        let mut c = Canvas::new(64, 48, 0u8);
        c.fill(
            Ellipse::new(10.0, 10.0, 40.0, 8.0).rotated(std::f32::consts::FRAC_PI_4),
            1,
        );
        assert!(c.px.contains(&1));
        // Degenerate shapes paint nothing and do not panic.
        c.fill(Ellipse::new(10.0, 10.0, 0.0, 8.0), 2);
        c.fill(Ellipse::new(f32::NAN, 10.0, 3.0, 8.0), 2);
        c.fill(Ellipse::new(-500.0, 1e9, 3.0, 8.0), 2);
        assert!(!c.px.contains(&2));
    }
}
