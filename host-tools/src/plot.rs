//! PNG figures: a model's latent directions on the sphere, coloured by cluster, with the
//! centres; and the training curves of a `hvae train --report` file.
//!
//! Shapes are drawn with `plotters`' bitmap backend into an RGB buffer in memory. Text is
//! drawn by this module from the 8x8 bitmap glyphs of `font8x8` (ASCII), because every
//! `plotters` text backend needs either system fonts (font-kit, absent on a fresh
//! machine) or a bundled TrueType font, and its font-less build panics on text. The PNG
//! is encoded in memory too, so the caller writes the file in one atomic step.
//!
//! Projections of the latent directions `mu(x)` (unit vectors in `R^M`):
//! - `M = 2`: the unit circle itself;
//! - `M = 3`: the sphere in orthographic projection, two disks: the hemisphere `z >= 0`
//!   seen from `+z` and the hemisphere `z < 0` seen from `-z` (mirrored so that the two
//!   disks join along their rims like an opened globe);
//! - `M > 3`: the two leading principal axes of the `mu`s (centred covariance, power
//!   iteration); the unit vectors are projected on them, so they fall inside the unit
//!   disk, nearer the rim the better the plane explains them.

use hvae::shape::TensorId;
use hvae::VecModel;
use plotters::prelude::*;
use serde_json::Value;

/// Why a figure cannot be drawn. One line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlotError(pub String);

fn perr<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError(format!("drawing failed: {e}"))
}

/// The latent picture's data: each row's mean direction and cluster, and the centres.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentPoints {
    /// Latent size `M`.
    pub m: usize,
    /// `N x M` unit mean directions, row-major.
    pub mu: Vec<f32>,
    /// Cluster of each row.
    pub labels: Vec<usize>,
    /// `K x M` unit centres, row-major.
    pub centres: Vec<f32>,
}

