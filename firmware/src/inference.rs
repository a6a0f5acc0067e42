//! The engine of the inference program (`cluster`): the core's ([`hvae::device`]) with
//! the `INFER` capabilities, the weights in flash ([`FlashWeights`]: compiled in or in a
//! slot, and the two slots a load fills), no buffers, no training state, one model
//! workspace (samples one at a time: the pair kernels take more flash than the image
//! has).

use crate::board::Flash;
use crate::learning::NoBuffers;
use crate::weights::{Active, FlashWeights, SHAPE};
use hvae::device::{Engine, CAP, INFER};
use hvae::protocol::{max_request_frame, max_response_frame};
use hvae::Model;

/// Most samples in one `Segment` or `Encode` request: four, a quarter of the round
/// trips of one at a time, for 768 bytes more receive buffer.
pub const BATCH: usize = 4;
/// Receive buffer: the longest request frame (a `LoadWeights` chunk or [`BATCH`]
/// samples; longer frames are `Oversized`).
pub const RX_FRAME: usize = max_request_frame(BATCH * SHAPE.input);
/// Transmit buffer: the longest response frame of this model.
pub const TX_FRAME: usize = max_response_frame(SHAPE.clusters, SHAPE.latent);
/// One model workspace.
pub const WORK_LEN: usize = SHAPE.work_len();

/// The inference engine: it trains nothing, so it keeps no training state (`()`).
pub type InferEngine = Engine<
    { SHAPE.input },
    WORK_LEN,
    Model<f32, FlashWeights<Flash>>,
    NoBuffers,
    INFER,
    CAP,
    f32,
    (),
>;

/// The inference engine running `active`, built in `slot` (where it stays: it holds a
/// model workspace and the weight loader, which a small device does not have twice).
pub fn engine(
    slot: &mut Option<InferEngine>,
    active: Active,
) -> Result<&mut InferEngine, &'static str> {
    let crc = active.blob_crc;
    let model = Model::new(SHAPE, FlashWeights::new(active, Flash::new()))
        .map_err(|_| "the weights are not a model")?;
    InferEngine::new_in(slot, model, crc, NoBuffers, RX_FRAME)
        .map_err(|_| "the engine refuses the model")
}
