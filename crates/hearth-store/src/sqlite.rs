// SPDX-License-Identifier: Apache-2.0
//! The SQLite implementation of the store.

use crate::StoreError;
use crate::migrations::MIGRATIONS;
use crate::records::*;
use hearth_types::SandboxId;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use time::OffsetDateTime;

/// The store: one SQLite connection guarded by a mutex.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

fn q(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |err| StoreError::Query { what, err }
}

fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn json<T: serde::Serialize>(what: &'static str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|err| StoreError::Json { what, err })
}

fn unjson<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|err| StoreError::Json { what, err })
}

impl Store {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |err| StoreError::Open {
            path: path.display().to_string(),
            err,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        Self::init(conn).map_err(|e| match e {
            StoreError::Query { err, .. } => open_err(err),
            other => other,
        })
    }

    /// An in-memory store, for tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|err| StoreError::Open {
            path: ":memory:".into(),
            err,
        })?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        // WAL keeps readers off the writer's back; NORMAL sync is durable across
        // process crashes, which is the failure hearth must survive without loss.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;
             PRAGMA busy_timeout=5000;",
        )
        .map_err(q("configure"))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(q("read schema version"))?;
        let applied = usize::try_from(version).unwrap_or(0);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "database schema version {applied} is newer than this hearth ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            let tx_sql = format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1);
            conn.execute_batch(&tx_sql).map_err(q("migrate"))?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are
        // atomic), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- API keys ----------------------------------------------------------------

    /// Stores a new API key.
    pub fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let res = self.conn().execute(
            "INSERT INTO api_keys (id, hash, mask, name, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.id, key.hash, key.mask, key.name, to_ms(key.created_at)],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Conflict {
                    what: format!("api key {}", key.mask),
                })
            }
            Err(err) => Err(StoreError::Query {
                what: "insert api key",
                err,
            }),
        }
    }

    /// Finds the key whose hash is `hash`.
    pub fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT id, hash, mask, name, created_ms FROM api_keys WHERE hash = ?1",
                params![hash],
                api_key_row,
            )
            .optional()
            .map_err(q("find api key"))
    }

    /// All keys, oldest first.
    pub fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, hash, mask, name, created_ms FROM api_keys ORDER BY created_ms, id",
            )
            .map_err(q("list api keys"))?;
        let rows = stmt
            .query_map([], api_key_row)
            .map_err(q("list api keys"))?;
        rows.collect::<Result<_, _>>().map_err(q("list api keys"))
    }

    /// Deletes the key with this id; returns whether one existed.
    pub fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM api_keys WHERE id = ?1", params![id])
            .map_err(q("delete api key"))?;
        Ok(n > 0)
    }

    // ---- templates ---------------------------------------------------------------

    /// Inserts or replaces a template and its names. A name held by another template
    /// moves to this one.
    pub fn upsert_template(&self, t: &TemplateRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(q("upsert template"))?;
        tx.execute(
            "INSERT INTO templates (id, kind, build_id, names, runtime, cpu_count, memory_mb,
                disk_mb, envd_version, artifacts, source_sandbox, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT(id) DO UPDATE SET kind=excluded.kind, build_id=excluded.build_id,
                names=excluded.names, runtime=excluded.runtime, cpu_count=excluded.cpu_count,
                memory_mb=excluded.memory_mb, disk_mb=excluded.disk_mb,
                envd_version=excluded.envd_version, artifacts=excluded.artifacts,
                source_sandbox=excluded.source_sandbox",
            params![
                t.id,
                t.kind.as_str(),
                t.build_id,
                json("template names", &t.names)?,
                t.runtime,
                t.cpu_count,
                t.memory_mb,
                t.disk_mb,
                t.envd_version,
                json("template artifacts", &t.artifacts)?,
                t.source_sandbox,
                to_ms(t.created_at),
            ],
        )
        .map_err(q("upsert template"))?;
        tx.execute(
            "DELETE FROM template_names WHERE template_id = ?1",
            params![t.id],
        )
        .map_err(q("upsert template"))?;
        for name in &t.names {
            tx.execute(
                "INSERT INTO template_names (name, template_id) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET template_id = excluded.template_id",
                params![name, t.id],
            )
            .map_err(q("upsert template"))?;
        }
        tx.commit().map_err(q("upsert template"))
    }

    /// Finds a template by id or by one of its names.
    pub fn template(&self, id_or_name: &str) -> Result<Option<TemplateRecord>, StoreError> {
        let row = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {TEMPLATE_COLS} FROM templates WHERE id = ?1
                     OR id = (SELECT template_id FROM template_names WHERE name = ?1)
                     ORDER BY id = ?1 DESC LIMIT 1"
                ),
                params![id_or_name],
                raw_template_row,
            )
            .optional()
            .map_err(q("find template"))?;
        row.map(RawTemplate::decode).transpose()
    }

    /// All templates of a kind, oldest first.
    pub fn list_templates(
        &self,
        kind: Option<TemplateKind>,
    ) -> Result<Vec<TemplateRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {TEMPLATE_COLS} FROM templates WHERE ?1 IS NULL OR kind = ?1
                 ORDER BY created_ms, id"
            ))
            .map_err(q("list templates"))?;
        let rows = stmt
            .query_map(params![kind.map(TemplateKind::as_str)], raw_template_row)
            .map_err(q("list templates"))?;
        let raw: Vec<RawTemplate> = rows
            .collect::<Result<_, _>>()
            .map_err(q("list templates"))?;
        raw.into_iter().map(RawTemplate::decode).collect()
    }

    /// Deletes a template and its names; returns whether it existed.
    pub fn delete_template(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM templates WHERE id = ?1", params![id])
            .map_err(q("delete template"))?;
        Ok(n > 0)
    }

    // ---- sandboxes ---------------------------------------------------------------

    /// Inserts a new sandbox row.
    pub fn insert_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        let res = conn.execute(
            &format!(
                "INSERT INTO sandboxes ({SANDBOX_COLS}, seq) VALUES
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                  (SELECT COALESCE(MAX(seq), 0) + 1 FROM sandboxes))"
            ),
            params![
                s.id.as_str(),
                s.template_id,
                s.alias,
                s.state.as_str(),
                to_ms(s.started_at),
                to_ms(s.end_at),
                s.cpu_count,
                s.memory_mb,
                s.disk_mb,
                json("sandbox metadata", &s.metadata)?,
                json("sandbox env vars", &s.env_vars)?,
                json("sandbox config", &s.config)?,
                s.runtime,
                s.runtime_state
                    .as_ref()
                    .map(|v| json("runtime state", v))
                    .transpose()?,
                s.paused_at.map(to_ms),
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Conflict {
                    what: format!("sandbox {}", s.id),
                })
            }
            Err(err) => Err(StoreError::Query {
                what: "insert sandbox",
                err,
            }),
        }
    }

    /// Replaces a sandbox row; returns whether it existed.
    pub fn update_sandbox(&self, s: &SandboxRecord) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE sandboxes SET template_id=?2, alias=?3, state=?4, started_ms=?5, end_ms=?6,
                    cpu_count=?7, memory_mb=?8, disk_mb=?9, metadata=?10, env_vars=?11,
                    config=?12, runtime=?13, runtime_state=?14, paused_ms=?15
                 WHERE id = ?1",
                params![
                    s.id.as_str(),
                    s.template_id,
                    s.alias,
                    s.state.as_str(),
                    to_ms(s.started_at),
                    to_ms(s.end_at),
                    s.cpu_count,
                    s.memory_mb,
                    s.disk_mb,
                    json("sandbox metadata", &s.metadata)?,
                    json("sandbox env vars", &s.env_vars)?,
                    json("sandbox config", &s.config)?,
                    s.runtime,
                    s.runtime_state
                        .as_ref()
                        .map(|v| json("runtime state", v))
                        .transpose()?,
                    s.paused_at.map(to_ms),
                ],
            )
            .map_err(q("update sandbox"))?;
        Ok(n > 0)
    }

    /// The sandbox with this id.
    pub fn sandbox(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE id = ?1"),
                params![id.as_str()],
                raw_sandbox_row,
            )
            .optional()
            .map_err(q("find sandbox"))?;
        row.map(RawSandbox::decode).transpose()
    }

    /// Deletes the sandbox row; returns whether it existed.
    pub fn delete_sandbox(&self, id: &SandboxId) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id.as_str()])
            .map_err(q("delete sandbox"))?;
        Ok(n > 0)
    }

    /// Every sandbox, oldest first (for re-adoption at start-up).
    pub fn all_sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {SANDBOX_COLS} FROM sandboxes ORDER BY started_ms, id"
            ))
            .map_err(q("list sandboxes"))?;
        let rows = stmt
            .query_map([], raw_sandbox_row)
            .map_err(q("list sandboxes"))?;
        let raw: Vec<RawSandbox> = rows
            .collect::<Result<_, _>>()
            .map_err(q("list sandboxes"))?;
        raw.into_iter().map(RawSandbox::decode).collect()
    }

    /// One page of sandboxes matching `filter`, in start-time order.
    ///
    /// The cursor is `<started_ms>.<id>` of the last item returned: the next page
    /// starts strictly after it, so sandboxes created or killed between pages never
    /// shift the listing.
    pub fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<SandboxPage, StoreError> {
        let limit = filter.limit.clamp(1, 1000);
        let cursor = match &filter.cursor {
            Some(c) => Some(parse_cursor(c)?),
            None => None,
        };
        let asc = filter.order == ListOrder::Asc;
        let sql = format!(
            "SELECT {SANDBOX_COLS} FROM sandboxes
             WHERE (?1 IS NULL OR (started_ms, id) {cmp} (?1, ?2))
               AND (?3 IS NULL OR started_ms > ?3)
             ORDER BY started_ms {dir}, id {dir}",
            cmp = if asc { ">" } else { "<" },
            dir = if asc { "ASC" } else { "DESC" },
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(q("list sandboxes"))?;
        let (cur_ms, cur_id) = match &cursor {
            Some((ms, id)) => (Some(*ms), Some(id.clone())),
            None => (None, None),
        };
        let mut rows = stmt
            .query(params![cur_ms, cur_id, filter.started_after.map(to_ms)])
            .map_err(q("list sandboxes"))?;
        let mut page = SandboxPage::default();
        while let Some(row) = rows.next().map_err(q("list sandboxes"))? {
            let rec = raw_sandbox_row(row)
                .map_err(q("list sandboxes"))
                .and_then(RawSandbox::decode)?;
            if !matches(&rec, filter) {
                continue;
            }
            if page.items.len() == limit {
                page.next_cursor = page
                    .items
                    .last()
                    .map(|l| format!("{}.{}", to_ms(l.started_at), l.id.as_str()));
                break;
            }
            page.items.push(rec);
        }
        Ok(page)
    }
}

