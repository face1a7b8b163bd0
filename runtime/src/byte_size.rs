//! Size flags (`--max-body-size 16MiB`): a number of bytes with an optional
//! unit, so that every binary spells sizes the same way.

/// Units, longest first so that `KiB` is not read as `K` + `iB`.
const UNITS: [(&str, u64); 7] = [
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("b", 1),
];

/// A size in bytes that must be more than zero: `1048576`, `512KiB`,
/// `16MiB`, `1GiB` (powers of 1024) or `500kB`, `2MB` (powers of 1000).
/// Units are case-insensitive; a space before the unit is allowed.
pub fn positive(raw: &str) -> Result<u64, String> {
    let text = raw.trim();
    let lower = text.to_ascii_lowercase();
    let (number, factor) = UNITS
        .iter()
        .find_map(|(unit, factor)| lower.strip_suffix(unit).map(|n| (n.trim_end(), *factor)))
        .unwrap_or((lower.as_str(), 1));
    let count: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a size like 16MiB, 512KiB or 1048576"))?;
    let bytes = count
        .checked_mul(factor)
        .ok_or_else(|| format!("{raw:?} is too large"))?;
    if bytes == 0 {
        return Err("must be more than zero".to_owned());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_refuses_zero_and_garbage() {
        assert_eq!(positive("16MiB"), Ok(16 * 1024 * 1024));
        assert_eq!(positive("16 mib"), Ok(16 * 1024 * 1024));
        assert_eq!(positive("512KiB"), Ok(512 * 1024));
        assert_eq!(positive("1GiB"), Ok(1 << 30));
        assert_eq!(positive("2MB"), Ok(2_000_000));
        assert_eq!(positive("500kB"), Ok(500_000));
        assert_eq!(positive("1048576"), Ok(1_048_576));
        assert_eq!(positive("100B"), Ok(100));
        assert!(positive("0").is_err());
        assert!(positive("0MiB").is_err());
        assert!(positive("MiB").is_err());
        assert!(positive("-1").is_err());
        assert!(positive("1.5MiB").is_err());
        assert!(positive("16 furlongs").is_err());
        assert!(positive("99999999999GiB").is_err());
    }
}
