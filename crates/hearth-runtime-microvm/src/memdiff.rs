// SPDX-License-Identifier: Apache-2.0
//! Shrinking a saved VM to what differs from its template.
//!
//! A sandbox restored from a template runs on the template's RAM mapped
//! copy-on-write, so most of its memory still *is* the template's. QEMU 7.2 cannot
//! save a difference, so its migration stream is rewritten on the fly: RAM pages of
//! the guest's RAM block that equal the template's page at the same offset are
//! dropped (zero pages too, where the template's page is zero). Restoring the result
//! onto the template's RAM (mapped private again) yields exactly the saved memory:
//! the loader writes only the pages present, and the rest already holds the
//! template's contents. An idle sandbox shrinks from ~100 MiB to a few MiB.
//!
//! Format (QEMU 7.2 precopy, `migration/savevm.c` and `migration/ram.c`): magic,
//! version, then sections. The RAM section's records are parsed; everything from the
//! first non-iterable device section on is copied verbatim, since RAM always
//! completes before devices. Anything unexpected (compression, XBZRLE, another
//! iterable section) is an error: the caller then saves the full stream instead.

use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

const MAGIC: u32 = 0x5145_564d;
const VERSION: u32 = 3;

const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const CONFIGURATION: u8 = 0x07;
const FOOTER: u8 = 0x7e;

const PAGE: usize = 4096;
const FLAG_MASK: u64 = (PAGE as u64) - 1;
const F_ZERO: u64 = 0x02;
const F_MEM_SIZE: u64 = 0x04;
const F_PAGE: u64 = 0x08;
const F_EOS: u64 = 0x10;
const F_CONTINUE: u64 = 0x20;

/// Rewriting a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Reading the stream, the base or writing the output failed.
    #[error("migration stream I/O failed")]
    Io(#[from] io::Error),
    /// The stream has something this rewriter does not handle.
    #[error("unsupported migration stream: {0}")]
    Unsupported(String),
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// RAM page records (data or zero) of the diffed block.
    pub pages: u64,
    /// Of those, kept because they differ from the base.
    pub kept: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// The base pages to compare with (the template's RAM).
pub trait Base {
    /// Fills `buf` (one page) with the base's page at `offset`; `false` if the base
    /// has no such page.
    fn page(&self, offset: u64, buf: &mut [u8; PAGE]) -> bool;

    /// Whether the base's page at `offset` is all zeroes, if known without reading
    /// it (most of a template's RAM is never touched).
    fn is_zero(&self, offset: u64) -> Option<bool> {
        let _ = offset;
        None
    }
}

impl Base for std::fs::File {
    fn page(&self, offset: u64, buf: &mut [u8; PAGE]) -> bool {
        self.read_exact_at(buf, offset).is_ok()
    }
}

struct Out<W: Write> {
    w: W,
    n: u64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.n += b.len() as u64;
        self.w.write_all(b)
    }
}

fn u8_(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}
fn be32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn be64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}
fn idstr(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let n = u8_(r)?;
    let mut s = vec![0u8; usize::from(n)];
    r.read_exact(&mut s)?;
    Ok(s)
}

