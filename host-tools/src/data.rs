//! Data sets: loading from CSV (plain or gzipped) or `.npy`, and writing CSV.
//!
//! # Formats
//!
//! - **CSV** with a header line. Every column is a feature (parsed as `f32`) except one
//!   named exactly `label`, which holds integer class labels; it is split off and never
//!   used as a feature. Cells are trimmed; an empty line is skipped. The file may be
//!   gzipped: this is recognised by its content (the gzip magic bytes), not its name.
//! - **`.npy`**: a 2-D array of `f32` or `f64` (either byte order, C or Fortran order),
//!   rows are samples; recognised by the NumPy magic bytes. There are no labels and the
//!   columns are named `x0`, `x1`, ...
//!
//! Reading streams: the file is read record by record through a buffer, and only the
//! parsed `f32` matrix (and the labels) are kept, so the memory needed is about 4 bytes
//! per value whatever the text looks like. [`load`] is a [`RowReader`] collected into a
//! [`Dataset`]; `hvae predict` uses the same reader one row at a time and keeps nothing
//! (a Fortran-order `.npy` is the exception: a row needs every column, so it is read
//! whole).
//!
//! # Errors
//!
//! A [`DataError`] names the file and says precisely what is wrong, on one line: no such
//! file, a ragged row (`line 17: expected 65 fields, found 64`), a cell that is not a
//! number (line and column name), a NaN or infinite cell, a label that is not an
//! integer, no header, no feature column, no data row. Line numbers are 1-based and count
//! the header as line 1.

use crate::fsio::{self, WriteError};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

/// Name of the column that holds the class labels.
pub const LABEL_COLUMN: &str = "label";

/// A data set: `len()` rows of `dim()` features, and optionally one integer label per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    columns: Vec<String>,
    features: Vec<f32>,
    labels: Option<Vec<i64>>,
}

impl Dataset {
    /// A data set from feature names, a row-major `n x columns.len()` matrix and optional
    /// labels. Fails (with the reason) if the sizes disagree, there is no column, a value
    /// is not finite, or a column is named `label`.
    pub fn new(
        columns: Vec<String>,
        features: Vec<f32>,
        labels: Option<Vec<i64>>,
    ) -> Result<Dataset, String> {
        let d = columns.len();
        if d == 0 {
            return Err("a data set needs at least one feature column".into());
        }
        if columns.iter().any(|c| c == LABEL_COLUMN) {
            return Err(format!("a feature column cannot be named '{LABEL_COLUMN}'"));
        }
        if !features.len().is_multiple_of(d) {
            return Err(format!(
                "{} values do not fill rows of {d} columns",
                features.len()
            ));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "row {}, column '{}': value is not finite",
                i / d,
                columns[i % d]
            ));
        }
        if let Some(l) = &labels {
            if l.len() != features.len() / d {
                return Err(format!(
                    "{} labels for {} rows",
                    l.len(),
                    features.len() / d
                ));
            }
        }
        Ok(Dataset {
            columns,
            features,
            labels,
        })
    }

    /// Number of rows (samples).
    pub fn len(&self) -> usize {
        self.features.len() / self.dim()
    }

    /// True when there is no row.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Number of features per row.
    pub fn dim(&self) -> usize {
        self.columns.len()
    }

    /// Feature names (the `label` column excluded).
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The row-major `len() x dim()` feature matrix.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim()..(i + 1) * self.dim()]
    }

    /// All rows in order.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.features.chunks_exact(self.dim())
    }

    /// The labels, if the data has a `label` column.
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }

    /// Number of distinct labels (0 without labels).
    pub fn class_count(&self) -> usize {
        let Some(l) = &self.labels else { return 0 };
        let mut v = l.clone();
        v.sort_unstable();
        v.dedup();
        v.len()
    }
}

