// SPDX-License-Identifier: Apache-2.0
//! Seccomp: compiling a syscall policy to classic BPF, and loading it.
//!
//! The compiler emits a binary search over the sorted syscall numbers rather than a
//! linear chain. When a filter is attached the kernel evaluates it once for every
//! syscall number to precompute which calls are always allowed; with a linear
//! chain of ~330 syscalls that took ~0.7 ms per sandbox here, with a search it is
//! a few microseconds. Calls whose verdict depends on arguments also get ~20
//! instructions per evaluation instead of hundreds.
//!
//! The program is x86_64 only: any other audit architecture (i386 via `int 0x80`)
//! kills the process, and x32 numbers (bit 30 set) match no rule, so they get the
//! default action.

use std::collections::BTreeMap;

/// What the filter does with a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeccompAction {
    /// Let it through.
    Allow,
    /// Fail it with this errno.
    Errno(u16),
    /// Kill the whole process.
    KillProcess,
}

impl SeccompAction {
    fn ret(self) -> u32 {
        match self {
            SeccompAction::Allow => 0x7fff_0000,
            SeccompAction::Errno(e) => 0x0005_0000 | u32::from(e),
            SeccompAction::KillProcess => 0x8000_0000,
        }
    }
}

/// A test on the low 32 bits of a syscall argument (the kernel ignores the high
/// bits of every argument Hearth inspects: flags, families, personas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgCondition {
    /// `arg == value`.
    Eq {
        /// Argument index, 0 to 5.
        arg: u8,
        /// The value.
        value: u32,
    },
    /// `arg != value`.
    Ne {
        /// Argument index, 0 to 5.
        arg: u8,
        /// The value.
        value: u32,
    },
    /// `arg & mask == value`.
    MaskedEq {
        /// Argument index, 0 to 5.
        arg: u8,
        /// The mask.
        mask: u32,
        /// The value.
        value: u32,
    },
}

impl ArgCondition {
    fn arg(self) -> u8 {
        match self {
            ArgCondition::Eq { arg, .. }
            | ArgCondition::Ne { arg, .. }
            | ArgCondition::MaskedEq { arg, .. } => arg,
        }
    }

    /// Evaluates the condition on an argument's low 32 bits.
    pub fn holds(self, value_of_arg: u32) -> bool {
        match self {
            ArgCondition::Eq { value, .. } => value_of_arg == value,
            ArgCondition::Ne { value, .. } => value_of_arg != value,
            ArgCondition::MaskedEq { mask, value, .. } => value_of_arg & mask == value,
        }
    }
}

/// The verdict for one system call number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompRule {
    /// The system call number (x86_64).
    pub nr: u32,
    /// Alternatives, each a list of conditions that must all hold; the rule
    /// matches if any alternative does, or always when there is none.
    pub alternatives: Vec<Vec<ArgCondition>>,
    /// What happens when the rule matches; otherwise the policy's default applies.
    pub action: SeccompAction,
}

/// A complete policy: rules by syscall number and the action for everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompPolicy {
    /// At most one rule per syscall number.
    pub rules: Vec<SeccompRule>,
    /// The action for calls without a (matching) rule.
    pub default: SeccompAction,
}

impl SeccompPolicy {
    /// What the policy says about syscall `nr` with arguments `args` (low 32 bits)
    /// on x86_64: the reference semantics the compiled program must follow.
    pub fn verdict(&self, nr: u32, args: [u32; 6]) -> SeccompAction {
        let Some(rule) = self.rules.iter().find(|r| r.nr == nr) else {
            return self.default;
        };
        let matched = rule.alternatives.is_empty()
            || rule
                .alternatives
                .iter()
                .any(|alt| alt.iter().all(|c| c.holds(args[usize::from(c.arg())])));
        if matched { rule.action } else { self.default }
    }
}

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

/// A policy that cannot be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompProgramError {
    /// Two rules name the same syscall.
    #[error("more than one rule for syscall {nr}")]
    DuplicateRule {
        /// The syscall number.
        nr: u32,
    },
    /// A condition names an argument beyond the sixth.
    #[error("condition on argument {arg} of syscall {nr}; syscalls have 6")]
    BadArgument {
        /// The syscall number.
        nr: u32,
        /// The argument index.
        arg: u8,
    },
    /// The program does not fit the kernel's limit.
    #[error("seccomp program has {len} instructions; the kernel takes at most {MAX_INSTRUCTIONS}")]
    TooLong {
        /// How many instructions it would have.
        len: usize,
    },
}

// Classic BPF opcodes (<linux/bpf_common.h>).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JA: u16 = 0x05;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

type Label = usize;

