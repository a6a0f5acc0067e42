//! `hvae predict`: the model's answer for every row of a data file, streamed.
//!
//! Rows are read one at a time with [`data::RowReader`] (the loader of every other
//! command, with its checks and its one-line errors), gathered in chunks, put through
//! the core's batch path ([`Model::segment_batch`], the same bits as
//! [`Model::segment`] on each row) and written out before the next chunk is read: the
//! memory used does not grow with the file. [`stream`] is the loop, for any reader and
//! writer; [`run`] adds the files, stdin and stdout, the progress bar and the messages.

#![deny(missing_docs)]

use super::outln;
use crate::data::{self, DataError, DataErrorKind, RowMeta, RowReader};
use crate::fsio::WriteError;
use crate::{model_io, Error};
use hvae::infer::model::{Model, Segment};
use indicatif::{ProgressBar, ProgressStyle};
use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Long help of the subcommand (`hvae predict --help`).
pub const LONG_ABOUT: &str = "Write the model's answer for every row of a data file.\n\n\
    For each row: `label` (the most probable cluster), `probs` (the cluster probabilities, \
    columns prob_0..prob_{K-1}), `novelty` (1 - cosine between the mean direction and the \
    nearest centre), `kappa` (the posterior concentration) and `mu` (the mean direction, \
    columns mu_0..mu_{M-1}): the same values, bit for bit, as the core's Model::segment on \
    the row. An input column named `label` is carried through as `true_label` and one \
    named `id` as `id` (text; `id` is then not a feature). --columns picks and orders the \
    output columns from: id, label, probs, novelty, novel, kappa, mu, true_label. Default: \
    id (if the input has one), label, probs, novelty, kappa, mu, true_label (if the input \
    has one), then novel with --novelty-above, which marks rows whose novelty is strictly \
    above T (novel = 1, else 0) and adds the column to a --columns list that lacks it.\n\n\
    It streams: rows are read, answered in chunks of --chunk rows and written before the \
    next chunk is read, so a file of any size needs the same memory (a Fortran-order .npy \
    is the exception: it is read whole). --data - reads stdin (CSV or .npy, plain or \
    gzipped, recognised by content). Without --out (or with --out -) the answers go to \
    stdout as CSV, flushed after every chunk; a reader that closes the pipe early just \
    stops the run. With --out the format follows the extension: .csv; .json or .jsonl \
    for JSON Lines (one object per row, keys as the --columns names, probs and mu as \
    arrays, id a string); .npy for a float32 2-D array of the numeric columns (id cannot \
    go there; true_label must be within float32's exact integers, 2^24). The .npy header \
    is written with a fixed-width row count and patched once the rows are counted (no \
    buffering). A file is written to a temporary file renamed into place: no partial \
    file is ever left.\n\n\
    A bad row (ragged, a cell that is not a finite number, a label that is not an \
    integer) stops the run with the loader's one-line error naming its line, exit status \
    2, after the rows before it were written to stdout (a file is not written). With \
    --skip-bad, each bad row is reported on stderr in one line and skipped, and the \
    count is printed at the end; rows the model cannot segment are skipped likewise \
    (without --skip-bad they stop the run with exit status 1). A progress bar is drawn \
    on stderr only when it is a terminal.";

/// An output column (a group of columns for `probs` and `mu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Column {
    /// The input's `id` column, as text.
    Id,
    /// The most probable cluster.
    Label,
    /// The cluster probabilities `prob_0..prob_{K-1}`.
    Probs,
    /// `1 - cosine` to the nearest centre.
    Novelty,
    /// 1 when the novelty is above `--novelty-above`, else 0.
    Novel,
    /// The posterior concentration.
    Kappa,
    /// The mean direction `mu_0..mu_{M-1}`.
    Mu,
    /// The input's `label` column.
    #[value(name = "true_label")]
    TrueLabel,
}