fn matches(rec: &SandboxRecord, f: &SandboxFilter) -> bool {
    if !f.states.is_empty() && !f.states.iter().any(|s| s == rec.state.public()) {
        return false;
    }
    if let Some(t) = &f.template
        && rec.template_id != *t
        && rec.alias.as_deref() != Some(t.as_str())
    {
        return false;
    }
    f.metadata
        .iter()
        .all(|(k, v)| rec.metadata.get(k) == Some(v))
}

fn parse_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let bad = || StoreError::Corrupt(format!("invalid page token {c:?}"));
    let (ms, id) = c.split_once('.').ok_or_else(bad)?;
    let ms = ms.parse::<i64>().map_err(|_| bad())?;
    SandboxId::parse(id).map_err(|_| bad())?;
    Ok((ms, id.to_owned()))
}

fn api_key_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        hash: r.get(1)?,
        mask: r.get(2)?,
        name: r.get(3)?,
        created_at: from_ms(r.get(4)?),
    })
}

const TEMPLATE_COLS: &str = "id, kind, build_id, names, runtime, cpu_count, memory_mb, disk_mb,
    envd_version, artifacts, source_sandbox, created_ms";

struct RawTemplate {
    id: String,
    kind: String,
    build_id: String,
    names: String,
    runtime: Option<String>,
    cpu_count: u32,
    memory_mb: u32,
    disk_mb: u32,
    envd_version: String,
    artifacts: String,
    source_sandbox: Option<String>,
    created_ms: i64,
}

