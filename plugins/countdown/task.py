"""Countdown task for the tiny-scale SofT-GRPO benchmark (spec §11).

A problem is a multiset of 3-4 small integers plus a reachable target.  The model must write an
arithmetic expression that uses every number exactly once and evaluates to the target.

Sequence layout (character tokens, see :class:`CharTokenizer`)::

    <bos>3 4 5:17<think>3*4=12 12+5=17</think>3*4+5<eos>
    \\______ prompt ______/\\__ scratchpad __/        \\answer/

Contents
--------
* :class:`CharTokenizer`: ~24 symbols, id 0 = ``<pad>`` (never a soft candidate).
* :func:`solve`: brute force over all binary expression trees, returns every solution (deduplicated up
  to commutativity/associativity of ``+`` and ``*``), each with a step-by-step scratchpad.
* :func:`verify` / :func:`reward`: a safe recursive-descent parser over exact fractions (no ``eval``),
  checks the multiset and the target; returns 0/1.
* :func:`generate_problems`: deterministic given a seed; a hash-based train/test split makes the two
  splits disjoint by construction (a problem is identified by its sorted numbers and its target).
* SFT data (:mod:`.sft_traces`: ``gold_trace`` / ``make_sft_example`` / ``collate_sft``) with optional
  corruption of scratchpad steps and answers (to under-train the base policy on purpose).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Iterable, Sequence

__all__ = [
    "SPECIAL_TOKENS",
    "CharTokenizer",
    "Problem",
    "Solution",
    "CountdownConfig",
    "solve",
    "reachable_targets",
    "parse_expression",
    "verify",
    "reward",
    "answer_reward",
    "extract_answer",
    "problem_split",
    "generate_problems",
    "prompt_text",
]

# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------

PAD, BOS, THINK, THINK_END, EOS = "<pad>", "<bos>", "<think>", "</think>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, THINK, THINK_END, EOS)
_CHARS: tuple[str, ...] = tuple("0123456789") + tuple("+-*/()=:") + (" ",)


class CharTokenizer:
    """Character-level tokenizer with five multi-character special tokens.

    Vocabulary (24 symbols): ``<pad>``=0, ``<bos>``=1, ``<think>``=2, ``</think>``=3, ``<eos>``=4,
    then the digits, ``+ - * / ( ) = :`` and space.  Id 0 is ``<pad>``: samplers suppress it, so it is
    never a soft candidate and it fills unused top-k slots of the rollout record.
    """

    def __init__(self) -> None:
        self.itos: list[str] = list(SPECIAL_TOKENS) + list(_CHARS)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.pad_id = self.stoi[PAD]
        self.bos_id = self.stoi[BOS]
        self.think_id = self.stoi[THINK]
        self.think_end_id = self.stoi[THINK_END]
        self.eos_id = self.stoi[EOS]
        assert self.pad_id == 0

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(self.stoi[s] for s in SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        """Encode text; special tokens are written literally (``"<bos>"`` etc.)."""
        ids: list[int] = []
        i = 0
        while i < len(text):
            if text[i] == "<":
                for sp in SPECIAL_TOKENS:
                    if text.startswith(sp, i):
                        ids.append(self.stoi[sp])
                        i += len(sp)
                        break
                else:
                    raise ValueError(f"unknown special token at {i} in {text!r}")
                continue
            ch = text[i]
            if ch not in self.stoi:
                raise ValueError(f"character {ch!r} is not in the Countdown vocabulary")
            ids.append(self.stoi[ch])
            i += 1
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        out = []
        specials = set(self.special_ids)
        for i in ids:
            i = int(i)
            if skip_special and i in specials:
                continue
            out.append(self.itos[i])
        return "".join(out)


# ----------------------------------------------------------------------------------------------------
# Problems and solver
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """``numbers`` in prompt order (a multiset) and the ``target``."""

    numbers: tuple[int, ...]
    target: int

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """Identity used for deduplication and the train/test split (order-free)."""
        return (tuple(sorted(self.numbers)), self.target)


@dataclass(frozen=True)
class Solution:
    """One solution: a minimal-parenthesis expression and its evaluation steps ``(a, op, b, result)``."""

    expr: str
    steps: tuple[tuple[int, str, int, int], ...]

    def scratchpad(self) -> str:
        return " ".join(f"{a}{op}{b}={r}" for a, op, b, r in self.steps)


@dataclass(frozen=True)
class CountdownConfig:
    n_numbers: tuple[int, ...] = (3, 4)
    number_range: tuple[int, int] = (1, 9)
    target_range: tuple[int, int] = (1, 100)
    min_solutions: int = 2
    ops: str = "+-*"
    test_fraction: float = 0.1
    split_salt: str = "hookmix-countdown-v1"


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}

# An expression tree is an int leaf or a tuple (op, left, right).


def _render(node) -> str:
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    ls, rs = _render(left), _render(right)
    if _prec(left) < _PREC[op]:
        ls = f"({ls})"
    rp = _prec(right)
    if rp < _PREC[op] or (rp == _PREC[op] and op in "-/"):
        rs = f"({rs})"
    return f"{ls}{op}{rs}"


def _prec(node) -> int:
    return 3 if isinstance(node, int) else _PREC[node[0]]


def _steps(node, values) -> list[tuple[int, str, int, int]]:
    if isinstance(node, int):
        return []
    op, left, right = node
    out = _steps(left, values) + _steps(right, values)
    out.append((values[id(left)], op, values[id(right)], values[id(node)]))
    return out


def _evaluate_tree(node, values: dict) -> int:
    if isinstance(node, int):
        values[id(node)] = node
        return node
    op, left, right = node
    a, b = _evaluate_tree(left, values), _evaluate_tree(right, values)
    v = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
    values[id(node)] = v
    return v


def _combine_key(op: str, ka, kb):
    """Canonical key of ``ka op kb``: ``+``/``*`` chains are flattened and sorted (commutative, associative)."""
    if op in "+*":
        terms = []
        for k in (ka, kb):
            terms.extend(k[1] if k[0] == op else (k,))
        return (op, tuple(sorted(terms, key=repr)))
    return (op, ka, kb)


def _combine_text(op: str, ea, eb) -> str:
    (_, _, ta, pa), (_, _, tb, pb) = ea, eb
    if pa < _PREC[op]:
        ta = f"({ta})"
    if pb < _PREC[op] or (pb == _PREC[op] and op in "-/"):
        tb = f"({tb})"
    return f"{ta}{op}{tb}"


@lru_cache(maxsize=8192)
def _entries(ms: tuple[int, ...], ops: str) -> dict[int, tuple]:
    """value -> distinct expression entries ``(tree, key, text, precedence)`` over the sorted multiset ``ms``.

    Built by splitting the multiset in two (memoised on sub-multisets, shared across problems).
    Intermediate results stay positive integers (subtraction only when a > b, exact division only),
    so every scratchpad step reads naturally; the verifier itself accepts any valid expression.
    Entries are distinct both structurally (canonical key) and textually (rendered expression).
    """
    if len(ms) == 1:
        return {ms[0]: ((ms[0], (ms[0],), str(ms[0]), 3),)}
    buckets: dict[int, dict] = {}

    def add(v: int, op: str, ea, eb) -> None:
        key = _combine_key(op, ea[1], eb[1])
        text = _combine_text(op, ea, eb)
        bucket = buckets.setdefault(v, {})
        if key in bucket or text in bucket:
            return
        entry = ((op, ea[0], eb[0]), key, text, _PREC[op])
        bucket[key] = entry
        bucket[text] = None

    n = len(ms)
    seen_splits = set()
    for mask in range(1, 1 << n):
        if not mask & 1 or mask == (1 << n) - 1:
            continue  # index 0 always on the left: each unordered split once
        A = tuple(ms[i] for i in range(n) if mask >> i & 1)
        B = tuple(ms[i] for i in range(n) if not mask >> i & 1)
        split = (A, B) if A <= B else (B, A)
        if split in seen_splits:
            continue
        seen_splits.add(split)
        left, right = _entries(split[0], ops), _entries(split[1], ops)
        for va, la in left.items():
            for vb, lb in right.items():
                for ea in la:
                    for eb in lb:
                        big, small = (ea, eb) if va >= vb else (eb, ea)
                        hi, lo = max(va, vb), min(va, vb)
                        if "+" in ops:
                            add(hi + lo, "+", big, small)
                        if "*" in ops:
                            add(hi * lo, "*", big, small)
                        if "-" in ops and hi > lo:
                            add(hi - lo, "-", big, small)
                        if "/" in ops:
                            if lo != 0 and hi % lo == 0:
                                add(hi // lo, "/", big, small)
                            if hi != 0 and lo % hi == 0 and hi != lo:
                                add(lo // hi, "/", small, big)
    return {v: tuple(e for e in b.values() if e is not None) for v, b in buckets.items()}


@lru_cache(maxsize=8192)
def _all_trees(numbers: tuple[int, ...], ops: str) -> dict[int, tuple]:
    """value -> distinct expression trees using every number of the sorted multiset exactly once."""
    return {v: tuple(e[0] for e in es) for v, es in _entries(numbers, ops).items()}


def solve(numbers: Sequence[int], target: int, ops: str = "+-*") -> list[Solution]:
    """All solutions (deduplicated up to commutativity/associativity of + and *), sorted by expression."""
    return list(_solve(tuple(sorted(int(x) for x in numbers)), int(target), ops))


@lru_cache(maxsize=65536)
def _solve(ms: tuple[int, ...], target: int, ops: str) -> tuple[Solution, ...]:
    trees = _all_trees(ms, ops).get(target, ())
    sols = []
    for t in trees:
        values: dict = {}
        _evaluate_tree(t, values)
        sols.append(Solution(_render(t), tuple(_steps(t, values))))
    sols.sort(key=lambda s: s.expr)
    return tuple(sols)


def reachable_targets(numbers: Sequence[int], ops: str = "+-*") -> dict[int, int]:
    """target -> number of distinct solutions, for every value reachable with all the numbers."""
    return dict(_reachable(tuple(sorted(int(x) for x in numbers)), ops))


@lru_cache(maxsize=8192)
def _reachable(ms: tuple[int, ...], ops: str) -> tuple[tuple[int, int], ...]:
    return tuple((v, len(es)) for v, es in _entries(ms, ops).items())


# ----------------------------------------------------------------------------------------------------
# Safe verifier
# ----------------------------------------------------------------------------------------------------

_MAX_EXPR_CHARS = 64
_MAX_DEPTH = 16


class _ParseError(ValueError):
    pass


def parse_expression(text: str) -> tuple[Fraction, list[int]]:
    """Parse ``text`` (digits, ``+ - * /``, parentheses; no unary minus, no spaces) exactly.

    Returns ``(value, literals)``.  Raises ``ValueError`` on any malformed, unsafe or over-long input
    (division by zero, leading zeros, nesting deeper than 16, more than 64 characters).
    """
    if not isinstance(text, str) or not text or len(text) > _MAX_EXPR_CHARS:
        raise _ParseError("empty or over-long expression")
    pos = 0
    literals: list[int] = []

    def peek() -> str:
        return text[pos] if pos < len(text) else ""

    def expr(depth: int) -> Fraction:
        nonlocal pos
        v = term(depth)
        while peek() in ("+", "-") and peek():
            op = text[pos]
            pos += 1
            r = term(depth)
            v = v + r if op == "+" else v - r
        return v

    def term(depth: int) -> Fraction:
        nonlocal pos
        v = atom(depth)
        while peek() in ("*", "/") and peek():
            op = text[pos]
            pos += 1
            r = atom(depth)
            if op == "*":
                v = v * r
            else:
                if r == 0:
                    raise _ParseError("division by zero")
                v = v / r
        return v

    def atom(depth: int) -> Fraction:
        nonlocal pos
        if depth > _MAX_DEPTH:
            raise _ParseError("nesting too deep")
        c = peek()
        if c == "(":
            pos += 1
            v = expr(depth + 1)
            if peek() != ")":
                raise _ParseError("missing ')'")
            pos += 1
            return v
        if c.isdigit() and c.isascii():
            start = pos
            while peek().isdigit() and peek().isascii():
                pos += 1
            lit = text[start:pos]
            if len(lit) > 1 and lit[0] == "0":
                raise _ParseError("leading zero")
            literals.append(int(lit))
            return Fraction(int(lit))
        raise _ParseError(f"unexpected {c!r} at {pos}")

    value = expr(0)
    if pos != len(text):
        raise _ParseError(f"trailing input at {pos}")
    return value, literals


def verify(problem: Problem, expression: str) -> bool:
    """True iff ``expression`` parses, uses the problem's multiset exactly and equals the target."""
    try:
        value, literals = parse_expression(expression.strip())
    except (ValueError, RecursionError):
        return False
    return sorted(literals) == sorted(problem.numbers) and value == problem.target


