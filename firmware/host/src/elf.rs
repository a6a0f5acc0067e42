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

/// One section header: name offset, type, flags, address, file offset, size.
struct Section {
    name: u32,
    kind: u32,
    flags: u32,
    addr: u32,
    offset: u32,
    size: u32,
}

/// The ELF file at `path` and its section headers.
fn read(path: &str) -> Result<(Vec<u8>, Vec<Section>), String> {
    let d = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if d.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 1, 1][..]) {
        return Err(format!("{path}: not a 32-bit little-endian ELF file"));
    }
    let shoff = u32_at(&d, 0x20)? as usize;
    let shentsize = usize::from(u16_at(&d, 0x2E)?);
    let shnum = usize::from(u16_at(&d, 0x30)?);
    let mut secs = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let h = shoff + i * shentsize;
        secs.push(Section {
            name: u32_at(&d, h)?,
            kind: u32_at(&d, h + 4)?,
            flags: u32_at(&d, h + 8)?,
            addr: u32_at(&d, h + 12)?,
            offset: u32_at(&d, h + 16)?,
            size: u32_at(&d, h + 20)?,
        });
    }
    Ok((d, secs))
}

/// A panic site linked into an image: the `core::panic::Location` (file, line, column)
/// that the code passes to the panic handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanicSite {
    /// The source file, as the compiler saw its path.
    pub file: String,
    /// Line.
    pub line: u32,
    /// Column.
    pub col: u32,
}

