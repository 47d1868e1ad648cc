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
