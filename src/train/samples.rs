//! The trainer's memory of past samples: `CAP` rows of `D` stored values, kept as a ring
//! of the most recent rows, as a reservoir (a uniform sample of every row seen) or as a
//! sliding random sample of the recent stream, each value stored as the scalar itself or
//! quantised to one byte.
//!
//! The consistency loss mines its neighbours in this memory, so its size and what it
//! keeps decide how good the neighbours are: a ring of 32 raw `f32` rows (8 KiB for 64
//! features) sees a few classes at a time; 240 one-byte rows (15 KiB) hold the stream's
//! mix (docs/device.md#scenarios measures them). Of a stream that passes over the same
//! data again and again, a reservoir keeps the first rows it saw for good (the `n`-th
//! row enters with probability `CAP / n`), and a trainer that draws its batches from it
//! learns those few hundred rows by heart; a sliding sample turns over as the stream
//! goes, and forgets a class that has not come by for a few `CAP` rows.
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
    /// A random sample of the recent stream: once full, every new row replaces a slot
    /// drawn by a hash of the row count, so a row stays `CAP` rows on average (its age
    /// is geometric) and the memory turns over as the stream goes on.
    Sliding,
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
    /// Bytes of one stored value in a checkpoint ([`SampleMemory::write_record`]).
    const BYTES: usize;
    /// `x` as stored.
    fn store(x: T, q: &Quant<T>) -> Self;
    /// The stored value read back.
    fn load(self, q: &Quant<T>) -> T;
    /// Byte `k` (little-endian, `k < BYTES`) of the stored value's exact bits.
    fn byte(self, k: usize) -> u8;
    /// The value with byte `k` of its bits replaced by `b`.
    fn with_byte(self, k: usize, b: u8) -> Self;
    /// The value of all-zero bits (a slot restored before its bytes arrive).
    fn zero() -> Self;
}

/// Stored as itself (the quantisation is not used).
impl<T: Real> Stored<T> for T {
    const BYTES: usize = core::mem::size_of::<T>();
    #[inline(always)]
    fn store(x: T, _: &Quant<T>) -> Self {
        x
    }
    #[inline(always)]
    fn load(self, _: &Quant<T>) -> T {
        self
    }
    fn byte(self, k: usize) -> u8 {
        real_byte(self, k)
    }
    fn with_byte(self, k: usize, b: u8) -> Self {
        real_with_byte(self, k, b)
    }
    fn zero() -> Self {
        T::zero()
    }
}

/// The exact bits of a scalar `T` (`f32` or `f64`), widened to `u64`.
fn real_bits<T: Real>(v: T) -> u64 {
    if core::mem::size_of::<T>() == 8 {
        v.to_f64().to_bits()
    } else {
        u64::from(v.to_f32().to_bits())
    }
}

/// Byte `k` (little-endian) of `v`'s exact bits: how checkpoints store a scalar.
pub(crate) fn real_byte<T: Real>(v: T, k: usize) -> u8 {
    (real_bits(v).checked_shr(8 * k as u32).unwrap_or(0) & 0xFF) as u8
}

/// `v` with byte `k` (little-endian) of its bits replaced by `b`: the inverse of
/// [`real_byte`], byte by byte.
pub(crate) fn real_with_byte<T: Real>(v: T, k: usize, b: u8) -> T {
    let shift = 8 * k as u32;
    let mask = 0xFFu64.checked_shl(shift).unwrap_or(0);
    let bits = (real_bits(v) & !mask) | u64::from(b).checked_shl(shift).unwrap_or(0);
    if core::mem::size_of::<T>() == 8 {
        T::of(f64::from_bits(bits))
    } else {
        T::of_f32(f32::from_bits(bits as u32))
    }
}

/// `x` with byte `k` (little-endian) replaced by `b`.
pub(crate) fn u64_with_byte(x: u64, k: usize, b: u8) -> u64 {
    let shift = 8 * k as u32;
    let mask = 0xFFu64.checked_shl(shift).unwrap_or(0);
    (x & !mask) | u64::from(b).checked_shl(shift).unwrap_or(0)
}

