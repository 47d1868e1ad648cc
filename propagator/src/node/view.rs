//! Selection and projection: what a replicate holds of a master image, and
//! the replicate change one log record makes. Pure functions.

use crate::log_record::LogRecord;
use crate::predicate::{project, Predicate};
use crate::record::{decode_record, encode_record, RecordError};
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
pub fn view(rep: &Replicate, image: Option<&[u8]>) -> Result<Option<Vec<u8>>, RecordError> {
    let Some(bytes) = image else { return Ok(None) };
    if !rep.is_partial() {
        return Ok(Some(bytes.to_vec()));
    }
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
