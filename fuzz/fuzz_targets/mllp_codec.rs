//! Arbitrary byte chunks through the MLLP decoder with a small maximum frame size, checked
//! against a plain reference model of the framing rules (src/mllp/codec.rs module doc):
//! no panic, messages never exceed the maximum, an oversize frame is reported as TooLarge
//! with its head and true size, buffering stays bounded, and the result does not depend on
//! how the stream was cut into chunks.

#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use qubs_bridge::mllp::codec::{CR, CodecError, END, HEAD_BYTES, Inbound, MllpCodec, START};
use tokio_util::codec::Decoder;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Maximum frame size, kept small (1..=64) so that oversize frames are common.
    max: u8,
    chunks: Vec<Vec<u8>>,
}

/// Items, garbage bytes skipped, and the payload bytes of a frame cut off by EOF.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    items: Vec<Inbound>,
    garbage: usize,
    truncated: Option<usize>,
}

/// The framing rules, written as directly as possible over the whole stream.
fn reference(stream: &[u8], max: usize) -> Decoded {
    let mut items = Vec::new();
    let mut garbage = 0;
    let mut frame: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < stream.len() {
        let b = stream[i];
        match &mut frame {
            None if b == START => frame = Some(Vec::new()),
            None => garbage += 1,
            Some(payload) if b == START => {
                // A restart: the partial frame and its start byte are garbage.
                garbage += payload.len() + 1;
                payload.clear();
            }
            Some(payload) if b == END && stream.get(i + 1) == Some(&CR) => {
                let payload = frame.take().unwrap();
                items.push(if payload.len() > max {
                    Inbound::TooLarge {
                        head: Bytes::copy_from_slice(&payload[..max.min(HEAD_BYTES)]),
                        size: payload.len(),
                    }
                } else {
                    Inbound::Message(Bytes::from(payload))
                });
                i += 1;
            }
            Some(payload) => payload.push(b),
        }
        i += 1;
    }
    Decoded {
        items,
        garbage,
        truncated: frame.map(|p| p.len()),
    }
}

fn decode(chunks: &[&[u8]], max: usize) -> Decoded {
    let mut codec = MllpCodec::new(max);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(item) = codec
            .decode(&mut buf)
            .expect("decode never fails mid-stream")
        {
            items.push(item);
        }
        // Bounded memory: never more than the maximum (plus the end marker being
        // checked) buffered once the decoder has seen the chunk.
        assert!(
            buf.len() <= max + 2 || !codec.in_frame() && buf.is_empty(),
            "buffered {} with max {max}",
            buf.len()
        );
    }
    let truncated = match codec.decode_eof(&mut buf) {
        Ok(Some(item)) => {
            items.push(item);
            // An item at EOF means the stream ended exactly on it; nothing left.
            match codec.decode_eof(&mut buf) {
                Ok(None) => None,
                other => panic!("after the last item: {other:?}"),
            }
        }
        Ok(None) => None,
        Err(CodecError::Truncated { bytes }) => Some(bytes),
        Err(e) => panic!("unexpected error {e}"),
    };
    assert!(buf.is_empty() && !codec.in_frame());
    Decoded {
        items,
        garbage: codec.take_garbage(),
        truncated,
    }
}

fuzz_target!(|input: Input| {
    let max = 1 + usize::from(input.max % 64);
    let chunks: Vec<&[u8]> = input.chunks.iter().map(Vec::as_slice).collect();
    let stream: Vec<u8> = chunks.concat();

    let got = decode(&chunks, max);
    for item in &got.items {
        match item {
            Inbound::Message(p) => assert!(p.len() <= max, "message of {} > {max}", p.len()),
            Inbound::TooLarge { head, size } => {
                assert!(*size > max);
                assert_eq!(head.len(), max.min(HEAD_BYTES));
            }
        }
    }
    assert_eq!(got, reference(&stream, max), "chunks {chunks:?}");
    // Cutting the stream differently changes nothing.
    assert_eq!(decode(&[&stream], max), got);
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode(&bytes, max), got);
});
