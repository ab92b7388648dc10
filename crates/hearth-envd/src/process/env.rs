// SPDX-License-Identifier: Apache-2.0
//! The environment of a started process.
//!
//! Upstream envd gives a process only `PATH` from its own environment, then `HOME`,
//! `USER` and `LOGNAME` of the user, then the sandbox-wide variables from `/init`,
//! then the request's `envs`; a later value replaces an earlier one. envd as PID 1
//! has no `PATH` at all, so a conventional default stands in for it.

use crate::error::EnvdError;
use crate::users::User;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

/// `PATH` for processes when envd's own environment has none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The final environment of a process, last writer wins.
pub(crate) fn compose<S: BuildHasher>(
    envd_path: Option<&str>,
    user: &User,
    sandbox: &BTreeMap<String, String>,
    request: &HashMap<String, String, S>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let path = envd_path.filter(|p| !p.is_empty()).unwrap_or(DEFAULT_PATH);
    env.insert("PATH".to_owned(), path.to_owned());
    env.insert("HOME".to_owned(), user.home.to_string_lossy().into_owned());
    env.insert("USER".to_owned(), user.name.clone());
    env.insert("LOGNAME".to_owned(), user.name.clone());
    for (k, v) in sandbox.iter().chain(request.iter()) {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// Rejects request variables the kernel cannot pass on (`=` or NUL in a name, NUL in
/// a value) or that are empty, instead of failing the spawn obscurely.
pub(crate) fn validate<S: BuildHasher>(
    request: &HashMap<String, String, S>,
) -> Result<(), EnvdError> {
    for (k, v) in request {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(EnvdError::InvalidArgument(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(EnvdError::InvalidArgument(format!(
                "environment variable {k} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn user() -> User {
        User {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: PathBuf::from("/home/user"),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn later_layers_override_earlier_ones() {
        let sandbox = BTreeMap::from([
            ("E2B_SANDBOX".to_owned(), "true".to_owned()),
            ("A".to_owned(), "sandbox".to_owned()),
            ("HOME".to_owned(), "/sandbox-home".to_owned()),
        ]);
        let request = HashMap::from([
            ("A".to_owned(), "request".to_owned()),
            ("PATH".to_owned(), "/opt/bin".to_owned()),
        ]);
        let env = compose(Some("/envd/bin"), &user(), &sandbox, &request);
        assert_eq!(env["A"], "request");
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["HOME"], "/sandbox-home");
        assert_eq!(env["USER"], "user");
        assert_eq!(env["LOGNAME"], "user");
        assert_eq!(env["E2B_SANDBOX"], "true");
    }

    #[test]
    fn missing_envd_path_gets_the_default() {
        let env = compose(None, &user(), &BTreeMap::new(), &HashMap::new());
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert_eq!(env["HOME"], "/home/user");
        assert_eq!(env.len(), 4, "nothing else leaks in: {env:?}");
        let env = compose(Some(""), &user(), &BTreeMap::new(), &HashMap::new());
        assert_eq!(env["PATH"], DEFAULT_PATH);
    }

    #[test]
    fn bad_names_and_values_are_invalid_argument() {
        for (k, v) in [("", "x"), ("A=B", "x"), ("A\0", "x"), ("A", "x\0y")] {
            let req = HashMap::from([(k.to_owned(), v.to_owned())]);
            assert!(
                matches!(validate(&req), Err(EnvdError::InvalidArgument(_))),
                "{k:?}={v:?}"
            );
        }
        assert!(validate(&HashMap::from([("OK_1".to_owned(), "v=w".to_owned())])).is_ok());
    }
}