/// Code with symbolic jump targets, before layout.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// A plain instruction.
    Plain(u16, u32),
    /// `if A <cmp> k goto t else goto f`.
    Branch {
        code: u16,
        k: u32,
        t: Label,
        f: Label,
    },
    /// Continue at a label.
    Goto(Label),
    /// Place a label here.
    Mark(Label),
}

#[derive(Default)]
struct Emitter {
    ops: Vec<Op>,
    labels: usize,
}

impl Emitter {
    fn label(&mut self) -> Label {
        self.labels += 1;
        self.labels - 1
    }

    fn emit(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Lays the code out: a branch whose targets lie within 255 instructions is
    /// one instruction, otherwise it becomes `jcond 0,1; ja t; ja f`. Starting from
    /// all-long and shortening only ever brings targets closer, so this converges.
    fn assemble(self) -> Vec<Insn> {
        let n = self.ops.len();
        let mut short = vec![false; n];
        loop {
            let (pos, marks) = self.positions(&short);
            let mut changed = false;
            for (i, op) in self.ops.iter().enumerate() {
                if let Op::Branch { t, f, .. } = *op
                    && !short[i]
                {
                    let next = pos[i] + 1;
                    let fits = |l: Label| marks[l] >= next && marks[l] - next <= 255;
                    if fits(t) && fits(f) {
                        short[i] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let (pos, marks) = self.positions(&short);
        let mut out = Vec::with_capacity(pos.last().copied().unwrap_or(0) + 3);
        for (i, op) in self.ops.iter().enumerate() {
            match *op {
                Op::Plain(code, k) => out.push(Insn {
                    code,
                    jt: 0,
                    jf: 0,
                    k,
                }),
                Op::Branch { code, k, t, f } if short[i] => {
                    let next = pos[i] + 1;
                    out.push(Insn {
                        code,
                        jt: u8::try_from(marks[t] - next).expect("checked by layout"),
                        jf: u8::try_from(marks[f] - next).expect("checked by layout"),
                        k,
                    });
                }
                Op::Branch { code, k, t, f } => {
                    out.push(Insn {
                        code,
                        jt: 0,
                        jf: 1,
                        k,
                    });
                    for (slot, target) in [(1, t), (2, f)] {
                        let next = pos[i] + slot + 1;
                        out.push(Insn {
                            code: JA,
                            jt: 0,
                            jf: 0,
                            k: u32::try_from(marks[target] - next).expect("programs are short"),
                        });
                    }
                }
                Op::Goto(l) => {
                    let next = pos[i] + 1;
                    out.push(Insn {
                        code: JA,
                        jt: 0,
                        jf: 0,
                        k: u32::try_from(marks[l] - next).expect("programs are short"),
                    });
                }
                Op::Mark(_) => {}
            }
        }
        out
    }

    /// Instruction index of each op, and of each label.
    fn positions(&self, short: &[bool]) -> (Vec<usize>, Vec<usize>) {
        let mut pos = Vec::with_capacity(self.ops.len());
        let mut marks = vec![0; self.labels];
        let mut at = 0;
        for (i, op) in self.ops.iter().enumerate() {
            pos.push(at);
            at += match op {
                Op::Plain(..) | Op::Goto(_) => 1,
                Op::Branch { .. } => {
                    if short[i] {
                        1
                    } else {
                        3
                    }
                }
                Op::Mark(l) => {
                    marks[*l] = at;
                    0
                }
            };
        }
        (pos, marks)
    }
}

impl SeccompProgram {
    /// Compiles `policy` (see the module documentation for the program's shape).
    /// Every jump goes forward, so the program always terminates.
    pub fn compile(policy: &SeccompPolicy) -> Result<Self, SeccompProgramError> {
        let mut by_nr: BTreeMap<u32, &SeccompRule> = BTreeMap::new();
        for rule in &policy.rules {
            if by_nr.insert(rule.nr, rule).is_some() {
                return Err(SeccompProgramError::DuplicateRule { nr: rule.nr });
            }
            for c in rule.alternatives.iter().flatten() {
                if c.arg() > 5 {
                    return Err(SeccompProgramError::BadArgument {
                        nr: rule.nr,
                        arg: c.arg(),
                    });
                }
            }
        }
        let mut e = Emitter::default();
        let kill = e.label();
        let default = e.label();
        // One shared `ret` per action for unconditional rules.
        let mut returns: Vec<(SeccompAction, Label)> = Vec::new();
        let mut bodies: Vec<(u32, Label)> = Vec::new();
        let mut conditional: Vec<(Label, &SeccompRule)> = Vec::new();
        for (nr, rule) in &by_nr {
            let target = if rule.alternatives.is_empty() {
                match returns.iter().find(|(a, _)| *a == rule.action) {
                    Some((_, l)) => *l,
                    None => {
                        let l = e.label();
                        returns.push((rule.action, l));
                        l
                    }
                }
            } else {
                let l = e.label();
                conditional.push((l, rule));
                l
            };
            bodies.push((*nr, target));
        }

        // Prologue: wrong architecture kills; then search the number.
        let native = e.label();
        e.emit(Op::Plain(LD_W_ABS, ARCH_OFFSET));
        e.emit(Op::Branch {
            code: JEQ_K,
            k: AUDIT_ARCH_X86_64,
            t: native,
            f: kill,
        });
        e.emit(Op::Mark(native));
        e.emit(Op::Plain(LD_W_ABS, NR_OFFSET));
        search(&mut e, &bodies, default);

        for (label, rule) in conditional {
            e.emit(Op::Mark(label));
            for alt in &rule.alternatives {
                let next = e.label();
                for c in alt {
                    let pass = e.label();
                    e.emit(Op::Plain(LD_W_ABS, ARGS_OFFSET + 8 * u32::from(c.arg())));
                    match *c {
                        ArgCondition::Eq { value, .. } => e.emit(Op::Branch {
                            code: JEQ_K,
                            k: value,
                            t: pass,
                            f: next,
                        }),
                        ArgCondition::Ne { value, .. } => e.emit(Op::Branch {
                            code: JEQ_K,
                            k: value,
                            t: next,
                            f: pass,
                        }),
                        ArgCondition::MaskedEq { mask, value, .. } => {
                            e.emit(Op::Plain(AND_K, mask));
                            e.emit(Op::Branch {
                                code: JEQ_K,
                                k: value,
                                t: pass,
                                f: next,
                            });
                        }
                    }
                    e.emit(Op::Mark(pass));
                }
                e.emit(Op::Plain(RET_K, rule.action.ret()));
                e.emit(Op::Mark(next));
            }
            e.emit(Op::Goto(default));
        }
        for (action, label) in returns {
            e.emit(Op::Mark(label));
            e.emit(Op::Plain(RET_K, action.ret()));
        }
        e.emit(Op::Mark(default));
        e.emit(Op::Plain(RET_K, policy.default.ret()));
        e.emit(Op::Mark(kill));
        e.emit(Op::Plain(RET_K, SeccompAction::KillProcess.ret()));

        let insns = e.assemble();
        if insns.len() > MAX_INSTRUCTIONS {
            return Err(SeccompProgramError::TooLong { len: insns.len() });
        }
        Ok(Self { insns })
    }

    /// The number of instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether the program has no instructions (never true for a compiled one).
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
        // MAX_INSTRUCTIONS, so the length fits c_ushort); the kernel copies the program
        // and keeps no pointer to our memory.
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

/// Emits a binary search over `bodies` (sorted by number) with the syscall number
/// in the accumulator; numbers not found go to `default`.
fn search(e: &mut Emitter, bodies: &[(u32, Label)], default: Label) {
    match bodies {
        [] => e.emit(Op::Goto(default)),
        [(nr, body)] => e.emit(Op::Branch {
            code: JEQ_K,
            k: *nr,
            t: *body,
            f: default,
        }),
        _ => {
            let mid = bodies.len() / 2;
            let (low, high) = bodies.split_at(mid);
            let high_label = e.label();
            let low_label = e.label();
            e.emit(Op::Branch {
                code: JGE_K,
                k: high[0].0,
                t: high_label,
                f: low_label,
            });
            e.emit(Op::Mark(low_label));
            search(e, low, default);
            e.emit(Op::Mark(high_label));
            search(e, high, default);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the opcodes the compiler emits, over a
    /// `seccomp_data` with the given fields.
    fn run(p: &SeccompProgram, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let load = |off: u32| -> u32 {
            match off {
                NR_OFFSET => nr,
                ARCH_OFFSET => arch,
                o if o >= ARGS_OFFSET && (o - ARGS_OFFSET).is_multiple_of(4) => {
                    let i = ((o - ARGS_OFFSET) / 8) as usize;
                    let a = args[i];
                    if (o - ARGS_OFFSET).is_multiple_of(8) {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                o => panic!("load of offset {o}"),
            }
        };
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = p.insns[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = load(i.k),
                AND_K => acc &= i.k,
                JA => pc += i.k as usize,
                JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn policy() -> SeccompPolicy {
        let mut rules: Vec<SeccompRule> = (0..400u32)
            .filter(|n| n % 3 != 0)
            .map(|nr| SeccompRule {
                nr,
                alternatives: vec![],
                action: SeccompAction::Allow,
            })
            .collect();
        rules.push(SeccompRule {
            nr: 435,
            alternatives: vec![],
            action: SeccompAction::Errno(38),
        });
        rules.push(SeccompRule {
            nr: 3,
            alternatives: vec![vec![ArgCondition::MaskedEq {
                arg: 0,
                mask: 0x7e02_0000,
                value: 0,
            }]],
            action: SeccompAction::Allow,
        });
        rules.push(SeccompRule {
            nr: 6,
            alternatives: [0u32, 8, 0xffff_ffff]
                .iter()
                .map(|v| vec![ArgCondition::Eq { arg: 0, value: *v }])
                .collect(),
            action: SeccompAction::Allow,
        });
        rules.push(SeccompRule {
            nr: 9,
            alternatives: vec![vec![
                ArgCondition::Ne { arg: 0, value: 40 },
                ArgCondition::Eq { arg: 2, value: 7 },
            ]],
            action: SeccompAction::Allow,
        });
        SeccompPolicy {
            rules,
            default: SeccompAction::Errno(1),
        }
    }

    #[test]
    fn compiled_program_follows_the_policy_for_every_number_and_argument() {
        let policy = policy();
        let program = SeccompProgram::compile(&policy).unwrap();
        let arg_samples: [[u64; 6]; 7] = [
            [0; 6],
            [8, 0, 7, 0, 0, 0],
            [0xffff_ffff, 0, 0, 0, 0, 0],
            [0x1000_0000, 0, 7, 0, 0, 0],
            [40, 0, 7, 0, 0, 0],
            [41, 0, 7, 0, 0, 0],
            // High bits are ignored: only the low word is compared.
            [0x1_0000_0000, 0, 0x5_0000_0007, 0, 0, 0],
        ];
        for nr in (0..1000u32).chain([0x4000_0000, 0x4000_0001, 0x4000_0003, u32::MAX]) {
            for args in arg_samples {
                let low = args.map(|a| a as u32);
                let want = policy.verdict(nr, low).ret();
                let got = run(&program, AUDIT_ARCH_X86_64, nr, args);
                assert_eq!(got, want, "nr {nr} args {args:x?}");
            }
        }
    }

    #[test]
    fn foreign_architecture_is_killed() {
        let program = SeccompProgram::compile(&policy()).unwrap();
        let i386 = 0x4000_0003;
        assert_eq!(
            run(&program, i386, 1, [0; 6]),
            SeccompAction::KillProcess.ret()
        );
    }

    #[test]
    fn search_keeps_evaluation_short() {
        let program = SeccompProgram::compile(&policy()).unwrap();
        // ~270 unconditional rules: a binary search, not a chain.
        assert!(program.len() < 1200, "{}", program.len());
    }

    #[test]
    fn long_jumps_are_relaxed_correctly() {
        // Conditional rules with long bodies push targets beyond 255 instructions.
        let rules = (0..150u32)
            .map(|nr| SeccompRule {
                nr,
                alternatives: (0..3)
                    .map(|v| vec![ArgCondition::Eq { arg: 1, value: v }])
                    .collect(),
                action: SeccompAction::Allow,
            })
            .collect();
        let policy = SeccompPolicy {
            rules,
            default: SeccompAction::Errno(1),
        };
        let program = SeccompProgram::compile(&policy).unwrap();
        for nr in 0..160u32 {
            for a in 0..4u64 {
                let args = [0, a, 0, 0, 0, 0];
                assert_eq!(
                    run(&program, AUDIT_ARCH_X86_64, nr, args),
                    policy.verdict(nr, args.map(|x| x as u32)).ret()
                );
            }
        }
    }

    #[test]
    fn duplicate_rules_are_rejected() {
        let rule = SeccompRule {
            nr: 1,
            alternatives: vec![],
            action: SeccompAction::Allow,
        };
        let policy = SeccompPolicy {
            rules: vec![rule.clone(), rule],
            default: SeccompAction::Errno(1),
        };
        assert_eq!(
            SeccompProgram::compile(&policy),
            Err(SeccompProgramError::DuplicateRule { nr: 1 })
        );
    }

    #[test]
    fn condition_on_a_seventh_argument_is_rejected() {
        let policy = SeccompPolicy {
            rules: vec![SeccompRule {
                nr: 1,
                alternatives: vec![vec![ArgCondition::Eq { arg: 6, value: 0 }]],
                action: SeccompAction::Allow,
            }],
            default: SeccompAction::Errno(1),
        };
        assert!(matches!(
            SeccompProgram::compile(&policy),
            Err(SeccompProgramError::BadArgument { arg: 6, .. })
        ));
    }
}
