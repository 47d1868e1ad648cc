//! Records: `isn → fields`, each field a typed [`Value`].
//!
//! On disk and on the wire a record is the MessagePack map of its fields in
//! field-name order (a `BTreeMap`), so the same record always encodes to the
//! same bytes — the digests depend on that. In JSON (the scriptable
//! interfaces), values map to JSON scalars; bytes are `{"$bytes":"<hex>"}`.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// The largest encoded record the engine accepts.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// The longest field name the engine accepts.
pub const MAX_FIELD_NAME: usize = 128;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A record's fields, in name order.
pub type Record = BTreeMap<String, Value>;

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
        }
    }

    /// Converts a JSON value; `field` names the field in the error.
    pub fn from_json(field: &str, v: &serde_json::Value) -> Result<Value, RecordError> {
        Ok(match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if n.is_u64() {
                    return Err(RecordError::BadValue {
                        field: field.to_string(),
                        reason: format!("integer {n} does not fit in 64 signed bits"),
                    });
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::Text(s.clone()),
            serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("$bytes") => {
                let hex = o.get("$bytes").and_then(|h| h.as_str()).ok_or_else(|| {
                    RecordError::BadValue {
                        field: field.to_string(),
                        reason: "\"$bytes\" must be a hex string".into(),
                    }
                })?;
                Value::Bytes(decode_hex(hex).ok_or_else(|| RecordError::BadValue {
                    field: field.to_string(),
                    reason: format!("\"$bytes\" is not valid hex: {hex:?}"),
                })?)
            }
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                return Err(RecordError::BadValue {
                    field: field.to_string(),
                    reason: "nested objects and arrays are not field values (use {\"$bytes\":\"hex\"} for bytes)".into(),
                })
            }
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Bytes(b) => {
                let mut o = serde_json::Map::new();
                o.insert("$bytes".into(), serde_json::Value::String(encode_hex(b)));
                serde_json::Value::Object(o)
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("field {field:?}: {reason}")]
    BadValue { field: String, reason: String },
    #[error("field name {0:?} is empty or longer than 128 bytes")]
    BadFieldName(String),
    #[error("record is {size} bytes encoded; the limit is {MAX_RECORD_BYTES}")]
    TooLarge { size: usize },
    #[error("record bytes do not decode: {0}")]
    Decode(String),
}

/// Parses a JSON object into a record.
pub fn record_from_json(v: &serde_json::Value) -> Result<Record, RecordError> {
    let obj = v.as_object().ok_or_else(|| RecordError::BadValue {
        field: String::new(),
        reason: "fields must be a JSON object".into(),
    })?;
    let mut rec = Record::new();
    for (k, v) in obj {
        check_field_name(k)?;
        rec.insert(k.clone(), Value::from_json(k, v)?);
    }
    Ok(rec)
}

pub fn record_to_json(rec: &Record) -> serde_json::Value {
    serde_json::Value::Object(rec.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

pub fn check_field_name(name: &str) -> Result<(), RecordError> {
    if name.is_empty() || name.len() > MAX_FIELD_NAME {
        return Err(RecordError::BadFieldName(name.to_string()));
    }
    Ok(())
}

/// Encodes a record to its canonical bytes, refusing oversized records.
pub fn encode_record(rec: &Record) -> Result<Vec<u8>, RecordError> {
    let bytes = rmp_serde::to_vec(rec).expect("a map of strings to scalars always encodes");
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge { size: bytes.len() });
    }
    Ok(bytes)
}

pub fn decode_record(bytes: &[u8]) -> Result<Record, RecordError> {
    rmp_serde::from_slice(bytes).map_err(|e| RecordError::Decode(e.to_string()))
}

/// The field names of `bytes` if they are already exactly the canonical
/// encoding of a valid record (what [`encode_record`] makes of what
/// [`decode_record`] reads: a map in strictly ascending field-name order,
/// every value in the smallest MessagePack form, names within
/// [`MAX_FIELD_NAME`], at most [`MAX_RECORD_BYTES`]); `None` for anything
/// else, which the caller decodes and re-encodes the slow way (and gets its
/// error from). A client that encodes with this crate sends canonical
/// bytes, and the engine keeps them as they came: no decode, no encode.
pub fn canonical_fields(bytes: &[u8]) -> Option<Vec<&str>> {
    canonical_entries(bytes).map(|es| es.into_iter().map(|e| e.name).collect())
}

/// A canonical record's fields as byte ranges: each field's name, its
/// whole encoded entry (name and value) and its encoded value, in field
/// order. `None` for bytes that are not canonical (see
/// [`canonical_fields`]).
pub fn canonical_entries(bytes: &[u8]) -> Option<Vec<Entry<'_>>> {
    if bytes.len() > MAX_RECORD_BYTES {
        return None;
    }
    let mut r = Reader { b: bytes, at: 0 };
    let n = match r.u8()? {
        m @ 0x80..=0x8f => usize::from(m & 0x0f),
        0xde => usize::from(r.be::<2>().map(u16::from_be_bytes)?).filter_min(16)?,
        0xdf => (u32::from_be_bytes(r.be::<4>()?) as usize).filter_min(1 << 16)?,
        _ => return None,
    };
    let mut out: Vec<Entry<'_>> = Vec::with_capacity(n);
    for _ in 0..n {
        let start = r.at;
        let name = std::str::from_utf8(r.str()?).ok()?;
        if name.is_empty() || name.len() > MAX_FIELD_NAME {
            return None;
        }
        if out.last().is_some_and(|prev| prev.name >= name) {
            return None;
        }
        let value_at = r.at;
        r.value()?;
        out.push(Entry {
            name,
            entry: bytes.get(start..r.at)?,
            value: bytes.get(value_at..r.at)?,
        });
    }
    (r.at == bytes.len()).then_some(out)
}

