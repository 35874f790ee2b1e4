//! HTTP-dates (RFC 9110 §5.6.7): the preferred IMF-fixdate and the two obsolete forms a
//! recipient must accept (RFC 850, asctime), read as the RFC 9111 §4.2 asks of a cache
//! (names case-insensitively, no zone but `GMT`); and IMF-fixdate written.

/// Seconds since the Unix epoch of an HTTP-date, or `None` when it is not one (a cache then
/// treats an `Expires` as already past, RFC 9111 §5.3).
pub(crate) fn parse(s: &str) -> Option<i64> {
    let s = s.trim_matches([' ', '\t']);
    imf_fixdate(s).or_else(|| rfc850(s)).or_else(|| asctime(s))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 29 || b[3] != b',' || b[4] != b' ' || b[7] != b' ' || b[11] != b' ' {
        return None;
    }
    if b[16] != b' ' || b[25] != b' ' || !s[26..].eq_ignore_ascii_case("gmt") {
        return None;
    }
    day_name(&s[..3], &DAYS)?;
    let day = digits(&b[5..7])?;
    let month = month(&s[8..11])?;
    let year = digits(&b[12..16])?;
    let (h, m, sec) = time(&b[17..25])?;
    civil(year, month, day, h, m, sec)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`: a two-digit year more than 50 years ahead is the last
/// year in the past with the same digits.
fn rfc850(s: &str) -> Option<i64> {
    let (name, rest) = s.split_once(", ")?;
    day_name(name, &LONG_DAYS)?;
    let b = rest.as_bytes();
    if b.len() != 22 || b[2] != b'-' || b[6] != b'-' || b[9] != b' ' || b[18] != b' ' {
        return None;
    }
    if !rest[19..].eq_ignore_ascii_case("gmt") {
        return None;
    }
    let day = digits(&b[0..2])?;
    let month = month(&rest[3..6])?;
    let yy = digits(&b[7..9])?;
    let (h, m, sec) = time(&b[10..18])?;
    let now_year = 1970 + crate::entry::wall_ms() as i64 / 1000 / 31_556_952;
    let mut year = now_year - now_year % 100 + yy;
    if year > now_year + 50 {
        year -= 100;
    }
    civil(year, month, day, h, m, sec)
}

/// `Sun Nov  6 08:49:37 1994`
fn asctime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[3] != b' ' || b[7] != b' ' || b[10] != b' ' || b[19] != b' ' {
        return None;
    }
    day_name(&s[..3], &DAYS)?;
    let month = month(&s[4..7])?;
    let day = if b[8] == b' ' {
        digits(&b[9..10])?
    } else {
        digits(&b[8..10])?
    };
    let (h, m, sec) = time(&b[11..19])?;
    let year = digits(&b[20..24])?;
    civil(year, month, day, h, m, sec)
}

fn day_name(s: &str, names: &[&str]) -> Option<()> {
    names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(s))
        .then_some(())
}

fn month(s: &str) -> Option<i64> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .map(|i| i as i64 + 1)
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
}

/// `HH:MM:SS`
fn time(b: &[u8]) -> Option<(i64, i64, i64)> {
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    (h < 24 && m < 60 && s < 61).then_some((h, m, s))
}

/// Seconds since the epoch of a UTC date and time (days from civil, H. Hinnant's algorithm).
fn civil(year: i64, month: i64, day: i64, h: i64, m: i64, s: i64) -> Option<i64> {
    if !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + m * 60 + s)
}

/// The IMF-fixdate of `secs` since the epoch.
pub(crate) fn format(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let cap = |s: &str| {
        let mut c = s.to_owned();
        c[..1].make_ascii_uppercase();
        c
    };
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        cap(DAYS[weekday]),
        cap(MONTHS[month as usize - 1]),
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn the_three_forms_of_rfc_9110_parse_to_the_same_instant() {
        // RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms.
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), Some(T));
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), Some(T));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), Some(T));
        assert_eq!(format(T), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse(&format(2_524_608_000)), Some(2_524_608_000));
    }

    #[test]
    fn names_are_matched_case_insensitively_and_only_gmt_is_a_zone() {
        // RFC 9111 §4.2: match case-insensitively; a zone other than GMT is invalid.
        assert_eq!(parse("SUN, 06 NOV 1994 08:49:37 gmt"), Some(T));
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 AEST",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun 06 Nov 1994 08:49:37 GMT",
            "Sun, 06  Nov  1994 08:49:37 GMT",
            "Sun, 06-Nov-1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08.49.37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "0",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_two_digit_year_far_ahead_is_read_in_the_past() {
        // RFC 9110 §5.6.7: more than 50 years in the future means the previous century.
        let y2050 = parse("Thursday, 18-Aug-50 02:01:18 GMT").unwrap();
        assert_eq!(format(y2050), "Thu, 18 Aug 2050 02:01:18 GMT");
        let y1994 = parse("Sunday, 06-Nov-94 08:49:37 GMT").unwrap();
        assert_eq!(y1994, T);
    }
}
