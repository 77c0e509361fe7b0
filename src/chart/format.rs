//! Number formats: how a measure's values read in full (tables, tooltips) and compactly (axes, KPI
//! tiles): `$12,345.67` and `$12.3k`, `25.3%`, `1,234 h`.

use serde::{Deserialize, Serialize};

/// How a measure's values read: the unit charts and tables format them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A whole number of things (clients, leads).
    Count,
    /// US dollars.
    Usd,
    /// A ratio, stored as a fraction (0.25 reads 25 %).
    Percent,
    /// Hours of work.
    Hours,
    /// Any other number.
    #[default]
    Number,
}

/// `value` with thousands separated by commas and `decimals` digits after the point.
fn grouped(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value.abs());
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w.to_string(), Some(f.to_string())),
        None => (text, None),
    };
    let mut out = String::with_capacity(whole.len() + whole.len() / 3 + 4);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if let Some(fraction) = fraction {
        out.push('.');
        out.push_str(&fraction);
    }
    // A value that rounds to zero has no sign.
    if value < 0.0 && out.chars().any(|c| c.is_ascii_digit() && c != '0') { format!("-{out}") } else { out }
}

/// `value` scaled to k, M or B with up to `digits` significant decimals, trailing zeros dropped.
fn compact_number(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "B")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let decimals = if scaled.abs() >= 100.0 || (suffix.is_empty() && scaled.fract() == 0.0) { 0 } else { 1 };
    let mut text = format!("{scaled:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if text == "-0" {
        text = "0".into();
    }
    format!("{text}{suffix}")
}

impl Format {
    /// The value in full, as a table or a tooltip shows it.
    pub fn full(self, value: f64) -> String {
        if !value.is_finite() {
            return "–".into();
        }
        match self {
            Format::Count => grouped(value, 0),
            Format::Usd => {
                let text = grouped(value, 2);
                match text.strip_prefix('-') {
                    Some(positive) => format!("-${positive}"),
                    None => format!("${text}"),
                }
            }
            Format::Percent => format!("{}%", grouped(value * 100.0, 1)),
            Format::Hours => format!("{} h", grouped(value, 1)),
            Format::Number => grouped(value, if value.fract() == 0.0 { 0 } else { 2 }),
        }
    }

    /// The value in a few characters, as an axis or a KPI tile shows it.
    pub fn compact(self, value: f64) -> String {
        if !value.is_finite() {
            return "–".into();
        }
        match self {
            Format::Usd => {
                let text = compact_number(value);
                match text.strip_prefix('-') {
                    Some(positive) => format!("-${positive}"),
                    None => format!("${text}"),
                }
            }
            Format::Percent => {
                let percent = value * 100.0;
                if percent.abs() >= 10.0 || percent.fract() == 0.0 {
                    format!("{percent:.0}%")
                } else {
                    format!("{percent:.1}%")
                }
            }
            Format::Hours => format!("{} h", compact_number(value)),
            Format::Count | Format::Number => compact_number(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Format::*;

    #[test]
    fn full_values_read_as_people_write_them() {
        assert_eq!(Usd.full(1234567.891), "$1,234,567.89");
        assert_eq!(Usd.full(-42.5), "-$42.50");
        assert_eq!(Count.full(1500.0), "1,500");
        assert_eq!(Percent.full(0.2534), "25.3%");
        assert_eq!(Hours.full(12.25), "12.2 h");
        assert_eq!(Number.full(3.0), "3");
        assert_eq!(Number.full(f64::NAN), "–");
        assert_eq!(Count.full(-0.2), "0");
    }

    #[test]
    fn compact_values_fit_an_axis() {
        assert_eq!(Usd.compact(12_345.0), "$12.3k");
        assert_eq!(Usd.compact(1_200_000.0), "$1.2M");
        assert_eq!(Usd.compact(250.0), "$250");
        assert_eq!(Count.compact(999.0), "999");
        assert_eq!(Count.compact(150_000.0), "150k");
        assert_eq!(Percent.compact(0.253), "25%");
        assert_eq!(Percent.compact(0.0526), "5.3%");
        assert_eq!(Hours.compact(1_500.0), "1.5k h");
        assert_eq!(Number.compact(2.5), "2.5");
    }
}