/// The encoded values of the fields `names` in a record's map, in one pass
/// over it that builds nothing (`out[k]`: `names[k]`'s value, `None` if the
/// record has no such field): what a predicate reads, for every record a
/// partial replicate's scan looks at. `None` for bytes it does not take —
/// not a map, cut short, or one of `names` twice; the caller then reads
/// the record the full way ([`canonical_entries`]).
pub fn field_values<'a>(
    bytes: &'a [u8],
    names: &[String],
    out: &mut Vec<Option<&'a [u8]>>,
) -> Option<()> {
    out.clear();
    out.resize(names.len(), None);
    let mut r = Reader { b: bytes, at: 0 };
    let n = match r.u8()? {
        m @ 0x80..=0x8f => usize::from(m & 0x0f),
        0xde => usize::from(r.be::<2>().map(u16::from_be_bytes)?),
        0xdf => u32::from_be_bytes(r.be::<4>()?) as usize,
        _ => return None,
    };
    let mut found = 0;
    for _ in 0..n {
        let name = r.str()?;
        let value_at = r.at;
        r.value()?;
        if let Some(k) = names.iter().position(|x| x.as_bytes() == name) {
            if out[k].is_some() {
                return None;
            }
            out[k] = Some(bytes.get(value_at..r.at)?);
            found += 1;
            if found == names.len() {
                break;
            }
        }
    }
    Some(())
}

/// One field of a canonical record, as byte ranges of it.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub name: &'a str,
    /// The encoded name and value.
    pub entry: &'a [u8],
    /// The encoded value.
    pub value: &'a [u8],
}

