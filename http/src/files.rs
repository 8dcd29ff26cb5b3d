//! Files over HTTP (attachments).
//!
//! Uploads: [`clean_name`] (a file name a client sent, made safe to store
//! and show), [`content_type`] (the type a client declared, checked),
//! [`sniff`] (the type of a file whose first bytes say so), and
//! [`image_size`] (an image's width and height from its first bytes, which
//! [`Head`] keeps while the body streams on to the blob store).
//!
//! Downloads: the `Range` header, and the headers that keep a file from
//! running as a page.
//!
//! - [`parse_range`]: one `bytes=` range (`a-b`, `a-`, `-n`) against the
//!   file's size. Several ranges, or a unit other than bytes, are answered
//!   with the whole file (RFC 9110 lets a server ignore `Range`); a range
//!   that cannot be satisfied is `416` with `Content-Range: bytes */SIZE`.
//! - [`disposition`]: `inline` only for the image types a browser shows and
//!   never runs (PNG, JPEG, GIF, WebP, AVIF); everything else — HTML, SVG,
//!   XML, scripts, PDFs, unknown types — is `attachment` (a download), with
//!   the file name in both `filename` (ASCII) and `filename*` (UTF-8).
//!   Whoever serves a file also sends `X-Content-Type-Options: nosniff` and
//!   a sandboxing `Content-Security-Policy` ([`SAFETY_HEADERS`]).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;

/// A stream of body bytes (as the blob store takes it).
pub type BodyStream = std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Bytes of an upload kept for [`image_size`]: enough for a JPEG's frame
/// header behind a large EXIF block.
pub const HEAD_BYTES: usize = 256 * 1024;

/// The longest file name kept, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// A file name as a client sent it, made safe: the last path component
/// only, no control characters, trimmed, at most [`MAX_NAME_BYTES`] (cut
/// at a character boundary, the extension kept); `file` if nothing is left.
pub fn clean_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let name: String = last.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim().trim_start_matches('.').trim();
    if name.is_empty() {
        return "file".to_owned();
    }
    if name.len() <= MAX_NAME_BYTES {
        return name.to_owned();
    }
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e)
        .filter(|e| e.len() <= 16)
        .unwrap_or("");
    let budget = MAX_NAME_BYTES - if ext.is_empty() { 0 } else { ext.len() + 1 };
    let mut cut = budget;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    if ext.is_empty() {
        name[..cut].to_owned()
    } else {
        format!("{}.{ext}", &name[..cut])
    }
}

/// The declared type's essence (`type/subtype`, lowercase) if it is one,
/// else `application/octet-stream`.
pub fn content_type(declared: Option<&str>) -> String {
    let essence = declared
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match essence.split_once('/') {
        Some((t, sub)) if token(t) && token(sub) && essence.len() <= 127 => essence,
        _ => "application/octet-stream".to_owned(),
    }
}

/// A message's attachments as the API shows them (history, `message`
/// frames): id, file name, size, content type, an image's width and height,
/// and where to download it.
pub fn attachments_json(refs: &[emosation_core::view::AttachmentRef]) -> serde_json::Value {
    serde_json::Value::Array(
        refs.iter()
            .map(|a| {
                serde_json::json!({
                    "attachment_id": a.attachment_id,
                    "file_name": a.file_name,
                    "size": a.size,
                    "content_type": a.content_type,
                    "width": a.width,
                    "height": a.height,
                    "url": format!("/v1/attachments/{}", a.attachment_id),
                })
            })
            .collect(),
    )
}

/// The type of a file whose first bytes say what it is (the image types
/// shown inline, PDF, ZIP); `None` when they do not. Used when the client
/// declared no type, or only `application/octet-stream`.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("image/gif")
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some("image/webp")
    } else if head.len() >= 12 && &head[4..8] == b"ftyp" && matches!(&head[8..12], b"avif" | b"avis") {
        Some("image/avif")
    } else if starts(b"%PDF-") {
        Some("application/pdf")
    } else if starts(b"PK\x03\x04") {
        Some("application/zip")
    } else {
        None
    }
}

