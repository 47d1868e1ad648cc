//! Whether a replicate's confirmation shows another history than its
//! master's: the one rule the master applies at every link open and the
//! recovery probes apply from outside.

use crate::ids::Seq;
use crate::wire::Divergence;

impl Divergence {
    /// Judges a replicate confirming `(seq, incarnation)` = `confirmed`
    /// against a master at `(level, incarnation)` = `master`. It has
    /// diverged when it confirms a later incarnation than the master's, a
    /// seq past the master's level, or a seq the master's log holds from
    /// another incarnation (base records of a log refresh excepted: they
    /// carry the refresh's incarnation). `record_at(seq)` is the master's
    /// log record there, as `(incarnation, is_base)`; it is read only as
    /// the rules need it, and for where the histories part: the first seq
    /// the log holds from a later incarnation than the replicate's
    /// (incarnations only rise along the log), else past the master's level.
    pub fn judge<E>(
        confirmed: (Seq, u32),
        master: (Seq, u32),
        mut record_at: impl FnMut(Seq) -> Result<Option<(u32, bool)>, E>,
    ) -> Result<Option<Divergence>, E> {
        let ((at, inc), (last, master_inc)) = (confirmed, master);
        let found = |lost_from: Seq, why: String| Divergence {
            confirmed_seq: at,
            confirmed_incarnation: inc,
            master_seq: last,
            master_incarnation: master_inc,
            lost_from,
            why,
            time_us: chrono::Utc::now().timestamp_micros(),
        };
        if inc > master_inc {
            return Ok(Some(found(
                parting(&mut record_at, inc, last.min(at))?,
                format!("the replicate confirms incarnation {inc}, later than its master's {master_inc}: the master was set back to an older copy"),
            )));
        }
        if at > last {
            return Ok(Some(found(
                parting(&mut record_at, inc, last)?,
                format!("seqs {} to {at} are not in the master's history (its log ends at seq {last}): the master was set back behind the replicate", last.0 + 1),
            )));
        }
        if at.0 == 0 {
            return Ok(None);
        }
        match record_at(at)? {
            Some((rinc, base)) if !base && rinc != inc => Ok(Some(found(
                parting(&mut record_at, inc, at)?.min(at),
                format!(
                    "the master's seq {at} was written in incarnation {rinc}, the replicate applied the one of incarnation {inc}: the master was set back and gave seq {at} out again"
                ),
            ))),
            _ => Ok(None),
        }
    }
}

/// The first seq up to `hi` whose log record is of a later incarnation
/// than `inc` (a binary search: incarnations only rise along the log),
/// else `hi + 1`.
fn parting<E>(
    record_at: &mut impl FnMut(Seq) -> Result<Option<(u32, bool)>, E>,
    inc: u32,
    hi: Seq,
) -> Result<Seq, E> {
    let (mut lo, mut hi) = (1u64, hi.0 + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if record_at(Seq(mid))?.is_some_and(|(i, _)| i > inc) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Seq(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of seqs 1..=n, seq s of incarnation `inc(s)`.
    fn log(n: u64, inc: impl Fn(u64) -> u32) -> impl FnMut(Seq) -> Result<Option<(u32, bool)>, ()> {
        move |s: Seq| Ok((1..=n).contains(&s.0).then(|| (inc(s.0), false)))
    }

    #[test]
    fn ahead_rewritten_and_equal_histories() {
        // The master set back to 600 and given 601..=620 out again in
        // incarnation 2; the replicate applied 650 of incarnation 1.
        let inc = |s: u64| if s <= 600 { 1 } else { 2 };
        let d = Divergence::judge((Seq(650), 1), (Seq(620), 2), log(620, inc))
            .expect("judged")
            .expect("ahead");
        assert_eq!(d.lost_from, Seq(601));
        // At 610 of incarnation 1: rewritten, lost from 601.
        let d = Divergence::judge((Seq(610), 1), (Seq(620), 2), log(620, inc))
            .expect("judged")
            .expect("rewritten");
        assert_eq!(d.lost_from, Seq(601));
        // At 600 of incarnation 1: the same history.
        assert!(
            Divergence::judge((Seq(600), 1), (Seq(620), 2), log(620, inc))
                .expect("judged")
                .is_none()
        );
        // A later incarnation than the master's.
        assert!(Divergence::judge((Seq(5), 3), (Seq(620), 2), log(620, inc))
            .expect("judged")
            .is_some());
        // A log refresh's base record carries the refresh's incarnation.
        let base = |s: Seq| Ok::<_, ()>((s.0 == 600).then_some((2, true)));
        assert!(Divergence::judge((Seq(600), 1), (Seq(600), 2), base)
            .expect("judged")
            .is_none());
    }
}