fn raw_template_row(r: &Row<'_>) -> rusqlite::Result<RawTemplate> {
    Ok(RawTemplate {
        id: r.get(0)?,
        kind: r.get(1)?,
        build_id: r.get(2)?,
        names: r.get(3)?,
        runtime: r.get(4)?,
        cpu_count: r.get(5)?,
        memory_mb: r.get(6)?,
        disk_mb: r.get(7)?,
        envd_version: r.get(8)?,
        artifacts: r.get(9)?,
        source_sandbox: r.get(10)?,
        created_ms: r.get(11)?,
    })
}

impl RawTemplate {
    fn decode(self) -> Result<TemplateRecord, StoreError> {
        Ok(TemplateRecord {
            kind: TemplateKind::parse(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("template kind {:?}", self.kind)))?,
            names: unjson("template names", &self.names)?,
            artifacts: unjson("template artifacts", &self.artifacts)?,
            id: self.id,
            build_id: self.build_id,
            runtime: self.runtime,
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_mb,
            envd_version: self.envd_version,
            source_sandbox: self.source_sandbox,
            created_at: from_ms(self.created_ms),
        })
    }
}

const SANDBOX_COLS: &str = "id, template_id, alias, state, started_ms, end_ms, cpu_count,
    memory_mb, disk_mb, metadata, env_vars, config, runtime, runtime_state, paused_ms";

