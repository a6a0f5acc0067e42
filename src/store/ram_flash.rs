//! NOR flash in memory, for host tests and simulated devices: what the flash traits of
//! `embedded-storage` 0.3 promise, over a heap buffer (feature `alloc`).

use alloc::vec::Vec;
use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};

/// NOR flash in memory: pages of `ERASE` bytes that erase to `0xFF`, 4-byte writes that
/// can only clear bits, as on a real part; an access past the end is
/// [`NorFlashErrorKind::OutOfBounds`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamFlash<const ERASE: usize> {
    bytes: Vec<u8>,
}

impl<const ERASE: usize> RamFlash<ERASE> {
    /// A flash holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        RamFlash { bytes }
    }

    /// An erased flash of `len` bytes.
    pub fn blank(len: usize) -> Self {
        Self::new(alloc::vec![0xFF; len])
    }

    /// Its contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its contents, to change behind the flash's rules (a test's corruption).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Its contents, taken out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The bytes at `offset`, `len` long; out of bounds when they are not all there.
    fn range(&mut self, offset: u32, len: usize) -> Result<&mut [u8], NorFlashErrorKind> {
        let at = usize::try_from(offset).map_err(|_| NorFlashErrorKind::OutOfBounds)?;
        let end = at.checked_add(len).ok_or(NorFlashErrorKind::OutOfBounds)?;
        self.bytes
            .get_mut(at..end)
            .ok_or(NorFlashErrorKind::OutOfBounds)
    }
}

impl<const ERASE: usize> ErrorType for RamFlash<ERASE> {
    type Error = NorFlashErrorKind;
}

impl<const ERASE: usize> ReadNorFlash for RamFlash<ERASE> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorFlashErrorKind> {
        bytes.copy_from_slice(self.range(offset, bytes.len())?);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl<const ERASE: usize> NorFlash for RamFlash<ERASE> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = ERASE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), NorFlashErrorKind> {
        let len = to.checked_sub(from).ok_or(NorFlashErrorKind::OutOfBounds)?;
        let len = usize::try_from(len).map_err(|_| NorFlashErrorKind::OutOfBounds)?;
        self.range(from, len)?.fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorFlashErrorKind> {
        for (d, s) in self.range(offset, bytes.len())?.iter_mut().zip(bytes) {
            *d &= *s;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_clear_bits_and_erase_sets_them() {
        let mut f = RamFlash::<8>::blank(16);
        f.write(4, &[0x0F, 0xF0, 0x00, 0xFF]).unwrap();
        f.write(4, &[0xF3, 0xFF, 0xFF, 0x7F]).unwrap();
        let mut got = [0u8; 4];
        f.read(4, &mut got).unwrap();
        assert_eq!(got, [0x03, 0xF0, 0x00, 0x7F]);
        f.erase(0, 8).unwrap();
        assert_eq!(f.bytes()[..8], [0xFF; 8]);
        assert_eq!(f.capacity(), 16);
        assert_eq!(<RamFlash<8> as NorFlash>::ERASE_SIZE, 8);
    }

    #[test]
    fn accesses_past_the_end_are_out_of_bounds() {
        let mut f = RamFlash::<8>::blank(16);
        let mut got = [0u8; 4];
        assert_eq!(f.read(14, &mut got), Err(NorFlashErrorKind::OutOfBounds));
        assert_eq!(f.write(16, &[0]), Err(NorFlashErrorKind::OutOfBounds));
        assert_eq!(f.erase(8, 24), Err(NorFlashErrorKind::OutOfBounds));
        assert_eq!(f.erase(8, 0), Err(NorFlashErrorKind::OutOfBounds));
        assert_eq!(f.bytes(), &[0xFF; 16][..]);
    }
}
