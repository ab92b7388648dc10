// SPDX-License-Identifier: Apache-2.0
//! State shared by every request of one envd.

use crate::config::EnvdConfig;
use crate::error::EnvdError;
use crate::filesystem::WatcherTable;
use crate::process::ProcessTable;
use crate::reaper::Children;
use crate::users::{User, UserDb, resolve_path};
use base64::Engine;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use time::OffsetDateTime;

/// Defaults set at start and replaced by `/init`.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// User for requests that name none.
    pub user: String,
    /// Working directory for relative paths and processes, if not the user's home.
    pub workdir: Option<PathBuf>,
}

/// One envd: configuration, users, defaults and the tables of live objects.
#[derive(Debug)]
pub struct Envd {
    /// How envd was started.
    pub config: EnvdConfig,
    /// The image's users.
    pub users: UserDb,
    /// Default user and workdir.
    pub defaults: RwLock<Defaults>,
    /// Sandbox-wide environment variables from `/init` (plus `E2B_SANDBOX`).
    pub env_vars: RwLock<BTreeMap<String, String>>,
    /// Access token; when set every request but `/health` must carry it.
    pub access_token: RwLock<Option<String>>,
    /// Timestamp of the newest `/init` applied, to ignore stale ones.
    pub last_init: RwLock<Option<OffsetDateTime>>,
    /// Every child process envd started, for the reaper.
    pub children: Arc<Children>,
    /// Processes started through the process service.
    pub processes: ProcessTable,
    /// Polling watchers of the filesystem service.
    pub watchers: WatcherTable,
}

impl Envd {
    /// Builds the state from the configuration.
    pub fn new(config: EnvdConfig) -> anyhow::Result<Self> {
        let users = UserDb::new(&config.root);
        let default_user = match &config.default_user {
            Some(u) => u.clone(),
            None if users.exists("user") => "user".to_owned(),
            None => "root".to_owned(),
        };
        let mut env_vars = BTreeMap::new();
        env_vars.insert("E2B_SANDBOX".to_owned(), "true".to_owned());
        Ok(Self {
            defaults: RwLock::new(Defaults {
                user: default_user,
                workdir: config.default_workdir.clone(),
            }),
            env_vars: RwLock::new(env_vars),
            access_token: RwLock::new(config.access_token.clone().filter(|t| !t.is_empty())),
            last_init: RwLock::new(None),
            children: Arc::new(Children::default()),
            processes: ProcessTable::default(),
            watchers: WatcherTable::default(),
            users,
            config,
        })
    }

    /// A snapshot of the defaults.
    pub fn defaults(&self) -> Defaults {
        self.defaults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A snapshot of the sandbox-wide environment variables.
    pub fn env_vars(&self) -> BTreeMap<String, String> {
        self.env_vars
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current access token, if any.
    pub fn access_token(&self) -> Option<String> {
        self.access_token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The user named, or the default user when `name` is `None` or empty.
    pub fn user(&self, name: Option<&str>) -> Result<User, EnvdError> {
        match name {
            Some(n) if !n.is_empty() => self.users.lookup(n),
            _ => self.users.lookup(&self.defaults().user),
        }
    }

    /// The user selected by `Authorization: Basic base64("<user>:")`, else the default.
    pub fn user_from_headers(&self, headers: &http::HeaderMap) -> Result<User, EnvdError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return self.user(None);
        };
        let bad = || EnvdError::Unauthenticated("invalid Authorization header".to_owned());
        let text = value.to_str().map_err(|_| bad())?;
        let Some(encoded) = text
            .strip_prefix("Basic ")
            .or_else(|| text.strip_prefix("basic "))
        else {
            return Err(bad());
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let name = decoded.split(':').next().unwrap_or_default();
        self.user(Some(name))
    }

    /// Resolves a client path for `user` against the default workdir.
    pub fn resolve(&self, path: &str, user: &User) -> Result<PathBuf, EnvdError> {
        let workdir = self.defaults().workdir;
        resolve_path(path, user, workdir.as_deref())
    }
}
