//! The inference service: answers the protocol's requests (info, segment, encode, load
//! weights into a flash slot, read weights, checkpoint) on UART0, forever.
//!
//! The engine and its server are the core's (`hvae::device`, with the `INFER`
//! capabilities: the same dispatch as `learn` and `adapt`, without their training); this
//! program gives it the weights in flash, no buffers, and UART0
//! ([`hvae_firmware::inference`]).
//!
//! Boot: paint the stack (for the peak reported in `Info`), pick the weights (the
//! newest valid flash slot, else the compiled-in model, whose CRC is checked), then
//! serve. Logs (defmt) go to semihosting (qemu's stdout), never to the UART.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae_firmware::board::Uart;
use hvae_firmware::inference::{self, RX_FRAME, TX_FRAME};
use hvae_firmware::weights::{self, Source};
use hvae_firmware::{or_exit, rt};

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let active = or_exit!(weights::boot(), "cluster: {=str}");
    match active.source {
        Source::Compiled => defmt::info!(
            "cluster: compiled-in weights, CRC {=u32:#010x}; serving on UART0",
            active.blob_crc
        ),
        Source::Slot { index, seq } => defmt::info!(
            "cluster: weights from slot {=usize} (write {=u32}), CRC {=u32:#010x}; serving on UART0",
            index,
            seq,
            active.blob_crc
        ),
    }
    // Built where it stays (a local of `main`, which never returns).
    let mut slot = None;
    let server = or_exit!(inference::engine(&mut slot, active), "cluster: {=str}");
    let mut uart = Uart::new();
    // A UART does not fail: the server never returns.
    match server.serve::<_, RX_FRAME, TX_FRAME>(&mut uart) {}
}
