//! `probe ELF --machine M --blob MODEL.hvae [--flash-budget B] [--ram-budget B]`:
//! the protocol conformance test of the `cluster` firmware under qemu, and its budgets
//! (flash, RAM).
//!
//! qemu is started with the board's UART0 on a TCP socket this program listens on
//! (`-serial tcp:127.0.0.1:PORT`); semihosting output (the firmware's defmt log) goes to
//! qemu's stdout, which this program decodes (`crate::defmt_log`) and prints among the
//! checks. Every check prints one line; the first failure ends the run with its reason.

use hvae::model::Model;
use hvae::protocol::{
    encode, ErrorCode, FrameDecoder, Request, Response, MAX_CHUNK, MAX_RESPONSE_FRAME, MAX_SAMPLE,
    MAX_VALUES,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

/// A started qemu with its UART connected; killed when dropped.
struct Device {
    qemu: Child,
    uart: TcpStream,
    rx: Box<FrameDecoder<MAX_RESPONSE_FRAME>>,
    /// Prints the firmware's decoded log (qemu's stdout) until qemu ends.
    log: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        // The rest of the log, before whatever this program prints next.
        if let Some(t) = self.log.take() {
            let _ = t.join();
        }
    }
}

impl Device {
    fn start(elf: &str, machine: &str) -> Result<Device, String> {
        let cpu = crate::run::cpu(machine)?;
        // The ELF's defmt table decodes the log.
        let bytes = std::fs::read(elf).map_err(|e| format!("{elf}: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let serial = format!("tcp:127.0.0.1:{port}");
        let mut qemu = crate::run::qemu(machine, cpu, &serial, elf)?;
        let log = qemu.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let r = crate::defmt_log::decode(&bytes, &mut out, |l| println!("{l}"));
                if let Err(e) = r {
                    eprintln!("the firmware's log cannot be decoded: {e}");
                    // Read on: qemu must not block on a full pipe.
                    let _ = std::io::copy(&mut out, &mut std::io::sink());
                }
            })
        });
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let uart = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Ok(Some(st)) = qemu.try_wait() {
                        return Err(format!("qemu exited before connecting: {st}"));
                    }
                    if Instant::now() > deadline {
                        let _ = qemu.kill();
                        return Err("qemu did not connect to the UART socket in 20 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    let _ = qemu.kill();
                    return Err(e.to_string());
                }
            }
        };
        uart.set_nonblocking(false).map_err(|e| e.to_string())?;
        uart.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        uart.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Device {
            qemu,
            uart,
            rx: Box::new(FrameDecoder::new()),
            log,
        })
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.uart
            .write_all(bytes)
            .map_err(|e| format!("UART write: {e}"))
    }

    fn send(&mut self, req: &Request) -> Result<(), String> {
        let mut buf = vec![0u8; hvae::protocol::MAX_REQUEST_FRAME + 16];
        let frame = encode(req, &mut buf).map_err(|e| format!("encode: {e}"))?;
        let frame = frame.to_vec();
        self.send_raw(&frame)
    }

    /// The next response frame.
    fn recv(&mut self) -> Result<Response, String> {
        let mut byte = [0u8; 1];
        loop {
            match self.uart.read(&mut byte) {
                Ok(1) => {}
                Ok(_) => return Err("the device closed the UART".into()),
                Err(e) => return Err(format!("no answer from the device: {e}")),
            }
            if let Some(r) = self.rx.push::<Response>(byte[0]) {
                return r.map_err(|e| format!("undecodable response frame: {e}"));
            }
        }
    }

    fn ask(&mut self, req: &Request) -> Result<Response, String> {
        self.send(req)?;
        self.recv()
    }

    /// Sends `req` and reads `n` answers (a request of `n` samples).
    fn ask_n(&mut self, req: &Request, n: usize) -> Result<Vec<Response>, String> {
        self.send(req)?;
        (0..n).map(|_| self.recv()).collect()
    }
}

