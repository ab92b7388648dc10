// SPDX-License-Identifier: Apache-2.0
//! Seccomp BPF programs: holding a compiled filter and loading it.
//!
//! Compiling a policy into BPF is the caller's business (Hearth uses `seccompiler`);
//! this module only owns the instructions and installs them between clone and exec.

/// One compiled classic-BPF seccomp filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompProgram {
    insns: Vec<Insn>,
}

/// `struct sock_filter` from `<linux/filter.h>`, laid out as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// The kernel's limit on instructions per filter (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// A filter that is empty or longer than the kernel accepts.
#[derive(Debug, thiserror::Error)]
#[error("seccomp program has {len} instructions; the kernel takes 1 to {MAX_INSTRUCTIONS}")]
pub struct SeccompProgramError {
    /// How many instructions were given.
    pub len: usize,
}

impl SeccompProgram {
    /// Builds a program from `(code, jt, jf, k)` instructions (`struct sock_filter`).
    pub fn new(
        insns: impl IntoIterator<Item = (u16, u8, u8, u32)>,
    ) -> Result<Self, SeccompProgramError> {
        let insns: Vec<Insn> = insns
            .into_iter()
            .map(|(code, jt, jf, k)| Insn { code, jt, jf, k })
            .collect();
        if insns.is_empty() || insns.len() > MAX_INSTRUCTIONS {
            return Err(SeccompProgramError { len: insns.len() });
        }
        Ok(Self { insns })
    }

    /// The number of instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether the program has no instructions (never true for a built program).
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Installs the filter on the calling thread (seccomp(SECCOMP_SET_MODE_FILTER)).
    ///
    /// Needs `no_new_privs` or `CAP_SYS_ADMIN` in the thread's user namespace.
    /// Async-signal-safe: it only reads the prepared instructions; returns the errno.
    pub(crate) fn raw_load(&self) -> Result<(), i32> {
        const _: () =
            assert!(std::mem::size_of::<Insn>() == std::mem::size_of::<libc::sock_filter>());
        let prog = libc::sock_fprog {
            len: self.insns.len() as libc::c_ushort,
            filter: self.insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `Insn` is repr(C) with sock_filter's fields in sock_filter's order, so
        // `prog` points at `len` valid sock_filters that outlive the call (at most
        // MAX_INSTRUCTIONS, so the length fits c_ushort);
        // the kernel copies the program and keeps no pointer to our memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc == -1 {
            Err(crate::caps::errno())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_program_is_rejected() {
        let err = SeccompProgram::new([]).unwrap_err();
        assert_eq!(err.len, 0);
    }

    #[test]
    fn oversized_program_is_rejected() {
        let insns = std::iter::repeat_n((0x06, 0, 0, 0x7fff_0000), MAX_INSTRUCTIONS + 1);
        assert!(SeccompProgram::new(insns).is_err());
    }
}
