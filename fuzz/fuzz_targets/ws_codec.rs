//! The WebSocket frame codec (ws-fanout/src/socket/codec.rs).
//!
//! Input: arbitrary bytes, and a run of frames built from pieces (JSON text
//! frames, close frames, pings, bytes that parse as a frame).
//!
//! Asserts: no panic in `split_frame`, `without_close`, or a `Frame`'s
//! `payload`/`text`/`Debug`, including a frame made of whatever
//! `without_close` passes on (the reader hands those to `Frame::raw`);
//! `split_frame` ends a frame inside the bytes, after its header;
//! `without_close` is idempotent and only removes bytes; a `Frame` built
//! from a JSON value is one whole final text frame of its own length whose
//! text is the value's JSON; a close frame keeps its code and a UTF-8 prefix
//! of its reason within 125 bytes; `without_close` over a run of whole frames
//! keeps exactly the frames that are not close frames.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use emosation_ws_fanout::socket::Frame;
use emosation_ws_fanout::socket::codec::{split_frame, without_close};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

#[derive(Arbitrary, Debug)]
enum Piece {
    /// A text frame: the JSON of `text` if it is JSON, else `text` as a
    /// string, padded by up to 510 bytes (the 7- and 16-bit length forms).
    Json {
        text: String,
        pad: u8,
    },
    Close {
        code: u16,
        reason: String,
    },
    Ping,
    /// Kept if the bytes start with a whole frame (that frame only).
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    pieces: Vec<Piece>,
}

/// Everything a `Frame` offers a reader, which must never panic.
fn inspect(f: &Frame) -> usize {
    // (Debug escapes every character: only small frames, for speed.)
    if f.bytes().len() < 1024 {
        let _ = format!("{f:?}");
    }
    let _ = f.text();
    f.payload().len()
}

fn header_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

fuzz_target!(|input: Input| {
    // Arbitrary bytes.
    let raw = &input.raw;
    if let Some((op, end)) = split_frame(raw) {
        assert!(
            end <= raw.len() && end >= 2,
            "frame end {end} outside 2..={}",
            raw.len()
        );
        assert_eq!(op, raw[0] & 0x0f);
        let header = header_len(raw);
        assert!(end >= header);
        let frame = Frame::raw(Bytes::copy_from_slice(&raw[..end]));
        assert_eq!(inspect(&frame), end - header);
    }
    let kept = without_close(raw);
    assert!(kept.len() <= raw.len());
    assert_eq!(without_close(&kept), kept, "without_close is idempotent");
    if !kept.is_empty() {
        // What the reader queues when tungstenite writes `raw`.
        inspect(&Frame::raw(Bytes::from(kept)));
    }

    // A run of whole frames.
    let mut run = Vec::new();
    let mut expected = Vec::new();
    for piece in &input.pieces {
        let frame: Frame = match piece {
            Piece::Json { text, pad } => {
                let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
                // Across the 7-bit/16-bit boundary; serializing a long pad
                // costs an instrumented comparison per byte, so the 64-bit
                // form is left to codec.rs's unit test.
                let pad = usize::from(*pad) * 2;
                let value = if pad == 0 {
                    value
                } else {
                    json!({"v": value, "pad": "y".repeat(pad)})
                };
                let f = Frame::json(&value);
                let b = f.bytes();
                assert_eq!(b[0], 0x80 | OP_TEXT, "a final text frame");
                assert_eq!(
                    split_frame(b),
                    Some((OP_TEXT, b.len())),
                    "one whole frame of its own length"
                );
                let text = serde_json::to_string(&value).expect("a JSON value serializes");
                assert_eq!(f.text(), text);
                assert_eq!(f.payload(), text.as_bytes());
                f
            }
            Piece::Close { code, reason } => {
                let f = Frame::close(*code, reason);
                let b = f.bytes();
                assert_eq!(b[0], 0x80 | OP_CLOSE);
                assert_eq!(split_frame(b), Some((OP_CLOSE, b.len())));
                let p = f.payload();
                assert!((2..=125).contains(&p.len()), "close payload of {} bytes", p.len());
                assert_eq!(p[..2], code.to_be_bytes());
                let kept = std::str::from_utf8(&p[2..]).expect("the reason is cut on a char boundary");
                assert!(reason.starts_with(kept));
                assert!(kept.len() == reason.len() || kept.len() + 4 > 123, "reason cut short");
                assert_eq!(f.text(), "", "a close frame has no text");
                assert!(without_close(b).is_empty());
                f
            }
            Piece::Ping => {
                let f = Frame::ping();
                assert_eq!(split_frame(f.bytes()), Some((OP_PING, 2)));
                f
            }
            Piece::Raw(bytes) => match split_frame(bytes) {
                Some((_, end)) => Frame::raw(Bytes::copy_from_slice(&bytes[..end])),
                None => continue,
            },
        };
        inspect(&frame);
        let b = frame.bytes();
        let (op, end) = split_frame(b).expect("a whole frame");
        assert_eq!(end, b.len());
        run.extend_from_slice(b);
        if op != OP_CLOSE {
            expected.extend_from_slice(b);
        }
    }
    assert_eq!(without_close(&run), expected, "only the close frames are taken out");
});
