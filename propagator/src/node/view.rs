//! Selection and projection: what a replicate holds of a master image, and
//! the replicate change one log record makes. Pure functions.

use crate::log_record::LogRecord;
use crate::predicate::{project, Predicate};
use crate::record::{
    canonical_entries, decode_record, decode_value, encode_entries, encode_record, field_values,
    RecordError,
};
use crate::topology::Replicate;
use crate::wire::ReplChange;
use serde_bytes::ByteBuf;

/// The replicate's change for one log record (None: nothing changes there).
pub fn transform(rep: &Replicate, rec: &LogRecord) -> Result<Option<ReplChange>, RecordError> {
    if !rep.is_partial() {
        return Ok(Some(ReplChange {
            isn: rec.isn,
            before: rec.before.clone().map(ByteBuf::from),
            after: rec.after.clone().map(ByteBuf::from),
        }));
    }
    let before = view(rep, rec.before.as_deref())?;
    let after = view(rep, rec.after.as_deref())?;
    if before == after {
        return Ok(None);
    }
    Ok(Some(ReplChange {
        isn: rec.isn,
        before: before.map(ByteBuf::from),
        after: after.map(ByteBuf::from),
    }))
}

/// What a replicate holds of one master image (None: not selected).
///
/// A canonical image (every image the engine stores is) is cut at the byte
/// level: only the fields the predicate reads are decoded, and the
/// projection is the kept fields' bytes under a new map header — the same
/// bytes a decode, project and encode would give, without allocating the
/// record.
pub fn view(rep: &Replicate, image: Option<&[u8]>) -> Result<Option<Vec<u8>>, RecordError> {
    let Some(bytes) = image else { return Ok(None) };
    if !rep.is_partial() {
        return Ok(Some(bytes.to_vec()));
    }
    let mut selected = false;
    if let Some(p) = rep.predicate.as_ref() {
        // Most records a partial replicate's scan looks at are not
        // selected: the fields the predicate reads are found in one pass
        // over the map, and the record is read whole only if selected.
        let mut found = Vec::with_capacity(p.reads().len());
        if field_values(bytes, p.reads(), &mut found).is_some() {
            let mut read = Vec::with_capacity(found.len());
            for (name, v) in p.reads().iter().zip(&found) {
                if let Some(v) = v {
                    read.push((name.as_str(), decode_value(v)?));
                }
            }
            if !p.selects_values(&read) {
                return Ok(None);
            }
            selected = true;
        }
    }
    let Some(entries) = canonical_entries(bytes) else {
        return view_decoded(rep, bytes);
    };
    if let Some(p) = rep.predicate.as_ref().filter(|_| !selected) {
        let mut read = Vec::with_capacity(p.reads().len());
        for name in p.reads() {
            if let Some(e) = entries.iter().find(|e| e.name == name.as_str()) {
                read.push((name.as_str(), decode_value(e.value)?));
            }
        }
        if !p.selects_values(&read) {
            return Ok(None);
        }
    }
    Ok(Some(match rep.def.fields.as_deref() {
        Some(f) => {
            let kept: Vec<_> = entries
                .into_iter()
                .filter(|e| f.iter().any(|k| k == e.name))
                .collect();
            encode_entries(&kept)
        }
        None => bytes.to_vec(),
    }))
}

/// [`view`] of an image that is not canonical: decoded, selected,
/// projected and encoded.
fn view_decoded(rep: &Replicate, bytes: &[u8]) -> Result<Option<Vec<u8>>, RecordError> {
    let r = decode_record(bytes)?;
    let pred: Option<&Predicate> = rep.predicate.as_ref();
    if pred.is_some_and(|p| !p.selects(&r)) {
        return Ok(None);
    }
    let r = match rep.def.fields.as_deref() {
        Some(f) => project(&r, f),
        None => r,
    };
    encode_record(&r).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Record, Value};
    use crate::topology::ReplicateDef;

    fn rep(fields: Option<&[&str]>, predicate: Option<&str>) -> Replicate {
        let known: Vec<String> = ["id", "grp", "name", "qty", "note"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Replicate {
            def: ReplicateDef {
                name: "p".into(),
                master_database: 1,
                master: 10,
                database: 2,
                file: 20,
                confirmation: 21,
                fields: fields.map(|f| f.iter().map(|s| s.to_string()).collect()),
                predicate: predicate.map(str::to_string),
            },
            address: "127.0.0.1:1".parse().expect("addr"),
            predicate: predicate.map(|p| Predicate::compile(p, &known).expect("compiles")),
        }
    }

    /// The byte-level view gives exactly what decoding, selecting,
    /// projecting and encoding gives, for records the predicate selects,
    /// refuses, or cannot evaluate (a field missing or of another type).
    #[test]
    fn the_byte_level_view_equals_the_decoded_one() {
        let reps = [
            rep(Some(&["id", "grp", "qty"]), Some("grp % 4 == 0")),
            rep(Some(&["note", "id", "absent"]), None),
            rep(None, Some("name.startsWith('a') && qty > 2")),
            rep(Some(&[]), Some("qty < 5")),
        ];
        let mut images = Vec::new();
        for g in 0..24i64 {
            let mut r = Record::new();
            r.insert("id".into(), Value::Int(g));
            if g % 5 != 0 {
                r.insert("grp".into(), Value::Int(g % 8));
            }
            if g % 7 == 3 {
                r.insert("grp".into(), Value::Text("x".into()));
            }
            r.insert(
                "name".into(),
                Value::Text(if g % 2 == 0 { "abc" } else { "xyz" }.into()),
            );
            r.insert("qty".into(), Value::Int(g % 9 - 2));
            r.insert(
                "note".into(),
                Value::Bytes(vec![g as u8; (g * 13) as usize]),
            );
            images.push(encode_record(&r).expect("encodes"));
        }
        let mut selected = 0;
        for rp in &reps {
            for img in &images {
                let fast = view(rp, Some(img)).expect("view");
                let slow = view_decoded(rp, img).expect("decoded view");
                assert_eq!(fast, slow, "{:?}", decode_record(img));
                selected += usize::from(fast.is_some());
            }
        }
        assert!(selected > 10 && selected < 4 * images.len(), "{selected}");
    }
}
