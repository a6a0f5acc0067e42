//! The two boards' peripherals the firmware uses: a UART (the protocol's byte stream)
//! and flash programming (the weight slots). Chosen by `cfg(board)` from the target
//! (see `build.rs`).
//!
//! | board | UART | flash |
//! |---|---|---|
//! | `mps2_an386` (Cortex-M4F) | CMSDK APB UART0 at `0x4000_4000` | code memory is RAM under qemu: written directly, an erase fills `0xFF` |
//! | `microbit` (nRF51822, Cortex-M0) | UART0 at `0x4000_2000` | NVMC at `0x4001_E000`: 1 KiB page erase, word writes |

use core::ptr::{read_volatile, write_volatile};

/// The core clock in Hz: what SysTick counts on the processor clock (`rt::Counter`).
#[cfg(board = "mps2_an386")]
pub const CORE_HZ: u32 = 25_000_000;
/// The core clock in Hz: what SysTick counts on the processor clock (`rt::Counter`).
#[cfg(board = "microbit")]
pub const CORE_HZ: u32 = 16_000_000;

/// A byte stream.
pub trait Serial {
    /// A received byte, if one is waiting.
    fn try_read(&mut self) -> Option<u8>;
    /// Sends one byte (blocks while the transmitter is busy).
    fn write(&mut self, byte: u8);
    /// Waits for a byte.
    fn read(&mut self) -> u8 {
        loop {
            if let Some(b) = self.try_read() {
                return b;
            }
        }
    }
    /// Sends bytes.
    fn write_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write(b);
        }
    }
}

/// Why programming flash failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashError;

/// Erase and program the weight slots.
pub trait FlashWriter {
    /// Bytes of the erase unit.
    const PAGE: usize;
    /// Erases the page at `addr` (a multiple of [`FlashWriter::PAGE`]) to `0xFF`.
    fn erase_page(&mut self, addr: usize) -> Result<(), FlashError>;
    /// Programs one word at a 4-aligned, erased `addr`, and verifies it.
    fn write_word(&mut self, addr: usize, word: u32) -> Result<(), FlashError>;
}

fn reg(addr: usize) -> *mut u32 {
    addr as *mut u32
}

/// The board's UART0 (its registers: `imp`), the protocol's byte stream.
pub struct Uart(());

// No `Default`: constructing a driver programs the peripheral, which should be a
// visible `new()` call.
#[allow(clippy::new_without_default)]
impl Uart {
    /// Programs and starts UART0 at 115200 baud.
    pub fn new() -> Uart {
        imp::uart_start();
        Uart(())
    }
}

impl Serial for Uart {
    fn try_read(&mut self) -> Option<u8> {
        imp::uart_try_read()
    }
    fn write(&mut self, byte: u8) {
        imp::uart_write(byte)
    }
}

/// The board's flash programming (`imp`: qemu's RAM, or the nRF51's NVMC).
pub struct Flash(());

// No `Default`, like the UART: one visible `new()` per driver.
#[allow(clippy::new_without_default)]
impl Flash {
    /// The flash writer.
    pub fn new() -> Flash {
        Flash(())
    }
}

impl FlashWriter for Flash {
    const PAGE: usize = 1024;
    fn erase_page(&mut self, addr: usize) -> Result<(), FlashError> {
        imp::erase_page(addr)
    }
    fn write_word(&mut self, addr: usize, word: u32) -> Result<(), FlashError> {
        imp::write_word(addr, word)
    }
}

/// The register accesses of the mps2-an386 (qemu): CMSDK APB UART0, and code memory that
/// qemu's board models as RAM.
#[cfg(board = "mps2_an386")]
mod imp {
    use super::*;

    const UART0: usize = 0x4000_4000;
    const DATA: usize = UART0;
    const STATE: usize = UART0 + 0x04;
    const CTRL: usize = UART0 + 0x08;
    const BAUDDIV: usize = UART0 + 0x10;
    const TX_FULL: u32 = 1 << 0;
    const RX_FULL: u32 = 1 << 1;