impl LatentPoints {
    /// Segments every row of `rows` (`d` values each) with `model`.
    pub fn from_model(model: &VecModel<f32>, rows: &[f32], d: usize) -> Result<Self, PlotError> {
        let shape = model.shape();
        let m = shape.latent;
        let mut work = vec![0.0f32; shape.work_len()];
        let mut mu = Vec::with_capacity(rows.len() / d.max(1) * m);
        let mut labels = Vec::with_capacity(rows.len() / d.max(1));
        for (i, row) in rows.chunks_exact(d).enumerate() {
            let seg = model
                .segment(row, &mut work)
                .map_err(|e| PlotError(format!("the model fails on data row {}: {e}", i + 1)))?;
            mu.extend_from_slice(seg.mu);
            labels.push(seg.label);
        }
        let raw = model
            .tensor(TensorId::Centres)
            .ok_or_else(|| PlotError("the model has no centres".into()))?;
        let mut centres = raw.to_vec();
        for c in centres.chunks_exact_mut(m) {
            let n = c.iter().map(|v| v * v).sum::<f32>().sqrt();
            // A zero centre has no direction; it is drawn at the disk's middle.
            if n > 0.0 {
                c.iter_mut().for_each(|v| *v /= n);
            }
        }
        Ok(LatentPoints {
            m,
            mu,
            labels,
            centres,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of clusters.
    pub fn clusters(&self) -> usize {
        self.centres.len() / self.m.max(1)
    }
}

/// The two leading principal axes of the rows of `x` (`n x m`), unit vectors, with the
/// fraction of the total variance each explains.
pub fn principal_axes(x: &[f32], m: usize) -> ([Vec<f64>; 2], [f64; 2]) {
    let n = x.len() / m.max(1);
    let mut mean = vec![0.0f64; m];
    for r in x.chunks_exact(m) {
        for (a, v) in mean.iter_mut().zip(r) {
            *a += f64::from(*v);
        }
    }
    mean.iter_mut().for_each(|a| *a /= n.max(1) as f64);
    let mut cov = vec![0.0f64; m * m];
    for r in x.chunks_exact(m) {
        for i in 0..m {
            let di = f64::from(r[i]) - mean[i];
            for j in 0..m {
                cov[i * m + j] += di * (f64::from(r[j]) - mean[j]);
            }
        }
    }
    let trace: f64 = (0..m).map(|i| cov[i * m + i]).sum();
    let mut axes: [Vec<f64>; 2] = [vec![0.0; m], vec![0.0; m]];
    let mut share = [0.0; 2];
    for (a, axis) in axes.iter_mut().enumerate() {
        // A fixed start that is not orthogonal to any axis in practice; power iteration
        // then converges to the leading eigenvector of the (deflated) covariance.
        let mut v: Vec<f64> = (0..m).map(|i| 1.0 + 0.37 * i as f64).collect();
        let mut lambda = 0.0;
        for _ in 0..500 {
            let mut w = vec![0.0; m];
            for i in 0..m {
                w[i] = (0..m).map(|j| cov[i * m + j] * v[j]).sum();
            }
            let norm = w.iter().map(|t| t * t).sum::<f64>().sqrt();
            if norm <= 1e-300 {
                break;
            }
            lambda = norm;
            v = w.into_iter().map(|t| t / norm).collect();
        }
        if lambda <= 0.0 {
            // No variance left: any unit axis orthogonal to the first will do.
            v = (0..m).map(|i| if i == a { 1.0 } else { 0.0 }).collect();
        }
        share[a] = if trace > 0.0 { lambda / trace } else { 0.0 };
        for i in 0..m {
            for j in 0..m {
                cov[i * m + j] -= lambda * v[i] * v[j];
            }
        }
        *axis = v;
    }
    (axes, share)
}

/// Training curves from a `hvae train --report` file.
#[derive(Clone, Debug, PartialEq)]
pub struct Curves {
    /// Epoch numbers.
    pub epochs: Vec<f64>,
    /// Number of leading warm-up epochs.
    pub warmup: usize,
    /// Loss parts by name; `None` where the report has no finite value.
    pub loss: Vec<(String, Vec<Option<f64>>)>,
    /// ACC and NMI, when the report has them; then, with `other_epochs` (the model
    /// `--gmm-candidate` did not keep), its `ACC, not kept` and `NMI, not kept` at its
    /// epochs (`None` at the others).
    pub scores: Vec<(String, Vec<Option<f64>>)>,
}

/// An epoch's score `key` (`acc`, `nmi`): absent or null when the data had no labels.
fn score(e: &Value, key: &str) -> Result<Option<f64>, String> {
    match e.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("\"{key}\" is not a number")),
    }
}

/// Parses a `hvae train --report` JSON file.
pub fn parse_report(bytes: &[u8]) -> Result<Curves, PlotError> {
    let bad = |what: &str| PlotError(format!("not a `hvae train --report` file: {what}"));
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
    let epochs = v
        .get("epochs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"epochs\" array"))?;
    if epochs.is_empty() {
        return Err(bad("the \"epochs\" array is empty"));
    }
    let mut out = Curves {
        epochs: Vec::with_capacity(epochs.len()),
        warmup: 0,
        loss: Vec::new(),
        scores: Vec::new(),
    };
    // Part names in the order of the first epoch (serde_json keeps them sorted).
    let first_loss = epochs[0]
        .get("loss")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("epoch 1 has no \"loss\" object"))?;
    let names: Vec<String> = first_loss.keys().cloned().collect();
    let mut loss: Vec<Vec<Option<f64>>> = vec![Vec::new(); names.len()];
    let mut acc = Vec::new();
    let mut nmi = Vec::new();
    for (i, e) in epochs.iter().enumerate() {
        let epoch = e
            .get("epoch")
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite())
            .ok_or_else(|| bad(&format!("entry {} has no numeric \"epoch\"", i + 1)))?;
        out.epochs.push(epoch);
        if e.get("warmup").and_then(Value::as_bool) == Some(true) && out.warmup == i {
            out.warmup += 1;
        }
        let parts = e
            .get("loss")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(&format!("entry {} has no \"loss\" object", i + 1)))?;
        for (name, series) in names.iter().zip(loss.iter_mut()) {
            // serde_json writes a non-finite f32 as null: a gap in the curve.
            series.push(parts.get(name).and_then(Value::as_f64));
        }
        for (key, series) in [("acc", &mut acc), ("nmi", &mut nmi)] {
            series.push(score(e, key).map_err(|m| bad(&format!("entry {}: {m}", i + 1)))?);
        }
    }
    out.loss = names
        .into_iter()
        .zip(loss)
        .filter(|(_, s)| s.iter().any(|v| v.is_some_and(|x| x != 0.0)))
        .collect();
    // With --gmm-candidate, the model not kept: its scores at its own epochs (a part of
    // the kept model's joint epochs), beside the kept model's.
    let (mut other_acc, mut other_nmi) = (vec![None; epochs.len()], vec![None; epochs.len()]);
    let other = v.get("other_epochs").and_then(Value::as_array);
    for (i, e) in other.into_iter().flatten().enumerate() {
        let entry = |what: &str| bad(&format!("other_epochs entry {}{what}", i + 1));
        let at = e
            .get("epoch")
            .and_then(Value::as_f64)
            .and_then(|t| out.epochs.iter().position(|&x| x == t))
            .ok_or_else(|| entry(" has no epoch of the curves"))?;
        for (key, series) in [("acc", &mut other_acc), ("nmi", &mut other_nmi)] {
            series[at] = score(e, key).map_err(|m| entry(&format!(": {m}")))?;
        }
    }
    let scores = [
        ("ACC", acc),
        ("NMI", nmi),
        ("ACC, not kept", other_acc),
        ("NMI, not kept", other_nmi),
    ];
    for (name, s) in scores {
        if s.iter().any(Option::is_some) {
            out.scores.push((name.into(), s));
        }
    }
    if out.loss.is_empty() && out.scores.is_empty() {
        return Err(bad("no finite, non-zero loss part or score"));
    }
    Ok(out)
}

