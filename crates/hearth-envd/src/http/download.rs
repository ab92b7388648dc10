// SPDX-License-Identifier: Apache-2.0
//! `GET /files`: stream one file, as Go's `http.ServeContent` does for upstream.
//!
//! 1. Authorize and resolve the path ([`crate::http::files`]); a missing file is
//!    `404`, a directory `400`.
//! 2. Preconditions: `If-Match`/`If-Unmodified-Since` (`412`), then
//!    `If-None-Match`/`If-Modified-Since` (`304`). The validators are a strong ETag
//!    from inode, size and mtime, and `Last-Modified`.
//! 3. A single `Range` (honoured when `If-Range` still matches) gives `206` or `416`;
//!    several ranges are served as the whole file, which RFC 9110 allows.
//! 4. Otherwise `200`, gzip-encoded when `Accept-Encoding` prefers gzip (never for
//!    range or conditional requests, as upstream); `406` when only unsupported
//!    encodings are acceptable.
//!
//! Files whose size the kernel reports as 0 (procfs, sysfs, pipes) are streamed to
//! their end without a length and without range support.

use crate::error::EnvdError;
use crate::http::files::{FilesQuery, authorize};
use crate::http::pipe;
use crate::http::signature::Operation;
use crate::state::Envd;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Content codings envd can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No transformation.
    Identity,
    /// gzip.
    Gzip,
}

/// Picks the response coding from `Accept-Encoding`.
///
/// gzip is used when the client asks for it alone (what the SDKs send for
/// `gzip=True`) or rates it above identity. A generic list such as httpx's default
/// `gzip, deflate` or curl's `deflate, gzip, br, zstd` gets identity: identity is
/// implicitly acceptable (RFC 9110 §12.5.3), and compressing every default SDK
/// download would cut a 4 MiB read from hundreds of MB/s to ~30 MB/s for no one's
/// benefit on a local link. Identity refused with `q=0` and no gzip ⇒ 406.
pub fn negotiate_encoding(accept: Option<&str>) -> Result<Encoding, EnvdError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Encoding::Identity);
    };
    let offers: Vec<(String, f32)> = accept
        .split(',')
        .map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
                })
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (coding, q)
        })
        .filter(|(c, _)| !c.is_empty())
        .collect();
    let q_of = |name: &str| offers.iter().find(|(c, _)| c == name).map(|(_, q)| *q);
    let star = q_of("*");
    let gzip_q = q_of("gzip").or(star).unwrap_or(0.0);
    let identity_q = q_of("identity")
        .or(star.filter(|q| *q == 0.0))
        .unwrap_or(1.0);
    let only_gzip_named = offers
        .iter()
        .filter(|(c, q)| *q > 0.0 && c != "identity" && c != "*")
        .all(|(c, _)| c == "gzip")
        && q_of("gzip").is_some_and(|q| q > 0.0);
    if gzip_q > 0.0
        && (gzip_q > identity_q || (only_gzip_named && gzip_q >= identity_q) || identity_q == 0.0)
    {
        return Ok(Encoding::Gzip);
    }
    if identity_q > 0.0 {
        return Ok(Encoding::Identity);
    }
    Err(EnvdError::NotAcceptable(
        "no acceptable encoding found, supported: [gzip]".to_owned(),
    ))
}

/// The validators of one file version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, whole seconds (HTTP dates have no more).
    pub modified: SystemTime,
    /// Strong entity tag, quoted.
    pub etag: String,
}

/// What to answer a request for a file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `412 Precondition Failed`.
    PreconditionFailed,
    /// `304 Not Modified`.
    NotModified,
    /// `200` with the whole file.
    Full,
    /// `206` with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// `416 Range Not Satisfiable`.
    Unsatisfiable,
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn etag_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',').map(str::trim).any(|candidate| {
        if candidate == "*" {
            return true;
        }
        let strip = |t: &str| t.strip_prefix("W/").unwrap_or(t).to_owned();
        if weak {
            strip(candidate) == strip(etag)
        } else {
            !candidate.starts_with("W/") && candidate == etag
        }
    })
}

fn parse_date(value: Option<&str>) -> Option<SystemTime> {
    value.and_then(|v| httpdate::parse_http_date(v).ok())
}

/// Decides the response from the request headers (preconditions, then range).
pub fn plan(headers: &HeaderMap, version: &Version, ranges_supported: bool) -> Plan {
    let precondition_failed = match header_str(headers, header::IF_MATCH) {
        Some(list) => !etag_matches(list, &version.etag, false),
        None => parse_date(header_str(headers, header::IF_UNMODIFIED_SINCE))
            .is_some_and(|since| version.modified > since),
    };
    if precondition_failed {
        return Plan::PreconditionFailed;
    }
    let not_modified = match header_str(headers, header::IF_NONE_MATCH) {
        Some(list) => etag_matches(list, &version.etag, true),
        None => parse_date(header_str(headers, header::IF_MODIFIED_SINCE))
            .is_some_and(|since| version.modified <= since),
    };
    if not_modified {
        return Plan::NotModified;
    }
    let Some(range) = header_str(headers, header::RANGE) else {
        return Plan::Full;
    };
    if !ranges_supported {
        return Plan::Full;
    }
    if let Some(if_range) = header_str(headers, header::IF_RANGE) {
        let current = if if_range.starts_with('"') {
            if_range == version.etag
        } else {
            parse_date(Some(if_range)) == Some(version.modified)
        };
        if !current {
            return Plan::Full;
        }
    }
    parse_range(range, version.size)
}

