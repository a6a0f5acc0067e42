//! Checkpoints under power cuts and bit rot, on a simulated NOR flash.
//!
//! The simulator has NOR semantics: erase sets a whole sector to `0xFF`, a write can only
//! clear bits, writes and erases must be aligned to `WRITE_SIZE` / `ERASE_SIZE`, and it
//! counts a word written twice without an erase in between (which ECC flash forbids).
//! It can cut the power before operation `k` (every word write and every sector erase is
//! one operation): operations `0..k` complete, operation `k` does not happen, or happens
//! partly in "torn" mode (a word with some of its bits left unprogrammed, a sector with
//! some of its bits left unerased), and every later access fails until the next boot.
//!
//! For every `k` across a whole save, in three situations (blank flash, one checkpoint,
//! two checkpoints so the older one is overwritten), on four flash geometries, with and
//! without torn operations, a reboot must load exactly the previous checkpoint when the
//! cut came before the save's last operation and exactly the new one otherwise, bit for
//! bit; then a new save must succeed.
//!
//! Run: `cargo test --release --test checkpoint -- --nocapture` (prints the counts).

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
use hvae::shape::{Scope, Shape};
use hvae::store::checkpoint::{
    CheckpointError, Checkpoints, Damage, Layout, Loaded, Restore, SlotState, COMMIT, HEADER_LEN,
};
use hvae::train::optim::{state_len, OptimKind};
use hvae::train::trainer::{OnlineTrainer, TrainConfig, TrainError};
use hvae::Model;
use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const SHAPE: Shape = Shape::new(8, &[6], 3, 3).checked();

// ---------------------------------------------------------------------------------------
// The simulated flash.

struct Sim<const W: usize, const E: usize> {
    mem: Vec<u8>,
    /// Operations completed since power-on.
    ops: u64,
    /// The operation (0-based) at which the power fails.
    cut_at: Option<u64>,
    torn: bool,
    dead: bool,
    rng: Xoshiro256PlusPlus,
    /// Words written while not erased.
    double_writes: u64,
}

impl<const W: usize, const E: usize> Sim<W, E> {
    /// Flash for two trainer checkpoint slots ([`trainer_slot_len`]), and a slot's length.
    fn for_trainer() -> (Self, u32) {
        let slot = trainer_slot_len::<Self>();
        (Self::new(2 * slot as usize), slot)
    }

    fn new(bytes: usize) -> Self {
        Sim {
            mem: vec![0xFF; bytes],
            ops: 0,
            cut_at: None,
            torn: false,
            dead: false,
            rng: Xoshiro256PlusPlus::seed_from_u64(99),
            double_writes: 0,
        }
    }

    /// Power comes back: a reboot.
    fn reboot(&mut self) {
        self.ops = 0;
        self.cut_at = None;
        self.dead = false;
    }

    fn cut_before(&mut self, k: u64, torn: bool) {
        self.ops = 0;
        self.cut_at = Some(k);
        self.torn = torn;
        self.dead = false;
    }

    fn check(&self, align: usize, offset: u32, len: usize) -> Result<(), NorFlashErrorKind> {
        let o = offset as usize;
        if o + len > self.mem.len() {
            return Err(NorFlashErrorKind::OutOfBounds);
        }
        if !o.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        if self.dead {
            return Err(NorFlashErrorKind::Other);
        }
        Ok(())
    }

    /// True when this operation is the one the power fails at.
    fn failing(&mut self) -> bool {
        if self.cut_at == Some(self.ops) {
            self.dead = true;
            true
        } else {
            false
        }
    }
}

impl<const W: usize, const E: usize> ErrorType for Sim<W, E> {
    type Error = NorFlashErrorKind;
}

