//! Durations: the one parser and printer every setting uses (corral.toml,
//! the command line, MCP and the wire), so "10s", "2.5", "5m" and "1h30m"
//! mean the same everywhere, and a value corral cannot represent (negative,
//! not a number, past [`MAX_DURATION_SECS`]) is refused where it is typed,
//! never turned into a panic later (`Duration::from_secs_f64` panics on
//! both).
//!
//! No I/O here.

use std::fmt;
use std::time::Duration;

/// The longest duration accepted anywhere (about 31 years), as in
/// `corral-probes`: keeps `Instant + Duration` from overflowing.
pub const MAX_DURATION_SECS: u64 = 1_000_000_000;

/// A duration that was typed wrong or is out of range; the message says
/// which and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// A number of seconds (whole or fractional) as a duration, or why not.
pub fn from_secs(secs: f64) -> Result<Duration, DurationError> {
    if !(secs >= 0.0 && secs <= MAX_DURATION_SECS as f64) {
        return Err(DurationError(format!(
            "{secs} seconds is not a duration corral can use: give 0 to {MAX_DURATION_SECS} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A number of seconds from a request (`--grace`, `--timeout`, MCP's
/// `grace_seconds`): the duration, or the error that names `what`
/// (exit 13, like a bad flag).
pub fn checked_secs(what: &str, secs: f64) -> Result<Duration, crate::model::error::Error> {
    from_secs(secs)
        .map_err(|e| crate::model::error::Error::new(crate::model::error::ErrorKind::BadBudget, format!("{what}: {e}")))
}

/// What a command-line flag takes: a plain number of seconds (`10`, `2.5`)
/// or a [`parse_duration`] string (`10s`, `5m`, `2h`).
pub fn parse_arg(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<f64>() {
        if trimmed.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E') {
            return from_secs(secs);
        }
    }
    parse_duration(trimmed).map_err(DurationError)
}

/// Parses a duration: one or more parts of a number (digits, optionally
/// with a fraction) and a unit, `ns`, `us`, `ms`, `s`, `m`, `h` or `d`:
/// `"250ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"1.5h"`. Spaces between parts are
/// allowed. At most 1 000 000 000 seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        Err(format!("bad duration {text:?}: {why} (write a number and a unit: \"250ms\", \"30s\", \"5m\", \"1h30m\")"))
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return bad("it is empty");
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after.find(|c: char| !c.is_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || !fraction.chars().all(|c| c.is_ascii_digit()) {
            return bad("expected a number");
        }
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "" => return bad(&format!("{number:?} has no unit")),
            _ => return bad(&format!("unknown unit {unit:?}")),
        };
        let whole: u128 =
            if whole.is_empty() { 0 } else { whole.parse().map_err(|_| format!("bad duration {text:?}: too long"))? };
        // The fraction to nanosecond precision; further digits are dropped.
        let mut fraction_nanos: u128 = 0;
        let mut scale = nanos_per_unit;
        for digit in fraction.bytes() {
            fraction_nanos += u128::from(digit - b'0') * scale;
            scale /= 10;
        }
        total = whole
            .checked_mul(nanos_per_unit)
            .and_then(|n| n.checked_add(fraction_nanos / 10))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(|| format!("bad duration {text:?}: too long"))?;
        rest = after.trim_start();
    }
    if total > u128::from(MAX_DURATION_SECS) * 1_000_000_000 {
        return Err(format!("bad duration {text:?}: longer than {MAX_DURATION_SECS} seconds"));
    }
    Ok(Duration::new((total / 1_000_000_000) as u64, (total % 1_000_000_000) as u32))
}

/// Writes a duration the way [`parse_duration`] reads it, exactly:
/// `"1h30m"`, `"250ms"`, `"1s500ms"`, `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let text: String = parts.iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n}{unit}")).collect();
    if text.is_empty() {
        "0s".to_owned()
    } else {
        text
    }
}

/// Serde for an `Option<Duration>` as people write it (corral.toml, the
/// settings a spawn sends): a [`parse_duration`] string or a number of
/// seconds ([`from_secs`]) in, a [`format_duration`] string out.
pub mod opt_text {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;

    use super::{format_duration, from_secs, parse_duration};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_any(DurationVisitor).map(Some)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration (\"30s\", \"5m\", \"1h30m\", \"250ms\") or a number of seconds")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            self.visit_f64(secs as f64)
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            self.visit_f64(secs as f64)
        }

        fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
            from_secs(secs).map_err(E::custom)
        }
    }
}

/// Serde for a `Duration` as records keep it (the journal, the monitor's
/// spec): a number of seconds, `30.0`, in and out.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::from_secs(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// [`secs`] for an `Option<Duration>`.
pub mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => super::secs::serialize(duration, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// A number of seconds, or `null` for none.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(deserializer)? {
            Some(secs) => super::from_secs(secs).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_take_seconds_or_units_and_refuse_what_cannot_be_represented() {
        assert_eq!(parse_arg("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_arg("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_arg("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_arg("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_arg("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["1e20", "-1", "NaN", "inf", "-0.5", "", "5x", "1000000001"] {
            assert!(parse_arg(bad).is_err(), "{bad:?} parsed");
        }
        assert!(from_secs(f64::NAN).is_err());
        assert!(from_secs(1e20).unwrap_err().0.contains("1000000000"));
    }
}
