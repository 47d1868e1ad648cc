//! Trust: mutual TLS and roles between real node processes. Each refusal
//! is checked to change nothing and to leave the node serving.

use etp_system_tests::{certs, credentials, etp_bin, etp_command, wait_for};
use maintenance::cluster::{Cluster, MASTER};
use propagator::net::Transport;
use propagator::node::client::{Client, ClientError};
use propagator::record::encode_record;
use propagator::wire::{
    AdminRequest, Command, ErrorCode, LinkRequest, OperationRequest, ReadRequest, RecoveryOp,
    Request, Response, SessionRequest,
};
use propagator::{DbId, Fnr, Record, Value};
use serde_bytes::ByteBuf;
use std::net::SocketAddr;
use std::time::Duration;

fn as_(name: &str) -> Transport {
    Transport::Tls(credentials(name))
}

fn count(addr: SocketAddr, file: Fnr) -> u64 {
    match Client::connect(addr)
        .expect("connect")
        .call(&Request::Read(ReadRequest::FileStat { file }))
        .expect("FileStat")
    {
        Response::Stat { count, .. } => count,
        other => panic!("{other:?}"),
    }
}

/// The topology text the node at `addr` holds.
fn exported(addr: SocketAddr) -> String {
    match Client::connect(addr)
        .expect("connect")
        .call(&Request::Admin(AdminRequest::AdminExport))
    {
        Ok(Response::Text(t)) => t,
        other => panic!("AdminExport: {other:?}"),
    }
}

fn store_txn(id: i64) -> Request {
    let mut r = Record::new();
    r.insert("id".into(), Value::Int(id));
    r.insert("grp".into(), Value::Int(0));
    r.insert("qty".into(), Value::Int(1));
    Request::Session(SessionRequest::Batch(vec![
        Command::Store {
            file: MASTER,
            isn: None,
            fields: ByteBuf::from(encode_record(&r).expect("encode")),
        },
        Command::Et { id: None },
    ]))
}

/// The refusal `r` is, asserting it is one: code `NotAllowed`, a message
/// naming the request kind and the certificate.
fn refused(r: Result<Response, ClientError>, kind: &str, who: &str) -> String {
    match r {
        Err(ClientError::Remote { code, message, .. }) => {
            assert_eq!(code, ErrorCode::NotAllowed, "{message}");
            assert!(
                message.contains(kind) && message.contains(who),
                "the refusal names the request and the certificate: {message}"
            );
            message
        }
        other => panic!("{kind} by {who} was not refused: {other:?}"),
    }
}