/// Why a data file could not be loaded. `Display` is one line: `FILE: what is wrong`.
#[derive(Debug)]
pub struct DataError {
    /// The file (or stream) name.
    pub file: String,
    /// What is wrong.
    pub kind: DataErrorKind,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.kind)
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            DataErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// What is wrong with a data file. Lines are 1-based, the header being line 1; rows of
/// a `.npy` array are 0-based.
#[derive(Debug, thiserror::Error)]
pub enum DataErrorKind {
    /// The file does not exist.
    #[error("no such file")]
    NotFound,
    /// Reading failed (permissions, a directory, a damaged gzip stream, ...).
    #[error("cannot read: {0}")]
    Io(io::Error),
    /// The file is empty: no header line.
    #[error("empty file (no header line)")]
    NoHeader,
    /// The header has a column name twice.
    #[error("line 1: column '{0}' appears twice")]
    DuplicateColumn(String),
    /// The only column is `label`.
    #[error("no feature columns")]
    NoFeatures,
    /// A header but no data row.
    #[error("no data rows")]
    NoRows,
    /// A row with a different number of fields than the header.
    #[error("line {line}: expected {expected} fields, found {found}")]
    Ragged {
        /// Line of the row.
        line: u64,
        /// Fields in the header.
        expected: usize,
        /// Fields in the row.
        found: usize,
    },
    /// An empty feature cell.
    #[error("line {line}, column '{column}': empty cell")]
    EmptyCell {
        /// Line of the row.
        line: u64,
        /// Column name.
        column: String,
    },
    /// A feature cell that does not parse as a number.
    #[error("line {line}, column '{column}': '{value}' is not a number")]
    NotANumber {
        /// Line of the row.
        line: u64,
        /// Column name.
        column: String,
        /// The cell's text.
        value: String,
    },
    /// A feature cell that is NaN, infinite, or too large for `f32`.
    #[error("line {line}, column '{column}': '{value}' is not a finite f32 value")]
    NonFinite {
        /// Line of the row.
        line: u64,
        /// Column name.
        column: String,
        /// The cell's text.
        value: String,
    },
    /// A label cell that is not an integer.
    #[error("line {line}, column '{LABEL_COLUMN}': '{value}' is not an integer label")]
    BadLabel {
        /// Line of the row.
        line: u64,
        /// The cell's text.
        value: String,
    },
    /// Malformed CSV (e.g. invalid UTF-8), with the line where it was found.
    #[error("line {line}: {message}")]
    Csv {
        /// Line of the problem.
        line: u64,
        /// What the CSV reader said.
        message: String,
    },
    /// A `.npy` file that is not a 2-D array of `f32` or `f64`.
    #[error("not a 2-D float array: {0}")]
    NpyLayout(String),
    /// A NaN or infinity in a `.npy` array (0-based row and column).
    #[error("row {row}, column {column}: value is not finite")]
    NpyNonFinite {
        /// 0-based row.
        row: u64,
        /// 0-based column.
        column: u64,
    },
}

fn error(file: &str, kind: DataErrorKind) -> DataError {
    DataError {
        file: file.to_string(),
        kind,
    }
}

fn io_error(file: &str, e: io::Error) -> DataError {
    error(file, DataErrorKind::Io(e))
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Opens `path` for reading; a missing file is [`DataErrorKind::NotFound`].
pub fn open(path: &Path) -> Result<std::fs::File, DataError> {
    let name = path.display().to_string();
    fsio::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => error(&name, DataErrorKind::NotFound),
        _ => io_error(&name, e),
    })
}

/// Loads a data set from `path`: `.npy` or CSV, gzipped or not, recognised by content.
pub fn load(path: &Path) -> Result<Dataset, DataError> {
    let file = open(path)?;
    read(file, &path.display().to_string())
}

/// Loads a data set from a stream (see [`load`]); `name` is used in error messages.
pub fn read<R: Read>(reader: R, name: &str) -> Result<Dataset, DataError> {
    let mut rows = RowReader::new(reader, name, false)?;
    let columns = rows.columns().to_vec();
    let labelled = rows.has_labels();
    collect(name, columns, labelled, |out| rows.next_into(out))
}

/// Reads every row with `next` into a [`Dataset`]; the first error stops it.
fn collect(
    name: &str,
    columns: Vec<String>,
    labelled: bool,
    mut next: impl FnMut(&mut Vec<f32>) -> Result<Option<RowMeta>, DataError>,
) -> Result<Dataset, DataError> {
    let mut features = Vec::new();
    let mut labels = labelled.then(Vec::new);
    while let Some(meta) = next(&mut features)? {
        if let (Some(l), Some(label)) = (labels.as_mut(), meta.label) {
            l.push(label);
        }
    }
    if features.is_empty() {
        return Err(error(name, DataErrorKind::NoRows));
    }
    Ok(Dataset {
        columns,
        features,
        labels,
    })
}

/// Name of a column of row identifiers. A [`RowReader`] made with `keep_id` keeps its
/// cells as text beside the features (`hvae predict` carries them to its output); for
/// [`load`] it is an ordinary feature column.
pub const ID_COLUMN: &str = "id";

