//! A node's part of the two-phase topology apply (which the client runs,
//! `super::apply`): check that it can take its part (`prepare`), take it
//! (`install`); and the administration file's records (topology, copy-job
//! definitions).

use super::*;
use crate::wire::AdminRequest;

/// Record of the administration file holding the copy-job definitions.
pub const COPY_JOBS_ISN: Isn = Isn(3);

impl Node {
    pub(super) async fn admin(
        self: &Arc<Self>,
        r: AdminRequest,
        who: Option<&crate::net::Identity>,
    ) -> Response {
        match r {
            AdminRequest::AdminExport => self.admin_export(),
            AdminRequest::AdminPrepare { topology } => self.admin_prepare(topology).await,
            AdminRequest::AdminInstall { topology, expect } => {
                self.admin_install(topology, expect).await
            }
            AdminRequest::AdminAdopt { topology } => self.admin_adopt(topology, who).await,
        }
    }

    /// A wiped site takes the topology its master's task sent, if it holds
    /// none (see [`AdminRequest::AdminAdopt`]).
    pub(super) async fn admin_adopt(
        self: &Arc<Self>,
        topology: String,
        who: Option<&crate::net::Identity>,
    ) -> Response {
        let v = match parse_off_reactor(topology).await {
            Ok(v) => v,
            Err(e) => return Response::error(e),
        };
        // A node's certificate sends it only for a replicate it masters on
        // this database (by the topology it sends); an administrator's
        // certificate (or plain loopback) may send any.
        if let Some(who) = who.filter(|w| w.role == crate::net::Role::Replication) {
            let me = self.db.dbid().0;
            let masters_here = who.db.is_some_and(|d| {
                v.replicates
                    .iter()
                    .any(|r| r.def.database == me && r.def.master_database == d.0)
            });
            if !masters_here {
                self.conns
                    .not_allowed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(certificate = %who.name, "topology for a sync-down refused: its sender masters no replicate of this database");
                return Response::error(Failure::new(
                    ErrorCode::NotAllowed,
                    format!(
                        "certificate {} may send a topology to database {me} only for a replicate its database masters there",
                        who.name
                    ),
                ));
            }
        }
        let _guard = self.admin.lock().await;
        if lock(&self.topology).is_some() {
            return Response::error(Failure::new(
                ErrorCode::Refused,
                format!(
                    "database {} holds a topology: only a site that holds none adopts one (etp admin apply changes a topology)",
                    self.db.dbid()
                ),
            ));
        }
        let r = self.install(v).await;
        if matches!(r, Response::Ok) {
            tracing::warn!(database = %self.db.dbid(),
                "sync-down: this uninitialized site took the topology its master sent; its files are created and its replicates are loaded from their masters");
        }
        r
    }

    pub(super) fn admin_export(&self) -> Response {
        match &*lock(&self.topology) {
            Some(v) => Response::Text(v.text.clone()),
            None => Response::error("no topology has been applied to this node"),
        }
    }

    /// Phase one of an apply: can this node take its part?
    pub(super) async fn admin_prepare(&self, topology: String) -> Response {
        match parse_off_reactor(topology).await {
            Err(e) => Response::error(e),
            Ok(v) => match self.prepare(&v) {
                Ok(()) => Response::Ok,
                Err(e) => Response::error(e),
            },
        }
    }

    /// Phase two: install it (if the topology held is still `expect`'s).
    pub(super) async fn admin_install(
        self: &Arc<Self>,
        topology: String,
        expect: Option<String>,
    ) -> Response {
        match parse_off_reactor(topology).await {
            Err(e) => Response::error(e),
            Ok(v) => {
                let _guard = self.admin.lock().await;
                if let Some(want) = expect {
                    let held = crate::wire::topology_digest(
                        lock(&self.topology).as_ref().map(|t| t.text.as_str()),
                    );
                    if held != want {
                        return Response::error(Failure::new(
                            ErrorCode::Refused,
                            "the topology this node holds changed since this apply's prepare (another apply ran meanwhile): not installed here; check `etp admin export` and apply again",
                        ));
                    }
                }
                self.install(v).await
            }
        }
    }