/// RGB of cluster `k` of `n`: hues spread by the golden ratio so neighbouring indices
/// differ strongly even when `n` is large.
pub fn cluster_colour(k: usize) -> RGBColor {
    let h = (k as f64 * 0.618_033_988_749_895).fract();
    let (s, l) = if k.is_multiple_of(2) {
        (0.80, 0.45)
    } else {
        (0.70, 0.35)
    };
    hsl_to_rgb(h, s, l)
}

fn hsl_to_rgb(h: f64, s: f64, l: f64) -> RGBColor {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h * 6.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    RGBColor(to(r), to(g), to(b))
}

/// One line of text to draw once the shapes are done.
struct Label {
    x: i32,
    y: i32,
    text: String,
    colour: RGBColor,
}

/// An RGB canvas with queued text.
struct Figure {
    w: u32,
    h: u32,
    /// Pixel size of one glyph dot (glyphs are `8 * scale` pixels square).
    scale: i32,
    labels: Vec<Label>,
}

impl Figure {
    fn text(&mut self, x: i32, y: i32, text: impl Into<String>, colour: RGBColor) {
        self.labels.push(Label {
            x,
            y,
            text: text.into(),
            colour,
        });
    }

    fn glyph_w(&self) -> i32 {
        8 * self.scale
    }

    /// Draws the queued text into `buf` (RGB, row-major), clipped to the canvas.
    fn draw_text(&self, buf: &mut [u8]) {
        let s = self.scale;
        for l in &self.labels {
            for (ci, ch) in l.text.chars().enumerate() {
                let code = if ch.is_ascii() {
                    ch as usize
                } else {
                    b'?' as usize
                };
                let glyph = font8x8::legacy::BASIC_LEGACY[code];
                let gx = l.x + ci as i32 * 8 * s;
                for (row, bits) in glyph.iter().enumerate() {
                    for col in 0..8 {
                        // font8x8 stores the leftmost pixel in bit 0.
                        if bits & (1 << col) == 0 {
                            continue;
                        }
                        for dy in 0..s {
                            for dx in 0..s {
                                let px = gx + col * s + dx;
                                let py = l.y + row as i32 * s + dy;
                                if px < 0 || py < 0 || px >= self.w as i32 || py >= self.h as i32 {
                                    continue;
                                }
                                let i = (py as usize * self.w as usize + px as usize) * 3;
                                buf[i] = l.colour.0;
                                buf[i + 1] = l.colour.1;
                                buf[i + 2] = l.colour.2;
                            }
                        }
                    }
                }
            }
        }
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// A rectangle of the canvas: left, top, width, height.
#[derive(Clone, Copy, Debug)]
struct Rect {
    x: i32,
    y: i32,
    w: i32,
    h: i32,
}

/// Smallest picture drawn: below this the text and the disks do not fit.
pub const MIN_SIZE: u32 = 200;
/// Largest picture drawn (per side).
pub const MAX_SIZE: u32 = 8192;

/// Draws the figure (`latent` and/or `curves`, side by side when both) on a `w x h`
/// canvas and returns it PNG-encoded.
pub fn render(
    latent: Option<&LatentPoints>,
    curves: Option<&Curves>,
    w: u32,
    h: u32,
) -> Result<Vec<u8>, PlotError> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&w) || !(MIN_SIZE..=MAX_SIZE).contains(&h) {
        return Err(PlotError(format!(
            "picture size {w}x{h} is outside {MIN_SIZE}..={MAX_SIZE} per side"
        )));
    }
    if latent.is_none() && curves.is_none() {
        return Err(PlotError("nothing to draw".into()));
    }
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    let mut fig = Figure {
        w,
        h,
        scale: text_scale(latent.is_some(), curves.is_some(), w, h),
        labels: Vec::new(),
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let full = Rect {
            x: 0,
            y: 0,
            w: w as i32,
            h: h as i32,
        };
        match (latent, curves) {
            (Some(l), Some(c)) => {
                let lw = latent_width(full.w);
                draw_latent(&root, &mut fig, l, Rect { w: lw, ..full })?;
                draw_curves(
                    &root,
                    &mut fig,
                    c,
                    Rect {
                        x: lw,
                        w: full.w - lw,
                        ..full
                    },
                )?;
            }
            (Some(l), None) => draw_latent(&root, &mut fig, l, full)?,
            (None, Some(c)) => draw_curves(&root, &mut fig, c, full)?,
            (None, None) => {}
        }
        root.present().map_err(perr)?;
    }
    fig.draw_text(&mut buf);
    encode_png(&buf, w, h)
}

