// SPDX-License-Identifier: Apache-2.0
//! The sandbox's seccomp policy and capability set.
//!
//! The seccomp policy follows Docker's default profile (moby `profiles/seccomp`) for
//! a container with Docker's default capabilities on x86_64: an allowlist where
//! everything else fails with `EPERM`, `clone` without namespace flags, `personality`
//! limited to the harmless personas, `socket` without `AF_VSOCK`, and `clone3`
//! failing with `ENOSYS` so that libc falls back to the inspectable `clone`. It is
//! one notch stricter: `io_uring_*` is denied, as current Docker releases do, and
//! so are x32-ABI numbers and every foreign architecture (killed).
//!
//! no_new_privs is not set: `sudo` inside the sandbox must keep working. The
//! bounding set caps what any setuid program can gain.

use hearth_sys::caps::{CapSet, Capability};
use hearth_sys::seccomp::{
    ArgCondition, SeccompAction, SeccompPolicy, SeccompProgram, SeccompProgramError, SeccompRule,
};

/// Docker's default capability set: what the sandbox's root holds and what bounds
/// every program in it.
pub const DEFAULT_CAPABILITIES: CapSet = CapSet::of(&[
    Capability::CHOWN,
    Capability::DAC_OVERRIDE,
    Capability::FSETID,
    Capability::FOWNER,
    Capability::MKNOD,
    Capability::NET_RAW,
    Capability::SETGID,
    Capability::SETUID,
    Capability::SETFCAP,
    Capability::SETPCAP,
    Capability::NET_BIND_SERVICE,
    Capability::SYS_CHROOT,
    Capability::KILL,
    Capability::AUDIT_WRITE,
]);

/// A policy that could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The seccomp compiler rejected the policy.
    #[error("failed to compile the seccomp policy")]
    Compile(#[source] SeccompProgramError),
}

/// io_pgetevents(2) on x86_64; the libc crate lacks the constant.
const SYS_IO_PGETEVENTS: libc::c_long = 333;