/// Decodes one encoded field value.
pub fn decode_value(bytes: &[u8]) -> Result<Value, RecordError> {
    // Integers, the usual predicate operand, read directly.
    let int = match bytes {
        [b @ 0x00..=0x7f] => Some(i64::from(*b)),
        [b @ 0xe0..=0xff] => Some(i64::from(*b as i8)),
        [0xcc, b] => Some(i64::from(*b)),
        [0xcd, b @ ..] if b.len() == 2 => Some(i64::from(u16::from_be_bytes([b[0], b[1]]))),
        [0xce, b @ ..] if b.len() == 4 => {
            Some(i64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        }
        [0xd0, b] => Some(i64::from(*b as i8)),
        [0xd1, b @ ..] if b.len() == 2 => Some(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        [0xd2, b @ ..] if b.len() == 4 => {
            Some(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        }
        _ => None,
    };
    match int {
        Some(i) => Ok(Value::Int(i)),
        None => rmp_serde::from_slice(bytes).map_err(|e| RecordError::Decode(e.to_string())),
    }
}

/// The canonical record of `entries` (in field order, as
/// [`canonical_entries`] gives them): their bytes under a map header.
pub fn encode_entries(entries: &[Entry<'_>]) -> Vec<u8> {
    let n = entries.len();
    let body: usize = entries.iter().map(|e| e.entry.len()).sum();
    let mut out = Vec::with_capacity(body + 5);
    if n < 16 {
        out.push(0x80 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0xde);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    for e in entries {
        out.extend_from_slice(e.entry);
    }
    out
}

/// [`apply_patch`] on canonical entries: the record's fields merged with
/// the patch's (a patch field replaces the record's, a nil removes it),
/// encoded canonically: the bytes `encode_record` gives of the patched
/// record, without decoding either. Refuses a result over
/// [`MAX_RECORD_BYTES`].
pub fn patch_entries(record: &[Entry<'_>], patch: &[Entry<'_>]) -> Result<Vec<u8>, RecordError> {
    const NIL: &[u8] = &[0xc0];
    let mut out: Vec<Entry<'_>> = Vec::with_capacity(record.len() + patch.len());
    let (mut i, mut j) = (0, 0);
    while i < record.len() || j < patch.len() {
        let take_patch = match (record.get(i), patch.get(j)) {
            (Some(r), Some(p)) => match r.name.cmp(p.name) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => {
                    i += 1;
                    true
                }
                std::cmp::Ordering::Greater => true,
            },
            (Some(_), None) => false,
            (None, _) => true,
        };
        if take_patch {
            if let Some(p) = patch.get(j) {
                if p.value != NIL {
                    out.push(*p);
                }
            }
            j += 1;
        } else {
            if let Some(r) = record.get(i) {
                out.push(*r);
            }
            i += 1;
        }
    }
    let bytes = encode_entries(&out);
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge { size: bytes.len() });
    }
    Ok(bytes)
}

trait FilterMin: Sized {
    fn filter_min(self, min: usize) -> Option<Self>;
}

impl FilterMin for usize {
    /// The length, if a smaller marker could not have held it.
    fn filter_min(self, min: usize) -> Option<usize> {
        (self >= min).then_some(self)
    }
}

/// A cursor over MessagePack bytes that accepts only the canonical forms.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }

    fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| <[u8; N]>::try_from(s).ok())
    }

    /// A payload of `len` bytes, if a smaller length marker (one for
    /// lengths below `min`) could not have held it.
    fn sized(&mut self, len: usize, min: usize) -> Option<&'a [u8]> {
        self.take(len.filter_min(min)?)
    }

    fn str(&mut self) -> Option<&'a [u8]> {
        match self.u8()? {
            m @ 0xa0..=0xbf => self.take(usize::from(m & 0x1f)),
            0xd9 => {
                let l = usize::from(self.u8()?);
                self.sized(l, 32)
            }
            0xda => {
                let l = usize::from(u16::from_be_bytes(self.be::<2>()?));
                self.sized(l, 1 << 8)
            }
            0xdb => {
                let l = u32::from_be_bytes(self.be::<4>()?) as usize;
                self.sized(l, 1 << 16)
            }
            _ => None,
        }
    }

    /// One field value in its canonical form.
    fn value(&mut self) -> Option<()> {
        let at = self.at;
        match self.b.get(at)? {
            0xc0 | 0xc2 | 0xc3 | 0x00..=0x7f | 0xe0..=0xff => {
                self.at += 1;
                Some(())
            }
            // Unsigned forms: only for values the smaller forms cannot hold.
            0xcc => {
                self.at += 1;
                (self.u8()? >= 0x80).then_some(())
            }
            0xcd => {
                self.at += 1;
                (u16::from_be_bytes(self.be::<2>()?) > u16::from(u8::MAX)).then_some(())
            }
            0xce => {
                self.at += 1;
                (u32::from_be_bytes(self.be::<4>()?) > u32::from(u16::MAX)).then_some(())
            }
            0xcf => {
                self.at += 1;
                let v = u64::from_be_bytes(self.be::<8>()?);
                // Above i64::MAX does not decode; at or below u32::MAX has
                // a smaller form.
                (v > u64::from(u32::MAX) && v <= i64::MAX as u64).then_some(())
            }
            // Signed forms: negative only, and only below the smaller form.
            0xd0 => {
                self.at += 1;
                ((self.u8()? as i8) < -32).then_some(())
            }
            0xd1 => {
                self.at += 1;
                (i16::from_be_bytes(self.be::<2>()?) < i16::from(i8::MIN)).then_some(())
            }
            0xd2 => {
                self.at += 1;
                (i32::from_be_bytes(self.be::<4>()?) < i32::from(i16::MIN)).then_some(())
            }
            0xd3 => {
                self.at += 1;
                (i64::from_be_bytes(self.be::<8>()?) < i64::from(i32::MIN)).then_some(())
            }
            0xcb => {
                self.at += 1;
                self.be::<8>().map(|_| ())
            }
            0xa0..=0xbf | 0xd9 | 0xda | 0xdb => std::str::from_utf8(self.str()?).ok().map(|_| ()),
            0xc4 => {
                self.at += 1;
                let l = usize::from(self.u8()?);
                self.take(l).map(|_| ())
            }
            0xc5 => {
                self.at += 1;
                let l = usize::from(u16::from_be_bytes(self.be::<2>()?));
                self.sized(l, 1 << 8).map(|_| ())
            }
            0xc6 => {
                self.at += 1;
                let l = u32::from_be_bytes(self.be::<4>()?) as usize;
                self.sized(l, 1 << 16).map(|_| ())
            }
            _ => None,
        }
    }
}