/// Width of the latent picture when it shares the canvas with the curves.
fn latent_width(w: i32) -> i32 {
    w * 11 / 20
}

/// Glyph dot size: 2 (16-pixel text) when every panel is wide enough for its longest
/// line at that size (about 54 characters beside the latent picture, 40 beside the
/// curves) and the canvas is tall enough, else 1.
fn text_scale(latent: bool, curves: bool, w: u32, h: u32) -> i32 {
    let w = w as i32;
    let (lw, cw) = if latent && curves {
        (latent_width(w), w - latent_width(w))
    } else {
        (w, w)
    };
    let fits = (!latent || lw >= 900) && (!curves || cw >= 700);
    if fits && h >= 600 {
        2
    } else {
        1
    }
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, PlotError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(perr)?;
        writer.write_image_data(rgb).map_err(perr)?;
        writer.finish().map_err(perr)?;
    }
    Ok(out)
}

/// A disk of the latent picture: centre and radius in pixels, and a caption.
struct Disk {
    cx: i32,
    cy: i32,
    r: i32,
}

impl Disk {
    fn at(&self, u: f64, v: f64) -> (i32, i32) {
        (
            self.cx + (u * f64::from(self.r)).round() as i32,
            self.cy - (v * f64::from(self.r)).round() as i32,
        )
    }
}

fn draw_disk(root: &Area<'_>, d: &Disk) -> Result<(), PlotError> {
    let grey = RGBColor(200, 200, 200);
    root.draw(&Circle::new(
        (d.cx, d.cy),
        d.r,
        RGBColor(245, 245, 245).filled(),
    ))
    .map_err(perr)?;
    root.draw(&PathElement::new(
        vec![(d.cx - d.r, d.cy), (d.cx + d.r, d.cy)],
        grey,
    ))
    .map_err(perr)?;
    root.draw(&PathElement::new(
        vec![(d.cx, d.cy - d.r), (d.cx, d.cy + d.r)],
        grey,
    ))
    .map_err(perr)?;
    root.draw(&Circle::new((d.cx, d.cy), d.r, BLACK.stroke_width(2)))
        .map_err(perr)?;
    Ok(())
}

/// Where a unit vector lands: disk index and `(u, v)` in the unit disk.
type Placer<'a> = Box<dyn Fn(&[f32]) -> (usize, f64, f64) + 'a>;