    /// Enables transmitter and receiver (the baud divisor is ignored by qemu; 217 gives
    /// 115200 baud from the board's 25 MHz).
    #[inline(always)]
    pub fn uart_start() {
        // SAFETY: UART0's registers, used by the `Uart` driver only.
        unsafe {
            write_volatile(reg(BAUDDIV), 217);
            write_volatile(reg(CTRL), 0b11);
        }
    }

    #[inline(always)]
    pub fn uart_try_read() -> Option<u8> {
        // SAFETY: UART0's registers.
        unsafe {
            (read_volatile(reg(STATE)) & RX_FULL != 0).then(|| read_volatile(reg(DATA)) as u8)
        }
    }

    #[inline(always)]
    pub fn uart_write(byte: u8) {
        // SAFETY: UART0's registers.
        unsafe {
            while read_volatile(reg(STATE)) & TX_FULL != 0 {}
            write_volatile(reg(DATA), u32::from(byte));
        }
    }

    /// Fills the page at `addr` with `0xFF`, as an erase of real flash would.
    #[inline(always)]
    pub fn erase_page(addr: usize) -> Result<(), FlashError> {
        for a in (addr..addr + Flash::PAGE).step_by(4) {
            // SAFETY: `addr` is a page of the weight slots or of the checkpoint region
            // (checked by the caller: `weights`, `FlashRegion`),
            // which nothing else writes and no live reference covers.
            unsafe { write_volatile(reg(a), u32::MAX) };
        }
        Ok(())
    }

    #[inline(always)]
    pub fn write_word(addr: usize, word: u32) -> Result<(), FlashError> {
        // SAFETY: as above.
        unsafe {
            write_volatile(reg(addr), word);
            (read_volatile(reg(addr)) == word)
                .then_some(())
                .ok_or(FlashError)
        }
    }
}

/// The register accesses of the micro:bit (nRF51): UART0 on the USB serial pins (TX
/// P0.24, RX P0.25), and the non-volatile memory controller.
#[cfg(board = "microbit")]
mod imp {
    use super::*;

    const UART0: usize = 0x4000_2000;
    const STARTRX: usize = UART0;
    const STARTTX: usize = UART0 + 0x008;
    const RXDRDY: usize = UART0 + 0x108;
    const TXDRDY: usize = UART0 + 0x11C;
    const ENABLE: usize = UART0 + 0x500;
    const PSELTXD: usize = UART0 + 0x50C;
    const PSELRXD: usize = UART0 + 0x514;
    const RXD: usize = UART0 + 0x518;
    const TXD: usize = UART0 + 0x51C;
    const BAUDRATE: usize = UART0 + 0x524;

    /// 115200 baud, started.
    #[inline(always)]
    pub fn uart_start() {
        // SAFETY: UART0's registers, used by the `Uart` driver only.
        unsafe {
            write_volatile(reg(PSELTXD), 24);
            write_volatile(reg(PSELRXD), 25);
            write_volatile(reg(BAUDRATE), 0x01D7_E000);
            write_volatile(reg(ENABLE), 4);
            write_volatile(reg(STARTTX), 1);
            write_volatile(reg(STARTRX), 1);
        }
    }

    #[inline(always)]
    pub fn uart_try_read() -> Option<u8> {
        // SAFETY: UART0's registers. The event is cleared before RXD is read, as
        // the reference manual asks, so a byte arriving meanwhile raises it again.
        unsafe {
            if read_volatile(reg(RXDRDY)) == 0 {
                return None;
            }
            write_volatile(reg(RXDRDY), 0);
            Some(read_volatile(reg(RXD)) as u8)
        }
    }

    #[inline(always)]
    pub fn uart_write(byte: u8) {
        // SAFETY: UART0's registers.
        unsafe {
            write_volatile(reg(TXD), u32::from(byte));
            while read_volatile(reg(TXDRDY)) == 0 {}
            write_volatile(reg(TXDRDY), 0);
        }
    }

    const NVMC: usize = 0x4001_E000;
    const READY: usize = NVMC + 0x400;
    const CONFIG: usize = NVMC + 0x504;
    const ERASEPAGE: usize = NVMC + 0x508;
    const CONFIG_READ: u32 = 0;
    const CONFIG_WRITE: u32 = 1;
    const CONFIG_ERASE: u32 = 2;

    fn wait_ready() {
        // SAFETY: NVMC's READY register.
        while unsafe { read_volatile(reg(READY)) } & 1 == 0 {}
    }

