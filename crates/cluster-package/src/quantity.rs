//! Capacity quantities (`needs`, a node's `capacity`): plain integers or sizes like `"32G"`.

/// Binary suffixes of sizes: `"512M"` is 512 × 1024² (bytes, for a `memory` capacity).
const SUFFIXES: &[(&str, u64)] = &[("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)];

/// Parses `"10"`, `"4G"`, `"512M"` (K, M, G, T: powers of 1024, an optional trailing `i` or `iB`
/// accepted, as in `"4GiB"`).
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let expected = || format!("expected a quantity like 2 or \"4G\" (K, M, G, T: powers of 1024), found {text:?}");
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let suffix = suffix.trim();
    let unit = suffix.strip_suffix("iB").or_else(|| suffix.strip_suffix('i')).unwrap_or(suffix);
    let factor = if unit.is_empty() {
        1
    } else {
        SUFFIXES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|(_, factor)| *factor)
            .ok_or_else(expected)?
    };
    number.checked_mul(factor).ok_or_else(|| format!("quantity {text:?} is too large"))
}

/// A quantity in words: sizes of whole binary units as `"4G"`, anything else as digits.
pub fn format_quantity(quantity: u64) -> String {
    for (name, factor) in SUFFIXES.iter().rev() {
        if quantity >= *factor && quantity.is_multiple_of(*factor) {
            return format!("{}{name}", quantity / factor);
        }
    }
    quantity.to_string()
}

/// Capacity names are 1 to 32 characters of lowercase letters, digits, `_` and `-`, starting with a letter.
pub fn check_capacity_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected a capacity name of 1 to 32 lowercase letters, digits, `_` or `-`, starting with a letter, found {name:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_binary_suffixes() {
        assert_eq!(parse_quantity("10"), Ok(10));
        assert_eq!(parse_quantity("4G"), Ok(4 << 30));
        assert_eq!(parse_quantity("4GiB"), Ok(4 << 30));
        assert_eq!(parse_quantity("512m"), Ok(512 << 20));
        assert_eq!(parse_quantity("1Ti"), Ok(1 << 40));
        assert!(parse_quantity("4X").unwrap_err().contains("found \"4X\""));
        assert!(parse_quantity("-1").is_err());
        assert!(parse_quantity("").is_err());
        assert!(parse_quantity("99999999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn quantities_print_in_the_largest_whole_unit() {
        assert_eq!(format_quantity(4 << 30), "4G");
        assert_eq!(format_quantity(1536 << 20), "1536M");
        assert_eq!(format_quantity(3), "3");
        assert_eq!(format_quantity(0), "0");
    }

    #[test]
    fn capacity_names_are_checked() {
        assert!(check_capacity_name("memory").is_ok());
        assert!(check_capacity_name("gpu_slots-2").is_ok());
        assert!(check_capacity_name("Memory").is_err());
        assert!(check_capacity_name("2x").is_err());
        assert!(check_capacity_name("").is_err());
    }
}