/// Width and height of an image of `content_type` from its first bytes
/// (see [`HEAD_BYTES`]), for the image types shown inline; `None` for other
/// files or bytes that are not that image.
pub fn image_size(content_type: &str, head: &[u8]) -> Option<(u32, u32)> {
    if !shown_inline(content_type) {
        return None;
    }
    let size = imagesize::blob_size(head).ok()?;
    let (w, h) = (u32::try_from(size.width).ok()?, u32::try_from(size.height).ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// The first bytes of a body, kept while it streams on ([`Head::tap`]).
#[derive(Clone, Default)]
pub struct Head(Arc<Mutex<Vec<u8>>>);

impl Head {
    /// `body`, passed through unchanged, keeping its first `keep` bytes here.
    pub fn tap(&self, body: BodyStream, keep: usize) -> BodyStream {
        let head = Arc::clone(&self.0);
        Box::pin(body.map(move |chunk| {
            if let Ok(c) = &chunk {
                let mut h = head.lock().unwrap_or_else(|e| e.into_inner());
                let room = keep.saturating_sub(h.len());
                h.extend_from_slice(&c[..room.min(c.len())]);
            }
            chunk
        }))
    }

    /// What was kept.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Headers every stored file is served with: no MIME sniffing, and a
/// sandbox (no scripts, no same origin) should a browser render it anyway.
pub const SAFETY_HEADERS: [(&str, &str); 3] = [
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
    ),
    ("cross-origin-resource-policy", "same-origin"),
];

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranged {
    /// No usable range: the whole file, `200`.
    Whole,
    /// One satisfiable range (`start..end`, end exclusive): `206`.
    Part(Range<u64>),
    /// A range past the file's end: `416`.
    Unsatisfiable,
}

/// Reads a `Range` header value (see the module doc).
pub fn parse_range(header: Option<&str>, size: u64) -> Ranged {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match num(b) {
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(size.saturating_sub(n)..size),
            None => Ranged::Whole,
        },
        // `a-`: from a to the end.
        (false, true) => match num(a) {
            Some(start) if start < size => Ranged::Part(start..size),
            Some(_) => Ranged::Unsatisfiable,
            None => Ranged::Whole,
        },
        // `a-b`: inclusive bounds, b clamped to the end.
        (false, false) => match (num(a), num(b)) {
            (Some(start), Some(last)) if start <= last => {
                if start >= size {
                    Ranged::Unsatisfiable
                } else {
                    Ranged::Part(start..last.saturating_add(1).min(size))
                }
            }
            _ => Ranged::Whole,
        },
        (true, true) => Ranged::Whole,
    }
}

/// Image types a browser displays and never executes: served `inline`.
pub fn shown_inline(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "image/png" | "image/jpeg" | "image/gif" | "image/webp" | "image/avif"
    )
}