impl Column {
    /// The column's name in `--columns` and as a JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Column::Id => data::ID_COLUMN,
            Column::Label => "label",
            Column::Probs => "probs",
            Column::Novelty => "novelty",
            Column::Novel => "novel",
            Column::Kappa => "kappa",
            Column::Mu => "mu",
            Column::TrueLabel => "true_label",
        }
    }
}

/// Arguments of `hvae predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Model file (weight blob).
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    /// Data file: CSV with a header (plain or .gz) or a 2-D float .npy array; `-` reads
    /// stdin.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Output: .csv, .json / .jsonl (JSON Lines) or .npy; stdout (CSV) when absent or `-`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Output columns, in order, comma-separated
    /// (id, label, probs, novelty, novel, kappa, mu, true_label).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "COL,...")]
    pub columns: Option<Vec<Column>>,
    /// Mark rows whose novelty is above T (a `novel` 0/1 column).
    #[arg(long, value_name = "T")]
    pub novelty_above: Option<f32>,
    /// Report each bad row on stderr and skip it instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Rows answered (and written) together.
    #[arg(long, default_value_t = 256, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub chunk: u32,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// CSV with a header line.
    Csv,
    /// JSON Lines: one object per row.
    JsonLines,
    /// A float32 2-D `.npy` array (row count patched in by the caller: [`npy_header`]).
    Npy,
}

impl Format {
    /// The format of an output file, from its extension.
    pub fn of_path(path: &Path) -> Result<Format, Error> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("json" | "jsonl") => Ok(Format::JsonLines),
            Some("npy") => Ok(Format::Npy),
            _ => Err(Error::BadInput(format!(
                "--out {}: unknown output format: use a .csv, .json (JSON Lines), .jsonl or \
                 .npy name, or no --out for CSV on stdout",
                path.display()
            ))),
        }
    }
}

/// What [`stream`] does besides the columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Output columns, in order (see [`resolve_columns`]).
    pub columns: Vec<Column>,
    /// Novelty threshold of the `novel` column.
    pub novelty_above: Option<f32>,
    /// Skip bad rows (reported through the `skipped` hook) instead of stopping.
    pub skip_bad: bool,
    /// Rows per chunk (at least 1).
    pub chunk: usize,
}

/// Rows handled by [`stream`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows written.
    pub rows: u64,
    /// Rows skipped (bad rows and rows the model cannot segment), with `skip_bad`.
    pub skipped: u64,
}

/// Why [`stream`] stopped.
#[derive(Debug)]
pub enum StreamError {
    /// The output could not be written.
    Output(io::Error),
    /// The input (or the model on a row) failed.
    Input(Error),
}

/// The output columns: `asked` (from `--columns`) checked against the input, or the
/// default order; `novel` is appended when there is a threshold and `asked` lacks it.
pub fn resolve_columns(
    asked: Option<&[Column]>,
    has_ids: bool,
    has_labels: bool,
    novelty_above: Option<f32>,
    format: Format,
    data_name: &str,
) -> Result<Vec<Column>, Error> {
    let mut cols = match asked {
        Some(a) => a.to_vec(),
        None => {
            let mut c = Vec::new();
            if has_ids && format != Format::Npy {
                c.push(Column::Id);
            }
            c.extend([
                Column::Label,
                Column::Probs,
                Column::Novelty,
                Column::Kappa,
                Column::Mu,
            ]);
            if has_labels {
                c.push(Column::TrueLabel);
            }
            c
        }
    };
    if novelty_above.is_some() && !cols.contains(&Column::Novel) {
        cols.push(Column::Novel);
    }
    for (i, c) in cols.iter().enumerate() {
        if cols[..i].contains(c) {
            return Err(Error::BadInput(format!(
                "--columns names '{}' twice",
                c.name()
            )));
        }
        let missing = match c {
            Column::Id if !has_ids => Some(data::ID_COLUMN),
            Column::TrueLabel if !has_labels => Some(data::LABEL_COLUMN),
            _ => None,
        };
        if let Some(m) = missing {
            return Err(Error::BadInput(format!(
                "--columns asks for '{}' but {data_name} has no '{m}' column",
                c.name()
            )));
        }
        if *c == Column::Novel && novelty_above.is_none() {
            return Err(Error::BadInput(
                "--columns asks for 'novel': give the threshold with --novelty-above T".into(),
            ));
        }
        if *c == Column::Id && format == Format::Npy {
            return Err(Error::BadInput(
                "the 'id' column is text and cannot go into a .npy array: leave it out of \
                 --columns"
                    .into(),
            ));
        }
    }
    Ok(cols)
}

