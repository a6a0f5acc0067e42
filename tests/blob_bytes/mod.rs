//! Byte edits of weight blobs shared by the blob tests.

use hvae::store::blob;

/// Rewrites the CRC in a blob's last four bytes to match the bytes before it.
pub fn fix_crc(b: &mut [u8]) {
    let n = b.len();
    let crc = blob::crc32(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// Writes `v` little-endian at byte `off`.
pub fn set_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