    /// Erases the page at `addr`.
    #[inline(always)]
    pub fn erase_page(addr: usize) -> Result<(), FlashError> {
        // SAFETY: NVMC registers; `addr` is a page of the weight slots or checkpoints (checked by
        // the caller) that no live reference covers.
        unsafe {
            wait_ready();
            write_volatile(reg(CONFIG), CONFIG_ERASE);
            wait_ready();
            write_volatile(reg(ERASEPAGE), addr as u32);
            wait_ready();
            write_volatile(reg(CONFIG), CONFIG_READ);
            wait_ready();
        }
        Ok(())
    }

    #[inline(always)]
    pub fn write_word(addr: usize, word: u32) -> Result<(), FlashError> {
        // SAFETY: as above.
        unsafe {
            wait_ready();
            write_volatile(reg(CONFIG), CONFIG_WRITE);
            wait_ready();
            write_volatile(reg(addr), word);
            wait_ready();
            write_volatile(reg(CONFIG), CONFIG_READ);
            wait_ready();
            (read_volatile(reg(addr)) == word)
                .then_some(())
                .ok_or(FlashError)
        }
    }
}

/// UART0 as the transport of the core's server ([`hvae::device::Engine::serve`]): a
/// UART does not fail.
impl hvae::device::Transport for Uart {
    type Error = core::convert::Infallible;
    fn read(&mut self) -> Result<u8, Self::Error> {
        Ok(Serial::read(self))
    }
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        Serial::write_all(self, bytes);
        Ok(())
    }
}

use embedded_storage::nor_flash::{
    check_erase, check_read, check_write, ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash,
};

/// A range of the board's flash as `embedded-storage` NOR flash (for
/// `hvae::Checkpoints`): offsets are relative to the start of the range,
/// reads are bytes, writes whole 4-byte words (aligned), erases whole
/// [`FlashWriter::PAGE`]s. Writes program words with [`FlashWriter::write_word`], which
/// verifies them; on the micro:bit's NVMC a write can only clear bits, as on real NOR
/// flash, while qemu's mps2-an386 code memory is RAM and takes any value.
pub struct FlashRegion<F> {
    flash: F,
    base: usize,
    len: usize,
}

extern "C" {
    // memory.x: the region reserved for checkpoints (`learn`'s on mps2-an386, `adapt`'s
    // on the micro:bit).
    static _hvae_ckpt_start: u32;
    static _hvae_ckpt_end: u32;
}

impl<F: FlashWriter> FlashRegion<F> {
    /// The checkpoint region of memory.x (`CKPT`, 132 KiB on mps2-an386, 8 KiB on the
    /// micro:bit), written with `flash`.
    pub fn checkpoints(flash: F) -> Self {
        // Linker symbols: only their addresses are used, never read.
        let base = core::ptr::addr_of!(_hvae_ckpt_start) as usize;
        let len = core::ptr::addr_of!(_hvae_ckpt_end) as usize - base;
        FlashRegion { flash, base, len }
    }

    /// The flash writer back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// Address of the region's first byte.
    pub fn base(&self) -> usize {
        self.base
    }
}

impl<F> ErrorType for FlashRegion<F> {
    type Error = NorFlashErrorKind;
}

impl<F: FlashWriter> ReadNorFlash for FlashRegion<F> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        check_read(self, offset, bytes.len())?;
        let start = self.base + offset as usize;
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: inside the region (checked above): flash, always mapped, written
            // only through this value.
            *b = unsafe { read_volatile((start + i) as *const u8) };
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.len
    }
}

impl<F: FlashWriter> NorFlash for FlashRegion<F> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = F::PAGE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        check_erase(self, from, to)?;
        for page in (from as usize..to as usize).step_by(F::PAGE) {
            self.flash
                .erase_page(self.base + page)
                .map_err(|_| NorFlashErrorKind::Other)?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        check_write(self, offset, bytes.len())?;
        let start = self.base + offset as usize;
        for (i, w) in bytes.chunks_exact(4).enumerate() {
            let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            self.flash
                .write_word(start + 4 * i, word)
                .map_err(|_| NorFlashErrorKind::Other)?;
        }
        Ok(())
    }
}
