// SPDX-License-Identifier: Apache-2.0
//! Schema migrations, applied in order and recorded in `PRAGMA user_version`.
//!
//! Append new migrations; never edit one that has shipped.

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "
    CREATE TABLE api_keys (
        id          TEXT PRIMARY KEY,
        hash        TEXT NOT NULL UNIQUE,
        mask        TEXT NOT NULL,
        name        TEXT NOT NULL,
        created_ms  INTEGER NOT NULL
    );
    CREATE TABLE templates (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        build_id    TEXT NOT NULL,
        names       TEXT NOT NULL,
        runtime     TEXT,
        cpu_count   INTEGER NOT NULL,
        memory_mb   INTEGER NOT NULL,
        disk_mb     INTEGER NOT NULL,
        envd_version TEXT NOT NULL,
        artifacts   TEXT NOT NULL,
        source_sandbox TEXT,
        created_ms  INTEGER NOT NULL
    );
    CREATE TABLE template_names (
        name        TEXT PRIMARY KEY,
        template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE
    );
    CREATE TABLE sandboxes (
        id          TEXT PRIMARY KEY,
        template_id TEXT NOT NULL,
        alias       TEXT,
        state       TEXT NOT NULL,
        started_ms  INTEGER NOT NULL,
        end_ms      INTEGER NOT NULL,
        cpu_count   INTEGER NOT NULL,
        memory_mb   INTEGER NOT NULL,
        disk_mb     INTEGER NOT NULL,
        metadata    TEXT NOT NULL,
        env_vars    TEXT NOT NULL,
        config      TEXT NOT NULL,
        runtime     TEXT NOT NULL,
        runtime_state TEXT,
        paused_ms   INTEGER,
        seq         INTEGER NOT NULL
    );
    CREATE INDEX sandboxes_started ON sandboxes(started_ms, id);
    CREATE INDEX sandboxes_state ON sandboxes(state);
    CREATE INDEX templates_source ON templates(source_sandbox);
    ",
];