/// Where a row is in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowPosition {
    /// 1-based line of a CSV file, the header being line 1.
    Line(u64),
    /// 0-based row of a `.npy` array.
    Row(u64),
}

impl fmt::Display for RowPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowPosition::Line(l) => write!(f, "line {l}"),
            RowPosition::Row(r) => write!(f, "row {r}"),
        }
    }
}

/// What a row carries beside its features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowMeta {
    /// Where the row is.
    pub position: RowPosition,
    /// Its `label` cell, when the file has a `label` column.
    pub label: Option<i64>,
    /// Its `id` cell (trimmed text), when the reader keeps ids and the file has an `id`
    /// column.
    pub id: Option<String>,
}

impl DataErrorKind {
    /// True for a problem confined to one data row (a ragged row, a bad cell or label,
    /// malformed CSV in a record, a non-finite `.npy` value): the rows after it can
    /// still be read. Everything else (reading failed, a bad header, no rows) ends the
    /// file.
    pub fn is_row_error(&self) -> bool {
        matches!(
            self,
            DataErrorKind::Ragged { .. }
                | DataErrorKind::EmptyCell { .. }
                | DataErrorKind::NotANumber { .. }
                | DataErrorKind::NonFinite { .. }
                | DataErrorKind::BadLabel { .. }
                | DataErrorKind::Csv { .. }
                | DataErrorKind::NpyNonFinite { .. }
        )
    }
}

/// A data file read one row at a time, in bounded memory: what [`load`] collects into a
/// [`Dataset`] and `hvae predict` streams. The format (CSV or `.npy`, gzipped or not) is
/// recognised by content; rows are checked exactly as [`load`] checks them, with the
/// same errors. A row error ([`DataErrorKind::is_row_error`]) leaves the reader at the
/// next row, so a caller may report it and go on.
pub struct RowReader<'r> {
    columns: Vec<String>,
    labelled: bool,
    ids: bool,
    source: Source<'r>,
}

enum Source<'r> {
    Csv(CsvRows<Box<dyn Read + 'r>>),
    Npy(NpyRows<Box<dyn Read + 'r>>),
}

impl std::fmt::Debug for RowReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowReader")
            .field("columns", &self.columns)
            .field("labelled", &self.labelled)
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl<'r> RowReader<'r> {
    /// Reads the header of `reader` (the magic bytes, a CSV header line or a `.npy`
    /// header); `name` is used in error messages. With `keep_id`, a CSV column named
    /// [`ID_COLUMN`] is not a feature: its cells come back in [`RowMeta::id`].
    pub fn new<R: Read + 'r>(reader: R, name: &str, keep_id: bool) -> Result<Self, DataError> {
        let mut reader = BufReader::with_capacity(1 << 16, reader);
        let head = reader.fill_buf().map_err(|e| io_error(name, e))?;
        let (npy, reader): (bool, Box<dyn Read + 'r>) = if head.starts_with(&GZIP_MAGIC) {
            let gz = flate2::read::MultiGzDecoder::new(reader);
            let mut inner = BufReader::with_capacity(1 << 16, gz);
            let head = inner.fill_buf().map_err(|e| io_error(name, e))?;
            (head.starts_with(NPY_MAGIC), Box::new(inner))
        } else {
            (head.starts_with(NPY_MAGIC), Box::new(reader))
        };
        if npy {
            let rows = NpyRows::new(reader, name)?;
            Ok(RowReader {
                columns: (0..rows.cols).map(|j| format!("x{j}")).collect(),
                labelled: false,
                ids: false,
                source: Source::Npy(rows),
            })
        } else {
            let rows = CsvRows::new(reader, name, keep_id)?;
            Ok(RowReader {
                columns: rows.columns.clone(),
                labelled: rows.label_col.is_some(),
                ids: rows.id_col.is_some(),
                source: Source::Csv(rows),
            })
        }
    }

    /// Feature names (for `.npy`, `x0`, `x1`, ...).
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Features per row.
    pub fn dim(&self) -> usize {
        self.columns.len()
    }

    /// True when the file has a `label` column.
    pub fn has_labels(&self) -> bool {
        self.labelled
    }

    /// True when the reader keeps ids and the file has an `id` column.
    pub fn has_ids(&self) -> bool {
        self.ids
    }

    /// Reads the next row, appending its [`RowReader::dim`] features to `features`;
    /// `None` at the end. On an error nothing is appended.
    pub fn next_into(&mut self, features: &mut Vec<f32>) -> Result<Option<RowMeta>, DataError> {
        match &mut self.source {
            Source::Csv(r) => r.next_into(features),
            Source::Npy(r) => r.next_into(features),
        }
    }
}