fn parse_range(value: &str, size: u64) -> Plan {
    let Some(spec) = value.strip_prefix("bytes=") else {
        return Plan::Full;
    };
    if spec.contains(',') {
        return Plan::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Plan::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // Suffix range: the last N bytes.
        match last.parse::<u64>() {
            Ok(0) | Err(_) => return Plan::Unsatisfiable,
            Ok(n) => (size.saturating_sub(n), size.checked_sub(1)),
        }
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Plan::Full;
        };
        let end = if last.is_empty() {
            size.checked_sub(1)
        } else {
            match last.parse::<u64>() {
                Ok(end) if end >= start => Some(end.min(size.saturating_sub(1))),
                _ => return Plan::Full,
            }
        };
        (start, end)
    };
    match range {
        (start, Some(end)) if start < size && start <= end => Plan::Partial { start, end },
        _ => Plan::Unsatisfiable,
    }
}

/// `Content-Disposition: inline; filename=…` formatted like Go's `mime.FormatMediaType`:
/// a bare token, a quoted string, or RFC 2231 `filename*=utf-8''…` for non-ASCII.
pub fn content_disposition(name: &str) -> String {
    const TSPECIALS: &str = "()<>@,;:\\\"/[]?=";
    let is_token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !TSPECIALS.contains(char::from(b)));
    if is_token {
        return format!("inline; filename={name}");
    }
    if name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        return format!("inline; filename=\"{escaped}\"");
    }
    const ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    format!(
        "inline; filename*=utf-8''{}",
        percent_encoding::utf8_percent_encode(name, ATTR_CHAR)
    )
}

/// Content type by extension, like Go's `mime.TypeByExtension` for common types.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" => "text/plain; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "xml" => "text/xml; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "wasm" => "application/wasm",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

fn open(path: &Path) -> Result<(File, std::fs::Metadata), EnvdError> {
    // O_NONBLOCK: opening a FIFO must not hang the request.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => {
                EnvdError::NotFound(format!("path '{}' does not exist", path.display()))
            }
            _ => EnvdError::io(format!("error opening file '{}'", path.display()), err),
        })?;
    let meta = file
        .metadata()
        .map_err(|err| EnvdError::io(format!("error checking file '{}'", path.display()), err))?;
    if meta.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "path '{}' is a directory",
            path.display()
        )));
    }
    Ok((file, meta))
}

