//! The firmware's `learn` engine ([`super::learn`]) on the host: heap buffers capped at
//! the device's sizes, and a simulated learning device in a thread.

use super::learn::{checkpoint_slot_len, optim_len, scratch_len, Learner, Store};
use super::link::Link;
use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
use hvae::checkpoint::Checkpoints;
use hvae::model::VecModel;
use hvae::protocol::{
    encode, FrameDecoder, Request, Response, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME,
};
use hvae::Shape;
use std::io::{Read, Write};

/// Inputs of the models the host reference runs: the firmware's (the digits' 8x8 pixels).
/// The engine's input size is a compile-time constant, as on the device.
pub const INPUTS: usize = 64;
/// Workspace of the host engine (the device's is two `Shape::work_len`s; a workspace
/// of two or more makes `Segment` requests go two samples at a time, with the same
/// results).
pub const WORK: usize = 8192;

/// NOR flash in memory, with the firmware's geometry (1 KiB pages, word writes): a
/// write can only clear bits, as on the real part.
#[derive(Debug)]
pub struct RamFlash(pub Vec<u8>);

impl ErrorType for RamFlash {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorFlashErrorKind> {
        let at = offset as usize;
        let src = self
            .0
            .get(at..at + bytes.len())
            .ok_or(NorFlashErrorKind::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.0.len()
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), NorFlashErrorKind> {
        let r = self
            .0
            .get_mut(from as usize..to as usize)
            .ok_or(NorFlashErrorKind::OutOfBounds)?;
        r.fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorFlashErrorKind> {
        let at = offset as usize;
        let dst = self
            .0
            .get_mut(at..at + bytes.len())
            .ok_or(NorFlashErrorKind::OutOfBounds)?;
        for (d, s) in dst.iter_mut().zip(bytes) {
            *d &= *s;
        }
        Ok(())
    }
}

/// Heap buffers no larger than the device's static ones, and checkpoint slots in a
/// [`RamFlash`] of the device's size.
#[derive(Debug)]
pub struct HostStore {
    scratch: usize,
    optim: usize,
    /// The checkpoint slots.
    pub checkpoints: Checkpoints<RamFlash>,
}

impl HostStore {
    /// A store sized as the firmware's for `shape`.
    pub fn new(shape: &Shape) -> Result<HostStore, String> {
        let slot = checkpoint_slot_len::<RamFlash>(shape);
        let flash = RamFlash(vec![0xFF; 2 * slot]);
        let checkpoints = Checkpoints::new(flash, 0, slot as u32)
            .map_err(|e| format!("checkpoint slots: {e:?}"))?;
        Ok(HostStore {
            scratch: scratch_len(shape),
            optim: optim_len(shape),
            checkpoints,
        })
    }
}

impl Store for HostStore {
    type Buf = Vec<f32>;
    type Flash = RamFlash;
    fn take(&mut self, scratch: usize, optim: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        (scratch <= self.scratch && optim <= self.optim)
            .then(|| (vec![0.0; scratch], vec![0.0; optim]))
    }
    fn checkpoints(&mut self) -> Option<&mut Checkpoints<RamFlash>> {
        Some(&mut self.checkpoints)
    }
}

/// The engine on the host.
pub type HostLearner = Learner<INPUTS, WORK, Vec<f32>, HostStore>;

/// The engine for `model` (weights CRC `crc`), or why the host cannot run it.
pub fn host_learner(model: VecModel<f32>, crc: u32) -> Result<HostLearner, String> {
    let shape = *model.shape();
    if shape.input != INPUTS || shape.work_len() > WORK || !model.has_decoder() {
        return Err(format!(
            "the host reference of the learn engine runs models of {INPUTS} inputs with their \
             decoder (this one has {} inputs)",
            shape.input
        ));
    }
    let store = HostStore::new(&shape)?;
    Learner::new(model, crc, store, MAX_REQUEST_FRAME)
        .map_err(|e| format!("the learn engine refuses the model: {e}"))
}

/// A simulated learning device: `learner` served in a thread over in-memory pipes.
pub fn spawn(mut learner: HostLearner) -> std::io::Result<Link> {
    let (mut req_rx, req_tx) = std::io::pipe()?;
    let (resp_rx, mut resp_tx) = std::io::pipe()?;
    std::thread::spawn(move || {
        let mut decoder = FrameDecoder::<MAX_REQUEST_FRAME>::new();
        let mut buf = [0u8; 1024];
        let mut out = vec![0u8; MAX_RESPONSE_FRAME];
        loop {
            let n = match req_rx.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (used, got) = decoder.feed::<Request>(rest);
                rest = &rest[used..];
                let resp = match got {
                    None => continue,
                    Some(Ok(req)) => {
                        let mut resps = Vec::new();
                        learner.handle_each(&req, &mut |r| resps.push(r.clone()));
                        resps
                    }
                    Some(Err(e)) => vec![Response::Error(e.into())],
                };
                for resp in &resp {
                    let Ok(frame) = encode(resp, &mut out) else {
                        return;
                    };
                    if resp_tx
                        .write_all(frame)
                        .and_then(|()| resp_tx.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    Ok(Link::new("simulated learning device", resp_rx, req_tx))
}
