//! The inference service: answers the protocol's requests (info, segment, encode, load
//! weights into a flash slot, read weights, checkpoint) on UART0, forever.
//!
//! Boot: paint the stack (for the peak reported in `Info`), pick the weights (the
//! newest valid flash slot, else the compiled-in model, whose CRC is checked), then
//! serve. Logs (defmt) go to semihosting (qemu's stdout), never to the UART.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use hvae_firmware::board::{Flash, Uart};
use hvae_firmware::rt;
use hvae_firmware::service::Service;
use hvae_firmware::weights::{self, Source};

#[entry]
fn main() -> ! {
    rt::paint_stack();
    let active = match weights::boot() {
        Ok(a) => a,
        Err(why) => {
            defmt::error!("cluster: {=str}", why);
            rt::exit(false)
        }
    };
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
    let mut uart = Uart::new();
    let mut service = Service::new(active, Flash::new());
    service.serve(&mut uart, rt::resources)
}