fn version_of(meta: &std::fs::Metadata) -> Version {
    let secs = u64::try_from(meta.mtime()).unwrap_or(0);
    let nanos = u64::try_from(meta.mtime_nsec()).unwrap_or(0);
    Version {
        size: meta.len(),
        modified: UNIX_EPOCH + Duration::from_secs(secs),
        etag: format!(
            "\"{:x}-{:x}-{:x}.{:x}\"",
            meta.ino(),
            meta.len(),
            secs,
            nanos
        ),
    }
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Serves `GET /files`.
pub async fn download(state: Arc<Envd>, req: Request) -> Result<Response, EnvdError> {
    let (parts, _body) = req.into_parts();
    let query = FilesQuery::parse(parts.uri.query())?;
    let user = authorize(&state, &parts, &query, Operation::Read)?;
    let path: PathBuf = state.resolve(query.path.as_deref().unwrap_or_default(), &user)?;
    let encoding = negotiate_encoding(header_str(&parts.headers, header::ACCEPT_ENCODING))?;
    let open_path = path.clone();
    let (file, meta) = tokio::task::spawn_blocking(move || open(&open_path))
        .await
        .map_err(|e| EnvdError::Internal(format!("open task failed: {e}")))??;

    let version = version_of(&meta);
    let sized = meta.is_file() && version.size > 0;
    let conditional = [
        header::RANGE,
        header::IF_MODIFIED_SINCE,
        header::IF_NONE_MATCH,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|h| parts.headers.contains_key(h));
    let encoding = if conditional {
        Encoding::Identity
    } else {
        encoding
    };

    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    set(h, header::CONTENT_DISPOSITION, &content_disposition(&name));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    set(
        h,
        header::LAST_MODIFIED,
        &httpdate::fmt_http_date(version.modified),
    );
    set(h, header::ETAG, &version.etag);
    if sized {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }

    match plan(&parts.headers, &version, sized) {
        Plan::PreconditionFailed => {
            *resp.status_mut() = StatusCode::PRECONDITION_FAILED;
            for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
                resp.headers_mut().remove(name);
            }
        }
        Plan::NotModified => {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
                resp.headers_mut().remove(name);
            }
        }
        Plan::Unsatisfiable => {
            let mut err = crate::error::http_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid range: failed to overlap",
            );
            set(
                err.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes */{}", version.size),
            );
            tracing::info!(path = %path.display(), "range not satisfiable");
            return Ok(err);
        }
        Plan::Partial { start, end } => {
            let len = end - start + 1;
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            set(
                h,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{}", version.size),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            *resp.body_mut() = Body::from_stream(pipe::file_stream(file, start, Some(len), false));
        }
        Plan::Full => match encoding {
            Encoding::Gzip => {
                resp.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                *resp.body_mut() = Body::from_stream(pipe::file_stream(file, 0, None, true));
            }
            Encoding::Identity if sized => {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(version.size));
                *resp.body_mut() =
                    Body::from_stream(pipe::file_stream(file, 0, Some(version.size), false));
            }
            Encoding::Identity => {
                *resp.body_mut() = Body::from_stream(pipe::file_stream(file, 0, None, false));
            }
        },
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> Version {
        Version {
            size: 100,
            modified: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            etag: "\"abc\"".to_owned(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn ranges() {
        let v = version();
        let p = |r: &str| plan(&headers(&[("range", r)]), &v, true);
        assert_eq!(p("bytes=0-9"), Plan::Partial { start: 0, end: 9 });
        assert_eq!(p("bytes=90-"), Plan::Partial { start: 90, end: 99 });
        assert_eq!(p("bytes=-10"), Plan::Partial { start: 90, end: 99 });
        assert_eq!(p("bytes=50-500"), Plan::Partial { start: 50, end: 99 });
        assert_eq!(p("bytes=100-"), Plan::Unsatisfiable);
        assert_eq!(p("bytes=-0"), Plan::Unsatisfiable);
        assert_eq!(p("bytes=0-1,5-6"), Plan::Full);
        assert_eq!(p("items=0-1"), Plan::Full);
        assert_eq!(
            plan(&headers(&[("range", "bytes=0-1")]), &v, false),
            Plan::Full
        );
    }

    #[test]
    fn conditionals() {
        let v = version();
        let date = httpdate::fmt_http_date(v.modified);
        assert_eq!(
            plan(&headers(&[("if-none-match", "\"abc\"")]), &v, true),
            Plan::NotModified
        );
        assert_eq!(
            plan(&headers(&[("if-none-match", "W/\"abc\"")]), &v, true),
            Plan::NotModified
        );
        assert_eq!(
            plan(&headers(&[("if-none-match", "\"x\"")]), &v, true),
            Plan::Full
        );
        assert_eq!(
            plan(&headers(&[("if-modified-since", &date)]), &v, true),
            Plan::NotModified
        );
        let older = httpdate::fmt_http_date(v.modified - Duration::from_secs(1));
        assert_eq!(
            plan(&headers(&[("if-modified-since", &older)]), &v, true),
            Plan::Full
        );
        assert_eq!(
            plan(&headers(&[("if-match", "\"x\"")]), &v, true),
            Plan::PreconditionFailed
        );
        assert_eq!(
            plan(
                &headers(&[("range", "bytes=0-0"), ("if-range", "\"old\"")]),
                &v,
                true
            ),
            Plan::Full
        );
        assert_eq!(
            plan(
                &headers(&[("range", "bytes=0-0"), ("if-range", "\"abc\"")]),
                &v,
                true
            ),
            Plan::Partial { start: 0, end: 0 }
        );
    }

    #[test]
    fn encoding_negotiation_follows_quality() {
        assert_eq!(negotiate_encoding(None).unwrap(), Encoding::Identity);
        assert_eq!(negotiate_encoding(Some("gzip")).unwrap(), Encoding::Gzip);
        // httpx's default list: identity is as good and much faster.
        assert_eq!(
            negotiate_encoding(Some("gzip, deflate")).unwrap(),
            Encoding::Identity
        );
        assert_eq!(
            negotiate_encoding(Some("gzip;q=1, identity;q=0.5")).unwrap(),
            Encoding::Gzip
        );
        assert_eq!(
            negotiate_encoding(Some("identity")).unwrap(),
            Encoding::Identity
        );
        assert_eq!(
            negotiate_encoding(Some("gzip;q=0.5, identity")).unwrap(),
            Encoding::Identity
        );
        assert_eq!(negotiate_encoding(Some("br")).unwrap(), Encoding::Identity);
        assert_eq!(
            negotiate_encoding(Some("*, identity;q=0")).unwrap(),
            Encoding::Gzip
        );
        let err = negotiate_encoding(Some("br, identity;q=0")).unwrap_err();
        assert_eq!(err.http_status(), StatusCode::NOT_ACCEPTABLE);
    }

    #[test]
    fn content_disposition_quotes_like_go() {
        assert_eq!(content_disposition("a.txt"), "inline; filename=a.txt");
        assert_eq!(
            content_disposition("a b\"c.txt"),
            "inline; filename=\"a b\\\"c.txt\""
        );
        assert_eq!(
            content_disposition("naïve.txt"),
            "inline; filename*=utf-8''na%C3%AFve.txt"
        );
    }
}
