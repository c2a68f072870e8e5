//! Byte counts as users write them in configuration (`6GiB`, `512 MiB`, `1.5GB`, `1048576`).

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct ByteSize(pub u64);

impl std::fmt::Display for ByteSize {
    /// Binary units with one decimal: `6.0 GiB`, `140.5 KiB`, `17 B`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut x = self.0 as f64;
        let mut u = 0;
        while x >= 1024.0 && u < UNITS.len() - 1 {
            x /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{x:.1} {}", UNITS[u])
        }
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size: expected a number with an optional unit such as 512MiB or 6GiB"))?;
        let mult: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "TB" => 1e12,
            "KiB" => 1024.0,
            "MiB" => 1024f64.powi(2),
            "GiB" => 1024f64.powi(3),
            "TiB" => 1024f64.powi(4),
            other => {
                return Err(format!(
                "`{s}` has the unknown unit `{other}`: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ))
            }
        };
        let bytes = value * mult;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!("6GiB".parse::<ByteSize>().unwrap().0, 6 << 30);
        assert_eq!("512 MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("1.5GB".parse::<ByteSize>().unwrap().0, 1_500_000_000);
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        let e = "6 gigs".parse::<ByteSize>().unwrap_err();
        assert!(e.contains("unknown unit `gigs`"), "{e}");
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(ByteSize(6 << 30).to_string(), "6.0 GiB");
        assert_eq!(ByteSize(17).to_string(), "17 B");
    }
}