/// Each certificate gets what its role allows and nothing else: a read
/// certificate cannot write, a write one cannot change the topology or
/// stop writes, an admin cannot open a replication link, and database 2's
/// node cannot open a link as the master of database 3's replicate. Nothing
/// a refused request asked for happens; every refusal is logged with the
/// certificate's name, and the node keeps serving.
#[test]
fn each_role_gets_only_what_it_is_allowed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let m = cl.master().addr;
    let before = count(m, MASTER);

    // read: reads, and no session.
    let mut reader = Client::connect_with(m, &as_("reader")).expect("reader connects");
    assert!(matches!(
        reader.call(&Request::Read(ReadRequest::Info)),
        Ok(Response::Info(_))
    ));
    let msg = refused(reader.call(&store_txn(1)), "session", "reader");
    assert!(msg.contains("write"), "{msg}");
    // Verifying stops a replicate's feeder while it compares: not a read.
    refused(
        reader.call(&Request::Operation(OperationRequest::Replicate {
            name: "items_full".into(),
            action: propagator::wire::ReplicateAction::Verify { max_isns: 10 },
        })),
        "Replicate Verify",
        "reader",
    );

    // write: sessions, and no administration.
    let mut writer = Client::connect_with(m, &as_("writer")).expect("writer connects");
    assert!(matches!(
        writer.call(&store_txn(2)),
        Ok(Response::Committed(_))
    ));
    let topology = std::fs::read_to_string(tmp.path().join("topology.toml")).expect("topology");
    let evil = topology.replace("name = \"items_full\"", "name = \"stolen\"");
    refused(
        writer.call(&Request::Admin(AdminRequest::AdminInstall {
            topology: evil.clone(),
            expect: None,
        })),
        "AdminInstall",
        "writer",
    );
    refused(
        writer.call(&Request::Recovery(RecoveryOp::Quiesce { on: true })),
        "recovery step",
        "writer",
    );
    refused(
        writer.call(&Request::Operation(OperationRequest::LogCleanup {
            master: None,
            until: None,
            execute: true,
        })),
        "LogCleanup execute",
        "writer",
    );
    // A node's certificate cannot install a topology either.
    refused(
        Client::connect_with(m, &as_("db2"))
            .expect("db2 connects")
            .call(&Request::Admin(AdminRequest::AdminInstall {
                topology: evil,
                expect: None,
            })),
        "AdminInstall",
        "db2",
    );

    // Links: only a node's certificate, only as its own database, only
    // for what the topology says.
    let part_node = cl.nodes[2].addr;
    let open = |master_db: u32| {
        Request::Link(LinkRequest::LinkOpen {
            replicate: "items_part".into(),
            file: Fnr(30),
            confirmation: Fnr(31),
            master_db: DbId(master_db),
            master: MASTER,
        })
    };
    refused(
        Client::connect_with(part_node, &as_("admin"))
            .expect("admin connects")
            .call(&open(1)),
        "replication link",
        "admin",
    );
    let mut db2 = Client::connect_with(part_node, &as_("db2")).expect("db2 connects");
    let r = db2.call(&open(1));
    match &r {
        Err(ClientError::Remote { code, message, .. }) => {
            assert_eq!(*code, ErrorCode::NotAllowed, "{message}");
            assert!(
                message.contains("cannot open a link as database 1"),
                "{message}"
            );
        }
        other => panic!("db2 opened a link as database 1: {other:?}"),
    }
    let r = db2.call(&open(2));
    match &r {
        Err(ClientError::Remote { code, message, .. }) => {
            assert_eq!(*code, ErrorCode::NotAllowed, "{message}");
            assert!(message.contains("the topology has it as"), "{message}");
        }
        other => panic!("db2 opened a link the topology does not give it: {other:?}"),
    }

    // Nothing changed: the writer's one commit, no quiesce, the topology
    // as applied, and the nodes still serve (the master's task still
    // feeds both replicates).
    assert_eq!(count(m, MASTER), before + 1);
    assert_eq!(exported(m), topology);
    let mut admin = Client::connect(m).expect("admin connects");
    assert!(matches!(
        admin.call(&store_txn(3)),
        Ok(Response::Committed(_))
    ));
    wait_for(
        "both replicates to hold the new records",
        Duration::from_secs(30),
        || (count(cl.nodes[1].addr, Fnr(20)) == before + 2).then_some(()),
    );
    // Logged with the certificate's name.
    let log = std::fs::read_to_string(cl.master().data.with_extension("node.log")).expect("log");
    for who in ["reader", "writer", "db2"] {
        assert!(
            log.lines().any(|l| l.contains("request refused")
                && l.contains(&format!("certificate={who}"))),
            "the master's log names {who}'s refusal:\n{log}"
        );
    }
}

