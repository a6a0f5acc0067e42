//! The trainer's memory of past samples: `CAP` rows of `D` stored values, kept as a ring
//! of the most recent rows or as a reservoir (a uniform sample of every row seen), each
//! value stored as the scalar itself or quantised to one byte.
//!
//! The consistency loss mines its neighbours in this memory, so its size and what it
//! keeps decide how good the neighbours are: a ring of 32 raw `f32` rows (8 KiB for 64
//! features) sees a few classes at a time; a reservoir of 256 one-byte rows (16 KiB)
//! holds the whole stream's mix (docs/device.md#scenarios measures both).
//!
//! # Memory
//! `CAP * D` stored values (`CAP * D * size_of::<E>()` bytes), inline; a length, a
//! ring index, a count and the policy of bookkeeping.

use crate::Real;

/// Which rows the memory keeps once it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Policy {
    /// The `CAP` most recent rows: each new row replaces the oldest.
    Ring,
    /// A uniform sample of every row seen (Vitter's algorithm R): the `n`-th row replaces
    /// a random slot with probability `CAP / n`. The draw is a hash of `n` (no
    /// generator state), so the same stream keeps the same rows.
    Reservoir,
}

/// A quantisation of raw values to one byte: `x` is kept as
/// `round((x - lo) / step)` clamped to `0..=255`, read back as `lo + q step`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Quant<T> {
    /// The value of code 0.
    pub lo: T,
    /// The step between two codes (positive, finite).
    pub step: T,
}

impl<T: Real> Quant<T> {
    /// Codes 0..=255 spanning `[lo, hi]`; `None` unless `lo < hi`, both finite.
    pub fn spanning(lo: T, hi: T) -> Option<Self> {
        let step = (hi - lo) / T::of(255.0);
        (lo.is_finite() && hi.is_finite() && step > T::zero() && step.is_finite())
            .then_some(Quant { lo, step })
    }

    /// True when `step` is positive and finite and `lo` finite.
    pub fn is_valid(&self) -> bool {
        self.lo.is_finite() && self.step.is_finite() && self.step > T::zero()
    }
}

/// How a scalar `T` is stored in the memory.
pub trait Stored<T>: Copy {
    /// `x` as stored.
    fn store(x: T, q: &Quant<T>) -> Self;
    /// The stored value read back.
    fn load(self, q: &Quant<T>) -> T;
}

/// Stored as itself (the quantisation is not used).
impl<T: Real> Stored<T> for T {
    #[inline(always)]
    fn store(x: T, _: &Quant<T>) -> Self {
        x
    }
    #[inline(always)]
    fn load(self, _: &Quant<T>) -> T {
        self
    }
}

/// One byte per value, by [`Quant`] (values outside its span are clamped to it).
impl<T: Real> Stored<T> for u8 {
    #[inline]
    fn store(x: T, q: &Quant<T>) -> Self {
        // `as` saturates (NaN to 0): no panic; + 0.5 and truncation round to nearest.
        (((x - q.lo) / q.step).to_f32() + 0.5) as u8
    }
    #[inline]
    fn load(self, q: &Quant<T>) -> T {
        q.lo + q.step * T::of(f64::from(self))
    }
}

/// `CAP` rows of `D` values stored as `E`, kept by a [`Policy`]. The rows live in a
/// `heapless::Vec` (no initialisation of the empty slots: an empty memory is built
/// without writing, or copying on the stack, its `CAP * D` values).
#[derive(Clone, Debug)]
pub struct SampleMemory<E, const D: usize, const CAP: usize> {
    rows: heapless::Vec<[E; D], CAP>,
    /// The ring's next slot.
    next: usize,
    /// Rows offered so far (saturating).
    seen: u64,
    policy: Policy,
}

impl<E: Copy, const D: usize, const CAP: usize> SampleMemory<E, D, CAP> {
    /// An empty memory.
    pub const fn new(policy: Policy) -> Self {
        SampleMemory {
            rows: heapless::Vec::new(),
            next: 0,
            seen: 0,
            policy,
        }
    }

    /// Offers a row: kept (replacing one) or not, as the policy says. The ring's slots
    /// are in the order `heapless::HistoryBuf` keeps them.
    pub fn push(&mut self, row: [E; D]) {
        self.seen = self.seen.saturating_add(1);
        let len = self.rows.len();
        if len < CAP {
            // Not full: room for it (`push` cannot fail).
            let _ = self.rows.push(row);
            if self.policy == Policy::Ring {
                self.next = (len + 1) % CAP.max(1);
            }
            return;
        }
        let slot = {
            match self.policy {
                Policy::Ring => Some(self.next),
                Policy::Reservoir => {
                    // `seen` is at least 1 here; `checked_rem` keeps a panic path out.
                    let j = mix(self.seen).checked_rem(self.seen);
                    j.and_then(|j| usize::try_from(j).ok()).filter(|&j| j < CAP)
                }
            }
        };
        if let Some(s) = slot {
            if let Some(r) = self.rows.get_mut(s) {
                *r = row;
            }
            if self.policy == Policy::Ring {
                self.next = (s + 1) % CAP.max(1);
            }
        }
    }

    /// The rows held (in slot order).
    pub fn as_slice(&self) -> &[[E; D]] {
        self.rows.as_slice()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows offered so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Reads `row` back into `out` (as many values as both have).
#[inline]
pub fn load_row<T: Real, E: Stored<T>>(out: &mut [T], row: &[E], q: &Quant<T>) {
    for (o, &e) in out.iter_mut().zip(row) {
        *o = e.load(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_most_recent_in_history_buf_order() {
        let mut m = SampleMemory::<f32, 1, 3>::new(Policy::Ring);
        let mut h = heapless::HistoryBuf::<[f32; 1], 3>::new();
        for i in 0..8 {
            m.push([i as f32]);
            h.write([i as f32]);
            assert_eq!(m.as_slice(), h.as_slice());
        }
    }

    #[test]
    fn reservoir_keeps_a_uniform_sample() {
        // 1000 rows into 100 slots: each decile of the stream holds about 10.
        let mut m = SampleMemory::<u16, 1, 100>::new(Policy::Reservoir);
        for i in 0..1000u16 {
            m.push([i]);
        }
        assert_eq!(m.len(), 100);
        let mut per = [0usize; 10];
        for r in m.as_slice() {
            per[usize::from(r[0] / 100)] += 1;
        }
        assert!(per.iter().all(|&n| (3..=20).contains(&n)), "{per:?}");
    }

    #[test]
    fn bytes_round_trip_within_half_a_step() {
        let q = Quant::spanning(-2.0f32, 14.0).unwrap();
        for i in 0..=160 {
            let x = -2.0 + 0.1 * i as f32;
            let back: f32 = <u8 as Stored<f32>>::store(x, &q).load(&q);
            assert!((back - x).abs() <= 0.5 * q.step + 1e-5, "{x} {back}");
        }
        assert_eq!(<u8 as Stored<f32>>::store(-100.0, &q), 0);
        assert_eq!(<u8 as Stored<f32>>::store(100.0, &q), 255);
        assert_eq!(<u8 as Stored<f32>>::store(f32::NAN, &q), 0);
    }
}
