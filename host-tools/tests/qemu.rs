//! The real firmware under qemu: `hvae validate` against `cluster` on both boards
//! (Cortex-M4F mps2-an386, Cortex-M0 microbit), of the int8 model against `cluster_int8`
//! on both (bit for bit), a device that dies mid-stream,
//! `hvae device-train` against `learn`, and the firmware's log (defmt frames, decoded).
//!
//! These need `qemu-system-arm` and the firmware's targets. Without them each test
//! prints a loud SKIPPED note and returns; with the `CI` environment variable set they
//! fail instead, so CI cannot skip them silently.
//!
//! Run: `cargo test --release -p hvae-host-tools --test qemu -- --nocapture --test-threads 1`
//! (prints the measured numbers).

mod common;

use hvae_host::commands::device_train::{self, DeviceTrainArgs};
use hvae_host::commands::scenario;
use hvae_host::commands::validate::{validate_on, Thresholds};
use hvae_host::data;
use hvae_host::device::qemu::{self, Launch, Machine, Qemu};
use hvae_host::device::{firmware, Device, Timeouts};
use hvae_host::model_io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The firmware program `bin` built for `machine`, or `None` (after the note) when
/// qemu or the build is unavailable.
fn firmware(bin: &str, machine: Machine) -> Option<PathBuf> {
    if !qemu::available() {
        return common::skip("qemu", "qemu-system-arm is not installed");
    }
    match firmware::build(&firmware::default_dir(), bin, machine, &[]) {
        Ok(elf) => Some(elf),
        Err(e) => common::skip("qemu", &e),
    }
}

fn start(elf: &std::path::Path, machine: Machine) -> (Qemu, Device) {
    let (q, link) = Launch::new(machine, elf).connect().unwrap();
    let t = Timeouts {
        first: Duration::from_secs(20),
        answer: Duration::from_secs(10),
        train: Duration::from_secs(120),
    };
    (q, Device::new(link, t))
}

fn compiled_model() -> PathBuf {
    firmware::default_dir().join("model/digits.hvae")
}

/// The program `bin` built for `machine` (`None`: skipped, as [`firmware`]), the
/// compiled-in model and the digits.
fn with_digits(
    bin: &str,
    machine: Machine,
) -> Option<(PathBuf, model_io::LoadedModel, data::Dataset)> {
    let elf = firmware(bin, machine)?;
    let model = model_io::load(&compiled_model()).unwrap();
    let data = data::load(&common::digits_path()).unwrap();
    Some((elf, model, data))
}

