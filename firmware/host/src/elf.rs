//! Sizes of a 32-bit little-endian ELF image from its section headers: no binutils
//! needed on a fresh machine.

use std::fmt::Write as _;

/// Flash and static RAM of one image, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sizes {
    /// `.vector_table` + `.text` + `.rodata` (+ any other allocated, non-writable section).
    pub code: u64,
    /// `.data` (in flash as its initial values, and in RAM).
    pub data: u64,
    /// `.bss` + `.uninit` (RAM only).
    pub bss: u64,
}

impl Sizes {
    /// Flash: code and the initial values of `.data`.
    pub fn flash(&self) -> u64 {
        self.code + self.data
    }
    /// Static RAM: `.data` + `.bss` + `.uninit`.
    pub fn ram(&self) -> u64 {
        self.data + self.bss
    }
}

const SHF_WRITE: u32 = 1;
const SHF_ALLOC: u32 = 2;
const SHT_NOBITS: u32 = 8;

fn u16_at(d: &[u8], at: usize) -> Result<u16, String> {
    d.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| "ELF cut short".to_string())
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, String> {
    d.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "ELF cut short".to_string())
}

/// The sizes of the ELF file at `path`.
pub fn sizes(path: &str) -> Result<Sizes, String> {
    let d = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if d.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 1, 1][..]) {
        return Err(format!("{path}: not a 32-bit little-endian ELF file"));
    }
    let shoff = u32_at(&d, 0x20)? as usize;
    let shentsize = usize::from(u16_at(&d, 0x2E)?);
    let shnum = usize::from(u16_at(&d, 0x30)?);
    let mut s = Sizes::default();
    for i in 0..shnum {
        let h = shoff + i * shentsize;
        let (kind, flags, size) = (u32_at(&d, h + 4)?, u32_at(&d, h + 8)?, u32_at(&d, h + 20)?);
        if flags & SHF_ALLOC == 0 {
            continue;
        }
        let size = u64::from(size);
        if kind == SHT_NOBITS {
            s.bss += size;
        } else if flags & SHF_WRITE != 0 {
            s.data += size;
        } else {
            s.code += size;
        }
    }
    Ok(s)
}

/// `size ELF...`: one table row per image.
pub fn run(args: &[String]) -> Result<(), String> {
    if args.is_empty() {
        return Err("size: no ELF file given".into());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<58} {:>8} {:>7} {:>7} {:>9} {:>9}",
        "image", "code", "data", "bss", "flash", "RAM static"
    );
    for p in args {
        let s = sizes(p)?;
        let _ = writeln!(
            out,
            "{:<58} {:>8} {:>7} {:>7} {:>9} {:>9}",
            p,
            s.code,
            s.data,
            s.bss,
            s.flash(),
            s.ram()
        );
    }
    print!("{out}");
    Ok(())
}
