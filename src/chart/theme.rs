//! The one theme, light and dark: background, text and grid colours, and a palette that readers
//! with colour-blindness can tell apart (Okabe and Ito's, the usual choice for that).

use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    #[default]
    Light,
    Dark,
}

/// Okabe–Ito, in the order series take them (blue first; yellow, hard to read on white, last).
const PALETTE_LIGHT: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0x56, 0xB4, 0xE9),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0x8C, 0x7A, 0x00),
];

/// The same hues, lightened where the dark background needs more contrast.
const PALETTE_DARK: [RGBColor; 7] = [
    RGBColor(0x4D, 0xA3, 0xE0),
    RGBColor(0xF0, 0xB4, 0x3C),
    RGBColor(0x2E, 0xC4, 0x9A),
    RGBColor(0xE0, 0x9C, 0xC4),
    RGBColor(0x8F, 0xD0, 0xF5),
    RGBColor(0xF0, 0x84, 0x3C),
    RGBColor(0xF0, 0xE4, 0x42),
];

/// The colours a chart is drawn in.
#[derive(Debug, Clone, Copy)]
pub struct Colours {
    pub background: RGBColor,
    pub text: RGBColor,
    pub muted: RGBColor,
    pub grid: RGBColor,
    pub axis: RGBColor,
    /// Better than before (green) and worse (vermillion), distinguishable by colour-blind readers
    /// and always paired with an arrow.
    pub good: RGBColor,
    pub bad: RGBColor,
    pub target: RGBColor,
    palette: &'static [RGBColor; 7],
}

impl Theme {
    pub fn colours(self) -> Colours {
        match self {
            Theme::Light => Colours {
                background: RGBColor(0xFF, 0xFF, 0xFF),
                text: RGBColor(0x1F, 0x29, 0x37),
                muted: RGBColor(0x5B, 0x65, 0x73),
                grid: RGBColor(0xE5, 0xE7, 0xEB),
                axis: RGBColor(0x9C, 0xA3, 0xAF),
                good: RGBColor(0x00, 0x7A, 0x5A),
                bad: RGBColor(0xB8, 0x45, 0x00),
                target: RGBColor(0x6B, 0x21, 0xA8),
                palette: &PALETTE_LIGHT,
            },
            Theme::Dark => Colours {
                background: RGBColor(0x11, 0x18, 0x27),
                text: RGBColor(0xF3, 0xF4, 0xF6),
                muted: RGBColor(0xA8, 0xB0, 0xBD),
                grid: RGBColor(0x33, 0x3D, 0x4D),
                axis: RGBColor(0x6B, 0x72, 0x80),
                good: RGBColor(0x2E, 0xC4, 0x9A),
                bad: RGBColor(0xF0, 0x84, 0x3C),
                target: RGBColor(0xC4, 0xA7, 0xF5),
                palette: &PALETTE_DARK,
            },
        }
    }
}

impl Colours {
    /// The colour of series `index` (the palette repeats after seven).
    pub fn series(&self, index: usize) -> RGBColor {
        self.palette[index % self.palette.len()]
    }

    /// A colour from the background (0) to the first series' colour (1), for heatmap cells.
    pub fn ramp(&self, fraction: f64) -> RGBColor {
        let t = fraction.clamp(0.0, 1.0);
        let (from, to) = (self.background, self.palette[0]);
        let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * (0.08 + 0.92 * t)).round() as u8;
        RGBColor(mix(from.0, to.0), mix(from.1, to.1), mix(from.2, to.2))
    }
}

/// `#rrggbb`, as SVG attributes and CSS take it.
pub fn hex(colour: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", colour.0, colour.1, colour.2)
}

/// A colour given as `#rrggbb` (a dashboard's own series colours).
pub fn parse_hex(text: &str) -> Option<RGBColor> {
    let digits = text.strip_prefix('#')?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&digits[i..i + 2], 16).ok();
    Some(RGBColor(byte(0)?, byte(2)?, byte(4)?))
}
