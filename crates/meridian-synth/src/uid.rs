//! Deterministic UID derivation and small integer hashing helpers.
//!
//! UIDs are `2.25.<decimal u128>`, the UUID-derived form of PS3.5 §B.2. The
//! 128-bit value is derived from the caller's seed and a path of integers
//! (role, study, series, instance), and carries RFC 9562 version-8 ("custom")
//! and variant bits, so it is a well-formed UUID in its own right.

/// SplitMix64 finaliser: a cheap, well-distributed 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a 128-bit value from a seed and a path, using two independent lanes.
pub(crate) fn derive_u128(seed: u64, path: &[u64]) -> u128 {
    let mut hi = mix64(seed ^ 0x4D45_5249_4449_414E); // "MERIDIAN"
    let mut lo = mix64(seed.rotate_left(29) ^ 0x5359_4E54_4845_5449); // "SYNTHETI"
    for (i, &p) in path.iter().enumerate() {
        let salt = i as u64 + 1;
        hi = mix64(hi ^ mix64(p ^ salt.wrapping_mul(0xA076_1D64_78BD_642F)));
        lo = mix64(lo.rotate_left(17) ^ mix64(p.wrapping_add(salt << 32) ^ 0xE703_7ED1_A0B4_28DB));
    }
    (u128::from(hi) << 64) | u128::from(lo)
}

/// A `2.25.` UID derived from `seed` and `path`; at most 44 characters.
pub(crate) fn uid(seed: u64, path: &[u64]) -> String {
    let mut v = derive_u128(seed, path);
    // UUID version 8 (bits 76..80) and RFC variant `10` (bits 62..64).
    v = (v & !(0xF_u128 << 76)) | (0x8_u128 << 76);
    v = (v & !(0x3_u128 << 62)) | (0x2_u128 << 62);
    format!("2.25.{v}")
}

/// UID roles, so that e.g. a study and a series never share a derivation path.
pub(crate) const ROLE_STUDY: u64 = 1;
pub(crate) const ROLE_SERIES: u64 = 2;
pub(crate) const ROLE_INSTANCE: u64 = 3;
pub(crate) const ROLE_FRAME_OF_REFERENCE: u64 = 4;

/// Implementation Class UID written in the file meta group of every generated file.
pub(crate) const IMPLEMENTATION_CLASS_UID: &str = "2.25.222764362620813810657048757478966923091";
/// Implementation Version Name (SH, at most 16 characters).
pub(crate) const IMPLEMENTATION_VERSION_NAME: &str = "MERIDIAN_SYNTH";

/// A tiny xorshift32 generator for per-pixel noise.
#[derive(Clone, Copy)]
pub(crate) struct Noise(u32);

impl Noise {
    /// Seeds a generator from a few coordinates (never yields a zero state).
    pub(crate) fn new(a: u64, b: u64, c: u64) -> Self {
        let h = mix64(a ^ mix64(b ^ mix64(c)));
        Noise((h as u32) | 1)
    }

    #[inline]
    pub(crate) fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    /// Triangular noise in `-amp..=amp` (approximately), cheap and smooth-looking.
    #[inline]
    pub(crate) fn tri(&mut self, amp: i32) -> i32 {
        let r = self.next();
        let a = (r & 0xFF) as i32;
        let b = ((r >> 8) & 0xFF) as i32;
        ((a + b - 255) * amp) / 255
    }
}

/// A fixed table of triangular noise in `-16..=16`, 65536 entries, built
/// once per process. Image noise reads it at a per-row pseudo-random offset:
/// a cheap inner loop (plain indexing), which matters in debug builds.
pub(crate) fn noise_table() -> &'static [i16] {
    static TABLE: std::sync::OnceLock<Vec<i16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut n = Noise::new(0x4E4F_4953, 0x45, 0);
        (0..NOISE_LEN).map(|_| n.tri(16) as i16).collect()
    })
}

/// Length of [`noise_table`] (a power of two).
pub(crate) const NOISE_LEN: usize = 1 << 16;

/// Pseudo-random start offset into [`noise_table`] for one image row.
pub(crate) fn noise_offset(a: u64, b: u64, row: usize) -> usize {
    (mix64(a ^ mix64(b ^ mix64(row as u64))) as usize) & (NOISE_LEN - 1)
}

/// Hash of a 2-D integer coordinate, for spatially fixed speckle patterns.
#[inline]
pub(crate) fn hash2(x: u32, y: u32, salt: u32) -> u32 {
    let mut h = x.wrapping_mul(0x27D4_EB2D) ^ y.wrapping_mul(0x1656_67B1) ^ salt;
    h ^= h >> 15;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_distinct() {
        let a = uid(0, &[ROLE_STUDY, 1]);
        let b = uid(0, &[ROLE_SERIES, 1]);
        let c = uid(1, &[ROLE_STUDY, 1]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, uid(0, &[ROLE_STUDY, 1]));
        for u in [&a, &b, &c, &IMPLEMENTATION_CLASS_UID.to_string()] {
            assert!(u.len() <= 64);
            assert!(u.starts_with("2.25."));
            let tail = &u[5..];
            assert!(tail.bytes().all(|b| b.is_ascii_digit()));
            assert!(tail == "0" || !tail.starts_with('0'));
        }
    }
}
