//! Instruction counts and RAM of learning from scratch on the Cortex-M4F (mps2-an386):
//! one training step of the `learn_scratch` program's trainer (the network of
//! [`hvae::device::scratch_shape`], its optimiser [`hvae::device::SCRATCH_OPTIMISER`], the
//! backward pass and the update layer by layer, a memory of [`SCRATCH_MEM`] samples as
//! bytes, 8 anchors), in the warm-up
//! (the VAE alone) and in joint training, the centre initialisation, and a forward pass
//! of encoder + decoder for scale (the `scratch` scenario, docs/device.md#scenarios).
//! Reported, no budget; exit status 1 if a step fails.
//!
//! | measure | how |
//! |---|---|
//! | step | mean of 16 steps of each phase, the memory filled with the 64 golden digits rows |
//! | centre initialisation | the step that ends the warm-up (k-means++ on the memory's directions), less a joint step |
//! | forward | `Model::reconstruct` of one row (encoder, posterior mean, decoder) |
//! | RAM | the trainer's state (`OnlineTrainer::state_bytes`) and the parameters; static RAM plus the stack (stack painting) |
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;
use cortex_m_rt::entry;
use hvae::device::{
    config_with_memory, quant_of, scratch_len_with, scratch_optim_len, scratch_shape, SCRATCH_MEM,
};
use hvae::protocol::{TrainScope, TrainSettings};
use hvae::shape::Shape;
use hvae::train::trainer::{OnlineTrainer, Phase, TrainConfig};
use hvae::Model;
use hvae_firmware::rt::{self, with_ram, Counter};
use hvae_firmware::weights::SHAPE as DEPLOYED;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

#[allow(dead_code)]
mod golden {
    include!("../../model/golden.rs");
}

const SHAPE: Shape = scratch_shape(&DEPLOYED);
const D: usize = SHAPE.input;
const PARAM_LEN: usize = SHAPE.param_len();
const SCRATCH_LEN: usize = scratch_len_with(&SHAPE, SCRATCH_MEM);
const OPTIM_LEN: usize = scratch_optim_len(&SHAPE);
/// Steps averaged per phase.
const STEPS: u32 = 16;

static mut PARAMS: [f32; PARAM_LEN] = [0.0; PARAM_LEN];
static mut SCRATCH: [f32; SCRATCH_LEN] = [0.0; SCRATCH_LEN];
static mut OPTIM: [f32; OPTIM_LEN] = [0.0; OPTIM_LEN];

/// What one scratch training costs.
#[derive(Clone, Copy, Default)]
struct Costs {
    warmup: u64,
    joint: u64,
    init: u64,
    forward: u64,
    state: usize,
    failed: u32,
}