/// The 1-based line of the record just read (0 if unknown).
fn line_of(rec: &csv::StringRecord) -> u64 {
    rec.position().map_or(0, |p| p.line())
}

fn csv_error(name: &str, e: csv::Error) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    let message = crate::error::one_line(&e.to_string());
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io_error(name, io),
        csv::ErrorKind::Utf8 { err, .. } => error(
            name,
            DataErrorKind::Csv {
                line,
                message: format!("invalid UTF-8 in field {}", err.field() + 1),
            },
        ),
        _ => error(name, DataErrorKind::Csv { line, message }),
    }
}

/// Parses a CSV stream with a header line (not gzipped; [`read`] handles that).
pub fn read_csv<R: Read>(reader: R, name: &str) -> Result<Dataset, DataError> {
    let mut rows = CsvRows::new(reader, name, false)?;
    let columns = rows.columns.clone();
    let labelled = rows.label_col.is_some();
    collect(name, columns, labelled, |out| rows.next_into(out))
}

/// The rows of a CSV stream, one record at a time.
struct CsvRows<R> {
    name: String,
    rdr: csv::Reader<R>,
    rec: csv::StringRecord,
    /// Feature names.
    columns: Vec<String>,
    label_col: Option<usize>,
    id_col: Option<usize>,
    /// Fields per record.
    fields: usize,
}

impl<R: Read> CsvRows<R> {
    fn new(reader: R, name: &str, keep_id: bool) -> Result<Self, DataError> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .buffer_capacity(1 << 16)
            .from_reader(reader);
        let header = rdr.headers().map_err(|e| csv_error(name, e))?.clone();
        if header.is_empty() {
            return Err(error(name, DataErrorKind::NoHeader));
        }
        let mut seen = std::collections::HashSet::new();
        for h in &header {
            if !seen.insert(h) {
                return Err(error(name, DataErrorKind::DuplicateColumn(h.to_string())));
            }
        }
        let label_col = header.iter().position(|h| h == LABEL_COLUMN);
        let id_col = keep_id
            .then(|| header.iter().position(|h| h == ID_COLUMN))
            .flatten();
        let columns: Vec<String> = header
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != label_col && Some(i) != id_col)
            .map(|(_, h)| h.to_string())
            .collect();
        if columns.is_empty() {
            return Err(error(name, DataErrorKind::NoFeatures));
        }
        Ok(CsvRows {
            name: name.to_string(),
            rdr,
            rec: csv::StringRecord::new(),
            columns,
            label_col,
            id_col,
            fields: header.len(),
        })
    }

    fn next_into(&mut self, features: &mut Vec<f32>) -> Result<Option<RowMeta>, DataError> {
        let start = features.len();
        let r = self.parse_next(features);
        if r.is_err() {
            features.truncate(start);
        }
        r
    }

    fn parse_next(&mut self, features: &mut Vec<f32>) -> Result<Option<RowMeta>, DataError> {
        let name = self.name.as_str();
        let rec = &mut self.rec;
        if !self.rdr.read_record(rec).map_err(|e| csv_error(name, e))? {
            return Ok(None);
        }
        let line = line_of(rec);
        if rec.len() != self.fields {
            return Err(error(
                name,
                DataErrorKind::Ragged {
                    line,
                    expected: self.fields,
                    found: rec.len(),
                },
            ));
        }
        let mut meta = RowMeta {
            position: RowPosition::Line(line),
            label: None,
            id: None,
        };
        let mut feature = 0;
        for (i, cell) in rec.iter().enumerate() {
            if Some(i) == self.label_col {
                let label = parse_label(cell).ok_or_else(|| {
                    error(
                        name,
                        DataErrorKind::BadLabel {
                            line,
                            value: cell.to_string(),
                        },
                    )
                })?;
                meta.label = Some(label);
                continue;
            }
            if Some(i) == self.id_col {
                meta.id = Some(cell.to_string());
                continue;
            }
            let column = || self.columns[feature].clone();
            if cell.is_empty() {
                return Err(error(
                    name,
                    DataErrorKind::EmptyCell {
                        line,
                        column: column(),
                    },
                ));
            }
            let v: f32 = cell.parse().map_err(|_| {
                error(
                    name,
                    DataErrorKind::NotANumber {
                        line,
                        column: column(),
                        value: cell.to_string(),
                    },
                )
            })?;
            if !v.is_finite() {
                return Err(error(
                    name,
                    DataErrorKind::NonFinite {
                        line,
                        column: column(),
                        value: cell.to_string(),
                    },
                ));
            }
            features.push(v);
            feature += 1;
        }
        Ok(Some(meta))
    }
}

