//! Recovery as a library: the recovery flows of the decision trees
//! (`flowcharts`) answered from the live cluster and carried out through its
//! nodes. The CLI (`etp recover …`) parses arguments and prints; everything
//! it decides or does lives here, where tests and other tools can call it.
//!
//! - [`probes`]: the facts gathered once from every node, the copy catalog,
//!   the client journal and a topology export ([`probes::LiveProbes`]), and
//!   the answer to each tree question, with its evidence.
//! - [`run`]: a plan bound to the live topology (`$variables` → nodes, files,
//!   replicates), its durable run journal, one executor per action
//!   ([`run::Action`] is matched exhaustively), and the round loop that runs
//!   triage again until everything is intact.
//!
//! What a run says goes to a [`Report`]: one event a step (with its JSON
//! form) and the walks it made, so the CLI chooses JSON lines or text.

pub mod actions;
pub mod journal;
pub mod plan;
pub mod probes;
pub mod promote;
pub mod run;
pub mod saved;

pub use run::run;

use anyhow::Context;
use probes::Sources;
use propagator::wire::OperationRequest;
use propagator::wire::{ReplicateAction, Request, Response};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a run is to go.
pub struct RunOptions {
    pub node: SocketAddr,
    pub case: Option<String>,
    pub execute: bool,
    pub confirm: bool,
    pub sources: Sources,
    pub state: PathBuf,
    pub wait: Duration,
    /// A saved walk whose answers the first round takes (each checked
    /// against its probe now).
    pub answers: Option<saved::SavedWalk>,
}

/// Where a recovery run's events and walks go.
pub trait Report {
    /// One event: its JSON form (`--json`) and its line for people.
    fn event(&mut self, json: serde_json::Value, human: String);
    /// A tree walked (triage, or a case), question by question.
    fn walk(&mut self, walk: &flowcharts::Walk);
}

/// The topology node `node` serves, parsed.
pub fn topology_of(node: SocketAddr) -> anyhow::Result<propagator::topology::Valid> {
    match ask(
        node,
        &Request::Admin(propagator::wire::AdminRequest::AdminExport),
    )? {
        Response::Text(t) => propagator::topology::Valid::parse(&t)
            .map_err(|e| anyhow::anyhow!("the topology node {node} serves: {e}")),
        other => anyhow::bail!("node {node} answered {other:?} to AdminExport"),
    }
}

/// One request to a node on a fresh connection; an error answer is an error
/// naming the node.
pub fn ask(addr: SocketAddr, req: &Request) -> anyhow::Result<Response> {
    let mut c =
        propagator::node::client::Client::connect(addr).with_context(|| format!("node {addr}"))?;
    Ok(c.call(req)?)
}

/// A replicate action, sent to the node whose task feeds it.
pub fn replicate_action(
    addr: SocketAddr,
    name: &str,
    action: ReplicateAction,
) -> anyhow::Result<Response> {
    ask(
        addr,
        &Request::Operation(OperationRequest::Replicate {
            name: name.to_string(),
            action,
        }),
    )
}
