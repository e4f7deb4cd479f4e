//! The MLLP frame codec: `0x0B <payload> 0x1C 0x0D`, for `tokio_util::codec`.
//!
//! Decoding rules (see also the module documentation of [`crate::mllp`]):
//!
//! - Bytes outside a frame (before a start byte, or between an end marker and the next start
//!   byte) are skipped and counted as garbage; [`MllpCodec::take_garbage`] reports them.
//! - A start byte inside a frame restarts the frame: the partial frame (its start byte
//!   included) is counted as garbage.
//! - Only `0x1C 0x0D` ends a frame; a `0x1C` followed by anything else is payload.
//! - A payload longer than the maximum is not buffered: its first [`HEAD_BYTES`] are kept and
//!   the rest is dropped as it arrives, then [`Inbound::TooLarge`] is returned at the end
//!   marker. Memory stays bounded whatever the sender sends.
//! - The payload is passed through untouched (CR, LF or CRLF segment separators alike).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start of block (VT).
pub const START: u8 = 0x0B;
/// End of block (FS), followed by [`CR`].
pub const END: u8 = 0x1C;
/// Carriage return closing the end marker.
pub const CR: u8 = 0x0D;

/// How much of an oversize frame is kept, enough to recover its MSH (and MSH-10) to reject it.
pub const HEAD_BYTES: usize = 4096;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A complete frame's payload, without the framing bytes.
    Message(Bytes),
    /// A frame whose payload exceeded the maximum frame size.
    TooLarge {
        /// The first [`HEAD_BYTES`] of the payload (fewer if the maximum is smaller).
        head: Bytes,
        /// Payload bytes seen in total.
        size: usize,
    },
}

impl Inbound {
    /// Payload bytes of the frame (for logs and metrics).
    pub fn size(&self) -> usize {
        match self {
            Inbound::Message(b) => b.len(),
            Inbound::TooLarge { size, .. } => *size,
        }
    }
}

/// Decoding or encoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The stream ended inside a frame; the partial frame was dropped.
    #[error("connection closed in the middle of a frame ({bytes} payload bytes discarded)")]
    Truncated { bytes: usize },
    /// A payload to send contains a start byte or an end marker, which would break framing.
    #[error("the payload contains an MLLP framing byte sequence (0x0B or 0x1C 0x0D)")]
    FramingBytesInPayload,
}

#[derive(Debug)]
enum State {
    /// Looking for a start byte.
    Idle,
    /// In a frame; the buffer starts at the payload and `scanned` bytes of it hold no marker.
    Frame { scanned: usize },
    /// In an oversize frame: the buffer is dropped as it is scanned.
    Discard {
        head: Bytes,
        size: usize,
        /// The last byte dropped was `0x1C`, so a leading `0x0D` ends the frame.
        after_end: bool,
    },
}

/// MLLP decoder and encoder. The decoder yields [`Inbound`] items; the encoder frames any
/// `AsRef<[u8]>` payload, refusing payloads that contain framing bytes.
#[derive(Debug)]
pub struct MllpCodec {
    max_frame_bytes: usize,
    state: State,
    garbage: usize,
}

impl MllpCodec {
    /// A codec that refuses payloads longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> MllpCodec {
        MllpCodec {
            max_frame_bytes,
            state: State::Idle,
            garbage: 0,
        }
    }

    /// Garbage bytes skipped since the last call (then resets the count).
    pub fn take_garbage(&mut self) -> usize {
        std::mem::take(&mut self.garbage)
    }

    /// Whether a frame has started and not yet ended.
    pub fn in_frame(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Payload bytes of the unfinished frame, if any (buffered or already dropped).
    pub fn partial_bytes(&self, buf: &BytesMut) -> usize {
        match &self.state {
            State::Idle => 0,
            State::Frame { .. } => buf.len(),
            State::Discard { size, .. } => size + buf.len(),
        }
    }

    fn head(&self, payload: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&payload[..payload.len().min(HEAD_BYTES.min(self.max_frame_bytes))])
    }
}

