//! The committed seed corpus of the fuzz targets (`fuzz/corpus/<target>/seed-*`) is
//! generated here, so it follows the formats: this test fails if a committed seed
//! differs from what the current code generates, or if a seed meant to be valid no
//! longer parses. Regenerate with `HVAE_WRITE_CORPUS=1 cargo test --test fuzz_corpus`.

use heapless::Vec as HVec;
use hvae::protocol::{
    self, DeviceInfo, ErrorCode, FrameDecoder, Request, Response, TrainOptimiser, TrainScope,
    TrainSettings, WeightLoader, CAP_SEGMENT, CAP_TRAIN, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME,
};
use hvae::store::blob;
use hvae::{Activation, Likelihood, Posterior, Shape};
use std::path::PathBuf;

/// The shape the fuzz targets compile in (see `fuzz/fuzz_targets/*.rs`).
const DEVICE: Shape = Shape::new(4, &[6], 3, 2).checked();

fn params(shape: &Shape) -> Vec<f32> {
    (0..shape.param_len())
        .map(|i| (i as f32 * 0.37).sin() * 2.0)
        .collect()
}

fn blob_of(shape: &Shape) -> Vec<u8> {
    let mut b = vec![0u8; blob::blob_len(shape)];
    blob::write(shape, &params(shape), &mut b).unwrap();
    b
}

/// An int8 blob (format version 2) of `shape` with made-up values inside their ranges.
fn int8_blob_of(shape: &Shape) -> Vec<u8> {
    use hvae::infer::quant::{float_len, int_len, weight_len, QuantModel};
    let w: Vec<i8> = (0..weight_len(shape))
        .map(|i| ((i * 37) % 255) as i32 - 127)
        .map(|v| v as i8)
        .collect();
    let channels = 3 * shape.hidden_sum();
    let n: Vec<i32> = (0..int_len(shape))
        .map(|i| match (i < channels, i % 3) {
            (true, 1) => 1 << 30,
            (true, 2) => 32 + (i as i32 % 5),
            _ => i as i32 * 3 - 10,
        })
        .collect();
    let f: Vec<f32> = (0..float_len(shape))
        .map(|i| 0.25 + i as f32 * 0.01)
        .collect();
    let q = QuantModel::new(*shape, w, n, f).unwrap();
    let mut b = vec![0u8; blob::int8_blob_len(shape)];
    blob::write_int8(&q, &mut b).unwrap();
    b
}

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    protocol::encode(msg, &mut buf).unwrap().to_vec()
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // blob_parse: valid blobs of the device shape and of an unusual one, a truncated and
    // a damaged one.
    let device = blob_of(&DEVICE);
    let odd = Shape::new(3, &[2, 2], 2, 3)
        .with_activation(Activation::Tanh)
        .with_posterior(Posterior::PowerSpherical)
        .with_likelihood(Likelihood::Bernoulli);
    out.push(("blob_parse", "seed-valid-device", device.clone()));
    out.push((
        "blob_parse",
        "seed-valid-deep-tanh-ps-bernoulli",
        blob_of(&odd),
    ));
    out.push(("blob_parse", "seed-truncated", device[..60].to_vec()));
    out.push((
        "blob_parse",
        "seed-valid-int8-device",
        int8_blob_of(&DEVICE),
    ));
    out.push((
        "blob_parse",
        "seed-valid-int8-deep-tanh",
        int8_blob_of(&odd),
    ));
    let mut bad = device.clone();
    bad[70] ^= 0x04;
    out.push(("blob_parse", "seed-bad-crc", bad));

    // protocol_decode: single frames of every kind, a stream of several, and a blob for
    // the weight loader (first byte: chunk size 8).
    let sample: HVec<f32, 256> = [0.5f32, -1.0, 2.0, 0.25].into_iter().collect();
    let requests = [
        Request::Info,
        Request::Segment {
            sample: sample.clone(),
        },
        Request::Encode {
            sample: sample.clone(),
        },
        Request::LoadWeights {
            offset: 0,
            bytes: device[..48].iter().copied().collect(),
            last: false,
        },
        Request::ReadWeights {
            offset: 4,
            count: 16,
        },
        Request::Checkpoint,
        Request::TrainBatch {
            samples: sample.clone(),
            steps: 3,
            settings: Some(TrainSettings {
                scope: TrainScope::SegmenterOnly,
                optimiser: TrainOptimiser::Sgd { momentum: 0.9 },
                lr: 1e-3,
                batch: 4,
            }),
        },
    ];
    let responses = [
        Response::Info(DeviceInfo::new(
            &DEVICE,
            DEVICE.param_len(),
            0xDEAD_BEEF,
            512,
            CAP_SEGMENT | CAP_TRAIN,
        )),
        Response::Segmented {
            label: 1,
            probs: [0.25f32, 0.75].into_iter().collect(),
            cosine: 0.9,
            mu: [0.6f32, 0.8, 0.0].into_iter().collect(),
            kappa: 12.0,
        },
        Response::Weights {
            offset: 8,
            values: [1.0f32, 2.0, -3.0].into_iter().collect(),
        },
        Response::Ack,
        Response::Error(ErrorCode::LoadLength),
        Response::Trained {
            buffered: 10,
            steps: 3,
            loss: 1.5,
        },
    ];
    let mut stream = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let f = frame(r);
        stream.extend_from_slice(&f);
        out.push(("protocol_decode", leak(format!("seed-request-{i}")), f));
    }
    for (i, r) in responses.iter().enumerate() {
        let f = frame(r);
        stream.extend_from_slice(&f);
        out.push(("protocol_decode", leak(format!("seed-response-{i}")), f));
    }
    out.push(("protocol_decode", "seed-stream", stream));
    let mut loader = vec![7u8];
    loader.extend_from_slice(&device);
    out.push(("protocol_decode", "seed-weight-loader", loader));

    // csv_load: a labelled CSV, one without labels, quoted and spaced fields, a gzipped
    // one.
    let labelled = "a,b,c,label\n0.5,1,2,0\n1e-3,-4,5.5,1\n3,3,3,2\n"
        .as_bytes()
        .to_vec();
    out.push(("csv_load", "seed-labelled", labelled.clone()));
    out.push((
        "csv_load",
        "seed-unlabelled",
        b"x0,x1\n1,2\n3,4\n5,6\n".to_vec(),
    ));
    out.push((
        "csv_load",
        "seed-quoted",
        b"\"f 1\", \"f,2\" ,label\n 1.0 ,\"2\",3\n4,5,6\n".to_vec(),
    ));
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::none());
        e.write_all(&labelled).unwrap();
        e.finish().unwrap();
    }
    // Stored (uncompressed) deflate blocks and a header with modification time 0: the
    // same bytes from any deflate implementation.
    out.push(("csv_load", "seed-gzip", gz));
    out
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