fn check(ok: bool, what: &str, detail: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        println!("  ok   {what}");
        Ok(())
    } else {
        Err(format!("{what}: {}", detail()))
    }
}

fn expect_error(got: &Response, want: ErrorCode, what: &str) -> Result<(), String> {
    check(*got == Response::Error(want), what, || {
        format!("expected Error({want:?}), got {got:?}")
    })
}

fn sample(v: &[f32]) -> heapless::Vec<f32, MAX_SAMPLE> {
    heapless::Vec::from_slice(v).expect("sample fits MAX_SAMPLE")
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

/// Compares the device's segment answers with the core on the host.
fn check_segments(
    dev: &mut Device,
    model: &Model<f32, &[f32]>,
    xs: &[Vec<f32>],
) -> Result<f32, String> {
    let shape = *model.shape();
    let mut work = vec![0.0f32; shape.work_len()];
    let mut max_err = 0.0f32;
    for x in xs {
        let want = model.segment(x, &mut work).map_err(|e| e.to_string())?;
        match dev.ask(&Request::Segment { sample: sample(x) })? {
            Response::Segmented {
                label,
                probs,
                cosine,
                mu,
                kappa,
            } => {
                if usize::from(label) != want.label {
                    return Err(format!("label {label}, host says {}", want.label));
                }
                let pairs = probs
                    .iter()
                    .zip(want.probs)
                    .chain(mu.iter().zip(want.mu))
                    .chain([(&cosine, &want.cosine), (&kappa, &want.kappa)]);
                for (a, b) in pairs {
                    // kappa can be large: compare it relatively.
                    let e = (a - b).abs() / b.abs().max(1.0);
                    max_err = max_err.max(e);
                }
                if probs.len() != shape.clusters || mu.len() != shape.latent {
                    return Err("wrong output lengths".into());
                }
            }
            other => return Err(format!("Segment answered {other:?}")),
        }
    }
    Ok(max_err)
}

/// Sends `blob` in `MAX_CHUNK` pieces; returns the final answer (or the first error).
fn load(dev: &mut Device, blob: &[u8]) -> Result<Response, String> {
    let chunks: Vec<&[u8]> = blob.chunks(MAX_CHUNK).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let r = dev.ask(&Request::LoadWeights {
            offset: (i * MAX_CHUNK) as u32,
            bytes: heapless::Vec::from_slice(c).expect("chunk fits"),
            last,
        })?;
        if last || r != Response::Ack {
            return Ok(r);
        }
    }
    Err("empty blob".into())
}

/// Reads the device's first `n` parameters.
fn read_weights(dev: &mut Device, n: usize) -> Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let count = (n - out.len()).min(MAX_VALUES);
        match dev.ask(&Request::ReadWeights {
            offset: out.len() as u32,
            count: count as u16,
        })? {
            Response::Weights { offset, values } if offset as usize == out.len() => {
                out.extend_from_slice(&values)
            }
            other => return Err(format!("ReadWeights answered {other:?}")),
        }
    }
    Ok(out)
}

fn blob_of(shape: &hvae::Shape, params: &[f32]) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; hvae::blob::blob_len(shape)];
    hvae::blob::write(shape, params, &mut b).map_err(|e| e.to_string())?;
    Ok(b)
}

