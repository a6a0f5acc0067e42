//! Run-time figures and exits: the program image's flash and static RAM (from linker
//! symbols), the peak stack (stack painting), the semihosting exit status, an
//! instruction counter on SysTick, and the panic handlers.
//!
//! Logging is defmt's (`defmt::println!`, `defmt::info!`, ...): the global logger is
//! `defmt-semihosting` (linked by this library), so frames go to semihosting stdout,
//! qemu's stdout, never to the UART; `hvae-firmware-host run` / `decode` (in `host/`)
//! prints them as text.

use core::ptr::{addr_of, read_volatile, write_volatile};
use hvae::device::Resources;

extern "C" {
    // memory.x
    static _hvae_flash_end: u32;
    static _hvae_flash_len: u32;
    static _hvae_ram_start: u32;
    // cortex-m-rt's link.x
    static __sidata: u32;
    static __sdata: u32;
    static __edata: u32;
    static _stack_end: u32;
    static _stack_start: u32;
}

/// Address of a linker symbol (only its address is meaningful).
macro_rules! sym {
    ($s:ident) => {
        // Taking the address of a linker-provided symbol is safe; it is never read.
        addr_of!($s) as usize
    };
}

/// The word stack painting fills unused stack with.
const PAINT: u32 = 0xDEAD_BEEF;

/// Bytes of flash the program image takes: vector table, `.text`, `.rodata` and the
/// initial values of `.data` (everything up to the end of `.data`'s load image).
pub fn flash_used() -> usize {
    let flash_start = sym!(_hvae_flash_end) - sym!(_hvae_flash_len);
    sym!(__sidata) + (sym!(__edata) - sym!(__sdata)) - flash_start
}

/// Bytes of static RAM: `.data`, `.bss` and `.uninit` (everything below the stack's
/// lowest possible address).
pub fn ram_static() -> usize {
    sym!(_stack_end) - sym!(_hvae_ram_start)
}

/// Fills the unused stack (from its lowest possible address up to the current stack
/// pointer) with a pattern, so that [`stack_peak`] can later find how deep it went. Call
/// it first thing in `main`, and again to start a new measurement.
#[inline(never)]
pub fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    let mut a = sym!(_stack_end);
    // Stop short of this function's own frame (below `sp` nothing is live: no
    // interrupt handler runs on this stack while painting).
    while a + 4 <= sp.saturating_sub(16) {
        // SAFETY: `a` is 4-aligned, in RAM between the end of the statics and the
        // stack pointer: memory that holds nothing live.
        unsafe { write_volatile(a as *mut u32, PAINT) };
        a += 4;
    }
}

/// Peak stack in bytes since the last [`paint_stack`]: from the top of the stack down
/// to the lowest word that no longer holds the pattern.
pub fn stack_peak() -> usize {
    let top = sym!(_stack_start);
    let mut a = sym!(_stack_end);
    while a < top {
        // SAFETY: `a` is 4-aligned and inside the stack region of RAM.
        if unsafe { read_volatile(a as *const u32) } != PAINT {
            break;
        }
        a += 4;
    }
    top - a
}

/// The lowest address the stack reached since the last [`paint_stack`].
pub fn stack_low() -> usize {
    sym!(_stack_start) - stack_peak()
}

/// Runs `f` on a freshly painted stack; returns its result and the RAM it needed: the
/// static RAM plus the stack below the caller's frame (what `f`, its locals and its
/// callees used; the benchmark harness's own frames are not counted).
#[inline(never)]
pub fn with_ram<R>(f: impl FnOnce() -> R) -> (R, usize) {
    paint_stack();
    let sp = cortex_m::register::msp::read() as usize;
    let r = f();
    (r, ram_static() + sp.saturating_sub(stack_low()))
}

/// The figures the device reports in `Info`.
pub fn resources() -> Resources {
    Resources {
        flash: saturate(flash_used()),
        ram: saturate(ram_static()),
        stack: saturate(stack_peak()),
    }
}