def extract_answer(completion: str) -> str:
    """The final expression of a decoded completion: after the first ``</think>``, before ``<eos>``.

    Nothing else is stripped except surrounding whitespace: any other special token left in the
    answer makes it fail to parse.
    """
    if THINK_END in completion:
        completion = completion.split(THINK_END, 1)[1]
    if EOS in completion:
        completion = completion.split(EOS, 1)[0]
    return completion.strip()


def reward(problem: Problem, completion: str, finished: bool = True) -> float:
    """Verifiable 0/1 reward of a full decoded completion (scratchpad, ``</think>``, answer, ``<eos>``).

    A truncated completion (``finished=False``: no ``<eos>`` before the cap) gets 0.
    """
    if not finished:
        return 0.0
    return 1.0 if verify(problem, extract_answer(completion)) else 0.0


def answer_reward(problem: Problem, answer: str, finished: bool = True) -> float:
    """0/1 reward of an answer alone (``Rollout.answer_text``: the text after ``</think>``, no ``<eos>``).

    Strict: the whole string must be the expression (a stray ``</think>`` or any special token fails).
    """
    if not finished:
        return 0.0
    return 1.0 if verify(problem, answer) else 0.0


# ----------------------------------------------------------------------------------------------------
# Problem generation and split
# ----------------------------------------------------------------------------------------------------


