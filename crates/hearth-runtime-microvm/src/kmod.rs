// SPDX-License-Identifier: Apache-2.0
//! Kernel modules of an unpacked kernel package: which to load, in which order.
//!
//! Debian's kernel packages ship no `modules.dep` (depmod runs at install time, and we
//! never install the guest kernel on the host), so dependencies are read from each
//! module's `.modinfo` ELF section (`depends=` and `softdep=pre:`), the same data
//! depmod uses. Modules listed in `modules.builtin` need no loading.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Resolving kernel modules failed.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// The module tree could not be read.
    #[error("failed to read kernel modules under {dir}")]
    ReadTree {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// A module file is not an ELF object with a `.modinfo` section.
    #[error("{path} is not a kernel module: {reason}")]
    BadModule {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A needed module is neither built in nor shipped.
    #[error("kernel module {name} is neither built in nor present")]
    Missing {
        /// Module name.
        name: String,
    },
}

/// A module to load, with its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical module name (`-` replaced by `_`).
    pub name: String,
    /// The `.ko` file.
    pub path: PathBuf,
}

/// Module names are compared with `-` and `_` equivalent, as the kernel does.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The modules of one kernel: `<root>/lib/modules/<version>/`.
#[derive(Debug)]
pub struct ModuleTree {
    files: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleTree {
    /// Indexes every `.ko` under `dir` (a `lib/modules/<version>` directory).
    pub fn open(dir: &Path) -> Result<Self, KmodError> {
        let read_err = |err| KmodError::ReadTree {
            dir: dir.to_owned(),
            err,
        };
        let mut files = HashMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).map_err(read_err)? {
                let entry = entry.map_err(read_err)?;
                let path = entry.path();
                if entry.file_type().map_err(read_err)?.is_dir() {
                    stack.push(path);
                } else if let Some(stem) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    files.insert(canonical(stem), path);
                }
            }
        }
        let builtin = match fs::read_to_string(dir.join("modules.builtin")) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
                .map(canonical)
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(err) => return Err(read_err(err)),
        };
        Ok(Self { files, builtin })
    }

    /// Whether `name` is compiled into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical(name))
    }

    /// The modules to load for `wanted`, dependencies first, each once; built-in
    /// modules are skipped.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<Module>, KmodError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            self.visit(&canonical(name), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), KmodError> {
        if done.contains(name) || self.is_builtin(name) {
            return Ok(());
        }
        // Marked before recursing: a dependency cycle (never in a sane kernel) ends here.
        done.insert(name.to_owned());
        let Some(path) = self.files.get(name) else {
            return Err(KmodError::Missing {
                name: name.to_owned(),
            });
        };
        let info = modinfo(path)?;
        for dep in info.depends.iter().chain(&info.softdeps_pre) {
            // A soft dependency is optional by definition: skip it when absent.
            let dep = canonical(dep);
            if info.softdeps_pre.iter().any(|s| canonical(s) == dep)
                && !self.files.contains_key(&dep)
            {
                continue;
            }
            self.visit(&dep, done, order)?;
        }
        order.push(Module {
            name: name.to_owned(),
            path: path.clone(),
        });
        Ok(())
    }
}

/// What a module's `.modinfo` says about its dependencies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// Hard dependencies (`depends=`).
    pub depends: Vec<String>,
    /// Modules to load first if present (`softdep=pre: …`).
    pub softdeps_pre: Vec<String>,
}

/// Reads the `.modinfo` section of a `.ko` file.
pub fn modinfo(path: &Path) -> Result<ModInfo, KmodError> {
    let data = fs::read(path).map_err(|err| KmodError::ReadTree {
        dir: path.to_owned(),
        err,
    })?;
    let section = elf_section(&data, ".modinfo").map_err(|reason| KmodError::BadModule {
        path: path.to_owned(),
        reason,
    })?;
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some(deps) = entry.strip_prefix("depends=") {
            info.depends
                .extend(deps.split(',').filter(|d| !d.is_empty()).map(str::to_owned));
        } else if let Some(soft) = entry.strip_prefix("softdep=") {
            // Format: "pre: a b post: c".
            let mut pre = false;
            for word in soft.split_whitespace() {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    w if pre => info.softdeps_pre.push(w.to_owned()),
                    _ => {}
                }
            }
        }
    }
    Ok(info)
}