/// The header names of `columns` for a model with `k` clusters and latent size `m`:
/// `prob_0..prob_{k-1}` for `probs`, `mu_0..mu_{m-1}` for `mu`.
pub fn column_names(columns: &[Column], k: usize, m: usize) -> Vec<String> {
    let mut names = Vec::new();
    for c in columns {
        match c {
            Column::Probs => names.extend((0..k).map(|i| format!("prob_{i}"))),
            Column::Mu => names.extend((0..m).map(|i| format!("mu_{i}"))),
            c => names.push(c.name().to_string()),
        }
    }
    names
}

/// Largest integer magnitude below which every integer is exact in `f32`.
const F32_EXACT: i64 = 1 << 24;

/// A `.npy` version 1.0 header for a little-endian `f32` C-order `rows x cols` array.
/// Its length depends only on `cols` (the row count is padded to 20 digits, the most a
/// `u64` has), so a header written with a placeholder count can be overwritten in
/// place once the rows are counted.
pub fn npy_header(rows: u64, cols: usize) -> Vec<u8> {
    let dict =
        |r: &str| format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({r}, {cols}), }}");
    let widest = dict(&u64::MAX.to_string()).len();
    // magic (6) + version (2) + length (2) + dict + padding + '\n', a multiple of 64.
    let total = (10 + widest + 1).div_ceil(64) * 64;
    let mut text = dict(&rows.to_string());
    text.push_str(&" ".repeat(total - 10 - 1 - text.len()));
    text.push('\n');
    let mut h = Vec::with_capacity(total);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    h.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    h.extend_from_slice(text.as_bytes());
    h
}

/// One row's answer.
struct Answer<'a> {
    meta: &'a RowMeta,
    seg: &'a Segment<'a, f32>,
    novelty: f32,
    novel: Option<bool>,
}

/// An output format's writer.
trait Sink {
    /// Writes one row (the header first, on the first call).
    fn row(&mut self, a: &Answer<'_>) -> io::Result<()>;
    /// Writes the header if no row was written, and flushes.
    fn finish(&mut self) -> io::Result<()>;
    /// Flushes what was written.
    fn flush(&mut self) -> io::Result<()>;
}

/// Appends `v` (an `f32` in Rust's shortest round-trip form, or an integer).
fn push_num(buf: &mut String, v: impl std::fmt::Display) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(buf, "{v}");
}

struct CsvSink<W: Write> {
    wtr: csv::Writer<W>,
    names: Vec<String>,
    columns: Vec<Column>,
    started: bool,
    field: String,
}

impl<W: Write> CsvSink<W> {
    fn header(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            self.wtr.write_record(&self.names)?;
        }
        Ok(())
    }

    fn number(&mut self, v: f32) -> io::Result<()> {
        self.field.clear();
        push_num(&mut self.field, v);
        Ok(self.wtr.write_field(&self.field)?)
    }

    fn integer(&mut self, v: i64) -> io::Result<()> {
        self.field.clear();
        push_num(&mut self.field, v);
        Ok(self.wtr.write_field(&self.field)?)
    }
}