    /// Checks that this node can take its part of `v` without changing anything.
    pub(super) fn prepare(&self, v: &Valid) -> Result<(), OpError> {
        let me = self.db.dbid();
        if !v.addresses.contains_key(&me) {
            return Err(OpError::Refused(format!(
                "this node holds database {me}, which the topology does not name"
            )));
        }
        let mut wants = v.files_on(me);
        wants.push(FileWant {
            fnr: v.admin_file(),
            name: "administration".into(),
            role: Role::Administration,
        });
        let files = self.db.files();
        let exists = |fnr: Fnr| files.iter().find(|f| f.def.fnr == fnr);
        for w in &wants {
            let Some(f) = exists(w.fnr) else {
                if let Role::Master { log, .. } = w.role {
                    if exists(log).is_some() {
                        return Err(OpError::Refused(format!(
                            "database {me}: log file {log} of master {} already exists",
                            w.name
                        )));
                    }
                }
                continue;
            };
            if let Some(reason) = &f.damaged {
                return Err(OpError::Refused(format!(
                    "database {me}: file {} is damaged: {reason}",
                    w.fnr
                )));
            }
            let compatible = match (&w.role, &f.def.role) {
                (Role::Master { log: want, .. }, Role::Master { log, .. }) => want == log,
                // A plain file becomes the master, if its log file is free.
                (Role::Master { log, .. }, Role::Plain) => exists(*log).is_none(),
                (a, b) => a == b,
            };
            if !compatible {
                return Err(OpError::Refused(format!(
                    "database {me}: file {} exists as a {} file, the topology wants a {} file",
                    w.fnr, f.def.role, w.role
                )));
            }
        }
        Ok(())
    }

    /// Takes this node's part of `v`: creates missing files, stores the
    /// topology, (re)starts the tasks of its masters.
    pub(super) async fn install(self: &Arc<Self>, v: Valid) -> Response {
        if let Err(e) = self.prepare(&v) {
            return Response::error(e);
        }
        let db = self.db.clone();
        let me = db.dbid();
        let wants = v.files_on(me);
        let admin = v.admin_file();
        let text = v.text.clone();
        let r = blocking(move || {
            let exists = |fnr: Fnr| db.files().iter().any(|f| f.def.fnr == fnr);
            if !exists(admin) {
                db.create_file(admin, "administration", Role::Administration)?;
            }
            for w in wants {
                match w.role {
                    Role::Master { log, .. } => {
                        if !exists(w.fnr) {
                            db.create_file(w.fnr, &w.name, Role::Plain)?;
                        }
                        if !matches!(db.file(w.fnr)?.role, Role::Master { .. }) {
                            db.define_master(w.fnr, log)?;
                        }
                    }
                    role => {
                        if !exists(w.fnr) {
                            db.create_file(w.fnr, &w.name, role)?;
                        }
                    }
                }
            }
            let mut rec = Record::new();
            rec.insert("topology".into(), Value::Text(text));
            db.put_engine_record(admin, TOPOLOGY_ISN, rec)?;
            Ok(())
        })
        .await;
        if let Err(e) = r {
            return Response::error(format!("installing the topology on database {me}: {e}"));
        }
        self.control.set_admin(admin);
        self.start_tasks(&v, true, true);
        self.set_topology(v);
        Response::Ok
    }
}

/// Parses a topology (its predicates compiled) on the blocking pool, not
/// the reactor's thread.
async fn parse_off_reactor(text: String) -> Result<Valid, Failure> {
    match tokio::task::spawn_blocking(move || Valid::parse(&text)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::new(ErrorCode::BadRequest, e.to_string())),
        Err(e) => Err(Failure::new(
            ErrorCode::Other,
            format!("parsing the topology failed: {e}"),
        )),
    }
}

/// The copy-job definitions (TOML text, empty if none), replaced first by
/// `set` if given.
pub(super) fn copy_jobs(db: &Database, set: Option<String>) -> Result<String, DbError> {
    let admin = db
        .files()
        .into_iter()
        .find(|f| f.def.role == Role::Administration)
        .ok_or_else(|| {
            DbError::BadDefinition(
                "this database has no administration file (apply a topology first)".into(),
            )
        })?
        .def
        .fnr;
    if let Some(text) = set {
        let mut rec = Record::new();
        rec.insert("copy_jobs".into(), Value::Text(text));
        db.put_engine_record(admin, COPY_JOBS_ISN, rec)?;
    }
    Ok(match db.read(admin, COPY_JOBS_ISN)? {
        Some(r) => match r.get("copy_jobs") {
            Some(Value::Text(t)) => t.clone(),
            _ => String::new(),
        },
        None => String::new(),
    })
}

/// The topology kept in this database's administration file, if any.
/// Sets the database's schemas from its stored topology (see
/// [`Database::set_schemas`]): an offline writer calls it after opening the
/// database, as a node does at start and at each apply.
pub fn load_schemas(db: &Database) -> Result<(), NodeError> {
    if let Some(v) = stored_topology(db)? {
        db.set_schemas(v.schemas_on(db.dbid()));
    }
    Ok(())
}

pub fn stored_topology(db: &Database) -> Result<Option<Valid>, NodeError> {
    let admin = db
        .files()
        .into_iter()
        .find(|f| f.def.role == Role::Administration);
    let Some(admin) = admin else {
        return Ok(None);
    };
    let rec = db
        .read(admin.def.fnr, TOPOLOGY_ISN)
        .map_err(NodeError::Administration)?;
    let Some(Value::Text(text)) = rec.as_ref().and_then(|r| r.get("topology")) else {
        return Ok(None);
    };
    Valid::parse(text)
        .map(Some)
        .map_err(NodeError::StoredTopology)
}