/// An integer label: `7`, `-1`, or an integral float such as `7.0` (as pandas writes).
fn parse_label(cell: &str) -> Option<i64> {
    if let Ok(v) = cell.parse::<i64>() {
        return Some(v);
    }
    let f: f64 = cell.parse().ok()?;
    // 2^63 as f64: every integral f64 below it in magnitude converts exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < LIMIT).then_some(f as i64)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parses a `.npy` stream holding a 2-D `f32` or `f64` array (rows are samples).
pub fn read_npy<R: Read>(reader: R, name: &str) -> Result<Dataset, DataError> {
    let mut rows = NpyRows::new(reader, name)?;
    let columns = (0..rows.cols).map(|j| format!("x{j}")).collect();
    collect(name, columns, false, |out| rows.next_into(out))
}

/// The header of a `.npy` stream is followed by its values in this order.
type NpyStream<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// The values of a `.npy` array, narrowed to `f32` (an `f64` beyond `f32`'s range
/// becomes infinite and is reported as not finite).
enum NpyValues<R: Read> {
    /// C order, `f32`: streamed.
    F32(npyz::NpyReader<f32, NpyStream<R>>),
    /// C order, `f64`: streamed.
    F64(npyz::NpyReader<f64, NpyStream<R>>),
    /// Fortran (column-major) order, transposed in memory: a row needs every column.
    Rows(Vec<f32>),
}

/// Every value of `values` in file order (`total` of them, a capacity hint).
fn read_all<R: Read>(
    values: NpyValues<R>,
    name: &str,
    total: usize,
) -> Result<Vec<f32>, DataError> {
    let mut v = Vec::with_capacity(total.min(1 << 24));
    match values {
        NpyValues::F32(data) => {
            for x in data {
                v.push(x.map_err(|e| io_error(name, e))?);
            }
        }
        NpyValues::F64(data) => {
            for x in data {
                v.push(x.map_err(|e| io_error(name, e))? as f32);
            }
        }
        NpyValues::Rows(t) => v = t,
    }
    Ok(v)
}

/// The rows of a `.npy` stream, one at a time.
struct NpyRows<R: Read> {
    name: String,
    rows: u64,
    cols: usize,
    /// Rows read so far.
    next: u64,
    values: NpyValues<R>,
}

impl<R: Read> NpyRows<R> {
    fn new(mut reader: R, name: &str) -> Result<Self, DataError> {
        // The header length is read before npyz sees the file: npyz allocates a buffer
        // of the declared length, so a damaged or hostile file declaring 4 GB would
        // exhaust memory (found by `fuzz/` target `csv_load`). NumPy itself refuses
        // headers over 10 000 bytes by default.
        const MAX_HEADER: u32 = 1 << 16;
        let mut prefix = [0u8; 12];
        let got = read_up_to(&mut reader, &mut prefix).map_err(|e| io_error(name, e))?;
        let declared = match (prefix.get(6), got) {
            (Some(1), 10..) => Some(u32::from(u16::from_le_bytes([prefix[8], prefix[9]]))),
            (Some(2 | 3), 12..) => Some(u32::from_le_bytes([
                prefix[8], prefix[9], prefix[10], prefix[11],
            ])),
            _ => None,
        };
        if let Some(n) = declared.filter(|&n| n > MAX_HEADER) {
            return Err(error(
                name,
                DataErrorKind::NpyLayout(format!(
                    "bad header: declared length {n} bytes (at most {MAX_HEADER})"
                )),
            ));
        }
        let reader = io::Cursor::new(prefix[..got].to_vec()).chain(reader);
        let npy = npyz::NpyFile::new(reader).map_err(|e| {
            error(
                name,
                DataErrorKind::NpyLayout(format!(
                    "bad header: {}",
                    crate::error::one_line(&e.to_string())
                )),
            )
        })?;
        let shape = npy.shape().to_vec();
        let [rows, cols] = shape[..] else {
            return Err(error(
                name,
                DataErrorKind::NpyLayout(format!("array has {} dimensions", shape.len())),
            ));
        };
        if cols == 0 {
            return Err(error(name, DataErrorKind::NoFeatures));
        }
        if rows == 0 {
            return Err(error(name, DataErrorKind::NoRows));
        }
        let too_big = || {
            error(
                name,
                DataErrorKind::NpyLayout(format!("{rows} x {cols} is too large")),
            )
        };
        let total = rows.checked_mul(cols).ok_or_else(too_big)?;
        let total = usize::try_from(total).map_err(|_| too_big())?;
        let fortran = npy.order() == npyz::Order::Fortran;
        let dtype = npy.dtype();
        let not_float = || {
            error(
                name,
                DataErrorKind::NpyLayout(format!("element type {dtype:?} is not f32 or f64")),
            )
        };
        let streamed = match npy.try_data::<f32>() {
            Ok(data) => NpyValues::F32(data),
            Err(npy) => match npy.try_data::<f64>() {
                Ok(data) => NpyValues::F64(data),
                Err(_) => return Err(not_float()),
            },
        };
        let (r, c) = (rows as usize, cols as usize);
        let values = if fortran {
            // Column-major in the file: read it all, then transpose.
            let v = read_all(streamed, name, total)?;
            let mut t = vec![0.0f32; total];
            for j in 0..c {
                for i in 0..r {
                    t[i * c + j] = v[j * r + i];
                }
            }
            NpyValues::Rows(t)
        } else {
            streamed
        };
        Ok(NpyRows {
            name: name.to_string(),
            rows,
            cols: c,
            next: 0,
            values,
        })
    }

    fn next_into(&mut self, features: &mut Vec<f32>) -> Result<Option<RowMeta>, DataError> {
        if self.next == self.rows {
            return Ok(None);
        }
        let (row, c) = (self.next, self.cols);
        self.next += 1;
        let start = features.len();
        let read = match &mut self.values {
            NpyValues::F32(data) => data
                .by_ref()
                .take(c)
                .try_for_each(|x| x.map(|x| features.push(x))),
            NpyValues::F64(data) => data
                .by_ref()
                .take(c)
                .try_for_each(|x| x.map(|x| features.push(x as f32))),
            NpyValues::Rows(t) => {
                let i = row as usize * c;
                features.extend_from_slice(&t[i..i + c]);
                Ok(())
            }
        };
        let bad = match read {
            Err(e) => Some(io_error(&self.name, e)),
            Ok(()) => features[start..]
                .iter()
                .position(|v| !v.is_finite())
                .map(|j| {
                    error(
                        &self.name,
                        DataErrorKind::NpyNonFinite {
                            row,
                            column: j as u64,
                        },
                    )
                }),
        };
        match bad {
            Some(e) => {
                features.truncate(start);
                Err(e)
            }
            None => Ok(Some(RowMeta {
                position: RowPosition::Row(row),
                label: None,
                id: None,
            })),
        }
    }
}

/// Writes `data` as CSV (header, then one line per row; the labels, if any, as a last
/// `label` column). Values are written in Rust's shortest round-trip form, so reading
/// the file back gives the same `f32` bits.
pub fn write_csv_to<W: Write>(w: W, data: &Dataset) -> io::Result<()> {
    let mut wtr = csv::WriterBuilder::new().from_writer(w);
    let mut header: Vec<&str> = data.columns.iter().map(String::as_str).collect();
    if data.labels.is_some() {
        header.push(LABEL_COLUMN);
    }
    wtr.write_record(&header)?;
    let mut fields: Vec<String> = Vec::with_capacity(header.len());
    for (i, row) in data.rows().enumerate() {
        fields.clear();
        fields.extend(row.iter().map(|v| v.to_string()));
        if let Some(l) = &data.labels {
            fields.push(l[i].to_string());
        }
        wtr.write_record(&fields)?;
    }
    wtr.flush()?;
    Ok(())
}

/// Writes `data` to `path` as CSV ([`write_csv_to`]), gzipped if the name ends in `.gz`,
/// atomically (no partial file is left on failure).
pub fn write_csv(path: &Path, data: &Dataset) -> Result<(), WriteError> {
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    fsio::write_atomic(path, |w| {
        if gz {
            let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::default());
            write_csv_to(&mut enc, data)?;
            enc.finish()?;
            Ok(())
        } else {
            write_csv_to(w, data)
        }
    })
}
