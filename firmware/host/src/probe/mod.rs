//! `probe ELF --machine M --blob MODEL.hvae [--int8 INT8.hvae] [--flash-budget B]
//! [--ram-budget B]`: the protocol conformance checks of the `cluster` firmware under
//! qemu, and its budgets (flash, RAM). With `--int8` (the int8 blob of `--blob`'s model,
//! the one compiled into `cluster_int8`), the checks of the int8 service
//! ([`checks::CHECKS_INT8`]): its answers bit for bit against the host's
//! `hvae::QuantModel`, before and after a load of another int8 model over the wire, and
//! the int8 blobs it refuses (the weights in use unchanged); a device without
//! `LoadWeights` among its capabilities (`cluster_int8_fixed`) must refuse the load
//! instead ([`checks::CHECKS_INT8_FIXED`]).
//!
//! qemu is started by the device toolkit (`hvae_devkit::qemu`) with the board's UART0 on
//! a local socket and `-icount shift=0`; the firmware's log (defmt, decoded) is printed
//! among the checks. Each check of [`checks::CHECKS`] prints its name and `ok`, `FAIL`
//! with the reason, or `n/a` (a budget not given); a failure does not stop the others
//! unless the device is gone. The run fails if any check failed.

mod checks;
mod fixture;

use checks::{Check, Pass, CHECKS, CHECKS_INT8, CHECKS_INT8_FIXED};
use fixture::Fixture;
use hvae::protocol::CAP_LOAD;
use hvae_devkit::Launch;

pub fn run(args: &[String]) -> Result<(), String> {
    let elf = args.first().ok_or("probe: ELF path missing")?;
    let machine = crate::run::machine(args)?;
    let blob_path = crate::flag(args, "--blob").ok_or("probe: --blob MODEL.hvae missing")?;
    let budget = |name| -> Result<Option<u32>, String> {
        crate::flag(args, name)
            .map(|v| v.parse().map_err(|_| format!("{name}: not a number")))
            .transpose()
    };
    let (flash_budget, ram_budget) = (budget("--flash-budget")?, budget("--ram-budget")?);
    println!("probe: {elf} on {}", machine.name());
    let launch = Launch::new(machine, elf).icount().print_log();
    let int8 = crate::flag(args, "--int8");
    let mut fixture = Fixture::start(&launch, blob_path, int8, (flash_budget, ram_budget))?;
    // The int8 service with weight slots loads int8 blobs; the one without refuses.
    let groups = match int8 {
        None => CHECKS,
        Some(_) => {
            let info = fixture.info().map_err(|e| e.reason)?;
            if info.capabilities & CAP_LOAD != 0 {
                CHECKS_INT8
            } else {
                CHECKS_INT8_FIXED
            }
        }
    };
    let list: Vec<&Check> = groups.iter().copied().flatten().collect();
    let mut failed = 0;
    let mut checks = list.iter().copied();
    for &(name, check) in checks.by_ref() {
        match check(&mut fixture) {
            Ok(Pass::Ok(note)) if note.is_empty() => println!("  ok    {name}"),
            Ok(Pass::Ok(note)) => println!("  ok    {name} ({note})"),
            Ok(Pass::NotApplicable(why)) => println!("  n/a   {name} ({why})"),
            Err(e) => {
                println!("  FAIL  {name}: {}", e.reason);
                failed += 1;
                if e.ends_run {
                    break;
                }
            }
        }
    }
    let not_run: Vec<&str> = checks.map(|&(name, _)| name).collect();
    for name in &not_run {
        println!("  --    {name} (not run: the device is gone)");
    }
    // The rest of the firmware's log, before the verdict.
    drop(fixture);
    match (failed, not_run.len()) {
        (0, 0) => {
            println!("probe: all {} checks passed", list.len());
            Ok(())
        }
        (f, n) => Err(format!(
            "probe: {f} of {} checks failed, {n} not run",
            list.len()
        )),
    }
}