pub fn run(args: &[String]) -> Result<(), String> {
    let elf = args.first().ok_or("probe: ELF path missing")?;
    let machine = crate::flag(args, "--machine").unwrap_or("mps2-an386");
    let blob_path = crate::flag(args, "--blob").ok_or("probe: --blob MODEL.hvae missing")?;
    let budget = |name| -> Result<Option<u32>, String> {
        crate::flag(args, name)
            .map(|v| v.parse().map_err(|_| format!("{name}: not a number")))
            .transpose()
    };
    let (flash_budget, ram_budget) = (budget("--flash-budget")?, budget("--ram-budget")?);
    let (shape, params, crc) = crate::read_blob(blob_path)?;
    let infer_len = shape.inference_param_len();
    let model = Model::new(shape, &params[..]).map_err(|e| e.to_string())?;
    println!("probe: {elf} on {machine}");
    let mut dev = Device::start(elf, machine)?;

    // A lone 0x00 first: flushes anything half-received (the protocol allows it).
    dev.send_raw(&[0])?;
    let info = match dev.ask(&Request::Info)? {
        Response::Info(i) => i,
        other => return Err(format!("Info answered {other:?}")),
    };
    check(
        info.shape.to_shape() == Some(shape)
            && info.weights_crc == crc
            && info.params_held as usize == infer_len,
        "Info: the model's shape, CRC and the inference prefix only",
        || format!("{info:?}"),
    )?;

    let xs = inputs(24, shape.input);
    let err = check_segments(&mut dev, &model, &xs)?;
    check(
        err <= 1e-5,
        "Segment: 24 inputs, labels equal, outputs within 1e-5 of the host",
        || format!("max error {err:e}"),
    )?;
    println!("       max relative error {err:e}");
    let mut work = vec![0.0f32; shape.work_len()];
    let e = model.encode(&xs[0], &mut work).map_err(|e| e.to_string())?;
    let r = dev.ask(&Request::Encode {
        sample: sample(&xs[0]),
    })?;
    check(
        matches!(&r, Response::Encoded { mu, kappa } if mu.iter().zip(e.mu).all(|(a, b)| (a - b).abs() <= 1e-5) && (kappa - e.kappa).abs() <= 1e-5 * e.kappa.max(1.0)),
        "Encode: mu and kappa as on the host",
        || format!("{r:?}"),
    )?;

    // Batches: several samples per request, one answer each, the bits of single
    // requests; a bad sample fails alone.
    let per = hvae::protocol::max_samples(info.max_frame as usize, shape.input);
    check(
        per >= 2,
        "Info: the receive buffer takes several samples per request",
        || format!("max_frame {} = {per} samples", info.max_frame),
    )?;
    let n = per.min(4);
    let mut singles = Vec::new();
    for x in &xs[..n] {
        singles.push(dev.ask(&Request::Segment { sample: sample(x) })?);
    }
    let mut batch: Vec<f32> = xs[..n].concat();
    let answers = dev.ask_n(
        &Request::Segment {
            sample: sample(&batch),
        },
        n,
    )?;
    check(
        answers == singles,
        &format!("Segment of {n} samples: {n} answers, each as the sample alone"),
        || format!("{answers:?}"),
    )?;
    batch[shape.input + 3] = f32::NAN;
    let answers = dev.ask_n(
        &Request::Segment {
            sample: sample(&batch),
        },
        n,
    )?;
    let mut want = singles.clone();
    want[1] = Response::Error(ErrorCode::NonFiniteInput);
    check(
        answers == want,
        "... a NaN in the second sample: NonFiniteInput for it, the others answered",
        || format!("{answers:?}"),
    )?;
    let mut singles = Vec::new();
    for x in &xs[..n] {
        singles.push(dev.ask(&Request::Encode { sample: sample(x) })?);
    }
    let answers = dev.ask_n(
        &Request::Encode {
            sample: sample(&xs[..n].concat()),
        },
        n,
    )?;
    check(
        answers == singles,
        &format!("Encode of {n} samples: {n} answers, each as the sample alone"),
        || format!("{answers:?}"),
    )?;
    let r = dev.ask(&Request::Segment {
        sample: sample(&xs[..2].concat()[..shape.input + 1]),
    })?;
    expect_error(
        &r,
        ErrorCode::InputLength,
        "Segment of a sample and a bit: one InputLength answer",
    )?;

    // Bad input: typed errors.
    let r = dev.ask(&Request::Segment {
        sample: sample(&xs[0][..shape.input - 1]),
    })?;
    expect_error(
        &r,
        ErrorCode::InputLength,
        "Segment of D-1 values: InputLength",
    )?;
    let mut bad = xs[0].clone();
    bad[5] = f32::NAN;
    let r = dev.ask(&Request::Encode {
        sample: sample(&bad),
    })?;
    expect_error(
        &r,
        ErrorCode::NonFiniteInput,
        "Encode with a NaN: NonFiniteInput",
    )?;
    let r = dev.ask(&Request::TrainBatch {
        samples: sample(&[]),
        steps: 1,
        settings: None,
    })?;
    expect_error(
        &r,
        ErrorCode::Unsupported,
        "TrainBatch on the inference firmware: Unsupported",
    )?;

    // Bad frames: one error answer each, and the device keeps serving.
    dev.send_raw(&[0x05, 0x01, 0x00])?; // COBS says 4 bytes follow, frame ends after 1
    let r = dev.recv()?;
    expect_error(
        &r,
        ErrorCode::BadEncoding,
        "frame that is not COBS: BadEncoding",
    )?;
    dev.send_raw(&[0x02, 0x63, 0x00])?; // request variant 99
    let r = dev.recv()?;
    expect_error(
        &r,
        ErrorCode::Malformed,
        "unknown request variant: Malformed",
    )?;
    let mut buf = [0u8; 1200];
    let full = encode(
        &Request::Segment {
            sample: sample(&xs[0]),
        },
        &mut buf,
    )
    .map_err(|e| e.to_string())?
    .to_vec();
    // Re-frame the first half of the message: a truncated request.
    let mut body = full[..full.len() - 1].to_vec();
    let n = cobs::decode_in_place(&mut body).map_err(|_| "cobs".to_string())?;
    let mut cut = vec![0u8; n];
    let k = cobs::encode(&body[..n / 2], &mut cut);
    cut.truncate(k);
    cut.push(0);
    dev.send_raw(&cut)?;
    let r = dev.recv()?;
    expect_error(&r, ErrorCode::Truncated, "request cut in half: Truncated")?;
    // Info with a byte too many.
    let mut trailing = vec![0u8; 8];
    let k = cobs::encode(&[0x00, 0x07], &mut trailing);
    trailing.truncate(k);
    trailing.push(0);
    dev.send_raw(&trailing)?;
    let r = dev.recv()?;
    expect_error(
        &r,
        ErrorCode::TrailingBytes,
        "Info with a trailing byte: TrailingBytes",
    )?;
    dev.send_raw(&vec![0x11u8; 5000])?;
    dev.send_raw(&[0])?;
    let r = dev.recv()?;
    expect_error(
        &r,
        ErrorCode::Oversized,
        "5000-byte frame: Oversized (one answer)",
    )?;
    let r = dev.ask(&Request::Info)?;
    check(
        matches!(r, Response::Info(_)),
        "serves again after the bad frames",
        || format!("{r:?}"),
    )?;

    // Weights: read back, bit-exact.
    let got = read_weights(&mut dev, infer_len)?;
    check(
        got.iter()
            .zip(&params)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "ReadWeights: the inference prefix, bit-exact",
        || "values differ".into(),
    )?;
    let r = dev.ask(&Request::ReadWeights {
        offset: infer_len as u32,
        count: 1,
    })?;
    expect_error(
        &r,
        ErrorCode::OutOfRange,
        "ReadWeights past the prefix: OutOfRange",
    )?;

    // Loading: all or nothing.
    let new_params: Vec<f32> = params
        .iter()
        .enumerate()
        .map(|(i, v)| if i >= shape.encoder_offset() { -v } else { *v })
        .collect();
    let new_blob = blob_of(&shape, &new_params)?;
    let new_crc = hvae::blob::crc32(&new_blob[..new_blob.len() - 4]);
    let mut corrupt = new_blob.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x40;
    let r = load(&mut dev, &corrupt)?;
    check(
        matches!(r, Response::Error(ErrorCode::BadCrc { .. })),
        "load of a blob with a flipped bit: BadCrc",
        || format!("{r:?}"),
    )?;
    let r = dev.ask(&Request::LoadWeights {
        offset: MAX_CHUNK as u32,
        bytes: heapless::Vec::from_slice(&new_blob[MAX_CHUNK..2 * MAX_CHUNK]).expect("chunk"),
        last: false,
    })?;
    expect_error(
        &r,
        ErrorCode::LoadOrder { expected: 0 },
        "chunk without a start: LoadOrder",
    )?;
    let mut other = new_blob.clone();
    other[40] = 11; // K = 11 in the header
    let r = load(&mut dev, &other)?;
    expect_error(
        &r,
        ErrorCode::ShapeMismatch,
        "blob of another shape: ShapeMismatch",
    )?;
    let info = match dev.ask(&Request::Info)? {
        Response::Info(i) => i,
        other => return Err(format!("Info answered {other:?}")),
    };
    check(
        info.weights_crc == crc,
        "after the failed loads the old weights are in use",
        || format!("CRC {:#010x}", info.weights_crc),
    )?;
    let err = check_segments(&mut dev, &model, &xs[..4])?;
    check(err <= 1e-5, "... and answer as before", || {
        format!("max error {err:e}")
    })?;

    let r = load(&mut dev, &new_blob)?;
    check(
        r == Response::Loaded {
            weights_crc: new_crc,
        },
        "load of new weights: Loaded with their CRC",
        || format!("{r:?}"),
    )?;
    let new_model = Model::new(shape, &new_params[..]).map_err(|e| e.to_string())?;
    let err = check_segments(&mut dev, &new_model, &xs[..8])?;
    check(
        err <= 1e-5,
        "the device now answers with the new weights",
        || format!("max error {err:e}"),
    )?;
    let got = read_weights(&mut dev, infer_len)?;
    check(
        got.iter()
            .zip(&new_params)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "ReadWeights: the new weights, bit-exact",
        || "values differ".into(),
    )?;
    let r = dev.ask(&Request::Checkpoint)?;
    check(
        r == Response::Checkpointed {
            weights_crc: new_crc,
        },
        "Checkpoint: the new weights' CRC",
        || format!("{r:?}"),
    )?;
    // And back to the original, through the other slot.
    let r = load(&mut dev, &blob_of(&shape, &params)?)?;
    check(
        r == Response::Loaded { weights_crc: crc },
        "load of the original weights again",
        || format!("{r:?}"),
    )?;
    let err = check_segments(&mut dev, &model, &xs[..4])?;
    check(err <= 1e-5, "... answered with them", || {
        format!("max error {err:e}")
    })?;

    // The device's own figures, after every request above has run.
    let info = match dev.ask(&Request::Info)? {
        Response::Info(i) => i,
        other => return Err(format!("Info answered {other:?}")),
    };
    let ram = info.ram_static + info.stack_peak;
    println!(
        "  device: flash {} B, RAM static {} B + peak stack {} B = {} B",
        info.flash_used, info.ram_static, info.stack_peak, ram
    );
    println!(
        "HVAE_DEVICE_FIGURES flash={} ram_static={} stack_peak={} ram={}",
        info.flash_used, info.ram_static, info.stack_peak, ram
    );
    let sizes = crate::elf::sizes(elf)?;
    check(
        u64::from(info.flash_used) == sizes.flash() && u64::from(info.ram_static) == sizes.ram(),
        "the device's flash and static RAM equal the ELF's",
        || format!("ELF: flash {} RAM {}", sizes.flash(), sizes.ram()),
    )?;
    check(info.stack_peak > 0, "stack peak measured", || "0".into())?;
    if let Some(b) = flash_budget {
        check(
            info.flash_used <= b,
            &format!("flash {} <= budget {b}", info.flash_used),
            || "over budget".into(),
        )?;
    }
    if let Some(b) = ram_budget {
        check(
            ram <= b,
            &format!("RAM {ram} (static + peak stack) <= budget {b}"),
            || "over budget".into(),
        )?;
    }
    println!("probe: all checks passed");
    Ok(())
}
