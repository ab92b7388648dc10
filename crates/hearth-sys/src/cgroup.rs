// SPDX-License-Identifier: Apache-2.0
//! Cgroups on v1, v2 and hybrid hosts: where each controller lives, and the few
//! file operations a cgroup directory needs.
//!
//! A controller is taken from the v2 (unified) hierarchy when that hierarchy lists it
//! in its root's `cgroup.controllers`, and from its own v1 hierarchy otherwise. All
//! paths are absolute under the hierarchies' mount points, independent of the
//! cgroup the calling process sits in.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A resource controller Hearth uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    /// CPU bandwidth (`cpu`).
    Cpu,
    /// CPU accounting (`cpuacct`, v1 only; v2 accounts in `cpu.stat` always).
    Cpuacct,
    /// Memory (`memory`).
    Memory,
    /// Process count (`pids`).
    Pids,
    /// Freezing (`freezer` on v1; built into every v2 cgroup).
    Freezer,
}

impl Controller {
    /// The controller's kernel name.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
        }
    }

    /// All controllers Hearth uses.
    pub const ALL: [Controller; 5] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Memory,
        Controller::Pids,
        Controller::Freezer,
    ];
}

/// Which hierarchy a controller is served by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// A v1 hierarchy mounted at this path (possibly shared with other controllers).
    V1(PathBuf),
    /// The v2 unified hierarchy mounted at this path.
    V2(PathBuf),
}

impl Hierarchy {
    /// The hierarchy's mount point.
    pub fn root(&self) -> &Path {
        match self {
            Hierarchy::V1(p) | Hierarchy::V2(p) => p,
        }
    }

    /// Whether this is the unified hierarchy.
    pub fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2(_))
    }
}

/// Where the cgroup hierarchies of this host are mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    v2: Option<PathBuf>,
    v2_controllers: Vec<String>,
    v1: HashMap<String, PathBuf>,
}

