//! The answers to [`Request::Segment`] and [`Request::Encode`], shared by every server
//! of the protocol (the firmware's services, the host tool's simulated device).
//!
//! A request carries `n >= 1` samples of `D` raw values, one after the other, and gets
//! `n` responses in order: [`Response::Segmented`] / [`Response::Encoded`] for a sample
//! that went through, [`Response::Error`] for one that did not (the others still get
//! theirs). A request that is not a whole, non-zero number of samples gets one
//! [`ErrorCode::InputLength`].
//!
//! `PAIRS` chooses the code: `true` runs the samples through [`Model::segment_batch`] /
//! [`Model::encode_batch`] (two at a time when the workspace has room for two: fewer
//! instructions per sample, more code on a Cortex-M4F; docs/device.md); `false` calls
//! [`Model::segment`] / [`Model::encode`] on each sample, for images that must stay
//! small (the 32 KiB inference firmware). The responses are the same bits either way.
//!
//! [`Request::Segment`]: super::Request::Segment
//! [`Request::Encode`]: super::Request::Encode

use super::{ErrorCode, Response};
use crate::infer::model::{Encoding, InferError, Model, Segment};
use crate::infer::quant::QuantModel;
use core::num::NonZeroUsize;
use heapless::Vec;

/// Answers a `Segment` request for the samples `xs` with `model`, calling `emit` with
/// each response. `out` is where the responses are built (in place: a [`Response`] is
/// about 1.3 KiB, too big to move around, or to keep as a constant, on a small device);
/// `work` holds one model workspace, or two for pairs ([`Model::segment_batch`]); a
/// shorter one is one `BufferLength` error for the request. Cost: `n` segment calls.
pub fn answer_segment<S: AsRef<[f32]>, const PAIRS: bool>(
    model: &Model<f32, S>,
    xs: &[f32],
    work: &mut [f32],
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) {
    let Some(d) = acceptable(model, xs, work, out, emit) else {
        return;
    };
    let mut each = |r: Result<Segment<'_, f32>, InferError>| {
        let r = r
            .map_err(ErrorCode::from)
            .and_then(|s| set_segmented(out, &s));
        reply(r, out, emit);
    };
    let r = if PAIRS {
        model.segment_batch(xs, work, |_, r| each(r))
    } else {
        for x in xs.chunks_exact(d.get()) {
            each(model.segment(x, work));
        }
        Ok(())
    };
    // Checked by `acceptable`: whole samples and a long enough workspace.
    if let Err(e) = r {
        reply(Err(e.into()), out, emit);
    }
}

/// Answers an `Encode` request for the samples `xs`, as [`answer_segment`] does.
pub fn answer_encode<S: AsRef<[f32]>, const PAIRS: bool>(
    model: &Model<f32, S>,
    xs: &[f32],
    work: &mut [f32],
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) {
    let Some(d) = acceptable(model, xs, work, out, emit) else {
        return;
    };
    let mut each = |r: Result<Encoding<'_, f32>, InferError>| {
        let r = r
            .map_err(ErrorCode::from)
            .and_then(|e| set_encoded(out, &e));
        reply(r, out, emit);
    };
    let r = if PAIRS {
        model.encode_batch(xs, work, |_, r| each(r))
    } else {
        for x in xs.chunks_exact(d.get()) {
            each(model.encode(x, work));
        }
        Ok(())
    };
    if let Err(e) = r {
        reply(Err(e.into()), out, emit);
    }
}

/// Answers a `Segment` request with an int8 model, one sample at a time: the responses
/// of [`answer_segment`] (`PAIRS` false) with [`QuantModel::segment`]'s values. `work`
/// holds at least [`QuantModel::work_len`] values.
pub fn answer_segment_int8<W: AsRef<[i8]>, I: AsRef<[i32]>, F: AsRef<[f32]>>(
    model: &QuantModel<W, I, F>,
    xs: &[f32],
    work: &mut [f32],
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) {
    let Some(d) = acceptable_for(model.shape().input, model.work_len(), xs, work, out, emit) else {
        return;
    };
    for x in xs.chunks_exact(d.get()) {
        let r = model
            .segment(x, work)
            .map_err(ErrorCode::from)
            .and_then(|s| set_segmented(out, &s));
        reply(r, out, emit);
    }
}

/// Answers an `Encode` request with an int8 model, as [`answer_segment_int8`] does.
pub fn answer_encode_int8<W: AsRef<[i8]>, I: AsRef<[i32]>, F: AsRef<[f32]>>(
    model: &QuantModel<W, I, F>,
    xs: &[f32],
    work: &mut [f32],
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) {
    let Some(d) = acceptable_for(model.shape().input, model.work_len(), xs, work, out, emit) else {
        return;
    };
    for x in xs.chunks_exact(d.get()) {
        let r = model
            .encode(x, work)
            .map_err(ErrorCode::from)
            .and_then(|e| set_encoded(out, &e));
        reply(r, out, emit);
    }
}

/// The length of a sample when `xs` is a whole, non-zero number of samples and `work`
/// holds at least one workspace; otherwise emits one error (`InputLength`,
/// `BufferLength`) and gives `None`.
fn acceptable<S: AsRef<[f32]>>(
    model: &Model<f32, S>,
    xs: &[f32],
    work: &[f32],
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) -> Option<NonZeroUsize> {
    acceptable_for(model.shape().input, model.work_len(), xs, work, out, emit)
}

/// [`acceptable`] for a model of `d` inputs whose calls take `work_len` workspace values.
fn acceptable_for(
    d: usize,
    work_len: usize,
    xs: &[f32],
    work: &[f32],
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) -> Option<NonZeroUsize> {
    let e = match NonZeroUsize::new(d) {
        Some(n) if !xs.is_empty() && xs.len().is_multiple_of(d) => {
            if work.len() >= work_len {
                return Some(n);
            }
            InferError::BufferLength
        }
        _ => InferError::InputLength,
    };
    reply(Err(e.into()), out, emit);
    None
}

/// Emits `out` as built, or the error.
fn reply(r: Result<(), ErrorCode>, out: &mut Response, emit: &mut dyn FnMut(&Response)) {
    if let Err(e) = r {
        *out = Response::Error(e);
    }
    emit(out);
}

/// Makes `out` the [`Response::Segmented`] of `s`, in place.
pub fn set_segmented(out: &mut Response, s: &Segment<'_, f32>) -> Result<(), ErrorCode> {
    *out = Response::Segmented {
        label: u8::try_from(s.label).map_err(|_| ErrorCode::Internal)?,
        probs: Vec::new(),
        cosine: s.cosine,
        mu: Vec::new(),
        kappa: s.kappa,
    };
    if let Response::Segmented { probs, mu, .. } = out {
        probs
            .extend_from_slice(s.probs)
            .map_err(|_| ErrorCode::Internal)?;
        mu.extend_from_slice(s.mu)
            .map_err(|_| ErrorCode::Internal)?;
    }
    Ok(())
}

/// Makes `out` the [`Response::Encoded`] of `e`, in place.
pub fn set_encoded(out: &mut Response, e: &Encoding<'_, f32>) -> Result<(), ErrorCode> {
    *out = Response::Encoded {
        mu: Vec::new(),
        kappa: e.kappa,
    };
    if let Response::Encoded { mu, .. } = out {
        mu.extend_from_slice(e.mu)
            .map_err(|_| ErrorCode::Internal)?;
    }
    Ok(())
}
