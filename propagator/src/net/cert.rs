//! A cluster's certificate authority and the certificates it issues
//! (`etp cert init`, `etp cert issue`), made with rcgen: ECDSA P-256 keys,
//! PEM files, private keys readable by their owner only (0600, in a 0700
//! directory).
//!
//! ```text
//! DIR/ca.crt   DIR/ca.key          the authority (init)
//! DIR/NAME.crt DIR/NAME.key        one identity (issue)
//! ```

use super::{check_name, Identity, Role, NODE_SERVER_NAME};
use crate::ids::DbId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// The authority's certificate file in a certificate directory.
pub const CA_CERT: &str = "ca.crt";
/// The authority's private key file in a certificate directory.
pub const CA_KEY: &str = "ca.key";
/// How long the authority's certificate is valid.
pub const CA_DAYS: u32 = 3650;
/// The most days a certificate may be issued for.
pub const MAX_DAYS: u32 = 36500;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Bad(String),
    #[error("{path} exists already: remove it first, or use another directory or name")]
    Exists { path: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("making the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CertError + 'a {
    move |source| CertError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Writes a new file `path` with `text`, readable by its owner only
/// (`secret`) or by all; never replaces an existing file.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CertError::Exists {
                path: path.display().to_string(),
            },
            _ => CertError::Io {
                what: "cannot create",
                path: path.display().to_string(),
                source: e,
            },
        })?;
    // The mode asked for, whatever the process's umask: a certificate is
    // public, a key its owner's.
    use std::os::unix::fs::PermissionsExt;
    let mode = if secret { 0o600 } else { 0o644 };
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|_| f.write_all(text.as_bytes()))
        .and_then(|_| f.sync_all())
        .map_err(io("cannot write", path))
}

fn make_dir(dir: &Path) -> Result<(), CertError> {
    crate::database::private_dir(dir).map_err(io("cannot create the directory", dir))
}

/// The validity window: from yesterday (clocks differ) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) -> Result<(), CertError> {
    use chrono::Datelike;
    if days == 0 || days > MAX_DAYS {
        return Err(CertError::Bad(format!(
            "--days {days}: from 1 to {MAX_DAYS}"
        )));
    }
    let ymd = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let today = chrono::Utc::now().date_naive();
    let from = today.pred_opt().unwrap_or(today);
    let to = today
        .checked_add_days(chrono::Days::new(u64::from(days)))
        .ok_or_else(|| CertError::Bad(format!("--days {days}: past the calendar")))?;
    params.not_before = ymd(from);
    params.not_after = ymd(to);
    Ok(())
}

/// Makes a cluster's certificate authority in `dir` (created 0700 if
/// missing): `ca.crt` and `ca.key`. Refuses to replace one.
pub fn init(dir: &Path, cluster: &str) -> Result<PathBuf, CertError> {
    check_name(cluster).map_err(|e| CertError::Bad(e.0))?;
    make_dir(dir)?;
    let (crt, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&crt, &key] {
        if p.exists() {
            return Err(CertError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(
        DnType::CommonName,
        format!("etp cluster authority {cluster}"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "etp");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS)?;
    let kp = KeyPair::generate()?;
    let cert = params.self_signed(&kp)?;
    write_new(&key, &kp.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok(crt)
}

/// What [`issue`] wrote.
#[derive(Debug)]
pub struct Issued {
    pub identity: Identity,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Issues a certificate for `identity` with the authority in `dir`:
/// `NAME.crt` and `NAME.key` there. A node's certificate (role
/// `replication`, with its database) also serves TLS; the others only
/// authenticate clients.
pub fn issue(dir: &Path, identity: &Identity, days: u32) -> Result<Issued, CertError> {
    issue_serving(dir, identity, days, &[])
}

/// [`issue`], the certificate also serving TLS under each of `hosts` (DNS
/// names or IP addresses): what `etp console` serves browsers with off
/// loopback (`etp cert issue --host NAME`).
pub fn issue_serving(
    dir: &Path,
    identity: &Identity,
    days: u32,
    hosts: &[String],
) -> Result<Issued, CertError> {
    check_name(&identity.name).map_err(|e| CertError::Bad(e.0))?;
    match (identity.role, identity.db) {
        (Role::Replication, None) => {
            return Err(CertError::Bad(
                "a replication (node) certificate names its database: give --db".into(),
            ))
        }
        (r, Some(_)) if r != Role::Replication => {
            return Err(CertError::Bad(format!(
                "--db is for a node's certificate (role replication), not role {r}"
            )))
        }
        _ => {}
    }
    if identity.name == "ca" {
        return Err(CertError::Bad("the name ca is the authority's".into()));
    }
    let ca_pem = std::fs::read_to_string(dir.join(CA_CERT)).map_err(io(
        "cannot read the authority's certificate",
        &dir.join(CA_CERT),
    ))?;
    let ca_key_pem = std::fs::read_to_string(dir.join(CA_KEY))
        .map_err(io("cannot read the authority's key", &dir.join(CA_KEY)))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| CertError::Bad(format!("{}: {e}", dir.join(CA_KEY).display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| CertError::Bad(format!("{}: {e}", dir.join(CA_CERT).display())))?;
    let (crt, key) = (
        dir.join(format!("{}.crt", identity.name)),
        dir.join(format!("{}.key", identity.name)),
    );
    for p in [&crt, &key] {
        if p.exists() {
            return Err(CertError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, identity.name.clone());
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, identity.role.as_str());
    let uri = identity
        .uri()
        .try_into()
        .map_err(|e| CertError::Bad(format!("identity {}: {e}", identity.uri())))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if identity.role == Role::Replication {
        let dns = NODE_SERVER_NAME
            .try_into()
            .map_err(|e| CertError::Bad(format!("{NODE_SERVER_NAME}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    for h in hosts {
        let san = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.as_str()
                    .try_into()
                    .map_err(|e| CertError::Bad(format!("host name {h:?}: {e}")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    if !hosts.is_empty()
        && !params
            .extended_key_usages
            .contains(&ExtendedKeyUsagePurpose::ServerAuth)
    {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let kp = KeyPair::generate()?;
    let cert = params.signed_by(&kp, &issuer)?;
    write_new(&key, &kp.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok(Issued {
        identity: identity.clone(),
        cert: crt,
        key,
    })
}

/// The identity named by the certificate in a PEM file.
pub fn show(path: &Path) -> Result<Identity, CertError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path)
        .map_err(|e| CertError::Bad(format!("{}: {e}", path.display())))?;
    Identity::of_certificate(&der).map_err(|e| CertError::Bad(format!("{}: {e}", path.display())))
}

/// A node's identity for database `db`, named `db<N>`.
pub fn node_identity(db: DbId) -> Identity {
    Identity {
        name: format!("db{db}"),
        role: Role::Replication,
        db: Some(db),
    }
}