/// Checks that `payload` can be framed as is.
pub fn check_payload(payload: &[u8]) -> Result<(), CodecError> {
    let mut from = 0;
    while let Some(i) = memchr::memchr2(START, END, &payload[from..]) {
        let at = from + i;
        if payload[at] == START || payload.get(at + 1) == Some(&CR) {
            return Err(CodecError::FramingBytesInPayload);
        }
        from = at + 1;
    }
    Ok(())
}

/// Appends the frame around `payload` to `dst`, unchecked.
pub(crate) fn put_frame(payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(payload.len() + 3);
    dst.put_u8(START);
    dst.extend_from_slice(payload);
    dst.put_slice(&[END, CR]);
}

impl Decoder for MllpCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        loop {
            match &mut self.state {
                State::Idle => match memchr::memchr(START, buf) {
                    Some(i) => {
                        self.garbage += i;
                        buf.advance(i + 1);
                        self.state = State::Frame { scanned: 0 };
                    }
                    None => {
                        self.garbage += buf.len();
                        buf.clear();
                        return Ok(None);
                    }
                },
                State::Frame { scanned } => {
                    let Some(i) = memchr::memchr2(START, END, &buf[*scanned..]) else {
                        *scanned = buf.len();
                        if buf.len() > self.max_frame_bytes {
                            // Too large already: keep the head, drop the rest from now on.
                            self.state = State::Discard {
                                head: self.head(buf),
                                size: buf.len(),
                                after_end: false,
                            };
                            buf.clear();
                        }
                        return Ok(None);
                    };
                    let at = *scanned + i;
                    if buf[at] == START {
                        // A sender restarting its frame: the partial one is garbage.
                        self.garbage += at + 1;
                        buf.advance(at + 1);
                        *scanned = 0;
                        continue;
                    }
                    match buf.get(at + 1) {
                        Some(&CR) => {
                            let payload = buf.split_to(at);
                            buf.advance(2);
                            self.state = State::Idle;
                            if at > self.max_frame_bytes {
                                return Ok(Some(Inbound::TooLarge {
                                    head: self.head(&payload),
                                    size: at,
                                }));
                            }
                            return Ok(Some(Inbound::Message(payload.freeze())));
                        }
                        Some(_) => *scanned = at + 1,
                        None => {
                            // 0x1C is the last byte so far; wait for the next one.
                            *scanned = at;
                            if at > self.max_frame_bytes {
                                self.state = State::Discard {
                                    head: self.head(buf),
                                    // The 0x1C counts until a 0x0D proves it the end marker.
                                    size: at + 1,
                                    after_end: true,
                                };
                                buf.clear();
                            }
                            return Ok(None);
                        }
                    }
                }
                State::Discard {
                    head,
                    size,
                    after_end,
                } => {
                    if *after_end && !buf.is_empty() {
                        *after_end = false;
                        if buf[0] == CR {
                            // The 0x1C counted in `size` was the end marker.
                            let item = Inbound::TooLarge {
                                head: std::mem::take(head),
                                size: *size - 1,
                            };
                            buf.advance(1);
                            self.state = State::Idle;
                            return Ok(Some(item));
                        }
                    }
                    let Some(i) = memchr::memchr2(START, END, buf) else {
                        *size += buf.len();
                        buf.clear();
                        return Ok(None);
                    };
                    if buf[i] == START {
                        self.garbage += *size + 1 + i;
                        buf.advance(i + 1);
                        self.state = State::Frame { scanned: 0 };
                        continue;
                    }
                    // Count the 0x1C as payload for now; a following 0x0D takes it back.
                    *size += i + 1;
                    *after_end = true;
                    buf.advance(i + 1);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        let bytes = self.partial_bytes(buf);
        buf.clear();
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => Ok(None),
            _ => Err(CodecError::Truncated { bytes }),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = CodecError;

    fn encode(&mut self, payload: T, dst: &mut BytesMut) -> Result<(), CodecError> {
        let payload = payload.as_ref();
        check_payload(payload)?;
        put_frame(payload, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![START];
        v.extend_from_slice(payload);
        v.extend_from_slice(&[END, CR]);
        v
    }

    /// Feeds `chunks` one after the other; returns the items and the garbage count.
    fn decode_chunks(codec: &mut MllpCodec, chunks: &[&[u8]]) -> (Vec<Inbound>, usize) {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                out.push(item);
            }
        }
        (out, codec.take_garbage())
    }

    fn msg(b: &[u8]) -> Inbound {
        Inbound::Message(Bytes::copy_from_slice(b))
    }

    #[test]
    fn one_frame_passes_separators_through() {
        let payload = b"MSH|^~\\&|A\rPID|1\nPV1|1\r\nOBX|1";
        let mut codec = MllpCodec::new(1024);
        let (items, garbage) = decode_chunks(&mut codec, &[&frame(payload)]);
        assert_eq!(items, vec![msg(payload)]);
        assert_eq!(garbage, 0);
        assert!(!codec.in_frame());
    }

    #[test]
    fn empty_payload_is_a_message() {
        let mut codec = MllpCodec::new(1024);
        let (items, _) = decode_chunks(&mut codec, &[&frame(b"")]);
        assert_eq!(items, vec![msg(b"")]);
    }

    #[test]
    fn every_split_point_of_one_frame() {
        let data = frame(b"MSH|x\rPID|y\r");
        for cut in 0..=data.len() {
            let mut codec = MllpCodec::new(1024);
            let (items, garbage) = decode_chunks(&mut codec, &[&data[..cut], &data[cut..]]);
            assert_eq!(items, vec![msg(b"MSH|x\rPID|y\r")], "cut at {cut}");
            assert_eq!(garbage, 0);
        }
    }

    #[test]
    fn garbage_before_and_between_frames_is_counted() {
        let mut data = b"junk".to_vec();
        data.extend(frame(b"A"));
        data.extend(b"\n\n");
        data.extend(frame(b"B"));
        data.extend(b"tail");
        let mut codec = MllpCodec::new(1024);
        let (items, garbage) = decode_chunks(&mut codec, &[&data]);
        assert_eq!(items, vec![msg(b"A"), msg(b"B")]);
        assert_eq!(garbage, 4 + 2 + 4);
    }

    #[test]
    fn start_byte_inside_a_frame_restarts_it() {
        let mut data = vec![START];
        data.extend(b"MSH|lost");
        data.extend(frame(b"MSH|kept"));
        let mut codec = MllpCodec::new(1024);
        let (items, garbage) = decode_chunks(&mut codec, &[&data[..5], &data[5..]]);
        assert_eq!(items, vec![msg(b"MSH|kept")]);
        assert_eq!(garbage, 1 + 8);
    }

    #[test]
    fn end_byte_without_cr_is_payload() {
        let payload = b"a\x1cb\x1c\x1c\nc\x1c";
        let data = frame(payload);
        for cut in 0..=data.len() {
            let mut codec = MllpCodec::new(1024);
            let (items, _) = decode_chunks(&mut codec, &[&data[..cut], &data[cut..]]);
            assert_eq!(items, vec![msg(payload)], "cut at {cut}");
        }
    }

    #[test]
    fn oversize_frame_keeps_the_head_and_stays_bounded() {
        let max = 10_000;
        let mut payload = b"MSH|^~\\&|".to_vec();
        payload.resize(200_000, b'x');
        payload[50_000] = END; // a stray 0x1C inside the oversize part
        let mut data = frame(&payload);
        data.extend(frame(b"next"));
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        for chunk in data.chunks(1000) {
            buf.extend_from_slice(chunk);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                items.push(item);
            }
            assert!(buf.len() <= max + 1000, "buffered {}", buf.len());
        }
        assert_eq!(
            items,
            vec![
                Inbound::TooLarge {
                    head: Bytes::copy_from_slice(&payload[..HEAD_BYTES]),
                    size: payload.len(),
                },
                msg(b"next"),
            ]
        );
        assert_eq!(codec.take_garbage(), 0);
    }

