// SPDX-License-Identifier: Apache-2.0
//! Streaming plumbing between HTTP bodies and blocking file I/O.
//!
//! File reads, writes and (de)compression run on the blocking pool and talk to the
//! async side through bounded channels, so a transfer holds at most a few chunks in
//! memory whatever its size, and dropping either end (client gone, write failed)
//! stops the other.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use tokio::sync::mpsc;

/// A stream of body chunks.
pub type ChunkStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Size of one read from a file being downloaded.
pub const READ_CHUNK: usize = 1 << 20;
/// Chunks in flight between a blocking worker and the async side.
const DEPTH: usize = 4;
/// Size of decompressed chunks handed on.
const INFLATE_CHUNK: usize = 256 << 10;

/// Turns a receiver into a stream.
pub fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// The request body as chunks; transport errors become `io::Error`s.
pub fn body_stream(body: axum::body::Body) -> ChunkStream {
    Box::pin(
        body.into_data_stream()
            .map(|chunk| chunk.map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e))),
    )
}

/// Blocking `Read` over chunks sent from the async side.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Feeds `input` into a channel from a task; stops when the receiver is gone.
fn feed(mut input: ChunkStream) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::spawn(async move {
        while let Some(chunk) = input.next().await {
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    rx
}

/// Decompresses a gzip stream (several members allowed, as Go's reader does).
///
/// Corrupt or truncated input ends the stream with an `InvalidData` or
/// `UnexpectedEof` error saying so.
pub fn gunzip(input: ChunkStream) -> ChunkStream {
    let reader = ChannelReader {
        rx: feed(input),
        current: Bytes::new(),
    };
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut decoder =
            flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(64 << 10, reader));
        loop {
            let mut buf = BytesMut::zeroed(INFLATE_CHUNK);
            match decoder.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf.freeze())).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let kind = match err.kind() {
                        io::ErrorKind::UnexpectedEof => io::ErrorKind::UnexpectedEof,
                        io::ErrorKind::ConnectionAborted => io::ErrorKind::ConnectionAborted,
                        _ => io::ErrorKind::InvalidData,
                    };
                    let err =
                        io::Error::new(kind, format!("error decompressing request body: {err}"));
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
        }
    });
    Box::pin(receiver_stream(rx))
}

/// Why copying a body into a file failed.
#[derive(Debug)]
pub enum PumpError {
    /// Reading the body failed (client, multipart or gzip error).
    Source(io::Error),
    /// Writing the file failed.
    Write(io::Error),
}

/// Copies `source` into `file` on the blocking pool and returns the file.
pub async fn pump_into_file<S>(file: File, mut source: S) -> Result<File, PumpError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(DEPTH);
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = file;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
        }
        Ok::<_, io::Error>(file)
    });
    let mut source_error = None;
    while let Some(chunk) = source.next().await {
        match chunk {
            Ok(chunk) if chunk.is_empty() => {}
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    // The writer stopped: its error is reported below.
                    break;
                }
            }
            Err(err) => {
                source_error = Some(err);
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .unwrap_or_else(|join| Err(io::Error::other(format!("file writer failed: {join}"))));
    match (written, source_error) {
        (Err(err), _) => Err(PumpError::Write(err)),
        (Ok(_), Some(err)) => Err(PumpError::Source(err)),
        (Ok(file), None) => Ok(file),
    }
}

/// Streams `file` from `offset`, `len` bytes or to its end, optionally gzipped.
pub fn file_stream(file: File, offset: u64, len: Option<u64>, gzip: bool) -> ChunkStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH);
    tokio::task::spawn_blocking(move || {
        let result = if gzip {
            read_gzipped(&file, offset, &tx)
        } else {
            read_plain(&file, offset, len, &tx)
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "file download failed after the response started");
            let _ = tx.blocking_send(Err(err));
        }
    });
    Box::pin(receiver_stream(rx))
}

/// Sends chunks of `file`; `Ok` also when the receiver went away.
fn read_plain(
    file: &File,
    mut offset: u64,
    mut remaining: Option<u64>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    loop {
        let want = match remaining {
            Some(0) => return Ok(()),
            Some(r) => usize::try_from(r).unwrap_or(READ_CHUNK).min(READ_CHUNK),
            None => READ_CHUNK,
        };
        let mut buf = BytesMut::zeroed(want);
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => {
                return match remaining {
                    Some(r) if r > 0 => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while it was being read",
                    )),
                    _ => Ok(()),
                };
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        buf.truncate(n);
        let n = n as u64;
        offset += n;
        remaining = remaining.map(|r| r.saturating_sub(n));
        if tx.blocking_send(Ok(buf.freeze())).is_err() {
            return Ok(());
        }
    }
}

/// Sends `file` from `offset` to its end, gzip-compressed.
fn read_gzipped(
    file: &File,
    mut offset: u64,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    // Level 1: downloads are bound by compression speed long before the network.
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(READ_CHUNK), flate2::Compression::fast());
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match file.read_at(&mut buf, offset) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if n == 0 {
            let rest = encoder.finish()?;
            if !rest.is_empty() {
                let _ = tx.blocking_send(Ok(Bytes::from(rest)));
            }
            return Ok(());
        }
        offset += n as u64;
        encoder.write_all(&buf[..n])?;
        if encoder.get_ref().len() >= INFLATE_CHUNK {
            let out = std::mem::take(encoder.get_mut());
            if tx.blocking_send(Ok(Bytes::from(out))).is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: Vec<Vec<u8>>) -> ChunkStream {
        Box::pin(futures::stream::iter(
            parts.into_iter().map(|p| Ok(Bytes::from(p))),
        ))
    }

    async fn collect(mut s: ChunkStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn gunzip_handles_split_and_concatenated_members() {
        let mut all = gz(b"hello ");
        all.extend(gz(b"world"));
        let parts = all.chunks(3).map(<[u8]>::to_vec).collect();
        assert_eq!(
            collect(gunzip(chunks(parts))).await.unwrap(),
            b"hello world"
        );
    }

    #[tokio::test]
    async fn truncated_gzip_is_an_error() {
        let data = gz(&vec![7u8; 100_000]);
        let cut = data[..data.len() - 10].to_vec();
        let err = collect(gunzip(chunks(vec![cut]))).await.unwrap_err();
        assert!(
            err.to_string().contains("error decompressing request body"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn garbage_is_not_gzip() {
        let err = collect(gunzip(chunks(vec![b"plain text, not gzip".to_vec()])))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn file_stream_reads_ranges_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let open = || File::open(&path).unwrap();
        assert_eq!(
            collect(file_stream(open(), 0, None, false)).await.unwrap(),
            data
        );
        assert_eq!(
            collect(file_stream(open(), 10, Some(5), false))
                .await
                .unwrap(),
            &data[10..15]
        );
        let zipped = collect(file_stream(open(), 0, None, true)).await.unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, data);
    }
}
