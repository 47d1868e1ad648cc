//! Order-independent file digests.
//!
//! A file's digest is the wrapping sum, over its records, of the first 128
//! bits of `blake3(isn_be ‖ encoded_record)`. Adding a record adds its term,
//! removing subtracts it, so the digest is kept up to date on every change
//! without a rescan, and two files with the same content always agree
//! whatever order their records were written in.

use crate::ids::{Fnr, Isn};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Digest(pub u128);

impl Digest {
    pub fn term(isn: Isn, bytes: &[u8]) -> u128 {
        let mut h = blake3::Hasher::new();
        h.update(&isn.0.to_be_bytes());
        h.update(bytes);
        let out = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&out.as_bytes()[..16]);
        u128::from_le_bytes(first)
    }

    pub fn add(&mut self, isn: Isn, bytes: &[u8]) {
        self.0 = self.0.wrapping_add(Self::term(isn, bytes));
    }

    pub fn remove(&mut self, isn: Isn, bytes: &[u8]) {
        self.0 = self.0.wrapping_sub(Self::term(isn, bytes));
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for Digest {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Digest, Self::Err> {
        u128::from_str_radix(s, 16).map(Digest)
    }
}

// Encoded as two u64s: MessagePack has no 128-bit integer.
impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ((self.0 >> 64) as u64, self.0 as u64).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let (hi, lo) = <(u64, u64)>::deserialize(d)?;
        Ok(Digest(((hi as u128) << 64) | lo as u128))
    }
}

/// What a file holds, as of some LSN: enough to prove its content without a
/// rescan and to hand out the next isn (for a log file: the next seq).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub fnr: Fnr,
    pub count: u64,
    pub digest: Digest,
    pub next_isn: u64,
}

impl FileMeta {
    pub fn new(fnr: Fnr) -> FileMeta {
        FileMeta {
            fnr,
            count: 0,
            digest: Digest::default(),
            next_isn: 1,
        }
    }

    /// Accounts for one record changing from `before` to `after`.
    pub fn change(&mut self, isn: Isn, before: Option<&[u8]>, after: Option<&[u8]>) {
        if let Some(b) = before {
            // A before-image is a record the file holds: never below empty.
            debug_assert!(
                self.count > 0,
                "file {} removes isn {isn} from an empty count",
                self.fnr
            );
            self.digest.remove(isn, b);
            self.count -= 1;
        }
        if let Some(a) = after {
            self.digest.add(isn, a);
            self.count += 1;
        }
        self.next_isn = self.next_isn.max(isn.0.saturating_add(1));
    }

    /// Adds records whose count and summed digest terms are known (a chunk
    /// of new records, summed once by whoever read them).
    pub fn add_sum(&mut self, count: u64, digest: Digest) {
        self.count += count;
        self.digest.0 = self.digest.0.wrapping_add(digest.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_independent_and_removal_undoes_addition() {
        let mut a = FileMeta::new(Fnr(1));
        a.change(Isn(1), None, Some(b"x"));
        a.change(Isn(2), None, Some(b"y"));
        let mut b = FileMeta::new(Fnr(1));
        b.change(Isn(2), None, Some(b"y"));
        b.change(Isn(3), None, Some(b"z"));
        b.change(Isn(1), None, Some(b"x"));
        b.change(Isn(3), Some(b"z"), None);
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.count, b.count);
        let mut c = FileMeta::new(Fnr(1));
        c.change(Isn(1), None, Some(b"x"));
        c.change(Isn(2), None, Some(b"Y"));
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn digest_encodes_all_128_bits() {
        let d = Digest(u128::MAX - 12345);
        let bytes = rmp_serde::to_vec(&d).expect("encodes");
        assert_eq!(rmp_serde::from_slice::<Digest>(&bytes).expect("decodes"), d);
    }
}
