//! What the checks share: the device under test (`cluster` under qemu, through the
//! toolkit's client), the model it was built with, the inputs and the other weights the
//! checks send, and the helpers that compare the device's answers with the core on the
//! host.

use hvae::protocol::{DeviceInfo, Response, MAX_SAMPLE};
use hvae::Model;
use hvae::Shape;
use hvae_devkit::{Device, DeviceError, Launch, Qemu, Timeouts};
use std::time::Duration;

/// Why a check failed, and whether the checks after it can still run.
#[derive(Debug)]
pub struct Failure {
    /// The reason, in one line.
    pub reason: String,
    /// The device is gone or stuck (no answer, a cut answer, a closed line): the checks
    /// after this one cannot run.
    pub ends_run: bool,
}

impl From<DeviceError> for Failure {
    fn from(e: DeviceError) -> Failure {
        let ends_run = matches!(
            e,
            DeviceError::Stalled { .. }
                | DeviceError::Cut { .. }
                | DeviceError::Closed { .. }
                | DeviceError::Send { .. }
        );
        Failure {
            reason: e.to_string(),
            ends_run,
        }
    }
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure {
            reason,
            ends_run: false,
        }
    }
}

/// Fails with `detail()` unless `ok`.
pub fn ensure(ok: bool, detail: impl FnOnce() -> String) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(detail().into())
    }
}

/// A sample (or several, one after the other) as a request carries it.
pub fn sample(v: &[f32]) -> heapless::Vec<f32, MAX_SAMPLE> {
    heapless::Vec::from_slice(v).expect("sample fits MAX_SAMPLE")
}

/// The device, and what its answers are checked against.
pub struct Fixture {
    /// The session with the device.
    pub dev: Device,
    /// The emulator, kept alive for the session.
    _qemu: Qemu,
    /// The ELF under test (its sizes are checked against the device's report).
    pub elf: String,
    /// The model's shape.
    pub shape: Shape,
    /// The model's parameters, as compiled into the firmware.
    pub params: Vec<f32>,
    /// Their blob's CRC.
    pub crc: u32,
    /// Other weights of the same shape (the encoder and the rest negated), to load.
    pub new_params: Vec<f32>,
    /// Their blob.
    pub new_blob: Vec<u8>,
    /// Its CRC.
    pub new_crc: u32,
    /// The inputs the checks send.
    pub xs: Vec<Vec<f32>>,
    /// The flash budget in bytes, if given.
    pub flash_budget: Option<u32>,
    /// The RAM budget in bytes (static + peak stack), if given.
    pub ram_budget: Option<u32>,
    /// The device's info, once asked.
    info: Option<DeviceInfo>,
    /// The int8 model the device serves (`probe --int8 BLOB`), as the host reads it.
    int8: Option<Int8Model>,
    /// Its blob's CRC (0 without one).
    pub int8_crc: u32,
    /// Another int8 model of the same shape (the weights negated: other answers), its
    /// blob and the blob's CRC, for the loading checks.
    int8_new: Option<(Int8Model, Vec<u8>, u32)>,
}

/// Which int8 model the device should be answering with.
#[derive(Clone, Copy, Debug)]
pub enum Int8Weights {
    /// The one it was built with (`probe --int8 BLOB`).
    Original,
    /// The other one the loading checks send.
    New,
}

/// An int8 model read from its blob.
pub type Int8Model = hvae::QuantModel<Vec<i8>, Vec<i32>, Vec<f32>>;

impl Fixture {
    /// Starts `launch` (the `cluster` firmware built with the model `blob_path`) and
    /// prepares what the checks compare it with.
    pub fn start(
        launch: &Launch,
        blob_path: &str,
        int8_path: Option<&str>,
        (flash_budget, ram_budget): (Option<u32>, Option<u32>),
    ) -> Result<Fixture, String> {
        let (shape, params, crc) = crate::read_blob(blob_path)?;
        let (int8, int8_crc) = match int8_path {
            Some(p) => {
                let (q, c) = read_int8(p, &shape)?;
                (Some(q), c)
            }
            None => (None, 0),
        };
        let int8_new = match &int8 {
            Some(q) => {
                let w: Vec<i8> = q.weights().iter().map(|v| -v).collect();
                let n = hvae::QuantModel::new(shape, w, q.ints().to_vec(), q.floats().to_vec())
                    .map_err(|e| e.to_string())?;
                let b = int8_blob_of(&n)?;
                let c = hvae::store::blob::crc32(&b[..b.len() - 4]);
                Some((n, b, c))
            }
            None => None,
        };
        let new_params: Vec<f32> = params
            .iter()
            .enumerate()
            .map(|(i, v)| if i >= shape.encoder_offset() { -v } else { *v })
            .collect();
        let new_blob = blob_of(&shape, &new_params)?;
        let new_crc = hvae::store::blob::crc32(&new_blob[..new_blob.len() - 4]);
        let (qemu, link) = launch.connect()?;
        // Generous: qemu with -icount on a loaded machine.
        let timeouts = Timeouts {
            first: Duration::from_secs(30),
            answer: Duration::from_secs(30),
            train: Duration::from_secs(60),
        };
        Ok(Fixture {
            dev: Device::new(link, timeouts),
            _qemu: qemu,
            elf: launch.elf().display().to_string(),
            xs: inputs(24, shape.input),
            shape,
            params,
            crc,
            new_params,
            new_blob,
            new_crc,
            flash_budget,
            ram_budget,
            info: None,
            int8,
            int8_crc,
            int8_new,
        })
    }

    /// The int8 model the device serves (`probe --int8 BLOB`).
    pub fn int8(&self) -> Result<&Int8Model, Failure> {
        self.int8
            .as_ref()
            .ok_or_else(|| "no --int8 blob given".to_string().into())
    }