/// A certificate from another authority, and a client without one, are
/// refused at the handshake; the node keeps serving its own.
#[test]
fn a_stranger_is_refused_at_the_handshake() {
    use propagator::net::{cert, Identity, Role, Tls};
    let tmp = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let m = cl.master().addr;
    let other = tmp.path().join("other-ca");
    cert::init(&other, "other").expect("another authority");
    let id = Identity {
        name: "admin".into(),
        role: Role::Admin,
        db: None,
    };
    cert::issue(&other, &id, 1).expect("issue");
    // It trusts the cluster's authority (so it accepts the node), and
    // presents a certificate of another: the node must refuse it.
    let stranger = Tls::load(
        &certs().join("ca.crt"),
        &other.join("admin.crt"),
        &other.join("admin.key"),
    )
    .expect("load");
    let r = Client::connect_with(m, &Transport::Tls(std::sync::Arc::new(stranger)))
        .and_then(|mut c| c.call(&Request::Read(ReadRequest::Info)));
    assert!(
        r.is_err(),
        "a certificate of another authority was served: {r:?}"
    );
    // A TLS client with no certificate at all.
    {
        use std::io::{Read, Write};
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(certs().join("ca.crt")).expect("ca");
        use rustls::pki_types::pem::PemObject;
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&ca).expect("pem"))
            .expect("root");
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            #[allow(deprecated)]
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = std::net::TcpStream::connect(m).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let name = rustls::pki_types::ServerName::try_from(propagator::net::NODE_SERVER_NAME)
            .expect("name");
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("conn");
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let _ = s.write_all(&[0, 0, 0, 1, 0xc0]);
        let _ = s.flush();
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        assert!(
            !matches!(r, Ok(n) if n > 0),
            "a client without a certificate was answered: {r:?}"
        );
    }
    // Plain TCP to a TLS node: refused, with a hint.
    let plain = Client::connect_with(m, &Transport::PlainLoopback)
        .and_then(|mut c| c.call(&Request::Read(ReadRequest::Info)));
    match plain {
        Err(e) => assert!(e.to_string().contains("does the node serve TLS"), "{e}"),
        Ok(r) => panic!("plain TCP was answered: {r:?}"),
    }
    // The node serves its own.
    let info = Client::connect(m).and_then(|mut c| c.call(&Request::Read(ReadRequest::Info)));
    assert!(matches!(info, Ok(Response::Info(_))), "{info:?}");
    let log = std::fs::read_to_string(cl.master().data.with_extension("node.log")).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains("connection refused") && l.contains("handshake")),
        "the refused handshakes are logged:\n{log}"
    );
}

/// A node serves TLS with its own database's certificate, or plain TCP
/// when told so by name, and on loopback only; anything else is refused
/// at start, naming why.
#[test]
fn a_node_starts_only_with_its_own_certificate_or_explicit_plain_loopback() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("d1");
    let out = etp_command()
        .args(["db", "init", "--dbid", "1", "--data"])
        .arg(&data)
        .output()
        .expect("db init");
    assert!(out.status.success());
    let start = |args: &[&str], env: bool| {
        let mut c = if env {
            etp_command()
        } else {
            std::process::Command::new(etp_bin())
        };
        c.args(["node", "run", "--data"])
            .arg(&data)
            .args(args)
            .env_remove("ETP_CERTS")
            .output()
            .expect("node run")
    };
    let refused_with = |out: std::process::Output, want: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{want:?} not in: {err}");
    };
    // No certificates at all.
    refused_with(
        start(&["--listen", "127.0.0.1:0"], false),
        "no certificates: give --certs DIR",
    );
    // Another database's certificate, and a client's.
    let d = certs();
    let ca = d.join("ca.crt");
    for (name, why) in [
        ("db2", "this data directory holds database 1"),
        ("admin", "a node serves with a replication certificate"),
    ] {
        let (crt, key) = (d.join(format!("{name}.crt")), d.join(format!("{name}.key")));
        let files = [&ca, &crt, &key].map(|p| p.to_str().expect("utf-8").to_string());
        refused_with(
            start(
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--ca",
                    &files[0],
                    "--cert",
                    &files[1],
                    "--key",
                    &files[2],
                ],
                false,
            ),
            why,
        );
    }
    // A certificate directory without this database's certificate.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    refused_with(
        start(
            &[
                "--listen",
                "127.0.0.1:0",
                "--certs",
                empty.to_str().expect("utf-8"),
            ],
            false,
        ),
        "no certificate for database 1",
    );
    // Plain TCP off loopback.
    refused_with(
        start(&["--listen", "0.0.0.0:0", "--insecure-loopback"], true),
        "is not a loopback address",
    );
    // Plain TCP on loopback, asked for by name: it serves, plainly.
    use std::io::BufRead;
    let mut child = etp_command()
        .args(["node", "run", "--data"])
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--insecure-loopback"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node run");
    let stdout = child.stdout.take().expect("stdout");
    let _guard = etp_system_tests::KillGuard(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .expect("listening")
        .parse()
        .expect("addr");
    let info = Client::connect_with(addr, &Transport::PlainLoopback)
        .and_then(|mut c| c.call(&Request::Read(ReadRequest::Info)));
    assert!(matches!(info, Ok(Response::Info(_))), "{info:?}");
    // And a TLS client finds no TLS there, and says so.
    let r = Client::connect_with(addr, &as_("admin"));
    assert!(
        matches!(&r, Err(ClientError::Connect { reason, .. }) if reason.contains("TLS")),
        "{:?}",
        r.err()
    );
}

