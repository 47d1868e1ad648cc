//! A topology of real node processes on loopback: what `etp demo`, `etp
//! bench propagate` and the system tests run. Every process is killed when
//! its [`NodeProc`] drops; every wait has a deadline.

use anyhow::{bail, Context};
use propagator::node::client::Client;
use propagator::predicate::project;
use propagator::record::Record;
use propagator::topology::Valid;
use propagator::wire::OperationRequest;
use propagator::wire::{ReplicaState, Request, Response, TaskReport};
use propagator::{Fnr, Isn, Seq};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example topology's file numbers.
pub const MASTER: Fnr = Fnr(10);
pub const FULL: Fnr = Fnr(20);
pub const PART: Fnr = Fnr(30);

/// How long a node may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One `etp node run` process.
pub struct NodeProc {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub dbid: u32,
    bin: PathBuf,
    stderr_log: PathBuf,
    /// Where the node serves metrics, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// Extra `etp node run` arguments (before those of `ETP_NODE_ARGS`).
    args: Vec<String>,
    /// Extra environment of the node's process.
    env: Vec<(String, String)>,
}

/// The certificate directory the nodes this process starts serve with
/// (None: plain TCP on loopback).
static NODE_CERTS: std::sync::RwLock<Option<PathBuf>> = std::sync::RwLock::new(None);

/// The name of the `admin` client certificate [`use_local_certs`] makes.
pub const LOCAL_ADMIN: &str = "admin";

/// The copy area of a local cluster's nodes, in the directory that holds
/// their data directories.
pub const LOCAL_AREA: &str = "area";

/// Days the certificates of a local cluster (a demo's, a benchmark's) are
/// issued for: a kept `--data` directory stays usable.
pub const LOCAL_DAYS: u32 = 3650;

/// Makes a local cluster's certificates in `dir` unless they are there (the
/// authority, an `admin` client, nodes `db1` to `db{dbs}`), and uses them:
/// nodes [`NodeProc`] starts serve with them (`--certs dir`), and this
/// process talks to nodes as the admin.
pub fn use_local_certs(dir: &Path, dbs: u32) -> anyhow::Result<()> {
    use propagator::net::{cert, Identity, Role, Tls, Transport};
    if !dir.join(cert::CA_CERT).exists() {
        cert::init(dir, "local")?;
    }
    let admin = Identity {
        name: LOCAL_ADMIN.into(),
        role: Role::Admin,
        db: None,
    };
    let mut ids = vec![admin];
    ids.extend((1..=dbs).map(|d| cert::node_identity(propagator::DbId(d))));
    for id in &ids {
        if !dir.join(format!("{}.crt", id.name)).exists() {
            cert::issue(dir, id, LOCAL_DAYS)?;
        }
    }
    let tls = Tls::load(
        &dir.join(cert::CA_CERT),
        &dir.join(format!("{LOCAL_ADMIN}.crt")),
        &dir.join(format!("{LOCAL_ADMIN}.key")),
    )?;
    propagator::net::set_client(Transport::Tls(std::sync::Arc::new(tls)));
    *NODE_CERTS.write().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
    Ok(())
}

/// Nodes [`NodeProc`] starts serve plain TCP on loopback
/// (`--insecure-loopback`), and this process talks to them so.
pub fn use_plain_loopback() {
    propagator::net::set_client(propagator::net::Transport::PlainLoopback);
    *NODE_CERTS.write().unwrap_or_else(|p| p.into_inner()) = None;
}

/// The arguments that give a node its credentials (see [`use_local_certs`]).
fn credential_args() -> Vec<String> {
    match &*NODE_CERTS.read().unwrap_or_else(|p| p.into_inner()) {
        Some(d) => vec!["--certs".into(), d.display().to_string()],
        None => vec!["--insecure-loopback".into()],
    }
}

impl NodeProc {
    /// Initialises the database if needed and starts a node on `listen`.
    pub fn start(
        bin: &Path,
        data: &Path,
        dbid: u32,
        listen: SocketAddr,
    ) -> anyhow::Result<NodeProc> {
        Self::start_with_args(bin, data, dbid, listen, &[])
    }

    /// [`NodeProc::start`] with extra `etp node run` arguments.
    pub fn start_with_args(
        bin: &Path,
        data: &Path,
        dbid: u32,
        listen: SocketAddr,
        args: &[&str],
    ) -> anyhow::Result<NodeProc> {
        Self::start_with_env(bin, data, dbid, listen, args, &[])
    }