/// Applies an update: named fields replaced, `Null` removes the field.
pub fn apply_patch(rec: &mut Record, patch: &Record) {
    for (k, v) in patch {
        if *v == Value::Null {
            rec.remove(k);
        } else {
            rec.insert(k.clone(), v.clone());
        }
    }
}

pub fn encode_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_bytes(b),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar field value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
                Ok(Value::Int(i))
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
                i64::try_from(u)
                    .map(Value::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
                Ok(Value::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::Text(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::Text(s))
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<Value, E> {
                Ok(Value::Bytes(b.to_vec()))
            }
            fn visit_byte_buf<E>(self, b: Vec<u8>) -> Result<Value, E> {
                Ok(Value::Bytes(b))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_encoding_round_trips_every_value_type() {
        let mut r = Record::new();
        r.insert("n".into(), Value::Null);
        r.insert("b".into(), Value::Bool(true));
        r.insert("i".into(), Value::Int(-7));
        r.insert("f".into(), Value::Float(2.5));
        r.insert("t".into(), Value::Text("héllo".into()));
        r.insert("x".into(), Value::Bytes(vec![0, 255, 3]));
        let bytes = encode_record(&r).expect("encodes");
        assert_eq!(decode_record(&bytes).expect("decodes"), r);
        let json = record_to_json(&r);
        assert_eq!(record_from_json(&json).expect("json round trip"), r);
    }

    #[test]
    fn json_rejects_nested_and_oversized_values_naming_the_field() {
        let v: serde_json::Value = serde_json::json!({"a": [1, 2]});
        let e = record_from_json(&v).expect_err("must fail");
        assert!(e.to_string().contains("\"a\""), "{e}");
        let v: serde_json::Value = serde_json::json!({"big": u64::MAX});
        assert!(record_from_json(&v)
            .expect_err("must fail")
            .to_string()
            .contains("big"));
        let v: serde_json::Value = serde_json::json!({"": 1});
        assert!(matches!(
            record_from_json(&v),
            Err(RecordError::BadFieldName(_))
        ));
    }

    /// The canonical check accepts exactly what the encoder writes: every
    /// value type at every size boundary, and nothing a re-encode would
    /// change (so bytes it accepts are kept as they came).
    #[test]
    fn canonical_fields_accepts_exactly_the_encoders_bytes() {
        let ints = [
            0,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MAX,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            i32::MIN as i64,
            i32::MIN as i64 - 1,
            i64::MIN,
        ];
        let lens = [0usize, 1, 31, 32, 255, 256, 65535, 65536];
        let mut cases: Vec<Record> = Vec::new();
        for i in ints {
            cases.push([("i".to_string(), Value::Int(i))].into_iter().collect());
        }
        for l in lens {
            cases.push(
                [("t".to_string(), Value::Text("x".repeat(l)))]
                    .into_iter()
                    .collect(),
            );
            cases.push(
                [("b".to_string(), Value::Bytes(vec![7; l]))]
                    .into_iter()
                    .collect(),
            );
        }
        let mut wide = Record::new();
        for k in 0..20 {
            wide.insert(format!("f{k:02}"), Value::Float(k as f64 / 3.0));
        }
        wide.insert("n".into(), Value::Null);
        wide.insert("y".into(), Value::Bool(false));
        wide.insert("z".repeat(MAX_FIELD_NAME), Value::Bool(true));
        cases.push(wide);
        cases.push(Record::new());
        for r in &cases {
            let bytes = encode_record(r).expect("encodes");
            let names = canonical_fields(&bytes).unwrap_or_else(|| panic!("rejected {r:?}"));
            assert_eq!(names, r.keys().map(String::as_str).collect::<Vec<_>>());
        }
        // Every single-byte change and every truncation of a record: the
        // check accepts it only if a decode and re-encode gives it back.
        let mut r = Record::new();
        r.insert("a".into(), Value::Int(300));
        r.insert("b".into(), Value::Text("hé".into()));
        r.insert("c".into(), Value::Bytes(vec![1, 2]));
        r.insert("d".into(), Value::Float(-0.5));
        r.insert("e".into(), Value::Int(-40));
        let good = encode_record(&r).expect("encodes");
        let mut variants = Vec::new();
        for i in 0..good.len() {
            for x in [0u8, 1, 0x7f, 0x80, 0xa1, 0xc0, 0xcc, 0xd0, 0xd9, 0xff] {
                let mut b = good.clone();
                b[i] = x;
                variants.push(b);
            }
            variants.push(good[..i].to_vec());
        }
        let mut accepted = 0;
        for b in variants {
            if canonical_fields(&b).is_some() {
                accepted += 1;
                let back = decode_record(&b).expect("accepted bytes decode");
                assert_eq!(encode_record(&back).expect("encodes"), b);
            }
        }
        assert!(accepted > 0, "some single-byte changes are still canonical");
        // Out of order, duplicated, or in a wider form than needed: refused.
        let out_of_order = [0x82, 0xa1, b'b', 0x01, 0xa1, b'a', 0x02];
        assert!(canonical_fields(&out_of_order).is_none());
        let dup = [0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02];
        assert!(canonical_fields(&dup).is_none());
        let wide_int = [0x81, 0xa1, b'a', 0xcc, 0x05];
        assert!(canonical_fields(&wide_int).is_none());
        assert_eq!(
            encode_record(&decode_record(&wide_int).expect("decodes")).expect("encodes"),
            vec![0x81, 0xa1, b'a', 0x05]
        );
    }

    /// Entries cut from a canonical record and put together again give the
    /// canonical encoding of the record with just those fields.
    #[test]
    fn canonical_entries_reassemble_any_subset_canonically() {
        let mut r = Record::new();
        for k in 0..40 {
            let v = match k % 5 {
                0 => Value::Int(k * 1000 - 7000),
                1 => Value::Text("t".repeat(k as usize)),
                2 => Value::Float(k as f64 / 7.0),
                3 => Value::Bytes(vec![k as u8; 300]),
                _ => Value::Bool(k % 2 == 0),
            };
            r.insert(format!("f{k:02}"), v);
        }
        let bytes = encode_record(&r).expect("encodes");
        let entries = canonical_entries(&bytes).expect("canonical");
        assert_eq!(entries.len(), 40);
        for keep in [0usize, 1, 3, 15, 16, 17, 40] {
            let subset: Vec<Entry<'_>> = entries
                .iter()
                .step_by(40 / keep.max(1))
                .take(keep)
                .copied()
                .collect();
            let want: Record = subset
                .iter()
                .map(|e| (e.name.to_string(), r[e.name].clone()))
                .collect();
            assert_eq!(
                encode_entries(&subset),
                encode_record(&want).expect("encodes"),
                "{keep}"
            );
            for e in &subset {
                assert_eq!(decode_value(e.value).expect("value"), r[e.name]);
            }
        }
    }

    /// Patching entries gives the bytes patching the decoded record and
    /// encoding it gives: fields replaced, added, removed by a nil, and a
    /// nil for a field the record lacks.
    #[test]
    fn patching_entries_equals_patching_the_record() {
        let rec_of = |pairs: &[(&str, Value)]| -> Record {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        let records = [
            rec_of(&[]),
            rec_of(&[("a", Value::Int(1))]),
            rec_of(&[("b", Value::Int(2)), ("d", Value::Text("x".into()))]),
            rec_of(&[
                ("a", Value::Int(1)),
                ("c", Value::Float(0.5)),
                ("e", Value::Null),
            ]),
        ];
        let patches = [
            rec_of(&[]),
            rec_of(&[("a", Value::Null)]),
            rec_of(&[("a", Value::Int(9)), ("z", Value::Bool(true))]),
            rec_of(&[
                ("b", Value::Null),
                ("c", Value::Text("new".into())),
                ("0", Value::Int(-1)),
            ]),
        ];
        for r in &records {
            for p in &patches {
                let (rb, pb) = (encode_record(r).expect("r"), encode_record(p).expect("p"));
                let got = patch_entries(
                    &canonical_entries(&rb).expect("canonical r"),
                    &canonical_entries(&pb).expect("canonical p"),
                )
                .expect("patched");
                let mut want = r.clone();
                apply_patch(&mut want, p);
                assert_eq!(got, encode_record(&want).expect("w"), "{r:?} + {p:?}");
            }
        }
    }

    #[test]
    fn patch_replaces_named_fields_and_null_removes() {
        let mut r = Record::new();
        r.insert("a".into(), Value::Int(1));
        r.insert("b".into(), Value::Int(2));
        let mut p = Record::new();
        p.insert("a".into(), Value::Int(10));
        p.insert("b".into(), Value::Null);
        p.insert("c".into(), Value::Text("new".into()));
        apply_patch(&mut r, &p);
        assert_eq!(r.get("a"), Some(&Value::Int(10)));
        assert_eq!(r.get("b"), None);
        assert_eq!(r.get("c"), Some(&Value::Text("new".into())));
    }
}