/// A database is its owner's: `etp db init` makes the data directory and
/// its log 0700 and every file 0600, the node's page store too; a node
/// refuses a data directory others can write, naming it.
#[test]
fn data_directories_are_private_and_a_shared_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("d1");
    let out = etp_command()
        .args(["db", "init", "--dbid", "1", "--data"])
        .arg(&data)
        .output()
        .expect("db init");
    assert!(out.status.success());
    let (mut guard, addr) =
        etp_system_tests::start_node(&data, Some("127.0.0.1:0"), &tmp.path().join("n.log"));
    let mut c = Client::connect(addr).expect("connect");
    assert!(matches!(
        c.call(&Request::Read(ReadRequest::Info)),
        Ok(Response::Info(_))
    ));
    guard.kill();
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let mut seen = 0;
    let mut walk = vec![data.clone()];
    while let Some(d) = walk.pop() {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                seen += 1;
            }
        }
    }
    assert!(
        seen >= 3,
        "the identity, a log segment and the store's files"
    );
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = etp_command()
        .args(["node", "run", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .expect("node run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("writable by others") && err.contains("mode 0777"),
        "{err}"
    );
}

/// `VmSize` and `VmRSS` of a process, in kB.
fn vm(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("a VM figure")
    };
    (get("VmSize:"), get("VmRSS:"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A cluster whose master runs with `args` and serves metrics: the
/// cluster, the master's address, pid and metrics address.
fn bounded_cluster(tmp: &std::path::Path, args: &[&str]) -> (Cluster, SocketAddr, u32, SocketAddr) {
    let mut all = args.to_vec();
    all.extend(["--metrics", "127.0.0.1:0"]);
    let cl = Cluster::start_with_args(etp_bin(), tmp, &all, |a| {
        maintenance::cluster::topology_text(a, Some(1))
    })
    .expect("cluster");
    let m = cl.master().addr;
    let pid = cl.master().pid().expect("pid");
    let metrics = cl.master().metrics.expect("metrics address");
    (cl, m, pid, metrics)
}

/// Bounded resources. 2,000 sockets that never handshake against a node
/// with the default limit of 256: the node holds at most its handshake
/// pool of them, an established session keeps committing throughout, a
/// client from another address gets in at once (one address holds at
/// most its share of the handshakes), and the database is never poisoned.
#[test]
fn a_flood_of_sockets_leaves_the_node_bounded_and_committing() {
    // This process opens 2,000 sockets: its own descriptor limit first.
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut l = getrlimit(Resource::Nofile);
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cl, m, pid, metrics) = bounded_cluster(tmp.path(), &[]);
    let mut c = Client::connect(m).expect("connect");
    let before = count(m, MASTER);
    let fds_before = open_fds(pid);
    let mut flood = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = std::net::TcpStream::connect(m) {
            flood.push(s);
        }
    }
    assert!(flood.len() > 1000, "{} sockets opened", flood.len());
    // Another address gets in at once: the flood holds only its own
    // address's share of the handshakes.
    let mut other = etp_system_tests::tls_connect_from([127, 0, 0, 2].into(), m, "writer");
    let r = etp_system_tests::raw_call(&mut other, &store_txn(500));
    assert!(
        matches!(r, Response::Committed(_)),
        "a client from another address during the flood: {r:?}"
    );
    for i in 0..20 {
        let r = c.call(&store_txn(100 + i));
        assert!(
            matches!(r, Ok(Response::Committed(_))),
            "commit {i} during the flood: {r:?}"
        );
    }
    let fds = open_fds(pid);
    assert!(
        fds <= fds_before + 64 + 8,
        "the node holds {fds} descriptors ({fds_before} before the flood): more than its handshake pool"
    );
    let text = crate::metrics::scrape(metrics).expect("scrape");
    let refused = crate::metrics::value(&text, "etp_connections_refused_total{reason=\"per_ip\"}")
        .expect("refusals counted");
    assert!(refused >= 1000.0, "{refused} refusals counted:\n{text}");
    drop(flood);
    // A new client gets in once the handshakes time out, and commits.
    let mut late = wait_for(
        "a new connection after the flood",
        Duration::from_secs(30),
        || Client::connect(m).ok(),
    );
    assert!(matches!(
        late.call(&store_txn(999)),
        Ok(Response::Committed(_))
    ));
    assert_eq!(count(m, MASTER), before + 22);
    drop(cl);
}

/// 300 authenticated connections each sending only a frame header that
/// declares 150 MiB, against a node serving 512: nothing is reserved for
/// them (the node's address space and RSS stay bounded) and commits go on;
/// a `read` client's header over its 72 MiB limit closes its connection
/// at once.
#[test]
fn frame_headers_reserve_nothing_and_a_clients_oversized_frame_is_refused() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_cl, m, pid, metrics) = bounded_cluster(tmp.path(), &["--max-connections", "512"]);
    let mut c = Client::connect(m).expect("connect");
    // Header-only frames from authenticated clients.
    let (size0, rss0) = vm(pid);
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut s = etp_system_tests::tls_connect(m);
        s.write_all(&(150u32 << 20).to_be_bytes()).expect("header");
        s.flush().expect("flush");
        held.push(s);
    }
    wait_for("300 connections served", Duration::from_secs(60), || {
        let t = crate::metrics::scrape(metrics).ok()?;
        (crate::metrics::value(&t, "etp_connections")? >= 300.0).then_some(())
    });
    let (size1, rss1) = vm(pid);
    assert!(
        size1.saturating_sub(size0) < 2 << 20 && rss1.saturating_sub(rss0) < 300 << 10,
        "300 headers of 150 MiB: address space {size0} -> {size1} kB, RSS {rss0} -> {rss1} kB"
    );
    assert!(matches!(
        c.call(&store_txn(1000)),
        Ok(Response::Committed(_))
    ));
    drop(held);

    // A read client's frame over its limit ends its connection.
    let mut r = etp_system_tests::tls_connect_as(m, "reader");
    // Over a client's limit (72 MiB), under a link's (160 MiB).
    r.write_all(&(100u32 << 20).to_be_bytes()).expect("header");
    r.flush().expect("flush");
    let mut buf = [0u8; 16];
    let t0 = std::time::Instant::now();
    let got = r.read(&mut buf);
    assert!(
        matches!(got, Ok(0))
            || matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
        "the connection is closed, nothing answered: {got:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "closed at once, not timed out"
    );
}

