//! Device access on cgroup v2: v2 has no `devices.allow`/`devices.deny`
//! files; the kernel instead runs a `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! attached to the cgroup on every open, mknod and (for block devices) I/O
//! permission check. This module compiles the runtime's device rules (the
//! v1 strings, e.g. `c 1:3 rwm`) into such a program, loads it and attaches
//! it. The program is a straight run of rule blocks, so it needs no loops
//! and passes the verifier on old kernels (the guest's 6.1).
//!
//! Semantics are those of a v1 device cgroup created under an unrestricted
//! parent: the last rule that matches a request decides, and a request no
//! rule matches is allowed (so the usual "deny a" first rule makes it a
//! whitelist). An allow rule matches when every requested access is in its
//! set; a deny rule when any is.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::error::{Error, Result};

/// `BPF_DEVCG_ACC_*`: the access bits of a request.
pub const ACC_MKNOD: u8 = 1;
pub const ACC_READ: u8 = 2;
pub const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// `BPF_DEVCG_DEV_*`: the device type of a request.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// Which devices a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    All,
    Char,
    Block,
}

/// One device cgroup rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Kind,
    /// `None` is the `*` wildcard.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACC_*` bits, never 0.
    pub access: u8,
}

/// Linux device numbers: 12-bit majors, 20-bit minors.
const MAX_MAJOR: u32 = (1 << 12) - 1;
const MAX_MINOR: u32 = (1 << 20) - 1;

fn parse_num(s: &str, what: &str, max: u32, rule: &str) -> Result<Option<u32>> {
    if s == "*" {
        return Ok(None);
    }
    s.parse::<u32>()
        .ok()
        .filter(|n| *n <= max)
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(
                "device rule",
                rule,
                format!("the {what} number must be * or 0 to {max}"),
            )
        })
}

impl Rule {
    /// Parses the v1 syntax, `a` or `TYPE MAJOR:MINOR ACCESS` (TYPE a, b or
    /// c; numbers or `*`; ACCESS from r, w, m), with `allow` from the file
    /// it would go to.
    pub fn parse(allow: bool, text: &str) -> Result<Rule> {
        let bad = |why: &str| Error::invalid("device rule", text, why.to_string());
        let mut parts = text.split_whitespace();
        let kind = match parts.next() {
            Some("a") => Kind::All,
            Some("c") => Kind::Char,
            Some("b") => Kind::Block,
            _ => return Err(bad("the type must be a, b or c")),
        };
        let (major, minor) = match parts.next() {
            None if kind == Kind::All => (None, None),
            None => return Err(bad("expected TYPE MAJOR:MINOR ACCESS")),
            Some(nums) => {
                let (ma, mi) = nums
                    .split_once(':')
                    .ok_or_else(|| bad("expected MAJOR:MINOR"))?;
                (
                    parse_num(ma, "major", MAX_MAJOR, text)?,
                    parse_num(mi, "minor", MAX_MINOR, text)?,
                )
            }
        };
        let access = match parts.next() {
            None => ACC_ALL,
            Some(a) => {
                let mut bits = 0;
                for c in a.chars() {
                    bits |= match c {
                        'r' => ACC_READ,
                        'w' => ACC_WRITE,
                        'm' => ACC_MKNOD,
                        _ => return Err(bad("access is made of r, w and m")),
                    };
                }
                if bits == 0 {
                    return Err(bad("empty access"));
                }
                bits
            }
        };
        if parts.next().is_some() {
            return Err(bad("trailing text"));
        }
        Ok(Rule {
            allow,
            kind,
            major,
            minor,
            access,
        })
    }

    /// Whether the rule is about this request (`dev` is `DEV_*`).
    fn matches(&self, dev: i32, major: u32, minor: u32, access: u8) -> bool {
        let kind_ok = match self.kind {
            Kind::All => true,
            Kind::Char => dev == DEV_CHAR,
            Kind::Block => dev == DEV_BLOCK,
        };
        let access_ok = if self.allow {
            access & !self.access == 0
        } else {
            access & self.access != 0
        };
        kind_ok
            && access_ok
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }
}

