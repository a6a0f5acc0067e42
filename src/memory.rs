//! Exact RAM a model needs, so a firmware can reserve it and a host can report it.
//!
//! Every buffer the crate touches is counted here from the same `const fn`s that size
//! the buffers, so the numbers cannot drift from the code. Stack frames of the calls
//! themselves are not included (they hold only scalars and slice headers; measure the
//! peak stack on the target by stack painting).
//!
//! ```
//! use hvae::memory::{Memory};
//! use hvae::train::optim::OptimKind;
//! use hvae::{Scope, Shape};
//! const DIGITS: Shape = Shape::new(64, &[32], 8, 10);
//! // Inference: encoder + segmenter + normalisation weights, and one workspace.
//! const INFER: usize = Memory::inference::<f32>(&DIGITS).total();
//! assert_eq!(INFER, 4 * (DIGITS.inference_param_len() + DIGITS.work_len()));
//! let full_adam = Memory::training::<f32>(&DIGITS, Scope::Full, OptimKind::Adam, 8, 64);
//! let seg_only = Memory::training::<f32>(&DIGITS, Scope::SegmenterOnly, OptimKind::Adam, 8, 64);
//! assert!(seg_only.total() < full_adam.total());
//! ```

use crate::shape::{Scope, Shape};
use crate::train::optim::OptimKind;
use crate::train::trainer::TrainConfig;

/// Bytes by purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Memory {
    /// Parameters (the inference prefix, or the whole vector when training).
    pub params: usize,
    /// The per-sample workspace ([`Shape::work_len`]); for training it is part of
    /// `scratch`.
    pub workspace: usize,
    /// Optimiser state (moments).
    pub optimiser: usize,
    /// Trainer scratch ([`TrainConfig::storage_len`]: gradient, marginal, workspace,
    /// batch cache and rows, k-means buffers).
    pub scratch: usize,
    /// The trainer's sample ring buffer and k-means labels.
    pub samples: usize,
}

impl Memory {
    /// Inference only (`encode`, `segment`): the parameters without the decoder and one
    /// workspace.
    pub const fn inference<T>(shape: &Shape) -> Memory {
        let s = core::mem::size_of::<T>();
        Memory {
            params: s * shape.inference_param_len(),
            workspace: s * shape.work_len(),
            optimiser: 0,
            scratch: 0,
            samples: 0,
        }
    }

    /// An [`OnlineTrainer`](crate::train::trainer::OnlineTrainer) with `batch` anchors and a
    /// ring buffer of `cap` samples, training `scope` with optimiser `kind`, plus the
    /// full parameter vector it trains.
    pub const fn training<T>(
        shape: &Shape,
        scope: Scope,
        kind: OptimKind,
        batch: usize,
        cap: usize,
    ) -> Memory {
        let s = core::mem::size_of::<T>();
        let params = match scope {
            // Adapting the segmenter needs no decoder weights.
            Scope::SegmenterOnly => shape.inference_param_len(),
            _ => shape.param_len(),
        };
        Memory {
            params: s * params,
            workspace: 0,
            optimiser: s * TrainConfig::<f32>::optim_len(shape, scope, kind) + 4,
            scratch: s * TrainConfig::<f32>::storage_len(shape, scope, batch, cap),
            samples: s * cap * shape.input + cap,
        }
    }

    /// Sum of every part.
    pub const fn total(&self) -> usize {
        self.params + self.workspace + self.optimiser + self.scratch + self.samples
    }
}