def problem_split(problem: Problem, test_fraction: float = 0.1, salt: str = "hookmix-countdown-v1") -> str:
    """``"test"`` or ``"train"``: a stable hash of the problem key, so the splits never overlap."""
    nums, target = problem.key
    h = zlib.crc32(f"{salt}|{','.join(map(str, nums))}|{target}".encode())
    return "test" if (h % 1_000_000) < test_fraction * 1_000_000 else "train"


def _sample_problem(rng: random.Random, cfg: CountdownConfig) -> Problem | None:
    n = rng.choice(cfg.n_numbers)
    lo, hi = cfg.number_range
    nums = tuple(rng.randint(lo, hi) for _ in range(n))
    reach = reachable_targets(nums, cfg.ops)
    tlo, thi = cfg.target_range
    eligible = sorted(t for t, c in reach.items() if tlo <= t <= thi and c >= cfg.min_solutions)
    if not eligible:
        return None
    return Problem(nums, rng.choice(eligible))


def generate_problems(
    n: int,
    seed: int,
    split: str = "train",
    cfg: CountdownConfig = CountdownConfig(),
    unique: bool = False,
    max_tries: int | None = None,
) -> list[Problem]:
    """``n`` problems of ``split`` (``"train"``, ``"test"`` or ``"all"``), deterministic given ``seed``.

    ``unique=True`` forbids repeated problem keys (use it for held-out sets).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train/test/all, got {split!r}")
    rng = random.Random(f"countdown|{seed}|{split}")
    out: list[Problem] = []
    seen: set = set()
    tries = 0
    max_tries = max_tries if max_tries is not None else 200 * n + 1000
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise RuntimeError(f"could only generate {len(out)}/{n} {split} problems")
        p = _sample_problem(rng, cfg)
        if p is None:
            continue
        if split != "all" and problem_split(p, cfg.test_fraction, cfg.split_salt) != split:
            continue
        if unique:
            if p.key in seen:
                continue
            seen.add(p.key)
        out.append(p)
    return out


# ----------------------------------------------------------------------------------------------------
# Prompts (the SFT traces built on them: sft_traces.py)
# ----------------------------------------------------------------------------------------------------


def prompt_text(problem: Problem) -> str:
    return f"{BOS}{' '.join(map(str, problem.numbers))}:{problem.target}{THINK}"