    /// [`NodeProc::start_with_args`] with extra environment variables for
    /// the node's process (kept across restarts).
    pub fn start_with_env(
        bin: &Path,
        data: &Path,
        dbid: u32,
        listen: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<NodeProc> {
        if !data.join("DATABASE").exists() {
            let st = Command::new(bin)
                .args(["db", "init", "--dbid", &dbid.to_string(), "--data"])
                .arg(data)
                .stdout(Stdio::null())
                .status()
                .context("running etp db init")?;
            if !st.success() {
                bail!("etp db init --data {} failed", data.display());
            }
        }
        let mut n = NodeProc {
            child: None,
            addr: listen,
            data: data.to_path_buf(),
            dbid,
            bin: bin.to_path_buf(),
            stderr_log: data.with_extension("node.log"),
            metrics: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        n.spawn(listen)?;
        Ok(n)
    }

    fn spawn(&mut self, listen: SocketAddr) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .with_context(|| format!("opening {}", self.stderr_log.display()))?;
        let mut args = credential_args();
        args.extend(self.args.iter().cloned());
        if let Ok(a) = std::env::var("ETP_NODE_ARGS") {
            args.extend(a.split_whitespace().map(String::from));
        }
        // A local cluster's nodes share one copy area beside their data
        // directories, `<cluster dir>/area`, unless told otherwise.
        if !args
            .iter()
            .any(|a| a.split('=').next() == Some("--copy-area"))
        {
            if let Some(dir) = self.data.parent() {
                args.push("--copy-area".into());
                args.push(dir.join(LOCAL_AREA).display().to_string());
            }
        }
        // With --metrics the node prints `metrics ADDR` after `listening ADDR`.
        let lines = if args.iter().any(|a| a.starts_with("--metrics")) {
            2
        } else {
            1
        };
        let mut child = Command::new(&self.bin)
            .args(["node", "run", "--listen", &listen.to_string(), "--data"])
            .arg(&self.data)
            .args(&args)
            .env(
                "ETP_LOG",
                std::env::var("ETP_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting etp node run")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            for _ in 0..lines {
                let mut line = String::new();
                let _ = out.read_line(&mut line);
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => bail!(
                "node {} did not start listening within {START_TIMEOUT:?}",
                self.dbid
            ),
        };
        let Some(addr) = line.trim().strip_prefix("listening ") else {
            let tail = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join("\n");
            bail!("node {} failed to start: {line:?}\n{tail}", self.dbid);
        };
        self.addr = addr.parse().context("node printed a bad address")?;
        self.metrics = None;
        if lines > 1 {
            let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
            let Some(m) = line.trim().strip_prefix("metrics ") else {
                bail!("node {} printed no metrics address: {line:?}", self.dbid);
            };
            self.metrics = Some(m.parse().context("node printed a bad metrics address")?);
        }
        Ok(())
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean stop (SIGKILL after the deadline).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait()? {
                if !st.success() {
                    bail!("node {} stopped with {st}", self.dbid);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("node {} did not stop within 30 s of SIGTERM", self.dbid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the node again on the same address (after `kill` or `stop`).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let addr = self.addr;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn(addr) {
                Ok(()) => return Ok(()),
                // The port may linger for a moment after a kill.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "restart retry");
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.addr)?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nodes: the master (dbid 1), the full replicate's (2) and the
/// partial replicate's (3), with the example topology applied.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub topology: Valid,
}

/// The example topology with these node addresses and task settings.
pub fn topology_text(addrs: &[SocketAddr], restart_interval_s: Option<u64>) -> String {
    let mut t = include_str!("../../examples/topology.toml").to_string();
    for (i, a) in addrs.iter().enumerate() {
        t = t.replace(&format!("127.0.0.1:740{}", i + 1), &a.to_string());
    }
    match restart_interval_s {
        Some(s) => t.replace(
            "restart_interval_s = 5",
            &format!("restart_interval_s = {s}"),
        ),
        None => t.replace("restart_interval_s = 5\n", ""),
    }
}

impl Cluster {
    /// Starts three nodes under `dir` and applies the example topology.
    pub fn start(
        bin: &Path,
        dir: &Path,
        restart_interval_s: Option<u64>,
    ) -> anyhow::Result<Cluster> {
        Self::start_with(bin, dir, |addrs| topology_text(addrs, restart_interval_s))
    }

    /// Starts three nodes and applies the topology `make` writes for their addresses.
    pub fn start_with(
        bin: &Path,
        dir: &Path,
        make: impl FnOnce(&[SocketAddr]) -> String,
    ) -> anyhow::Result<Cluster> {
        Self::start_with_args(bin, dir, &[], make)
    }

    /// [`Cluster::start_with`], every node run with the extra `node_args`.
    pub fn start_with_args(
        bin: &Path,
        dir: &Path,
        node_args: &[&str],
        make: impl FnOnce(&[SocketAddr]) -> String,
    ) -> anyhow::Result<Cluster> {
        let any: SocketAddr = "127.0.0.1:0".parse().context("loopback")?;
        let mut nodes = Vec::new();
        for dbid in 1..=3u32 {
            nodes.push(NodeProc::start_with_args(
                bin,
                &dir.join(format!("db{dbid}")),
                dbid,
                any,
                node_args,
            )?);
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        let text = make(&addrs);
        std::fs::write(dir.join("topology.toml"), &text).context("writing topology.toml")?;
        let topology = Valid::parse(&text)?;
        propagator::node::apply::apply_topology_blocking(&text)?;
        Ok(Cluster { nodes, topology })
    }

    pub fn master(&self) -> &NodeProc {
        &self.nodes[0]
    }

    /// The master node's task report.
    pub fn task_status(&self) -> anyhow::Result<TaskReport> {
        let mut c = self.master().client()?;
        match c.call(&Request::Operation(OperationRequest::TaskStatus))? {
            Response::Tasks(mut t) if !t.is_empty() => Ok(t.remove(0)),
            other => bail!("unexpected task status {other:?}"),
        }
    }

    /// Waits until every replicate has confirmed the master's last seq.
    pub fn wait_converged(&self, limit: Duration) -> anyhow::Result<(Seq, Duration)> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            match self.task_status() {
                Ok(t) => {
                    if let Some(r) = t.replicates.iter().find(|r| r.state == ReplicaState::Error) {
                        bail!("replicate {} is in {}", r.name, r.state);
                    }
                    if t.replicates.iter().all(|r| r.confirmed_seq == t.master_seq) {
                        return Ok((t.master_seq, start.elapsed()));
                    }
                    last = format!("{t:?}");
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bail!("replicates did not converge within {limit:?}; last status: {last}")
    }

    /// Dumps `file` from node `i`.
    pub fn dump(&self, i: usize, file: Fnr) -> anyhow::Result<BTreeMap<Isn, Record>> {
        let mut out = BTreeMap::new();
        // An inspection: what the node holds, whatever its state.
        self.nodes[i]
            .client()?
            .stale_reads(true)
            .dump(file, |isn, r| {
                out.insert(isn, r);
                Ok(())
            })?;
        Ok(out)
    }

    /// What the partial replicate must hold for this master content.
    pub fn expected_partial(&self, master: &BTreeMap<Isn, Record>) -> BTreeMap<Isn, Record> {
        let rep = self
            .topology
            .replicates
            .iter()
            .find(|r| r.is_partial())
            .expect("the example topology has a partial replicate");
        master
            .iter()
            .filter(|(_, r)| rep.predicate.as_ref().is_none_or(|p| p.selects(r)))
            .map(|(i, r)| {
                let r = match &rep.def.fields {
                    Some(f) => project(r, f),
                    None => r.clone(),
                };
                (*i, r)
            })
            .collect()
    }

    /// Checks full == master and partial == select(project(master)).
    pub fn check_equal(&self) -> anyhow::Result<usize> {
        let master = self.dump(0, MASTER)?;
        let full = self.dump(1, FULL)?;
        let part = self.dump(2, PART)?;
        if full != master {
            bail!(
                "full replicate differs from the master ({} vs {} records)",
                full.len(),
                master.len()
            );
        }
        let want = self.expected_partial(&master);
        if part != want {
            let missing = want.keys().filter(|k| !part.contains_key(k)).count();
            let extra = part.keys().filter(|k| !want.contains_key(k)).count();
            bail!("partial replicate differs from select(project(master)): {missing} missing, {extra} extra, {} records", part.len());
        }
        Ok(master.len())
    }
}