fn validate_cluster(machine: Machine, rows: Option<usize>) {
    let Some((elf, model, data)) = with_digits("cluster", machine) else {
        return;
    };
    let model_path = compiled_model();
    let (q, mut dev) = start(&elf, machine);
    // The boot line of the firmware's log (defmt), as the qemu runner keeps it: decoded.
    let boot = format!(
        "INFO  cluster: compiled-in weights, CRC {:#010x}; serving on UART0",
        model.crc
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !q.output().contains(&boot) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(q.output().contains(&boot), "{}", q.output());
    let t = Instant::now();
    let r = validate_on(
        &mut dev,
        &model,
        &model_path,
        &data,
        rows,
        Thresholds::default(),
    )
    .unwrap();
    println!(
        "{}: {} rows in {:.1} s ({:.1} s total): mu max abs {:.3e}, RMSE {:.3e}, rel L2 {:.3e}, \
         worst cosine {:.9}; kappa max rel {:.3e}; probs max abs {:.3e}; labels {}/{} ({} ties); \
         {} rows bit-exact",
        machine.name(),
        r.rows,
        r.seconds,
        t.elapsed().as_secs_f64(),
        r.mu.max_abs_err,
        r.mu.rmse,
        r.mu.rel_l2,
        r.mu.min_row_cosine,
        r.kappa.max_rel_err,
        r.probs_max_abs_err,
        r.labels.agree,
        r.labels.compared,
        r.labels.ties,
        r.bit_exact_rows
    );
    assert!(r.pass, "{r:?}");
    assert!(!r.loaded_weights, "the firmware runs the compiled-in model");
    assert_eq!(r.rows, rows.unwrap_or(data.len()));
    assert!(r.mu.max_abs_err <= 1e-5);
    assert_eq!(r.labels.agree, r.labels.compared);

    // Other weights (the same architecture, perturbed): loaded over the protocol into a
    // flash slot, then validated.
    let mut other = model.model.clone();
    for (i, v) in other.params_mut().iter_mut().enumerate().skip(2 * 64) {
        *v *= 1.0 + 0.01 * ((i % 7) as f32 - 3.0);
    }
    let other = model_io::from_bytes(&model_io::to_bytes(&other).unwrap()).unwrap();
    assert_ne!(other.crc, model.crc);
    let r = validate_on(
        &mut dev,
        &other,
        &model_path,
        &data,
        Some(200),
        Thresholds::default(),
    )
    .unwrap();
    assert!(r.pass && r.loaded_weights, "{r:?}");
}

#[test]
fn validate_cluster_on_mps2_an386() {
    validate_cluster(Machine::Mps2An386, None);
}

#[test]
fn validate_cluster_on_microbit() {
    validate_cluster(Machine::Microbit, Some(400));
}

#[test]
fn device_dying_mid_stream_is_reported_and_a_restart_passes() {
    let machine = Machine::Mps2An386;
    let Some((elf, model, data)) = with_digits("cluster", machine) else {
        return;
    };
    let model_path = compiled_model();
    let (q, mut dev) = start(&elf, machine);
    // Booted and answering before the clock starts, so that the kill lands in the
    // stream of rows (streaming all of them takes many seconds) however slow the
    // machine is.
    dev.sync().unwrap();
    let q = std::sync::Arc::new(q);
    let killer = {
        let q = std::sync::Arc::clone(&q);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1000));
            q.kill();
        })
    };
    let e = validate_on(
        &mut dev,
        &model,
        &model_path,
        &data,
        None,
        Thresholds::default(),
    )
    .unwrap_err()
    .one_line();
    killer.join().unwrap();
    println!("killed mid-stream: {e}");
    assert!(
        e.contains("device went away while answering Segment"),
        "{e}"
    );
    assert!(e.contains("qemu was killed"), "{e}");
    assert!(e.contains("data rows "), "{e}");
    // A restarted validation (a new qemu: the device rebooted) passes.
    let (_q2, mut dev2) = start(&elf, machine);
    let r = validate_on(
        &mut dev2,
        &model,
        &model_path,
        &data,
        Some(300),
        Thresholds::default(),
    )
    .unwrap();
    assert!(r.pass, "{r:?}");
}

