//! Training: the loss and its hand-written gradient, the optimisers, spherical k-means,
//! and the two trainers that run on a device.
//!
//! | module | what it holds |
//! |---|---|
//! | [`loss`] | the loss of one batch and its gradient |
//! | [`optim`] | SGD with momentum and Adam over caller-owned state |
//! | [`centres`] | online k-means of a trained segmenter's centres (no gradient) |
//! | [`kmeans`] | spherical k-means++ (centre initialisation, host baseline) |
//! | [`samples`] | the trainer's memory of past samples: ring or reservoir, scalars or bytes |
//! | [`trainer`] | [`OnlineTrainer`](trainer::OnlineTrainer): learning from a stream with fixed memory |
//! | [`adapt`] | [`SegmenterAdapter`](adapt::SegmenterAdapter): the clusters alone, the encoder frozen in flash |

pub mod adapt;
pub mod centres;
pub mod kmeans;
pub mod loss;
pub mod optim;
pub mod samples;
pub mod trainer;