/// The rules from the runtime's `(allow, text)` pairs.
pub fn parse_rules(rules: &[(bool, String)]) -> Result<Vec<Rule>> {
    rules.iter().map(|(a, t)| Rule::parse(*a, t)).collect()
}

/// The decision the rules make for a request: the last matching rule's, or
/// allowed when none matches. The reference the compiled program is tested
/// against.
pub fn decide(rules: &[Rule], char_dev: bool, major: u32, minor: u32, access: u8) -> bool {
    let dev = if char_dev { DEV_CHAR } else { DEV_BLOCK };
    rules
        .iter()
        .rev()
        .find(|r| r.matches(dev, major, minor, access))
        .is_none_or(|r| r.allow)
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (class | op | source).
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const AND64_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH64_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers: r1 holds the context on entry and is scratch afterwards.
const R0: u8 = 0;
const R1: u8 = 1;
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// A conditional jump to the end of the current rule block; the offset is
/// patched once the block's length is known.
const PATCH_ME: i16 = i16::MIN;

/// Compiles the rules into a `BPF_PROG_TYPE_CGROUP_DEVICE` program
/// (returns 1 to allow, 0 to deny).
pub fn compile(rules: &[Rule]) -> Vec<Insn> {
    // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; },
    // access_type = (access << 16) | type.
    let mut p = vec![
        insn(LDX_W, R_TYPE, R1, 0, 0),
        insn(MOV64_X, R_ACCESS, R_TYPE, 0, 0),
        insn(AND64_K, R_TYPE, 0, 0, 0xffff),
        insn(RSH64_K, R_ACCESS, 0, 0, 16),
        insn(LDX_W, R_MAJOR, R1, 4, 0),
        insn(LDX_W, R_MINOR, R1, 8, 0),
    ];
    // The last rule decides, so the program tries them from the end.
    for r in rules.iter().rev() {
        let start = p.len();
        match r.kind {
            Kind::All => {}
            Kind::Char => p.push(insn(JNE_K, R_TYPE, 0, PATCH_ME, DEV_CHAR)),
            Kind::Block => p.push(insn(JNE_K, R_TYPE, 0, PATCH_ME, DEV_BLOCK)),
        }
        // A request always asks for at least one access, so a rule with
        // every access matches any request, allow or deny.
        if r.access != ACC_ALL {
            p.push(insn(MOV64_X, R1, R_ACCESS, 0, 0));
            if r.allow {
                p.push(insn(AND64_K, R1, 0, 0, i32::from(!r.access & ACC_ALL)));
                p.push(insn(JNE_K, R1, 0, PATCH_ME, 0));
            } else {
                p.push(insn(AND64_K, R1, 0, 0, i32::from(r.access)));
                p.push(insn(JEQ_K, R1, 0, PATCH_ME, 0));
            }
        }
        for (reg, num) in [(R_MAJOR, r.major), (R_MINOR, r.minor)] {
            if let Some(n) = num {
                // Parsing bounds the numbers to 20 bits.
                p.push(insn(JNE_K, reg, 0, PATCH_ME, n.cast_signed()));
            }
        }
        p.push(insn(MOV64_K, R0, 0, 0, i32::from(r.allow)));
        p.push(insn(EXIT, 0, 0, 0, 0));
        let end = p.len();
        let mut conditional = false;
        for (i, ins) in p.iter_mut().enumerate().take(end).skip(start) {
            if ins.off == PATCH_ME {
                // Relative to the next instruction; blocks are a handful
                // of instructions, far from i16's range.
                ins.off = i16::try_from(end - i - 1).unwrap_or(i16::MAX);
                conditional = true;
            }
        }
        // A rule matching every request decides alone; code after it would
        // be unreachable, which the verifier refuses.
        if !conditional {
            return p;
        }
    }
    p.push(insn(MOV64_K, R0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

// bpf(2) commands and types.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Other programs may sit above (a delegating manager's); all must allow.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The head of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, initialized repr(C) prefix of union
    // bpf_attr and its size is passed; the kernel zero-checks the rest.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads a compiled program; the verifier's log comes with a refusal.
pub fn load(prog: &[Insn]) -> Result<OwnedFd> {
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"uvm_device");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len())
            .map_err(|_| Error::Cgroup("device program too long".into()))?,
        insns: prog.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 1,
        log_size: u32::try_from(log.len()).unwrap_or(0),
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoadAttr::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let log = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]);
        let text = log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>();
        // The reason is just before the verifier's closing statistics line.
        let text = text[text.len().saturating_sub(3)..].join(" | ");
        let text = if text.is_empty() {
            text
        } else {
            format!(" (verifier: {text})")
        };
        Error::Cgroup(format!("loading the device filter (bpf): {e}{text}"))
    })?;
    let fd = i32::try_from(fd).map_err(|_| Error::Cgroup("bpf returned a bad fd".into()))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches a loaded device program to the cgroup v2 directory `dir`. The
