//! Reading a series from a CSV file of `time,value` rows (a header first), so that any series can
//! be forecast from the command line; every error names the file and line.

use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime};

use super::ForecastError;
use super::series::Rows;

/// The rows of `path`: its first column a time (`2024-03-01`, `2024-03-01 10:00:00`, RFC 3339
/// such as `2024-03-01T00:00:00Z`, or `2024-03`), its second a number or empty for missing.
pub fn read_csv(path: &Path) -> Result<Rows, ForecastError> {
    let shown = path.display();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_err(|e| ForecastError::Input(format!("{shown}: {e}")))?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ForecastError::Input(format!("{shown}: {e}")))?;
        let line = record.position().map_or(0, |p| p.line());
        let (Some(time), Some(value)) = (record.get(0), record.get(1)) else {
            return Err(ForecastError::Input(format!("{shown}:{line}: a row needs two fields, time and value")));
        };
        let time = parse_time(time)
            .ok_or_else(|| ForecastError::Input(format!("{shown}:{line}: {time:?} is not a time (e.g. 2024-03-01)")))?;
        let value = match value.trim() {
            "" => None,
            text => Some(
                text.parse::<f64>()
                    .map_err(|_| ForecastError::Input(format!("{shown}:{line}: value {text:?} is not a number")))?,
            ),
        };
        rows.push((time, value));
    }
    Ok(rows)
}

fn parse_time(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.naive_utc())
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok())
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok())
        .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))
        .or_else(|| {
            NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_common_form_and_errors_with_the_line() {
        for text in ["2024-03-01", "2024-03-01 00:00:00", "2024-03-01T00:00:00Z", "2024-03"] {
            assert_eq!(parse_time(text).map(|t| t.to_string()), Some("2024-03-01 00:00:00".to_string()), "{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("series.csv");
        std::fs::write(&path, "time,value\n2024-01-01,1\n2024-02-01,\n2024-03-01,abc\n").unwrap();
        let err = read_csv(&path).unwrap_err().to_string();
        assert!(err.ends_with("series.csv:4: value \"abc\" is not a number"), "{err}");
        std::fs::write(&path, "time,value\n2024-01-01,1\n2024-02-01,\n").unwrap();
        assert_eq!(read_csv(&path).unwrap()[1].1, None);
    }
}
