//! The checkpoint pages: the last two 4 KiB pages of the nRF52833's flash (`memory.x`'s
//! `CHECKPOINTS` region), written through the HAL's NVMC driver, which implements
//! `embedded-storage`'s `NorFlash` (4-byte words, 4 KiB pages).

use microbit::hal::nvmc::Nvmc;
use microbit::pac::NVMC;

/// Bytes of the region: two checkpoint slots of one page each.
pub const REGION_LEN: usize = 8 * 1024;

/// The pages, page-aligned (the NVMC erases whole pages; the HAL checks it).
#[repr(C, align(4096))]
struct Pages([u8; REGION_LEN]);

/// Placed in `.checkpoints` (NOLOAD, in flash): never written by the loader, never
/// touched by the program but through [`checkpoint_flash`]. (Placing an item in a
/// section of one's choice counts as `unsafe_code`: the linker script is what makes it
/// sound, by giving the section its own region.)
#[allow(unsafe_code)]
#[link_section = ".checkpoints"]
static mut PAGES: Pages = Pages([0xFF; REGION_LEN]);

/// The NVMC driver over the checkpoint pages (offset 0 is the region's first byte).
///
/// The HAL takes the flash it may write as a `&'static mut [u8]`, which only a `static`
/// placed by the linker can give: this is the example's one `unsafe` block.
#[allow(unsafe_code)]
pub fn checkpoint_flash(nvmc: NVMC) -> Nvmc<NVMC> {
    // SAFETY: `PAGES` is private to this module and only referenced here; this function
    // takes the NVMC peripheral by value, and `Board::take` hands it out once, so the
    // one `&mut` to `PAGES` is made at most once and no other reference exists.
    let pages: &'static mut [u8] = unsafe { &mut (*core::ptr::addr_of_mut!(PAGES)).0 };
    Nvmc::new(nvmc, pages)
}
