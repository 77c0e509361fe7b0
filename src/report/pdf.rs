//! A report's PDF, laid out by Typst from one template (`report.typ`, compiled into the binary)
//! and the report's content as JSON: the charts are the very SVGs the web page draws, embedded as
//! vector graphics; tables are Typst tables that run over as many pages as they need with their
//! header repeated; every page carries the report's name, the time it was generated and its
//! number. Fonts are the DejaVu faces the charts are measured with (from the `dejavu` crate),
//! so nothing is looked up on the machine or downloaded. The output is tagged PDF/A-2b.
//!
//! Typst is driven through its `World` trait, implemented here over files held in memory: the
//! template, `/content.json` and `/charts/N.svg`; any other path is not found.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Serialize;
use typst::diag::{FileError, FileResult};
use typst::foundations::{Bytes, Datetime};
use typst::syntax::{FileId, RootedPath, Source, VirtualPath, VirtualRoot};
use typst::text::{Font, FontBook};
use typst::utils::LazyHash;
use typst::{Library, LibraryExt, World};

/// The layout of every report.
const TEMPLATE: &str = include_str!("report.typ");

/// What a report's PDF shows, as the template reads it from `/content.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Content {
    pub title: String,
    pub description: String,
    pub report: String,
    /// The period the figures cover, in words (`Last week: Nov 23 – Nov 29, 2026`).
    pub period: String,
    /// The filters applied, as `label: values`.
    pub filters: Vec<String>,
    /// When the newest data read was written, in the report's time zone.
    pub data_as_of: String,
    pub generated: String,
    /// Stale data, by the report's freshness rule (empty when fresh).
    pub warning: String,
    /// The KPI tiles' figures in full (the tiles round them: `$23.3M`).
    pub headlines: Vec<Headline>,
    /// Rows of charts, each chart with its share of the page's width (twelfths).
    pub chart_rows: Vec<Vec<ChartRef>>,
    pub tables: Vec<Table>,
}

/// One KPI's figure, its previous period's (empty when the tile does not compare) and the change.
#[derive(Debug, Clone, Serialize)]
pub struct Headline {
    pub title: String,
    pub value: String,
    pub previous: String,
    pub change: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChartRef {
    /// `/charts/N.svg`
    pub file: String,
    pub width: u8,
    pub alt: String,
}

/// A table printed in full.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub title: String,
    pub description: String,
    pub header: Vec<String>,
    /// Which columns are numbers (right-aligned).
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("report PDF: {0}")]
pub struct PdfError(String);

/// The DejaVu faces, read once.
static FONTS: LazyLock<(LazyHash<FontBook>, Vec<Font>)> = LazyLock::new(|| {
    let fonts: Vec<Font> = [dejavu::sans::regular(), dejavu::sans::bold(), dejavu::sans::oblique()]
        .into_iter()
        .flat_map(|data| Font::iter(Bytes::new(data)))
        .collect();
    (LazyHash::new(FontBook::from_fonts(&fonts)), fonts)
});

static LIBRARY: LazyLock<LazyHash<Library>> = LazyLock::new(|| LazyHash::new(Library::builder().build()));

struct ReportWorld {
    main: Source,
    files: HashMap<FileId, Bytes>,
    today: Option<Datetime>,
}

fn file_id(path: &str) -> Result<FileId, PdfError> {
    let path = VirtualPath::new(path).map_err(|e| PdfError(format!("path {path:?}: {e:?}")))?;
    Ok(RootedPath::new(VirtualRoot::Project, path).intern())
}

impl World for ReportWorld {
    fn library(&self) -> &LazyHash<Library> {
        &LIBRARY
    }

    fn book(&self) -> &LazyHash<FontBook> {
        &FONTS.0
    }

    fn main(&self) -> FileId {
        self.main.id()
    }

    fn source(&self, id: FileId) -> FileResult<Source> {
        if id == self.main.id() { Ok(self.main.clone()) } else { Err(FileError::NotSource) }
    }

    fn file(&self, id: FileId) -> FileResult<Bytes> {
        self.files.get(&id).cloned().ok_or_else(|| FileError::NotFound(id.get().vpath().get_with_slash().into()))
    }

    fn font(&self, index: usize) -> Option<Font> {
        FONTS.1.get(index).cloned()
    }

    fn today(&self, _offset: Option<typst::foundations::Duration>) -> Option<Datetime> {
        self.today
    }
}

/// The PDF of `content`, whose charts are `charts[i]` at `/charts/{i}.svg`.
pub fn render(
    content: &Content,
    charts: &[String],
    generated: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<u8>, PdfError> {
    use chrono::{Datelike, Timelike};
    let mut files = HashMap::new();
    let json = serde_json::to_vec(content).map_err(|e| PdfError(e.to_string()))?;
    files.insert(file_id("/content.json")?, Bytes::new(json));
    for (i, svg) in charts.iter().enumerate() {
        files.insert(file_id(&format!("/charts/{i}.svg"))?, Bytes::new(svg.clone().into_bytes()));
    }
    let at = Datetime::from_ymd_hms(
        generated.year(),
        generated.month() as u8,
        generated.day() as u8,
        generated.hour() as u8,
        generated.minute() as u8,
        generated.second() as u8,
    );
    let world = ReportWorld {
        main: Source::new(file_id("/report.typ")?, TEMPLATE.to_string()),
        files,
        today: Datetime::from_ymd(generated.year(), generated.month() as u8, generated.day() as u8),
    };
    // The document's type (Typst's paged document) is the one `typst_pdf::pdf` takes.
    let document = typst::compile(&world)
        .output
        .map_err(|errors| PdfError(errors.iter().map(|e| e.message.to_string()).collect::<Vec<_>>().join("; ")))?;
    let standards =
        typst_pdf::PdfStandards::new(&[typst_pdf::PdfStandard::A_2b]).map_err(|e| PdfError(format!("{e:?}")))?;
    let options = typst_pdf::PdfOptions {
        ident: typst::foundations::Smart::Custom(content.report.clone()),
        timestamp: at.map(typst_pdf::Timestamp::new_utc),
        standards,
        ..typst_pdf::PdfOptions::default()
    };
    typst_pdf::pdf(&document, &options)
        .map_err(|errors| PdfError(errors.iter().map(|e| e.message.to_string()).collect::<Vec<_>>().join("; ")))
}