/// System calls allowed unconditionally (Docker's default list, x86_64 names).
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_access,
    libc::SYS_adjtimex,
    libc::SYS_alarm,
    libc::SYS_arch_prctl,
    libc::SYS_bind,
    libc::SYS_brk,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_chdir,
    libc::SYS_chmod,
    libc::SYS_chown,
    // CAP_SYS_CHROOT is in the default set, so Docker allows chroot.
    libc::SYS_chroot,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_connect,
    libc::SYS_copy_file_range,
    libc::SYS_creat,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_ctl_old,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_wait_old,
    libc::SYS_eventfd,
    libc::SYS_eventfd2,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fadvise64,
    libc::SYS_fallocate,
    libc::SYS_fanotify_mark,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fork,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_futex_waitv,
    libc::SYS_futimesat,
    libc::SYS_getcpu,
    libc::SYS_getcwd,
    libc::SYS_getdents,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getgroups,
    libc::SYS_getitimer,
    libc::SYS_getpeername,
    libc::SYS_getpgid,
    libc::SYS_getpgrp,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getpriority,
    libc::SYS_getrandom,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrlimit,
    libc::SYS_get_robust_list,
    libc::SYS_getrusage,
    libc::SYS_getsid,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_get_thread_area,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_init,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch,
    libc::SYS_io_cancel,
    libc::SYS_ioctl,
    libc::SYS_io_destroy,
    libc::SYS_io_getevents,
    SYS_IO_PGETEVENTS,
    libc::SYS_ioprio_get,
    libc::SYS_ioprio_set,
    libc::SYS_io_setup,
    libc::SYS_io_submit,
    libc::SYS_kill,
    libc::SYS_landlock_add_rule,
    libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self,
    libc::SYS_lchown,
    libc::SYS_lgetxattr,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_listen,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_lseek,
    libc::SYS_lsetxattr,
    libc::SYS_lstat,
    libc::SYS_madvise,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_memfd_secret,
    libc::SYS_mincore,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_mlockall,
    libc::SYS_mmap,
    // x86_64 needs modify_ldt for some 16-bit and Wine code; Docker allows it.
    libc::SYS_modify_ldt,
    libc::SYS_mprotect,
    libc::SYS_mq_getsetattr,
    libc::SYS_mq_notify,
    libc::SYS_mq_open,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_unlink,
    libc::SYS_mremap,
    libc::SYS_msgctl,
    libc::SYS_msgget,
    libc::SYS_msgrcv,
    libc::SYS_msgsnd,
    libc::SYS_msync,
    libc::SYS_munlock,
    libc::SYS_munlockall,
    libc::SYS_munmap,
    libc::SYS_name_to_handle_at,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pause,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_prlimit64,
    libc::SYS_process_mrelease,
    // Docker allows these on kernels >= 4.8, where ptrace can no longer bypass
    // seccomp; the pid namespace keeps them to the sandbox's own processes.
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_ptrace,
    libc::SYS_pselect6,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_read,
    libc::SYS_readahead,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_remap_file_pages,
    libc::SYS_removexattr,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_restart_syscall,
    libc::SYS_rmdir,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_getattr,
    libc::SYS_sched_getparam,
    libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_rr_get_interval,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr,
    libc::SYS_sched_setparam,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield,
    libc::SYS_seccomp,
    libc::SYS_select,
    libc::SYS_semctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_sendfile,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_setfsgid,
    libc::SYS_setfsuid,
    libc::SYS_setgid,
    libc::SYS_setgroups,
    libc::SYS_setitimer,
    libc::SYS_setpgid,
    libc::SYS_setpriority,
    libc::SYS_setregid,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
    libc::SYS_setreuid,
    libc::SYS_setrlimit,
    libc::SYS_set_robust_list,
    libc::SYS_setsid,
    libc::SYS_setsockopt,
    libc::SYS_set_thread_area,
    libc::SYS_set_tid_address,
    libc::SYS_setuid,
    libc::SYS_setxattr,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_shmget,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_signalfd,
    libc::SYS_signalfd4,
    libc::SYS_socketpair,
    libc::SYS_splice,
    libc::SYS_stat,
    libc::SYS_statfs,
    libc::SYS_statx,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_sync,
    libc::SYS_sync_file_range,
    libc::SYS_syncfs,
    libc::SYS_sysinfo,
    libc::SYS_tee,
    libc::SYS_tgkill,
    libc::SYS_time,
    libc::SYS_timer_create,
    libc::SYS_timer_delete,
    libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime,
    libc::SYS_timer_settime,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    libc::SYS_times,
    libc::SYS_tkill,
    libc::SYS_truncate,
    libc::SYS_umask,
    libc::SYS_uname,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_utime,
    libc::SYS_utimensat,
    libc::SYS_utimes,
    libc::SYS_vfork,
    libc::SYS_vmsplice,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_writev,
];

/// Namespace flags `clone` must not carry (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET): Docker's mask 0x7E020000.
const CLONE_NAMESPACE_FLAGS: u32 = 0x7E02_0000;

