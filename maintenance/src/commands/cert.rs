//! `etp cert …`, and the credentials a command or a node talks with.

use crate::cli::{CertCommand, TlsArgs};
use crate::Outcome;
use anyhow::{bail, Context};
use propagator::net::{cert, Identity, Role, Tls, Transport};
use std::path::Path;
use std::sync::Arc;

pub fn run(c: CertCommand) -> anyhow::Result<Outcome> {
    match c {
        CertCommand::Init { dir, cluster } => {
            let crt = cert::init(&dir, &cluster)?;
            println!("{}", crt.display());
            eprintln!(
                "etp: the authority of cluster {cluster} is in {}; keep {} secret (it issues every certificate)",
                dir.display(),
                dir.join(cert::CA_KEY).display()
            );
        }
        CertCommand::Issue {
            dir,
            name,
            role,
            db,
            days,
            hosts,
        } => {
            let db = db.map(propagator::DbId);
            let name = match (name, db) {
                (Some(n), _) => n,
                (None, Some(d)) => cert::node_identity(d).name,
                (None, None) => bail!("give --name (or --db for a node's certificate)"),
            };
            let issued = cert::issue_serving(&dir, &Identity { name, role, db }, days, &hosts)?;
            println!("{}", issued.cert.display());
            println!("{}", issued.key.display());
            eprintln!("etp: issued {} for {days} days", issued.identity);
        }
        CertCommand::Show { file } => {
            let id = cert::show(&file)?;
            println!(
                "{}",
                serde_json::json!({"name": id.name, "role": id.role, "db": id.db.map(|d| d.0)})
            );
        }
    }
    Ok(Outcome::Ok)
}

/// The transport the global `--ca/--cert/--key` give (None: none given).
pub fn client_transport(a: &TlsArgs) -> anyhow::Result<Option<Transport>> {
    match (&a.ca, &a.cert, &a.key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(crt), Some(key)) => Ok(Some(Transport::Tls(Arc::new(
            Tls::load(ca, crt, key).context("loading this command's certificates")?,
        )))),
        _ => bail!(
            "give all of --ca, --cert and --key (or ETP_CA, ETP_CERT, ETP_KEY), or none of them"
        ),
    }
}

/// A node's credentials: `--certs DIR` (its database's certificate there),
/// else `--ca/--cert/--key`; checked to be a node certificate of `db`.
pub fn node_tls(
    certs: Option<&Path>,
    a: &TlsArgs,
    db: propagator::DbId,
) -> anyhow::Result<Option<Arc<Tls>>> {
    let tls = match certs {
        Some(dir) => {
            let id = cert::node_identity(db);
            let (crt, key) = (
                dir.join(format!("{}.crt", id.name)),
                dir.join(format!("{}.key", id.name)),
            );
            if !crt.exists() {
                bail!(
                    "--certs {}: no certificate for database {db} ({} is missing; `etp cert issue --dir {} --role replication --db {db}` makes it)",
                    dir.display(),
                    crt.display(),
                    dir.display()
                );
            }
            if dir.join(cert::CA_KEY).exists() {
                tracing::warn!(
                    dir = %dir.display(),
                    "the authority's private key is in this node's certificate directory: anyone who reads this node's files can issue any certificate (give each node a directory with only ca.crt and its own dbN.crt and dbN.key)"
                );
            }
            Tls::load(&dir.join(cert::CA_CERT), &crt, &key)?
        }
        None => match client_transport(a)? {
            Some(Transport::Tls(t)) => return check_node(t, db).map(Some),
            _ => return Ok(None),
        },
    };
    check_node(Arc::new(tls), db).map(Some)
}

fn check_node(t: Arc<Tls>, db: propagator::DbId) -> anyhow::Result<Arc<Tls>> {
    if t.me.role != Role::Replication {
        bail!(
            "the node's certificate is {}: a node serves with a replication certificate (`etp cert issue --role replication --db {db}`)",
            t.me
        );
    }
    if t.me.db != Some(db) {
        bail!(
            "the node's certificate is {}, and this data directory holds database {db}",
            t.me
        );
    }
    Ok(t)
}