#[test]
fn device_training_matches_the_host() {
    let machine = Machine::Mps2An386;
    let Some((elf, model, data)) = with_digits("learn", machine) else {
        return;
    };
    let model = device_train::with_fitted_normalisation(&model, &data).unwrap();
    let (_q, mut dev) = start(&elf, machine);
    let args = DeviceTrainArgs::parse_from([
        "--device", "qemu",
        // Past the Full warm-up (1000 steps): centres initialised, then joint training.
        "--steps", "1100",
    ])
    .unwrap();
    let t = Instant::now();
    let r = device_train::train_on(&mut dev, &model, &data, &args).unwrap();
    for s in &r.scopes {
        println!("{s:?}");
    }
    println!(
        "device training, all scopes: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(r.pass, "{r:?}");
    let full = &r.scopes[0];
    assert_eq!(full.scope, "full");
    assert_eq!(full.steps, 1100);
    assert!(full.acc_diff <= 0.03, "{full:?}");
    // Same core, same seed: whatever differs is rounding, never a different schedule.
    for s in &r.scopes {
        assert!(s.max_abs_param_diff < 1e-3, "{s:?}");
    }
    // A checkpoint on request (the periodic one at step 500 went through during the
    // runs, or a request would have failed with a storage error).
    let info = dev.info().unwrap();
    assert_eq!(dev.checkpoint().unwrap(), info.weights_crc);
    println!(
        "learn: static RAM {} B, peak stack {} B, flash {} B",
        info.ram_static, info.stack_peak, info.flash_used
    );
    // The engine's memory of samples (`CAP` rows of `f32`) is on the stack; beyond it,
    // the rest of the engine, the server's frames and a training step fit in 16 KiB: a
    // second copy of the engine's training state left on the stack would not.
    let memory = hvae::device::CAP * model.model.shape().input * core::mem::size_of::<f32>();
    assert!(info.stack_peak as usize > memory, "{info:?}");
    assert!(
        (info.stack_peak as usize) < memory + 16 * 1024,
        "{info:?}: more on the stack than one engine and a request"
    );
}

/// The `learn_scratch` program on the emulated Cortex-M4F: it boots the fresh network
/// the host's `scratch_model` initialises (same CRC), learns with the scratch engine's
/// optimiser (`hvae::device::SCRATCH_OPTIMISER`) layer by layer and a reservoir of bytes
/// bit for bit as the host's scratch engine, keeps its training state within the
/// scenario's 48 KiB, reports its RAM in `Info`, and refuses an optimiser whose state
/// does not fit its buffer. 400 steps of the warm-up (the whole scenario, 3 x 8985 steps, is `hvae
/// device-train --scenario scratch --device qemu`).
#[test]
fn scratch_program_matches_the_host_engine() {
    use hvae::protocol::{TrainOptimiser, TrainScope, TrainSettings};
    let machine = Machine::Mps2An386;
    let Some(elf) = firmware(hvae_host::device::SCRATCH_BIN, machine) else {
        return;
    };
    let like = model_io::load(&compiled_model()).unwrap();
    let data = data::load(&common::digits_path()).unwrap();
    let arch = scenario::scratch_model(&like).unwrap();
    let (_q, mut dev) = start(&elf, machine);
    let boot = dev.info().unwrap();
    assert_eq!(
        boot.weights_crc, arch.crc,
        "the device booted another initialisation"
    );
    assert_eq!(boot.params_held as usize, arch.model.shape().param_len());

    let model = device_train::with_fitted_normalisation(&arch, &data).unwrap();
    let settings = TrainSettings {
        scope: TrainScope::Full,
        optimiser: hvae::device::SCRATCH_OPTIMISER,
        lr: scenario::SCRATCH_LR,
        batch: 8,
    };
    let schedule = device_train::Schedule {
        settings,
        steps: 400,
        per_request: 4,
        seed: 3,
    };
    let requests = schedule.requests(&data).unwrap();
    let (r, _) = device_train::Reference::Scratch
        .run(&mut dev, &model, &data, TrainScope::Full, &requests)
        .unwrap();
    println!(
        "learn_scratch, 400 steps: device ACC {:.4}, host {:.4}, bit-identical {}, training \
         state {:?} B, {:.1} s",
        r.device.acc, r.host.acc, r.bit_identical, r.train_ram, r.device_seconds
    );
    assert!(r.bit_identical, "{r:?}");
    assert_eq!(r.steps, 400, "{r:?}");
    let state = r.train_ram.unwrap();
    assert!(
        state > 45_000 && state <= scenario::SCRATCH_RAM_BAR,
        "{r:?}"
    );

    // The device's own report: the parameters, the trainer's buffers and the optimiser's
    // state are static (their sizes from the core's const fns, plus under 4 KiB of the
    // program's own statics); the engine, with its memory of samples, is on the stack.
    let info = dev.info().unwrap();
    println!(
        "learn_scratch: static RAM {} B, peak stack {} B, flash {} B",
        info.ram_static, info.stack_peak, info.flash_used
    );
    let shape = model.model.shape();
    let buffers = 4
        * (shape.param_len()
            + hvae::device::scratch_len_with(shape, hvae::device::SCRATCH_MEM)
            + hvae::device::scratch_optim_len(shape));
    let statics = info.ram_static as usize;
    assert!(
        statics >= buffers && statics < buffers + 4096,
        "{info:?}: {buffers}"
    );
    let memory = hvae::device::SCRATCH_MEM * shape.input;
    assert!(info.stack_peak as usize > memory, "{info:?}");
    // Beyond the memory of samples, the rest of the engine, the server's frames and a
    // training step fit in 20 KiB: a second copy of the engine's training state left on
    // the stack (the compiler's choice when it builds that state inline) would not.
    assert!(
        (info.stack_peak as usize) < memory + 20 * 1024,
        "{info:?}: more on the stack than one engine and a request"
    );
    assert!(info.flash_used > 0, "{info:?}");

    // Another optimiser in the same buffers: refused, nothing changed, when its state
    // is larger than the scratch optimiser's (Adam's two values per parameter, SGD's
    // one, against the factored moment's few hundred), else it takes its steps.
    let samples = &data.features()[..4 * shape.input];
    let mut refused = 0;
    for (optimiser, kind) in [
        (TrainOptimiser::Adam, hvae::OptimKind::Adam),
        (TrainOptimiser::Sgd { momentum: 0.9 }, hvae::OptimKind::Sgd),
    ] {
        let other = TrainSettings {
            optimiser,
            ..settings
        };
        let before = dev.info().unwrap().weights_crc;
        let need = hvae::TrainConfig::<f32>::optim_len(shape, hvae::Scope::Full, kind);
        let result = dev.train(samples, 2, Some(other));
        if need > hvae::device::scratch_optim_len(shape) {
            assert!(result.is_err(), "{kind:?} fitted learn_scratch: {result:?}");
            assert_eq!(dev.info().unwrap().weights_crc, before);
            refused += 1;
        } else {
            assert_eq!(result.unwrap().steps, 2, "{kind:?}");
            assert_ne!(dev.info().unwrap().weights_crc, before);
        }
    }
    // The default (the factored moment without a first moment) fits neither.
    if hvae::device::SCRATCH_OPTIM == hvae::OptimKind::FactoredRms {
        assert_eq!(refused, 2);
    }
}

/// The drift scenario on the emulated Cortex-M4F: the deployed digits model adapts its
/// input normalisation and segmenter to a drifted sensor, bit for bit as the host
/// engine does, and wins back the oracle's ACC (the adaptation scope alone: the others
/// run on the host engine in `scenario.rs`).
#[test]
fn drift_scenario_on_the_device() {
    let machine = Machine::Mps2An386;
    let Some((elf, model, data)) = with_digits("learn", machine) else {
        return;
    };
    let args = DeviceTrainArgs::parse_from([
        "--device",
        "qemu",
        "--scenario",
        "drift",
        "--scope",
        "segmenter-and-normalisation",
        // A quarter of the host test's stream: a normalisation over ~200 samples has
        // settled long before, and every step is emulated.
        "--steps",
        "500",
    ])
    .unwrap();
    drift_on(&elf, machine, &model, &data, &args);
}

/// Runs the drift scenario of `args` on program `elf` under qemu (a fresh device for
/// each run when the program cannot load the deployed model, as `adapt`), prints its
/// table and asserts two runs, bit identity and the bars; the device, for more checks.
fn drift_on(
    elf: &std::path::Path,
    machine: Machine,
    model: &model_io::LoadedModel,
    data: &data::Dataset,
    args: &DeviceTrainArgs,
) -> hvae_host::device::Opened {
    let open = || {
        let (q, device) = start(elf, machine);
        hvae_host::device::Opened {
            device,
            qemu: Some(q),
        }
    };
    let mut opened = open();
    let mut reopen = || Ok(open());
    let r = scenario::drift(&mut opened, &mut reopen, model, data, args).unwrap();
    let mut text = Vec::new();
    scenario::print_drift(&r, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    println!("{text}");
    assert_eq!(r.runs.len(), 2, "{text}");
    assert!(r.runs.iter().all(|x| x.bit_identical), "{text}");
    assert!(r.pass, "{text}");
    opened
}

/// The drift scenario on the emulated Cortex-M0 (micro:bit, 16 KiB of RAM, soft-float):
/// the `adapt` program (the digits model with 16 hidden units, online k-means with the
/// tracked normalisation, no trainer) undoes the drift bit for bit as the host's
/// adapting engine does, and wins back the oracle's ACC; the RAM it reports (static and
/// peak stack) fits the part.
#[test]
fn drift_scenario_on_the_cortex_m0() {
    let machine = Machine::Microbit;
    let Some(elf) = firmware(hvae_host::device::ADAPT_BIN, machine) else {
        return;
    };
    let model =
        model_io::load(&firmware::default_dir().join(hvae_host::device::ADAPT_MODEL)).unwrap();
    let data = data::load(&common::digits_path()).unwrap();
    let device = ["--device", "qemu:microbit", "--scenario", "drift"];
    // Half the command's stream (a quarter, as on the M4F, brings the gradual stream's
    // share of the oracle close to its bar).
    let steps = ["--steps", "1000"];
    let args = DeviceTrainArgs::parse_from([&device[..], &common::ADAPT_SETTINGS, &steps].concat())
        .unwrap();
    let mut opened = drift_on(&elf, machine, &model, &data, &args);
    // What it adapted goes to its flash (the periodic saves of the runs went through, or
    // a request would have failed with a storage error): the checkpoint of the weights
    // it runs.
    let crc = opened.device.sync().unwrap().weights_crc;
    assert_eq!(opened.device.checkpoint().unwrap(), crc);
    // What the device reports after serving: its RAM, static and peak stack (by stack
    // painting, which cannot see past the end of RAM: a stack that reached it would
    // read as exactly 16 KiB in all), with at least 512 bytes never touched.
    let info = opened.device.sync().unwrap();
    let ram = info.ram_static + info.stack_peak;
    println!(
        "adapt on the micro:bit: static {} B + peak stack {} B",
        info.ram_static, info.stack_peak
    );
    assert!(info.ram_static > 0 && info.stack_peak > 0, "{info:?}");
    assert!(ram + 512 <= 16 * 1024, "{info:?}");
}

/// The command line end to end: `hvae validate --device qemu --json` builds `cluster`,
/// starts qemu and prints one JSON object.
#[test]
fn validate_command_prints_json() {
    if firmware("cluster", Machine::Mps2An386).is_none() {
        return;
    }
    let out = assert_cmd::Command::cargo_bin("hvae")
        .unwrap()
        .args([
            "validate", "--json", "--rows", "150", "--device", "qemu", "--model",
        ])
        .arg(compiled_model())
        .arg("--data")
        .arg(common::digits_path())
        .output()
        .unwrap();
    let stdout = common::success_stdout(&out);
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["pass"], true);
    assert_eq!(v["rows"], 150);
    assert_eq!(v["device"], "qemu mps2-an386");
    assert!(v["mu"]["max_abs_err"].as_f64().unwrap() <= 1e-5);
    assert_eq!(v["labels"]["agreement"], 1.0);
}

/// The launcher's foreground run (as `hvae-firmware-host run` uses it): the log decoded
/// line by line, and a program that does not end (`cluster` serves forever) killed at
/// the time limit, which fails the run.
#[test]
fn a_run_past_its_time_limit_is_killed() {
    let machine = Machine::Microbit;
    let Some(elf) = firmware("cluster", machine) else {
        return;
    };
    let crc = model_io::load(&compiled_model()).unwrap().crc;
    let mut lines = Vec::new();
    let t = Instant::now();
    let e = Launch::new(machine, &elf)
        .icount()
        .limit(Duration::from_secs(2))
        .run("null", |l| lines.push(l.to_string()))
        .unwrap_err();
    assert!(e.contains("did not end within 2 s: qemu was killed"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        lines,
        [format!(
            "INFO  cluster: compiled-in weights, CRC {crc:#010x}; serving on UART0"
        )]
    );
}

/// The firmware logs with defmt: qemu's raw stdout carries frames (indices of format
/// strings kept in the ELF, and arguments), not the text, and `device::defmt_log` decodes
/// them to the text.
#[test]
fn firmware_log_is_defmt_and_decodes() {
    use std::io::Read;
    use std::process::Stdio;
    let machine = Machine::Microbit;
    let Some(elf) = firmware("cluster", machine) else {
        return;
    };
    let elf_bytes = std::fs::read(&elf).unwrap();
    let crc = model_io::load(&compiled_model()).unwrap().crc;
    let boot = format!("INFO  cluster: compiled-in weights, CRC {crc:#010x}; serving on UART0");
    // qemu as run-tests.sh and the runner start it, the UART disconnected: stdout is the log.
    let mut qemu = Launch::new(machine, &elf)
        .icount()
        .spawn("null", Stdio::null())
        .unwrap();
    let mut out = qemu.stdout.take().unwrap();
    let raw = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let raw = std::sync::Arc::clone(&raw);
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                raw.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let decode = |bytes: &[u8]| {
        let mut lines = Vec::new();
        hvae_host::device::defmt_log::decode(&elf_bytes, bytes, |l| lines.push(l.to_string()))
            .unwrap();
        lines
    };
    // `cluster` logs one line at boot, then serves forever.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        lines = decode(&raw.lock().unwrap());
        if !lines.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    reader.join().unwrap();
    let raw = raw.lock().unwrap().clone();
    println!(
        "{} bytes of defmt frames: {:02x?} -> {lines:?}",
        raw.len(),
        &raw[..]
    );
    assert_eq!(lines, [boot], "{raw:02x?}");
    // The frame holds the format string's index and the CRC, not the text.
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("cluster:") && !text.contains("serving on UART0"),
        "{text}"
    );
    assert!(
        raw.len() < 16,
        "{} bytes for one line with one u32",
        raw.len()
    );
}

/// `hvae validate` of the int8 digits model against `cluster_int8`: every row bit for
/// bit the host's `QuantModel` (the M4F runs the `smlad` kernel, the M0 the Thumb-1 one);
/// another int8 model loaded over the wire by `validate`, its rows bit for bit too.
fn validate_cluster_int8(machine: Machine, rows: usize) {
    use hvae_host::commands::validate::validate_on_int8;
    let Some(elf) = firmware("cluster_int8", machine) else {
        return;
    };
    let model_path = firmware::default_dir().join("model/digits_int8.hvae");
    let model = model_io::load_int8(&model_path).unwrap();
    let data = data::load(&common::digits_path()).unwrap();
    let (_q, mut dev) = start(&elf, machine);
    let r = validate_on_int8(
        &mut dev,
        &model,
        &model_path,
        &data,
        Some(rows),
        Thresholds::default(),
    )
    .unwrap();
    println!(
        "{} int8: {} rows in {:.1} s, {} bit-exact",
        machine.name(),
        r.rows,
        r.seconds,
        r.bit_exact_rows
    );
    assert!(r.pass, "{r:?}");
    assert_eq!((r.rows, r.bit_exact_rows), (rows, rows));
    // The f32 model is not what it runs: refused, with the reason.
    let f32_model = model_io::load(&compiled_model()).unwrap();
    let e = validate_on(
        &mut dev,
        &f32_model,
        &compiled_model(),
        &data,
        Some(10),
        Thresholds::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot load"), "{e}");
    // Another int8 model (the weights negated): loaded over the wire, then every row is
    // that model's, bit for bit; then the original again.
    let w: Vec<i8> = model.model.weights().iter().map(|v| -v).collect();
    let other = hvae::QuantModel::new(
        *model.model.shape(),
        w,
        model.model.ints().to_vec(),
        model.model.floats().to_vec(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other_path = dir.path().join("other_int8.hvae");
    std::fs::write(&other_path, hvae_host::quant::to_bytes(&other).unwrap()).unwrap();
    let other = model_io::load_int8(&other_path).unwrap();
    assert_ne!(other.crc, model.crc);
    for (m, path) in [(&other, &other_path), (&model, &model_path)] {
        let r =
            validate_on_int8(&mut dev, m, path, &data, Some(40), Thresholds::default()).unwrap();
        assert!(r.pass && r.loaded_weights, "{r:?}");
        assert_eq!((r.rows, r.bit_exact_rows), (40, 40));
    }
}

#[test]
fn validate_cluster_int8_on_mps2_an386() {
    validate_cluster_int8(Machine::Mps2An386, 400);
}

#[test]
fn validate_cluster_int8_on_microbit() {
    validate_cluster_int8(Machine::Microbit, 200);
}