/// One byte per value, by [`Quant`] (values outside its span are clamped to it).
impl<T: Real> Stored<T> for u8 {
    const BYTES: usize = 1;
    #[inline]
    fn store(x: T, q: &Quant<T>) -> Self {
        // `as` saturates (NaN to 0): no panic; + 0.5 and truncation round to nearest.
        (((x - q.lo) / q.step).to_f32() + 0.5) as u8
    }
    #[inline]
    fn load(self, q: &Quant<T>) -> T {
        q.lo + q.step * T::of(f64::from(self))
    }
    fn byte(self, _: usize) -> u8 {
        self
    }
    fn with_byte(self, _: usize, b: u8) -> Self {
        b
    }
    fn zero() -> Self {
        0
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
                Policy::Sliding => {
                    let j = mix(self.seen).checked_rem(CAP as u64);
                    j.and_then(|j| usize::try_from(j).ok())
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

/// Bytes of the memory's record in a checkpoint: rows offered (8), the ring's next slot
/// (4), rows held (4), then `CAP` rows of `D` values of `bytes` each (the slots not
/// held written as zeros, so that the length does not depend on the contents).
pub const fn record_len(d: usize, cap: usize, bytes: usize) -> usize {
    16 + cap * d * bytes
}

impl<E: Copy, const D: usize, const CAP: usize> SampleMemory<E, D, CAP> {
    /// Writes the memory's record ([`record_len`] bytes), in pieces, to `out`.
    pub fn write_record<T>(&self, out: &mut dyn FnMut(&[u8]))
    where
        E: Stored<T>,
    {
        out(&self.seen.to_le_bytes());
        out(&(self.next as u32).to_le_bytes());
        out(&(self.rows.len() as u32).to_le_bytes());
        let mut buf = [0u8; 8];
        let n = E::BYTES.min(buf.len());
        for slot in 0..CAP {
            match self.rows.get(slot) {
                Some(row) => {
                    for &v in row {
                        for (k, b) in buf.iter_mut().take(n).enumerate() {
                            *b = v.byte(k);
                        }
                        out(&buf[..n]);
                    }
                }
                None => {
                    buf = [0; 8];
                    for _ in 0..D {
                        out(&buf[..n]);
                    }
                }
            }
        }
    }

    /// Sets byte `at` of the memory's record (bytes given in order, as
    /// [`SampleMemory::write_record`] wrote them, rebuild the memory; a byte past the
    /// record changes nothing).
    pub fn set_record_byte<T>(&mut self, at: usize, b: u8)
    where
        E: Stored<T>,
    {
        match at {
            0..8 => self.seen = u64_with_byte(self.seen, at, b),
            8..12 => self.next = u64_with_byte(self.next as u64, at - 8, b) as usize,
            12..16 => {
                let len = u64_with_byte(self.rows.len() as u64, at - 12, b) as usize;
                // A record of this memory holds at most `CAP` rows (clamped, not trusted).
                let _ = self.rows.resize(len.min(CAP), [E::zero(); D]);
            }
            _ => {
                let i = at - 16;
                let (v, k) = (i / E::BYTES.max(1), i % E::BYTES.max(1));
                let (row, col) = (v.checked_div(D), v.checked_rem(D));
                let x = row
                    .zip(col)
                    .and_then(|(r, c)| self.rows.get_mut(r)?.get_mut(c));
                if let Some(x) = x {
                    *x = x.with_byte(k, b);
                }
            }
        }
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
    fn sliding_keeps_the_recent_stream() {
        // 1000 rows into 100 slots: a row survives the next 100 with probability
        // (1 - 1/100)^100 = 0.37, the next 500 with 0.0066; every slot is kept full.
        let mut m = SampleMemory::<u16, 1, 100>::new(Policy::Sliding);
        for i in 0..1000u16 {
            m.push([i]);
            assert_eq!(m.len(), usize::from(i + 1).min(100));
        }
        let recent = m.as_slice().iter().filter(|r| r[0] >= 900).count();
        let old = m.as_slice().iter().filter(|r| r[0] < 500).count();
        // Expected 63 of the last 100 rows and 0.66 of the first 500 (binomial spreads
        // of 5 and 0.8): the bounds are 4 deviations out.
        assert!((43..=83).contains(&recent), "{recent}");
        assert!(old <= 4, "{old}");
        // The same stream keeps the same rows.
        let mut again = SampleMemory::<u16, 1, 100>::new(Policy::Sliding);
        for i in 0..1000u16 {
            again.push([i]);
        }
        assert_eq!(m.as_slice(), again.as_slice());
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
