//! Applying a topology, from the client that asks for it: every node the
//! topology names is asked whether it can take its part (`AdminPrepare`),
//! and only when all can is it installed on each (`AdminInstall`),
//! replicate nodes first.
//!
//! The client does this itself, with its own certificate, rather than
//! asking one node to do it for everyone: a node then installs a topology
//! only from a holder of the `admin` role, and a node's certificate (which
//! every node holds) cannot rewrite the cluster's topology. Every call is
//! bounded by [`APPLY_CALL_TIMEOUT`], and a node that does not answer is
//! named.

use super::client::{ClientError, Conn};
use crate::ids::DbId;
use crate::topology::Valid;
use crate::wire::{AdminRequest, ErrorCode, Failure, ReadRequest, Request, Response};
use std::time::Duration;

/// The longest one call of an apply may take, unless told otherwise.
pub const APPLY_CALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn timed(
    limit: Duration,
    dbid: DbId,
    what: &str,
    f: impl std::future::Future<Output = Result<Response, ClientError>>,
) -> Result<Response, Failure> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(Failure::new(e.code(), e.to_string())),
        Err(_) => Err(Failure::new(
            ErrorCode::Unavailable,
            format!(
                "database {dbid}: no answer to {what} within {:.1} s",
                limit.as_secs_f64()
            ),
        )),
    }
}

/// Phase one at one node: connect (its certificate must be database
/// `dbid`'s), check who it is, and ask whether it can take its part.
async fn prepare(
    dbid: DbId,
    addr: std::net::SocketAddr,
    text: &str,
    limit: Duration,
) -> Result<(Conn, String), Failure> {
    let mut c = match tokio::time::timeout(limit, Conn::connect_to(addr, dbid)).await {
        Ok(r) => r.map_err(|e| Failure::new(e.code(), e.to_string()))?,
        Err(_) => {
            return Err(Failure::new(
                ErrorCode::Unavailable,
                format!(
                    "cannot connect to node {addr}: no connection within {:.1} s",
                    limit.as_secs_f64()
                ),
            ))
        }
    };
    match timed(
        limit,
        dbid,
        "Info",
        c.call(&Request::Read(ReadRequest::Info)),
    )
    .await?
    {
        Response::Info(i) if i.dbid == dbid => {}
        Response::Info(i) => {
            return Err(Failure::new(
                ErrorCode::Refused,
                format!(
                    "the node at {addr} holds database {}, the topology says {dbid}",
                    i.dbid
                ),
            ))
        }
        other => return Err(Failure::from(c.unexpected(&other, "Info").to_string())),
    }
    // What it holds now: its install is refused if another apply
    // changes it meanwhile.
    let held = match timed(
        limit,
        dbid,
        "AdminExport",
        c.call(&Request::Admin(AdminRequest::AdminExport)),
    )
    .await
    {
        Ok(Response::Text(t)) => crate::wire::topology_digest(Some(&t)),
        // No topology applied yet.
        Err(e) if e.code == ErrorCode::Other => crate::wire::topology_digest(None),
        Err(e) => return Err(e),
        Ok(other) => return Err(Failure::from(c.unexpected(&other, "Text").to_string())),
    };
    timed(
        limit,
        dbid,
        "AdminPrepare",
        c.call(&Request::Admin(AdminRequest::AdminPrepare {
            topology: text.to_string(),
        })),
    )
    .await?;
    Ok((c, held))
}

/// Applies `text` to every node it names (all or nothing up to the
/// install: a refusal at prepare changes nothing). Returns what was done.
pub async fn apply_topology(text: &str) -> Result<String, Failure> {
    apply_topology_within(text, APPLY_CALL_TIMEOUT).await
}

/// [`apply_topology`], each call (connecting included) bounded by `limit`.
pub async fn apply_topology_within(text: &str, limit: Duration) -> Result<String, Failure> {
    let v = Valid::parse(text).map_err(|e| Failure::new(ErrorCode::BadRequest, e.to_string()))?;
    // Every node is asked at once: an apply waits for the slowest node's
    // handshake and answer, not for their sum.
    let prepared = futures_util::future::join_all(
        v.addresses
            .iter()
            .map(|(dbid, addr)| prepare(*dbid, *addr, text, limit)),
    )
    .await;
    let mut conns = Vec::new();
    for ((dbid, _), r) in v.addresses.iter().zip(prepared) {
        match r {
            Ok((c, held)) => conns.push((*dbid, c, held)),
            Err(e) => {
                return Err(Failure::new(
                    e.code,
                    format!(
                        "topology not applied (nothing changed): database {dbid}: {}",
                        e.message
                    ),
                ))
            }
        }
    }
    // Replicate nodes first, so a master's task finds its replicates' files.
    conns.sort_by_key(|(dbid, _, _)| v.tasks_on(*dbid).iter().any(|(_, _, r)| !r.is_empty()));
    let mut done = Vec::new();
    for (dbid, mut c, held) in conns {
        let r = timed(
            limit,
            dbid,
            "AdminInstall",
            c.call(&Request::Admin(AdminRequest::AdminInstall {
                topology: text.to_string(),
                expect: Some(held),
            })),
        )
        .await;
        if let Err(e) = r {
            return Err(Failure::new(
                e.code,
                format!(
                    "topology installed on {done:?} but not on database {dbid}: {}",
                    e.message
                ),
            ));
        }
        done.push(dbid);
    }
    Ok(format!(
        "topology applied to databases {}",
        done.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// [`apply_topology`] for a caller without a runtime.
pub fn apply_topology_blocking(text: &str) -> Result<String, Failure> {
    apply_topology_blocking_within(text, APPLY_CALL_TIMEOUT)
}

/// [`apply_topology_within`] for a caller without a runtime.
pub fn apply_topology_blocking_within(text: &str, limit: Duration) -> Result<String, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(ErrorCode::Other, format!("cannot start a runtime: {e}")))?;
    rt.block_on(apply_topology_within(text, limit))
}
