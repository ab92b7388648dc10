// SPDX-License-Identifier: Apache-2.0
//! Hearth's persistent state.
//!
//! The store keeps what must survive a restart of `hearth serve`: API keys (hashed),
//! templates and their builds (snapshots are templates too), and sandboxes with the
//! runtime state needed to re-adopt them. The embedded default is SQLite under
//! `$HEARTH_HOME/hearth.db` (WAL mode, one connection behind a mutex: every statement
//! is a short indexed lookup or write). The SQL is kept portable (no SQLite-only
//! functions, JSON kept as text, times as integer milliseconds) so a PostgreSQL
//! implementation of the same API can serve a cluster.

mod migrations;
mod records;
mod sqlite;

pub use records::{
    ApiKeyRecord, ListOrder, SandboxFilter, SandboxPage, SandboxRecord, SandboxState, TemplateKind,
    TemplateRecord,
};
pub use sqlite::Store;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or migrated.
    #[error("failed to open the store at {path}")]
    Open {
        /// Database path.
        path: String,
        /// The cause.
        #[source]
        err: rusqlite::Error,
    },
    /// A statement failed.
    #[error("store query failed: {what}")]
    Query {
        /// Which operation.
        what: &'static str,
        /// The cause.
        #[source]
        err: rusqlite::Error,
    },
    /// A stored JSON column could not be encoded or decoded.
    #[error("store value of {what} is not valid JSON")]
    Json {
        /// Which column.
        what: &'static str,
        /// The cause.
        #[source]
        err: serde_json::Error,
    },
    /// A row holds a value this version does not understand.
    #[error("store row is corrupt: {0}")]
    Corrupt(String),
    /// An insert collided with an existing key.
    #[error("{what} already exists")]
    Conflict {
        /// What collided.
        what: String,
    },
}
