//! `etp node run`, `etp admin …`, `etp task …`.

use crate::cli::{AdminCommand, NodeCommand, TaskCommand, TaskControlArgs};
use crate::output;
use crate::Outcome;
use anyhow::{bail, Context};
use propagator::node::client::Client;
use propagator::node::{metrics, Node};
use propagator::wire::ReplicaState;
use propagator::wire::{AdminRequest, OperationRequest};
use propagator::wire::{Request, Response, TaskAction, TaskReport};
use propagator::Fnr;
use std::io::Write;

pub fn run(c: NodeCommand, tls: &crate::cli::TlsArgs) -> anyhow::Result<Outcome> {
    let NodeCommand::Run {
        data,
        listen,
        cache_mb,
        metrics,
        metrics_tls,
        certs,
        insecure_loopback,
        max_connections,
        idle_timeout_s,
        handshakes_per_ip,
        copy_area,
        copy_alarm_hours,
    } = c;
    if copy_alarm_hours.is_some_and(|h| !(h > 0.0 && h.is_finite())) {
        anyhow::bail!("--copy-alarm-hours must be a number of hours above 0");
    }
    let limits = propagator::node::Limits {
        max_connections: max_connections as usize,
        idle_timeout: std::time::Duration::from_secs(idle_timeout_s),
        handshakes_per_ip: handshakes_per_ip.map(|n| n as usize),
        ..propagator::node::Limits::default()
    };
    raise_descriptor_limit(limits.max_connections);
    let opts = propagator::Options {
        cache_bytes: cache_mb << 20,
        ..propagator::Options::default()
    };
    if let Some(shared) = propagator::database::shared_dirs(&data.data) {
        bail!(
            "{shared}: writable by others than its owner; a node serves only a private data directory (chmod 700 {})",
            data.data.display()
        );
    }
    let db = super::open_with_options(&data.data, opts)?;
    let copy_area = match copy_area {
        Some(a) => {
            backup::Area::open(&a).with_context(|| format!("--copy-area {}", a.display()))?;
            Some(
                std::fs::canonicalize(&a)
                    .with_context(|| format!("--copy-area {}", a.display()))?,
            )
        }
        None => None,
    };
    if let Some(a) = &copy_area {
        use std::os::unix::fs::PermissionsExt;
        for d in [a.clone(), a.join("sets"), a.join("data")] {
            let mode = std::fs::metadata(&d)
                .with_context(|| format!("--copy-area {}", d.display()))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o022 != 0 {
                bail!(
                    "--copy-area {}: {} (mode {mode:04o}) is writable by others than its owner; copies are kept in a private directory (chmod -R go-w {})",
                    a.display(),
                    d.display(),
                    a.display()
                );
            }
        }
    }
    // Without --listen: where the topology, or the node's own note, says.
    let (listen, chosen) = match listen {
        Some(a) => (a, true),
        None => (known_address(&db)?, false),
    };
    // TLS with the cluster's certificates, or plain TCP on loopback when
    // asked for by name.
    let transport = if insecure_loopback {
        if !listen.ip().is_loopback() {
            bail!("--insecure-loopback: {listen} is not a loopback address; a node serves plain TCP only on loopback (give it certificates: --certs DIR)");
        }
        propagator::net::Transport::PlainLoopback
    } else {
        match super::cert::node_tls(certs.as_deref(), tls, db.dbid())? {
            Some(t) => propagator::net::Transport::Tls(t),
            None => bail!(
                "no certificates: give --certs DIR (the cluster's ca.crt and this database's db{}.crt and db{}.key; `etp cert init` and `etp cert issue` make them), or --ca, --cert and --key; or --insecure-loopback to serve plain TCP on a loopback address",
                db.dbid(),
                db.dbid()
            ),
        }
    };
    propagator::net::set_client(transport.clone());
    // One reactor thread: the work that blocks (commits, syncs, page-store
    // reads of any size) runs on the blocking pool and the link's sync
    // threads, so the reactor only moves bytes and small batches. On two
    // cores a second reactor thread cost a wake-up between the tasks of
    // one transaction (a feeder and its connection, a link and its
    // answer): measured (five interleaved pairs, N=200000), one thread
    // took the lag p50 to 0.88-0.92x and the lag phase's CPU per commit to
    // 0.77x, with bulk and drain within their noise (0.96-1.01x).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the node's runtime")?;
    let served = db.clone();
    rt.block_on(async move {
        let db = served;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                if chosen {
                    format!("cannot listen on {listen}")
                } else {
                    format!("cannot listen on {listen}, the address this node keeps (its topology's entry, else {}): free it, or give --listen", ADDRESS_FILE)
                }
            })?;
        let addr = listener.local_addr()?;
        remember_address(&db, addr);
        let metrics = match metrics {
            Some(a) => {
                let tls = matches!(transport, propagator::net::Transport::Tls(_));
                if metrics_tls && !tls {
                    anyhow::bail!("--metrics-tls serves the metrics over TLS with client certificates: give the node its certificates (--certs DIR)");
                }
                Some(metrics::bind(a, tls).await?)
            }
            None => None,
        };
        let copies = propagator::node::Copies {
            area: copy_area.clone(),
            alarm_after: copy_alarm_hours.map(|h| std::time::Duration::from_secs_f64(h * 3600.0)),
            check_jobs: Some(std::sync::Arc::new(|text: &str, area: Option<&std::path::Path>, topology: Option<&propagator::topology::Valid>| {
                backup::schedule::check_jobs(text, area, topology)
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}").into())
            })),
        };
        let node = Node::with_copies(db.clone(), copies)?;
        {
            // One write: a reader may stop after the lines it expects.
            let mut lines = format!("listening {addr}\n");
            if let Some(m) = &metrics {
                lines += &format!("metrics {}\n", m.local_addr()?);
            }
            let mut out = std::io::stdout().lock();
            out.write_all(lines.as_bytes())?;
            out.flush()?;
        }
        tracing::info!(%addr, dbid = %db.dbid(), "node serving");
        // The copy-job scheduler: a thread beside the service, talking to
        // this node over TCP like any client.
        let sched_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sched = {
            let stop = sched_stop.clone();
            std::thread::spawn(move || {
                backup::schedule::serve(
                    addr,
                    copy_area.as_deref(),
                    &backup::schedule::SystemClock,
                    &stop,
                )
            })
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = metrics.map(|l| {
            // Plain on loopback (a local scraper), TLS with client
            // certificates anywhere else.
            let off_loopback = l.local_addr().is_ok_and(|a| !a.ip().is_loopback());
            let tls = match &transport {
                propagator::net::Transport::Tls(t) if off_loopback || metrics_tls => {
                    Some(t.server_config())
                }
                _ => None,
            };
            tokio::spawn(metrics::serve(node.clone(), l, tls, async {
                let _ = stopped.await;
            }))
        });
        node.clone()
            .serve(listener, transport, limits, shutdown_signal())
            .await;
        sched_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || sched.join()).await;
        drop(stop);
        if let Some(m) = metrics {
            let _ = m.await;
        }
        anyhow::Ok(())
    })?;
    // Tasks are stopped; let in-flight blocking calls finish, then close cleanly.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    db.close().context("closing the database")?;
    eprintln!("etp: node stopped cleanly");
    Ok(Outcome::Ok)
}

