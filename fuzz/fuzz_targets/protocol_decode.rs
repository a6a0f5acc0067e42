//! The protocol on arbitrary bytes: the frame decoders (device side for `Request`, host
//! side for `Response`) and the streaming weight loader never panic; every message they
//! accept re-encodes and decodes to the same message; the borrowed request parser and
//! the serde decoder agree on every input.
#![no_main]

use hvae::protocol::{
    self, ErrorCode, FrameDecoder, Request, Response, WeightLoader, MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
};
use hvae::store::blob;
use hvae::Shape;
use libfuzzer_sys::fuzz_target;

const DEVICE: Shape = Shape::new(4, &[6], 3, 2).checked();

/// Re-encodes an accepted message and decodes it again: the same message, compared by
/// its encoding (so that NaN payloads compare equal).
fn round_trip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut buf = vec![0u8; 1 << 16];
    let frame = protocol::encode(msg, &mut buf).expect("an accepted message encodes");
    let once = frame.to_vec();
    // The frame ends with its 0x00 delimiter.
    let n = once.len();
    let back: T = protocol::decode(&mut frame[..n - 1]).expect("and decodes");
    let mut buf2 = vec![0u8; 1 << 16];
    let twice = protocol::encode(&back, &mut buf2).unwrap();
    assert_eq!(once, twice);
}

fuzz_target!(|data: &[u8]| {
    // Byte by byte through fixed-size decoders, as on the wire.
    let mut req = FrameDecoder::<MAX_REQUEST_FRAME>::new();
    let mut resp = FrameDecoder::<MAX_RESPONSE_FRAME>::new();
    for &b in data {
        if let Some(Ok(m)) = req.push::<Request>(b) {
            round_trip(&m);
        }
        if let Some(Ok(m)) = resp.push::<Response>(b) {
            round_trip(&m);
        }
        assert!(req.pending() <= MAX_REQUEST_FRAME);
    }
    // One whole frame in place.
    let mut copy = data.to_vec();
    let _ = protocol::decode::<Request>(&mut copy);
    // The data as a message body: the borrowed parser the devices use reads the same
    // request as the serde decoder, or fails the same way.
    let theirs = protocol::decode_body::<Request>(data);
    match protocol::borrowed::parse(data).map(|r| r.to_request()) {
        Ok(mine) => {
            let theirs = theirs.expect("the decoder accepts what the parser accepts");
            let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            assert_eq!(
                protocol::encode(&mine, &mut a).unwrap(),
                protocol::encode(&theirs, &mut b).unwrap()
            );
        }
        Err(e) => assert_eq!(theirs.err(), Some(e)),
    }

    // The weight loader: the first byte picks the chunk size; each chunk goes at the
    // running offset, except that a chunk whose first byte is 0xEE jumps (out of order).
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut loader = WeightLoader::new(DEVICE);
    let mut params = [0f32; DEVICE.param_len()];
    let mut offset = 0u32;
    let mut fed = Vec::new();
    for c in rest.chunks(chunk) {
        let at = if c[0] == 0xEE {
            offset.wrapping_add(3)
        } else {
            offset
        };
        let r = loader.feed(at, c, |i, v| {
            assert!(v.is_finite());
            *params.get_mut(i).ok_or(ErrorCode::LoadLength)? = v;
            Ok(())
        });
        match r {
            Ok(()) => {
                if at == 0 {
                    fed.clear();
                }
                fed.extend_from_slice(c);
                offset = loader.received() as u32;
                assert_eq!(fed.len(), loader.received());
            }
            Err(_) => {
                assert_eq!(loader.received(), 0);
                offset = 0;
                fed.clear();
            }
        }
    }
    if let Ok(crc) = loader.finish() {
        // The loader accepted exactly what the blob parser accepts.
        let mut whole = [0f32; DEVICE.param_len()];
        assert_eq!(blob::read_params(&fed, &DEVICE, &mut whole), Ok(crc));
        assert_eq!(whole.map(f32::to_bits), params.map(f32::to_bits));
    }
});