fn saturate(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// Ends the program under qemu with exit status 0 (`ok`) or 1, through semihosting.
pub fn exit(ok: bool) -> ! {
    use cortex_m_semihosting::debug;
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    // Not under a debugger that implements semihosting exit: stop here.
    loop {
        cortex_m::asm::wfi();
    }
}

/// Counts instructions with SysTick under `qemu-system-arm -icount shift=0`: there
/// every instruction takes 1 ns of virtual time, and SysTick on the processor clock
/// ticks every `1e9 / core_hz` ns (40 on mps2-an386's 25 MHz, 62.5 on the micro:bit's
/// 16 MHz). SysTick is 24 bits and counts down; it wraps every 2^24 ticks (0.67 s at
/// 25 MHz, 1.05 s at 16 MHz), so one measured interval must be shorter than that (the
/// caller checks [`Counter::wrapped`]).
pub struct Counter {
    syst: cortex_m::peripheral::SYST,
    core_hz: u32,
}

impl Counter {
    /// Starts SysTick, free running on the core clock of `core_hz` Hz
    /// ([`crate::board::CORE_HZ`]), no interrupt.
    pub fn new(mut syst: cortex_m::peripheral::SYST, core_hz: u32) -> Counter {
        use cortex_m::peripheral::syst::SystClkSource;
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(0x00FF_FFFF);
        syst.clear_current();
        syst.disable_interrupt();
        syst.enable_counter();
        Counter { syst, core_hz }
    }

    /// The counter of a bench program named `program`, over the core's SysTick at
    /// [`crate::board::CORE_HZ`]; when the core peripherals are taken already, says so
    /// and exits failed.
    pub fn take(program: &str) -> Counter {
        let Some(cp) = cortex_m::Peripherals::take() else {
            defmt::println!("{=str}: no core peripherals", program);
            exit(false)
        };
        Counter::new(cp.SYST, crate::board::CORE_HZ)
    }

    /// The current count (ticks, counting down).
    #[inline(always)]
    pub fn now(&self) -> u32 {
        cortex_m::peripheral::SYST::get_current()
    }

    /// Clears the wrap flag (read it with [`Counter::wrapped`] after an interval).
    pub fn clear_wrap(&mut self) {
        // Reading COUNTFLAG clears it.
        let _ = self.syst.has_wrapped();
    }

    /// True if the counter wrapped since [`Counter::clear_wrap`].
    pub fn wrapped(&mut self) -> bool {
        self.syst.has_wrapped()
    }

    /// Instructions between two [`Counter::now`] readings (`start` first).
    pub fn instructions(&self, start: u32, end: u32) -> u64 {
        let ticks = u64::from(start.wrapping_sub(end) & 0x00FF_FFFF);
        ticks * 1_000_000_000 / u64::from(self.core_hz.max(1))
    }

    /// Runs `f` and returns its result and the instructions it took, or `None` for the
    /// count if the interval was too long to measure.
    #[inline(never)]
    pub fn measure<R>(&mut self, f: impl FnOnce() -> R) -> (R, Option<u64>) {
        self.clear_wrap();
        let t0 = self.now();
        let r = f();
        let t1 = self.now();
        let n = (!self.wrapped()).then(|| self.instructions(t0, t1));
        (r, n)
    }
}

/// `v` with 3 decimals in the log (`defmt::Format`): `-` and the integer and thousandths
/// are sent, the host prints `1.234`; `?` for a non-finite value or `|v|` >= 4e6. (defmt
/// prints an `f32` argument with all its digits; bench's lines keep 3.)
#[derive(Clone, Copy, Debug)]
pub struct Fixed3(pub f32);

impl defmt::Format for Fixed3 {
    fn format(&self, f: defmt::Formatter<'_>) {
        let v = self.0;
        if !v.is_finite() || v.abs() >= 4.0e6 {
            defmt::write!(f, "?");
            return;
        }
        let milli = (v.abs() * 1000.0 + 0.5) as u32;
        let sign = if v < 0.0 { "-" } else { "" };
        defmt::write!(
            f,
            "{=str}{=u32}.{=u32:03}",
            sign,
            milli / 1000,
            milli % 1000
        );
    }
}

extern "C" {
    /// cortex-m-rt's default exception and interrupt handler.
    fn DefaultHandler();
}

/// The device-specific part of the vector table: 32 interrupt vectors (the nRF51 of the
/// micro:bit has 26 interrupt lines, the CMSDK subsystem of mps2-an386 32), all to
/// cortex-m-rt's default handler: the firmware polls its UART and enables no interrupt.
/// cortex-m-rt's generic table has 240 entries, whose flash the inference image cannot
/// spare.
#[link_section = ".vector_table.interrupts"]
#[no_mangle]
pub static __INTERRUPTS: [unsafe extern "C" fn(); 32] = [DefaultHandler; 32];

/// On a panic (a bug: the device path returns typed errors instead), logs where it
/// happened (defmt, `error` level) and exits with status 1. A panic while logging it (the
/// logger refuses reentry by panicking) exits without a second attempt.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::sync::atomic::{AtomicBool, Ordering};
    // Load and store: the Cortex-M0 has no atomic swap (single core; a panic does not
    // race with itself).
    static PANICKED: AtomicBool = AtomicBool::new(false);
    if !PANICKED.load(Ordering::Relaxed) {
        PANICKED.store(true, Ordering::Relaxed);
        match info.location() {
            Some(at) => defmt::error!("panic at {=str}:{=u32}", at.file(), at.line()),
            None => defmt::error!("panic"),
        }
    }
    exit(false)
}

/// defmt's own panics (`defmt::panic!`, `unwrap!`, `assert!`, ...) have logged their
/// message and location already: exit with status 1.
#[defmt::panic_handler]
fn defmt_panic() -> ! {
    exit(false)
}

/// `a / b` as an `f32` (`b` of 0 counts as 1): instructions per MAC, per row, per call.
pub fn ratio(a: u64, b: u64) -> f32 {
    a as f32 / b.max(1) as f32
}