impl CgroupLayout {
    /// Reads `/proc/self/mountinfo` and the unified root's `cgroup.controllers`.
    pub fn detect() -> io::Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut layout = Self::from_mountinfo(&mountinfo);
        if let Some(v2) = &layout.v2 {
            let controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))?;
            layout.v2_controllers = controllers.split_whitespace().map(str::to_owned).collect();
        }
        Ok(layout)
    }

    /// Parses cgroup mounts out of mountinfo text; v2 controllers are left empty.
    pub fn from_mountinfo(mountinfo: &str) -> Self {
        let mut layout = Self::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (Some(fstype), Some(_source), Some(options)) =
                (right.next(), right.next(), right.next())
            else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            match fstype {
                "cgroup2" if layout.v2.is_none() => layout.v2 = Some(mount_point),
                "cgroup" => {
                    for opt in options.split(',') {
                        if Controller::ALL.iter().any(|c| c.name() == opt) {
                            layout
                                .v1
                                .entry(opt.to_owned())
                                .or_insert(mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// Records which controllers the unified hierarchy offers (for tests).
    pub fn with_v2_controllers(mut self, controllers: &[&str]) -> Self {
        self.v2_controllers = controllers.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// The unified hierarchy's mount point, if mounted.
    pub fn v2_root(&self) -> Option<&Path> {
        self.v2.as_deref()
    }

    /// The hierarchy serving `controller`, if any does.
    pub fn hierarchy(&self, controller: Controller) -> Option<Hierarchy> {
        if let Some(v2) = &self.v2 {
            let offered = match controller {
                // Accounting and freezing are part of every v2 cgroup.
                Controller::Cpuacct => self.v2_controllers.iter().any(|c| c == "cpu"),
                Controller::Freezer => !self.v1.contains_key("freezer"),
                other => self.v2_controllers.iter().any(|c| c == other.name()),
            };
            if offered {
                return Some(Hierarchy::V2(v2.clone()));
            }
        }
        self.v1
            .get(controller.name())
            .map(|p| Hierarchy::V1(p.clone()))
    }
}

/// Makes cgroup migrations cheap host-wide by setting `favordynmods` on the unified
/// hierarchy mounted at `v2_root` (a no-op when set). Returns whether it changed.
///
/// Moving a task between cgroups takes a per-cpu rwsem for writing, and without
/// this option every such write waits for an RCU grace period: milliseconds on a
/// busy host, for every launch. The option keeps the rwsem in its slow-reader mode
/// instead, which costs forks and exits an atomic operation each. The flag is
/// global: setting it on the unified root helps v1 hierarchies too.
pub fn favor_dynamic_modifications(v2_root: &Path) -> io::Result<bool> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let options = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = unescape(left.split(' ').nth(4)?);
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let options = right.nth(1)?;
            (fstype == "cgroup2" && Path::new(&mount_point) == v2_root).then(|| options.to_owned())
        })
        .next_back()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount there"))?;
    let options: Vec<&str> = options.split(',').collect();
    if options.contains(&"favordynmods") {
        return Ok(false);
    }
    // Reconfiguring cgroup2 resets every option not given again: pass them all.
    let ctx = crate::mount::FsContext::pick(v2_root)?;
    for opt in options
        .iter()
        .filter(|o| !matches!(**o, "rw" | "ro" | "seclabel"))
        .chain(std::iter::once(&"favordynmods"))
    {
        ctx.set_flag(opt)?;
    }
    ctx.reconfigure()?;
    Ok(true)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len() + 1
            && bytes
                .get(i + 1..i + 4)
                .is_some_and(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Creates the cgroup directory `dir`; an existing one is fine.
pub fn create(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Writes `value` to the control file `dir/file` in one write(2).
pub fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(file))?;
    f.write_all(value.as_bytes())
}

/// Reads the control file `dir/file`.
pub fn read(dir: &Path, file: &str) -> io::Result<String> {
    std::fs::read_to_string(dir.join(file))
}

/// Reads a control file holding one unsigned number (`max` reads as `u64::MAX`).
pub fn read_u64(dir: &Path, file: &str) -> io::Result<u64> {
    let text = read(dir, file)?;
    let text = text.trim();
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{file}: {text:?}")))
}

/// Reads one `key value` line of a flat-keyed file such as `memory.stat`.
pub fn read_keyed(dir: &Path, file: &str, key: &str) -> io::Result<Option<u64>> {
    let text = read(dir, file)?;
    Ok(text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    }))
}

/// Moves process `pid` (all its threads) into `dir`.
pub fn add_process(dir: &Path, pid: u32) -> io::Result<()> {
    write(dir, "cgroup.procs", &pid.to_string())
}

/// The processes in `dir` (not in its descendants).
pub fn processes(dir: &Path) -> io::Result<Vec<u32>> {
    let text = read(dir, "cgroup.procs")?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Removes the cgroup directory `dir`, retrying `EBUSY` until `timeout` while the
/// kernel finishes tearing down exited tasks. A missing directory is fine.
pub fn remove(dir: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_uses_v1_for_every_controller() {
        let layout = CgroupLayout::from_mountinfo(HYBRID);
        assert_eq!(layout.v2_root(), Some(Path::new("/sys/fs/cgroup/unified")));
        for c in Controller::ALL {
            let h = layout.hierarchy(c).unwrap();
            assert_eq!(
                h,
                Hierarchy::V1(PathBuf::from(format!("/sys/fs/cgroup/{}", c.name())))
            );
        }
    }

    #[test]
    fn controller_offered_by_unified_root_is_v2() {
        let layout = CgroupLayout::from_mountinfo(HYBRID).with_v2_controllers(&["memory", "pids"]);
        assert!(layout.hierarchy(Controller::Memory).unwrap().is_v2());
        assert!(layout.hierarchy(Controller::Pids).unwrap().is_v2());
        assert!(!layout.hierarchy(Controller::Cpu).unwrap().is_v2());
    }

    #[test]
    fn pure_v2_host_freezes_and_accounts_in_v2() {
        let text = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout =
            CgroupLayout::from_mountinfo(text).with_v2_controllers(&["cpu", "memory", "pids"]);
        for c in Controller::ALL {
            assert_eq!(
                layout.hierarchy(c),
                Some(Hierarchy::V2(PathBuf::from("/sys/fs/cgroup")))
            );
        }
    }

    #[test]
    fn comounted_v1_controllers_share_a_directory() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let layout = CgroupLayout::from_mountinfo(text);
        assert_eq!(
            layout.hierarchy(Controller::Cpu),
            layout.hierarchy(Controller::Cpuacct)
        );
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn removing_a_missing_cgroup_is_fine() {
        remove(
            Path::new("/sys/fs/cgroup/pids/hearth-no-such-cgroup"),
            Duration::ZERO,
        )
        .unwrap();
    }
}
