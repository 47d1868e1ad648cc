//! Byte layout of protection-log segments.
//!
//! A segment file `seg-<number:016>.plog` is a header followed by frames.
//!
//! Segment header (64 bytes, little-endian):
//! ```text
//!  0  8  magic  b"ETPPLOG\0"
//!  8  2  format version (1)
//! 10  2  reserved (0)
//! 12  4  dbid
//! 16  8  segment number
//! 24  8  first LSN: the LSN of the first commit this segment holds
//! 32  8  created, µs since the Unix epoch
//! 40 20  reserved (0)
//! 60  4  CRC32C of bytes 0..60
//! ```
//!
//! Frame (12-byte header + payload):
//! ```text
//!  0  4  magic  b"ETPF"
//!  4  4  payload length n (≤ MAX_PAYLOAD)
//!  8  4  CRC32C of (segment number LE ‖ frame offset LE ‖ n LE ‖ payload)
//! 12  n  payload: one MessagePack `PlogEntry`
//! ```
//! The CRC covers the segment number and the frame's own offset, so a valid
//! frame copied to another place (a misdirected write, a stale region) fails
//! its check. The first frame of every segment is a checkpoint.

use crate::ids::{DbId, Lsn};

pub const SEGMENT_MAGIC: &[u8; 8] = b"ETPPLOG\0";
pub const FRAME_MAGIC: &[u8; 4] = b"ETPF";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: u64 = 64;
pub const FRAME_HEADER_LEN: u64 = 12;
/// The largest frame payload: one transaction's entry.
pub const MAX_PAYLOAD: u32 = 256 << 20;

pub fn segment_name(no: u64) -> String {
    format!("seg-{no:016}.plog")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".plog")?
        .parse()
        .ok()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub dbid: DbId,
    pub segment: u64,
    pub first_lsn: Lsn,
    pub created_us: i64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.dbid.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_us.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header, saying what is wrong with a bad one.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < HEADER_LEN as usize {
            return Err(format!(
                "header is {} bytes, expected {HEADER_LEN}",
                b.len()
            ));
        }
        if &b[0..8] != SEGMENT_MAGIC {
            return Err("not a protection-log segment (bad magic)".into());
        }
        let crc = u32::from_le_bytes(b[60..64].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[0..60]) {
            return Err("header checksum mismatch".into());
        }
        let version = u16::from_le_bytes(b[8..10].try_into().expect("2 bytes"));
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this engine reads {FORMAT_VERSION}"
            ));
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Ok(SegmentHeader {
            dbid: DbId(u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"))),
            segment: u64_at(16),
            first_lsn: Lsn(u64_at(24)),
            created_us: u64_at(32) as i64,
        })
    }
}

pub fn frame_crc(segment: u64, offset: u64, payload: &[u8]) -> u32 {
    let mut pre = [0u8; 20];
    pre[0..8].copy_from_slice(&segment.to_le_bytes());
    pre[8..16].copy_from_slice(&offset.to_le_bytes());
    pre[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&pre), payload)
}

/// Appends one frame for `payload`, which will sit at `offset` in `segment`.
pub fn encode_frame(out: &mut Vec<u8>, segment: u64, offset: u64, payload: &[u8]) {
    out.extend_from_slice(FRAME_MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame_crc(segment, offset, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_any_flipped_byte_is_refused() {
        let h = SegmentHeader {
            dbid: DbId(7),
            segment: 3,
            first_lsn: Lsn(1000),
            created_us: 1_700_000_000_000_000,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).expect("decodes"), h);
        for i in 0..b.len() {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(
                SegmentHeader::decode(&d).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn frame_crc_depends_on_segment_and_offset() {
        let p = b"payload";
        assert_ne!(frame_crc(1, 64, p), frame_crc(2, 64, p));
        assert_ne!(frame_crc(1, 64, p), frame_crc(1, 76, p));
    }

    #[test]
    fn segment_names_parse_back() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("seg-x.plog"), None);
        assert_eq!(parse_segment_name("other"), None);
    }
}
