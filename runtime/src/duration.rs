//! Duration flags: every binary reads them with humantime (`500ms`, `15s`,
//! `1m30s`, `1h`, `7d`), so one spelling works everywhere.

use std::time::Duration;

/// A duration flag that must be more than zero (an interval, a timeout).
pub fn positive(raw: &str) -> Result<Duration, String> {
    let d = any(raw)?;
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(d)
}

/// A duration flag that may be zero (a tolerance, such as a clock skew).
pub fn any(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration like 500ms, 15s or 1m30s: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_humantime_and_refuses_zero_and_bare_numbers() {
        assert_eq!(positive("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(positive("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(positive("500ms"), Ok(Duration::from_millis(500)));
        assert!(positive("0s").is_err());
        assert!(positive("15").is_err());
        assert!(positive("soon").is_err());
        assert_eq!(any("0s"), Ok(Duration::ZERO));
        assert!(any("15").is_err());
    }
}
