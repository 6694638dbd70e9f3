//! Durations as the CRDs and the CLI write them: `720h`, `30d`, `1h30m`, `45s` (units s, m, h,
//! d; no fractions, no spaces inside). Pure.

use std::time::Duration;

use thiserror::Error;

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("duration {0:?}: expected e.g. 720h, 30d, 1h30m")]
pub struct DurationError(pub String);

/// Parses durations like `720h`, `30d`, `1h30m`, `45s`; an overflow is an error.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(s.to_string());
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("720h").unwrap(),
            Duration::from_secs(720 * 3600)
        );
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "h", "10", "10x", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }
}
