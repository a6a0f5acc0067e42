//! The device client and `hvae validate` against a simulated device (a thread serving
//! the protocol with the core's model over in-memory pipes): the happy path, a weight
//! load, and every fault — a stall, garbage, a wrong answer, a reset in the middle of an
//! answer or of a load — each reported as a one-line error naming it, after which a
//! rerun on the same connection re-syncs and passes.

mod common;

use hvae::Shape;
use hvae_host::commands::validate::{validate_on, Thresholds, ValidateReport};
use hvae_host::data::{self, Dataset};
use hvae_host::device::sim::{Fault, SimDevice, SimState};
use hvae_host::device::{Device, DeviceSpec, Link, Timeouts};
use hvae_host::model_io::{self, LoadedModel};
use std::path::Path;
use std::time::Duration;

const DIGITS: Shape = Shape::new(64, &[32], 8, 10);
const ROWS: usize = 120;

fn loaded(salt: u64) -> LoadedModel {
    let m = common::model(DIGITS, salt);
    let bytes = model_io::to_bytes(&m).unwrap();
    model_io::from_bytes(&bytes).unwrap()
}

fn digits() -> Dataset {
    data::load(&common::digits_path()).unwrap()
}

fn timeouts() -> Timeouts {
    Timeouts {
        first: Duration::from_millis(1500),
        answer: Duration::from_millis(400),
        train: Duration::from_millis(1500),
    }
}

/// A simulated device holding `weights` (flash CRC `crc`), with `fault` at request `at`
/// when given.
fn sim_device(weights: &LoadedModel, crc: u32, fault: Option<(usize, Fault)>) -> SimDevice {
    let state = SimState::new(weights.model.clone(), crc).unwrap();
    SimDevice::new(match fault {
        Some((at, f)) => state.with_fault(at, f),
        None => state,
    })
}

fn session(sim: &SimDevice) -> Device {
    Device::new(sim.connect().unwrap(), timeouts())
}

fn run(dev: &mut Device, model: &LoadedModel, data: &Dataset) -> Result<ValidateReport, String> {
    validate_on(
        dev,
        model,
        Path::new("model.hvae"),
        data,
        Some(ROWS),
        Thresholds::default(),
    )
    .map_err(|e| e.one_line())
}

/// Validates `loaded(1)` on a device that runs `on` and shows `fault` at request `at`:
/// the error names every one of `expect`, and `between` looks at the device; then
/// validates again on the same device. The device and the second run's report.
fn faulted_then_rerun(
    on: &LoadedModel,
    at: usize,
    fault: Fault,
    expect: &[&str],
    between: impl FnOnce(&SimDevice),
) -> (SimDevice, ValidateReport) {
    let model = loaded(1);
    let sim = sim_device(on, on.crc, Some((at, fault)));
    let data = digits();
    let mut dev = session(&sim);
    let e = run(&mut dev, &model, &data).unwrap_err();
    for x in expect {
        assert!(e.contains(x), "{e}");
    }
    between(&sim);
    let r = run(&mut dev, &model, &data).unwrap();
    (sim, r)
}

/// Validates `loaded(1)` on a device that runs `on` with the flash CRC `crc`, without
/// a fault: the device and the report.
fn validated(on: &LoadedModel, crc: u32) -> (SimDevice, ValidateReport) {
    let sim = sim_device(on, crc, None);
    let r = run(&mut session(&sim), &loaded(1), &digits()).unwrap();
    (sim, r)
}

#[test]
fn same_weights_pass_bit_exact() {
    let model = loaded(1);
    let (sim, r) = validated(&model, model.crc);
    assert!(r.pass, "{r:?}");
    assert!(!r.loaded_weights);
    assert_eq!(r.rows, ROWS);
    assert_eq!(r.bit_exact_rows, ROWS);
    assert_eq!(r.mu.max_abs_err, 0.0);
    assert_eq!(r.probs_max_abs_err, 0.0);
    assert_eq!(r.labels.compared + r.labels.ties, ROWS);
    assert_eq!(r.labels.agree, r.labels.compared);
    // Info + one Segment per 4 rows (the simulated device's receive buffer takes 4).
    assert_eq!(sim.state.lock().unwrap().requests(), 1 + ROWS / 4);
}