    #[test]
    fn oversize_end_marker_split_in_every_way() {
        let max = 16;
        let payload = vec![b'y'; 40];
        let data = frame(&payload);
        for a in 0..=data.len() {
            for b in a..=data.len() {
                let mut codec = MllpCodec::new(max);
                let (items, garbage) =
                    decode_chunks(&mut codec, &[&data[..a], &data[a..b], &data[b..]]);
                assert_eq!(
                    items,
                    vec![Inbound::TooLarge {
                        head: Bytes::copy_from_slice(&payload[..max]),
                        size: 40,
                    }],
                    "cuts at {a}, {b}"
                );
                assert_eq!(garbage, 0);
            }
        }
    }

    #[test]
    fn payload_of_exactly_the_maximum_is_a_message() {
        let payload = vec![b'z'; 64];
        let mut codec = MllpCodec::new(64);
        let (items, _) = decode_chunks(&mut codec, &[&frame(&payload)]);
        assert_eq!(items, vec![msg(&payload)]);
    }

    #[test]
    fn restart_inside_an_oversize_frame() {
        let mut data = vec![START];
        data.extend(vec![b'q'; 100]);
        data.extend(frame(b"ok"));
        let mut codec = MllpCodec::new(10);
        let (items, garbage) = decode_chunks(&mut codec, &[&data[..50], &data[50..]]);
        assert_eq!(items, vec![msg(b"ok")]);
        assert_eq!(garbage, 101);
    }