#[test]
fn valid_seeds_are_valid() {
    let all = seeds();
    let get = |name: &str| &all.iter().find(|s| s.1 == name).unwrap().2;
    let mut p = vec![0f32; DEVICE.param_len()];
    blob::read_params(get("seed-valid-device"), &DEVICE, &mut p).unwrap();
    assert!(blob::read_shape(get("seed-valid-deep-tanh-ps-bernoulli")).is_ok());
    assert_eq!(
        blob::read_int8_shape(get("seed-valid-int8-device")),
        Ok(DEVICE)
    );
    let tanh = get("seed-valid-int8-deep-tanh");
    let shape = blob::read_int8_shape(tanh).unwrap();
    assert_eq!(shape.activation, Activation::Tanh);
    let q = int8_model(tanh, &shape);
    assert_eq!(q.shape(), &shape);
    assert_eq!(
        blob::read_shape(get("seed-truncated")).err(),
        Some(blob::BlobError::Truncated)
    );
    assert!(matches!(
        blob::read_shape(get("seed-bad-crc")).err(),
        Some(blob::BlobError::BadCrc { .. })
    ));
    // Every frame of the stream decodes, on both decoders as the fuzz target runs them.
    let mut req = FrameDecoder::<MAX_REQUEST_FRAME>::new();
    let mut resp = FrameDecoder::<MAX_RESPONSE_FRAME>::new();
    let (mut nreq, mut nresp) = (0, 0);
    for &b in get("seed-stream") {
        nreq += usize::from(matches!(req.push::<Request>(b), Some(Ok(_))));
        nresp += usize::from(matches!(resp.push::<Response>(b), Some(Ok(_))));
    }
    // Some requests also parse as responses and vice versa; at least all of their own.
    assert!(nreq >= 7 && nresp >= 6, "{nreq} {nresp}");
    // The weight-loader seed loads, in chunks of 8 as the target feeds it.
    let w = get("seed-weight-loader");
    let chunk = usize::from(w[0] % 64) + 1;
    assert_eq!(chunk, 8);
    let mut loader = WeightLoader::new(DEVICE);
    let mut at = 0u32;
    for c in w[1..].chunks(chunk) {
        loader.feed(at, c, |_, _| Ok(())).unwrap();
        at += c.len() as u32;
    }
    assert_eq!(loader.finish(), Ok(blob::crc32(&w[1..w.len() - 4])));
}

#[test]
fn committed_corpus_matches_the_generator() {
    let write = std::env::var_os("HVAE_WRITE_CORPUS").is_some();
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds() {
        let dir = corpus_dir().join(target);
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale or missing seeds (HVAE_WRITE_CORPUS=1 regenerates): {stale:?}"
    );
}

/// The int8 model of an int8 blob of `shape` (read and checked as a device would).
fn int8_model(bytes: &[u8], shape: &Shape) -> hvae::QuantModel<Vec<i8>, Vec<i32>, Vec<f32>> {
    use hvae::infer::quant::{float_len, int_len, weight_len, QuantModel};
    let (mut w, mut i, mut f) = (
        vec![0i8; weight_len(shape)],
        vec![0i32; int_len(shape)],
        vec![0f32; float_len(shape)],
    );
    blob::read_int8(bytes, shape, &mut w, &mut i, &mut f).unwrap();
    QuantModel::new(*shape, w, i, f).unwrap()
}
