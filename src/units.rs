//! Units (layer 0: uses nothing of ours). Sizes as users write and read
//! them: binary units (`10G` = 10 GiB), as LVM and ZFS read them, in every
//! message ([`format_size`], or [`size_exact`] where the byte counts).
//! `chunk`: bytes against data chunks, the one place the data path converts
//! between them. `block`: metadata block numbers. `time`: dates. A bare
//! `u64` offset or length is always in bytes.

mod block;
mod chunk;
mod time;
pub use block::{Block, BLOCK_BYTES};
pub use chunk::{Chunk, ChunkSize, Pieces};
pub use time::rfc3339;

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let err = || {
        format!("'{s}' is not a size (examples: 4096, 512K, 10M, 1.5G, 2T; units are binary: 1G = 1024M)")
    };
    let lower = t.to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        Some('t') => (&lower[..lower.len() - 1], 40),
        Some('p') => (&lower[..lower.len() - 1], 50),
        Some(c) if c.is_ascii_digit() => (lower, 0),
        _ => return Err(err()),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(err());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err())?
    };
    let mut value = int.checked_mul(1u64 << shift).ok_or_else(err)?;
    if !frac.is_empty() {
        let digits: u64 = frac.parse().map_err(|_| err())?;
        let scale = 10u64.checked_pow(frac.len() as u32).ok_or_else(err)?;
        let part = (digits as u128 * (1u128 << shift)) / scale as u128;
        if !(digits as u128 * (1u128 << shift)).is_multiple_of(scale as u128) {
            return Err(format!("'{s}' is not a whole number of bytes"));
        }
        value = value.checked_add(part as u64).ok_or_else(err)?;
    }
    Ok(value)
}

/// `1.50G`, `512M`, `0B`: three significant digits, binary units.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        let s = if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        };
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        format!("{s}{}", UNITS[u])
    }
}

/// A size for a message where the exact number matters (limits, sizes to
/// give back as an argument): `10G` when that is exact, else the rounded
/// size and the bytes, `1.01G (1084227584 bytes)`.
pub fn size_exact(n: u64) -> String {
    let human = format_size(n);
    match parse_size(&human) {
        Ok(back) if back == n => human,
        _ => format!("{human} ({n} bytes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1.1K").is_err());
        assert!(parse_size("99999999999P").is_err());
        assert_eq!(format_size(10 << 30), "10G");
        assert_eq!(format_size(3 << 29), "1.5G");
        assert_eq!(format_size((10 << 30) - 4096), "10G");
        assert_eq!(format_size(0), "0B");
        assert_eq!(size_exact(10 << 30), "10G");
        assert_eq!(size_exact(3 << 29), "1.5G");
        assert_eq!(size_exact(1000), "1000B");
        assert_eq!(
            size_exact((10 << 30) - 4096),
            "10G (10737414144 bytes)",
            "rounding never hides bytes"
        );
    }
}