/// attachment lives as long as the cgroup; the program's fd may be closed.
pub fn attach(dir: &Path, prog: &OwnedFd) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    let fd = |f: i32| u32::try_from(f).unwrap_or(u32::MAX);
    let mut attr = ProgAttachAttr {
        target_fd: fd(d.as_raw_fd()),
        attach_bpf_fd: fd(prog.as_raw_fd()),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..ProgAttachAttr::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop).map_err(|e| {
        Error::Cgroup(format!(
            "attaching the device filter to {}: {e}",
            dir.display()
        ))
    })
}

/// Restricts device access in the cgroup v2 directory `dir` to `rules`.
pub fn restrict(dir: &Path, rules: &[Rule]) -> Result<()> {
    let prog = load(&compile(rules))?;
    attach(dir, &prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a compiled program on one request, as the kernel would. Only the
    /// opcodes `compile` emits are known; anything else fails the test.
    fn run(prog: &[Insn], dev: i32, major: u32, minor: u32, access: u8) -> bool {
        let ctx = [
            (u32::from(access) << 16) | dev.cast_unsigned(),
            major,
            minor,
        ];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            let imm = i64::from(i.imm).cast_unsigned();
            pc += 1;
            let jump = |cond: bool, pc: &mut usize| {
                if cond {
                    *pc = pc.checked_add_signed(isize::from(i.off)).unwrap();
                }
            };
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads come from the context");
                    r[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                }
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = imm,
                AND64_K => r[dst] &= imm,
                RSH64_K => r[dst] >>= imm,
                JNE_K => jump(r[dst] != imm, &mut pc),
                JEQ_K => jump(r[dst] == imm, &mut pc),
                EXIT => return r[0] == 1,
                c => panic!("unknown opcode {c:#x}"),
            }
        }
        panic!("the program did not end")
    }

    fn rules(v: &[(bool, &str)]) -> Vec<Rule> {
        v.iter().map(|(a, t)| Rule::parse(*a, t).unwrap()).collect()
    }

    fn default_rules() -> Vec<Rule> {
        rules(&[
            (false, "a"),
            (true, "c 1:3 rwm"),
            (true, "c 1:5 rwm"),
            (true, "c 1:7 rwm"),
            (true, "c 1:8 rwm"),
            (true, "c 1:9 rwm"),
            (true, "c 5:0 rwm"),
            (true, "c 5:2 rwm"),
            (true, "c 136:* rwm"),
        ])
    }

    #[test]
    fn parses_the_v1_syntax() {
        let r = Rule::parse(true, "c 136:* rw").unwrap();
        assert_eq!(
            r,
            Rule {
                allow: true,
                kind: Kind::Char,
                major: Some(136),
                minor: None,
                access: ACC_READ | ACC_WRITE
            }
        );
        let a = Rule::parse(false, "a").unwrap();
        assert_eq!((a.kind, a.major, a.access), (Kind::All, None, ACC_ALL));
        assert_eq!(Rule::parse(false, "a *:* rwm").unwrap(), a);
        assert_eq!(Rule::parse(true, "b 8:0").unwrap().access, ACC_ALL);
        for bad in [
            "",
            "x 1:3 rwm",
            "c",
            "c 1 rwm",
            "c one:3 rwm",
            "c 1:-3 rwm",
            "c 1:3 rwx",
            "c 1:3 rwm extra",
            "c 1:99999999999 r",
            "c 4096:0 r",
            "b 1:1048576 r",
        ] {
            let e = Rule::parse(true, bad).unwrap_err().to_string();
            assert!(
                !e.contains('\n') && e.contains("device rule"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn default_whitelist_decisions() {
        let r = default_rules();
        assert!(decide(&r, true, 1, 3, ACC_READ | ACC_WRITE));
        assert!(decide(&r, true, 136, 7, ACC_WRITE));
        assert!(!decide(&r, false, 254, 0, ACC_READ));
        assert!(!decide(&r, false, 254, 0, ACC_MKNOD));
        assert!(!decide(&r, true, 10, 200, ACC_READ));
        // No rules: no restriction.
        assert!(decide(&[], false, 8, 0, ACC_WRITE));
    }

    /// The compiled program agrees with the reference decision on every
    /// combination of type, access and a spread of device numbers, for
    /// whitelists, blacklists and partial-access rules.
    #[test]
    fn compiled_program_matches_the_rules() {
        let sets = [
            default_rules(),
            rules(&[(false, "b *:* w"), (false, "c 1:3 m")]),
            rules(&[(false, "a"), (true, "c 1:* r"), (false, "c 1:5 r")]),
            rules(&[(true, "a"), (false, "b 8:* rwm"), (true, "b 8:1 r")]),
            rules(&[(false, "a"), (true, "c 4095:1048575 rwm")]),
            rules(&[(false, "c *:3 wm")]),
            Vec::new(),
        ];
        let nums = [0u32, 1, 3, 5, 8, 136, 254, 4095, 1_048_575];
        for set in &sets {
            let prog = compile(set);
            for dev in [DEV_CHAR, DEV_BLOCK] {
                for access in 1..=ACC_ALL {
                    for &major in &nums {
                        for &minor in &nums {
                            assert_eq!(
                                run(&prog, dev, major, minor, access),
                                decide(set, dev == DEV_CHAR, major, minor, access),
                                "rules {set:?}, dev {dev} {major}:{minor} access {access}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The verifier refuses unreachable instructions: nothing follows a
    /// rule that matches everything.
    #[test]
    fn nothing_after_a_rule_that_matches_everything() {
        for set in [
            default_rules(),
            rules(&[(true, "a")]),
            rules(&[(false, "a"), (true, "a"), (false, "c 1:3 r")]),
        ] {
            let prog = compile(&set);
            let mut reachable = vec![false; prog.len()];
            let mut todo = vec![0usize];
            while let Some(pc) = todo.pop() {
                if pc >= prog.len() || std::mem::replace(&mut reachable[pc], true) {
                    continue;
                }
                match prog[pc].code {
                    EXIT => {}
                    JNE_K | JEQ_K => {
                        todo.push(pc + 1);
                        todo.push(
                            (pc + 1)
                                .checked_add_signed(isize::from(prog[pc].off))
                                .unwrap(),
                        );
                    }
                    _ => todo.push(pc + 1),
                }
            }
            assert!(reachable.iter().all(|r| *r), "{set:?}: {reachable:?}");
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let prog = compile(&default_rules());
        for (i, ins) in prog.iter().enumerate() {
            if matches!(ins.code, JNE_K | JEQ_K) {
                let to = (i + 1).checked_add_signed(isize::from(ins.off));
                assert!(to.is_some_and(|t| t > i && t < prog.len()), "insn {i}");
            }
        }
        assert_eq!(prog.last().unwrap().code, EXIT);
    }
}