/// Personas Docker allows: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26,
/// and the query value 0xffffffff.
const PERSONALITIES: [u32; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_VSOCK`: no path out to a hypervisor.
const AF_VSOCK: u32 = 40;

/// The policy described in the module documentation.
pub fn seccomp_policy() -> SeccompPolicy {
    let allow = |nr: libc::c_long, alternatives| SeccompRule {
        nr: u32::try_from(nr).expect("x86_64 syscall numbers are small"),
        alternatives,
        action: SeccompAction::Allow,
    };
    let mut rules: Vec<SeccompRule> = ALLOWED.iter().map(|nr| allow(*nr, vec![])).collect();
    rules.push(allow(
        libc::SYS_clone,
        vec![vec![ArgCondition::MaskedEq {
            arg: 0,
            mask: CLONE_NAMESPACE_FLAGS,
            value: 0,
        }]],
    ));
    rules.push(allow(
        libc::SYS_personality,
        PERSONALITIES
            .iter()
            .map(|p| vec![ArgCondition::Eq { arg: 0, value: *p }])
            .collect(),
    ));
    rules.push(allow(
        libc::SYS_socket,
        vec![vec![ArgCondition::Ne {
            arg: 0,
            value: AF_VSOCK,
        }]],
    ));
    rules.push(SeccompRule {
        nr: u32::try_from(libc::SYS_clone3).expect("x86_64 syscall numbers are small"),
        alternatives: vec![],
        action: SeccompAction::Errno(libc::ENOSYS as u16),
    });
    SeccompPolicy {
        rules,
        default: SeccompAction::Errno(libc::EPERM as u16),
    }
}

/// Compiles [`seccomp_policy`].
pub fn seccomp_program() -> Result<SeccompProgram, SecurityError> {
    SeccompProgram::compile(&seccomp_policy()).map_err(SecurityError::Compile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_compiles_within_kernel_limits() {
        let program = seccomp_program().unwrap();
        assert!(program.len() < 1500, "{}", program.len());
    }

    #[test]
    fn policy_verdicts_match_docker() {
        let p = seccomp_policy();
        let nr = |n: libc::c_long| n as u32;
        let eperm = SeccompAction::Errno(libc::EPERM as u16);
        assert_eq!(p.verdict(nr(libc::SYS_read), [0; 6]), SeccompAction::Allow);
        assert_eq!(p.verdict(nr(libc::SYS_mount), [0; 6]), eperm);
        assert_eq!(
            p.verdict(nr(libc::SYS_clone3), [0; 6]),
            SeccompAction::Errno(libc::ENOSYS as u16)
        );
        let fork_flags = (libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u32;
        assert_eq!(
            p.verdict(nr(libc::SYS_clone), [fork_flags, 0, 0, 0, 0, 0]),
            SeccompAction::Allow
        );
        let userns = fork_flags | libc::CLONE_NEWUSER as u32;
        assert_eq!(
            p.verdict(nr(libc::SYS_clone), [userns, 0, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            p.verdict(nr(libc::SYS_personality), [0x20008, 0, 0, 0, 0, 0]),
            SeccompAction::Allow
        );
        assert_eq!(
            p.verdict(nr(libc::SYS_personality), [0x0040_0000, 0, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            p.verdict(nr(libc::SYS_socket), [libc::AF_INET as u32, 1, 0, 0, 0, 0]),
            SeccompAction::Allow
        );
        assert_eq!(
            p.verdict(nr(libc::SYS_socket), [AF_VSOCK, 1, 0, 0, 0, 0]),
            eperm
        );
    }

    #[test]
    fn dangerous_calls_are_not_allowed() {
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_open_by_handle_at,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_pivot_root,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
            libc::SYS_fsopen,
            libc::SYS_fsmount,
            libc::SYS_mount_setattr,
            libc::SYS_io_uring_setup,
            libc::SYS_quotactl,
            libc::SYS_syslog,
            libc::SYS_sethostname,
            libc::SYS_clock_settime,
            libc::SYS_iopl,
            libc::SYS_ioperm,
        ] {
            assert!(!ALLOWED.contains(&nr), "syscall {nr} must not be allowed");
        }
    }

    #[test]
    fn default_capabilities_exclude_sys_admin() {
        assert!(!DEFAULT_CAPABILITIES.contains(Capability::SYS_ADMIN));
        assert!(!DEFAULT_CAPABILITIES.contains(Capability::SYS_PTRACE));
        assert!(DEFAULT_CAPABILITIES.contains(Capability::SETUID));
        // Docker's default effective set as printed by `capsh`: 0xa80425fb.
        assert_eq!(DEFAULT_CAPABILITIES.bits(), 0xa804_25fb);
    }
}