/// A predicate over the cost limit is refused when the topology is
/// applied, naming the limit, by `etp admin apply` and by a node asked
/// directly; nothing changes.
#[test]
fn a_predicate_over_the_cost_limit_is_refused_at_apply() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let m = cl.master().addr;
    let topology = std::fs::read_to_string(tmp.path().join("topology.toml")).expect("topology");
    let list = (0..150)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let costly = format!("[{list}].all(a, [{list}].all(b, a + b + qty > -1))");
    let before = "predicate = \"grp % 4 == 0 && qty > 10\"";
    assert!(topology.contains(before), "{topology}");
    let bad = topology.replace(before, &format!("predicate = \"{costly}\""));
    let file = tmp.path().join("costly.toml");
    std::fs::write(&file, &bad).expect("write");
    let out = etp_system_tests::etp(&[
        "admin",
        "apply",
        "--node",
        &m.to_string(),
        file.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cost limit") && err.contains("nest 2"),
        "{err}"
    );
    let r =
        Client::connect(m)
            .expect("connect")
            .call(&Request::Admin(AdminRequest::AdminPrepare {
                topology: bad,
            }));
    match r {
        Err(ClientError::Remote { message, .. }) => {
            assert!(message.contains("cost limit"), "{message}")
        }
        other => panic!("the node took a costly predicate: {other:?}"),
    }
    assert_eq!(exported(m), topology);
}