/// Raises the soft limit on open descriptors to the hard one: the node's
/// connections, its page store's files and its log segments share it. A
/// limit below what the connection limit needs (plus room for the
/// database) is warned about.
fn raise_descriptor_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    let cur = getrlimit(Resource::Nofile).current;
    let need = max_connections as u64 + 256;
    if cur.is_some_and(|c| c < need) {
        tracing::warn!(limit = ?cur, need, "the open-file limit is below --max-connections plus room for the database: lower --max-connections or raise the limit");
    }
}

/// The file in a data directory that holds where its node listened last.
const ADDRESS_FILE: &str = "node-address";

/// Where a node started without `--listen` listens: where the applied
/// topology puts its database, else where it listened last, else any free
/// loopback port (the first start).
fn known_address(db: &propagator::Database) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(Some(v)) = propagator::node::stored_topology(db) {
        if let Some(a) = v.addresses.get(&db.dbid()) {
            return Ok(*a);
        }
    }
    let path = db.dir().join(ADDRESS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => propagator::addr::resolve(text.trim())
            .with_context(|| format!("{} (remove it, or give --listen)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Notes where the node listens, for the next start without `--listen`.
/// Only a hint: failing to write it is a warning.
fn remember_address(db: &propagator::Database, addr: std::net::SocketAddr) {
    let path = db.dir().join(ADDRESS_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == addr.to_string()) {
        return;
    }
    let tmp = db.dir().join(format!("{ADDRESS_FILE}.tmp"));
    let r = std::fs::write(&tmp, format!("{addr}\n")).and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "cannot note the listen address");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; ctrl-c only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

pub fn admin(c: AdminCommand) -> anyhow::Result<Outcome> {
    match c {
        AdminCommand::Apply {
            node,
            topology,
            timeout_s,
        } => {
            if !(timeout_s > 0.0 && timeout_s <= 86400.0) {
                bail!("--timeout-s {timeout_s}: from above 0 to 86400");
            }
            let text = std::fs::read_to_string(&topology)
                .with_context(|| format!("cannot read {}", topology.display()))?;
            // Checked here first: a bad file is named without touching a node.
            let v = propagator::topology::Valid::parse(&text)
                .with_context(|| format!("{}", topology.display()))?;
            // The node named is one the topology names: a topology for
            // another cluster is not applied by mistake.
            if let Some(n) = node {
                if !v.addresses.values().any(|a| *a == n) {
                    bail!(
                        "--node {n} is not among the addresses {} names: is it this cluster's topology?",
                        topology.display()
                    );
                }
            }
            let done = propagator::node::apply::apply_topology_blocking_within(
                &text,
                std::time::Duration::from_secs_f64(timeout_s),
            )?;
            println!("{done}");
            Ok(Outcome::Ok)
        }
        AdminCommand::Export { node } => {
            let mut client = Client::connect(node.node)?;
            match client.call(&Request::Admin(AdminRequest::AdminExport))? {
                Response::Text(t) => print!("{t}"),
                other => bail!("unexpected answer {other:?}"),
            }
            Ok(Outcome::Ok)
        }
    }
}

pub fn task(c: TaskCommand) -> anyhow::Result<Outcome> {
    let (node, req, json) = match c {
        TaskCommand::List { node, json } => return list(node, json),
        TaskCommand::Status { node, json } => {
            (node, Request::Operation(OperationRequest::TaskStatus), json)
        }
        TaskCommand::Start(a) => control(a, TaskAction::Start),
        TaskCommand::Stop(a) => control(a, TaskAction::Stop),
        TaskCommand::Restart(a) => control(a, TaskAction::Restart),
    };
    let status = matches!(req, Request::Operation(OperationRequest::TaskStatus));
    let mut client = Client::connect(node.node)?;
    let mut tasks = match client.call(&req)? {
        Response::Tasks(t) => t,
        other => bail!("unexpected answer {other:?}"),
    };
    if status {
        warn_if_moved(&mut client);
        if tasks.is_empty() {
            // A replicate's node runs no task: show the tasks that feed the
            // cluster, from every node of its topology that runs one.
            tasks = cluster_tasks(&mut client)?;
        }
    }
    print_tasks(&tasks, json);
    let problem = tasks
        .iter()
        .flat_map(|t| &t.replicates)
        .any(|r| matches!(r.state, ReplicaState::Error | ReplicaState::Uninitialized));
    Ok(if problem {
        Outcome::Problem
    } else {
        Outcome::Ok
    })
}

/// Says so when the node listens elsewhere than its topology names it.
fn warn_if_moved(client: &mut Client) {
    if let Ok(Response::Info(i)) = client.call(&Request::Read(propagator::wire::ReadRequest::Info))
    {
        if let Some((listening, named)) = i.address_mismatch() {
            eprintln!(
                "etp: warning: this node listens at {listening}, but the topology names database {} at {named}: its peers cannot reach it (restart it without --listen, or apply a topology that names {listening})",
                i.dbid
            );
        }
    }
}

/// The tasks of every node of the topology the node at `client` holds.
fn cluster_tasks(client: &mut Client) -> anyhow::Result<Vec<TaskReport>> {
    let text = match client.call(&Request::Admin(AdminRequest::AdminExport))? {
        Response::Text(t) if !t.trim().is_empty() => t,
        _ => return Ok(Vec::new()),
    };
    let v = propagator::topology::Valid::parse(&text).map_err(anyhow::Error::msg)?;
    let mut all = Vec::new();
    for (db, addr) in &v.addresses {
        if v.tasks_on(*db).iter().all(|(_, _, r)| r.is_empty()) {
            continue;
        }
        match Client::connect(*addr)
            .and_then(|mut c| c.call(&Request::Operation(OperationRequest::TaskStatus)))
        {
            Ok(Response::Tasks(t)) => all.extend(t),
            Ok(other) => bail!("unexpected answer {other:?}"),
            Err(e) => eprintln!("etp: warning: database {db} at {addr}: {e}"),
        }
    }
    Ok(all)
}

/// Every task of every node of the topology, one line each.
fn list(node: crate::cli::NodeArgs, json: bool) -> anyhow::Result<Outcome> {
    let mut client = Client::connect(node.node)?;
    let text = match client.call(&Request::Admin(AdminRequest::AdminExport))? {
        Response::Text(t) => t,
        other => bail!("unexpected answer {other:?}"),
    };
    let v = propagator::topology::Valid::parse(&text).map_err(anyhow::Error::msg)?;
    let mut rows = Vec::new();
    for (db, addr) in &v.addresses {
        if v.tasks_on(*db).iter().all(|(_, _, r)| r.is_empty()) {
            continue;
        }
        let tasks = match Client::connect(*addr)
            .and_then(|mut c| c.call(&Request::Operation(OperationRequest::TaskStatus)))
        {
            Ok(Response::Tasks(t)) => t,
            Ok(other) => bail!("unexpected answer {other:?}"),
            Err(e) => {
                rows.push(vec![
                    db.to_string(),
                    addr.to_string(),
                    "-".into(),
                    format!("unreachable: {e}"),
                    String::new(),
                    String::new(),
                ]);
                continue;
            }
        };
        for t in tasks {
            if json {
                output::json(&serde_json::json!({
                    "database": db.0, "address": addr.to_string(), "master": t.master.0,
                    "master_name": t.master_name, "state": t.state, "policy": t.policy,
                    "replicates": t.replicates.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
                }));
            }
            rows.push(vec![
                db.to_string(),
                addr.to_string(),
                format!("{} ({})", t.master, t.master_name),
                t.state.to_string(),
                t.policy.to_string(),
                t.replicates
                    .iter()
                    .map(|r| r.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
    }
    if !json {
        output::table(
            &[
                "database",
                "address",
                "master",
                "task",
                "policy",
                "replicates",
            ],
            &rows,
        );
    }
    Ok(Outcome::Ok)
}

fn control(a: TaskControlArgs, action: TaskAction) -> (crate::cli::NodeArgs, Request, bool) {
    (
        a.node,
        Request::Operation(OperationRequest::TaskControl {
            master: a.master.map(Fnr),
            action,
        }),
        a.json,
    )
}

fn print_tasks(tasks: &[TaskReport], json: bool) {
    if json {
        for t in tasks {
            output::json(&serde_json::json!({
                "master": t.master.0,
                "master_name": t.master_name,
                "state": t.state,
                "policy": t.policy,
                "restart_interval_s": t.restart_interval_s,
                "master_seq": t.master_seq.0,
                "replicates": t.replicates.iter().map(|r| serde_json::json!({
                    "name": r.name, "database": r.database.0, "address": r.address,
                    "state": r.state, "reason": r.reason, "phase": r.phase,
                    "sent_seq": r.sent_seq.0, "confirmed_seq": r.confirmed_seq.0,
                    "lag_records": r.lag_records, "stalled_s": r.stalled_s, "health": r.health,
                    "last_error": r.last_error, "connects": r.connects,
                })).collect::<Vec<_>>(),
            }));
        }
        return;
    }
    if tasks.is_empty() {
        println!("no replication tasks on this node");
    }
    for t in tasks {
        println!(
            "task of master {} ({}): {}, policy {}, master seq {}, restart interval {}",
            t.master,
            t.master_name,
            t.state,
            t.policy,
            t.master_seq,
            t.restart_interval_s
                .map_or("none".into(), |s| format!("{s} s"))
        );
        let rows: Vec<Vec<String>> = t
            .replicates
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    format!("{} ({})", r.database, r.address),
                    r.state.to_string(),
                    r.phase.clone(),
                    r.confirmed_seq.to_string(),
                    r.lag_records.to_string(),
                    r.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::table(
            &[
                "replicate",
                "database",
                "state",
                "phase",
                "confirmed",
                "lag",
                "last error",
            ],
            &rows,
        );
    }
}