/// Copies the stream from `input` to `output`, dropping pages of RAM block `block`
/// equal to `base`'s.
pub fn rewrite<R: Read, W: Write>(
    input: R,
    output: W,
    block: &str,
    base: &dyn Base,
) -> Result<DiffStats, DiffError> {
    // Records are small reads; a pipe would otherwise cost a syscall each.
    let mut input = io::BufReader::with_capacity(1 << 20, input);
    let mut out = Out { w: output, n: 0 };
    let mut stats = DiffStats::default();
    let magic = be32(&mut input)?;
    let version = be32(&mut input)?;
    if magic != MAGIC || version != VERSION {
        return Err(DiffError::Unsupported(format!(
            "magic {magic:#x} version {version}"
        )));
    }
    out.put(&magic.to_be_bytes())?;
    out.put(&version.to_be_bytes())?;
    let mut ram_section = None;
    // The block of the last record read: a record may continue it across sections.
    let mut current: Vec<u8> = Vec::new();
    loop {
        let kind = match u8_(&mut input) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        };
        match kind {
            CONFIGURATION => {
                let n = be32(&mut input)?;
                let mut name = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX).min(1 << 16)];
                input.read_exact(&mut name)?;
                out.put(&[kind])?;
                out.put(&n.to_be_bytes())?;
                out.put(&name)?;
            }
            SECTION_START | SECTION_PART | SECTION_END => {
                let id = be32(&mut input)?;
                out.put(&[kind])?;
                out.put(&id.to_be_bytes())?;
                if kind == SECTION_START {
                    let name = idstr(&mut input)?;
                    let instance = be32(&mut input)?;
                    let version = be32(&mut input)?;
                    out.put(&[u8::try_from(name.len()).expect("read from a u8 length")])?;
                    out.put(&name)?;
                    out.put(&instance.to_be_bytes())?;
                    out.put(&version.to_be_bytes())?;
                    if name != b"ram" {
                        return Err(DiffError::Unsupported(format!(
                            "iterable section {}",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    ram_section = Some(id);
                } else if ram_section != Some(id) {
                    return Err(DiffError::Unsupported(format!("section {id} is not RAM")));
                }
                ram_records(
                    &mut input,
                    &mut out,
                    block.as_bytes(),
                    base,
                    &mut current,
                    &mut stats,
                )?;
            }
            FOOTER => {
                let id = be32(&mut input)?;
                out.put(&[kind])?;
                out.put(&id.to_be_bytes())?;
            }
            _ => {
                // Device state, EOF marker and the trailing description: verbatim.
                out.put(&[kind])?;
                let n = io::copy(&mut input, &mut out.w)?;
                out.n += n;
                break;
            }
        }
    }
    out.w.flush()?;
    stats.bytes_out = out.n;
    Ok(stats)
}

/// One RAM section's records, up to and including its end-of-section record.
fn ram_records<R: Read, W: Write>(
    input: &mut R,
    out: &mut Out<W>,
    block: &[u8],
    base: &dyn Base,
    current: &mut Vec<u8>,
    stats: &mut DiffStats,
) -> Result<(), DiffError> {
    // The block named by the last record we wrote in this section; `None` forces a
    // name on the next (always valid, whatever the loader remembers).
    let mut emitted: Option<Vec<u8>> = None;
    let mut data = [0u8; PAGE];
    let mut basepage = [0u8; PAGE];
    loop {
        let header = be64(input)?;
        let flags = header & FLAG_MASK;
        let addr = header & !FLAG_MASK;
        let carries_page = flags & (F_ZERO | F_PAGE) != 0;
        if carries_page && flags & F_CONTINUE == 0 {
            *current = idstr(input)?;
        } else if carries_page && current.is_empty() {
            return Err(DiffError::Unsupported(
                "a page continues a block never named".into(),
            ));
        }
        match flags & !F_CONTINUE {
            F_MEM_SIZE => {
                out.put(&header.to_be_bytes())?;
                let mut total = addr;
                while total > 0 {
                    let name = idstr(input)?;
                    let len = be64(input)?;
                    out.put(&[u8::try_from(name.len()).expect("read from a u8 length")])?;
                    out.put(&name)?;
                    out.put(&len.to_be_bytes())?;
                    total = total.checked_sub(len).ok_or_else(|| {
                        DiffError::Unsupported("RAM block sizes exceed the total".into())
                    })?;
                }
                emitted = None;
            }
            F_EOS => {
                out.put(&header.to_be_bytes())?;
                return Ok(());
            }
            f @ (F_ZERO | F_PAGE) => {
                let zero_byte = if f == F_ZERO { Some(u8_(input)?) } else { None };
                if f == F_PAGE {
                    input.read_exact(&mut data)?;
                }
                let diffed = current.as_slice() == block;
                let same = diffed
                    && match (zero_byte, base.is_zero(addr)) {
                        (Some(0), Some(z)) => z,
                        (Some(0), None) => {
                            base.page(addr, &mut basepage) && basepage.iter().all(|&b| b == 0)
                        }
                        (Some(_), _) => false,
                        // QEMU sends a data page only when it is not all zeroes.
                        (None, Some(true)) => false,
                        (None, _) => base.page(addr, &mut basepage) && basepage == data,
                    };
                if diffed {
                    stats.pages += 1;
                }
                if same {
                    continue;
                }
                if diffed {
                    stats.kept += 1;
                }
                let named = emitted.as_deref() != Some(current.as_slice());
                let h = (addr | (flags & !F_CONTINUE)) | if named { 0 } else { F_CONTINUE };
                out.put(&h.to_be_bytes())?;
                if named {
                    out.put(&[u8::try_from(current.len()).expect("read from a u8 length")])?;
                    out.put(current)?;
                    emitted = Some(current.clone());
                }
                match zero_byte {
                    Some(b) => out.put(&[b])?,
                    None => out.put(&data)?,
                }
            }
            other => {
                return Err(DiffError::Unsupported(format!(
                    "RAM record flags {other:#x}"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct MemBase(Vec<u8>);
    impl Base for MemBase {
        fn page(&self, offset: u64, buf: &mut [u8; PAGE]) -> bool {
            let o = offset as usize;
            match self.0.get(o..o + PAGE) {
                Some(p) => {
                    buf.copy_from_slice(p);
                    true
                }
                None => false,
            }
        }
    }

    /// A stream builder following QEMU's layout.
    struct S(Vec<u8>);
    impl S {
        fn new() -> Self {
            let mut v = MAGIC.to_be_bytes().to_vec();
            v.extend_from_slice(&VERSION.to_be_bytes());
            v.push(CONFIGURATION);
            v.extend_from_slice(&7u32.to_be_bytes());
            v.extend_from_slice(b"microvm");
            Self(v)
        }
        fn start_ram(&mut self) {
            self.0.push(SECTION_START);
            self.0.extend_from_slice(&2u32.to_be_bytes());
            self.0.push(3);
            self.0.extend_from_slice(b"ram");
            self.0.extend_from_slice(&0u32.to_be_bytes());
            self.0.extend_from_slice(&4u32.to_be_bytes());
            self.0
                .extend_from_slice(&((8 * PAGE as u64 + PAGE as u64) | F_MEM_SIZE).to_be_bytes());
            for (n, l) in [(&b"mem"[..], 8 * PAGE as u64), (&b"rom"[..], PAGE as u64)] {
                self.0.push(n.len() as u8);
                self.0.extend_from_slice(n);
                self.0.extend_from_slice(&l.to_be_bytes());
            }
        }
        fn page(&mut self, block: Option<&str>, addr: u64, fill: Option<u8>) {
            let flag = if fill.is_some() { F_PAGE } else { F_ZERO };
            let cont = if block.is_none() { F_CONTINUE } else { 0 };
            self.0
                .extend_from_slice(&(addr | flag | cont).to_be_bytes());
            if let Some(b) = block {
                self.0.push(b.len() as u8);
                self.0.extend_from_slice(b.as_bytes());
            }
            match fill {
                Some(f) => self.0.extend_from_slice(&[f; PAGE]),
                None => self.0.push(0),
            }
        }
        fn part(&mut self) {
            self.0.push(SECTION_PART);
            self.0.extend_from_slice(&2u32.to_be_bytes());
        }
        fn eos(&mut self) {
            self.0.extend_from_slice(&F_EOS.to_be_bytes());
            self.0.push(FOOTER);
            self.0.extend_from_slice(&2u32.to_be_bytes());
        }
        fn devices(&mut self) {
            self.0
                .extend_from_slice(&[0x04, 9, 9, 9, 0x1f, 0x06, 1, 2, 3]);
        }
    }

    /// Applies a stream's pages onto `mem` (the loader's view) and returns the blocks.
    fn load(stream: &[u8], mut mem: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        let mut rom = vec![0xEEu8; PAGE];
        let mut r = &stream[8..];
        let mut block = Vec::new();
        loop {
            let kind = u8_(&mut r).unwrap();
            match kind {
                CONFIGURATION => {
                    let n = be32(&mut r).unwrap() as usize;
                    r = &r[n..];
                }
                SECTION_START | SECTION_PART | SECTION_END => {
                    be32(&mut r).unwrap();
                    if kind == SECTION_START {
                        idstr(&mut r).unwrap();
                        be32(&mut r).unwrap();
                        be32(&mut r).unwrap();
                    }
                    loop {
                        let h = be64(&mut r).unwrap();
                        let (flags, addr) = (h & FLAG_MASK, (h & !FLAG_MASK) as usize);
                        if flags & (F_ZERO | F_PAGE) != 0 && flags & F_CONTINUE == 0 {
                            block = idstr(&mut r).unwrap();
                        }
                        let target = if block == b"mem" { &mut mem } else { &mut rom };
                        match flags & !F_CONTINUE {
                            F_MEM_SIZE => {
                                let mut t = addr as u64;
                                while t > 0 {
                                    idstr(&mut r).unwrap();
                                    t -= be64(&mut r).unwrap();
                                }
                            }
                            F_ZERO => {
                                let b = u8_(&mut r).unwrap();
                                target[addr..addr + PAGE].fill(b);
                            }
                            F_PAGE => {
                                target[addr..addr + PAGE].copy_from_slice(&r[..PAGE]);
                                r = &r[PAGE..];
                            }
                            F_EOS => break,
                            f => panic!("flags {f:#x}"),
                        }
                    }
                }
                FOOTER => {
                    be32(&mut r).unwrap();
                }
                _ => return (mem, rom),
            }
        }
    }

    #[test]
    fn restoring_the_diff_on_the_base_gives_the_full_memory() {
        // Base: page i filled with i (page 0 zero, page 7 zero).
        let mut base = vec![0u8; 8 * PAGE];
        for i in 1..7 {
            base[i * PAGE..(i + 1) * PAGE].fill(i as u8);
        }
        let mut s = S::new();
        s.start_ram();
        s.page(Some("mem"), 0, None); // zero, base zero: dropped
        s.page(None, PAGE as u64, Some(1)); // equal: dropped
        s.page(None, 2 * PAGE as u64, Some(9)); // differs: kept, must carry the name
        s.page(None, 3 * PAGE as u64, None); // zero over non-zero base: kept
        s.page(Some("rom"), 0, Some(5)); // another block: kept
        s.page(Some("mem"), 4 * PAGE as u64, Some(4)); // equal: dropped
        s.page(None, 5 * PAGE as u64, Some(5)); // equal: dropped
        s.page(None, 6 * PAGE as u64, Some(6)); // equal: dropped
        s.page(None, 7 * PAGE as u64, Some(7)); // differs from zero base: kept
        s.eos();
        // The next section continues the previous block without naming it.
        s.part();
        s.page(None, 6 * PAGE as u64, Some(8)); // differs: kept, named again
        s.eos();
        s.devices();
        let full = s.0;
        let mut out = Vec::new();
        let stats = rewrite(&full[..], &mut out, "mem", &MemBase(base.clone())).unwrap();
        // A full stream names every page of the block, as QEMU's does.
        assert_eq!((stats.pages, stats.kept), (9, 4));
        assert!(out.len() < full.len());
        assert!(out.ends_with(&[0x04, 9, 9, 9, 0x1f, 0x06, 1, 2, 3]));
        // Full stream onto zeroed RAM == diff onto the base.
        let (want_mem, want_rom) = load(&full, vec![0u8; 8 * PAGE]);
        let (got_mem, got_rom) = load(&out, base);
        assert!(want_mem == got_mem, "memory differs");
        assert_eq!(want_rom, got_rom);
    }

    #[test]
    fn unsupported_records_are_refused() {
        let mut s = S::new();
        s.start_ram();
        s.0.extend_from_slice(&(0x40u64).to_be_bytes()); // XBZRLE
        let err = rewrite(&s.0[..], Vec::new(), "mem", &MemBase(vec![])).unwrap_err();
        assert!(matches!(err, DiffError::Unsupported(_)), "{err}");
        let err = rewrite(&b"nope0000"[..], Vec::new(), "mem", &MemBase(vec![])).unwrap_err();
        assert!(matches!(err, DiffError::Unsupported(_)), "{err}");
    }
}