    /// The int8 model `which`, its blob and the blob's CRC.
    pub fn int8_of(&self, which: Int8Weights) -> Result<(Int8Model, Vec<u8>, u32), Failure> {
        match which {
            Int8Weights::Original => {
                let q = self.int8()?.clone();
                let b = int8_blob_of(&q)?;
                Ok((q, b, self.int8_crc))
            }
            Int8Weights::New => self
                .int8_new
                .clone()
                .ok_or_else(|| "no --int8 blob given".to_string().into()),
        }
    }

    /// The original weights' model on the host.
    pub fn model(&self) -> Result<Model<f32, &[f32]>, String> {
        Model::new(self.shape, &self.params[..]).map_err(|e| e.to_string())
    }

    /// Asks the device for its info (an `Info` request, answered as such).
    pub fn ask_info(&mut self) -> Result<DeviceInfo, Failure> {
        let info = self.dev.info()?;
        self.info = Some(info);
        Ok(info)
    }

    /// Remembers the info the session started with.
    pub fn set_info(&mut self, info: DeviceInfo) {
        self.info = Some(info);
    }

    /// The device's info: as last answered, or asked now.
    pub fn info(&mut self) -> Result<DeviceInfo, Failure> {
        match &self.info {
            Some(i) => Ok(*i),
            None => self.ask_info(),
        }
    }

    /// How many samples the batch checks send in one request: as many as the device's
    /// receive buffer takes, at most 4, at least 2 (or the batch checks fail: they put a
    /// bad sample second).
    pub fn batch(&mut self) -> Result<usize, Failure> {
        let info = self.info()?;
        let per = hvae::protocol::max_samples(info.max_frame as usize, self.shape.input);
        ensure(per >= 2, || {
            format!(
                "max_frame {} takes {per} samples, not a batch",
                info.max_frame
            )
        })?;
        Ok(per.min(4))
    }

    /// Segments the first `n` inputs on the device one by one and compares the answers
    /// with the core on the host with weights `params`: labels and output lengths must
    /// be equal; returns the largest relative difference of the outputs.
    pub fn segments_against(&mut self, params: Weights, n: usize) -> Result<f32, Failure> {
        let shape = self.shape;
        let p = match params {
            Weights::Original => &self.params,
            Weights::New => &self.new_params,
        };
        let model = Model::new(shape, &p[..]).map_err(|e| e.to_string())?;
        let mut work = vec![0.0f32; shape.work_len()];
        let mut max_err = 0.0f32;
        for x in &self.xs[..n] {
            let want = model.segment(x, &mut work).map_err(|e| e.to_string())?;
            let got = self.dev.segment(x)?;
            if got.label != want.label {
                return Err(format!("label {}, host says {}", got.label, want.label).into());
            }
            if got.probs.len() != shape.clusters || got.mu.len() != shape.latent {
                return Err("wrong output lengths".to_string().into());
            }
            let pairs = got
                .probs
                .iter()
                .zip(want.probs)
                .chain(got.mu.iter().zip(want.mu))
                .chain([(&got.cosine, &want.cosine), (&got.kappa, &want.kappa)]);
            for (a, b) in pairs {
                // kappa can be large: compare it relatively.
                let e = (a - b).abs() / b.abs().max(1.0);
                max_err = max_err.max(e);
            }
        }
        Ok(max_err)
    }

    /// Loads `blob` with the client (in `MAX_CHUNK` pieces); returns the device's final
    /// answer: `Loaded`, or the error answer that stopped the load.
    pub fn load(&mut self, blob: &[u8]) -> Result<Response, Failure> {
        match self.dev.load_weights(blob) {
            Ok(weights_crc) => Ok(Response::Loaded { weights_crc }),
            Err(DeviceError::Refused { code, .. }) => Ok(Response::Error(code)),
            Err(e) => Err(e.into()),
        }
    }
}

/// Which weights the host compares the device with.
#[derive(Clone, Copy, Debug)]
pub enum Weights {
    /// The model compiled into the firmware.
    Original,
    /// [`Fixture::new_params`].
    New,
}

/// A weight blob of `params`.
pub fn blob_of(shape: &Shape, params: &[f32]) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; hvae::store::blob::blob_len(shape)];
    hvae::store::blob::write(shape, params, &mut b).map_err(|e| e.to_string())?;
    Ok(b)
}

/// The int8 blob of `q`.
pub fn int8_blob_of(q: &Int8Model) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; hvae::store::blob::int8_blob_len(q.shape())];
    hvae::store::blob::write_int8(q, &mut b).map_err(|e| e.to_string())?;
    Ok(b)
}

/// The int8 blob at `path` (of the model `shape`: `--blob`'s) and its CRC.
fn read_int8(path: &str, shape: &Shape) -> Result<(Int8Model, u32), String> {
    use hvae::infer::quant::{float_len, int_len, weight_len};
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let (mut w, mut n, mut f) = (
        vec![0i8; weight_len(shape)],
        vec![0i32; int_len(shape)],
        vec![0.0f32; float_len(shape)],
    );
    let crc = hvae::store::blob::read_int8(&bytes, shape, &mut w, &mut n, &mut f)
        .map_err(|e| format!("{path}: {e}"))?;
    let q = hvae::QuantModel::new(*shape, w, n, f).map_err(|e| format!("{path}: {e}"))?;
    Ok((q, crc))
}

/// Inputs of the checks: deterministic, in the range of digits pixels, reaching every
/// pixel (a pseudo-random sequence, not data: the device must agree on any input).
fn inputs(n: usize, d: usize) -> Vec<Vec<f32>> {
    let mut s: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            (0..d)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    (s % 17) as f32 / 16.0
                })
                .collect()
        })
        .collect()
}