    #[test]
    fn eof_inside_a_frame_is_an_error_not_a_message() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::from(&b"\x0bMSH|partial"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        match codec.decode_eof(&mut buf) {
            Err(CodecError::Truncated { bytes }) => assert_eq!(bytes, 11),
            other => panic!("unexpected {other:?}"),
        }
        assert!(!codec.in_frame());
        // Garbage only at EOF is fine.
        let mut buf = BytesMut::from(&b"noise"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        assert_eq!(codec.take_garbage(), 5);
    }

    #[test]
    fn eof_inside_an_oversize_frame_counts_what_was_dropped() {
        let mut codec = MllpCodec::new(8);
        let mut buf = BytesMut::from(&b"\x0b0123456789abcdef"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"ghij");
        match codec.decode_eof(&mut buf) {
            Err(CodecError::Truncated { bytes }) => assert_eq!(bytes, 20),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn encoder_frames_and_refuses_framing_bytes() {
        let mut codec = MllpCodec::new(1024);
        let mut dst = BytesMut::new();
        codec.encode(b"MSA|AA|1\x1cx", &mut dst).unwrap();
        assert_eq!(&dst[..], &frame(b"MSA|AA|1\x1cx")[..]);
        for bad in [&b"a\x0bb"[..], b"a\x1c\rb", b"\x1c\r"] {
            assert!(matches!(
                codec.encode(bad, &mut dst),
                Err(CodecError::FramingBytesInPayload)
            ));
        }
    }

    /// xorshift64*: deterministic, good enough to pick split points and bytes.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_split_points_of_a_multi_frame_stream() {
        let max = 300;
        let alphabet = b"MSH|^~\\&PID\r\n\x1cabc0123";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..300 {
            // Build a stream of frames with garbage between some of them.
            let mut data = Vec::new();
            let mut expected = Vec::new();
            let mut expected_garbage = 0;
            for _ in 0..1 + rng.below(8) {
                if rng.below(4) == 0 {
                    let n = 1 + rng.below(5);
                    data.extend(std::iter::repeat_n(b'G', n));
                    expected_garbage += n;
                }
                let len = rng.below(2 * max);
                let mut payload: Vec<u8> = (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect();
                // No end marker inside, and none formed with the closing 0x1C 0x0D.
                for i in 0..payload.len() {
                    if payload[i] == END && payload.get(i + 1).is_none_or(|&b| b == CR) {
                        payload[i] = b'E';
                    }
                }
                data.extend(frame(&payload));
                expected.push(if payload.len() > max {
                    Inbound::TooLarge {
                        head: Bytes::copy_from_slice(&payload[..max.min(HEAD_BYTES)]),
                        size: payload.len(),
                    }
                } else {
                    Inbound::Message(Bytes::from(payload))
                });
            }
            let mut cuts: Vec<usize> = (0..rng.below(12))
                .map(|_| rng.below(data.len() + 1))
                .collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
            let mut codec = MllpCodec::new(max);
            let (items, garbage) = decode_chunks(&mut codec, &chunks);
            assert_eq!(items, expected, "round {round}, cuts {cuts:?}");
            assert_eq!(garbage, expected_garbage, "round {round}");
            assert!(!codec.in_frame());
        }
    }
}