impl<W: Write> Sink for CsvSink<W> {
    fn row(&mut self, a: &Answer<'_>) -> io::Result<()> {
        self.header()?;
        for i in 0..self.columns.len() {
            match self.columns[i] {
                Column::Id => self.wtr.write_field(a.meta.id.as_deref().unwrap_or(""))?,
                Column::Label => self.integer(a.seg.label as i64)?,
                Column::Probs => {
                    for &p in a.seg.probs {
                        self.number(p)?;
                    }
                }
                Column::Novelty => self.number(a.novelty)?,
                Column::Novel => self.integer(i64::from(a.novel == Some(true)))?,
                Column::Kappa => self.number(a.seg.kappa)?,
                Column::Mu => {
                    for &m in a.seg.mu {
                        self.number(m)?;
                    }
                }
                Column::TrueLabel => match a.meta.label {
                    Some(l) => self.integer(l)?,
                    None => self.wtr.write_field("")?,
                },
            }
        }
        Ok(self.wtr.write_record(None::<&[u8]>)?)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.header()?;
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.wtr.flush()
    }
}

struct JsonSink<W: Write> {
    out: W,
    columns: Vec<Column>,
    line: String,
}

impl<W: Write> JsonSink<W> {
    fn array(&mut self, vs: &[f32]) {
        self.line.push('[');
        for (i, &v) in vs.iter().enumerate() {
            if i > 0 {
                self.line.push(',');
            }
            push_num(&mut self.line, v);
        }
        self.line.push(']');
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn row(&mut self, a: &Answer<'_>) -> io::Result<()> {
        self.line.clear();
        self.line.push('{');
        for i in 0..self.columns.len() {
            let c = self.columns[i];
            if i > 0 {
                self.line.push(',');
            }
            self.line.push('"');
            self.line.push_str(c.name());
            self.line.push_str("\":");
            match c {
                Column::Id => {
                    let id = a.meta.id.as_deref().unwrap_or("");
                    // A string always encodes.
                    let text = serde_json::to_string(id).map_err(io::Error::other)?;
                    self.line.push_str(&text);
                }
                Column::Label => push_num(&mut self.line, a.seg.label),
                Column::Probs => self.array(a.seg.probs),
                Column::Novelty => push_num(&mut self.line, a.novelty),
                Column::Novel => self
                    .line
                    .push(if a.novel == Some(true) { '1' } else { '0' }),
                Column::Kappa => push_num(&mut self.line, a.seg.kappa),
                Column::Mu => self.array(a.seg.mu),
                Column::TrueLabel => match a.meta.label {
                    Some(l) => push_num(&mut self.line, l),
                    None => self.line.push_str("null"),
                },
            }
        }
        self.line.push_str("}\n");
        self.out.write_all(self.line.as_bytes())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct NpySink<W: Write> {
    out: W,
    columns: Vec<Column>,
    width: usize,
    started: bool,
    bytes: Vec<u8>,
}

impl<W: Write> NpySink<W> {
    fn header(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            self.out.write_all(&npy_header(0, self.width))?;
        }
        Ok(())
    }
}

impl<W: Write> Sink for NpySink<W> {
    fn row(&mut self, a: &Answer<'_>) -> io::Result<()> {
        self.header()?;
        self.bytes.clear();
        let mut put = |v: f32| self.bytes.extend_from_slice(&v.to_le_bytes());
        for &c in &self.columns {
            match c {
                // Refused by `resolve_columns`.
                Column::Id => {}
                Column::Label => put(a.seg.label as f32),
                Column::Probs => a.seg.probs.iter().for_each(|&p| put(p)),
                Column::Novelty => put(a.novelty),
                Column::Novel => put(if a.novel == Some(true) { 1.0 } else { 0.0 }),
                Column::Kappa => put(a.seg.kappa),
                Column::Mu => a.seg.mu.iter().for_each(|&m| put(m)),
                // Checked to be exact by `stream`.
                Column::TrueLabel => put(a.meta.label.unwrap_or(0) as f32),
            }
        }
        self.out.write_all(&self.bytes)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.header()?;
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Hooks of [`stream`]: progress after each chunk and a one-line report per skipped row.
pub struct Hooks<'h> {
    /// Called after each chunk with the counts so far.
    pub chunk: &'h mut dyn FnMut(&Summary),
    /// Called with the one-line reason of each skipped row (without `hvae: ` prefix).
    pub skipped: &'h mut dyn FnMut(&str),
}

/// Reads every row of `rows` (named `name` in messages), answers it with `model` and
/// writes the answers to `out` in `format`, chunk by chunk. The model's input size must
/// be `rows.dim()` (checked by the caller: [`check_sizes`]). For [`Format::Npy`] the
/// header's row count is 0: patch it with [`npy_header`]`(summary.rows, width)`.
///
/// Stops at the first bad row (unless `opts.skip_bad`) after writing the rows before
/// it; a file with no data row is [`DataErrorKind::NoRows`].
pub fn stream<S: AsRef<[f32]>, W: Write>(
    model: &Model<f32, S>,
    rows: &mut RowReader<'_>,
    name: &str,
    opts: &Options,
    format: Format,
    out: W,
    hooks: Hooks<'_>,
) -> Result<Summary, StreamError> {
    let shape = model.shape();
    let (d, k, m) = (shape.input, shape.clusters, shape.latent);
    let names = column_names(&opts.columns, k, m);
    let width = names.len();
    let mut sink: Box<dyn Sink + '_> = match format {
        Format::Csv => Box::new(CsvSink {
            wtr: csv::WriterBuilder::new()
                .buffer_capacity(1 << 16)
                .from_writer(out),
            names,
            columns: opts.columns.clone(),
            started: false,
            field: String::with_capacity(32),
        }),
        Format::JsonLines => Box::new(JsonSink {
            out,
            columns: opts.columns.clone(),
            line: String::with_capacity(1024),
        }),
        Format::Npy => Box::new(NpySink {
            out,
            columns: opts.columns.clone(),
            width,
            started: false,
            bytes: Vec::with_capacity(4 * width),
        }),
    };
    let npy_labels = format == Format::Npy && opts.columns.contains(&Column::TrueLabel);
    let chunk = opts.chunk.max(1);
    let mut features: Vec<f32> = Vec::with_capacity(chunk * d);
    let mut metas: Vec<RowMeta> = Vec::with_capacity(chunk);
    // Two workspaces: the batch path encodes two rows at a time.
    let mut work = vec![0.0f32; 2 * shape.work_len()];
    let mut summary = Summary::default();
    loop {
        features.clear();
        metas.clear();
        let mut stop: Option<Error> = None;
        let mut end = false;
        while metas.len() < chunk {
            match rows.next_into(&mut features) {
                Ok(Some(meta)) => metas.push(meta),
                Ok(None) => {
                    end = true;
                    break;
                }
                Err(e) if opts.skip_bad && e.kind.is_row_error() => {
                    summary.skipped += 1;
                    (hooks.skipped)(&format!("{e} (row skipped)"));
                }
                Err(e) => {
                    stop = Some(e.into());
                    break;
                }
            }
        }
        if npy_labels {
            let inexact = |r: &RowMeta| r.label.is_some_and(|l| l.abs() > F32_EXACT);
            if let Some(i) = metas.iter().position(inexact) {
                // It comes before any error met later in the chunk; the rows before it
                // are written, as for any bad row.
                let bad = &metas[i];
                stop = Some(Error::BadInput(format!(
                    "{name}: {}: label {} is not exact in float32 (beyond 2^24): leave \
                     true_label out of the .npy columns",
                    bad.position,
                    bad.label.unwrap_or(0)
                )));
                metas.truncate(i);
                features.truncate(i * d);
            }
        }
        let mut failed: Option<StreamError> = None;
        model
            .segment_batch(&features, &mut work, |i, r| {
                if failed.is_some() {
                    return;
                }
                let meta = &metas[i];
                match r {
                    Ok(seg) => {
                        let novelty = seg.novelty();
                        let a = Answer {
                            meta,
                            seg: &seg,
                            novelty,
                            novel: opts.novelty_above.map(|t| novelty > t),
                        };
                        match sink.row(&a) {
                            Ok(()) => summary.rows += 1,
                            Err(e) => failed = Some(StreamError::Output(e)),
                        }
                    }
                    Err(e) if opts.skip_bad => {
                        summary.skipped += 1;
                        (hooks.skipped)(&format!(
                            "{name}: {}: the model cannot segment this row: {e} (row skipped)",
                            meta.position
                        ));
                    }
                    Err(e) => {
                        failed = Some(StreamError::Input(Error::Failed(format!(
                            "{name}: {}: the model fails on this row: {e}",
                            meta.position
                        ))))
                    }
                }
            })
            .map_err(|e| StreamError::Input(Error::Failed(format!("{name}: {e}"))))?;
        (hooks.chunk)(&summary);
        if let Some(f) = failed {
            return Err(flushed(&mut *sink, f));
        }
        if let Some(e) = stop {
            return Err(flushed(&mut *sink, StreamError::Input(e)));
        }
        if end {
            break;
        }
        sink.flush().map_err(StreamError::Output)?;
    }
    if summary.rows == 0 && summary.skipped == 0 {
        return Err(StreamError::Input(Error::Data(DataError {
            file: name.to_string(),
            kind: DataErrorKind::NoRows,
        })));
    }
    sink.finish().map_err(StreamError::Output)?;
    Ok(summary)
}

/// `err`, after flushing the rows written before it (so that stdout has them). A
/// failure to flush is secondary: `err` is what stopped the run.
fn flushed(sink: &mut dyn Sink, err: StreamError) -> StreamError {
    let _ = sink.flush();
    err
}

/// Checks that the model reads rows of `dim` features.
pub fn check_sizes<S: AsRef<[f32]>>(
    model: &Model<f32, S>,
    model_path: &Path,
    dim: usize,
    has_ids: bool,
    data_name: &str,
) -> Result<(), Error> {
    let want = model.shape().input;
    if dim == want {
        return Ok(());
    }
    let hint = if has_ids && want == dim + 1 {
        format!(
            " (its '{}' column is an identifier, not a feature)",
            data::ID_COLUMN
        )
    } else {
        String::new()
    };
    Err(Error::BadInput(format!(
        "model {} expects {want} input features but {data_name} has {dim} feature columns{hint}",
        model_path.display()
    )))
}

/// A reader that counts the bytes read through it (for the progress bar).
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// Runs `hvae predict`: answers on `out` (stdout) unless `--out` names a file.
pub fn run(args: &PredictArgs, out: &mut dyn Write) -> Result<(), Error> {
    if let Some(t) = args.novelty_above {
        if !t.is_finite() {
            return Err(Error::BadInput(format!(
                "--novelty-above {t}: the threshold must be a finite number"
            )));
        }
    }
    let target = args.out.as_deref().filter(|p| !is_dash(p));
    let format = match target {
        Some(p) => Format::of_path(p)?,
        None => Format::Csv,
    };
    let loaded = model_io::load(&args.model)?;
    let model = &loaded.model;

    let read = Rc::new(Cell::new(0u64));
    let (mut rows, name, size) = if is_dash(&args.data) {
        let name = "stdin".to_string();
        let input = Counting {
            inner: io::stdin().lock(),
            count: read.clone(),
        };
        (RowReader::new(input, &name, true)?, name, None)
    } else {
        let name = args.data.display().to_string();
        let file = data::open(&args.data)?;
        let size = file.metadata().ok().map(|m| m.len());
        let input = Counting {
            inner: file,
            count: read.clone(),
        };
        (RowReader::new(input, &name, true)?, name, size)
    };
    check_sizes(model, &args.model, rows.dim(), rows.has_ids(), &name)?;
    let opts = Options {
        columns: resolve_columns(
            args.columns.as_deref(),
            rows.has_ids(),
            rows.has_labels(),
            args.novelty_above,
            format,
            &name,
        )?,
        novelty_above: args.novelty_above,
        skip_bad: args.skip_bad,
        chunk: args.chunk as usize,
    };
    let shape = model.shape();
    let width = column_names(&opts.columns, shape.clusters, shape.latent).len();

    // Not over answers going to the same terminal.
    let bar = if target.is_some() || !io::stdout().is_terminal() {
        progress_bar(size)
    } else {
        ProgressBar::hidden()
    };
    let mut on_chunk = |s: &Summary| {
        bar.set_position(read.get());
        bar.set_message(format!("{} rows", s.rows));
    };
    let mut on_skip = |line: &str| bar.suspend(|| eprintln!("hvae: warning: {line}"));
    let hooks = Hooks {
        chunk: &mut on_chunk,
        skipped: &mut on_skip,
    };
    let result = match target {
        None => {
            let w = BufWriter::with_capacity(1 << 16, &mut *out);
            match stream(model, &mut rows, &name, &opts, format, w, hooks) {
                Ok(s) => Ok(Some(s)),
                // The reader went away (`| head`): stop quietly, as a filter does.
                Err(StreamError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(None),
                Err(StreamError::Output(e)) => {
                    Err(Error::Failed(format!("cannot write the output: {e}")))
                }
                Err(StreamError::Input(e)) => Err(e),
            }
        }
        Some(path) => write_file(
            path,
            |w| stream(model, &mut rows, &name, &opts, format, w, hooks),
            |s| (format == Format::Npy).then(|| npy_header(s.rows, width)),
        )
        .map(Some),
    };
    bar.finish_and_clear();
    let summary = result?;
    if let Some(s) = summary {
        if args.skip_bad {
            eprintln!(
                "hvae: note: skipped {} bad row{} of {}",
                s.skipped,
                if s.skipped == 1 { "" } else { "s" },
                s.rows + s.skipped
            );
        }
        if let Some(path) = target {
            outln!(
                out,
                "wrote {} rows x {width} column{} to {}",
                s.rows,
                if width == 1 { "" } else { "s" },
                path.display()
            )?;
        }
    }
    Ok(())
}

/// The progress bar: on stderr when it is a terminal (bytes of a file of `size` bytes,
/// or a row count for stdin), hidden otherwise.
fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(n) => {
            let b = ProgressBar::new(n);
            b.set_style(
                ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        }
        None => {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {bytes} read, {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        }
    }
}

/// Writes `path` through a temporary file beside it (mode 0644 less the umask on Unix),
/// renamed into place only once `body` succeeded; `patch` may then give bytes to
/// overwrite the start of the file with (the `.npy` header). Nothing is left behind on
/// failure.
fn write_file<F, P>(path: &Path, body: F, patch: P) -> Result<Summary, Error>
where
    F: FnOnce(&mut BufWriter<&mut File>) -> Result<Summary, StreamError>,
    P: FnOnce(&Summary) -> Option<Vec<u8>>,
{
    let werr = |source| {
        Error::Write(WriteError {
            path: path.to_path_buf(),
            source,
        })
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".hvae-tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(werr)?;
    let summary = {
        let mut w = BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        let s = body(&mut w).map_err(|e| match e {
            StreamError::Output(e) => werr(e),
            StreamError::Input(e) => e,
        })?;
        w.flush().map_err(werr)?;
        s
    };
    if let Some(head) = patch(&summary) {
        let f = tmp.as_file_mut();
        f.seek(SeekFrom::Start(0)).map_err(werr)?;
        f.write_all(&head).map_err(werr)?;
    }
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(summary)
}
