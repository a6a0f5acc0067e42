//! Instruction counts and RAM of adapting a deployed model on the Cortex-M4F
//! (mps2-an386; the compiled-in digits model) and on the Cortex-M0 (microbit; the
//! `adapt` program's model, 16 hidden units): online k-means of the centres with the encoder in flash and the
//! segmenter in RAM, and the input normalisation tracker (the `learn` engine's
//! `SegmenterOnly` / `SegmenterAndNormalisation` scopes with `OnlineKMeans`; see
//! docs/device.md#scenarios), and a checkpoint of what `adapt` adapts. Reported, no
//! budget; exit status 1 if a sample or the checkpoint fails.
//!
//! Its own program rather than a part of `bench`: a second use of the segmenter's code
//! changes how the compiler inlines `Model::segment`, and with it `bench`'s lone
//! encode+segment figure, which has a budget.
//!
//! | measure | how |
//! |---|---|
//! | online k-means | mean of 16 digits rows: encode+segment (encoder in flash, segmenter in RAM), the spawn rule's bookkeeping, the centre update |
//! | tracker | the same rows through `Tracker::push`; writing its normalisation once (per request) |
//! | checkpoint | what `adapt` saves of what it adapted (normalisation, segmenter and online k-means' state, `Checkpoints::save_adapted` straight from the parameters) into memory.x's `CKPT`: one save (erase, write, read back), and the validation of both slots a boot does before it restores |
//! | RAM | static RAM plus the stack of the function that owns the state (stack painting) |
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae_firmware::golden;
use hvae_firmware::rt::{self, ratio, with_ram, Counter, Fixed3};
#[cfg(board = "microbit")]
use hvae_firmware::weights::m0::{COMPILED, SHAPE};
#[cfg(not(board = "microbit"))]
use hvae_firmware::weights::{COMPILED, SHAPE};

/// Samples averaged.
const CALLS: usize = 16;

/// Online k-means and the normalisation tracker, per sample.
#[derive(Clone, Copy, Default)]
struct Adapt {
    /// Mean instructions of one sample of online k-means: encode+segment with the
    /// segmenter in RAM, the spawn rule's bookkeeping and the centre update.
    kmeans: u64,
    /// Mean instructions of one sample through the normalisation tracker.
    track: u64,
    /// Instructions of writing the tracker's normalisation (once per request).
    write: u64,
    /// Samples that failed.
    failed: u32,
    /// Bytes of the adaptation state: the segmenter's RAM copy, the centres' counts,
    /// the spawner and the tracker.
    state: usize,
}

/// Online k-means of the centres ([`hvae::train::centres`]) on the compiled-in model:
/// the encoder stays in flash and only the segmenter is a RAM copy (the engine's
/// `SegmenterOnly` / `SegmenterAndNormalisation` scopes with `OnlineKMeans`), plus the
/// normalisation tracker of the second.
#[inline(never)]
fn online_kmeans(counter: &mut Counter) -> Adapt {
    use hvae::infer::normalise::Tracker;
    use hvae::train::centres::{CentreCounts, SpawnRule, Spawner};
    let mut out = Adapt::default();
    let model = &COMPILED;
    let mut seg = [0.0f32; SHAPE.segmenter_len()];
    for (s, p) in seg.iter_mut().zip(model.segmenter_params()) {
        *s = *p;
    }
    let mut counts = CentreCounts::new(100.0);
    // Nothing is novel (the threshold is above any novelty): every sample moves a centre.
    let mut spawner = Spawner::new(SpawnRule {
        threshold: 2.0,
        window: 128,
        count: 8,
    });
    let d = SHAPE.input;
    let params = model.params();
    let (Some(offset), Some(scale)) = (params.get(..d), params.get(d..2 * d)) else {
        out.failed = u32::MAX;
        return out;
    };
    let Ok(mut tracker) =
        Tracker::<{ SHAPE.input }>::from_normalisation(offset, scale, hvae::device::NORM_DECAY)
    else {
        out.failed = u32::MAX;
        return out;
    };
    out.state = core::mem::size_of_val(&seg)
        + core::mem::size_of_val(&counts)
        + core::mem::size_of_val(&spawner)
        + core::mem::size_of_val(&tracker);
    let mut work = [0.0f32; SHAPE.work_len()];
    let (mut kmeans, mut track) = (0, 0);
    for x in golden::SAMPLES.iter().take(CALLS) {
        let (r, n) = counter.measure(|| {
            let s = model
                .segment_with(&seg, core::hint::black_box(x), &mut work)
                .map_err(|_| ())?;
            let (novelty, label) = (s.novelty(), s.label);
            spawner.observe(s.mu, novelty);
            if spawner.is_novel(novelty) {
                return Ok(());
            }
            counts.update(&SHAPE, &mut seg, s.mu, label).map_err(|_| ())
        });
        out.failed += u32::from(r.is_err() || n.is_none());
        kmeans += n.unwrap_or(0);
        let (r, n) = counter.measure(|| tracker.push(core::hint::black_box(x)));
        out.failed += u32::from(r.is_err() || n.is_none());
        track += n.unwrap_or(0);
    }
    let (mut off, mut sc) = ([0.0f32; SHAPE.input], [0.0f32; SHAPE.input]);
    let (r, n) = counter.measure(|| tracker.normalisation(&mut off, &mut sc));
    out.failed += u32::from(r.is_err() || n.is_none());
    out.write = n.unwrap_or(0);
    out.kmeans = kmeans / CALLS as u64;
    out.track = track / CALLS as u64;
    core::hint::black_box((&seg, &counts, &off, &sc));
    out
}