/// The `Content-Disposition` value for a file named `name` of `content_type`.
pub fn disposition(name: &str, content_type: &str) -> String {
    let kind = if shown_inline(content_type) {
        "inline"
    } else {
        "attachment"
    };
    // `filename`: printable ASCII without quotes or backslashes; the rest `_`.
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // `filename*`: RFC 8187, UTF-8, percent-encoded but for attr-chars.
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_files_are_sniffed() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a.."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"%PDF-1.7"), Some("application/pdf"));
        assert_eq!(sniff(b"<html><script>"), None, "never a type a browser runs");
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("photo.jpg"), "photo.jpg");
        assert_eq!(clean_name("C:\\Users\\me\\report final.pdf"), "report final.pdf");
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("a\u{0}b\r\nc.txt"), "abc.txt");
        assert_eq!(clean_name("  .hidden "), "hidden");
        for empty in ["", "/", "..", " . "] {
            assert_eq!(clean_name(empty), "file", "{empty:?}");
        }
        let long = format!("{}.png", "가".repeat(200));
        let c = clean_name(&long);
        assert!(c.len() <= MAX_NAME_BYTES && c.ends_with(".png"), "{c}");
    }

    #[test]
    fn types_are_checked() {
        assert_eq!(content_type(Some("Image/PNG; charset=x")), "image/png");
        assert_eq!(content_type(Some("text/html")), "text/html");
        for bad in [
            None,
            Some(""),
            Some("png"),
            Some("image/"),
            Some("a b/c"),
            Some("text/html\r\nX: y"),
        ] {
            assert_eq!(content_type(bad), "application/octet-stream", "{bad:?}");
        }
    }

    #[test]
    fn image_sizes_from_the_first_bytes() {
        // A 3×2 PNG's header (signature, IHDR).
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&3u32.to_be_bytes());
        png.extend_from_slice(&2u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(image_size("image/png", &png), Some((3, 2)));
        // A 5×4 GIF.
        let gif = b"GIF89a\x05\x00\x04\x00\x00\x00\x00";
        assert_eq!(image_size("image/gif", gif), Some((5, 4)));
        // Not shown inline, or not an image: no size.
        assert_eq!(image_size("image/svg+xml", &png), None);
        assert_eq!(image_size("image/png", b"not an image at all"), None);
    }

    #[tokio::test]
    async fn the_head_is_kept_while_the_body_streams_on() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defgh")),
            Ok(Bytes::from_static(b"ij")),
        ];
        let head = Head::default();
        let mut s = head.tap(Box::pin(futures_util::stream::iter(chunks)), 5);
        let mut all = Vec::new();
        while let Some(c) = s.next().await {
            all.extend_from_slice(&c.unwrap());
        }
        assert_eq!(all, b"abcdefghij");
        assert_eq!(head.bytes(), b"abcde");
    }

    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(Some(h), 1000);
        assert_eq!(parse_range(None, 1000), Ranged::Whole);
        assert_eq!(r("bytes=0-99"), Ranged::Part(0..100));
        assert_eq!(r("bytes=990-2000"), Ranged::Part(990..1000), "clamped to the end");
        assert_eq!(r("bytes=500-"), Ranged::Part(500..1000));
        assert_eq!(r("bytes=-10"), Ranged::Part(990..1000));
        assert_eq!(r("bytes=-5000"), Ranged::Part(0..1000), "a suffix longer than the file");
        assert_eq!(r("bytes=1000-"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=1000-1001"), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Ranged::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-1"), 0), Ranged::Unsatisfiable);
        // Not understood, or several: the whole file.
        for h in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
        ] {
            assert_eq!(r(h), Ranged::Whole, "{h}");
        }
    }

    #[test]
    fn only_images_are_inline_and_names_are_quoted_safely() {
        assert!(shown_inline("image/png"));
        assert!(shown_inline("IMAGE/JPEG; charset=binary"));
        for t in [
            "image/svg+xml",
            "text/html",
            "application/xhtml+xml",
            "text/xml",
            "application/javascript",
            "application/pdf",
            "",
        ] {
            assert!(!shown_inline(t), "{t}");
        }
        assert_eq!(
            disposition("cat.png", "image/png"),
            "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
        );
        assert_eq!(
            disposition("a \"b\".html", "text/html"),
            "attachment; filename=\"a _b_.html\"; filename*=UTF-8''a%20%22b%22.html"
        );
        assert_eq!(
            disposition("사진.jpg", "image/jpeg"),
            "inline; filename=\"__.jpg\"; filename*=UTF-8''%EC%82%AC%EC%A7%84.jpg"
        );
        // No header injection through the name.
        assert!(!disposition("x\r\nSet-Cookie: a=b", "text/plain").contains('\r'));
    }
}