fn read_u16(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}
fn read_u32(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}
fn read_u64(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(off..off + 8)?.try_into().ok()?))
}

/// The bytes of the named section of a little-endian ELF64 object.
fn elf_section<'a>(d: &'a [u8], wanted: &str) -> Result<&'a [u8], &'static str> {
    if d.get(..4) != Some(b"\x7fELF") {
        return Err("no ELF magic");
    }
    if d.get(4) != Some(&2) || d.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 object");
    }
    let bad = "truncated ELF headers";
    let shoff = usize::try_from(read_u64(d, 0x28).ok_or(bad)?).map_err(|_| bad)?;
    let shentsize = usize::from(read_u16(d, 0x3a).ok_or(bad)?);
    let shnum = usize::from(read_u16(d, 0x3c).ok_or(bad)?);
    let shstrndx = usize::from(read_u16(d, 0x3e).ok_or(bad)?);
    let section = |i: usize| -> Option<(u32, &'a [u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = read_u32(d, h)?;
        let off = usize::try_from(read_u64(d, h + 24)?).ok()?;
        let size = usize::try_from(read_u64(d, h + 32)?).ok()?;
        Some((name, d.get(off..off.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx).ok_or(bad)?;
    for i in 0..shnum {
        let (name_off, bytes) = section(i).ok_or(bad)?;
        let name = names
            .get(name_off as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .ok_or(bad)?;
        if name == wanted.as_bytes() {
            return Ok(bytes);
        }
    }
    Err("no .modinfo section")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object with a section-name table and one `.modinfo` section.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        let shstr_off = d.len();
        d.extend_from_slice(shstr);
        let info_off = d.len();
        d.extend_from_slice(modinfo);
        while !d.len().is_multiple_of(8) {
            d.push(0);
        }
        let shoff = d.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            d.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, shstr_off, shstr.len());
        sh(11, info_off, modinfo.len());
        d[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        d[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        d[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        d[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        d
    }

    fn tree(mods: &[(&str, &str)], builtin: &[&str]) -> (PathBuf, ModuleTree) {
        let dir = std::env::temp_dir().join(format!(
            "hearth-kmod-test-{}-{}",
            std::process::id(),
            mods.len() * 31 + builtin.len()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("kernel/drivers")).unwrap();
        for (name, info) in mods {
            let mut bytes = info.replace(';', "\0").into_bytes();
            bytes.push(0);
            fs::write(
                dir.join(format!("kernel/drivers/{name}.ko")),
                fake_module(&bytes),
            )
            .unwrap();
        }
        let b: String = builtin
            .iter()
            .map(|n| format!("kernel/x/{n}.ko\n"))
            .collect();
        fs::write(dir.join("modules.builtin"), b).unwrap();
        let t = ModuleTree::open(&dir).unwrap();
        (dir, t)
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let (dir, t) = tree(
            &[
                ("virtio_ring", "name=virtio_ring;depends="),
                ("virtio", "name=virtio;depends=virtio_ring"),
                ("virtio_net", "depends=virtio_ring,virtio,net_failover"),
                ("net_failover", "depends=failover"),
                ("failover", "depends="),
                ("virtio-rng", "depends=virtio,virtio_ring"),
            ],
            &[],
        );
        let order: Vec<_> = t
            .load_order(&["virtio_net", "virtio_rng"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_rng"
            ]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn builtin_modules_are_skipped_and_missing_ones_fail() {
        let (dir, t) = tree(&[("virtio_blk", "depends=virtio")], &["virtio", "ext4"]);
        let order = t.load_order(&["ext4", "virtio_blk"]).unwrap();
        assert_eq!(order.len(), 1);
        assert!(matches!(
            t.load_order(&["nope"]),
            Err(KmodError::Missing { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn softdeps_are_optional() {
        let (dir, t) = tree(
            &[
                ("ext4", "depends=jbd2;softdep=pre: crc32c absent_one"),
                ("jbd2", "depends="),
                ("crc32c", "depends="),
            ],
            &[],
        );
        let names: Vec<_> = t
            .load_order(&["ext4"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["jbd2", "crc32c", "ext4"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn non_elf_is_rejected() {
        assert_eq!(elf_section(b"nope", ".modinfo"), Err("no ELF magic"));
    }
}
