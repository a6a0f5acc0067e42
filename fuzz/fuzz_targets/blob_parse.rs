//! The weight-blob parser on arbitrary bytes, both variants (version 1, `f32`; version
//! 2, int8): never panics, and whatever it accepts re-serialises to exactly the same
//! bytes (and, for int8, runs without panicking). Each input is parsed as it is and once
//! more with its CRC trailer made to match, so the checks behind the CRC (flags, kind
//! codes, sizes, shape, values) are fuzzed too.
#![no_main]

use hvae::infer::quant::{float_len, int_len, weight_len, QuantModel};
use hvae::store::blob;
use hvae::Shape;
use libfuzzer_sys::fuzz_target;

/// A compiled-in shape, as on a device.
const DEVICE: Shape = Shape::new(4, &[6], 3, 2).checked();

fn check(data: &[u8]) {
    // As a device loads it: against its compiled shape, into a fixed buffer.
    let mut fixed = [0f32; DEVICE.param_len()];
    let before = fixed;
    match blob::read_params(data, &DEVICE, &mut fixed) {
        Ok(crc) => {
            assert_eq!(crc, blob::crc32(&data[..data.len() - 4]));
            let mut again = vec![0u8; blob::blob_len(&DEVICE)];
            let n = blob::write(&DEVICE, &fixed, &mut again).unwrap();
            assert_eq!(&again[..n], data);
        }
        // All or nothing: a failed load leaves the old weights.
        Err(_) => assert_eq!(fixed.map(f32::to_bits), before.map(f32::to_bits)),
    }
    // As the host reads it: shape first, then parameters of that shape.
    if let Ok(shape) = blob::read_shape(data) {
        // The blob is all there, so the shape's parameters fit in its bytes.
        assert!(shape.param_len() * 4 < data.len());
        let mut params = vec![0f32; shape.param_len()];
        if blob::read_params(data, &shape, &mut params).is_ok() {
            let mut again = vec![0u8; blob::blob_len(&shape)];
            let n = blob::write(&shape, &params, &mut again).unwrap();
            assert_eq!(&again[..n], data);
        }
    }
}

/// The int8 variant, as a device loads it and as the host reads it.
fn check_int8(data: &[u8]) {
    let mut w = [0i8; weight_len(&DEVICE)];
    let mut i = [0i32; int_len(&DEVICE)];
    let mut f = [0f32; float_len(&DEVICE)];
    match blob::read_int8(data, &DEVICE, &mut w, &mut i, &mut f) {
        Ok(crc) => {
            assert_eq!(crc, blob::crc32(&data[..data.len() - 4]));
            let q = QuantModel::new(DEVICE, &w[..], &i[..], &f[..]).unwrap();
            let mut again = vec![0u8; blob::int8_blob_len(&DEVICE)];
            let n = blob::write_int8(&q, &mut again).unwrap();
            assert_eq!(&again[..n], data);
            // Any accepted model runs (an error, not a panic, on a degenerate one).
            let mut work = [0f32; DEVICE.work_len()];
            let _ = q.segment(&[0.5, -1.0, 2.0, 0.0], &mut work);
        }
        // All or nothing.
        Err(_) => {
            assert!(w.iter().all(|&v| v == 0) && i.iter().all(|&v| v == 0));
            assert!(f.iter().all(|v| v.to_bits() == 0));
        }
    }
    if let Ok(shape) = blob::read_int8_shape(data) {
        assert!(weight_len(&shape) + 4 * (int_len(&shape) + float_len(&shape)) < data.len());
        let (mut w, mut i, mut f) = (
            vec![0i8; weight_len(&shape)],
            vec![0i32; int_len(&shape)],
            vec![0f32; float_len(&shape)],
        );
        if blob::read_int8(data, &shape, &mut w, &mut i, &mut f).is_ok() {
            let q = QuantModel::new(shape, w, i, f).unwrap();
            let mut again = vec![0u8; blob::int8_blob_len(&shape)];
            let n = blob::write_int8(&q, &mut again).unwrap();
            assert_eq!(&again[..n], data);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check_int8(data);
    if data.len() >= blob::HEADER_LEN + 4 {
        let mut fixed = data.to_vec();
        let n = fixed.len();
        let crc = blob::crc32(&fixed[..n - 4]);
        fixed[n - 4..].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
        check_int8(&fixed);
    }
});
