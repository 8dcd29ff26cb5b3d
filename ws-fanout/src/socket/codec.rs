//! RFC 6455 framing of what the server writes: [`Frame`], complete frames
//! encoded once and shared, and the parsing of frames tungstenite writes
//! (its pongs) back into whole frames.

use bytes::Bytes;
use serde_json::Value;

/// A complete server-to-client WebSocket frame (RFC 6455 §5.2: final, not
/// masked), ready to write: a room's event is encoded once, WebSocket header
/// included, and the same bytes go to each of its sockets.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

/// The longest header: 2 bytes, then a 64-bit length.
const MAX_HEADER: usize = 10;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

impl Frame {
    /// A text frame holding `v` as JSON.
    pub fn json(v: &Value) -> Frame {
        let mut buf = Vec::with_capacity(160);
        buf.resize(MAX_HEADER, 0);
        serde_json::to_writer(&mut buf, v).expect("a JSON value serializes");
        Frame::finish(OP_TEXT, buf)
    }

    /// Writes the header for the payload after `buf`'s first [`MAX_HEADER`]
    /// bytes, ending where the payload starts (no copy of the payload).
    fn finish(opcode: u8, mut buf: Vec<u8>) -> Frame {
        let len = buf.len() - MAX_HEADER;
        let start = match len {
            0..=125 => {
                buf[MAX_HEADER - 1] = len as u8;
                MAX_HEADER - 2
            }
            126..=65_535 => {
                buf[MAX_HEADER - 3] = 126;
                buf[MAX_HEADER - 2..MAX_HEADER].copy_from_slice(&(len as u16).to_be_bytes());
                MAX_HEADER - 4
            }
            _ => {
                buf[1] = 127;
                buf[2..MAX_HEADER].copy_from_slice(&(len as u64).to_be_bytes());
                0
            }
        };
        buf[start] = 0x80 | opcode;
        Frame(Bytes::from(buf).slice(start..))
    }

    /// Bytes that are already whole frames (tungstenite's pongs).
    pub fn raw(bytes: Bytes) -> Frame {
        Frame(bytes)
    }

    /// A ping (empty payload).
    pub fn ping() -> Frame {
        Frame(Bytes::from_static(&[0x80 | OP_PING, 0]))
    }

    /// A close frame with its status code and reason (at most 123 bytes, as
    /// a control frame's payload is at most 125).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = vec![0; MAX_HEADER];
        buf.extend_from_slice(&code.to_be_bytes());
        buf.extend_from_slice(&reason.as_bytes()[..end]);
        Frame::finish(OP_CLOSE, buf)
    }

    /// The first frame's opcode (0 for no bytes at all).
    fn opcode(&self) -> u8 {
        self.0.first().map_or(0, |b0| b0 & 0x0f)
    }

    /// The bytes to write.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The payload (after the header); empty for bytes shorter than their
    /// header (a [`Frame::raw`] holds whatever tungstenite wrote).
    pub fn payload(&self) -> &[u8] {
        let b = &self.0;
        let header = match b.get(1).map(|b1| b1 & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        b.get(header..).unwrap_or_default()
    }

    /// A text frame's payload as a string (empty for other frames).
    pub fn text(&self) -> &str {
        if self.opcode() != OP_TEXT {
            return "";
        }
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("opcode", &self.opcode())
            .field("text", &self.text())
            .finish()
    }
}

/// Whether `frame` (complete server frames, as tungstenite writes them) is a
/// close frame, and where the next frame starts; `None` if the bytes do not
/// parse as an unmasked frame header.
pub fn split_frame(bytes: &[u8]) -> Option<(u8, usize)> {
    let (&b0, rest) = bytes.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    if b1 & 0x80 != 0 {
        return None;
    }
    let (len, header): (usize, usize) = match b1 & 0x7f {
        126 => (u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize, 4),
        127 => (
            usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (n as usize, 2),
    };
    let end = header.checked_add(len)?;
    (end <= bytes.len()).then_some((b0 & 0x0f, end))
}

/// `bytes` without its close frames (whole frames in, whole frames out).
pub fn without_close(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match split_frame(rest) {
            Some((op, end)) => {
                if op != OP_CLOSE {
                    out.extend_from_slice(&rest[..end]);
                }
                rest = &rest[end..];
            }
            None => {
                out.extend_from_slice(rest);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_are_whole_websocket_frames() {
        // Each length form: 7 bits, 16 bits, 64 bits.
        for n in [0usize, 100, 125, 126, 1000, 65_535, 65_536, 200_000] {
            let f = Frame::json(&json!({"type": "error", "code": "x", "message": "y".repeat(n)}));
            let b = f.bytes();
            assert_eq!(b[0], 0x81, "final text frame");
            assert_eq!(split_frame(b), Some((OP_TEXT, b.len())), "one whole frame");
            let v: Value = serde_json::from_str(f.text()).unwrap();
            assert_eq!(v["message"].as_str().unwrap().len(), n);
        }
        let close = Frame::close(1013, &"é".repeat(100));
        assert_eq!(close.bytes()[0], 0x88);
        assert!(close.payload().len() <= 125);
        assert_eq!(&close.payload()[..2], &1013u16.to_be_bytes());
        assert!(std::str::from_utf8(&close.payload()[2..]).is_ok());
        assert_eq!(Frame::ping().bytes().as_ref(), &[0x89, 0]);
        // Close frames are taken out of a run of frames, the rest kept whole.
        let pong = [0x8a, 1, b'p'];
        let mut run = pong.to_vec();
        run.extend_from_slice(close.bytes());
        run.extend_from_slice(&pong);
        assert_eq!(without_close(&run), [pong, pong].concat());
        assert_eq!(without_close(&[0x88]), vec![0x88], "unparsable bytes pass through");
    }

    /// Found by the `ws_codec` fuzz target: the reader queues whatever
    /// `without_close` passes on as a raw frame, and reading a frame of
    /// fewer bytes than its header (a lone pong byte: `0a`) panicked.
    #[test]
    fn a_raw_frame_shorter_than_its_header_reads_as_empty() {
        for bytes in [&[0x0a][..], &[0x81], &[0x81, 126, 0], &[0x81, 127, 0, 0], &[]] {
            let f = Frame::raw(Bytes::copy_from_slice(bytes));
            assert_eq!(f.payload(), b"", "{bytes:02x?}");
            assert_eq!(f.text(), "");
            assert!(format!("{f:?}").starts_with("Frame"));
        }
        let pong = Frame::raw(Bytes::from_static(&[0x8a, 1, b'p']));
        assert_eq!(pong.payload(), b"p");
    }
}
