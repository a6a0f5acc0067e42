//! The inference service: answers the protocol's requests (info, segment, encode, load
//! weights into a flash slot, read weights, checkpoint) on UART0, forever.
//!
//! Boot: paint the stack (for the peak reported in `Info`), pick the weights (the
//! newest valid flash slot, else the compiled-in model, whose CRC is checked), then
//! serve. Logs go to semihosting (qemu's stdout), never to the UART.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae_firmware::board::{Flash, Uart};
use hvae_firmware::rt::{self, Log};
use hvae_firmware::service::Service;
use hvae_firmware::weights::{self, Source};

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let active = match weights::boot() {
        Ok(a) => a,
        Err(why) => {
            Log::new().s("cluster: ").s(why).emit();
            rt::exit(false)
        }
    };
    let mut log = Log::new();
    log.s("cluster: ");
    match active.source {
        Source::Compiled => log.s("compiled-in weights"),
        Source::Slot { index, seq } => log
            .s("weights from slot ")
            .u(index as u32)
            .s(" (write ")
            .u(seq)
            .s(")"),
    };
    log.s(", CRC ")
        .x(active.blob_crc)
        .s("; serving on UART0")
        .emit();
    let mut uart = Uart::new();
    let mut service = Service::new(active, Flash::new());
    service.serve(&mut uart, rt::resources)
}
