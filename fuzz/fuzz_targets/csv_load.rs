//! The host tool's data loader on arbitrary bytes (CSV; also gzip and `.npy`, which it
//! recognises by content): a typed error or a consistent data set, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = hvae_host::data::read_csv(data, "fuzz.csv") {
        assert_eq!(d.features().len(), d.len() * d.dim());
        assert!(d.features().iter().all(|v| v.is_finite()));
        if let Some(l) = d.labels() {
            assert_eq!(l.len(), d.len());
        }
    }
    if let Ok(d) = hvae_host::data::read(data, "fuzz") {
        assert_eq!(d.features().len(), d.len() * d.dim());
    }
});
