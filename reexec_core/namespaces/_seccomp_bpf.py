"""Classic BPF for seccomp: a tiny assembler and the compiler from a policy to a filter program.

Pure logic, no I/O: :func:`compile_policy` takes a :class:`Policy` (per syscall number, the
rules to try in order, then the default action) and returns ``struct sock_filter[]`` bytes in
native byte order, ready for ``seccomp(SECCOMP_SET_MODE_FILTER)``.

The program's shape (seccomp(2), linux/seccomp.h ``struct seccomp_data``):

1. ``seccomp_data.arch`` first: a syscall number means nothing without its ABI. The native
   architecture and the compat ABIs the policy names (i386 by ``int 0x80`` on x86_64, arm on
   aarch64) each have a section of their own; any other arch value gets the policy's bad-arch
   action. On x86_64 the x32 ABI shares the arch value and
   sets bit 30 of the number: numbers >= 0x40000000 (but -1) get the bad-arch action too.
2. A binary search over the syscall number, as ranges that share one decision: ~9 compares
   for any syscall, instead of one compare per rule as a straight list would cost.
3. One block per distinct rule list: each rule's argument compares (64-bit arguments compared
   as two 32-bit halves, classic BPF having only a 32-bit accumulator), its action on a match,
   the next rule on a miss, the default action after the last.

Conditional jumps reach at most 255 instructions ahead; the assembler rewrites a farther one
into a short jump over two ``BPF_JA`` (32-bit offsets), repeating until every jump fits.
"""

from __future__ import annotations

import sys

__all__ = [
    "BPF_MAXINSNS",
    "Cmp",
    "Policy",
    "ProgramTooLarge",
    "Rule",
    "compile_policy",
]

#: The kernel's limit on a classic BPF program (include/uapi/linux/bpf_common.h).
BPF_MAXINSNS = 4096

# linux/bpf_common.h opcodes, combined as the kernel spells them.
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_ALU_AND_K = 0x04 | 0x50 | 0x00  # BPF_ALU | BPF_AND | BPF_K
_JA = 0x05 | 0x00  # BPF_JMP | BPF_JA
_JEQ = 0x05 | 0x10  # BPF_JMP | BPF_JEQ | BPF_K
_JGT = 0x05 | 0x20  # BPF_JMP | BPF_JGT | BPF_K
_JGE = 0x05 | 0x30  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARGS = 16
_X32_SYSCALL_BIT = 0x40000000

#: The comparison operators of the OCI/Docker profile format (libseccomp's names).
OPS = (
    "SCMP_CMP_EQ",
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_GT",
    "SCMP_CMP_GE",
    "SCMP_CMP_MASKED_EQ",
)


