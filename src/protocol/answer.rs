//! The answers to [`Request::Segment`] and [`Request::Encode`], shared by every server
//! of the protocol (the firmware's services, the host tool's simulated device).
//!
//! A request carries `n >= 1` samples of `D` raw values, one after the other, and gets
//! `n` responses in order: [`Response::Segmented`] / [`Response::Encoded`] for a sample
//! that went through, [`Response::Error`] for one that did not (the others still get
//! theirs). A request that is not a whole, non-zero number of samples gets one
//! [`ErrorCode::InputLength`].
//!
//! [`answer`] answers both, for either model ([`Answers`]). `PAIRS` chooses the code:
//! `true` runs the samples through [`Model::segment_batch`] /
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

/// What a request asks of each of its samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// [`Request::Segment`](super::Request::Segment): [`Response::Segmented`].
    Segment,
    /// [`Request::Encode`](super::Request::Encode): [`Response::Encoded`].
    Encode,
}

/// A model that answers [`Ask`]s ([`answer`]): the `f32` [`Model`] and the int8
/// [`QuantModel`].
pub trait Answers {
    /// Values of one sample.
    fn input(&self) -> usize;
    /// Workspace values one call needs.
    fn work_len(&self) -> usize;
    /// Makes `out` the answer to `ask` for the sample `x`.
    fn answer_one(
        &self,
        ask: Ask,
        x: &[f32],
        work: &mut [f32],
        out: &mut Response,
    ) -> Result<(), ErrorCode>;
    /// Answers `ask` for the samples `xs` (whole samples, `work` at least one
    /// workspace) with the model's code for pairs of samples, emitting each response as
    /// [`answer`] does; `None` (the default) for a model without such code.
    fn answer_pairs(
        &self,
        _ask: Ask,
        _xs: &[f32],
        _work: &mut [f32],
        _out: &mut Response,
        _emit: &mut dyn FnMut(&Response),
    ) -> Option<Result<(), InferError>> {
        None
    }
}

/// [`Answers`]' per-sample methods over the inherent `shape`, `work_len`, `segment` and
/// `encode` of the model type `$model` (the `f32` and the int8 model have these alike,
/// with no trait between them).
macro_rules! one_sample_answers {
    ($model:ident) => {
        fn input(&self) -> usize {
            self.shape().input
        }
        fn work_len(&self) -> usize {
            $model::work_len(self)
        }
        /// The model's `segment` / `encode`.
        fn answer_one(
            &self,
            ask: Ask,
            x: &[f32],
            work: &mut [f32],
            out: &mut Response,
        ) -> Result<(), ErrorCode> {
            match ask {
                Ask::Segment => set_segmented(out, &self.segment(x, work)?),
                Ask::Encode => set_encoded(out, &self.encode(x, work)?),
            }
        }
    };
}

impl<S: AsRef<[f32]>> Answers for Model<f32, S> {
    one_sample_answers!(Model);
    /// [`Model::segment_batch`] / [`Model::encode_batch`]: two samples at a time when
    /// `work` holds two workspaces.
    fn answer_pairs(
        &self,
        ask: Ask,
        xs: &[f32],
        work: &mut [f32],
        out: &mut Response,
        emit: &mut dyn FnMut(&Response),
    ) -> Option<Result<(), InferError>> {
        Some(match ask {
            Ask::Segment => self.segment_batch(xs, work, |_, r| {
                let r = r
                    .map_err(ErrorCode::from)
                    .and_then(|s| set_segmented(out, &s));
                reply(r, out, emit)
            }),
            Ask::Encode => self.encode_batch(xs, work, |_, r| {
                let r = r
                    .map_err(ErrorCode::from)
                    .and_then(|e| set_encoded(out, &e));
                reply(r, out, emit)
            }),
        })
    }
}

impl<W: AsRef<[i8]>, I: AsRef<[i32]>, F: AsRef<[f32]>> Answers for QuantModel<W, I, F> {
    one_sample_answers!(QuantModel);
}

/// Answers `ask` for the samples `xs` with `model`, calling `emit` with each response.
/// `out` is where the responses are built (in place: a [`Response`] is about 1.3 KiB,
/// too big to move around, or to keep as a constant, on a small device); `work` holds
/// one model workspace ([`Answers::work_len`]), or two for pairs; a shorter one is one
/// `BufferLength` error for the request. `PAIRS`: with the model's code for pairs of
/// samples where it has some ([`Answers::answer_pairs`]), else one sample at a time.
/// Cost: `n` calls of the model.
pub fn answer<M: Answers + ?Sized, const PAIRS: bool>(
    ask: Ask,
    model: &M,
    xs: &[f32],
    work: &mut [f32],
    out: &mut Response,
    emit: &mut dyn FnMut(&Response),
) {
    let Some(d) = acceptable(model.input(), model.work_len(), xs, work, out, emit) else {
        return;
    };
    if PAIRS {
        if let Some(r) = model.answer_pairs(ask, xs, work, out, emit) {
            // Checked by `acceptable`: whole samples and a long enough workspace.
            if let Err(e) = r {
                reply(Err(e.into()), out, emit);
            }
            return;
        }
    }
    for x in xs.chunks_exact(d.get()) {
        let r = model.answer_one(ask, x, work, out);
        reply(r, out, emit);
    }
}

/// The length of a sample when `xs` is a whole, non-zero number of samples of `d` values
/// and `work` holds at least one workspace of `work_len` values; otherwise emits one
/// error (`InputLength`, `BufferLength`) and gives `None`.
fn acceptable(
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
