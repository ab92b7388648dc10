// SPDX-License-Identifier: Apache-2.0
//! `/files`, `/files/compose` and `/metrics` over real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestEnvd, USER_ID, enc, multipart};
use http::{Method, StatusCode};
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn error_of(r: &common::Reply, status: StatusCode) -> String {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["code"], status.as_u16(), "{v}");
    v["message"].as_str().unwrap().to_owned()
}

async fn get(envd: &TestEnvd, query: &str, headers: &[(&str, &str)]) -> common::Reply {
    envd.request(Method::GET, &format!("/files?{query}"), headers, "")
        .await
}

#[tokio::test]
async fn download_serves_bytes_with_headers() {
    let envd = TestEnvd::start().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
    std::fs::write(envd.home.join("blob.bin"), &data).unwrap();
    let r = get(&envd, "path=blob.bin", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, data);
    assert_eq!(
        r.header("content-disposition"),
        Some("inline; filename=blob.bin")
    );
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("last-modified").is_some());
    assert!(r.header("content-encoding").is_none());

    std::fs::write(envd.home.join("sp ace\".txt"), "q").unwrap();
    let r = get(&envd, &format!("path={}", enc("sp ace\".txt")), &[]).await;
    assert_eq!(
        r.header("content-disposition"),
        Some("inline; filename=\"sp ace\\\".txt\"")
    );
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[tokio::test]
async fn download_errors_are_json_with_status() {
    let envd = TestEnvd::start().await;
    error_of(
        &get(&envd, "path=missing.txt", &[]).await,
        StatusCode::NOT_FOUND,
    );
    let msg = error_of(&get(&envd, "path=~", &[]).await, StatusCode::BAD_REQUEST);
    assert!(msg.contains("is a directory"), "{msg}");
    error_of(
        &get(&envd, "path=a%00b", &[]).await,
        StatusCode::BAD_REQUEST,
    );
    error_of(
        &get(&envd, "path=x&username=ghost", &[]).await,
        StatusCode::UNAUTHORIZED,
    );
    std::fs::write(envd.home.join("f"), "x").unwrap();
    // Traversal is resolved lexically: `..` cannot climb above `/`, and what it
    // names is served (the sandbox, not envd, is the boundary).
    let depth = envd.home.components().count();
    let climb = format!(
        "{}{}",
        "../".repeat(depth + 3),
        envd.home.join("f").display()
    );
    let r = get(&envd, &format!("path={}", enc(&climb)), &[]).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"x"[..]));
    error_of(
        &get(&envd, "path=f", &[("accept-encoding", "br, identity;q=0")]).await,
        StatusCode::NOT_ACCEPTABLE,
    );
}