#[test]
fn other_weights_are_loaded_first() {
    let model = loaded(1);
    let other = loaded(2);
    let (sim, r) = validated(&other, other.crc);
    assert!(r.pass, "{r:?}");
    assert!(r.loaded_weights);
    assert_eq!(sim.state.lock().unwrap().crc(), model.crc);
    // The blob went in 256-byte chunks: Info, chunks, Info, rows 4 at a time.
    let chunks = hvae::store::blob::blob_len(&DIGITS).div_ceil(256);
    assert_eq!(sim.state.lock().unwrap().requests(), 2 + chunks + ROWS / 4);
    // The weights read back are the model's, bit for bit.
    let mut dev = session(&sim);
    dev.sync().unwrap();
    let back = dev.read_weights(DIGITS.param_len()).unwrap();
    assert!(back
        .iter()
        .zip(model.model.params())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn a_device_that_computes_otherwise_fails() {
    // The device claims the model's CRC but runs other weights: no load, and the
    // comparison must catch it.
    let (_, r) = validated(&loaded(3), loaded(1).crc);
    assert!(!r.pass);
    assert!(r.mu.max_abs_err > 0.01, "{r:?}");
    assert!(r.failures.iter().any(|f| f.starts_with("mu max abs error")));
    assert_eq!(r.bit_exact_rows, 0);
}

#[test]
fn stall_is_a_timeout_naming_the_request() {
    let model = loaded(1);
    let sim = sim_device(&model, model.crc, Some((6, Fault::Stall)));
    let e = run(&mut session(&sim), &model, &digits()).unwrap_err();
    assert!(
        e.contains("device stalled: no answer to Segment within 0.4 s"),
        "{e}"
    );
    // Request 6: Info, then rows 4 at a time, the sixth batch.
    assert!(e.contains("data rows 21..24 of 120"), "{e}");
    assert!(!e.contains('\n'));
}

/// Garbage, a wrong answer and a reset in the middle of an answer, each at its request:
/// reported with the words that name it; then a rerun passes, every row bit for bit;
/// only the reset resets the device.
#[test]
fn faults_while_streaming_are_reported_then_a_rerun_passes() {
    let garbage = [
        "answered Segment with garbage (frame is not valid COBS)",
        "data rows 37..40 of",
    ];
    let wrong = ["answered Segment with an unrelated Ack response"];
    let reset = [
        "device stopped in the middle of its answer to Segment",
        "reset",
    ];
    let cases: [(usize, Fault, &[&str]); 3] = [
        (10, Fault::Garbage, &garbage),
        (3, Fault::WrongAnswer, &wrong),
        (20, Fault::Reset, &reset),
    ];
    for (at, fault, expect) in cases {
        let (sim, r) = faulted_then_rerun(&loaded(1), at, fault, expect, |_| {});
        let resets = sim.state.lock().unwrap().resets;
        assert_eq!(resets, usize::from(fault == Fault::Reset), "{fault:?}");
        assert!(
            r.pass && r.rows == ROWS && r.bit_exact_rows == ROWS,
            "{fault:?}: {r:?}"
        );
    }
}

#[test]
fn reset_during_a_load_then_the_rerun_reloads() {
    let other = loaded(2);
    // Request 0 is Info, then the chunks: reset on the 5th chunk.
    let expect = ["in the middle of its answer to LoadWeights"];
    // The device still runs its old weights: the half-loaded blob was never switched to.
    let old_weights = |sim: &SimDevice| assert_eq!(sim.state.lock().unwrap().crc(), other.crc);
    let (sim, r) = faulted_then_rerun(&other, 5, Fault::Reset, &expect, old_weights);
    assert!(r.pass && r.loaded_weights, "{r:?}");
    assert_eq!(sim.state.lock().unwrap().crc(), loaded(1).crc);
}

#[test]
fn half_a_frame_left_by_an_interrupted_host_is_flushed() {
    let model = loaded(1);
    let sim = sim_device(&model, model.crc, None);
    let data = digits();
    // An earlier host died after sending half a request: the device's decoder holds it.
    let mut buf = [0u8; 600];
    let sample = heapless::Vec::from_slice(data.row(0)).unwrap();
    let req = hvae::protocol::Request::Segment { sample };
    let frame = hvae::protocol::encode(&req, &mut buf).unwrap();
    let mut link = sim.connect().unwrap();
    link.send(&frame[..frame.len() / 2]).unwrap();
    // The next session's leading 0x00 ends that frame (the device answers it with an
    // error, which the sync drops), and validation runs cleanly.
    let mut dev = Device::new(link, timeouts());
    let r = run(&mut dev, &model, &data).unwrap();
    assert!(r.pass && r.rows == ROWS, "{r:?}");
    // Info, the flushed half frame's error answer, and the rows 4 at a time.
    assert_eq!(sim.state.lock().unwrap().requests(), 2 + ROWS / 4);
}

/// The client's raw side, as the firmware's conformance checks use it: bytes put on the
/// line as they are, and answers taken as they come (error answers are answers, not
/// client errors), one per sample of a batch.
#[test]
fn raw_frames_and_answers_as_they_come() {
    use hvae::protocol::{ErrorCode, Request, Response};
    let model = loaded(1);
    let sim = sim_device(&model, model.crc, None);
    let data = digits();
    let mut dev = session(&sim);
    dev.sync().unwrap();
    // COBS says 4 bytes follow, the frame ends after 1.
    dev.send_raw(&[0x05, 0x01, 0x00]).unwrap();
    assert_eq!(
        dev.answer().unwrap(),
        Response::Error(ErrorCode::BadEncoding)
    );
    let segment = |xs: &[f32]| Request::Segment {
        sample: heapless::Vec::from_slice(xs).unwrap(),
    };
    let singles: Vec<Response> = (0..3)
        .map(|i| dev.exchange(&segment(data.row(i))).unwrap())
        .collect();
    assert!(singles
        .iter()
        .all(|r| matches!(r, Response::Segmented { .. })));
    let batch = [data.row(0), data.row(1), data.row(2)].concat();
    assert_eq!(dev.answers(&segment(&batch), 3).unwrap(), singles);
    assert_eq!(
        dev.exchange(&segment(&data.row(0)[..63])).unwrap(),
        Response::Error(ErrorCode::InputLength)
    );
    // Nothing more to read: the wait names what was sent last.
    let e = dev.answer().unwrap_err().to_string();
    assert!(e.contains("no answer to Segment"), "{e}");
}

#[test]
fn device_specs_parse() {
    use hvae_host::device::qemu::Machine;
    assert_eq!(
        DeviceSpec::parse("qemu").unwrap(),
        DeviceSpec::Qemu(Machine::Mps2An386)
    );
    assert_eq!(
        DeviceSpec::parse("qemu:microbit").unwrap(),
        DeviceSpec::Qemu(Machine::Microbit)
    );
    assert_eq!(
        DeviceSpec::parse("serial:/dev/ttyACM0").unwrap(),
        DeviceSpec::Serial("/dev/ttyACM0".into())
    );
    for bad in ["", "qemu:pdp11", "serial:", "usb"] {
        assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn cli_rejects_a_bad_device_and_a_missing_port() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::write_model(dir.path(), "m.hvae", &common::model(DIGITS, 1));
    let validate = |device: &str| {
        assert_cmd::Command::cargo_bin("hvae")
            .unwrap()
            .args(["validate", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(common::digits_path())
            .args(["--device", device])
            .output()
            .unwrap()
    };
    assert_eq!(validate("usb").status.code(), Some(2));
    let out = validate("serial:/nonexistent/tty");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open serial port /nonexistent/tty"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A reader whose every other read times out, as a serial port's reads do on a quiet
/// line (the master side of a pseudo-terminal reads with a 100 ms timeout).
struct TimesOut<R> {
    inner: R,
    timed_out: bool,
}

impl<R: std::io::Read> std::io::Read for TimesOut<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.timed_out = !self.timed_out;
        if self.timed_out {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.inner.read(buf)
    }
}

#[test]
fn a_quiet_line_does_not_end_the_simulated_device() {
    // A read timeout is not the end of the stream: the device keeps serving (quitting at
    // the first timeout would make the serial test below flaky).
    let model = loaded(1);
    let sim = sim_device(&model, model.crc, None);
    let (req_rx, req_tx) = std::io::pipe().unwrap();
    let (resp_rx, resp_tx) = std::io::pipe().unwrap();
    let reader = TimesOut {
        inner: req_rx,
        timed_out: false,
    };
    sim.serve_on(reader, resp_tx);
    let mut dev = Device::new(Link::new("quiet line", resp_rx, req_tx), timeouts());
    let r = run(&mut dev, &model, &digits()).unwrap();
    assert!(r.pass && r.rows == ROWS, "{r:?}");
}

/// The serial transport end to end: the simulated device on the master side of a
/// pseudo-terminal, `hvae validate --device serial:/dev/pts/N` on the other.
#[cfg(unix)]
#[test]
fn validate_over_a_serial_port() {
    use serialport::SerialPort;
    use std::fs::File;
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    let (master, slave) = serialport::TTYPort::pair().expect("a pseudo-terminal");
    let path = slave.name().expect("the pty's path");
    // `pair` opens both ends without close-on-exec, so hvae (and any process the other
    // tests spawn meanwhile) would inherit them: holding the master open, it would see a
    // device that went away as a stall of the whole first timeout instead of a hangup.
    // Keep close-on-exec copies only (std duplicates with F_DUPFD_CLOEXEC).
    let cloexec = |port: serialport::TTYPort| {
        // SAFETY: `into_raw_fd` hands over the port's descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(port.into_raw_fd()) };
        fd.try_clone().expect("a close-on-exec copy")
    };
    let master = cloexec(master);
    // Held open until hvae is done: with no slave open, reading the master fails.
    let slave = cloexec(slave);
    let model = loaded(1);
    let sim = SimDevice::new(SimState::new(loaded(2).model, loaded(2).crc).unwrap());
    let reader = File::from(master.try_clone().unwrap());
    sim.serve_on(reader, File::from(master));
    let dir = tempfile::tempdir().unwrap();
    let model_file = common::write_model(dir.path(), "m.hvae", &model.model);
    let out = assert_cmd::Command::cargo_bin("hvae")
        .unwrap()
        .args(["validate", "--json", "--rows", "50", "--model"])
        .arg(&model_file)
        .arg("--data")
        .arg(common::digits_path())
        .arg("--device")
        .arg(format!("serial:{path}"))
        .output()
        .unwrap();
    drop(slave);
    let stdout = common::success_stdout(&out);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["pass"], true);
    assert_eq!(v["rows"], 50);
    assert_eq!(v["loaded_weights"], true);
    assert_eq!(v["mu"]["max_abs_err"], 0.0);
    assert_eq!(v["labels"]["agreement"], 1.0);
    assert_eq!(v["device"], format!("serial {path}"));
    assert_eq!(sim.state.lock().unwrap().crc(), model.crc);
}