impl<const W: usize, const E: usize> ReadNorFlash for Sim<W, E> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.check(1, offset, bytes.len())?;
        let o = offset as usize;
        bytes.copy_from_slice(&self.mem[o..o + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl<const W: usize, const E: usize> NorFlash for Sim<W, E> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if to < from {
            return Err(NorFlashErrorKind::OutOfBounds);
        }
        self.check(E, from, (to - from) as usize)?;
        for s in (from as usize..to as usize).step_by(E) {
            if self.failing() {
                if self.torn {
                    // Part of the sector's bits reach 1.
                    for b in &mut self.mem[s..s + E] {
                        *b |= self.rng.next_u32() as u8;
                    }
                }
                return Err(NorFlashErrorKind::Other);
            }
            self.mem[s..s + E].fill(0xFF);
            self.ops += 1;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.check(W, offset, bytes.len())?;
        for (i, word) in bytes.chunks(W).enumerate() {
            let at = offset as usize + i * W;
            if self.failing() {
                if self.torn {
                    // Only some of the bits that had to be cleared are cleared (at least
                    // one is not, if any had to be).
                    let mut kept_one = false;
                    for (j, &d) in word.iter().enumerate() {
                        let old = self.mem[at + j];
                        let to_clear = old & !d;
                        let mut skip = to_clear & (self.rng.next_u32() as u8);
                        if !kept_one && to_clear != 0 && skip == 0 {
                            skip = to_clear & to_clear.wrapping_neg(); // lowest bit
                        }
                        kept_one |= skip != 0;
                        self.mem[at + j] = old & (d | skip);
                    }
                }
                return Err(NorFlashErrorKind::Other);
            }
            if self.mem[at..at + W].iter().any(|&b| b != 0xFF) {
                self.double_writes += 1;
            }
            for (m, &d) in self.mem[at..at + W].iter_mut().zip(word) {
                *m &= d;
            }
            self.ops += 1;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Checkpoint contents.

/// Extra bytes of the campaign's checkpoints (an odd count: the CRC and the commit word
/// then sit at unaligned offsets).
const EXTRA: usize = 37;

fn plain_layout() -> Layout {
    Layout::new::<f32>(SHAPE, Scope::Full, OptimKind::Adam)
}

/// The checkpoints of the power-cut and bit-flip campaigns: values and extra bytes.
fn layout() -> Layout {
    plain_layout().with_extra(EXTRA)
}

/// A checkpoint's values: pseudo-random, with the awkward ones (`-0.0`, subnormals,
/// extremes) that a bit-exact round trip must keep.
#[derive(Clone, PartialEq, Debug)]
struct Ckpt {
    params: Vec<f32>,
    state: Vec<f32>,
    extra: Vec<u8>,
    steps: u32,
}

fn ckpt(id: u32) -> Ckpt {
    let l = layout();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1000 + id as u64);
    let mut v = |i: usize| match i % 11 {
        0 => -0.0f32,
        1 => f32::from_bits(1 + (rng.next_u32() & 0x7F_FFFF)), // subnormal
        2 => f32::MAX,
        _ => (rng.next_u32() as f32 / u32::MAX as f32 - 0.5) * 4.0,
    };
    let params = (0..l.params()).map(&mut v).collect();
    let state = (0..l.state()).map(|i| v(i + 3)).collect();
    let extra = (0..l.extra()).map(|_| rng.next_u32() as u8).collect();
    Ckpt {
        params,
        state,
        extra,
        steps: id,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Reboot and load: which checkpoint (by its step count), after checking it bit for bit
/// against the one it claims to be.
fn boot<const W: usize, const E: usize>(
    sim: &mut Sim<W, E>,
    base: u32,
    slot: u32,
    known: &[Ckpt],
) -> Option<u32> {
    sim.reboot();
    let l = layout();
    let mut c = Checkpoints::new(&mut *sim, base, slot).unwrap();
    let mut p = vec![0f32; l.params()];
    let mut s = vec![0f32; l.state()];
    let mut x = vec![0u8; l.extra()];
    let loaded: Option<Loaded> = c
        .load_with_extra(&l, &mut p, &mut s, &mut |i, b| x[i] = b)
        .unwrap();
    let loaded = loaded?;
    let want = known
        .iter()
        .find(|k| k.steps == loaded.train_steps)
        .expect("loaded a checkpoint that was never saved");
    assert_eq!(loaded.optim_steps, want.steps * 10);
    assert_eq!(bits(&p), bits(&want.params), "params of {}", want.steps);
    assert_eq!(bits(&s), bits(&want.state), "state of {}", want.steps);
    assert_eq!(x, want.extra, "extra bytes of {}", want.steps);
    Some(want.steps)
}

fn save<const W: usize, const E: usize>(
    sim: &mut Sim<W, E>,
    base: u32,
    slot: u32,
    c: &Ckpt,
) -> Result<hvae::store::checkpoint::Saved, CheckpointError> {
    let mut cp = Checkpoints::new(&mut *sim, base, slot).unwrap();
    cp.save_with_extra(
        &layout(),
        &c.params,
        &c.state,
        c.steps * 10,
        c.steps,
        &mut |out| out(&c.extra),
    )
}

/// Cuts the power before every operation of a save in three situations; returns the cut
/// points tried.
fn campaign<const W: usize, const E: usize>(torn: bool) -> u64 {
    let l = layout();
    let slot = l.slot_len(W, E);
    let base = E as u32; // not at 0: the offset must be honoured
    let known = [ckpt(1), ckpt(2), ckpt(3), ckpt(4)];
    // Operations of one uninterrupted save: every sector erased, every word written.
    let n_ops = (slot / E + l.record_len(W) / W) as u64;
    let mut tried = 0;
    // (checkpoints already saved, the one being saved)
    let situations: [(&[usize], usize); 3] = [(&[], 0), (&[0], 1), (&[0, 1], 2)];
    for (before, new) in situations {
        let mut pristine = Sim::<W, E>::new(E + 2 * slot + E);
        for &b in before {
            save(&mut pristine, base, slot as u32, &known[b]).unwrap();
        }
        let old = before.last().map(|&b| known[b].steps);
        // The uninterrupted save takes exactly n_ops operations.
        let mut full = Sim::<W, E>::new(0);
        full.mem = pristine.mem.clone();
        save(&mut full, base, slot as u32, &known[new]).unwrap();
        assert_eq!(full.ops, n_ops);
        for k in 0..=n_ops {
            let mut sim = Sim::<W, E>::new(0);
            sim.mem = pristine.mem.clone();
            sim.cut_before(k, torn);
            let r = save(&mut sim, base, slot as u32, &known[new]);
            assert_eq!(r.is_ok(), k == n_ops, "k = {k}: {r:?}");
            let got = boot(&mut sim, base, slot as u32, &known);
            let want = if k == n_ops {
                Some(known[new].steps)
            } else {
                old
            };
            assert_eq!(
                got, want,
                "W {W} E {E} torn {torn}: cut before op {k} of {n_ops}"
            );
            // The device goes on: the next save works and becomes current.
            save(&mut sim, base, slot as u32, &known[3]).unwrap();
            assert_eq!(boot(&mut sim, base, slot as u32, &known), Some(4));
            if k < n_ops {
                // and it did not overwrite the checkpoint that survived the cut.
                let mut c = Checkpoints::new(&mut sim, base, slot as u32).unwrap();
                let seqs: Vec<_> = c.slot_states(&l).unwrap().iter().map(|s| s.seq()).collect();
                assert_eq!(
                    seqs.iter().flatten().count(),
                    1 + usize::from(old.is_some())
                );
            }
            assert_eq!(sim.double_writes, 0);
            tried += 1;
        }
    }
    assert_eq!(tried, 3 * (n_ops + 1));
    tried
}

#[test]
fn every_power_cut_point_loads_old_or_new() {
    let mut total = 0;
    let mut report = String::new();
    macro_rules! run {
        ($w:literal, $e:literal) => {
            for torn in [false, true] {
                let n = campaign::<$w, $e>(torn);
                report += &format!(
                    "  WRITE_SIZE {:>2} ERASE_SIZE {:>4} torn {:<5}: {} cut points\n",
                    $w, $e, torn, n
                );
                total += n;
            }
        };
    }
    run!(1, 128);
    run!(4, 256);
    run!(8, 2048);
    run!(32, 4096);
    // Expected from the layout alone: per geometry and mode, 3 situations x (operations
    // of one save + 1).
    let l = layout();
    let expected: u64 = [(1usize, 128usize), (4, 256), (8, 2048), (32, 4096)]
        .iter()
        .map(|&(w, e)| 2 * 3 * ((l.slot_len(w, e) / e + l.record_len(w) / w) as u64 + 1))
        .sum();
    println!(
        "power-cut campaign (record {} bytes):\n{report}  total: {total} cut points",
        l.record_len(4)
    );
    assert_eq!(total, expected);
    assert_eq!(total, 19_200);
}

// ---------------------------------------------------------------------------------------
// Bit rot.

#[test]
fn bit_flips_in_a_stored_slot_are_detected_and_the_other_slot_is_used() {
    const W: usize = 4;
    const E: usize = 256;
    let l = layout();
    let slot = l.slot_len(W, E) as u32;
    let base = 0u32;
    let known = [ckpt(1), ckpt(2)];
    let mut sim = Sim::<W, E>::new(2 * slot as usize);
    assert_eq!(save(&mut sim, base, slot, &known[0]).unwrap().slot, 0);
    assert_eq!(save(&mut sim, base, slot, &known[1]).unwrap().slot, 1);
    assert_eq!(boot(&mut sim, base, slot, &known), Some(2));
    let body = l.body_len();
    let commit = l.commit_offset(W);
    // Every bit of header, CRC and commit word; every 29th bit of the values.
    let mut offsets: Vec<usize> = (0..HEADER_LEN * 8).collect();
    offsets.extend((HEADER_LEN * 8..body * 8).step_by(29));
    offsets.extend(body * 8..(body + 4) * 8);
    offsets.extend(commit * 8..(commit + 4) * 8);
    let mut by_damage = std::collections::BTreeMap::new();
    for (target, survivor) in [(1usize, Some(1u32)), (0, Some(2))] {
        for &bit in &offsets {
            let at = target * slot as usize + bit / 8;
            sim.mem[at] ^= 1 << (bit % 8);
            let state = Checkpoints::new(&mut sim, base, slot)
                .unwrap()
                .slot_state(&l, target)
                .unwrap();
            let SlotState::Corrupt(d) = state else {
                panic!("flip of bit {bit} in slot {target} not detected: {state:?}");
            };
            *by_damage.entry(format!("{d:?}")).or_insert(0u32) += 1;
            // Damage to the newest slot falls back to the older one; damage to the older
            // one changes nothing.
            let got = boot(&mut sim, base, slot, &known);
            assert_eq!(got, if target == 1 { survivor } else { Some(2) });
            sim.mem[at] ^= 1 << (bit % 8);
        }
    }
    let total: u32 = by_damage.values().sum();
    println!(
        "bit flips: {total} single-bit flips in stored slots ({} per slot: header {}, values {}, CRC 32, commit 32), all detected: {by_damage:?}",
        offsets.len(),
        HEADER_LEN * 8,
        offsets.len() - HEADER_LEN * 8 - 64
    );
    assert_eq!(total as usize, 2 * offsets.len());
    // Both damaged: nothing to load (fall back to compiled-in weights).
    sim.mem[8] ^= 1;
    sim.mem[slot as usize + 100] ^= 0x10;
    assert_eq!(boot(&mut sim, base, slot, &known), None);
    // A damaged commit word reads as an unfinished save.
    sim.mem[8] ^= 1;
    sim.mem[commit] = 0;
    let s = Checkpoints::new(&mut sim, base, slot)
        .unwrap()
        .slot_state(&l, 0)
        .unwrap();
    assert_eq!(s, SlotState::Corrupt(Damage::Uncommitted));
    assert_ne!(COMMIT, u32::MAX);
}

// ---------------------------------------------------------------------------------------
// API edges.

#[test]
fn geometry_buffers_and_values_are_checked() {
    type F = Sim<4, 256>;
    let l = plain_layout();
    let slot = l.slot_len(4, 256) as u32;
    assert_eq!(slot as usize % 256, 0);
    assert_eq!(
        hvae::store::checkpoint::slot_len::<f32, F>(&SHAPE, Scope::Full, OptimKind::Adam),
        slot as usize
    );
    let mut sim = F::new(2 * slot as usize + 256);
    for (base, len) in [
        (1, slot),
        (0, slot + 4),
        (0, 0),
        (256, slot + 256),
        (u32::MAX - 255, 256),
    ] {
        assert_eq!(
            Checkpoints::new(&mut sim, base, len).err(),
            Some(CheckpointError::Geometry),
            "{base} {len}"
        );
    }
    let k = ckpt(1);
    // Extra bytes: exactly the layout's count, or nothing is committed.
    let lx = l.with_extra(3);
    let mut bigger = Checkpoints::new(&mut sim, 256, lx.slot_len(4, 256) as u32).unwrap();
    for n in [2usize, 4] {
        let r = bigger.save_with_extra(&lx, &k.params, &k.state, 0, 0, &mut |out| {
            out(&[7u8; 4][..n])
        });
        assert_eq!(r.err(), Some(CheckpointError::BufferLength), "{n} bytes");
    }
    assert_eq!(bigger.newest(&lx).unwrap(), None);
    bigger.erase_all().unwrap();
    let mut c = Checkpoints::new(&mut sim, 256, slot).unwrap();
    assert_eq!(
        c.save(&l, &k.params[1..], &k.state, 0, 0).err(),
        Some(CheckpointError::BufferLength)
    );
    let mut bad = k.state.clone();
    bad[17] = f32::NAN;
    assert_eq!(
        c.save(&l, &k.params, &bad, 0, 0).err(),
        Some(CheckpointError::NonFinite {
            index: (l.params() + 17) as u32
        })
    );
    // Nothing was written.
    assert_eq!(
        c.slot_states(&l).unwrap(),
        [SlotState::Empty, SlotState::Empty]
    );
    // f64 buffers against an f32 layout.
    let (mut p, mut s) = (vec![0f64; l.params()], vec![0f64; l.state()]);
    assert_eq!(
        c.load(&l, &mut p, &mut s).err(),
        Some(CheckpointError::BufferLength)
    );
    // A slot too small for the record.
    let mut small = Checkpoints::new(&mut sim, 0, 256).unwrap();
    assert_eq!(
        small.save(&l, &k.params, &k.state, 0, 0).err(),
        Some(CheckpointError::SlotTooSmall)
    );
    // A checkpoint of another model is intact but never loaded, and is overwritten like
    // an old slot.
    let mut c = Checkpoints::new(&mut sim, 256, slot).unwrap();
    c.save(&l, &k.params, &k.state, 10, 1).unwrap();
    let other = Layout::new::<f32>(SHAPE, Scope::SegmenterOnly, OptimKind::Adam);
    assert!(other.state() < l.state());
    let (mut p, mut s) = (vec![0f32; other.params()], vec![0f32; other.state()]);
    assert_eq!(c.load(&other, &mut p, &mut s).unwrap(), None);
    assert_eq!(
        c.slot_state(&other, 0).unwrap(),
        SlotState::Incompatible { seq: 1 }
    );
    let saved = c.save(&other, &p, &s, 0, 0).unwrap();
    assert_eq!((saved.slot, saved.seq), (1, 2));
    assert_eq!(
        c.load(&other, &mut p, &mut s).unwrap().map(|l| l.seq),
        Some(2)
    );
    // f64 checkpoints store f64 exactly.
    let l64 = Layout::new::<f64>(SHAPE, Scope::Full, OptimKind::Adam);
    let p64: Vec<f64> = (0..l64.params()).map(|i| 1.0 / (i as f64 + 3.0)).collect();
    let s64: Vec<f64> = (0..l64.state()).map(|i| -(i as f64).sqrt()).collect();
    let mut sim64 = F::new(2 * l64.slot_len(4, 256));
    let mut c = Checkpoints::new(&mut sim64, 0, l64.slot_len(4, 256) as u32).unwrap();
    c.save(&l64, &p64, &s64, 3, 4).unwrap();
    let (mut p, mut s) = (vec![0f64; l64.params()], vec![0f64; l64.state()]);
    c.load(&l64, &mut p, &mut s).unwrap().unwrap();
    assert_eq!((p, s), (p64, s64));
    // Errors print.
    assert_eq!(
        CheckpointError::SlotTooSmall.to_string(),
        "checkpoint does not fit in a slot"
    );
    // Sequence numbers keep counting across saves and slots alternate.
    let mut c = Checkpoints::new(&mut sim, 256, slot).unwrap();
    c.erase_all().unwrap();
    for i in 1..=5u32 {
        let s = c.save(&l, &k.params, &k.state, i, i).unwrap();
        assert_eq!((s.seq, s.slot), (i, ((i - 1) % 2) as u8));
    }
}

// ---------------------------------------------------------------------------------------
// The trainer hook.

const D: usize = 8;
const CAP: usize = 32;
type Trainer = OnlineTrainer<f32, D, CAP, Vec<f32>, Vec<f32>>;

/// Bytes of a slot for [`Checkpoints::save_trainer`] of a [`Trainer`] on flash `F`.
fn trainer_slot_len<F: NorFlash>() -> u32 {
    let layout = hvae::store::checkpoint::trainer_layout::<f32, D, CAP, Vec<f32>, Vec<f32>, f32>(
        &SHAPE,
        Scope::Full,
        OptimKind::Adam,
        0,
    );
    layout.slot_len(F::WRITE_SIZE, F::ERASE_SIZE) as u32
}

fn trainer_and_model() -> (Trainer, Model<f32, Vec<f32>>, Xoshiro256PlusPlus) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let mut model = Model::new(SHAPE, vec![0.0f32; SHAPE.param_len()]).unwrap();
    model.init(&mut rng);
    let mut cfg = TrainConfig::new(1e-2f32);
    cfg.batch = 4;
    cfg.warmup_steps = 10;
    let scratch = vec![0.0; TrainConfig::<f32>::storage_len(&SHAPE, Scope::Full, 4, CAP)];
    let state = vec![0.0; state_len(OptimKind::Adam, SHAPE.scope_range(Scope::Full).len())];
    let mut t = Trainer::new(&SHAPE, cfg, scratch, state).unwrap();
    for i in 0..CAP {
        let x: Vec<f32> = (0..D)
            .map(|j| ((i * 7 + j * 3) % 11) as f32 / 11.0)
            .collect();
        t.push(&x).unwrap();
    }
    t.fit_normalisation(&mut model).unwrap();
    (t, model, rng)
}

#[test]
fn after_too_many_rejections_one_call_restores_the_last_checkpoint() {
    let (mut sim, slot) = Sim::<4, 256>::for_trainer();
    let (mut t, mut model, mut rng) = trainer_and_model();
    {
        // No checkpoint yet and a restore is needed: the caller is told to fall back.
        let mut c = Checkpoints::new(&mut sim, 0, slot).unwrap();
        assert_eq!(
            c.restore_if_needed(&mut model, &mut t).unwrap(),
            Restore::NotNeeded
        );
    }
    for _ in 0..30 {
        t.step(&mut model, &mut rng).unwrap();
    }
    let mut c = Checkpoints::new(&mut sim, 0, slot).unwrap();
    c.save_trainer(&model, &t).unwrap();
    let saved_params = bits(model.params());
    let saved_state = bits(t.optimiser().storage());
    let saved_steps = (t.steps(), t.optimiser().steps());
    assert_eq!(saved_steps.0, 30);
    // Train on; the model moves away from the checkpoint.
    for _ in 0..5 {
        t.step(&mut model, &mut rng).unwrap();
    }
    assert_ne!(bits(model.params()), saved_params);
    // A stuck sensor: every buffered sample overflows, every step is rejected.
    for _ in 0..CAP {
        t.push(&[3e19, -3e19, 3e19, -3e19, 3e19, -3e19, 3e19, -3e19])
            .unwrap();
    }
    let max = t.config().guard.max_rejections;
    for i in 0..max {
        assert_eq!(
            c.restore_if_needed(&mut model, &mut t).unwrap(),
            Restore::NotNeeded
        );
        let e = t.step(&mut model, &mut rng).unwrap_err();
        assert!(matches!(
            e,
            TrainError::Loss(_) | TrainError::Optim(_) | TrainError::Diverged
        ));
        assert_eq!(t.rejections_in_a_row(), i + 1);
    }
    assert!(t.needs_restore());
    let r = c.restore_if_needed(&mut model, &mut t).unwrap();
    assert!(
        matches!(r, Restore::Restored(l) if l.train_steps == 30 && l.seq == 1),
        "{r:?}"
    );
    assert!(!t.needs_restore());
    assert_eq!(t.rejections_in_a_row(), 0);
    assert_eq!(bits(model.params()), saved_params);
    assert_eq!(bits(t.optimiser().storage()), saved_state);
    assert_eq!((t.steps(), t.optimiser().steps()), saved_steps);
    // The memory came back too: the stuck sensor's samples are gone, training goes on.
    let r = t.step(&mut model, &mut rng).unwrap();
    assert_eq!(r.steps, 31);
    // With the flash blank, the same situation says so.
    c.erase_all().unwrap();
    for _ in 0..CAP {
        t.push(&[3e19, -3e19, 3e19, -3e19, 3e19, -3e19, 3e19, -3e19])
            .unwrap();
    }
    for _ in 0..max {
        let _ = t.step(&mut model, &mut rng);
    }
    assert_eq!(
        c.restore_if_needed(&mut model, &mut t).unwrap(),
        Restore::NoCheckpoint
    );
}

#[test]
fn a_rebooted_trainer_resumes_without_repeating_warm_up() {
    let (mut sim, slot) = Sim::<8, 2048>::for_trainer();
    let (mut t, mut model, mut rng) = trainer_and_model();
    for _ in 0..25 {
        t.step(&mut model, &mut rng).unwrap();
    }
    Checkpoints::new(&mut sim, 0, slot)
        .unwrap()
        .save_trainer(&model, &t)
        .unwrap();
    let rng_at_save = rng.clone();
    // Power cycle: a fresh model (compiled-in weights) and trainer.
    let (mut t2, mut model2, mut rng2) = trainer_and_model();
    let loaded = Checkpoints::new(&mut sim, 0, slot)
        .unwrap()
        .restore_trainer(&mut model2, &mut t2)
        .unwrap()
        .unwrap();
    assert_eq!(loaded.train_steps, 25);
    assert_eq!(bits(model2.params()), bits(model.params()));
    assert_eq!(
        bits(t2.optimiser().storage()),
        bits(t.optimiser().storage())
    );
    assert_eq!(t2.steps(), 25);
    // Past the warm-up (10 steps): joint training goes on, the centres are not
    // re-initialised by k-means.
    let centres = SHAPE.segmenter_offset()..SHAPE.segmenter_offset() + 9;
    let before = model2.params()[centres.clone()].to_vec();
    let r = t2.step(&mut model2, &mut rng2).unwrap();
    assert!(!r.initialised_centres);
    assert_eq!(r.phase, hvae::train::trainer::Phase::Joint);
    assert_eq!(r.steps, 26);
    let moved: f32 = model2.params()[centres]
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(moved > 0.0 && moved < 0.5, "{moved}");
    // With the generator of the run that saved it, the resumed trainer takes the very
    // steps that run takes (its memory, marginal and guard came back too).
    let (mut t4, mut model4, _) = trainer_and_model();
    for i in 0..CAP {
        // Another memory: the record must replace it.
        t4.push(&[i as f32; D]).unwrap();
    }
    Checkpoints::new(&mut sim, 0, slot)
        .unwrap()
        .restore_trainer(&mut model4, &mut t4)
        .unwrap()
        .unwrap();
    // The record it restored is the record saved, byte for byte, at its stated length.
    let record = |t: &Trainer| {
        let mut v = Vec::new();
        t.write_resume(&SHAPE, &mut |b| v.extend_from_slice(b));
        v
    };
    assert_eq!(record(&t).len(), Trainer::resume_len(&SHAPE));
    assert_eq!(record(&t4), record(&t));
    let mut rng4 = rng_at_save;
    for _ in 0..5 {
        let a = t.step(&mut model, &mut rng).unwrap();
        let b = t4.step(&mut model4, &mut rng4).unwrap();
        assert_eq!(a.loss.total.to_bits(), b.loss.total.to_bits());
        assert_eq!(bits(model4.params()), bits(model.params()));
        assert_eq!(bits(t4.marginal(&SHAPE)), bits(t.marginal(&SHAPE)));
    }
    // A fresh trainer that did not restore would have re-initialised them.
    let (mut t3, mut model3, mut rng3) = trainer_and_model();
    for _ in 0..10 {
        t3.step(&mut model3, &mut rng3).unwrap();
    }
    assert!(t3.step(&mut model3, &mut rng3).unwrap().initialised_centres);
}

#[test]
fn there_are_two_slots() {
    let l = layout();
    let slot = l.slot_len(4, 256) as u32;
    let mut sim = Sim::<4, 256>::new(2 * slot as usize);
    let mut c = Checkpoints::new(&mut sim, 0, slot).unwrap();
    assert_eq!(c.slot_state(&l, 1).unwrap(), SlotState::Empty);
    assert_eq!(c.slot_state(&l, 2).err(), Some(CheckpointError::NoSuchSlot));
}

#[test]
fn an_adapted_layout_holds_normalisation_and_segmenter_of_one_model() {
    let layout = Layout::adapted::<f32>(SHAPE, 0xABCD);
    let n = 2 * SHAPE.input + SHAPE.segmenter_len();
    assert_eq!((layout.params(), layout.state()), (n, 0));
    let slot = layout.slot_len(4, 1024);
    let mut c = Checkpoints::new(Sim::<4, 1024>::new(4 * slot), 0, slot as u32).unwrap();
    let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
    c.save(&layout, &values, &[], 0, 42).unwrap();
    let mut back = vec![0.0f32; n];
    let l = c.load(&layout, &mut back, &mut []).unwrap().unwrap();
    assert_eq!((l.seq, l.train_steps), (1, 42));
    assert_eq!(bits(&back), bits(&values));
    // Stored with scope code 3.
    let mut flash = c.into_inner();
    let mut h = [0u8; HEADER_LEN];
    flash.read(0, &mut h).unwrap();
    assert_eq!(h[33], 3);
    // Other weights of the same shape, or the whole-model layout of the same shape:
    // never loaded.
    let mut c = Checkpoints::new(flash, 0, slot as u32).unwrap();
    let other = Layout::adapted::<f32>(SHAPE, 0xABCE);
    assert_eq!(
        c.slot_state(&other, 0).unwrap(),
        SlotState::Incompatible { seq: 1 }
    );
    assert!(c.load(&other, &mut back, &mut []).unwrap().is_none());
    let whole = Layout::new::<f32>(SHAPE, Scope::SegmenterOnly, OptimKind::Sgd);
    assert_eq!(
        c.slot_state(&whole, 0).unwrap(),
        SlotState::Incompatible { seq: 1 }
    );
}

/// `save_adapted` / `load_adapted`: the values of an adapted checkpoint straight from and
/// into a model's parameter vector (whole, or its inference prefix): the same slot bytes
/// as `save` of the gathered values, the other parameters untouched on load; any other
/// layout is refused.
#[test]
fn an_adapted_checkpoint_goes_straight_from_and_into_the_parameter_vector() {
    let layout = Layout::adapted::<f32>(SHAPE, 7).with_extra(5);
    let (d2, so, l) = (
        2 * SHAPE.input,
        SHAPE.segmenter_offset(),
        SHAPE.segmenter_len(),
    );
    let slot = layout.slot_len(4, 1024);
    let whole: Vec<f32> = (0..SHAPE.param_len())
        .map(|i| i as f32 * 0.5 - 3.0)
        .collect();
    let gathered: Vec<f32> = whole[..d2]
        .iter()
        .chain(&whole[so..so + l])
        .copied()
        .collect();
    let extra = [1u8, 2, 3, 4, 5];
    let mut by_save = Checkpoints::new(Sim::<4, 1024>::new(2 * slot), 0, slot as u32).unwrap();
    by_save
        .save_with_extra(&layout, &gathered, &[], 0, 9, &mut |out| out(&extra))
        .unwrap();
    for params in [&whole[..], &whole[..SHAPE.inference_param_len()]] {
        let mut c = Checkpoints::new(Sim::<4, 1024>::new(2 * slot), 0, slot as u32).unwrap();
        c.save_adapted(&layout, params, 9, &mut |out| out(&extra))
            .unwrap();
        let mut into: Vec<f32> = vec![-1.0; params.len()];
        let mut x = Vec::new();
        let loaded = c
            .load_adapted(&layout, &mut into, &mut |_, b| x.push(b))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.train_steps, 9);
        assert_eq!(x, extra);
        for (i, (&got, &want)) in into.iter().zip(params).enumerate() {
            let adapted = i < d2 || (so..so + l).contains(&i);
            assert_eq!(got, if adapted { want } else { -1.0 }, "parameter {i}");
        }
        let a = c.into_inner();
        let mut want = Checkpoints::new(Sim::<4, 1024>::new(2 * slot), 0, slot as u32).unwrap();
        want.save_with_extra(&layout, &gathered, &[], 0, 9, &mut |out| out(&extra))
            .unwrap();
        assert_eq!(a.mem, want.into_inner().mem, "the same slot bytes as save");
    }
    // Not an adapted layout, or a vector without the segmenter: refused.
    let mut c = Checkpoints::new(Sim::<4, 1024>::new(2 * slot), 0, slot as u32).unwrap();
    let whole_layout = Layout::new::<f32>(SHAPE, Scope::SegmenterOnly, OptimKind::Sgd);
    assert_eq!(
        c.save_adapted(&whole_layout, &whole, 0, &mut |_| {}).err(),
        Some(CheckpointError::BufferLength)
    );
    assert_eq!(
        c.save_adapted(&layout, &whole[..so], 0, &mut |_| {}).err(),
        Some(CheckpointError::BufferLength)
    );
    let mut short = vec![0.0f32; so];
    assert_eq!(
        c.load_adapted(&layout, &mut short, &mut |_, _| {}).err(),
        Some(CheckpointError::BufferLength)
    );
}

#[test]
fn a_version_1_slot_still_loads_and_extra_bytes_change_the_layout() {
    type F = Sim<4, 256>;
    let l = plain_layout();
    let slot = l.slot_len(4, 256) as u32;
    let mut sim = F::new(2 * slot as usize);
    let k = ckpt(1);
    Checkpoints::new(&mut sim, 0, slot)
        .unwrap()
        .save(&l, &k.params, &k.state, 10, 1)
        .unwrap();
    // What an older device wrote: version 1, no extra bytes (35..40 zero), its CRC.
    assert_eq!(&sim.mem[4..6], &2u16.to_le_bytes());
    assert_eq!(&sim.mem[35..40], &[0; 5]);
    sim.mem[4..6].copy_from_slice(&1u16.to_le_bytes());
    let body = l.body_len();
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&sim.mem[..body]);
    sim.mem[body..body + 4].copy_from_slice(&crc.to_le_bytes());
    let mut c = Checkpoints::new(&mut sim, 0, slot).unwrap();
    let (mut p, mut s) = (vec![0f32; l.params()], vec![0f32; l.state()]);
    let loaded = c.load(&l, &mut p, &mut s).unwrap().unwrap();
    assert_eq!((loaded.seq, loaded.train_steps), (1, 1));
    assert_eq!((bits(&p), bits(&s)), (bits(&k.params), bits(&k.state)));
    // The same checkpoint is another layout's when extra bytes are asked for.
    let lx = l.with_extra(8);
    assert_eq!(
        c.slot_state(&lx, 0).unwrap(),
        SlotState::Incompatible { seq: 1 }
    );
    // A version this module does not know is a damaged header.
    sim.mem[4..6].copy_from_slice(&3u16.to_le_bytes());
    let state = Checkpoints::new(&mut sim, 0, slot)
        .unwrap()
        .slot_state(&l, 0)
        .unwrap();
    assert_eq!(state, SlotState::Corrupt(Damage::Header));
}