#[tokio::test]
async fn download_ranges_and_conditionals() {
    let envd = TestEnvd::start().await;
    std::fs::write(envd.home.join("r.txt"), "0123456789").unwrap();
    let r = get(&envd, "path=r.txt", &[("range", "bytes=2-4")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, "234");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    let r = get(&envd, "path=r.txt", &[("range", "bytes=-3")]).await;
    assert_eq!(r.body, "789");
    let r = get(&envd, "path=r.txt", &[("range", "bytes=20-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */10"));

    let full = get(&envd, "path=r.txt", &[]).await;
    let etag = full.header("etag").unwrap().to_owned();
    let modified = full.header("last-modified").unwrap().to_owned();
    let r = get(&envd, "path=r.txt", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    let r = get(&envd, "path=r.txt", &[("if-modified-since", &modified)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = get(
        &envd,
        "path=r.txt",
        &[("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "0123456789");
}

#[tokio::test]
async fn download_gzip_only_when_asked() {
    let envd = TestEnvd::start().await;
    let text = "compress me ".repeat(10_000);
    std::fs::write(envd.home.join("g.txt"), &text).unwrap();
    let r = get(&envd, "path=g.txt", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.body.len() < text.len() / 10);
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, text);
    // Range requests are never compressed.
    let r = get(
        &envd,
        "path=g.txt",
        &[("accept-encoding", "gzip"), ("range", "bytes=0-7")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.body, "compress");
}

#[tokio::test]
async fn octet_stream_upload_creates_parents_owner_and_mode() {
    let envd = TestEnvd::start().await;
    let r = envd.put("deep/er/new.txt", "hello").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let path = envd.home.join("deep/er/new.txt");
    assert_eq!(
        r.json(),
        json!([{"path": path.to_str().unwrap(), "name": "new.txt", "type": "file"}])
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello");
    for p in [
        path.clone(),
        envd.home.join("deep"),
        envd.home.join("deep/er"),
    ] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (USER_ID, USER_ID), "{}", p.display());
    }
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    // Overwrite truncates.
    envd.put("deep/er/new.txt", "hi").await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hi");
    // Root writes root-owned files.
    let r = envd
        .request(
            Method::POST,
            "/files?path=/tmp-hearth-unused&username=root",
            &[("content-type", "application/x-unknown")],
            "x",
        )
        .await;
    let msg = error_of(&r, StatusCode::BAD_REQUEST);
    assert!(msg.contains("unsupported content type"), "{msg}");
    let msg = error_of(
        &envd
            .request(
                Method::POST,
                "/files",
                &[("content-type", "application/octet-stream")],
                "x",
            )
            .await,
        StatusCode::BAD_REQUEST,
    );
    assert!(msg.contains("path query parameter is required"), "{msg}");
}

#[tokio::test]
async fn gzip_uploads_are_inflated_and_truncated_ones_leave_nothing() {
    let envd = TestEnvd::start().await;
    let data = "gzip body ".repeat(50_000);
    let r = envd
        .request(
            Method::POST,
            "/files?path=z/plain.txt",
            &[
                ("content-type", "application/octet-stream"),
                ("content-encoding", "gzip"),
            ],
            gzip(data.as_bytes()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        std::fs::read_to_string(envd.home.join("z/plain.txt")).unwrap(),
        data
    );
    let mut cut = gzip(data.as_bytes());
    cut.truncate(cut.len() / 2);
    let r = envd
        .request(
            Method::POST,
            "/files?path=z/broken.txt",
            &[
                ("content-type", "application/octet-stream"),
                ("content-encoding", "gzip"),
            ],
            cut,
        )
        .await;
    let msg = error_of(&r, StatusCode::BAD_REQUEST);
    assert!(msg.contains("decompressing"), "{msg}");
    assert!(!envd.home.join("z/broken.txt").exists());
    let r = envd
        .request(
            Method::POST,
            "/files?path=z/x",
            &[
                ("content-type", "application/octet-stream"),
                ("content-encoding", "br"),
            ],
            "x",
        )
        .await;
    error_of(&r, StatusCode::BAD_REQUEST);
    // A gzip-encoded multipart body is inflated before parsing.
    let (ct, body) = multipart(&[("file", Some("z/mp.txt"), b"inside")]);
    let r = envd
        .request(
            Method::POST,
            "/files",
            &[("content-type", &ct), ("content-encoding", "gzip")],
            gzip(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        std::fs::read_to_string(envd.home.join("z/mp.txt")).unwrap(),
        "inside"
    );
}

#[tokio::test]
async fn multipart_uses_full_path_filenames_or_the_path_query() {
    let envd = TestEnvd::start().await;
    let abs = envd.home.join("abs/one.txt");
    let (ct, body) = multipart(&[
        ("file", Some(abs.to_str().unwrap()), b"one"),
        ("other", None, b"ignored"),
        ("file", Some("rel/dir/two.txt"), b"two"),
    ]);
    let r = envd
        .request(Method::POST, "/files", &[("content-type", &ct)], body)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["path"], abs.to_str().unwrap());
    assert_eq!(
        v[1]["path"],
        envd.home.join("rel/dir/two.txt").to_str().unwrap()
    );
    assert_eq!(v[1]["name"], "two.txt");
    assert_eq!(std::fs::read_to_string(&abs).unwrap(), "one");
    assert_eq!(
        std::fs::read_to_string(envd.home.join("rel/dir/two.txt")).unwrap(),
        "two"
    );

    let (ct, body) = multipart(&[("file", Some("ignored-name"), b"via query")]);
    let r = envd
        .request(
            Method::POST,
            "/files?path=q/target.txt",
            &[("content-type", &ct)],
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        std::fs::read_to_string(envd.home.join("q/target.txt")).unwrap(),
        "via query"
    );
    assert!(!envd.home.join("ignored-name").exists());

    let (ct, body) = multipart(&[
        ("file", Some("dup.txt"), b"1"),
        ("file", Some("./dup.txt"), b"2"),
    ]);
    let r = envd
        .request(Method::POST, "/files", &[("content-type", &ct)], body)
        .await;
    let msg = error_of(&r, StatusCode::BAD_REQUEST);
    assert!(
        msg.contains("cannot upload multiple files to the same path"),
        "{msg}"
    );

    let r = envd
        .request(
            Method::POST,
            "/files",
            &[("content-type", "multipart/form-data; boundary=xyz")],
            "--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m\"\r\n\r\nunterminated",
        )
        .await;
    error_of(&r, StatusCode::BAD_REQUEST);
    let r = envd
        .request(
            Method::POST,
            "/files",
            &[("content-type", "multipart/form-data")],
            "x",
        )
        .await;
    error_of(&r, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metadata_headers_become_xattrs_and_each_upload_replaces_them() {
    let envd = TestEnvd::start().await;
    let r = envd
        .request(
            Method::POST,
            "/files?path=m.txt",
            &[
                ("content-type", "application/octet-stream"),
                ("x-metadata-Author", "Ada"),
                ("x-metadata-purpose", "test run"),
            ],
            "body",
        )
        .await;
    if r.status == StatusCode::OK && r.json()[0].get("metadata").is_none() {
        eprintln!("skipping: temp dir has no user xattrs");
        return;
    }
    assert_eq!(
        r.json()[0]["metadata"],
        json!({"author": "Ada", "purpose": "test run"})
    );
    let stat = envd.rpc("Stat", json!({"path": "m.txt"})).await.json();
    assert_eq!(stat["entry"]["metadata"]["author"], "Ada");
    let r = envd.put("m.txt", "again").await;
    assert!(r.json()[0].get("metadata").is_none());
    let stat = envd.rpc("Stat", json!({"path": "m.txt"})).await.json();
    assert!(stat["entry"].get("metadata").is_none());
    let long = "k".repeat(247);
    let r = envd
        .request(
            Method::POST,
            "/files?path=m.txt",
            &[
                ("content-type", "application/octet-stream"),
                (&format!("x-metadata-{long}"), "v"),
            ],
            "x",
        )
        .await;
    error_of(&r, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn signed_urls_are_verified_when_a_token_is_set() {
    use hearth_envd::http::signature::{Operation, sign};
    let envd = TestEnvd::start_with(&["--access-token", "tok123"]).await;
    std::fs::write(envd.home.join("s.txt"), "secret").unwrap();
    let path = envd.home.join("s.txt");
    let p = path.to_str().unwrap();

    let msg = error_of(
        &get(&envd, &format!("path={}", enc(p)), &[]).await,
        StatusCode::UNAUTHORIZED,
    );
    assert!(msg.contains("access token"), "{msg}");
    let r = get(
        &envd,
        &format!("path={}", enc(p)),
        &[("x-access-token", "tok123")],
    )
    .await;
    assert_eq!(r.body, "secret");

    let sig = sign(p, Operation::Read, "", "tok123", None);
    let r = get(
        &envd,
        &format!("path={}&signature={}", enc(p), enc(&sig)),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "secret");

    let future = time::OffsetDateTime::now_utc().unix_timestamp() + 60;
    let sig = sign(p, Operation::Read, "user", "tok123", Some(future));
    let q = format!(
        "path={}&username=user&signature={}&signature_expiration={future}",
        enc(p),
        enc(&sig)
    );
    assert_eq!(get(&envd, &q, &[]).await.status, StatusCode::OK);

    let past = 1_000_000_000;
    let sig = sign(p, Operation::Read, "", "tok123", Some(past));
    let q = format!(
        "path={}&signature={}&signature_expiration={past}",
        enc(p),
        enc(&sig)
    );
    let r = get(&envd, &q, &[]).await;
    assert_eq!(
        r.json(),
        json!({"code": 401, "message": "signature is already expired"})
    );

    let bad = format!("path={}&signature=v1_bogus", enc(p));
    assert_eq!(
        error_of(&get(&envd, &bad, &[]).await, StatusCode::UNAUTHORIZED),
        "invalid signature"
    );

    // A read signature does not authorise a write, a write signature does.
    let read_sig = sign("up.txt", Operation::Read, "", "tok123", None);
    let r = envd
        .request(
            Method::POST,
            &format!("/files?path=up.txt&signature={}", enc(&read_sig)),
            &[("content-type", "application/octet-stream")],
            "data",
        )
        .await;
    assert_eq!(error_of(&r, StatusCode::UNAUTHORIZED), "invalid signature");
    let write_sig = sign("up.txt", Operation::Write, "", "tok123", None);
    let r = envd
        .request(
            Method::POST,
            &format!("/files?path=up.txt&signature={}", enc(&write_sig)),
            &[("content-type", "application/octet-stream")],
            "data",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        std::fs::read_to_string(envd.home.join("up.txt")).unwrap(),
        "data"
    );
}

#[tokio::test]
async fn compose_concatenates_and_deletes_sources() {
    let envd = TestEnvd::start().await;
    for (n, c) in [("p1", "ab"), ("p2", "cd"), ("p3", "ef")] {
        std::fs::write(envd.home.join(n), c).unwrap();
    }
    let body = json!({"source_paths": ["p1", "p2", "p3"], "destination": "out/all.txt"});
    let r = envd
        .request(
            Method::POST,
            "/files/compose",
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let dest = envd.home.join("out/all.txt");
    assert_eq!(
        r.json(),
        json!({"path": dest.to_str().unwrap(), "name": "all.txt", "type": "file"})
    );
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "abcdef");
    assert_eq!(std::fs::metadata(&dest).unwrap().uid(), USER_ID);
    for n in ["p1", "p2", "p3"] {
        assert!(!envd.home.join(n).exists());
    }
    assert!(envd.find("e2b-compose").is_empty());

    let body = json!({"source_paths": ["gone"], "destination": "x"});
    let r = envd
        .request(Method::POST, "/files/compose", &[], body.to_string())
        .await;
    error_of(&r, StatusCode::NOT_FOUND);
    let r = envd
        .request(Method::POST, "/files/compose", &[], "{not json")
        .await;
    error_of(&r, StatusCode::BAD_REQUEST);
    let huge = vec![b' '; 2 << 20];
    let r = envd
        .request(Method::POST, "/files/compose", &[], huge)
        .await;
    error_of(&r, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn metrics_has_every_field() {
    let envd = TestEnvd::start().await;
    let r = envd.request(Method::GET, "/metrics", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    for key in [
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total",
        "mem_used",
        "mem_cache",
        "mem_total_mib",
        "mem_used_mib",
        "disk_used",
        "disk_total",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert!(v["mem_total"].as_u64().unwrap() >= v["mem_used"].as_u64().unwrap());
}

/// Mounts a 1 MiB tmpfs; unmounts on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn full_disk_is_507_and_leaves_no_partial_file() {
    let envd = TestEnvd::start().await;
    let mnt = envd.home.join("small");
    let Some(_disk) = SmallDisk::mount(&mnt) else {
        eprintln!("skipping: cannot mount tmpfs (needs root)");
        return;
    };
    let big = vec![7u8; 2 << 20];
    let r = envd.put("small/big.bin", big.clone()).await;
    let msg = error_of(&r, StatusCode::INSUFFICIENT_STORAGE);
    assert!(msg.contains("no space"), "{msg}");
    assert!(!mnt.join("big.bin").exists());
    let (ct, body) = multipart(&[("file", Some("small/mp.bin"), &big)]);
    let r = envd
        .request(Method::POST, "/files", &[("content-type", &ct)], body)
        .await;
    error_of(&r, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    // Compose into the small disk cleans its temporary too.
    std::fs::write(envd.home.join("c1"), &big).unwrap();
    let body = json!({"source_paths": ["c1"], "destination": "small/c.bin"});
    let r = envd
        .request(Method::POST, "/files/compose", &[], body.to_string())
        .await;
    error_of(&r, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    assert!(envd.home.join("c1").exists());
}
