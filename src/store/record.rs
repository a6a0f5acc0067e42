//! Fixed-length byte records of state a checkpoint keeps beside the weights (the online
//! k-means counts, the spawner's memory of novelty, the normalisation tracker): each
//! value written as its little-endian bytes, in field order, and read back byte by byte
//! as a checkpoint streams out of flash, without a buffer of the record's size.
//!
//! ```
//! use hvae::store::record::Record;
//! let (a, mut b) = ([1.5f32, -0.0, f32::MIN_POSITIVE], [0.0f32; 3]);
//! let mut bytes = Vec::new();
//! a.put(&mut |p| bytes.extend_from_slice(p));
//! assert_eq!(bytes.len(), <[f32; 3]>::LEN);
//! for (i, &x) in bytes.iter().enumerate() {
//!     b.set(i, x);
//! }
//! assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits));
//! ```

/// A value with a byte record of fixed length.
pub trait Record {
    /// Bytes of the record.
    const LEN: usize;
    /// Writes the record, in pieces, to `out`.
    fn put(&self, out: &mut dyn FnMut(&[u8]));
    /// Sets byte `at` of the record: all of a record's bytes, in any order, give back
    /// the value that wrote it (exact bits). A byte past the record changes nothing.
    fn set(&mut self, at: usize, b: u8);
}

macro_rules! int_record {
    ($($t:ty),*) => {$(
        impl Record for $t {
            const LEN: usize = core::mem::size_of::<$t>();
            fn put(&self, out: &mut dyn FnMut(&[u8])) {
                out(&self.to_le_bytes());
            }
            fn set(&mut self, at: usize, b: u8) {
                let mut x = self.to_le_bytes();
                if let Some(v) = x.get_mut(at) {
                    *v = b;
                }
                *self = <$t>::from_le_bytes(x);
            }
        }
    )*};
}

int_record!(u8, u32, u64, u128);

/// Stored as `u32` (the counts and indices kept this way are small).
impl Record for usize {
    const LEN: usize = 4;
    fn put(&self, out: &mut dyn FnMut(&[u8])) {
        (*self as u32).put(out);
    }
    fn set(&mut self, at: usize, b: u8) {
        let mut x = *self as u32;
        x.set(at, b);
        *self = x as usize;
    }
}

/// Its exact bits.
impl Record for f32 {
    const LEN: usize = 4;
    fn put(&self, out: &mut dyn FnMut(&[u8])) {
        self.to_bits().put(out);
    }
    fn set(&mut self, at: usize, b: u8) {
        let mut x = self.to_bits();
        x.set(at, b);
        *self = f32::from_bits(x);
    }
}

/// The elements in order.
impl<T: Record, const N: usize> Record for [T; N] {
    const LEN: usize = N * T::LEN;
    fn put(&self, out: &mut dyn FnMut(&[u8])) {
        for v in self {
            v.put(out);
        }
    }
    fn set(&mut self, at: usize, b: u8) {
        let (i, k) = (at.checked_div(T::LEN), at.checked_rem(T::LEN));
        if let (Some(v), Some(k)) = (i.and_then(|i| self.get_mut(i)), k) {
            v.set(k, b);
        }
    }
}

/// The body of a [`Record`] impl for a struct: its fields (name and type), in order.
macro_rules! fields_record {
    ($($f:ident: $t:ty),* $(,)?) => {
        const LEN: usize = 0 $(+ <$t as $crate::store::record::Record>::LEN)*;
        fn put(&self, out: &mut dyn FnMut(&[u8])) {
            $($crate::store::record::Record::put(&self.$f, out);)*
        }
        fn set(&mut self, at: usize, b: u8) {
            let mut at = at;
            $(
                let len = <$t as $crate::store::record::Record>::LEN;
                if at < len {
                    return $crate::store::record::Record::set(&mut self.$f, at, b);
                }
                at -= len;
            )*
            let _ = (at, b);
        }
    };
}
pub(crate) use fields_record;