struct RawSandbox {
    id: String,
    template_id: String,
    alias: Option<String>,
    state: String,
    started_ms: i64,
    end_ms: i64,
    cpu_count: u32,
    memory_mb: u32,
    disk_mb: u32,
    metadata: String,
    env_vars: String,
    config: String,
    runtime: String,
    runtime_state: Option<String>,
    paused_ms: Option<i64>,
}

fn raw_sandbox_row(r: &Row<'_>) -> rusqlite::Result<RawSandbox> {
    Ok(RawSandbox {
        id: r.get(0)?,
        template_id: r.get(1)?,
        alias: r.get(2)?,
        state: r.get(3)?,
        started_ms: r.get(4)?,
        end_ms: r.get(5)?,
        cpu_count: r.get(6)?,
        memory_mb: r.get(7)?,
        disk_mb: r.get(8)?,
        metadata: r.get(9)?,
        env_vars: r.get(10)?,
        config: r.get(11)?,
        runtime: r.get(12)?,
        runtime_state: r.get(13)?,
        paused_ms: r.get(14)?,
    })
}

impl RawSandbox {
    fn decode(self) -> Result<SandboxRecord, StoreError> {
        Ok(SandboxRecord {
            id: SandboxId::parse(&self.id)
                .map_err(|e| StoreError::Corrupt(format!("sandbox id: {e}")))?,
            state: SandboxState::parse(&self.state)
                .ok_or_else(|| StoreError::Corrupt(format!("sandbox state {:?}", self.state)))?,
            metadata: unjson::<BTreeMap<String, String>>("sandbox metadata", &self.metadata)?,
            env_vars: unjson::<BTreeMap<String, String>>("sandbox env vars", &self.env_vars)?,
            config: unjson("sandbox config", &self.config)?,
            runtime_state: self
                .runtime_state
                .as_deref()
                .map(|s| unjson("runtime state", s))
                .transpose()?,
            template_id: self.template_id,
            alias: self.alias,
            started_at: from_ms(self.started_ms),
            end_at: from_ms(self.end_ms),
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_mb,
            runtime: self.runtime,
            paused_at: self.paused_ms.map(from_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn sandbox(n: i64, meta: &[(&str, &str)]) -> SandboxRecord {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        SandboxRecord {
            id: SandboxId::parse(&format!("i{n:020}")).unwrap(),
            template_id: "base".into(),
            alias: Some("base".into()),
            state: SandboxState::Running,
            started_at: t0 + Duration::seconds(n),
            end_at: t0 + Duration::seconds(n + 300),
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 1024,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env_vars: BTreeMap::new(),
            config: serde_json::json!({"autoPause": false}),
            runtime: "container".into(),
            runtime_state: Some(serde_json::json!({"pid": 42})),
            paused_at: None,
        }
    }

    #[test]
    fn sandbox_round_trips() {
        let store = Store::open_in_memory().unwrap();
        let s = sandbox(1, &[("a", "b")]);
        store.insert_sandbox(&s).unwrap();
        assert_eq!(store.sandbox(&s.id).unwrap().unwrap(), s);
        assert!(matches!(
            store.insert_sandbox(&s),
            Err(StoreError::Conflict { .. })
        ));
        assert!(store.delete_sandbox(&s.id).unwrap());
        assert!(store.sandbox(&s.id).unwrap().is_none());
        assert!(!store.delete_sandbox(&s.id).unwrap());
    }

    #[test]
    fn pagination_visits_every_match_once_in_order() {
        let store = Store::open_in_memory().unwrap();
        for n in 0..25 {
            let tag = if n % 2 == 0 { "even" } else { "odd" };
            store.insert_sandbox(&sandbox(n, &[("k", tag)])).unwrap();
        }
        let mut filter = SandboxFilter {
            limit: 4,
            metadata: [("k".to_string(), "even".to_string())].into(),
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.list_sandboxes(&filter).unwrap();
            seen.extend(page.items.iter().map(|s| s.id.as_str().to_owned()));
            match page.next_cursor {
                Some(c) => filter.cursor = Some(c),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25)
            .rev()
            .filter(|n| n % 2 == 0)
            .map(|n| format!("i{n:020}"))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn bad_cursor_is_an_error_not_a_panic() {
        let store = Store::open_in_memory().unwrap();
        let filter = SandboxFilter {
            limit: 10,
            cursor: Some("garbage".into()),
            ..Default::default()
        };
        assert!(store.list_sandboxes(&filter).is_err());
    }

    #[test]
    fn template_found_by_id_or_name_and_names_move() {
        let store = Store::open_in_memory().unwrap();
        let mut t = TemplateRecord {
            id: "t1".into(),
            kind: TemplateKind::Template,
            build_id: "b1".into(),
            names: vec!["base".into()],
            runtime: None,
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 1024,
            envd_version: "0.6.13".into(),
            artifacts: serde_json::json!({"layers": ["/a"]}),
            source_sandbox: None,
            created_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        };
        store.upsert_template(&t).unwrap();
        assert_eq!(store.template("base").unwrap().unwrap().id, "t1");
        assert_eq!(store.template("t1").unwrap().unwrap(), t);
        t.id = "t2".into();
        store.upsert_template(&t).unwrap();
        assert_eq!(store.template("base").unwrap().unwrap().id, "t2");
        assert!(store.delete_template("t2").unwrap());
        assert!(store.template("base").unwrap().is_none());
    }

    #[test]
    fn reopening_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let s = sandbox(3, &[]);
        Store::open(&path).unwrap().insert_sandbox(&s).unwrap();
        assert_eq!(
            Store::open(&path).unwrap().all_sandboxes().unwrap(),
            vec![s]
        );
    }
}