fn draw_latent(
    root: &Area<'_>,
    fig: &mut Figure,
    pts: &LatentPoints,
    r: Rect,
) -> Result<(), PlotError> {
    let g = fig.glyph_w();
    let pad = g;
    let k = pts.clusters();
    // Title, a caption line, the legend rows at the bottom.
    let legend_cols = ((r.w - 2 * pad) / (g * 12)).max(1) as usize;
    let shown = k.min(legend_cols * 4);
    let legend_rows = shown.div_ceil(legend_cols) as i32 + i32::from(shown < k);
    let top = r.y + pad + 4 * g;
    let bottom = r.y + r.h - pad - legend_rows * (g + g / 2);
    // One disk in the middle of the panel (M = 2, and the projection for M > 3).
    let centred = Disk {
        cx: r.x + r.w / 2,
        cy: top + g + (bottom - top - 2 * g) / 2,
        r: ((r.w - 2 * pad) / 2).min((bottom - top - 2 * g) / 2).max(8),
    };
    let (title, disks, place): (String, Vec<(Disk, &str)>, Placer<'_>) = match pts.m {
        3 => {
            let rad = ((r.w - 3 * pad) / 4).min((bottom - top - 2 * g) / 2).max(8);
            let cy = top + g + rad + (bottom - top - 2 * g - 2 * rad) / 2;
            let cx0 = r.x + r.w / 2 - pad / 2 - rad;
            let cx1 = r.x + r.w / 2 + pad / 2 + rad;
            (
                "latent directions mu on S^2 (orthographic)".into(),
                vec![
                    (
                        Disk {
                            cx: cx0,
                            cy,
                            r: rad,
                        },
                        "z >= 0, from +z",
                    ),
                    (
                        Disk {
                            cx: cx1,
                            cy,
                            r: rad,
                        },
                        "z < 0, from -z",
                    ),
                ],
                Box::new(|v: &[f32]| {
                    let (x, y, z) = (f64::from(v[0]), f64::from(v[1]), f64::from(v[2]));
                    // Seen from -z the x axis points left: mirror it.
                    if z >= 0.0 {
                        (0, x, y)
                    } else {
                        (1, -x, y)
                    }
                }),
            )
        }
        2 => (
            "latent directions mu on the circle S^1".into(),
            vec![(centred, "(mu_1, mu_2)")],
            Box::new(|v: &[f32]| (0, f64::from(v[0]), f64::from(v[1]))),
        ),
        m => {
            let ([a1, a2], share) = principal_axes(&pts.mu, m);
            let proj = move |v: &[f32]| {
                let p = |a: &[f64]| a.iter().zip(v).map(|(x, y)| x * f64::from(*y)).sum();
                (0, p(&a1), p(&a2))
            };
            (
                format!(
                    "mu on S^{}: PCA plane ({:.0}% + {:.0}% of variance)",
                    m - 1,
                    share[0] * 100.0,
                    share[1] * 100.0
                ),
                vec![(centred, "projection on PC1, PC2")],
                Box::new(proj),
            )
        }
    };
    fig.text(r.x + pad, r.y + pad, title, BLACK);
    fig.text(
        r.x + pad,
        r.y + pad + g + g / 2,
        format!(
            "{} rows, K = {k}; large dots with a black ring: centres",
            pts.len()
        ),
        RGBColor(80, 80, 80),
    );
    for (d, caption) in &disks {
        draw_disk(root, d)?;
        let tw = caption.len() as i32 * g;
        fig.text(
            d.cx - tw / 2,
            d.cy - d.r - g - g / 2,
            *caption,
            RGBColor(80, 80, 80),
        );
    }
    let dot = (fig.scale + 1).max(2);
    let mut counts = vec![0usize; k];
    for (v, &label) in pts.mu.chunks_exact(pts.m).zip(&pts.labels) {
        let (di, u, w) = place(v);
        let p = disks[di].0.at(u, w);
        let c = cluster_colour(label);
        root.draw(&Circle::new(p, dot, c.mix(0.55).filled()))
            .map_err(perr)?;
        if let Some(n) = counts.get_mut(label) {
            *n += 1;
        }
    }
    let ring = 5 * fig.scale + 2;
    for (j, c) in pts.centres.chunks_exact(pts.m).enumerate() {
        let (di, u, w) = place(c);
        let p = disks[di].0.at(u, w);
        root.draw(&Circle::new(p, ring + 2, BLACK.filled()))
            .map_err(perr)?;
        root.draw(&Circle::new(p, ring, cluster_colour(j).filled()))
            .map_err(perr)?;
        root.draw(&Circle::new(p, ring / 3, WHITE.filled()))
            .map_err(perr)?;
    }
    // Legend: a swatch and "k: n" per cluster.
    let col_w = (r.w - 2 * pad) / legend_cols as i32;
    for (j, count) in counts.iter().enumerate().take(shown) {
        let x = r.x + pad + (j % legend_cols) as i32 * col_w;
        let y = bottom + (j / legend_cols) as i32 * (g + g / 2);
        root.draw(&Rectangle::new(
            [(x, y), (x + g, y + g)],
            cluster_colour(j).filled(),
        ))
        .map_err(perr)?;
        fig.text(x + g + g / 2, y, format!("{j}: {count}"), BLACK);
    }
    if shown < k {
        let y = bottom + shown.div_ceil(legend_cols) as i32 * (g + g / 2);
        fig.text(
            r.x + pad,
            y,
            format!("... {} more clusters", k - shown),
            BLACK,
        );
    }
    Ok(())
}