/// A checkpoint of what `adapt` adapts, as its engine saves it.
#[derive(Clone, Copy, Default)]
struct Ckpt {
    /// Instructions of one save.
    save: u64,
    /// Instructions of validating both slots (`Checkpoints::newest`), as at boot.
    boot: u64,
    /// Bytes of one slot.
    slot: usize,
    /// Steps that failed.
    failed: u32,
}

/// One save of an adapted checkpoint with the state of online k-means
/// ([`hvae::device::adapt_slot_len`]) into memory.x's `CKPT`, from the compiled-in
/// parameters, then the validation of both slots.
#[inline(never)]
fn checkpoint(counter: &mut Counter) -> Ckpt {
    use hvae::device::{adapt_slot_len, kmeans_extra};
    use hvae::store::checkpoint::Layout;
    use hvae::Checkpoints;
    use hvae_firmware::board::{Flash, FlashRegion};
    use hvae_firmware::learning::CkptFlash;
    const SLOT: usize = adapt_slot_len::<CkptFlash, { SHAPE.input }>(&SHAPE);
    const EXTRA: usize = kmeans_extra::<{ SHAPE.input }>();
    let mut out = Ckpt {
        slot: SLOT,
        ..Ckpt::default()
    };
    let Ok(mut c) = Checkpoints::new(FlashRegion::checkpoints(Flash::new()), 0, SLOT as u32) else {
        out.failed = 1;
        return out;
    };
    let layout = Layout::adapted::<f32>(SHAPE, 0).with_extra(EXTRA);
    let params = COMPILED.params();
    let (r, n) = counter.measure(|| {
        c.save_adapted(&layout, params, 0, &mut |put| {
            let zeros = [0u8; 64];
            let mut left = EXTRA;
            while left > 0 {
                let k = left.min(zeros.len());
                put(zeros.get(..k).unwrap_or_default());
                left -= k;
            }
        })
    });
    out.failed += u32::from(r.is_err() || n.is_none());
    out.save = n.unwrap_or(0);
    let (r, n) = counter.measure(|| c.newest(&layout));
    out.failed += u32::from(!matches!(r, Ok(Some(_))) || n.is_none());
    out.boot = n.unwrap_or(0);
    out
}

#[entry]
fn main() -> ! {
    let mut counter = Counter::take("bench_adapt");
    let (km, ram) = with_ram(|| online_kmeans(&mut counter));
    let ck = checkpoint(&mut counter);
    let ok = km.failed == 0 && km.kmeans > 0 && ck.failed == 0;
    let macs = SHAPE.segment_macs() as u64;
    defmt::println!(
        "online k-means (encoder in flash, segmenter in RAM): {=u32} instructions per sample ({} per MAC of encode+segment); normalisation tracker {=u32} per sample, {=u32} per request to write it; failed {=u32}",
        km.kmeans as u32,
        Fixed3(ratio(km.kmeans, macs)),
        km.track as u32,
        km.write as u32,
        km.failed,
    );
    defmt::println!(
        "    RAM {=u32} B (adaptation state {=u32} B + stack)",
        ram as u32,
        km.state as u32,
    );
    defmt::println!(
        "checkpoint of what adapt adapts ({=u32} B slot): save {=u32} instructions, both slots validated at boot {=u32}; failed {=u32}",
        ck.slot as u32,
        ck.save as u32,
        ck.boot as u32,
        ck.failed,
    );
    defmt::println!(
        "HVAE_BENCH_ADAPT kmeans_instr={=u32} track_instr={=u32} write_instr={=u32} state={=u32} ram={=u32} ckpt_save_instr={=u32} ckpt_boot_instr={=u32}",
        km.kmeans as u32,
        km.track as u32,
        km.write as u32,
        km.state as u32,
        ram as u32,
        ck.save as u32,
        ck.boot as u32
    );
    rt::exit(ok)
}
