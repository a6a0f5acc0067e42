//! Run-time figures and exits: the program image's flash and static RAM (from linker
//! symbols), the peak stack (stack painting), the semihosting exit status, and an
//! instruction counter on SysTick.

use crate::service::Resources;
use core::ptr::{addr_of, read_volatile, write_volatile};

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

/// The figures [`crate::service::Service`] reports in `Info`.
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
/// ticks every `1e9 / core_hz` ns (40 on mps2-an386's 25 MHz). SysTick is 24 bits and
/// counts down; it wraps every 2^24 ticks (0.67 s, 671 M instructions at 25 MHz), so one
/// measured interval must be shorter than that (the caller checks [`Counter::wrapped`]).
pub struct Counter {
    syst: cortex_m::peripheral::SYST,
    per_tick: u32,
}

impl Counter {
    /// Starts SysTick, free running on the core clock, no interrupt. `per_tick` is the
    /// number of instructions per tick (`1e9 / core_hz` under `-icount shift=0`).
    pub fn new(mut syst: cortex_m::peripheral::SYST, per_tick: u32) -> Counter {
        use cortex_m::peripheral::syst::SystClkSource;
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(0x00FF_FFFF);
        syst.clear_current();
        syst.disable_interrupt();
        syst.enable_counter();
        Counter { syst, per_tick }
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
        u64::from(start.wrapping_sub(end) & 0x00FF_FFFF) * u64::from(self.per_tick)
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

/// Logging through semihosting (qemu's stdout), without `core::fmt`: formatting
/// machinery would cost the inference image kilobytes of flash. Lines are assembled in a
/// fixed buffer and written with one semihosting call; text past [`Log::CAP`] bytes is
/// cut. A log that cannot be written (no debugger) is dropped.
pub struct Log {
    buf: [u8; Log::CAP],
    len: usize,
}

impl Default for Log {
    fn default() -> Self {
        Log::new()
    }
}

impl Log {
    /// Longest line.
    pub const CAP: usize = 320;

    /// An empty line.
    pub const fn new() -> Log {
        Log {
            buf: [0; Log::CAP],
            len: 0,
        }
    }

    /// Appends text.
    pub fn s(&mut self, text: &str) -> &mut Log {
        for &b in text.as_bytes() {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        self
    }

    /// Appends an unsigned number in decimal.
    pub fn u(&mut self, mut v: u32) -> &mut Log {
        let mut digits = [0u8; 10];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        while n > 0 {
            n -= 1;
            let d = [digits[n]];
            self.s(core::str::from_utf8(&d).unwrap_or("?"));
        }
        self
    }

    /// Appends a signed number in decimal.
    pub fn i(&mut self, v: i32) -> &mut Log {
        if v < 0 {
            self.s("-");
        }
        self.u(v.unsigned_abs())
    }

    /// Appends `0x` and 8 hex digits.
    pub fn x(&mut self, v: u32) -> &mut Log {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.s("0x");
        for k in (0..8).rev() {
            let d = [HEX[((v >> (4 * k)) & 0xF) as usize]];
            self.s(core::str::from_utf8(&d).unwrap_or("?"));
        }
        self
    }

    /// Appends `v` with 3 decimals (`|v|` below 4e6; otherwise `?`).
    pub fn f3(&mut self, v: f32) -> &mut Log {
        if !v.is_finite() || v.abs() >= 4.0e6 {
            return self.s("?");
        }
        if v < 0.0 {
            self.s("-");
        }
        let milli = (v.abs() * 1000.0 + 0.5) as u32;
        self.u(milli / 1000).s(".");
        let frac = milli % 1000;
        if frac < 100 {
            self.s("0");
        }
        if frac < 10 {
            self.s("0");
        }
        self.u(frac)
    }

    /// Writes the line (with a newline) to semihosting stdout and empties it.
    pub fn emit(&mut self) {
        self.s("\n");
        if let Ok(mut out) = cortex_m_semihosting::hio::hstdout() {
            let _ = out.write_all(&self.buf[..self.len]);
        }
        self.len = 0;
    }
}

/// Logs one line of text.
pub fn log(text: &str) {
    Log::new().s(text).emit();
}

/// On a panic (a bug: the device path returns typed errors instead), logs where it
/// happened and exits with status 1.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut l = Log::new();
    l.s("panic");
    if let Some(at) = info.location() {
        l.s(" at ").s(at.file()).s(":").u(at.line());
    }
    l.emit();
    exit(false)
}
