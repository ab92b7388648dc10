// SPDX-License-Identifier: Apache-2.0
//! The `filesystem.Filesystem` Connect service over real sockets (Connect JSON).
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestEnvd, USER_ID};
use http::StatusCode;
use serde_json::{Value, json};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn code(reply: &common::Reply) -> String {
    reply.json()["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn stat_reports_upstream_entry_fields() {
    let envd = TestEnvd::start().await;
    let file = envd.home.join("test_file.txt");
    std::fs::write(&file, "test").unwrap();
    std::os::unix::fs::chown(&file, Some(USER_ID), Some(USER_ID)).unwrap();
    let r = envd.rpc("Stat", json!({"path": "test_file.txt"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let e = &r.json()["entry"];
    assert_eq!(e["name"], "test_file.txt");
    assert_eq!(e["type"], "FILE_TYPE_FILE");
    assert_eq!(e["path"], file.to_str().unwrap());
    assert_eq!(e["size"], "4", "int64 is a JSON string");
    assert_eq!(e["mode"], 0o644);
    assert_eq!(e["permissions"], "-rw-r--r--");
    assert_eq!(e["owner"], "user");
    assert_eq!(e["group"], "user");
    let mtime = e["modifiedTime"].as_str().unwrap();
    assert!(mtime.ends_with('Z') && mtime.contains('T'), "{mtime}");
    assert!(e.get("symlinkTarget").is_none());

    let r = envd.rpc("Stat", json!({"path": "~"})).await;
    let e = &r.json()["entry"];
    assert_eq!(e["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(e["permissions"], "drwxr-xr-x");
    assert_eq!(e["mode"], 0o755);
}

#[tokio::test]
async fn stat_of_missing_is_not_found_and_unknown_user_unauthenticated() {
    let envd = TestEnvd::start().await;
    let r = envd.rpc("Stat", json!({"path": "nope.txt"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(code(&r), "not_found");
    // Basic auth for a user the image does not have.
    let r = envd
        .rpc_as(
            "Stat",
            json!({"path": "/"}),
            &[("authorization", "Basic Z2hvc3Q6")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&r), "unauthenticated");
    let r = envd.rpc("Stat", json!({"path": "a\u{0}b"})).await;
    assert_eq!(code(&r), "invalid_argument");
}

#[tokio::test]
async fn root_user_resolves_relative_paths_to_its_home() {
    let envd = TestEnvd::start().await;
    let r = envd
        .rpc_as(
            "Stat",
            json!({"path": "~"}),
            &[("authorization", "Basic cm9vdDo=")],
        )
        .await;
    assert_eq!(
        r.json()["entry"]["path"],
        envd.dir.path().join("root").to_str().unwrap()
    );
}

#[tokio::test]
async fn symlink_entry_reports_target_type_and_absolute_target() {
    let envd = TestEnvd::start().await;
    std::fs::create_dir(envd.home.join("d")).unwrap();
    std::fs::write(envd.home.join("d/test.txt"), "Hello").unwrap();
    std::os::unix::fs::symlink("test.txt", envd.home.join("d/link")).unwrap();
    let r = envd.rpc("Stat", json!({"path": "d/link"})).await;
    let e = &r.json()["entry"];
    assert_eq!(e["type"], "FILE_TYPE_FILE");
    assert_eq!(e["permissions"], "Lrwxrwxrwx");
    assert_eq!(
        e["symlinkTarget"],
        envd.home.join("d/test.txt").to_str().unwrap()
    );
}

#[tokio::test]
async fn make_dir_creates_parents_for_the_user_then_reports_existing() {
    let envd = TestEnvd::start().await;
    let r = envd.rpc("MakeDir", json!({"path": "a/b/c"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["entry"]["type"], "FILE_TYPE_DIRECTORY");
    for p in ["a", "a/b", "a/b/c"] {
        let m = std::fs::metadata(envd.home.join(p)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (USER_ID, USER_ID, 0o755)
        );
    }
    let r = envd.rpc("MakeDir", json!({"path": "a/b/c"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(code(&r), "already_exists");
    std::fs::write(envd.home.join("f"), "x").unwrap();
    let r = envd.rpc("MakeDir", json!({"path": "f"})).await;
    assert_eq!(code(&r), "invalid_argument");
}

#[tokio::test]
async fn move_renames_and_returns_new_entry() {
    let envd = TestEnvd::start().await;
    std::fs::write(envd.home.join("old.txt"), "data").unwrap();
    let r = envd
        .rpc(
            "Move",
            json!({"source": "old.txt", "destination": "new/dir/new.txt"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let e = &r.json()["entry"];
    assert_eq!(e["name"], "new.txt");
    assert_eq!(
        e["path"],
        envd.home.join("new/dir/new.txt").to_str().unwrap()
    );
    assert!(!envd.home.join("old.txt").exists());
    assert_eq!(
        std::fs::metadata(envd.home.join("new/dir")).unwrap().uid(),
        USER_ID
    );
    let r = envd
        .rpc("Move", json!({"source": "missing", "destination": "x"}))
        .await;
    assert_eq!(code(&r), "not_found");
}

#[tokio::test]
async fn list_dir_depths_are_preorder_and_errors_by_kind() {
    let envd = TestEnvd::start().await;
    let base = envd.home.join("p");
    for d in [
        "subdir1/subdir1_1",
        "subdir1/subdir1_2",
        "subdir2/subdir2_1",
    ] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::write(base.join("file1.txt"), "Hello, world!").unwrap();
    let names = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap()[base.to_str().unwrap().len() + 1..].to_owned())
            .collect()
    };
    // Depth absent means 1.
    let r = envd.rpc("ListDir", json!({"path": "p"})).await;
    assert_eq!(names(&r.json()), ["file1.txt", "subdir1", "subdir2"]);
    let r = envd.rpc("ListDir", json!({"path": "p", "depth": 2})).await;
    assert_eq!(
        names(&r.json()),
        [
            "file1.txt",
            "subdir1",
            "subdir1/subdir1_1",
            "subdir1/subdir1_2",
            "subdir2",
            "subdir2/subdir2_1"
        ]
    );
    let r = envd.rpc("ListDir", json!({"path": "p", "depth": 3})).await;
    assert_eq!(r.json()["entries"].as_array().unwrap().len(), 6);
    let entry = &r.json()["entries"][0];
    assert_eq!(entry["type"], "FILE_TYPE_FILE");
    assert_eq!(entry["size"], "13");
    let r = envd.rpc("ListDir", json!({"path": "p/file1.txt"})).await;
    assert_eq!(code(&r), "invalid_argument");
    let r = envd.rpc("ListDir", json!({"path": "nothing"})).await;
    assert_eq!(code(&r), "not_found");
}

#[tokio::test]
async fn remove_is_recursive_and_missing_is_not_found() {
    let envd = TestEnvd::start().await;
    std::fs::create_dir_all(envd.home.join("t/a/b")).unwrap();
    std::fs::write(envd.home.join("t/a/b/f"), "x").unwrap();
    let r = envd.rpc("Remove", json!({"path": "t"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({}));
    assert!(!envd.home.join("t").exists());
    let r = envd.rpc("Remove", json!({"path": "t"})).await;
    assert_eq!(code(&r), "not_found");
}

async fn poll_until(envd: &TestEnvd, id: &str, want: usize) -> Vec<Value> {
    let mut events = Vec::new();
    for _ in 0..50 {
        let r = envd.rpc("GetWatcherEvents", json!({"watcherId": id})).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        if let Some(list) = r.json()["events"].as_array() {
            events.extend(list.iter().cloned());
        }
        if events.len() >= want {
            // Give stragglers a moment so "exactly N" is meaningful.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = envd.rpc("GetWatcherEvents", json!({"watcherId": id})).await;
            if let Some(list) = r.json()["events"].as_array() {
                events.extend(list.iter().cloned());
            }
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    events
}

fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn polled_watcher_sees_exactly_create_chmod_write_for_a_new_file() {
    let envd = TestEnvd::start().await;
    std::fs::create_dir(envd.home.join("w")).unwrap();
    let r = envd
        .rpc_as(
            "CreateWatcher",
            json!({"path": "w"}),
            &[("keepalive-ping-interval", "50")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let id = r.json()["watcherId"].as_str().unwrap().to_owned();
    assert!(id.starts_with('w'));

    let up = envd.put("w/f.txt", "This file will be watched.").await;
    assert_eq!(up.status, StatusCode::OK);
    let events = poll_until(&envd, &id, 3).await;
    assert_eq!(
        kinds(&events),
        [
            ("EVENT_TYPE_CREATE".into(), "f.txt".into()),
            ("EVENT_TYPE_CHMOD".into(), "f.txt".into()),
            ("EVENT_TYPE_WRITE".into(), "f.txt".into()),
        ]
    );
    // An overwrite by the owner starts with WRITE (no needless chown).
    envd.put("w/f.txt", "changed").await;
    let events = poll_until(&envd, &id, 1).await;
    assert_eq!(kinds(&events)[0].0, "EVENT_TYPE_WRITE");

    let r = envd.rpc("RemoveWatcher", json!({"watcherId": id})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = envd.rpc("GetWatcherEvents", json!({"watcherId": id})).await;
    assert_eq!(code(&r), "not_found");
    let r = envd.rpc("RemoveWatcher", json!({"watcherId": id})).await;
    assert_eq!(code(&r), "not_found");
    assert_eq!(envd.state.watchers.active(), 0);
}

#[tokio::test]
async fn recursive_watcher_reports_nested_names_and_new_subdirectories() {
    let envd = TestEnvd::start().await;
    std::fs::create_dir_all(envd.home.join("r/nested")).unwrap();
    let r = envd
        .rpc("CreateWatcher", json!({"path": "r", "recursive": true}))
        .await;
    let id = r.json()["watcherId"].as_str().unwrap().to_owned();
    envd.put("r/nested/f.txt", "x").await;
    let events = poll_until(&envd, &id, 3).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        kinds(&events)[0],
        ("EVENT_TYPE_CREATE".into(), "nested/f.txt".into())
    );
    // A directory created after the watch started is watched too.
    let r = envd.rpc("MakeDir", json!({"path": "r/later"})).await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(100)).await;
    envd.put("r/later/g.txt", "y").await;
    let events = kinds(&poll_until(&envd, &id, 4).await);
    assert!(
        events.contains(&("EVENT_TYPE_CREATE".into(), "later".into())),
        "{events:?}"
    );
    assert!(
        events.contains(&("EVENT_TYPE_WRITE".into(), "later/g.txt".into())),
        "{events:?}"
    );
    envd.rpc("RemoveWatcher", json!({"watcherId": id})).await;
}

#[tokio::test]
async fn watch_of_file_is_invalid_and_missing_not_found() {
    let envd = TestEnvd::start().await;
    std::fs::write(envd.home.join("plain"), "x").unwrap();
    let r = envd.rpc("CreateWatcher", json!({"path": "plain"})).await;
    assert_eq!(code(&r), "invalid_argument");
    let r = envd.rpc("CreateWatcher", json!({"path": "absent"})).await;
    assert_eq!(code(&r), "not_found");
    let r = envd
        .rpc("GetWatcherEvents", json!({"watcherId": "wnope"}))
        .await;
    assert_eq!(code(&r), "not_found");
}

#[tokio::test]
async fn watch_dir_stream_starts_then_streams_events_with_entries_and_keepalives() {
    let envd = TestEnvd::start().await;
    std::fs::create_dir(envd.home.join("s")).unwrap();
    let mut frames = envd
        .stream(
            "WatchDir",
            json!({"path": "s", "includeEntry": true}),
            &[("keepalive-ping-interval", "1")],
        )
        .await;
    let (flags, first) = frames.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!((flags, first), (0, json!({"start": {}})));
    envd.put("s/n.txt", "abc").await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (flags, msg) = frames.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(flags, 0);
        if let Some(ev) = msg.get("filesystem") {
            seen.push(ev.clone());
        }
    }
    assert_eq!(seen[0]["type"], "EVENT_TYPE_CREATE");
    assert_eq!(seen[0]["name"], "n.txt");
    assert_eq!(seen[2]["type"], "EVENT_TYPE_WRITE");
    assert_eq!(seen[2]["entry"]["name"], "n.txt");
    assert_eq!(seen[2]["entry"]["size"], "3");
    // Idle: a keepalive within the interval (1 s) plus slack.
    let (_, msg) = frames.next(Duration::from_secs(3)).await.unwrap();
    assert_eq!(msg, json!({"keepalive": {}}));
    // A removal has no entry.
    std::fs::remove_file(envd.home.join("s/n.txt")).unwrap();
    let (_, msg) = frames.next(Duration::from_secs(3)).await.unwrap();
    assert_eq!(msg["filesystem"]["type"], "EVENT_TYPE_REMOVE");
    assert!(msg["filesystem"].get("entry").is_none());
    assert_eq!(envd.state.watchers.active(), 1);
    drop(frames);
    // The client went away: the watch (and its inotify fd) goes with the stream.
    for _ in 0..50 {
        if envd.state.watchers.active() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(envd.state.watchers.active(), 0);
}

#[tokio::test]
async fn watch_dir_on_missing_path_ends_with_not_found() {
    let envd = TestEnvd::start().await;
    let mut frames = envd
        .stream("WatchDir", json!({"path": "missing"}), &[])
        .await;
    let (flags, msg) = frames.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(flags, 2);
    assert_eq!(msg["error"]["code"], "not_found");
}

#[tokio::test]
async fn network_mounts_are_refused_unless_allowed() {
    // FUSE or NFS cannot be mounted here without helpers; the statfs magic check is
    // covered by unit tests, and a local tmpfs must be accepted with or without
    // the flag.
    let envd = TestEnvd::start().await;
    std::fs::create_dir(envd.home.join("local")).unwrap();
    for allow in [false, true] {
        let r = envd
            .rpc(
                "CreateWatcher",
                json!({"path": "local", "allowNetworkMounts": allow}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let id = r.json()["watcherId"].as_str().unwrap().to_owned();
        envd.rpc("RemoveWatcher", json!({"watcherId": id})).await;
    }
}

#[tokio::test]
async fn oversized_unary_body_is_rejected_in_connect_shape() {
    use http_body_util::BodyExt;
    let envd = TestEnvd::start().await;
    let big = format!("{{\"path\":\"{}\"}}", "a".repeat(100 << 20));
    let req = http::Request::post(envd.url("/filesystem.Filesystem/Stat"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(big)))
        .unwrap();
    let resp = envd.send(req).await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert_eq!(resp.headers()["content-type"], "application/json");
    // envd answers before the body is in and then closes the connection rather
    // than draining 100 MB, so the client may or may not get to read the JSON.
    if let Ok(body) = resp.into_body().collect().await {
        let v: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
        assert_eq!(v["code"], "resource_exhausted");
    }
    // And the server is still serving.
    let r = envd.rpc("Stat", json!({"path": "~"})).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn watcher_count_is_bounded_and_idle_ones_can_be_evicted() {
    use hearth_envd::filesystem::watch::MAX_WATCHERS;
    let envd = TestEnvd::start().await;
    std::fs::create_dir(envd.home.join("many")).unwrap();
    for _ in 0..MAX_WATCHERS {
        let r = envd.rpc("CreateWatcher", json!({"path": "many"})).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let r = envd.rpc("CreateWatcher", json!({"path": "many"})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&r), "resource_exhausted");
    // Abandoned watchers (never removed) give way once idle long enough.
    envd.state.watchers.evict_idle(Duration::ZERO);
    assert_eq!(envd.state.watchers.active(), 0);
    let r = envd.rpc("CreateWatcher", json!({"path": "many"})).await;
    assert_eq!(r.status, StatusCode::OK);
}
