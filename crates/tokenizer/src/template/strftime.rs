//! `strftime_now(format)` for templates (Llama 3.x, Mistral, LFM put today's date in the
//! prompt): Python's `datetime.now().strftime`, C locale, in UTC (no time zone database here).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub micros: u32,
    /// 0 = Monday .. 6 = Sunday
    pub weekday: u32,
    /// 1..=366
    pub yday: u32,
}

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

impl DateTime {
    /// The current time (UTC).
    pub fn now() -> DateTime {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        DateTime::from_unix(d.as_secs() as i64, d.subsec_micros())
    }

    /// Seconds since 1970-01-01T00:00:00Z to a date (proleptic Gregorian).
    pub fn from_unix(secs: i64, micros: u32) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = CUM[month as usize - 1] + day + u32::from(leap && month > 2);
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let weekday = (days + 3).rem_euclid(7) as u32;
        DateTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            micros,
            weekday,
            yday,
        }
    }

    /// ISO 8601 year and week number (for `%G`, `%g`, `%V`).
    fn iso_week(&self) -> (i64, u32) {
        let wday = self.weekday as i64 + 1; // Monday = 1
        let week = (self.yday as i64 - wday + 10) / 7;
        let weeks_in = |y: i64| -> i64 {
            let p = |y: i64| (y + y / 4 - y / 100 + y / 400) % 7;
            if p(y) == 4 || p(y - 1) == 3 {
                53
            } else {
                52
            }
        };
        if week < 1 {
            (self.year - 1, weeks_in(self.year - 1) as u32)
        } else if week > weeks_in(self.year) {
            (self.year + 1, 1)
        } else {
            (self.year, week as u32)
        }
    }

    /// Formats like C `strftime` in the C locale, with glibc's `-` (no padding) flag.
    /// Unknown directives are copied through, as glibc does.
    pub fn format(&self, fmt: &str) -> String {
        let mut out = String::new();
        let mut chars = fmt.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let no_pad = chars.peek() == Some(&'-');
            if no_pad {
                chars.next();
            }
            let Some(d) = chars.next() else {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                break;
            };
            let num = |out: &mut String, v: i64, width: usize| {
                if no_pad {
                    let _ = write!(out, "{v}");
                } else {
                    let _ = write!(out, "{v:0width$}");
                }
            };
            let hour12 = match self.hour % 12 {
                0 => 12,
                h => h,
            };
            match d {
                'a' => out.push_str(&DAYS[self.weekday as usize][..3]),
                'A' => out.push_str(DAYS[self.weekday as usize]),
                'b' | 'h' => out.push_str(&MONTHS[self.month as usize - 1][..3]),
                'B' => out.push_str(MONTHS[self.month as usize - 1]),
                'C' => num(&mut out, self.year.div_euclid(100), 2),
                'c' => out.push_str(&self.format("%a %b %e %H:%M:%S %Y")),
                'd' => num(&mut out, self.day.into(), 2),
                'D' | 'x' => out.push_str(&self.format("%m/%d/%y")),
                'e' => {
                    if no_pad {
                        let _ = write!(out, "{}", self.day);
                    } else {
                        let _ = write!(out, "{:2}", self.day);
                    }
                }
                'f' => {
                    let _ = write!(out, "{:06}", self.micros);
                }
                'F' => out.push_str(&self.format("%Y-%m-%d")),
                'G' => num(&mut out, self.iso_week().0, 4),
                'g' => num(&mut out, self.iso_week().0.rem_euclid(100), 2),
                'H' => num(&mut out, self.hour.into(), 2),
                'I' => num(&mut out, hour12.into(), 2),
                'j' => num(&mut out, self.yday.into(), 3),
                'k' => {
                    let _ = write!(out, "{:2}", self.hour);
                }
                'l' => {
                    let _ = write!(out, "{hour12:2}");
                }
                'm' => num(&mut out, self.month.into(), 2),
                'M' => num(&mut out, self.minute.into(), 2),
                'n' => out.push('\n'),
                'p' => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
                'P' => out.push_str(if self.hour < 12 { "am" } else { "pm" }),
                'R' => out.push_str(&self.format("%H:%M")),
                'S' => num(&mut out, self.second.into(), 2),
                't' => out.push('\t'),
                'T' | 'X' => out.push_str(&self.format("%H:%M:%S")),
                'u' => num(&mut out, self.weekday as i64 + 1, 1),
                'U' => {
                    let sunday_based = (self.weekday + 1) % 7;
                    let w = (self.yday + 6 - sunday_based) / 7;
                    num(&mut out, w.into(), 2)
                }
                'V' => num(&mut out, self.iso_week().1.into(), 2),
                'w' => num(&mut out, ((self.weekday + 1) % 7).into(), 1),
                'W' => {
                    let w = (self.yday + 6 - self.weekday) / 7;
                    num(&mut out, w.into(), 2)
                }
                'y' => num(&mut out, self.year.rem_euclid(100), 2),
                'Y' => {
                    let _ = write!(out, "{}", self.year);
                }
                // Python's datetime.now() is naive: no offset, no zone name.
                'z' | 'Z' => {}
                '%' => out.push('%'),
                other => {
                    out.push('%');
                    if no_pad {
                        out.push('-');
                    }
                    out.push(other);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let t = DateTime::from_unix(0, 0);
        assert_eq!(
            (t.year, t.month, t.day, t.weekday, t.yday),
            (1970, 1, 1, 3, 1)
        );
        // 2024-02-29T13:05:09Z, a Thursday, day 60.
        let t = DateTime::from_unix(1_709_211_909, 42);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2024, 2, 29, 13, 5, 9)
        );
        assert_eq!((t.weekday, t.yday), (3, 60));
        assert_eq!(t.format("%d %b %Y"), "29 Feb 2024");
        assert_eq!(t.format("%Y-%m-%d"), "2024-02-29");
        assert_eq!(
            t.format("%A, %B %-d, %I:%M %p"),
            "Thursday, February 29, 01:05 PM"
        );
        assert_eq!(
            t.format("%j %U %W %V %u %w %f %%"),
            "060 08 09 09 4 4 000042 %"
        );
        assert_eq!(t.format("%c|%z%Z|%Q"), "Thu Feb 29 13:05:09 2024||%Q");
        // 2021-01-03 (Sunday) is in ISO week 53 of 2020.
        let t = DateTime::from_unix(1_609_632_000, 0);
        assert_eq!(t.format("%G-W%V-%u %U %W"), "2020-W53-7 01 00");
    }
}