/// The panic sites of the image at `path`: every `Location` in `.rodata`, found as
/// 16 bytes `(file pointer, file length, line, column)` whose pointer and length
/// designate a string in `.rodata` ending in `.rs`. Each site that can panic (an index
/// out of range, an `unwrap`, an overflow check) has its own `Location`, and the
/// linker keeps only those some kept code refers to.
pub fn panic_sites(path: &str) -> Result<Vec<PanicSite>, String> {
    let (d, secs) = read(path)?;
    let shstrndx = usize::from(u16_at(&d, 0x32)?);
    let names = secs.get(shstrndx).ok_or("ELF: no section names")?;
    let name_of = |s: &Section| -> &[u8] {
        let at = (names.offset + s.name) as usize;
        let rest = d.get(at..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let Some(ro) = secs.iter().find(|s| name_of(s) == b".rodata") else {
        return Ok(Vec::new());
    };
    let bytes = d
        .get(ro.offset as usize..(ro.offset + ro.size) as usize)
        .ok_or("ELF: .rodata out of the file")?;
    let (lo, hi) = (ro.addr, ro.addr + ro.size);
    let mut out = Vec::new();
    for at in (0..bytes.len().saturating_sub(15)).step_by(4) {
        let (ptr, len) = (u32_at(bytes, at)?, u32_at(bytes, at + 4)?);
        let (line, col) = (u32_at(bytes, at + 8)?, u32_at(bytes, at + 12)?);
        let outside = ptr < lo || ptr.saturating_add(len) > hi;
        if outside || !(4..=4096).contains(&len) || line == 0 {
            continue;
        }
        let s = &bytes[(ptr - lo) as usize..(ptr - lo + len) as usize];
        if let Ok(file) = std::str::from_utf8(s) {
            if file.ends_with(".rs") {
                out.push(PanicSite {
                    file: file.to_string(),
                    line,
                    col,
                });
            }
        }
    }
    Ok(out)
}

/// The sizes of the ELF file at `path`.
pub fn sizes(path: &str) -> Result<Sizes, String> {
    let (_, secs) = read(path)?;
    let mut s = Sizes::default();
    for sec in &secs {
        let (kind, flags, size) = (sec.kind, sec.flags, sec.size);
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

/// The core crate's source directory, as the firmware's build names its files (the
/// firmware and this tool are built from the same checkout).
fn core_src() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../src");
    let dir = std::fs::canonicalize(dir).map_or_else(|_| dir.into(), |p| p.display().to_string());
    format!("{dir}/")
}

/// The real-board crates' directory (`boards/`: the examples and the host-tested
/// crates they use, whose files a board's build names by absolute path, as the core's).
fn boards_src() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../boards");
    let dir = std::fs::canonicalize(dir).map_or_else(|_| dir.into(), |p| p.display().to_string());
    format!("{dir}/")
}

/// Whose code a panic site is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The core (`hvae`) or the program being built.
    Ours,
    /// The standard library's own code (`/rustc/...`): a panic that is not attributed to
    /// its caller (no `#[track_caller]`), so whichever crate reached it cannot be told.
    Std,
    /// A dependency.
    Dependency,
}

impl PanicSite {
    /// Whose code the site is in: the core (named by its absolute path) and the firmware
    /// (the package being built, whose files the compiler names relative to it) are
    /// ours; the standard library's files are under `/rustc/`; everything else (absolute
    /// paths into the cargo registry or git checkouts) is a dependency's.
    pub fn origin(&self, core_src: &str) -> Origin {
        if self.file.starts_with(core_src) || !std::path::Path::new(&self.file).is_absolute() {
            Origin::Ours
        } else if self.file.starts_with("/rustc/") {
            Origin::Std
        } else {
            Origin::Dependency
        }
    }
}

/// `panics [--deny-ours] ELF...`: the panic sites of each image, counted per source
/// file, this project's (core, firmware, `boards/`) first, then the standard library's, then the
/// dependencies'; with `--deny-ours`, an error if an image has one in this project's code
/// or in the standard library's own (one of those could be reached from our code, and
/// nothing in the image says from where).
pub fn panics(args: &[String]) -> Result<(), String> {
    let deny = args.iter().any(|a| a == "--deny-ours");
    let elfs: Vec<&String> = args.iter().filter(|a| *a != "--deny-ours").collect();
    if elfs.is_empty() {
        return Err("panics: no ELF file given".into());
    }
    let (core, boards) = (core_src(), boards_src());
    let mut offenders = Vec::new();
    for p in elfs {
        // Ours first, then the standard library's, then the dependencies'.
        let mut per_file = std::collections::BTreeMap::<(Origin, String), usize>::new();
        for s in panic_sites(p)? {
            let in_boards = s.file.strip_prefix(&boards);
            let origin = match in_boards {
                Some(_) => Origin::Ours,
                None => s.origin(&core),
            };
            let name = match (s.file.strip_prefix(&core), in_boards, origin) {
                (Some(rest), _, _) => format!("hvae/src/{rest}"),
                (None, Some(rest), _) => format!("hvae/boards/{rest}"),
                (None, None, Origin::Ours) => format!("{} (this program)", s.file),
                (None, None, Origin::Std) => format!("{} (standard library)", s.file),
                (None, None, Origin::Dependency) => s.file,
            };
            *per_file.entry((origin, name)).or_default() += 1;
        }
        let count = |origin: Origin| -> usize {
            per_file
                .iter()
                .filter(|((o, _), _)| *o == origin)
                .map(|(_, n)| n)
                .sum()
        };
        let (ours, std_lib) = (count(Origin::Ours), count(Origin::Std));
        let deps = count(Origin::Dependency);
        println!(
            "{p}: {ours} panic sites in this project's code (core, the program), \
             {std_lib} in the standard library's own code, {deps} in dependencies"
        );
        for ((_, file), n) in &per_file {
            println!("  {n:>4}  {file}");
        }
        if ours + std_lib > 0 {
            offenders.push(p.as_str());
        }
    }
    if deny && !offenders.is_empty() {
        return Err(format!(
            "panic sites in this project's code or the standard library's: {}",
            offenders.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 32-bit little-endian ELF with a `.rodata` at `addr` holding `ro`.
    fn elf_with_rodata(addr: u32, ro: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.rodata\0";
        let (ro_off, names_off) = (52u32, 52 + ro.len() as u32);
        let shoff = (names_off + names.len() as u32).next_multiple_of(4);
        let mut d = vec![0u8; 52];
        d[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1]);
        d[0x20..0x24].copy_from_slice(&shoff.to_le_bytes());
        d[0x2E..0x30].copy_from_slice(&40u16.to_le_bytes());
        d[0x30..0x32].copy_from_slice(&3u16.to_le_bytes());
        d[0x32..0x34].copy_from_slice(&1u16.to_le_bytes());
        d.extend_from_slice(ro);
        d.extend_from_slice(names);
        d.resize(shoff as usize, 0);
        let header = |name: u32, kind: u32, flags: u32, addr: u32, off: u32, size: u32| {
            let mut h = [0u8; 40];
            for (i, v) in [name, kind, flags, addr, off, size].into_iter().enumerate() {
                h[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            h
        };
        d.extend_from_slice(&[0u8; 40]);
        d.extend_from_slice(&header(1, 3, 0, 0, names_off, names.len() as u32));
        d.extend_from_slice(&header(11, 1, SHF_ALLOC, addr, ro_off, ro.len() as u32));
        d
    }

    #[test]
    fn finds_locations_and_nothing_else() {
        let addr = 0x4000u32;
        let mut ro = Vec::new();
        ro.extend_from_slice(b"/x/src/model.rs\0"); // 15 bytes + padding
        ro.extend_from_slice(b"data.txt"); // not a source file
        let loc = |ptr: u32, len: u32, line: u32, col: u32| {
            [ptr, len, line, col].map(u32::to_le_bytes).concat()
        };
        ro.extend(loc(addr, 15, 965, 23));
        ro.extend(loc(addr, 15, 12, 5));
        ro.extend(loc(addr + 16, 8, 3, 1)); // points at "data.txt"
        ro.extend(loc(addr + 0x1000, 15, 3, 1)); // outside .rodata
        ro.extend(loc(addr, 15, 0, 0)); // line 0: not a location
        let dir = std::env::temp_dir().join(format!("hvae-elf-test-{}", std::process::id()));
        std::fs::write(&dir, elf_with_rodata(addr, &ro)).unwrap();
        let sites = panic_sites(dir.to_str().unwrap()).unwrap();
        std::fs::remove_file(&dir).unwrap();
        let at = |line, col| PanicSite {
            file: "/x/src/model.rs".into(),
            line,
            col,
        };
        assert_eq!(sites, vec![at(965, 23), at(12, 5)]);
    }

    /// `panics --deny-ours` on a one-location image whose location names `file`.
    fn deny_ours_on(file: &str) -> Result<(), String> {
        let addr = 0x4000u32;
        let mut ro = file.as_bytes().to_vec();
        ro.resize(ro.len().next_multiple_of(4), 0);
        let loc = [addr, file.len() as u32, 10, 5]
            .map(u32::to_le_bytes)
            .concat();
        ro.extend(loc);
        let path = std::env::temp_dir().join(format!(
            "hvae-deny-test-{}-{}",
            std::process::id(),
            file.len()
        ));
        std::fs::write(&path, elf_with_rodata(addr, &ro)).unwrap();
        let args = ["--deny-ours".to_string(), path.display().to_string()];
        let r = panics(&args);
        std::fs::remove_file(&path).unwrap();
        r
    }

    #[test]
    fn deny_ours_fails_on_our_sites_and_the_standard_librarys_only() {
        let core = format!("{}model.rs", core_src());
        assert!(deny_ours_on(&core).is_err());
        assert!(deny_ours_on("/rustc/0123abcd/library/core/src/slice/mod.rs").is_err());
        let dep = "/home/u/.cargo/registry/src/index/cobs-0.3.0/src/dec.rs";
        assert!(deny_ours_on(dep).is_ok());
        // A board's crates are ours too (a board's build names them by absolute path).
        assert!(deny_ours_on(&format!("{}adapt/src/learner.rs", boards_src())).is_err());
    }

    #[test]
    fn origin_is_ours_std_or_a_dependency() {
        let site = |file: &str| PanicSite {
            file: file.into(),
            line: 1,
            col: 1,
        };
        let core = "/w/hvae/src/";
        assert_eq!(site("/w/hvae/src/model.rs").origin(core), Origin::Ours);
        assert_eq!(site("src/bin/../learn.rs").origin(core), Origin::Ours);
        let cobs = site("/home/u/.cargo/registry/src/x/cobs-0.3.0/src/dec.rs");
        assert_eq!(cobs.origin(core), Origin::Dependency);
        let slice = site("/rustc/0123/library/core/src/slice/mod.rs");
        assert_eq!(slice.origin(core), Origin::Std);
        assert_eq!(
            site("/w/hvae/srcx/model.rs").origin(core),
            Origin::Dependency
        );
    }
}
