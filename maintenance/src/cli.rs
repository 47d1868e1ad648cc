//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// A `host:port` argument; a host name is resolved now (see
/// `propagator::addr`).
fn address(text: &str) -> Result<std::net::SocketAddr, propagator::addr::AddrError> {
    propagator::addr::resolve(text)
}

#[derive(Parser)]
#[command(
    name = "etp",
    version,
    about = "Master/replicate propagation engine with confirmation files"
)]
pub struct Cli {
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The certificates a command talks to nodes with (`etp cert init` and
/// `etp cert issue` make them). Without them, plain TCP to loopback
/// addresses only, which only a node started with `--insecure-loopback`
/// accepts.
#[derive(Args, Clone, Default)]
pub struct TlsArgs {
    /// The cluster's certificate authority (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "ETP_CA",
        help_heading = "Certificates"
    )]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), issued by the cluster's authority.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "ETP_CERT",
        help_heading = "Certificates"
    )]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "ETP_KEY",
        help_heading = "Certificates"
    )]
    pub key: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create, check and inspect databases.
    #[command(subcommand)]
    Db(DbCommand),
    /// Create, list and dump files.
    #[command(subcommand)]
    File(FileCommand),
    /// Define master files and their ETP log files.
    #[command(subcommand)]
    Master(MasterCommand),
    /// Run transactions from JSON lines on standard input (one command per line).
    Exec(ExecArgs),
    /// Show a master's ETP log file.
    #[command(subcommand)]
    Log(LogCommand),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the main job: three nodes, a master with a full and a partial replicate, a workload.
    Demo(DemoArgs),
    /// Make the cluster's certificate authority and the certificates of
    /// its nodes and clients (mutual TLS; each names a role).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run a node: one database served over TCP, with its replication tasks.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Apply or export the topology (administration file).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Show and control replication tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Set or show the policy mode (automatic, manual, maintenance) of every node.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Serve the operator's pages (the cluster: databases, masters,
    /// replicates with their state and lag) over HTTP until SIGTERM or
    /// ctrl-c. Prints `console listening on http://ADDR/` first.
    Console(ConsoleArgs),
    /// Replicate states, error logs, initial load, reinit, verify, shun.
    #[command(subcommand)]
    Replicate(ReplicateCommand),
    /// Edit a replicate's confirmation (always leaves a gap record).
    #[command(subcommand)]
    Confirm(ConfirmCommand),
    /// Which replicates have a master transaction (by client id or seq).
    Xref(XrefArgs),
    /// Copy sets: take, list, show, verify, restore, regenerate, back out.
    #[command(subcommand)]
    Copy(CopyCommand),
    /// The recovery flows (decision trees): list them (flows), draw one
    /// (show), diagnose the live cluster, walk one by hand, run a plan,
    /// validate them.
    #[command(subcommand)]
    Recover(RecoverCommand),
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Make a cluster's certificate authority: DIR/ca.crt and DIR/ca.key
    /// (the key readable by its owner only). Refuses to replace one.
    Init {
        /// Where the certificates are kept (created 0700).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The cluster's name, in the authority's certificate.
        #[arg(long, default_value = "etp")]
        cluster: String,
    },
    /// Issue a certificate with the authority in DIR: DIR/NAME.crt and
    /// DIR/NAME.key. A node's certificate has role replication and names
    /// its database (--db N; its name defaults to dbN, which `etp node run
    /// --certs DIR` looks for).
    Issue {
        /// The directory `etp cert init` made (the authority's files).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The holder's name (1-64 of A-Z a-z 0-9 - _ .).
        #[arg(long)]
        name: Option<String>,
        /// read, write, replication (a node) or admin.
        #[arg(long, value_parser = |s: &str| s.parse::<propagator::net::Role>())]
        role: propagator::net::Role,
        /// The database a node's certificate serves (role replication).
        #[arg(long, value_name = "N")]
        db: Option<u32>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// A host name or IP address the certificate also serves TLS under
        /// (repeatable): `etp console` off loopback serves browsers with it.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// The identity a certificate names (name, role, database).
    Show {
        /// The certificate (PEM).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum RecoverCommand {
    /// The flows: triage and the five cases.
    Flows {
        /// Trees from this directory instead of the built-in ones.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One flow as a Mermaid or Graphviz DOT diagram.
    Show {
        /// The flow (triage, case1_isolated, …; see `etp recover flows`).
        case: String,
        /// mermaid or dot.
        #[arg(long, default_value = "mermaid")]
        format: String,
        /// Trees from this directory instead of the built-in ones.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Walk triage and the case it picks with answers probed from the live
    /// nodes; print the path, the evidence at each question and the plan
    /// (exit 1 when something needs recovery).
    Diagnose {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        sources: SourceArgs,
        /// The recovery journal's directory: a plan left unfinished there
        /// is reported (resume it before anything else).
        #[arg(long, value_name = "DIR", default_value = "etp-recovery")]
        state: PathBuf,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Ask a flow's questions in the terminal, each with the probe's answer
    /// and evidence offered as the default; print the path and the plan.
    Walk {
        /// The flow (triage, case1_isolated, …).
        case: String,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        sources: SourceArgs,
        /// Keep the answers, with their evidence and the probes' own
        /// answers, in FILE (JSON) for `etp recover run --answers FILE`.
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// Diagnose (or walk CASE) and print the plan bound to the live nodes
    /// (--dry-run, the default), or carry it out step by step with a
    /// journal (--execute); an interrupted run
    /// resumes where it stopped. Triage runs again after each plan, until
    /// everything is intact and verified.
    Run {
        /// Walk this case instead of triage (first round only).
        case: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        sources: SourceArgs,
        /// Print the bound plan and execute nothing (the default).
        #[arg(long, conflicts_with = "execute")]
        dry_run: bool,
        /// Carry the plan out, journaling every step.
        #[arg(long)]
        execute: bool,
        /// The operator step the run stopped at is done.
        #[arg(long, requires = "execute")]
        confirm: bool,
        /// Execute the plan of a walk saved with `etp recover walk --save`
        /// (its flow is the first round's): each answer is taken only if
        /// its probe still answers as it did then, else the run refuses,
        /// naming the question.
        #[arg(long, value_name = "FILE")]
        answers: Option<PathBuf>,
        /// The recovery journal's directory.
        #[arg(long, value_name = "DIR", default_value = "etp-recovery")]
        state: PathBuf,
        /// How long a step may wait (links, loads, replicates catching up), in seconds.
        #[arg(long, value_name = "S", default_value_t = 600)]
        wait_s: u64,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check flows: every node reachable, no cycle, every probe and action
    /// known, every branch ends in a leaf (exit 1 names each problem).
    Validate {
        /// Trees from this directory instead of the built-in ones.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Where the recovery probes look besides the nodes.
#[derive(Args, Clone)]
pub struct SourceArgs {
    /// The copy area, so the probes can look for copy sets.
    #[arg(long, value_name = "DIR")]
    pub area: Option<PathBuf>,
    /// The client journal (etp exec --journal DIR) of the master's clients:
    /// its pending transactions are the ones a failure interrupted.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// A topology export (etp admin export): a source for a damaged
    /// administration file, and the way to the nodes when --node serves none.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct AreaArgs {
    /// The copy area (its catalog and copy files).
    #[arg(long, value_name = "DIR")]
    pub area: PathBuf,
}

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Check a TOML file of job definitions and store it on the node that runs them.
    Set {
        /// The TOML file of job definitions.
        file: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Print the definitions a node holds, with each job's next time.
    Show {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one job now (progress on a terminal, events with --json).
    Run {
        /// The job's name (as in its definition).
        name: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The runs recorded in a copy area, oldest first.
    History {
        #[command(flatten)]
        area: AreaArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CopyCommand {
    /// How old the newest copy of every master, log and administration file
    /// is, in the node's copy area; exit 1 when one has none newer than the
    /// node's --copy-alarm-hours.
    Ages {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take a hot, consistent copy set (the rules add the log, the
    /// administration file, the confirmation file and every replicate
    /// sharing it; a log or a mix of kinds is refused).
    Take {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        area: AreaArgs,
        /// A file to copy (repeatable).
        #[arg(long = "file", value_name = "F", required = true)]
        files: Vec<u32>,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The catalog: every set, oldest first.
    List {
        #[command(flatten)]
        area: AreaArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One set, whole.
    Show {
        /// The set's id (see `etp copy list`).
        set: String,
        #[command(flatten)]
        area: AreaArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-read every member of one set (or of every set); exit 1 names what is damaged.
    Verify {
        /// The set's id (every set without it).
        set: Option<String>,
        #[command(flatten)]
        area: AreaArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restore a whole set, into its database (--data; its node stopped) or a new one (--to); progress on a terminal, events with --json.
    Restore {
        /// The set to restore.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        set: Option<String>,
        /// Or: the newest set holding this file (the whole set is restored).
        #[arg(long, value_name = "F")]
        file: Option<u32>,
        #[command(flatten)]
        area: AreaArgs,
        /// The set's own database (offline).
        #[arg(long, value_name = "DIR", conflicts_with = "to")]
        data: Option<PathBuf>,
        /// A new database directory to restore into (one a killed restore left is started over).
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restore the newest usable set holding a file and roll it forward with the protection log (progress on a terminal, events with --json).
    Regenerate {
        /// The file to regenerate (its copy set is restored whole).
        #[arg(long, value_name = "F")]
        file: u32,
        /// The database whose log rolls the copy forward (offline).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[command(flatten)]
        area: AreaArgs,
        /// Roll forward through this LSN.
        #[arg(long, value_name = "LSN", group = "until")]
        to_lsn: Option<u64>,
        /// RFC 3339 time, e.g. 2026-11-30T21:00:00Z.
        #[arg(long, value_name = "TIME", group = "until")]
        to_time: Option<String>,
        /// Roll forward through the end of the protection log.
        #[arg(long, group = "until")]
        to_end: bool,
        /// Write the result into this new database instead of --data (one a killed run left is started over).
        #[arg(long, value_name = "DIR")]
        into: Option<PathBuf>,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Scheduled copy jobs: definitions (kept in the node's administration file), runs, history.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Archive the closed protection-log segments into the copy area; with
    /// --prune, then remove from the log those the oldest copy set no longer needs.
    Archive {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        area: AreaArgs,
        /// Then delete the archived segments the database no longer needs
        /// (never one not yet archived and verified).
        #[arg(long)]
        prune: bool,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Roll a master (with its log) or a plain file back to a time, with before-images (progress on a terminal, events with --json).
    Backout {
        /// The file to roll back (a master takes its log with it).
        #[arg(long, value_name = "F")]
        file: u32,
        /// The database (offline: its node stopped).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        to_time: String,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Where the recovery page's probes look besides the nodes.
    #[command(flatten)]
    pub sources: SourceArgs,
    /// The recovery journal's directory, for plans run from the recovery
    /// page (the same as `etp recover run --state`: a run left unfinished
    /// there is resumed by the next).
    #[arg(long, value_name = "DIR", default_value = "etp-recovery")]
    pub state: std::path::PathBuf,
    /// Where to serve the pages (port 0: any free port). A loopback
    /// address is served plain; any other only over TLS with client
    /// certificates (as with --tls).
    #[arg(long, value_name = "ADDR", value_parser = address, default_value = "127.0.0.1:7480")]
    pub listen: std::net::SocketAddr,
    /// Serve HTTPS with this command's certificate (--cert; issued with
    /// `etp cert issue --host NAME` for the name browsers use) and ask
    /// every browser for a certificate of the cluster's authority: any
    /// role may look, only admin may act. Always so off loopback.
    #[arg(long)]
    pub tls: bool,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Set the policy on every node of the topology the given node holds.
    Set {
        /// automatic, manual or maintenance.
        mode: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show every node's policy.
    Show {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
pub struct ReplicateArgs {
    /// The replicate's name (as the topology gives it).
    pub name: String,
    /// Any node of the topology: the command finds the node that feeds the replicate.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print JSON (one document per line) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct LoadArgs {
    #[command(flatten)]
    pub replicate: ReplicateArgs,
    /// Load from this full replicate of the same master instead of the master.
    #[arg(long, value_name = "REPLICATE")]
    pub from: Option<String>,
    /// Records per chunk (default: the task's load_chunk, else 16384).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub chunk: Option<u32>,
    /// Order the load and return; do not wait for it (`etp replicate status` shows it).
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Subcommand)]
pub enum ReplicateCommand {
    /// Every replicate's state, confirmed seq, lag (records, bytes, seconds),
    /// stalled time and gaps; exit 1 when one is in error, stalled, shunned or has gaps.
    Status {
        /// Only this replicate.
        name: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A replicate's error log.
    Errors(ReplicateArgs),
    /// Clear a replicate's error state (recorded in its error log) and restart its feeder.
    ResetError(ReplicateArgs),
    /// Stop feeding a replicate, with a recorded reason.
    Shun {
        #[command(flatten)]
        replicate: ReplicateArgs,
        /// Why (kept in the replicate's error log).
        #[arg(long)]
        reason: String,
    },
    /// Feed a shunned replicate again.
    Unshun(ReplicateArgs),
    /// Load a new replicate online (the master keeps committing), in
    /// checksummed chunks, resumable after a crash of either side.
    Init(LoadArgs),
    /// Reload a replicate online; with --scoped only the records that differ move
    /// (after a predicate or field-list change).
    Reinit {
        #[command(flatten)]
        load: LoadArgs,
        /// Move only the records that differ (after a predicate or field-list change).
        #[arg(long)]
        scoped: bool,
    },
    /// Compare a replicate with the master as of its confirmed seq; list the
    /// differing isns; exit 1 on any difference.
    Verify {
        #[command(flatten)]
        replicate: ReplicateArgs,
        /// List at most this many differing isns.
        #[arg(long, default_value_t = 100)]
        max_isns: u32,
    },
}

#[derive(Subcommand)]
pub enum ConfirmCommand {
    /// Move a replicate's confirmation forward to SEQ, skipping the changes
    /// in between; writes a permanent gap record.
    Set {
        #[command(flatten)]
        replicate: ReplicateArgs,
        /// The master seq the replicate will confirm.
        #[arg(long)]
        seq: u64,
        /// Why (kept in the gap record).
        #[arg(long, default_value = "confirmation set by the operator")]
        reason: String,
    },
}

#[derive(Args)]
#[group(id = "txn", required = true, multiple = false, args = ["id", "seq"])]
pub struct XrefArgs {
    /// The client transaction id given with ET.
    #[arg(long)]
    pub id: Option<String>,
    /// A log seq of the transaction.
    #[arg(long)]
    pub seq: Option<u64>,
    /// The master file (default: every master).
    #[arg(long)]
    pub master: Option<u32>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print JSON (one document per line) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct NodeArgs {
    /// The node's address (host:port; a host name is resolved). Any node
    /// of the topology will do for commands about the whole cluster.
    #[arg(long, value_name = "ADDR", value_parser = address)]
    pub node: std::net::SocketAddr,
}

/// Where a command works: a data directory (offline) or a running node.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// The database's data directory (the database must not be open in a node).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// A running node's address (host:port; a host name is resolved).
    #[arg(long, value_name = "ADDR", value_parser = address)]
    pub node: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Serve a database until SIGTERM or ctrl-c. Prints `listening ADDR` first.
    Run {
        #[command(flatten)]
        data: DataArgs,
        /// Address to listen on (host:port; port 0: any free port). Without
        /// it the node listens where the applied topology puts its database,
        /// else where it listened last, so a restart keeps its address.
        #[arg(long, value_name = "ADDR", value_parser = address)]
        listen: Option<std::net::SocketAddr>,
        /// The page store's cache budget in MiB (sled's own memory use runs above it).
        #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(4..=65536))]
        cache_mb: u64,
        /// Serve Prometheus metrics (OpenMetrics text) at ADDR/metrics (port
        /// 0: any free port): plain HTTP on a loopback address, HTTPS with
        /// client certificates of the cluster's authority on any other
        /// (which needs the node's certificates). Prints `metrics ADDR`
        /// after `listening ADDR`.
        #[arg(long, value_name = "ADDR", value_parser = address)]
        metrics: Option<std::net::SocketAddr>,
        /// Serve the metrics over HTTPS with client certificates on a
        /// loopback address too (always so on any other).
        #[arg(long, requires = "metrics")]
        metrics_tls: bool,
        /// The cluster's certificates: DIR/ca.crt and this database's
        /// DIR/dbN.crt and DIR/dbN.key (`etp cert issue --role replication
        /// --db N`). Without it: --ca, --cert and --key.
        #[arg(long, value_name = "DIR", env = "ETP_CERTS")]
        certs: Option<PathBuf>,
        /// Serve plain TCP, without TLS or certificates: only on a loopback
        /// address, and only to clients on this machine.
        #[arg(long)]
        insecure_loopback: bool,
        /// Connections served at once; more are closed as they arrive
        /// (etp_connections_refused_total counts them).
        #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
        max_connections: u32,
        /// Seconds a connection with nothing in flight stays open (an open
        /// transaction on it is then backed out); replication links are
        /// exempt.
        #[arg(long, value_name = "S", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
        idle_timeout_s: u64,
        /// TLS handshakes in progress from one address (an IPv6 /64) at
        /// once; more are closed as they arrive (default: a quarter of the
        /// handshake pool, which is a quarter of --max-connections and at
        /// least 16; at least 8).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
        handshakes_per_ip: Option<u32>,
        /// The copy area this node writes copy sets into (for `copy take
        /// --node` and its copy jobs), restores from (recovery plans), and
        /// reads log cleanup's horizon from; created 0700 if missing.
        /// Without it those requests are refused and cleanup deletes
        /// nothing.
        #[arg(long, value_name = "DIR", env = "ETP_COPY_AREA")]
        copy_area: Option<PathBuf>,
        /// Raise an alarm (copy ages, metric `etp_copy_alarm`, a triage
        /// warning) for every master, log or administration file of the
        /// topology with no copy set in the copy area newer than this.
        #[arg(
            long,
            value_name = "HOURS",
            env = "ETP_COPY_ALARM_HOURS",
            requires = "copy_area"
        )]
        copy_alarm_hours: Option<f64>,
    },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Check a topology and install it on every node it names (all or
    /// nothing up to the install): this command asks each node itself.
    Apply {
        /// A node the topology must name (a check that it is this
        /// cluster's topology); the apply reaches every node it names.
        #[arg(long, value_name = "ADDR", value_parser = address)]
        node: Option<std::net::SocketAddr>,
        /// The topology file (TOML).
        topology: PathBuf,
        /// Seconds each node may take to answer each step (connecting,
        /// prepare, install); a node that does not is named.
        #[arg(long, value_name = "S", default_value_t = 30.0)]
        timeout_s: f64,
    },
    /// Print the topology a node holds.
    Export {
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// List the replication tasks of every node of the topology.
    List {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the replication tasks of a node and the state of every replicate.
    Status {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start stopped feeders of a task (all tasks without --master).
    Start(TaskControlArgs),
    /// Stop a task's feeders.
    Stop(TaskControlArgs),
    /// Stop and start a task's feeders (clears a link stop or an error).
    Restart(TaskControlArgs),
}

#[derive(Args)]
pub struct TaskControlArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The master file whose task to control.
    #[arg(long)]
    pub master: Option<u32>,
    /// Print JSON (one document per line) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct DataArgs {
    /// The database's data directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// Create a new, empty database.
    Init {
        #[command(flatten)]
        data: DataArgs,
        /// The database id (1 or more), unique in a topology.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        dbid: u32,
        /// Protection-log segment size in bytes.
        #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(4096..))]
        segment_size: Option<u64>,
        /// The page store's engine: fjall (the default: measured fastest
        /// here) or sled. Kept for the database's life. Default: the
        /// ETP_STORE environment variable, else fjall.
        #[arg(long, value_name = "ENGINE")]
        store: Option<propagator::Engine>,
    },
    /// Verify every protection-log frame and every file's digest (exit 1 on damage).
    Check {
        #[command(flatten)]
        data: DataArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the database's files and log position.
    Status {
        #[command(flatten)]
        data: DataArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a database whose page store will not open (damaged, deleted,
    /// its disk lost), without opening it: from the newest copy set of each
    /// of its files rolled forward with its protection log (live and
    /// archived segments together, each verified), or from the log alone
    /// when it reaches back to LSN 1. Exit 1 when commits after the
    /// recovered LSN were lost (named with their files).
    Recover {
        /// The damaged database's directory (its node stopped).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The copy area (copy sets and archived log segments).
        #[arg(long, value_name = "DIR")]
        area: Option<PathBuf>,
        /// Recover into this new directory; without it the database is
        /// recovered beside DIR and swapped into its place, the damaged
        /// directory kept as DIR.damaged-TIME.
        #[arg(long, value_name = "NEWDIR")]
        into: Option<PathBuf>,
        /// Stop at this LSN.
        #[arg(long, value_name = "LSN", group = "until")]
        to_lsn: Option<u64>,
        /// Stop after the last commit at or before this RFC 3339 time.
        #[arg(long, value_name = "TIME", group = "until")]
        to_time: Option<String>,
        /// Stop at the last commit before the first damage in the log
        /// (the commits after it are named as lost).
        #[arg(long, group = "until")]
        to_last_good: bool,
        /// With --to-last-good: re-apply the client transactions read whole
        /// after the damage as new transactions (with their client ids),
        /// each only if every record it changed still holds what it found
        /// then; the others are named.
        #[arg(long, requires = "to_last_good")]
        reapply: bool,
        /// Print JSON (progress events, then the result) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum FileCommand {
    /// Create a file.
    Create {
        #[command(flatten)]
        data: DataArgs,
        /// The file number (1 to 2^32-1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        file: u32,
        /// The file's name.
        #[arg(long)]
        name: String,
        /// plain, replicate, confirmation or administration.
        #[arg(long, default_value = "plain")]
        role: String,
    },
    /// List the files with their roles, counts and digests.
    List {
        #[command(flatten)]
        data: DataArgs,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a file as JSON lines {"isn":…,"fields":{…}} in ascending isn.
    Dump {
        #[command(flatten)]
        target: TargetArgs,
        /// The file number.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        file: u32,
        /// With --node: read a replicate that serves no current reads (it
        /// is restored and not caught up, shunned or in error at its
        /// master, or being loaded) rather than being refused.
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Subcommand)]
pub enum MasterCommand {
    /// Make a plain file a master with its ETP log file (created if missing).
    Define {
        #[command(flatten)]
        data: DataArgs,
        /// The file number of the plain file that becomes the master.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        file: u32,
        /// The file number of its ETP log file.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        log: u32,
    },
    /// A master's incarnation: the history its seqs belong to.
    #[command(subcommand)]
    Incarnation(IncarnationCommand),
    /// Failover: make the freshest full replicate of a master the master
    /// (its own log from the seq it confirms, a raised incarnation), quiesce
    /// the old master if it answers, rewrite and apply the topology, reload
    /// the replicates that cannot go on from there, and name the seqs lost.
    Promote {
        /// The full replicate to promote.
        replicate: String,
        #[command(flatten)]
        node: NodeArgs,
        /// The new master's log file number (default: the first free number
        /// on its database).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        log: Option<u32>,
        /// Print the plan (and the new topology) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for each reload and check, in seconds.
        #[arg(long, value_name = "S", default_value_t = 600)]
        wait_s: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum IncarnationCommand {
    /// Raise a master's incarnation through its running node, so the seqs
    /// it gives out from now on are never mistaken for ones its replicates
    /// confirmed before (after setting the master back by hand). Its
    /// task's feeders stop while it is raised and start again if they ran;
    /// a replicate ahead of the master is then found at its link open.
    Raise {
        #[command(flatten)]
        node: NodeArgs,
        /// The master's file number.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        master: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ExecArgs {
    /// The database's data directory (the database must not be open in a node).
    #[arg(long, value_name = "DIR", conflicts_with = "node")]
    pub data: Option<PathBuf>,
    /// A running node's address (host:port; a host name is resolved).
    #[arg(long, value_name = "ADDR", value_parser = address)]
    pub node: Option<std::net::SocketAddr>,
    /// Keep a durable local journal of the transactions in DIR (with --node):
    /// each is synced there before it is sent, and one the node did not
    /// acknowledge (unreachable, connection lost) is rerun, exactly once by
    /// its transaction id, first by this command and else by the next
    /// `etp exec --journal DIR`.
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// How long to keep retrying an unreachable node (capped backoff) before
    /// exiting 1 with the rest pending [default: 30].
    #[arg(long, value_name = "SECS", requires = "journal")]
    pub retry_for: Option<f64>,
    /// Only rerun the journal's pending transactions; read no input.
    #[arg(long, requires = "journal", requires = "node")]
    pub rerun: bool,
    /// Transactions in flight at once with --node: each whole transaction
    /// of writes is sent without waiting for the answers to the ones before
    /// it (results still print in input order, and the run still stops at
    /// the first failure with nothing after it committed). 1 sends one
    /// command at a time.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub pipeline: u16,
    /// List the journal's pending transactions (exit 0 if none, 1 if some).
    #[arg(long, requires = "journal", conflicts_with_all = ["data", "rerun"])]
    pub status: bool,
    /// With --status: one JSON document.
    #[arg(long, requires = "status")]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum LogCommand {
    /// Print the log records of a master.
    Show {
        #[command(flatten)]
        data: DataArgs,
        /// The master's file number.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        master: u32,
        /// First seq to show.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Show at most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Print JSON (one document per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// What log cleanup may delete: per master, what every replicate has
    /// durably confirmed, the copy horizon, and for --until which replicates
    /// would need a reinit and which copies would lose their roll-forward path.
    PlanCleanup(CleanupArgs),
    /// Delete what the plan allows (never past a durable confirmation or the
    /// master's most recent catalogued copy).
    Cleanup(CleanupArgs),
}

#[derive(Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// A copy area whose replicate copies the plan names when a cleanup
    /// would strand them (what may be deleted is bounded by the newest
    /// master copy in each node's own --copy-area, never by this one).
    #[arg(long, value_name = "DIR")]
    pub area: Option<PathBuf>,
    /// Only this master (its file number; default every master).
    #[arg(long)]
    pub master: Option<u32>,
    /// Delete only through this seq (default: as far as the rules allow).
    #[arg(long)]
    pub until: Option<u64>,
    /// Print JSON (one document per line) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Raw fdatasync rate vs durable commits with 1 and 16 clients.
    Commit {
        /// Where to put the benchmark's files (a fresh directory is made inside).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Seconds per phase.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Rounds of (raw fdatasync, 1 client, 16 clients), interleaved so
        /// each ratio compares phases a few seconds apart; the medians are
        /// reported (the disk's rate drifts several-fold from minute to minute).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: u32,
        /// The page store's engine for the benchmark's databases (default:
        /// ETP_STORE, else fjall).
        #[arg(long, value_name = "ENGINE")]
        store: Option<propagator::Engine>,
    },
    /// End-to-end propagation on three node processes, with pg_peer.sh's
    /// phases and metric names (N, B, M, M_PACED, PACE_MS from the
    /// environment; ETP_BENCH_LAG_DUMP=DIR keeps every lag sample in
    /// DIR/lag-REPLICATE-SET.txt).
    Propagate {
        /// Where to put the nodes' databases (default: a temporary directory
        /// under BENCH_TMPDIR, TMPDIR or /tmp).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// The page store's engine for the benchmark's databases (default:
        /// ETP_STORE, else fjall).
        #[arg(long, value_name = "ENGINE")]
        store: Option<propagator::Engine>,
    },
    /// Copy throughput of a master (no load, write load) next to the disk's
    /// sequential write rate, and restore + regenerate time.
    Copy {
        /// Where to put the benchmark's files (a fresh directory is made inside).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Records in the master (about 1 KiB each).
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        /// Changes committed after the copy, rolled forward by regenerate.
        #[arg(long, default_value_t = 100_000)]
        changes: u64,
        /// The page store's engine for the benchmark's databases (default:
        /// ETP_STORE, else fjall).
        #[arg(long, value_name = "ENGINE")]
        store: Option<propagator::Engine>,
        /// Keep the benchmark's directory (its database and copy area) and
        /// print where it is, to restore or profile the set again.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the demo's databases here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Transactions in the workload.
    #[arg(long, default_value_t = 2000)]
    pub transactions: u64,
}

/// `docs/CLI.md`: every subcommand and option of `etp`, from clap's own
/// description of the command line, so the page cannot drift from the binary.
#[cfg(test)]
pub(crate) fn markdown() -> String {
    use clap::CommandFactory;
    let mut out = String::from(
        "# etp command line\n\n\
         Every subcommand and option of `etp`, as `etp --help` describes them.\n\
         Generated by a test from the binary's own argument definitions\n\
         (`ETP_BLESS=1 cargo test -p maintenance --bin etp cli_doc` rewrites it);\n\
         `docs/REFERENCE.md` explains what the commands do.\n",
    );
    let mut cmd = Cli::command();
    cmd.build();
    section(&cmd, "etp", &mut out);
    out
}

#[cfg(test)]
fn section(cmd: &clap::Command, path: &str, out: &mut String) {
    let one_line = |s: Option<&clap::builder::StyledStr>| {
        s.map(|t| {
            t.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
    };
    out.push_str(&format!("\n## `{path}`\n\n"));
    let about = one_line(cmd.get_long_about().or(cmd.get_about()));
    if !about.is_empty() {
        out.push_str(&format!("{about}\n\n"));
    }
    // Global arguments (the certificates) are listed once, under `etp`.
    let top = path == "etp";
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|a| top || !a.is_global_set())
        .collect();
    if !args.is_empty() {
        out.push_str("| argument | meaning |\n|---|---|\n");
        for a in args {
            let value = a
                .get_value_names()
                .map(|v| {
                    v.iter()
                        .map(|n| format!("<{n}>"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
            let name = match (a.get_long(), a.get_short()) {
                (Some(l), _) if takes_value => format!("--{l} {value}"),
                (Some(l), _) => format!("--{l}"),
                (None, Some(s)) => format!("-{s}"),
                (None, None) => value,
            };
            let mut help = one_line(a.get_help());
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().to_string())
                .collect();
            if takes_value && !defaults.is_empty() {
                help.push_str(&format!(" (default: {})", defaults.join(", ")));
            }
            out.push_str(&format!(
                "| `{}` | {} |\n",
                name.trim(),
                help.trim().replace('|', "\\|")
            ));
        }
    }
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        section(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[cfg(test)]
mod tests {
    /// `docs/CLI.md` is what the binary's argument definitions say: a new or
    /// changed subcommand or option fails here until the page is rewritten.
    #[test]
    fn cli_doc_lists_every_subcommand_and_option() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CLI.md");
        let want = super::markdown();
        if std::env::var_os("ETP_BLESS").is_some() {
            std::fs::write(&path, &want).expect("writing docs/CLI.md");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/CLI.md is not what `etp --help` says; rewrite it with \
             ETP_BLESS=1 cargo test -p maintenance --bin etp cli_doc"
        );
        // The page names every subcommand path.
        use clap::CommandFactory;
        fn paths(c: &clap::Command, p: &str, out: &mut Vec<String>) {
            for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
                let q = format!("{p} {}", s.get_name());
                out.push(q.clone());
                paths(s, &q, out);
            }
        }
        let mut all = Vec::new();
        paths(&super::Cli::command(), "etp", &mut all);
        assert!(all.len() > 40, "{all:?}");
        for p in all {
            assert!(have.contains(&format!("## `{p}`")), "{p} is missing");
        }
    }
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    /// Every subcommand and every option says what it is for: a user reads
    /// `--help`, not the source.
    #[test]
    fn every_command_and_option_has_help_text() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", a.get_long().unwrap_or(id)));
                }
            }
            for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
                let p = format!("{path} {}", s.get_name());
                if s.get_about().is_none() && s.get_long_about().is_none() {
                    missing.push(p.clone());
                }
                walk(s, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "etp", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }
}
