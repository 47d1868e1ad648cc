//! A load the replicate refuses twice is an error, not an endless retry.
//!
//! The partial replicate's database is played by a hostile peer (real TCP,
//! the real wire protocol) that takes part in the topology apply and opens
//! links like a node, but refuses every loaded chunk as a bad request. The
//! master's real node must retry the load once (a refusal can be a fluke of
//! one connection), then put the replicate in error with the refusal as its
//! reason and stop feeding it; `replicate status` and `task status` exit 1.

use etp_system_tests::{etp, etp_bin, wait_for};
use maintenance::cluster::{topology_text, Cluster};
use propagator::wire::ReplicaState;
use propagator::wire::{AdminRequest, LinkRequest, ReadRequest};
use propagator::wire::{ErrorCode, LinkState, LoadProgress, NodeInfo, Request, Response};
use propagator::{Digest, Isn, Lsn};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts of what the fake replicate node was asked.
#[derive(Default)]
struct Seen {
    load_begins: AtomicU64,
    chunks: AtomicU64,
}

/// The protocol's framing, by hand: a 4-byte big-endian length, then the message.
fn read_frame(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut b).ok()?;
    Some(b)
}

fn write_frame(s: &mut impl Write, r: &Response) -> Option<()> {
    let b = r.encode().ok()?;
    s.write_all(&u32::try_from(b.len()).ok()?.to_be_bytes())
        .ok()?;
    s.write_all(&b).ok()
}

/// Serves one connection of the fake node `dbid`.
fn serve(s: TcpStream, dbid: u32, seen: &Seen) {
    let mut s = etp_system_tests::tls_accept(s, dbid);
    while let Some(frame) = read_frame(&mut s) {
        let Ok(req) = Request::decode(&frame) else {
            return;
        };
        let resp = match req {
            Request::Read(ReadRequest::Info) => Response::Info(NodeInfo {
                dbid: propagator::DbId(dbid),
                last_lsn: Lsn(0),
                version: "fake".into(),
                listening: None,
                topology_address: None,
                copy_area: None,
            }),
            // A fresh node: no topology yet.
            Request::Admin(AdminRequest::AdminExport) => Response::Error {
                code: ErrorCode::Other,
                message: "no topology has been applied to this node".into(),
            },
            Request::Admin(AdminRequest::AdminPrepare { .. })
            | Request::Admin(AdminRequest::AdminInstall { .. }) => Response::Ok,
            Request::Link(LinkRequest::LinkOpen { .. }) => Response::Link(LinkState {
                confirmation: None,
                digest: Digest::default(),
                count: 0,
                damaged: None,
                load: None,
                hold: None,
            }),
            Request::Link(LinkRequest::LoadBegin {
                id,
                snapshot,
                source,
                rewrite,
            }) => {
                seen.load_begins.fetch_add(1, Ordering::SeqCst);
                Response::Loading(LoadProgress {
                    id,
                    snapshot,
                    source,
                    rewrite,
                    next: Isn(1),
                    count: 0,
                    digest: Digest::default(),
                    chunks: 0,
                })
            }
            Request::Link(LinkRequest::LoadChunk { from, .. }) => {
                seen.chunks.fetch_add(1, Ordering::SeqCst);
                Response::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("fake replicate: chunk from isn {from} refused"),
                }
            }
            _ => Response::Error {
                code: ErrorCode::Refused,
                message: "fake replicate: not served".into(),
            },
        };
        if write_frame(&mut s, &resp).is_none() {
            return;
        }
    }
}

#[test]
fn a_load_refused_again_after_a_retry_puts_the_replicate_in_error_and_stops() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fake: SocketAddr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve(s, 3, &seen));
            }
        });
    }
    // Database 3 (the partial replicate's) is the fake; tasks retry a lost
    // link after 1 s at most.
    let cl = Cluster::start_with(etp_bin(), tmp.path(), |addrs| {
        topology_text(&[addrs[0], addrs[1], fake], Some(1))
    })
    .expect("cluster");
    let m = cl.nodes[0].addr.to_string();
    // The master's task orders a load of the new replicate and sends it.
    let report = wait_for(
        "the partial replicate to be in error",
        Duration::from_secs(60),
        || {
            let t = cl.task_status().ok()?;
            let r = t.replicates.into_iter().find(|r| r.name == "items_part")?;
            (r.state == ReplicaState::Error).then_some(r)
        },
    );
    let reason = report.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("refused again at the chunk from isn 1 after a retry")
            && reason.contains("fake replicate: chunk from isn 1 refused"),
        "{report:?}"
    );
    // Once retried, then stopped: no third attempt.
    assert_eq!(seen.load_begins.load(Ordering::SeqCst), 2, "{report:?}");
    wait_for("the feeder to stop", Duration::from_secs(30), || {
        let t = cl.task_status().ok()?;
        let r = t.replicates.into_iter().find(|r| r.name == "items_part")?;
        r.phase.starts_with("stopped (error:").then_some(())
    });
    assert_eq!(seen.load_begins.load(Ordering::SeqCst), 2);
    // Visible to the operator: both status commands exit 1 and say why.
    let out = etp(&["replicate", "status", "items_part", "--node", &m]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("error") && text.contains("refused again"),
        "{text}"
    );
    let out = etp(&["task", "status", "--node", &m]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The full replicate is untouched by it and stays online.
    let t = cl.task_status().expect("status");
    let full = t.replicates.iter().find(|r| r.name == "items_full");
    assert_eq!(full.map(|r| r.state.as_str()), Some("online"), "{t:?}");
}