/// A node that accepts, completes its handshake and then says nothing:
/// `etp admin apply` fails within its timeout, naming the database and
/// the call, and changes nothing; an apply right after goes through.
#[test]
fn a_silent_peer_fails_an_apply_within_its_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::Read;
                let mut s = etp_system_tests::tls_accept(s, 3);
                let mut b = [0u8; 1024];
                while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            });
        }
    });
    let topology = std::fs::read_to_string(tmp.path().join("topology.toml")).expect("topology");
    let moved = topology.replace(&cl.nodes[2].addr.to_string(), &silent.to_string());
    assert_ne!(moved, topology);
    let file = tmp.path().join("moved.toml");
    std::fs::write(&file, &moved).expect("write");
    let t0 = std::time::Instant::now();
    let out = etp_system_tests::etp(&[
        "admin",
        "apply",
        "--timeout-s",
        "2",
        file.to_str().expect("utf-8"),
    ]);
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("nothing changed")
            && err.contains("database 3")
            && err.contains("no answer to Info within 2.0 s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    for n in &cl.nodes[..2] {
        assert_eq!(exported(n.addr), topology, "database {} changed", n.dbid);
    }
    let same = tmp.path().join("same.toml");
    std::fs::write(&same, &topology).expect("write");
    let out = etp_system_tests::etp(&["admin", "apply", same.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two applies at once cannot leave nodes with different topologies:
/// an install names the topology its apply's prepare saw, and a node
/// that holds another by then (the other apply installed first) refuses
/// it, changing nothing.
#[test]
fn an_install_after_another_applys_is_refused() {
    use propagator::wire::topology_digest;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let m = cl.master().addr;
    let first = std::fs::read_to_string(tmp.path().join("topology.toml")).expect("topology");
    let seen = topology_digest(Some(&first));
    let second = first.replace("restart_interval_s = 1", "restart_interval_s = 2");
    let third = first.replace("restart_interval_s = 1", "restart_interval_s = 3");
    assert!(second != first && third != first);
    let mut c = Client::connect(m).expect("connect");
    let install = |c: &mut Client, text: &str| {
        c.call(&Request::Admin(AdminRequest::AdminInstall {
            topology: text.to_string(),
            expect: Some(seen.clone()),
        }))
    };
    // Both applies saw `first`; the second to install loses.
    assert!(matches!(install(&mut c, &second), Ok(Response::Ok)));
    match install(&mut c, &third) {
        Err(ClientError::Remote { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Refused, "{message}");
            assert!(message.contains("another apply ran meanwhile"), "{message}");
        }
        other => panic!("an install over another apply's went through: {other:?}"),
    }
    assert_eq!(exported(m), second);
}

/// The node decides where copies go: a copy is written only into a set
/// directory claimed in the node's own copy area; set ids are checked
/// wherever they come from outside (a request, a command line, a catalog
/// entry); copy jobs cannot name another area; and a catalog entry whose id
/// is a path makes its job's retention remove nothing, least of all
/// outside the area. The node keeps serving throughout.
#[test]
fn copies_go_only_into_the_nodes_own_area_and_no_set_id_names_a_path() {
    use etp_system_tests::{etp, ok};
    use propagator::wire::CopyRequest;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cl = Cluster::start(etp_bin(), tmp.path(), Some(1)).expect("cluster");
    let m = cl.nodes[0].addr;
    let m_s = m.to_string();
    let area = tmp.path().join("area");
    let area_s = area.display().to_string();
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).expect("victim");
    std::fs::write(victim.join("keep"), b"x").expect("victim file");
    let mut c = Client::connect(m).expect("connect");
    for i in 1..=20 {
        c.call(&store_txn(i)).expect("store");
    }
    let untouched = |what: &str| {
        let names: Vec<_> = std::fs::read_dir(&victim)
            .expect("victim")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["keep"], "{what}");
    };

    // A set id that is a path, or a set not claimed in the node's area: the
    // admin's CopyTake is refused by name and writes nothing anywhere.
    for set in ["../../victim", "../victim", "20200101T000000Z-001"] {
        match Client::connect(m)
            .expect("connect")
            .call(&Request::Copy(CopyRequest::CopyTake {
                files: vec![MASTER],
                set: set.into(),
            })) {
            Err(ClientError::Remote { code, message, .. }) => {
                assert_eq!(code, ErrorCode::Refused, "{message}");
                assert!(
                    message.contains("not a copy set id") || message.contains("was not claimed"),
                    "{set}: {message}"
                );
            }
            other => panic!("CopyTake {set}: {other:?}"),
        }
    }
    untouched("CopyTake");
    let data: Vec<_> = std::fs::read_dir(area.join("data"))
        .expect("area data")
        .collect();
    assert!(data.is_empty(), "nothing written in the area: {data:?}");

    // A real set, taken through the node into its area.
    let out = ok(&etp(&[
        "copy", "take", "--node", &m_s, "--area", &area_s, "--file", "10", "--json",
    ]));
    let id = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["set"]["id"].as_str().map(String::from))
        .expect("the set's id");
    // A restore named by a path is refused by name.
    let out = etp(&[
        "copy",
        "restore",
        &format!("../sets/{id}"),
        "--area",
        &area_s,
        "--to",
        &tmp.path().join("restored").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a copy set id"),
        "{out:?}"
    );

    // Copy jobs naming another area are refused by the node, naming its own.
    let jobs = |area_line: &str| {
        let f = tmp.path().join("jobs.toml");
        std::fs::write(
            &f,
            format!("{area_line}[[job]]\nname = \"j\"\ncron = \"* * * * * *\"\nkeep = 1\n[[job.set]]\ndatabase = 1\nfiles = [10]\n"),
        )
        .expect("jobs");
        etp(&[
            "copy",
            "jobs",
            "set",
            &f.display().to_string(),
            "--node",
            &m_s,
        ])
    };
    let out = jobs(&format!("area = {:?}\n", victim.display().to_string()));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("copy jobs refused") && err.contains(&area_s),
        "{err}"
    );
    assert!(ok(&etp(&["copy", "jobs", "show", "--node", &m_s])).contains("no copy jobs"));

    // A catalog entry under a set id's name whose id is a path, then a job
    // every second keeping one run: the entry is left out of the catalog
    // (named as damaged when asked for), the job's runs and retention go
    // on, and nothing outside the area is removed.
    let real: serde_json::Value = serde_json::from_slice(
        &std::fs::read(area.join("sets").join(format!("{id}.json"))).expect("entry"),
    )
    .expect("json");
    let mut forged = real.clone();
    forged["id"] = serde_json::json!("../../victim");
    forged["job"] = serde_json::json!("j");
    std::fs::write(
        area.join("sets").join("20200101T000000Z-001.json"),
        forged.to_string(),
    )
    .expect("forge");
    ok(&jobs(""));
    let history = || {
        ok(&etp(&[
            "copy", "jobs", "history", "--area", &area_s, "--json",
        ]))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect::<Vec<_>>()
    };
    let runs = wait_for(
        "two runs, the second with retention",
        Duration::from_secs(30),
        || {
            let ok: Vec<_> = history()
                .into_iter()
                .filter(|r| r["ok"] == true && r["error"].is_null())
                .collect();
            (ok.len() >= 2).then_some(ok)
        },
    );
    assert!(
        runs.iter()
            .any(|r| r["dropped"].as_array().is_some_and(|d| !d.is_empty())),
        "retention dropped the older run: {runs:?}"
    );
    untouched("retention");
    let out = etp(&["copy", "show", "20200101T000000Z-001", "--area", &area_s]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is damaged"),
        "{out:?}"
    );
    ok(&etp(&["copy", "jobs", "set", "/dev/null", "--node", &m_s]));
    // The node kept serving.
    c.call(&store_txn(21)).expect("store after");
    assert_eq!(count(m, MASTER), 21);
}