class ProgramTooLarge(Exception):
    """The policy compiles to more instructions than the kernel accepts (``count`` has how many)."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


# Cmp and Rule are tuples, so that equal rule lists share one block (they are dict keys), and
# none of these is a dataclass: importing dataclasses costs ~9 ms of the runner's start.
class Cmp(tuple[int, str, int, int, int]):
    """One argument comparison: ``args[arg] OP value`` (``MASKED_EQ``: ``& value == value_two``).

    ``width`` 32 compares the low half only, for an argument the kernel reads as a 32-bit
    ``int`` (an ioctl request, a personality): its upper register half is ignored by the
    syscall, so comparing it would let a caller slip past the rule by setting a high bit.
    """

    __slots__ = ()

    def __new__(cls, arg: int, op: str, value: int, value_two: int = 0, width: int = 64) -> Cmp:
        return super().__new__(cls, (arg, op, value, value_two, width))

    @property
    def arg(self) -> int:
        return self[0]

    @property
    def op(self) -> str:
        return self[1]

    @property
    def value(self) -> int:
        return self[2]

    @property
    def value_two(self) -> int:
        return self[3]

    @property
    def width(self) -> int:
        return self[4]


class Rule(tuple[tuple[Cmp, ...], int]):
    """Comparisons that must all hold (none: always), and the ``SECCOMP_RET_*`` value then."""

    __slots__ = ()

    def __new__(cls, cmps: tuple[Cmp, ...], action: int) -> Rule:
        return super().__new__(cls, (cmps, action))

    @property
    def cmps(self) -> tuple[Cmp, ...]:
        return self[0]

    @property
    def action(self) -> int:
        return self[1]


class Policy:
    """What the filter decides, for the native architecture.

    Attributes:
        audit_arch: the ``AUDIT_ARCH_*`` value of the native architecture.
        reject_x32: refuse numbers with the x32 bit (x86_64 only).
        rules: syscall number -> rules tried in order (first match wins); absent: default.
        default: the ``SECCOMP_RET_*`` value when no rule matches.
        bad_arch: the ``SECCOMP_RET_*`` value for any other architecture (and x32).
        compat: (``AUDIT_ARCH_*``, rules) of each compat ABI the filter judges too (i386 on
            x86_64); any other ABI gets ``bad_arch``.
    """

    __slots__ = ("audit_arch", "reject_x32", "rules", "default", "bad_arch", "compat")

    def __init__(
        self,
        audit_arch: int,
        reject_x32: bool,
        rules: dict[int, tuple[Rule, ...]],
        default: int,
        bad_arch: int,
        compat: tuple[tuple[int, dict[int, tuple[Rule, ...]]], ...] = (),
    ) -> None:
        self.audit_arch = audit_arch
        self.reject_x32 = reject_x32
        self.rules = rules
        self.default = default
        self.bad_arch = bad_arch
        self.compat = compat


# --------------------------------------------------------------------------------------------
# assembler


class _Label:
    __slots__ = ("pos",)

    def __init__(self) -> None:
        self.pos = -1


class _Insn:
    """One instruction; a conditional jump names its targets (None: the next instruction)."""

    __slots__ = ("code", "k", "jt", "jf", "target", "long")

    def __init__(
        self,
        code: int,
        k: int,
        jt: _Label | None = None,
        jf: _Label | None = None,
        target: _Label | None = None,
    ) -> None:
        self.code = code
        self.k = k & 0xFFFFFFFF
        self.jt = jt
        self.jf = jf
        self.target = target  # BPF_JA's
        self.long = False  # emitted as: cond jt=0 jf=1; JA jt-target; JA jf-target

    def size(self) -> int:
        return 3 if self.long else 1


class _Asm:
    def __init__(self) -> None:
        self.items: list[_Insn | _Label] = []

    def place(self, label: _Label) -> None:
        self.items.append(label)

    def load(self, offset: int) -> None:
        self.items.append(_Insn(_LD_W_ABS, offset))

    def and_(self, mask: int) -> None:
        self.items.append(_Insn(_ALU_AND_K, mask))

    def jump(self, code: int, k: int, jt: _Label | None, jf: _Label | None) -> None:
        self.items.append(_Insn(code, k, jt, jf))

    def goto(self, label: _Label) -> None:
        self.items.append(_Insn(_JA, 0, target=label))

    def ret(self, action: int) -> None:
        self.items.append(_Insn(_RET_K, action))

    def _layout(self) -> int:
        pos = 0
        for item in self.items:
            if isinstance(item, _Label):
                item.pos = pos
            else:
                pos += item.size()
        return pos

    def assemble(self) -> bytes:
        """Resolve the labels (widening far conditional jumps) and encode ``sock_filter[]``."""
        while True:
            total = self._layout()
            widened = False
            pos = 0
            for item in self.items:
                if isinstance(item, _Label):
                    continue
                if item.code in (_JEQ, _JGT, _JGE) and not item.long:
                    for label in (item.jt, item.jf):
                        if label is not None and label.pos - (pos + 1) > 255:
                            item.long = widened = True
                pos += item.size()
            if not widened:
                break
        if total > BPF_MAXINSNS:
            raise ProgramTooLarge(total)
        out = bytearray()
        order = sys.byteorder

        def emit(code: int, jt: int, jf: int, k: int) -> None:
            if not (0 <= jt <= 255 and 0 <= jf <= 255 and k >= 0):
                raise AssertionError("a seccomp jump goes backwards or too far")  # a bug here
            out.extend(code.to_bytes(2, order) + bytes((jt, jf)) + k.to_bytes(4, order))

        pos = 0
        for item in self.items:
            if isinstance(item, _Label):
                continue
            nxt = pos + item.size()
            if item.code == _JA:
                assert item.target is not None
                emit(_JA, 0, 0, item.target.pos - (pos + 1))
            elif item.code in (_JEQ, _JGT, _JGE):
                t = item.jt.pos if item.jt is not None else nxt
                f = item.jf.pos if item.jf is not None else nxt
                if item.long:
                    emit(item.code, 0, 1, item.k)
                    emit(_JA, 0, 0, t - (pos + 2))
                    emit(_JA, 0, 0, f - (pos + 3))
                else:
                    emit(item.code, t - (pos + 1), f - (pos + 1), item.k)
            else:
                emit(item.code, 0, 0, item.k)
            pos = nxt
        return bytes(out)


# --------------------------------------------------------------------------------------------
# compiler


def _arg_offsets(index: int) -> tuple[int, int]:
    """(low half, high half) offsets of ``args[index]`` in seccomp_data, by byte order."""
    base = _OFF_ARGS + 8 * index
    return (base, base + 4) if sys.byteorder == "little" else (base + 4, base)


def _emit_cmp(asm: _Asm, cmp: Cmp, fail: _Label) -> None:
    """Code that falls through when ``cmp`` holds and jumps to ``fail`` when it does not."""
    lo_off, hi_off = _arg_offsets(cmp.arg)
    wide = cmp.width == 64
    vh, vl = cmp.value >> 32, cmp.value & 0xFFFFFFFF
    ok = _Label()
    if cmp.op in ("SCMP_CMP_EQ", "SCMP_CMP_NE"):
        # NE is "not EQ": the same compares, pass and fail swapped.
        yes, no = (ok, fail) if cmp.op == "SCMP_CMP_EQ" else (fail, ok)
        if wide:
            asm.load(hi_off)
            asm.jump(_JEQ, vh, None, no)
        asm.load(lo_off)
        asm.jump(_JEQ, vl, yes, no)
    elif cmp.op in ("SCMP_CMP_GT", "SCMP_CMP_GE", "SCMP_CMP_LT", "SCMP_CMP_LE"):
        # Unsigned, high half first: greater there decides, equal there defers to the low
        # half. LT is "not GE" and LE is "not GT": the same compares, pass and fail swapped.
        yes, no = (ok, fail) if cmp.op in ("SCMP_CMP_GT", "SCMP_CMP_GE") else (fail, ok)
        if wide:
            asm.load(hi_off)
            asm.jump(_JGT, vh, yes, None)
            asm.jump(_JEQ, vh, None, no)
        asm.load(lo_off)
        asm.jump(_JGT if cmp.op in ("SCMP_CMP_GT", "SCMP_CMP_LE") else _JGE, vl, yes, no)
    elif cmp.op == "SCMP_CMP_MASKED_EQ":
        mh, ml = cmp.value >> 32, cmp.value & 0xFFFFFFFF
        dh, dl = cmp.value_two >> 32, cmp.value_two & 0xFFFFFFFF
        for offset, mask, datum, needed in ((hi_off, mh, dh, wide), (lo_off, ml, dl, True)):
            if not needed or (mask == 0 and datum == 0):
                continue  # this half always matches
            asm.load(offset)
            if mask != 0xFFFFFFFF:
                asm.and_(mask)
            asm.jump(_JEQ, datum, None, fail)
    else:
        raise ValueError(f"unknown comparison {cmp.op!r}")
    asm.place(ok)


def _emit_block(asm: _Asm, rules: tuple[Rule, ...], default: int) -> None:
    for rule in rules:
        miss = _Label()
        for cmp in rule.cmps:
            _emit_cmp(asm, cmp, miss)
        asm.ret(rule.action)
        asm.place(miss)
        if not rule.cmps:
            return  # later rules are unreachable
    asm.ret(default)


def _ranges(block_of: dict[int, int]) -> list[tuple[int, int]]:
    """Partition 0..2**32-1 into (first number, block id) runs; block -1 is the default."""
    runs: list[tuple[int, int]] = [(0, -1)]

    def add(start: int, block: int) -> None:
        if runs[-1][1] == block:
            return
        if runs[-1][0] == start:  # only at number 0: the run it opened was empty
            runs[-1] = (start, block)
        else:
            runs.append((start, block))

    for nr in sorted(block_of):
        add(nr, block_of[nr])
        if nr + 1 not in block_of:
            add(nr + 1, -1)
    return runs


def compile_policy(policy: Policy) -> bytes:
    """Compile ``policy`` to a seccomp filter program (``struct sock_filter[]`` bytes).

    Raises:
        ProgramTooLarge: more than :data:`BPF_MAXINSNS` instructions.
    """
    asm = _Asm()
    sections = [(policy.audit_arch, policy.rules, policy.reject_x32)]
    sections += [(audit_arch, rules, False) for audit_arch, rules in policy.compat]
    starts = [_Label() for _ in sections]
    asm.load(_OFF_ARCH)
    for (audit_arch, _, _), start in zip(sections, starts, strict=True):
        asm.jump(_JEQ, audit_arch, start, None)
    asm.ret(policy.bad_arch)
    for (_, rules, reject_x32), start in zip(sections, starts, strict=True):
        asm.place(start)
        asm.load(_OFF_NR)
        if reject_x32:
            # -1 is no x32 call: it is what a tracer sets to skip a call, and the kernel runs
            # the filter again on it (since 4.8); it goes on to the default action, as
            # libseccomp has it.
            x86_64 = _Label()
            asm.jump(_JGE, _X32_SYSCALL_BIT, None, x86_64)
            asm.jump(_JEQ, 0xFFFFFFFF, x86_64, None)
            asm.ret(policy.bad_arch)
            asm.place(x86_64)
        _emit_section(asm, rules, policy.default)
    return asm.assemble()


def _emit_section(asm: _Asm, rules_of: dict[int, tuple[Rule, ...]], default: int) -> None:
    """One architecture's search on the number (in the accumulator) and its rule blocks."""
    # Rules that end in the default action change nothing: drop them so that more syscalls
    # share the default, then give each distinct rule list one block.
    blocks: dict[tuple[Rule, ...], int] = {}
    block_of: dict[int, int] = {}
    for nr, rules in rules_of.items():
        cut = list(rules)
        for i, rule in enumerate(cut):
            if not rule.cmps:
                del cut[i + 1 :]
                break
        while cut and cut[-1].action == default:
            cut.pop()
        if cut:
            block_of[nr] = blocks.setdefault(tuple(cut), len(blocks))
    labels = [_Label() for _ in blocks]
    inline = {
        index: rules[0].action
        for rules, index in blocks.items()
        if len(rules) == 1 and not rules[0].cmps
    }

    def leaf(block: int) -> None:
        if block == -1:
            asm.ret(default)
        elif block in inline:
            asm.ret(inline[block])
        else:
            asm.goto(labels[block])

    def search(runs: list[tuple[int, int]]) -> None:
        # The accumulator holds the syscall number throughout the search.
        if len(runs) == 1:
            leaf(runs[0][1])
            return
        mid = len(runs) // 2
        upper = _Label()
        asm.jump(_JGE, runs[mid][0], upper, None)
        search(runs[:mid])
        asm.place(upper)
        search(runs[mid:])

    search(_ranges(block_of))
    for rules, index in blocks.items():
        if index not in inline:
            asm.place(labels[index])
            _emit_block(asm, rules, default)
