//! Which role may ask what: one table, [`needs`], over every request kind.
//! A new request kind does not compile until it is given its roles here.
//!
//! | role | may ask |
//! |---|---|
//! | `read` | reads (`Info`, `Dump`, `FileStat`, `RangeDigest`, `Files`, lag samples), status (tasks, replicates, policy, cross-references, a replicate's errors, waiting for a confirmation), the topology's and the copy jobs' text, the log segments, a cleanup plan |
//! | `write` | what `read` may, and client sessions (transactions) |
//! | `admin` | everything except replication links |
//! | `replication` | what `read` may; replication links (only for a replicate whose master's database is the certificate's: checked when the link opens, against the topology); what a node's copy-job scheduler asks of the nodes it copies (`CopyTake`, written only into a set claimed in that node's own copy area); and a master's sync-down of a wiped replicate site (`AdminAdopt`, which only a node holding no topology takes) |
//!
//! `write` does not include `admin`, and `admin` no replication link: a
//! link is a node's conversation, which only a node's certificate holds.

use super::Role;
use crate::wire::{
    AdminRequest, CopyRequest, OperationRequest, ReadRequest, ReplicateAction, Request,
};

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reading: any role.
    Read,
    /// A session: `write` or `admin`.
    Write,
    /// Administration: `admin`.
    Admin,
    /// A replication link: `replication`.
    Link,
    /// What a copy-job scheduler asks: `admin` or a node (`replication`).
    Copy,
    /// A wiped site's topology, sent by its master's node: `admin` or a
    /// node (`replication`). Only a node holding no topology takes it.
    SyncDown,
}

impl Need {
    /// Whether `role` may ask what needs this.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Need::Read => true,
            Need::Write => matches!(role, Role::Write | Role::Admin),
            Need::Admin => role == Role::Admin,
            Need::Link => role == Role::Replication,
            Need::Copy | Need::SyncDown => matches!(role, Role::Admin | Role::Replication),
        }
    }

    /// The roles that may, for refusals.
    pub fn roles(self) -> &'static str {
        match self {
            Need::Read => "any role",
            Need::Write => "the write or admin role",
            Need::Admin => "the admin role",
            Need::Link => "a node's certificate (the replication role)",
            Need::Copy | Need::SyncDown => "the admin role or a node's certificate",
        }
    }
}

/// What `req` needs, and its kind's name for logs and refusals.
pub fn needs(req: &Request) -> (Need, &'static str) {
    use Need::*;
    match req {
        Request::Session(_) => (Write, "session"),
        Request::Read(r) => (
            Read,
            match r {
                ReadRequest::Info => "Info",
                ReadRequest::LagSamples { .. } => "LagSamples",
                ReadRequest::Dump { .. } => "Dump",
                ReadRequest::FileStat { .. } => "FileStat",
                ReadRequest::RangeDigest { .. } => "RangeDigest",
                ReadRequest::Files => "Files",
                ReadRequest::Reach { .. } => "Reach",
                ReadRequest::CopyAges => "CopyAges",
            },
        ),
        Request::Admin(a) => match a {
            AdminRequest::AdminExport => (Read, "AdminExport"),
            AdminRequest::AdminPrepare { .. } => (Admin, "AdminPrepare"),
            AdminRequest::AdminInstall { .. } => (Admin, "AdminInstall"),
            AdminRequest::AdminAdopt { .. } => (SyncDown, "AdminAdopt"),
        },
        Request::Operation(o) => match o {
            OperationRequest::TaskStatus => (Read, "TaskStatus"),
            OperationRequest::WaitConfirmed { .. } => (Read, "WaitConfirmed"),
            OperationRequest::TaskControl { .. } => (Admin, "TaskControl"),
            OperationRequest::Replicate { action, .. } => match action {
                ReplicateAction::Errors => (Read, "Replicate Errors"),
                // Verify stops the replicate's feeder while it compares.
                ReplicateAction::Verify { .. } => (Admin, "Replicate Verify"),
                ReplicateAction::Init { .. } => (Admin, "Replicate Init"),
                ReplicateAction::Shun { .. } => (Admin, "Replicate Shun"),
                ReplicateAction::Unshun => (Admin, "Replicate Unshun"),
                ReplicateAction::ResetError => (Admin, "Replicate ResetError"),
                ReplicateAction::Restoring { .. } => (Admin, "Replicate Restoring"),
                ReplicateAction::ConfirmSet { .. } => (Admin, "Replicate ConfirmSet"),
            },
            OperationRequest::ReplicateStatus => (Read, "ReplicateStatus"),
            OperationRequest::Policy { set: None } => (Read, "Policy"),
            OperationRequest::Policy { set: Some(_) } => (Admin, "Policy set"),
            OperationRequest::Xref { .. } => (Read, "Xref"),
            OperationRequest::LogCleanup { execute: false, .. } => (Read, "LogCleanup plan"),
            OperationRequest::LogCleanup { execute: true, .. } => (Admin, "LogCleanup execute"),
        },
        Request::Copy(c) => match c {
            CopyRequest::CopyJobs { set: None } => (Read, "CopyJobs"),
            CopyRequest::CopyJobs { set: Some(_) } => (Admin, "CopyJobs set"),
            CopyRequest::PlogSegments => (Read, "PlogSegments"),
            // Only `etp copy archive` (an administrator) removes segments.
            CopyRequest::PlogRemove { .. } => (Admin, "PlogRemove"),
            CopyRequest::CopyTake { .. } => (Copy, "CopyTake"),
            CopyRequest::PlogCheck { .. } => (Read, "PlogCheck"),
        },
        Request::Link(_) => (Link, "replication link"),
        Request::Recovery(_) => (Admin, "recovery step"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Fnr, Isn, Seq};
    use crate::wire::{LinkRequest, RecoveryOp, SessionRequest};

    #[test]
    fn each_role_gets_what_its_table_row_says() {
        let dump = Request::Read(ReadRequest::Dump {
            file: Fnr(1),
            from: Isn(1),
            limit: 1,
            stale: false,
        });
        let session = Request::Session(SessionRequest::Batch(vec![]));
        let apply = Request::Admin(AdminRequest::AdminInstall {
            topology: String::new(),
            expect: None,
        });
        let link = Request::Link(LinkRequest::LinkSync { seq: Seq(1) });
        let quiesce = Request::Recovery(RecoveryOp::Quiesce { on: true });
        let cleanup = Request::Operation(OperationRequest::LogCleanup {
            master: None,
            until: None,
            execute: true,
        });
        let remove = Request::Copy(CopyRequest::PlogRemove {
            through: crate::Lsn(1),
        });
        let take = Request::Copy(CopyRequest::CopyTake {
            files: vec![],
            set: String::new(),
        });
        let verify = Request::Operation(OperationRequest::Replicate {
            name: String::new(),
            action: ReplicateAction::Verify { max_isns: 1 },
        });
        let table: [(&Request, [bool; 4]); 9] = [
            //          read   write  repl   admin
            (&dump, [true, true, true, true]),
            (&session, [false, true, false, true]),
            (&apply, [false, false, false, true]),
            (&link, [false, false, true, false]),
            (&quiesce, [false, false, false, true]),
            (&cleanup, [false, false, false, true]),
            (&remove, [false, false, false, true]),
            (&take, [false, false, true, true]),
            (&verify, [false, false, false, true]),
        ];
        for (req, want) in table {
            let (need, kind) = needs(req);
            for (role, w) in Role::ALL.into_iter().zip(want) {
                assert_eq!(need.allows(role), w, "{kind} by {role}");
            }
        }
    }
}