#[inline(never)]
fn scratch_steps(counter: &mut Counter) -> Costs {
    let mut out = Costs::default();
    // SAFETY: taken once, here; nothing else references these statics.
    let (params, scratch, optim) = unsafe {
        (
            &mut *addr_of_mut!(PARAMS),
            &mut *addr_of_mut!(SCRATCH),
            &mut *addr_of_mut!(OPTIM),
        )
    };
    let Ok(mut model) = Model::new(SHAPE, &mut params[..]) else {
        out.failed = u32::MAX;
        return out;
    };
    model.init(&mut Xoshiro256PlusPlus::seed_from_u64(0));
    // The input normalisation of the golden rows (the host fits it to the data).
    let (mut offset, mut scale) = ([0.0f32; D], [0.0f32; D]);
    let fitted = hvae::infer::normalise::fit(
        golden::SAMPLES.iter().map(|x| &x[..]),
        &mut offset,
        &mut scale,
    );
    if fitted.is_err() || model.set_normalisation(&offset, &scale).is_err() {
        out.failed = u32::MAX;
        return out;
    }
    let settings = TrainSettings {
        scope: TrainScope::Full,
        optimiser: hvae::device::SCRATCH_OPTIMISER,
        lr: 0.002,
        batch: 8,
    };
    let (Some(mut cfg), Some(quant)) = (
        config_with_memory(&settings, SCRATCH_MEM),
        quant_of::<D, _>(&model),
    ) else {
        out.failed = u32::MAX;
        return out;
    };
    cfg.quant = quant;
    // The cost of a step does not depend on how long the warm-up is.
    cfg.warmup_steps = STEPS;
    let (s_len, o_len) = (
        cfg.scratch_len(&SHAPE, SCRATCH_MEM),
        TrainConfig::<f32>::optim_len(&SHAPE, cfg.scope, cfg.optim.optimiser.kind()),
    );
    let (Some(scratch), Some(optim)) = (scratch.get_mut(..s_len), optim.get_mut(..o_len)) else {
        out.failed = u32::MAX;
        return out;
    };
    let Ok(mut trainer) =
        OnlineTrainer::<f32, D, SCRATCH_MEM, _, _, u8>::new(&SHAPE, cfg, scratch, optim)
    else {
        out.failed = u32::MAX;
        return out;
    };
    for x in golden::SAMPLES.iter() {
        out.failed += u32::from(trainer.push(x).is_err());
    }
    out.state = 4 * PARAM_LEN + trainer.state_bytes();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(hvae::device::SEED);
    let (mut warm, mut joint, mut n_warm, mut n_joint) = (0u64, 0u64, 0u64, 0u64);
    let mut init_step = 0u64;
    for _ in 0..2 * STEPS + 1 {
        let (r, n) = counter.measure(|| trainer.step(&mut model, &mut rng));
        let n = n.unwrap_or(0);
        match r {
            Ok(rep) if rep.initialised_centres => init_step = n,
            Ok(rep) if rep.phase == Phase::WarmUp => (warm, n_warm) = (warm + n, n_warm + 1),
            Ok(_) => (joint, n_joint) = (joint + n, n_joint + 1),
            Err(_) => out.failed += 1,
        }
    }
    out.warmup = warm / n_warm.max(1);
    out.joint = joint / n_joint.max(1);
    // The step that initialised the centres also took a joint step: k-means is the rest.
    out.init = init_step.saturating_sub(out.joint);
    out.failed += u32::from(n_warm == 0 || n_joint == 0 || init_step == 0);
    let mut work = [0.0f32; SHAPE.work_len()];
    let mut recon = [0.0f32; D];
    let x = &golden::SAMPLES[0];
    let (r, n) =
        counter.measure(|| model.reconstruct(core::hint::black_box(x), &mut work, &mut recon));
    out.failed += u32::from(r.is_err());
    out.forward = n.unwrap_or(0);
    core::hint::black_box((&recon, model.params()));
    out
}

/// The optimiser's name in the report.
const OPTIMISER: &str = match hvae::device::SCRATCH_OPTIM {
    hvae::OptimKind::Adam => "Adam",
    hvae::OptimKind::Factored => "Adam with a factored second moment",
    hvae::OptimKind::FactoredRms => "a factored second moment without a first moment",
    hvae::OptimKind::Sgd => "SGD with momentum 0.9",
};

#[entry]
fn main() -> ! {
    let mut counter = Counter::take("bench_scratch");
    let (c, ram) = with_ram(|| scratch_steps(&mut counter));
    let ok = c.failed == 0 && c.warmup > 0 && c.joint > 0;
    defmt::println!(
        "learning from scratch ({=usize}-{=usize}-{=usize}, {=str}, layer by layer, {=usize} samples as bytes, 8 anchors): warm-up step {=u32} instructions, joint step {=u32} ({=u32} per anchor; a forward pass of encoder + decoder {=u32}), centre initialisation {=u32}; failed {=u32}",
        SHAPE.input,
        hvae::device::SCRATCH_HIDDEN,
        SHAPE.latent,
        OPTIMISER,
        SCRATCH_MEM,
        c.warmup as u32,
        c.joint as u32,
        (c.joint / 8) as u32,
        c.forward as u32,
        c.init as u32,
        c.failed,
    );
    defmt::println!(
        "    RAM {=u32} B (training state {=u32} B: parameters, the largest block's gradient, the optimiser's state, memory of samples, workspace; + stack)",
        ram as u32,
        c.state as u32,
    );
    defmt::println!(
        "HVAE_BENCH_SCRATCH warmup_instr={=u32} joint_instr={=u32} init_instr={=u32} forward_instr={=u32} state={=u32} ram={=u32}",
        c.warmup as u32,
        c.joint as u32,
        c.init as u32,
        c.forward as u32,
        c.state as u32,
        ram as u32
    );
    rt::exit(ok)
}