/// A number for an axis label: 3 decimals, or scientific when tiny or large.
fn fmt_num(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

/// One panel of line series against the epoch.
#[allow(clippy::too_many_arguments)]
fn draw_series_panel(
    root: &Area<'_>,
    fig: &mut Figure,
    r: Rect,
    title: &str,
    epochs: &[f64],
    warmup: usize,
    series: &[(String, Vec<Option<f64>>)],
    fixed: Option<(f64, f64)>,
) -> Result<(), PlotError> {
    let g = fig.glyph_w();
    fig.text(r.x + g, r.y, title, BLACK);
    // Plot box: room for tick labels on the left and below.
    let bx = r.x + 9 * g;
    let by = r.y + 2 * g;
    let bw = (r.w - 10 * g).max(10);
    let bh = (r.h - 4 * g).max(10);
    let (mut lo, mut hi) = fixed.unwrap_or((f64::INFINITY, f64::NEG_INFINITY));
    if fixed.is_none() {
        for v in series.iter().flat_map(|(_, s)| s.iter().flatten()) {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        let span = (hi - lo).max(1e-9 * hi.abs().max(1.0));
        lo -= 0.05 * span;
        hi += 0.05 * span;
    }
    let (e0, e1) = (
        epochs.first().copied().unwrap_or(0.0),
        epochs.last().copied().unwrap_or(1.0),
    );
    let e_span = if e1 > e0 { e1 - e0 } else { 1.0 };
    let px = |e: f64| bx + ((e - e0) / e_span * f64::from(bw)).round() as i32;
    let py = |v: f64| by + bh - ((v - lo) / (hi - lo) * f64::from(bh)).round() as i32;
    if warmup > 0 && warmup <= epochs.len() {
        let end = px(epochs[warmup - 1]);
        root.draw(&Rectangle::new(
            [(bx, by), (end, by + bh)],
            RGBColor(235, 235, 235).filled(),
        ))
        .map_err(perr)?;
        fig.text(bx + g / 2, by + g / 2, "warm-up", RGBColor(120, 120, 120));
    }
    // Horizontal grid and value labels at five levels.
    for i in 0..=4 {
        let v = lo + (hi - lo) * f64::from(i) / 4.0;
        let y = py(v);
        root.draw(&PathElement::new(
            vec![(bx, y), (bx + bw, y)],
            RGBColor(220, 220, 220),
        ))
        .map_err(perr)?;
        let s = fmt_num(v);
        fig.text(bx - (s.len() as i32 + 1) * g, y - g / 2, s, BLACK);
    }
    for e in [e0, e0 + e_span / 2.0, e1] {
        let s = format!("{}", e.round());
        let x = px(e);
        fig.text(x - s.len() as i32 * g / 2, by + bh + g / 2, s, BLACK);
    }
    fig.text(
        bx + bw - 5 * g,
        by + bh + g / 2 + g,
        "epoch",
        RGBColor(80, 80, 80),
    );
    let legend = |name: &str, s: &[Option<f64>]| match s.iter().rev().flatten().next() {
        Some(v) => format!("{name} {}", fmt_num(*v)),
        None => name.to_string(),
    };
    let legend_chars = series
        .iter()
        .map(|(n, s)| legend(n, s).len())
        .max()
        .unwrap_or(0);
    // The legend in the box's right corner, top or bottom, where fewer of the curves'
    // points would lie under it (scores rise to the top, losses fall to the bottom).
    let lx = bx + bw - (legend_chars as i32 + 4) * g;
    let legend_h = series.len() as i32 * (g + g / 2);
    let top = by + g / 2;
    let bottom = by + bh - g / 2 - legend_h;
    let points = series.iter().flat_map(|(_, s)| {
        epochs
            .iter()
            .zip(s)
            .filter_map(|(e, v)| v.map(|v| (px(*e), py(v))))
    });
    let ly0 = if legend_below(points, lx, [top, bottom], legend_h) {
        bottom
    } else {
        top
    };
    for (j, (name, s)) in series.iter().enumerate() {
        let c = cluster_colour(j);
        // Break the line wherever a value is missing.
        let mut run: Vec<(i32, i32)> = Vec::new();
        for (e, v) in epochs.iter().zip(s) {
            match v {
                Some(v) => run.push((px(*e), py(*v))),
                None => {
                    if run.len() > 1 {
                        root.draw(&PathElement::new(
                            std::mem::take(&mut run),
                            c.stroke_width(2),
                        ))
                        .map_err(perr)?;
                    }
                    run.clear();
                }
            }
        }
        if run.len() == 1 {
            root.draw(&Circle::new(run[0], 3, c.filled()))
                .map_err(perr)?;
        } else if run.len() > 1 {
            root.draw(&PathElement::new(run, c.stroke_width(2)))
                .map_err(perr)?;
        }
        // Legend inside the box, as wide as its longest entry.
        let ly = ly0 + j as i32 * (g + g / 2);
        root.draw(&Rectangle::new(
            [(lx, ly + g / 2 - 1), (lx + 2 * g, ly + g / 2 + 2)],
            c.filled(),
        ))
        .map_err(perr)?;
        fig.text(lx + 3 * g, ly, legend(name, s), BLACK);
    }
    root.draw(&Rectangle::new([(bx, by), (bx + bw, by + bh)], BLACK))
        .map_err(perr)?;
    Ok(())
}

/// Whether a legend `height` pixels high, right of `x`, goes at the lower of the two
/// places `tops` (its top edge, above then below): true when fewer of `points` lie under
/// it there (ties keep it above).
fn legend_below(
    points: impl Iterator<Item = (i32, i32)>,
    x: i32,
    tops: [i32; 2],
    height: i32,
) -> bool {
    let mut under = [0usize; 2];
    for (_, py) in points.filter(|&(px, _)| px >= x) {
        for (n, top) in under.iter_mut().zip(tops) {
            *n += usize::from((top..=top + height).contains(&py));
        }
    }
    under[1] < under[0]
}

fn draw_curves(root: &Area<'_>, fig: &mut Figure, c: &Curves, r: Rect) -> Result<(), PlotError> {
    let g = fig.glyph_w();
    let pad = g;
    fig.text(r.x + pad, r.y + pad, "training curves (per epoch)", BLACK);
    let inner = Rect {
        x: r.x + pad,
        y: r.y + pad + 3 * g,
        w: r.w - 2 * pad,
        h: r.h - 2 * pad - 3 * g,
    };
    // The panels with series to draw, one above the other: title, series, fixed range.
    let panels: Vec<_> = [
        ("loss parts (mean per epoch)", &c.loss, None),
        (
            "clustering scores against the labels",
            &c.scores,
            Some((0.0, 1.0)),
        ),
    ]
    .into_iter()
    .filter(|(_, series, _)| !series.is_empty())
    .collect();
    let ph = inner.h / panels.len().max(1) as i32;
    let mut y = inner.y;
    for (title, series, fixed) in panels {
        let r = Rect { y, h: ph, ..inner };
        draw_series_panel(root, fig, r, title, &c.epochs, c.warmup, series, fixed)?;
        y += ph;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::legend_below;

    /// Scores that rise to the top push the legend down; losses that fall to the
    /// bottom, or curves that cover both places alike, keep it at the top.
    #[test]
    fn the_legend_goes_where_the_curves_are_not() {
        // A box 100 px high from y = 0; the legend 20 px high, right of x = 50, at the
        // top (y 5..=25) or at the bottom (y 75..=95).
        let curve = |f: fn(i32) -> i32| (0..100).map(move |x| (x, f(x)));
        let tops = [5, 75];
        assert!(legend_below(curve(|x| 100 - x.min(90)), 50, tops, 20));
        assert!(!legend_below(curve(|x| x.min(90)), 50, tops, 20));
        // Points left of the legend do not count: low there (as many as the high ones
        // to its right, which would be a tie), high under it.
        assert!(legend_below(
            curve(|x| if x < 50 { 90 } else { 10 }),
            50,
            tops,
            20
        ));
        assert!(!legend_below(curve(|_| 50), 50, tops, 20));
    }
}
