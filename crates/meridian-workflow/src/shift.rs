//! Time windows in a time zone: reader shifts and site coverage hours.

use jiff::{Timestamp, tz::TimeZone};

use crate::model::{Exception, Millis, Reader, Window};

/// The time zone named `name`, from the bundled tz database.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}"))
}

fn zone_or_utc(name: &str) -> TimeZone {
    zone(name).unwrap_or(TimeZone::UTC)
}

/// Whether `now` falls in any of `windows`, read in time zone `tz`.
pub fn in_windows(windows: &[Window], tz: &str, now: Millis) -> bool {
    let Ok(ts) = Timestamp::from_millisecond(now) else {
        return false;
    };
    let local = ts.to_zoned(zone_or_utc(tz));
    let day = local.weekday().to_monday_zero_offset() as u8;
    let prev = (day + 6) % 7;
    let t = local.time();
    windows.iter().any(|w| {
        if w.end > w.start {
            w.days.contains(&day) && w.start <= t && t < w.end
        } else {
            (w.days.contains(&day) && t >= w.start) || (w.days.contains(&prev) && t < w.end)
        }
    })
}

fn exception_at(exceptions: &[Exception], now: Millis) -> Option<bool> {
    // An `off` exception wins over an extra shift covering the same instant.
    let covering = exceptions.iter().filter(|e| e.from <= now && now < e.to);
    let mut on = None;
    for e in covering {
        if e.off {
            return Some(false);
        }
        on = Some(true);
    }
    on
}

/// Whether the reader is on shift at `now`: exceptions first, then the weekly rota in
/// their own time zone.
pub fn on_shift(reader: &Reader, now: Millis) -> bool {
    exception_at(&reader.exceptions, now)
        .unwrap_or_else(|| in_windows(&reader.shifts, &reader.time_zone, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::time;

    fn ms(s: &str) -> Millis {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn reader(tz: &str, shifts: Vec<Window>) -> Reader {
        serde_json::from_value::<Reader>(serde_json::json!({"id": "r", "time_zone": tz}))
            .map(|mut r| {
                r.shifts = shifts;
                r
            })
            .unwrap()
    }

    #[test]
    fn day_shift_in_reader_zone() {
        // Mon–Fri 08:00–16:00 in Chicago (UTC-6 in November).
        let r = reader(
            "America/Chicago",
            vec![Window {
                days: vec![0, 1, 2, 3, 4],
                start: time(8, 0, 0, 0),
                end: time(16, 0, 0, 0),
            }],
        );
        // 2026-11-23 is a Monday.
        assert!(on_shift(&r, ms("2026-11-23T14:00:00Z"))); // 08:00 local
        assert!(!on_shift(&r, ms("2026-11-23T13:59:59Z"))); // 07:59 local
        assert!(!on_shift(&r, ms("2026-11-23T22:00:00Z"))); // 16:00 local: end excluded
        assert!(!on_shift(&r, ms("2026-11-28T15:00:00Z"))); // Saturday
    }

    #[test]
    fn night_shift_wraps_midnight() {
        // Sunday-night-to-Monday-morning 22:00–07:00 in Sydney.
        let r = reader(
            "Australia/Sydney",
            vec![Window {
                days: vec![6],
                start: time(22, 0, 0, 0),
                end: time(7, 0, 0, 0),
            }],
        );
        // Sydney is UTC+11 in November: Sunday 23:00 local = Sunday 12:00Z.
        assert!(on_shift(&r, ms("2026-11-22T12:00:00Z")));
        // Monday 06:59 local = Sunday 19:59Z.
        assert!(on_shift(&r, ms("2026-11-22T19:59:00Z")));
        // Monday 07:00 local.
        assert!(!on_shift(&r, ms("2026-11-22T20:00:00Z")));
        // Monday 23:00 local: Monday is not a start day.
        assert!(!on_shift(&r, ms("2026-11-23T12:00:00Z")));
    }

    #[test]
    fn exceptions_override_the_rota() {
        let mut r = reader(
            "UTC",
            vec![Window {
                days: (0..7).collect(),
                start: time(0, 0, 0, 0),
                end: time(0, 0, 0, 0),
            }],
        );
        let t = ms("2026-11-23T10:00:00Z");
        assert!(on_shift(&r, t));
        r.exceptions.push(Exception {
            from: t - 1000,
            to: t + 1000,
            off: true,
        });
        assert!(!on_shift(&r, t));
        r.shifts.clear();
        r.exceptions[0].off = false;
        assert!(on_shift(&r, t));
        assert!(!on_shift(&r, t + 1000));
    }
}
