//! Schema fingerprints exactly as the Avro specification defines them: the
//! CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form.
//!
//! This is written here rather than taken from apache-avro because that crate
//! (0.21) gets the canonical form wrong for annotated primitives: it strips
//! `logicalType` from `{"type":"long","logicalType":"timestamp-millis"}` but
//! keeps the object, giving `{"type":"long"}` where the specification (and
//! the Java, Python and fastavro implementations) give `"long"`. Every record
//! here has such a field, so every fingerprint it computed was one that no
//! other language could find. Those fingerprints are still read (see
//! `LEGACY` in the crate root) so logs written before the fix keep decoding.
//!
//! Both functions are pure and checked against the test vectors the Avro
//! project publishes with its specification (`schemas/tests/fingerprint.rs`)
//! and against fastavro for every schema in `avro/`.

use serde_json::{Map, Value};

/// The fingerprint of the empty byte string; also the polynomial's constant.
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// CRC-64-AVRO of `bytes`, as the specification's `fingerprint64`.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(EMPTY, |fp, &b| (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize])
}

/// The 8 bytes of a single-object header: the fingerprint, little-endian.
pub fn single_object_fingerprint(schema_json: &str) -> Result<[u8; 8], CanonicalFormError> {
    Ok(crc64_avro(parsing_canonical_form(schema_json)?.as_bytes()).to_le_bytes())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalFormError {
    #[error("schema is not JSON: {0}")]
    Json(String),
    #[error("not a schema: {0}")]
    Invalid(String),
}

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The Parsing Canonical Form of a schema given as JSON text, by the
/// specification's rules: PRIMITIVES, FULLNAMES, STRIP, ORDER, STRINGS,
/// INTEGERS, WHITESPACE.
pub fn parsing_canonical_form(schema_json: &str) -> Result<String, CanonicalFormError> {
    let value: Value = serde_json::from_str(schema_json).map_err(|e| CanonicalFormError::Json(e.to_string()))?;
    let mut out = String::with_capacity(schema_json.len() / 2);
    write_schema(&value, "", &mut out)?;
    Ok(out)
}

/// Writes one schema; `namespace` is the enclosing one (FULLNAMES).
fn write_schema(value: &Value, namespace: &str, out: &mut String) -> Result<(), CanonicalFormError> {
    match value {
        Value::String(name) => {
            if PRIMITIVES.contains(&name.as_str()) {
                write_string(name, out);
            } else {
                // A reference to a named type, by its full name.
                write_string(&full_name(name, None, namespace), out);
            }
            Ok(())
        }
        Value::Array(branches) => write_list(branches, out, |branch, out| write_schema(branch, namespace, out)),
        Value::Object(map) => write_complex(map, namespace, out),
        other => Err(CanonicalFormError::Invalid(format!("unexpected {other}"))),
    }
}

fn write_complex(map: &Map<String, Value>, namespace: &str, out: &mut String) -> Result<(), CanonicalFormError> {
    let kind = match map.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        // `{"type": <schema>}` is that schema.
        Some(inner @ (Value::Object(_) | Value::Array(_))) => return write_schema(inner, namespace, out),
        _ => return Err(CanonicalFormError::Invalid("object without a type".into())),
    };
    match kind {
        // PRIMITIVES: every other attribute (logicalType, precision, …) is stripped.
        _ if PRIMITIVES.contains(&kind) => {
            write_string(kind, out);
            Ok(())
        }
        "record" | "error" | "enum" | "fixed" => {
            let name = str_attr(map, "name")?;
            let own_ns = map.get("namespace").and_then(Value::as_str);
            let full = full_name(name, own_ns, namespace);
            // Names inside a named type are resolved in its namespace.
            let inner_ns = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_owned();
            out.push_str("{\"name\":");
            write_string(&full, out);
            out.push_str(",\"type\":");
            write_string(kind, out);
            match kind {
                "enum" => {
                    out.push_str(",\"symbols\":");
                    write_list(array_attr(map, "symbols")?, out, |symbol, out| {
                        let symbol = symbol
                            .as_str()
                            .ok_or_else(|| CanonicalFormError::Invalid("enum symbol not a string".into()))?;
                        write_string(symbol, out);
                        Ok(())
                    })?;
                }
                "fixed" => {
                    out.push_str(",\"size\":");
                    out.push_str(&integer_attr(map, "size")?.to_string());
                }
                _ => {
                    out.push_str(",\"fields\":");
                    write_list(array_attr(map, "fields")?, out, |field, out| {
                        let field = field
                            .as_object()
                            .ok_or_else(|| CanonicalFormError::Invalid("field not an object".into()))?;
                        out.push_str("{\"name\":");
                        write_string(str_attr(field, "name")?, out);
                        out.push_str(",\"type\":");
                        let ty = field
                            .get("type")
                            .ok_or_else(|| CanonicalFormError::Invalid("field without a type".into()))?;
                        write_schema(ty, &inner_ns, out)?;
                        out.push('}');
                        Ok(())
                    })?;
                }
            }
            out.push('}');
            Ok(())
        }
        "array" => {
            out.push_str("{\"type\":\"array\",\"items\":");
            let items = map
                .get("items")
                .ok_or_else(|| CanonicalFormError::Invalid("array without items".into()))?;
            write_schema(items, namespace, out)?;
            out.push('}');
            Ok(())
        }
        "map" => {
            out.push_str("{\"type\":\"map\",\"values\":");
            let values = map
                .get("values")
                .ok_or_else(|| CanonicalFormError::Invalid("map without values".into()))?;
            write_schema(values, namespace, out)?;
            out.push('}');
            Ok(())
        }
        // `{"type": "SomeNamedType"}` refers to a named type.
        name => {
            write_string(&full_name(name, None, namespace), out);
            Ok(())
        }
    }
}

/// FULLNAMES: a name with a dot is already full; otherwise it takes its own
/// `namespace` attribute, else the enclosing namespace.
fn full_name(name: &str, own_namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    match own_namespace.unwrap_or(enclosing) {
        "" => name.to_owned(),
        ns => format!("{ns}.{name}"),
    }
}

/// `[a,b,…]`, each item written by `each`.
fn write_list(
    items: &[Value],
    out: &mut String,
    mut each: impl FnMut(&Value, &mut String) -> Result<(), CanonicalFormError>,
) -> Result<(), CanonicalFormError> {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(item, out)?;
    }
    out.push(']');
    Ok(())
}

fn array_attr<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], CanonicalFormError> {
    map.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| CanonicalFormError::Invalid(format!("missing array attribute {key:?}")))
}

fn str_attr<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, CanonicalFormError> {
    map.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| CanonicalFormError::Invalid(format!("missing string attribute {key:?}")))
}

/// INTEGERS: `15`, `"15"` and `"015"` are all `15`.
fn integer_attr(map: &Map<String, Value>, key: &str) -> Result<u64, CanonicalFormError> {
    match map.get(key) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| CanonicalFormError::Invalid(format!("{key:?} is not a non-negative integer")))
}

/// STRINGS: characters as themselves (UTF-8), escaping only what JSON requires.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}
