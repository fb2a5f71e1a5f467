"""Answer verifier for math completions: the binary reward behind GRPO and HDPO's R = 1 filter.

    verify(response, answer) -> bool    is the response's final answer equal to the gold answer?
    reward(response, answer) -> float   the same as 1.0 / 0.0 (what hdpo.py calls)
    extract_answer(text) -> str | None  the final answer of a completion

    python verify.py RESPONSE ANSWER    prints true/false, exit status 0/1
    python verify.py --jsonl FILE       rows {response, answer[, expected]}; prints the agreement

Standard library + sympy, no eval/exec/sympify of model output. Pipeline:
  1. extract: last \\boxed{} (adjacent boxes joined: "\\boxed{1} and \\boxed{2}"), else a later
     "final answer is ..." / "the answer is ..." / "#### ...", else the later of the last $...$
     and the last number; a short non-prose text is taken whole. The gold goes through the same
     extraction when it holds a box or such a phrase, else it is used whole.
  2. normalise the string (_RULES, one regex per rule) and parse it with a small
     recursive-descent parser into sympy numbers / expressions / intervals / matrices, plus
     three tuples of our own: Tup (ordered), Set (unordered), Rel (relation chain).
  3. compare: equal normalised strings, else structural matching of sets/tuples/intervals/
     matrices/relations, exact sympy arithmetic for rationals, numeric evaluation for the rest
     (free symbols are given fixed sample values; no simplify).

Where it departs from Math-Verify (huggingface/Math-Verify, default settings):
  - no timeout by signal: work is bounded before sympy sees it (answer length, nesting depth,
    literal size, exponent and factorial size are refused) plus a deadline checked between
    comparison steps, so it is safe in threads and worker processes and power towers fail fast;
  - inequality <-> interval works both ways (Math-Verify: gold inequality vs predicted interval
    only), and "1 - 1/e" is not equal to "1 + 1/e";
  - float tolerance: |a - b| <= 1e-6 * min(1, max(|a|, |b|)) when a decimal is involved,
    instead of rounding both sides to 6 decimal places;
  - symbolic equality by evaluation at sample points (positive reals), not sympy.simplify.
"""
import functools
import json
import re
import sys
import time
import zlib
from collections import namedtuple
from itertools import product

import sympy as sp

__all__ = ["extract_answer", "verify", "reward"]

BUDGET_S = 0.9            # per-call deadline for the comparison phase
MAX_ANSWER = 2000         # longer answers are compared as strings only
MAX_DEPTH = 60            # bracket nesting beyond this is not parsed
MAX_DIGITS = 1000         # longer number literals are not parsed
MAX_POW_BITS = 100_000    # refuse numeric powers whose result would exceed this many bits
MAX_FACTORIAL = 2000
TAIL = 2000               # the last $...$ / number is searched in this many trailing chars

Tup = namedtuple("Tup", "items")        # ordered: (a, b), [1, 2, 3]
Set = namedtuple("Set", "items")        # unordered: {a, b}, \{a, b\}
Lst = namedtuple("Lst", "items")        # a bare list "a, b" or "a and b": unordered, but read in order against a tuple
Rel = namedtuple("Rel", "ops parts")    # a op b op c ... with ops among = < <= > >= !=
PM = sp.Symbol("±")                     # stands for \pm until _expand_pm splits it


class _Fail(Exception):
    """The text is not something this parser understands (or it is too big to evaluate)."""


class _Timeout(Exception):
    pass


# ----------------------------------------------------------------------------- extraction
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_PHRASE = re.compile(r"(?i)(?:final answer(?:\s+is)?|\banswer\s+is|####)\s*:?")
_SEGMENT = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_NUMBER = re.compile(r"(?<![\w.])(?:(?<![\d)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?(?:/\d+)?(?:\s*%)?"
                     r"|(?<![\w.])\.\d+")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_NOT_PROSE = {"and", "percent", "percentage", "pct", "degrees", "text", "mbox", "textbf"}


def _clean(text):
    text = str(text).replace("\x00", "")
    # literally doubled backslashes in front of LaTeX commands: \\frac -> \frac
    return re.sub(r"(?<!\\)\\\\(?=(?:boxed|frac|dfrac|tfrac|left|right|sqrt|text|le|ge|leq|geq|pi|cdot|"
                  r"times|pm|infty|in|cup|mathrm)(?![a-zA-Z]))", r"\\", text)


def _box_content(text, i):
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None, i
    if text[i] != "{":  # \boxed 5
        m = re.match(r"[^\s$]+", text[i:i + 200])
        return (m.group(0).rstrip(".,"), i + m.end()) if m else (None, i)
    depth, start, end = 0, i + 1, min(len(text), i + 20000)
    for m in re.finditer(r"[{}]", text[i:end]):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[start:i + m.start()], i + m.end()
    return text[start:end], end  # unbalanced: the rest


def _boxes(text):
    """The last box, joined with the boxes before it that only "and"/commas separate from it."""
    spans = []
    for m in list(_BOX.finditer(text))[-30:]:
        content, end = _box_content(text, m.end())
        if content is not None:
            spans = [s for s in spans if not (m.start() < s[1] and s[0] < m.start())] + [(m.start(), end, content)]
    if not spans:
        return None, -1
    spans = [s for s in spans if not any(o[0] < s[0] and s[1] <= o[1] for o in spans)]  # drop nested
    group = [spans[-1]]
    for s in reversed(spans[:-1]):
        sep = text[s[1]:group[0][0]]
        words = re.sub(r"\\[a-zA-Z]+|[\s$\\{}()\[\],;.:+&~]", " ", sep).split()
        if words and not (len(sep) <= 60 and ({"and", "or"} & set(words))):
            break
        group.insert(0, s)
    contents = list(dict.fromkeys(c.strip() for _, _, c in group))
    return ", ".join(contents), spans[-1][1]


def _is_prose(s):
    s = re.sub(r"\\(?:begin|end)\{\w*\*?\}", " ", s[:TAIL])
    return sum(w.lower() not in _NOT_PROSE for w in _WORD.findall(s)) >= 2


def _last_number(s):
    m = None
    for m in _NUMBER.finditer(s[-TAIL:]):
        pass
    return m.group(0) if m else None


def _finish_phrase(snippet):
    s = re.split(r"\n\s*\n|\bI hope\b|(?<=\S)\.(?:\s|$)|\n(?=\S)", snippet.strip(), maxsplit=1)[0]
    s = re.split(r"\s+is\s+", s)[-1]
    s = re.sub(r"\\?\$|\\[()\[\]]|\\?\"|\*\*", " ", s).strip(" .,:;")
    if _is_prose(s):
        return _last_number(s) or s
    return s or None


def extract_answer(text):
    """The final answer of a completion (see the module docstring for the order), or None."""
    text = _clean(text)
    box, box_end = _boxes(text)
    phrase = None
    for phrase in _PHRASE.finditer(text):
        pass
    if phrase is not None and phrase.start() >= box_end:
        snippet = text[phrase.end():phrase.end() + 500]
        # after a box, only a phrase that goes on with math overrides it ("... answer is correct" does not)
        if box is None or re.match(r"""[\s:*"]*(?:[-\d$\\({\[]|[A-E]\b)""", snippet):
            return _finish_phrase(snippet)
    if box is not None:
        return box.strip()
    tail = text[-TAIL:]
    seg = num = None
    for seg in _SEGMENT.finditer(tail):
        pass
    for num in _NUMBER.finditer(tail):
        pass
    if seg is None and not _is_prose(text):
        return text.strip() or None
    if num is not None and (seg is None or num.start() >= seg.end()):
        return num.group(0)
    return next(g for g in seg.groups() if g is not None).strip() if seg else None


def _gold_text(answer):
    answer = _clean(answer)
    if _BOX.search(answer) or _PHRASE.search(answer):
        return extract_answer(answer)
    return answer.strip() or None


# ----------------------------------------------------------------------------- normalisation
_UNWRAP = r"\\(?:text|textbf|textit|textrm|textnormal|textup|mbox|hbox|mathrm|mathbf|mathit|mathsf|rm|operatorname)\s*"
_RULES = [
    (r",\\!\s*(?=\d{3})", ""),                                    # thousands: 10,\!000
    (r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d)", ""),                     # thousands: 14{,}916
    (r"\\(?:left|right)\.|\\(?:left|right|[bB]igg?[lr]?|displaystyle|textstyle)(?![a-zA-Z])", ""),  # sizing
    (r"\\[dtc]frac(?![a-zA-Z])", r"\\frac"),                     # \dfrac, \tfrac, \cfrac
    (r"(?<!\\)\\(?:qquad|quad|thinspace|enspace|[,;:! ])|~", " "),     # spacing commands
    (r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree(?![a-zA-Z])", ""),  # degrees 90^\circ
    (r"²", "^2"), (r"³", "^3"),                                  # unicode powers
    (r"\\[()\[\]]|\\?\$", " "),                                  # math delimiters and dollar signs
    (r"\\begin\{[pbvBV]?matrix\}|\\begin\{smallmatrix\}|\\begin\{array\}\{[^{}]*\}", r" \\matbegin "),  # matrices
    (r"\\end\{[pbvBV]?matrix\}|\\end\{smallmatrix\}|\\end\{array\}", r" \\matend "),
    (r"\\mathbb\s*\{?R\}?", r"\\reals"),                         # the real line
    (r"\\(?:overline|vec|hat|bar|widehat|tilde|mathbf|boldsymbol|overrightarrow)(?![a-zA-Z])", ""),  # accents
    (r"(?<![\d.])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}", r"(\1+\2/\3)"),  # mixed numbers 1\frac{4}{5}
    (r"\s+(?:and|or)\s+|\s*,\s*(?:and|or)\s+|(?<=[\d)\]}])\s*(?:and|or)\s*(?=[-A-Za-z(\\])", ","),  # "1 and 2"
    (r"(?<=[\d}])\s+[a-zA-Z]{2,}\.?(?:\s+[a-zA-Z]{2,}\.?)*(?:\s*\^\s*\{?\d\}?)?(?=\s*(?:$|[,;)\]]|\\\}))", ""),  # units
    (r"^\s*\(\s*([A-Z])\s*\)\s*$", r"\1"),                      # multiple choice (C) -> C
    (r"(?<![\\a-zA-Z])(sqrt|sin|cos|tan|log|ln|exp|pi)(?![a-zA-Z])", r"\\\1"),  # plain-text sqrt(2), pi
]
_RULES = [(re.compile(p), r) for p, r in _RULES]
_PERCENT = re.compile(r"\\?%|\bpercent(?:age)?\b|\bpct\b")


def _prep(s):
    """Normalised answer string and whether it carried a percent sign."""
    if len(s) > 2 * MAX_ANSWER:  # too long to be an answer: compared as a string only
        return " ".join(s.split()), False
    s = re.sub(r"\s+", " ", _clean(s))
    for _ in range(3):  # unwrap \text{...} (a few levels of nesting)
        s = re.sub(_UNWRAP + r"\{([^{}]*)\}", r" \1 ", s)
    pct = bool(_PERCENT.search(s))
    s = _PERCENT.sub(" ", s)
    for pat, rep in _RULES:
        s = pat.sub(rep, s)
    s = s.rstrip(" ,;:.").lstrip(" ,;:")  # surrounding punctuation (a leading dot may start .5)
    return (s[1:] if s.startswith(".") and not s[1:2].isdigit() else s).strip(), pct


def _norm(s):
    t = re.sub(r"\s+", "", _prep(s)[0])
    return t.lower() if re.fullmatch(r"[A-Za-z,]+", t) else t


# ----------------------------------------------------------------------------- parser
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|(\\[a-zA-Z]+|\\[{}]|\\\\)|(<=|>=|!=|=<|=>|==|[a-zA-Z]|"
                    r"[-+*/^_()\[\]{},;:=<>!|&])|(\S))")
_UNICODE = {"≤": "<=", "≥": ">=", "≠": "!=", "±": "\\pm", "∓": "\\mp", "×": "*", "÷": "/", "·": "*",
            "−": "-", "π": "\\pi", "∞": "\\infty", "√": "\\sqrt", "∈": "\\in", "∪": "\\cup", "≈": "\\approx"}
_RELS = {"=": "=", "==": "=", "<": "<", ">": ">", "<=": "<=", "=<": "<=", ">=": ">=", "=>": ">=", "!=": "!=",
         "\\le": "<=", "\\leq": "<=", "\\leqslant": "<=", "\\ge": ">=", "\\geq": ">=", "\\geqslant": ">=",
         "\\lt": "<", "\\gt": ">", "\\ne": "!=", "\\neq": "!=", "\\approx": "~", "\\in": "in"}
_FUNCS = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "sec": sp.sec, "csc": sp.csc, "cot": sp.cot,
          "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan, "sinh": sp.sinh, "cosh": sp.cosh,
          "tanh": sp.tanh, "ln": sp.log, "log": sp.log, "exp": sp.exp, "lg": lambda x: sp.log(x, 10)}
_MUL = {"*", "\\cdot", "\\times", "\\ast"}
_DIV = {"/", "\\div", ":"}
_NOT_ATOM = _MUL | _DIV | {"\\pm", "\\mp", "\\cup", "\\cap", "\\setminus", "\\rfloor", "\\rceil", "\\matend",
                           "\\}", "\\\\", "\\cdots", "\\ldots", "\\dots", "\\to", "\\rightarrow", "\\Rightarrow",
                           "\\implies", "\\iff", "\\mid", "\\pmod", "\\mod", "\\bmod", "\\begin", "\\end", "\\hline",
                           "\\boxed", "\\fbox", "\\over"}
_CONST = {"\\pi": sp.pi, "\\infty": sp.oo, "\\emptyset": sp.S.EmptySet, "\\varnothing": sp.S.EmptySet,
          "\\reals": sp.S.Reals, "e": sp.E, "i": sp.I}


def _tokens(s):
    out, pos = [], 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
        num, cmd, ch, other = m.groups()
        if other is not None:
            if other not in _UNICODE:
                raise _Fail(other)
            cmd = _UNICODE[other]
        if num is not None:
            out.append(("num", num))
        elif cmd is not None:
            out.append(("rel", _RELS[cmd]) if cmd in _RELS else ("cmd", cmd))
        elif ch is not None:
            out.append(("rel", _RELS[ch]) if ch in _RELS else ("ch", ch))
    return out


def _number(text):
    if len(text) > MAX_DIGITS:
        raise _Fail("literal too long")
    return sp.Float(text, max(15, len(text) + 2)) if "." in text else sp.Integer(text)


def _is_expr(*xs):
    return all(isinstance(x, (sp.Expr, sp.MatrixBase)) and not isinstance(x, sp.Set) for x in xs)


def _pow(b, e):
    if not _is_expr(b, e) or isinstance(e, sp.MatrixBase):
        raise _Fail("power of a non-expression")
    if isinstance(b, sp.MatrixBase):
        if not (e.is_Integer and abs(e) <= 10 and max(b.shape) <= 6):
            raise _Fail("matrix power")
        return b ** e
    if b.is_number and e.is_number and e.is_real and b not in (0, 1, -1):
        if abs(e) > 10_000:
            raise _Fail("exponent too large")
        if b.is_Integer and not e.is_Integer and abs(b) > 10 ** 60:
            raise _Fail("root of a huge integer")  # sympy would try to factor it
        if b.is_Rational:  # exact result: bound its size
            bits = max(int(b.p).bit_length(), int(b.q).bit_length())
            if bits * abs(e) > MAX_POW_BITS:
                raise _Fail("power too large")
    return b ** e


def _as_set(v):
    if isinstance(v, sp.Set):
        return v
    if isinstance(v, Set) and _is_expr(*v.items):
        return sp.FiniteSet(*v.items)
    if isinstance(v, Tup) and len(v.items) == 2 and _is_expr(*v.items):
        return sp.Interval.open(*v.items)
    raise _Fail("not a set")


class _Parser:
    """Recursive descent: list ; relation ; union ; sum ; product ; unary ; power ; postfix ; atom."""

    def __init__(self, text):
        self.toks, self.i, self.depth = _tokens(text), 0, 0

    def peek(self, k=0):
        return self.toks[self.i + k] if self.i + k < len(self.toks) else (None, None)

    def take(self):
        tok = self.peek()
        if tok[0] is None:
            raise _Fail("unexpected end")
        self.i += 1
        return tok

    def accept(self, *texts):
        if self.peek()[1] in texts:
            return self.take()[1]
        return None

    def expect(self, text):
        if not self.accept(text):
            raise _Fail(f"expected {text}")

    def parse(self):
        groups = [self.items()]
        while self.accept(";"):
            groups.append(self.items())
        if self.peek()[0] is not None:
            raise _Fail(f"trailing {self.peek()[1]}")
        groups = [g for g in groups if g]
        if len(groups) > 1 and any(len(g) > 1 for g in groups):  # "p=5,q=2; p=7,q=2" -> {(5,2), (7,2)}
            return Lst(tuple(Tup(tuple(_value_of(x) for x in g)) for g in groups))
        flat = [x for g in groups for x in g]
        if not flat:
            raise _Fail("empty")
        return flat[0] if len(flat) == 1 else Lst(tuple(flat))

    def items(self, seps=(",",)):
        out = []
        while True:
            if self.peek()[1] not in seps + (";", ")", "]", "}", "\\}", None):
                out.append(self.relation())
            if not self.accept(*seps):
                return out

    def relation(self):
        parts, ops = [self.union()], []
        while self.peek()[0] == "rel":
            ops.append(self.take()[1])
            parts.append(self.union())
        if "~" in ops and "=" in ops:  # x = 1/3 \approx 0.33: drop the approximation
            parts, ops = parts[:ops.index("~") + 1], ops[:ops.index("~")]
        ops = ["=" if o in ("~", "in") else o for o in ops]
        if not ops:
            return parts[0]
        if set(ops) == {"="} and len(parts) > 2:  # chain a = b = c: the last value
            return parts[-1]
        return Rel(tuple(ops), tuple(parts))

    def union(self):
        v, ops, sets = self.expr(), [], []
        while True:
            op = self.accept("\\cup", "\\cap", "\\setminus")
            if not op:
                break
            ops.append(op)
            sets.append(_as_set(self.expr()))
        if not ops:
            return v
        if len(ops) > 15:
            raise _Fail("too many set operations")  # sympy's Union is quadratic or worse
        if set(ops) == {"\\cup"}:
            return sp.Union(_as_set(v), *sets)
        v = _as_set(v)
        for op, w in zip(ops, sets):
            v = {"\\cup": sp.Union, "\\cap": sp.Intersection, "\\setminus": sp.Complement}[op](v, w)
        return v

    def expr(self):
        v = self.term()
        while True:
            op = self.accept("+", "-", "\\pm", "\\mp")
            if not op:
                return v
            w = self.term()
            if not _is_expr(v, w):
                raise _Fail("arithmetic on a non-expression")
            v = v + w if op == "+" else v - w if op == "-" else v + PM * w if op == "\\pm" else v - PM * w

    def term(self):
        v = self.unary()
        while True:
            tok = self.peek()
            if tok[1] in _MUL or tok[1] in _DIV:
                self.take()
                w = self.unary()
            elif self.starts_atom(tok):
                w = self.power()
            else:
                return v
            if not _is_expr(v, w):
                raise _Fail("product of a non-expression")
            if isinstance(v, sp.MatrixBase) and isinstance(w, sp.MatrixBase) and max(v.shape + w.shape) > 8:
                raise _Fail("matrix product too large")
            if tok[1] in _DIV:
                if isinstance(w, sp.MatrixBase):
                    raise _Fail("division by a matrix")
                w = 1 / w if w != 0 else sp.zoo
            v = v * w

    def starts_atom(self, tok):
        kind, text = tok
        return kind in ("num", "cmd") and text not in _NOT_ATOM or (kind == "ch" and (text.isalpha() or text in "({"))

    def unary(self):
        op = self.accept("-", "+", "\\pm", "\\mp")
        if op:
            v = self.unary()
            if not _is_expr(v):
                raise _Fail("sign of a non-expression")
            return {"-": -v, "+": v, "\\pm": PM * v, "\\mp": -PM * v}[op]
        return self.power()

    def power(self):
        base = self.postfix()
        if self.accept("^"):
            return _pow(base, self.unary() if self.peek()[1] != "{" else self.group())
        return base

    def postfix(self):
        v = self.atom()
        while True:
            if self.accept("!"):
                if not _is_expr(v) or (v.is_number and (not v.is_Integer or v > MAX_FACTORIAL)):
                    raise _Fail("factorial")
                v = sp.factorial(v)
            elif self.accept("_"):
                start = self.i
                sub = self.group() if self.peek()[1] == "{" else self.atom()
                raw = "".join(t for _, t in self.toks[start:self.i]).strip("{}")
                if isinstance(v, sp.Integer) and raw.isdigit():
                    continue  # base subscript: 204_5 is read as the numeral 204
                name = getattr(v, "name", None)
                if name is None:
                    raise _Fail("subscript")
                v = sp.Symbol(f"{name}_{raw}") if raw.isalnum() else sp.Function(name)(sub)
            else:
                return v

    def group(self):
        self.expect("{")
        items = self.items()
        self.expect("}")
        if not items:
            raise _Fail("empty group")
        return items[0] if len(items) == 1 else Set(tuple(items))

    def arg(self):  # argument of \frac, \sqrt: {...} or a single digit / letter / command
        kind, text = self.peek()
        if text == "{":
            return self.group()
        if kind == "num" and len(text) > 1 and "." not in text:
            self.toks[self.i] = ("num", text[1:])
            return sp.Integer(text[0])
        return self.atom()

    def atom(self):
        self.depth += 1
        if self.depth > 4 * MAX_DEPTH:
            raise _Fail("too deep")
        kind, text = self.take()
        if kind == "num":
            return _number(text)
        if text in _CONST:
            return _CONST[text]
        if kind == "ch" and text.isalpha():
            return sp.Symbol(text)
        if text in ("(", "["):
            items = self.items((",", ";"))
            close = self.take()[1]
            if close not in (")", "]"):
                raise _Fail("unclosed bracket")
            if len(items) == 1 and (text + close) in ("()", "[]"):
                return items[0]
            if len(items) == 2 and _is_expr(*items) and ("[" in text + close or items[0].has(sp.oo, -sp.oo) or items[1].has(sp.oo, -sp.oo)):
                return sp.Interval(items[0], items[1], text == "(", close == ")")
            return Tup(tuple(items))
        if text == "{":
            self.i -= 1
            return self.group()
        if text == "\\{":
            items = self.items((",", ";"))
            self.expect("\\}")
            return Set(tuple(items))
        if text == "|":
            v = self.expr()
            self.expect("|")
            return sp.Abs(v)
        if text == "\\frac":
            num, den = self.arg(), self.arg()
            if not _is_expr(num, den) or isinstance(den, sp.MatrixBase):
                raise _Fail("frac")
            return num / den if den != 0 else sp.zoo
        if text == "\\sqrt":
            n = sp.Integer(2)
            if self.accept("["):
                n = self.expr()
                self.expect("]")
            x = self.arg()
            if not _is_expr(x, n) or n == 0:
                raise _Fail("sqrt")
            return _pow(x, sp.S.One / n)
        if text == "\\binom":
            n, k = self.arg(), self.arg()
            if not _is_expr(n, k) or (n.is_number and k.is_number and abs(n) > 10 ** 6):
                raise _Fail("binom")
            return sp.binomial(n, k)
        if text in ("\\lfloor", "\\lceil"):
            v = self.expr()
            self.expect("\\rfloor" if text == "\\lfloor" else "\\rceil")
            return sp.floor(v) if text == "\\lfloor" else sp.ceiling(v)
        if text in ("\\sum", "\\prod"):
            return self.big_operator(text)
        if text == "\\matbegin":
            return self.matrix()
        if kind == "cmd" and text[1:] in _FUNCS:
            return self.function(text[1:])
        if kind == "cmd" and text not in _NOT_ATOM and text[1].isalpha():
            return sp.Symbol(text[1:])  # greek letters and unknown commands are plain symbols
        raise _Fail(f"unexpected {text}")

    def function(self, name):
        power = base = None
        if self.accept("_"):
            base = self.arg()
        if self.accept("^"):
            power = self.group() if self.peek()[1] == "{" else self.unary()
        x = self.atom() if self.peek()[1] == "(" else self.power()
        if not _is_expr(x) or isinstance(x, sp.MatrixBase):
            raise _Fail("function argument")
        v = sp.log(x, base) if base is not None and name == "log" else _FUNCS[name](x)
        if power is not None:
            v = {"sin": sp.asin, "cos": sp.acos, "tan": sp.atan}[name](x) if power == -1 and name in ("sin", "cos", "tan") else _pow(v, power)
        return v

    def big_operator(self, text):
        self.expect("_")
        self.expect("{")
        var = self.atom()
        self.expect("=")  # '=' is tokenised as a relation
        lo = self.expr()
        self.expect("}")
        self.expect("^")
        hi = self.group() if self.peek()[1] == "{" else self.atom()
        body = self.term()
        if not (isinstance(var, sp.Symbol) and _is_expr(lo, hi, body)):
            raise _Fail("sum")
        v = (sp.Sum if text == "\\sum" else sp.Product)(body, (var, lo, hi))
        if lo.is_Integer and hi.is_Integer and 0 <= hi - lo <= 100 and body.is_polynomial(var):
            v = v.doit()
        return v

    def matrix(self):
        rows, row = [], []
        while True:
            if self.peek()[1] == "\\hline":
                self.take()
                continue
            row.append(self.expr())
            sep = self.take()[1]
            if sep == "&":
                continue
            rows.append(row)
            row = []
            if sep == "\\\\" and self.peek()[1] == "\\matend":
                sep = self.take()[1]
            if sep == "\\matend":
                break
            if sep != "\\\\":
                raise _Fail("matrix")
        if len({len(r) for r in rows}) != 1 or not _is_expr(*(c for r in rows for c in r)):
            raise _Fail("ragged matrix")
        return sp.ImmutableMatrix(rows)


def _value_of(x):
    """x = 5 -> 5 when the left side only names the answer."""
    if isinstance(x, Rel) and x.ops == ("=",) and _is_label(x.parts[0]):
        return x.parts[1]
    return x


def _is_label(x):
    """Left sides that only name the answer: y, f(x), a_1, AB, (p, q), |AB|, A:B, \\frac{NO}{BO}."""
    if isinstance(x, Tup):
        return all(_is_label(i) for i in x.items)
    if not isinstance(x, sp.Expr) or not x.free_symbols or x.atoms(sp.Add) or x.as_coeff_Mul()[0] != 1:
        return False
    return all(n in (1, -1) for n in x.atoms(sp.Number))


def _expand_pm(v):
    """a \\pm b -> {a + b, a - b}; inside sets and lists the two values are flattened in."""
    if isinstance(v, sp.Expr) and v.has(PM):
        return Set((v.subs(PM, 1), v.subs(PM, -1)))
    if isinstance(v, Rel):
        return Rel(v.ops, tuple(_expand_pm(p) for p in v.parts))
    if isinstance(v, (Set, Lst, Tup)):
        items = []
        for it in v.items:
            e = _expand_pm(it)
            if not isinstance(v, Tup) and isinstance(e, Set) and isinstance(it, sp.Expr):
                items.extend(e.items)
            elif not isinstance(v, Tup) and isinstance(e, Rel) and e.ops == ("=",) and isinstance(e.parts[1], Set) and isinstance(it.parts[1], sp.Expr):
                items.extend(Rel(e.ops, (e.parts[0], x)) for x in e.parts[1].items)
            else:
                items.append(e)
        return type(v)(tuple(items))
    return v


def _bad(v):
    if isinstance(v, (Set, Lst, Tup)):
        return any(_bad(i) for i in v.items)
    if isinstance(v, Rel):
        return any(_bad(i) for i in v.parts)
    return isinstance(v, sp.Basic) and v.has(sp.zoo, sp.nan)


def _max_depth(s):
    d = m = 0
    for ch in s:
        if ch in "([{":
            d += 1
            m = max(m, d)
        elif ch in ")]}":
            d -= 1
    return m


@functools.lru_cache(maxsize=8192)
def _values(s, plain=False):
    """All readings of an answer string (a percentage gives two), as a tuple; () if unparsable."""
    t, pct = _prep(s) if len(s) <= 2 * MAX_ANSWER else ("", False)
    if not t or len(t) > MAX_ANSWER or _max_depth(t) > MAX_DEPTH:
        return ()
    if re.fullmatch(r"[A-Za-z][A-Za-z\s'.-]*", t) and re.search(r"[A-Za-z]{3}", t):
        return ()  # plain words: compared as text only
    if re.search(r"(?<![\\a-zA-Z])[a-zA-Z]{4,}", re.sub(r"_\{[^{}]*\}", "", t)):
        return ()  # prose around the answer: not an expression
    texts = [t]
    if re.fullmatch(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|-?\d{1,3}(?: \d{3})+", t):  # 7,425,000 and 1 000
        texts = [re.sub(r"[, ]", "", t)]
    elif re.fullmatch(r"-?\d+,\d+", t) and plain:  # 1000,99 outside LaTeX: decimal comma or a list
        texts = [t.replace(",", "."), t]
    out = []
    for text in texts:
        try:
            v = _expand_pm(_Parser(text).parse())
        except (_Fail, TypeError, ValueError, AttributeError, ZeroDivisionError, RecursionError):
            continue
        if _bad(v):
            continue
        out.append(v)
        if pct and isinstance(v, sp.Expr):
            out.append(v / 100)
    return tuple(out)


# ----------------------------------------------------------------------------- comparison
def _tick(deadline):
    if time.monotonic() > deadline:
        raise _Timeout()


def _num(x, subs=None):
    """(re, im) as sympy Floats, or None when x does not evaluate to a finite number."""
    if x.has(sp.Sum, sp.Product):  # an unevaluated sum may have 10^9 terms: never evalf it
        return None
    v = x.evalf(30, subs=subs) if subs else x.evalf(30)
    if v.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        return None
    re_, im_ = v.as_real_imag()
    if not (re_.is_Number and im_.is_Number):
        return None
    z = complex(float(re_), float(im_))  # a Python complex where it fits: much faster to compare
    return z if abs(z) < 1e300 and (z != 0 or v == 0) else (re_, im_)


def _close(a, b, inexact):
    if isinstance(a, complex) and isinstance(b, complex):
        d, m = abs(a - b), max(abs(a), abs(b))
    else:
        a, b = ((x.real, x.imag) if isinstance(x, complex) else x for x in (a, b))
        d = abs(a[0] - b[0]) + abs(a[1] - b[1])
        m = max(abs(a[0]) + abs(a[1]), abs(b[0]) + abs(b[1]))
    return d <= (1e-6 * min(1, m) if inexact else 1e-14 * m + 1e-300)


def _sample(name, k):
    """The value a free symbol gets at sample point k: positive, fixed by its name."""
    return sp.Float(0.53 + (zlib.crc32(name.encode()) % 997) / 503 + 0.377 * k)


@functools.lru_cache(maxsize=16384)
def _fingerprint(x):
    """x evaluated at three sample points (a tuple of _num results), or None if too big."""
    syms = sorted(x.free_symbols, key=str)
    if len(syms) > 10 or sp.count_ops(x) > 400:
        return None
    if not syms:
        return (_num(x),) * 3
    return tuple(_num(x, {s: _sample(s.name, k) for s in syms}) for k in range(3))


def _eq_expr(a, b, dl):
    if a == b:
        return True
    if (a.is_Rational and b.is_Rational) or a.has(sp.oo, -sp.oo, sp.zoo) or b.has(sp.oo, -sp.oo, sp.zoo):
        return False
    fa, fb = _fingerprint(a), _fingerprint(b)
    if fa is None or fb is None:
        return False
    inexact = bool(a.free_symbols or b.free_symbols) or a.has(sp.Float) or b.has(sp.Float)
    pairs = [(u, v) for u, v in zip(fa, fb) if u is not None or v is not None]
    return len(pairs) >= 2 and all(u is not None and v is not None and _close(u, v, inexact) for u, v in pairs)


def _same_equation(g, p, dl):
    """lhs1 - rhs1 and lhs2 - rhs2 are proportional: 2x + 4y - 3 = 0 is y = -x/2 + 3/4."""
    if not _is_expr(*g.parts, *p.parts) or any(isinstance(x, sp.MatrixBase) for x in g.parts + p.parts):
        return False
    a, b = g.parts[0] - g.parts[1], p.parts[0] - p.parts[1]
    if a == b or a == -b:
        return True
    syms = sorted(a.free_symbols | b.free_symbols, key=str)
    if not syms or len(syms) > 10:
        return False
    ratios = []
    for k in range(3):
        _tick(dl)
        subs = {s: _sample(s.name, k) for s in syms}
        va, vb = _num(a, subs), _num(b, subs)
        if not isinstance(va, complex) or not isinstance(vb, complex) or abs(vb) < 1e-12:
            continue
        ratios.append(va / vb)
    return len(ratios) >= 2 and abs(ratios[0]) > 1e-9 and all(_close(r, ratios[0], True) for r in ratios)


def _interval(label_side_first, op, bound):
    if not label_side_first:  # 3 < x is x > 3
        op = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op, op)
    return {"<": sp.Interval.open(-sp.oo, bound), "<=": sp.Interval(-sp.oo, bound),
            ">": sp.Interval.open(bound, sp.oo), ">=": sp.Interval(bound, sp.oo),
            "!=": sp.Union(sp.Interval.open(-sp.oo, bound), sp.Interval.open(bound, sp.oo))}[op]


def _roots(poly, x):
    if poly.free_symbols - {x} or sp.count_ops(poly) > 40:
        raise _Fail("not a polynomial in one symbol")
    p = sp.Poly(poly, x)
    if p.degree() > 2 or (p.degree() == 2 and not p.domain.is_QQ and not p.domain.is_ZZ):
        raise _Fail("only linear, or quadratic with rational coefficients")
    return [r for r in sp.roots(p) if abs(sp.im(r.evalf(20))) < 1e-20] if p.degree() > 0 else []


def _solve(d, op, x):
    """{x real : d(x) op 0} by a sign chart; d is a polynomial of degree <= 2, possibly with |...|."""
    args = [a.args[0] for a in d.atoms(sp.Abs)]
    if len(args) > 3 or d.atoms(sp.Function) - d.atoms(sp.Abs):
        raise _Fail("not piecewise polynomial")
    crit = [r for a in args for r in _roots(a, x)]
    for signs in product((1, -1), repeat=len(args)):
        crit += _roots(d.subs({sp.Abs(a): s * a for a, s in zip(args, signs)}), x)
    pts = sorted(set(crit), key=lambda r: float(r.evalf(20)))
    test = {"<": lambda v: v < -1e-20, "<=": lambda v: v <= 1e-20, ">": lambda v: v > 1e-20,
            ">=": lambda v: v >= -1e-20, "!=": lambda v: abs(v) > 1e-20}[op]
    holds = lambda t: test(float(d.subs(x, t).evalf(30)))
    bounds = [-sp.oo] + pts + [sp.oo]
    parts = [sp.FiniteSet(p) for p in pts if holds(p)]
    for lo, hi in zip(bounds, bounds[1:]):
        mid = (lo + hi) / 2 if lo.is_finite and hi.is_finite else (hi - 1 if hi.is_finite else lo + 1 if lo.is_finite else 0)
        if holds(mid):
            parts.append(sp.Interval.open(lo, hi))
    return sp.Union(*parts)


@functools.lru_cache(maxsize=1024)
def _rel_set(r):
    try:
        return _rel_set_uncached(r)
    except (_Fail, TypeError, ValueError):  # complex or symbolic bounds: no set of reals
        return None


def _rel_set_uncached(r):
    """The set of reals a relation describes: x >= 5 -> [5, oo), 1 <= |z| <= 2, x \\in [0, 1)."""
    if r.ops == ("=",):
        ok = _is_label(r.parts[0]) and isinstance(r.parts[1], (sp.Set, Set))
        return r.parts[1] if ok else None
    if "=" in r.ops or len(r.parts) > 4 or not _is_expr(*r.parts) or any(isinstance(x, sp.MatrixBase) for x in r.parts):
        return None
    free = [p for p in r.parts if p.free_symbols]
    syms = set().union(*(p.free_symbols for p in free))
    result = sp.S.Reals
    for a, op, b in zip(r.parts, r.ops, r.parts[1:]):
        if len(syms) == 1:  # -x > -1, 1 <= |z|, x^2 < 4
            part = _solve(a - b, op, next(iter(syms)))
        elif len(free) == 1 and _is_label(free[0]) and not (a.free_symbols and b.free_symbols):
            part = _interval(bool(a.free_symbols), op, b if a.free_symbols else a)  # 0 < f(x) < 1
        else:
            return None
        result = sp.Intersection(result, part)
    return result


def _items(v):
    if isinstance(v, (Set, Lst)):
        return list(v.items)
    if isinstance(v, sp.FiniteSet):
        return list(v.args)
    return None


def _dedupe(xs, dl):
    out = []
    for x in xs:  # relations are kept apart by their left side too: {a = 0, b = 0} has two items
        if not any(y == x if isinstance(x, Rel) else _eq(y, x, dl) for y in out):
            out.append(x)
    return out


def _match(gs, ps, dl):
    if len(gs) > 100 or len(ps) > 100:
        return False
    gs, ps = _dedupe(gs, dl), _dedupe(ps, dl)
    if len(gs) != len(ps):
        return False
    left = list(ps)
    for g in gs:
        hit = next((p for p in left if _eq(g, p, dl)), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


def _sorted_items(xs):
    if all(isinstance(x, sp.Expr) and x.is_number and x.is_real for x in xs):
        return sorted(xs, key=lambda x: float(x.evalf()))
    return None


def _eq(g, p, dl):
    """Gold value g equals predicted value p."""
    _tick(dl)
    if isinstance(p, Rel) and not isinstance(g, Rel):
        if p.ops == ("=",):  # predicted x = 5 or 1 + 4 = 5 against gold 5 (not 2x - 10 = 0)
            lhs = p.parts[0]
            ok = _is_label(lhs) or (isinstance(lhs, sp.Expr) and not lhs.free_symbols)
            return ok and _eq(g, p.parts[1], dl)
        s = _rel_set(p)
        return s is not None and _eq(g, s, dl)
    if isinstance(g, Rel) and not isinstance(p, Rel):
        s = _value_of(g) if g.ops == ("=",) else _rel_set(g)
        return s is not None and s is not g and _eq(s, p, dl)
    if isinstance(g, Rel):
        if g.ops == p.ops == ("=",):
            if _is_label(g.parts[0]) and _is_label(p.parts[0]):
                return _eq(g.parts[1], p.parts[1], dl)
            return _same_equation(g, p, dl)
        sg, sp_ = _rel_set(g), _rel_set(p)
        if sg is not None and sp_ is not None:
            return _eq(sg, sp_, dl)
        return g.ops == p.ops and all(_eq(a, b, dl) for a, b in zip(g.parts, p.parts))
    ig, ip = _items(g), _items(p)
    if ig is not None or ip is not None:
        for t, other in ((g, ip), (p, ig)):
            if isinstance(t, Tup) and other is not None:  # (1, 3) vs {1, 3}: set read in sorted order
                srt = other if isinstance(g if t is p else p, Lst) else _sorted_items(other)
                return srt is not None and _eq(t, Tup(tuple(srt)), dl)
        return _match(ig if ig is not None else [g], ip if ip is not None else [p], dl)
    if isinstance(g, Tup) or isinstance(p, Tup):
        if isinstance(g, sp.Interval) or isinstance(p, sp.Interval):  # (a, b) is also an open interval
            t, iv = (g, p) if isinstance(g, Tup) else (p, g)
            return len(t.items) == 2 and iv.left_open and iv.right_open and _eq(Tup(iv.args[:2]), t, dl)
        if isinstance(g, sp.MatrixBase) or isinstance(p, sp.MatrixBase):  # vector vs tuple
            m, t = (g, p) if isinstance(g, sp.MatrixBase) else (p, g)
            return 1 in m.shape and _eq(Tup(tuple(m)), t, dl)
        return (isinstance(g, Tup) and isinstance(p, Tup) and len(g.items) == len(p.items)
                and all(_eq(a, b, dl) for a, b in zip(g.items, p.items)))
    if isinstance(g, sp.Interval) and isinstance(p, sp.Interval):
        return (g.left_open, g.right_open) == (p.left_open, p.right_open) and all(
            _eq(a, b, dl) for a, b in zip(g.args[:2], p.args[:2]))
    if isinstance(g, sp.Union) and isinstance(p, sp.Union):
        return _match(list(g.args), list(p.args), dl)
    if isinstance(g, sp.MatrixBase) and isinstance(p, sp.MatrixBase):
        return g.shape == p.shape and all(_eq(a, b, dl) for a, b in zip(g, p))
    if isinstance(g, sp.Set) or isinstance(p, sp.Set):
        return g == p
    if isinstance(g, sp.Expr) and isinstance(p, sp.Expr):
        return _eq_expr(g, p, dl)
    return False


def _verify(response, answer, deadline):
    gold, pred = _gold_text(answer), extract_answer(response)
    if gold is None or pred is None:
        return False
    if _norm(gold) == _norm(pred):
        return True
    latex = re.compile(r"\\boxed|\\fbox|\$|\\\(|\\\[")
    gvals = _values(gold, not latex.search(answer))
    pvals = _values(pred, not latex.search(response))
    if not pvals and _WORD.search(pred):  # words around the answer: fall back to its last number
        pvals = _values(_last_number(pred) or "", True)
    return any(_eq(g, p, deadline) for g in gvals for p in pvals)


def verify(response, answer):
    """True when the final answer of `response` equals the gold `answer` mathematically."""
    try:
        return bool(_verify(response, answer, time.monotonic() + BUDGET_S))
    except Exception:  # _Timeout, sympy errors, RecursionError, MemoryError: not verified
        return False


def reward(response, answer):
    """1.0 if verify(response, answer) else 0.0."""
    return 1.0 if verify(response, answer) else 0.0


def _main(argv):
    if len(argv) == 2 and argv[0] == "--jsonl":
        rows = [json.loads(line) for line in open(argv[1], encoding="utf-8") if line.strip()]
        got = [verify(r["response"], r["answer"]) for r in rows]
        print(f"rows: {len(rows)}  verified true: {sum(got)}/{len(rows)} ({sum(got) / max(1, len(rows)):.1%})")
        labelled = [(g, bool(r["expected"])) for g, r in zip(got, rows) if "expected" in r]
        if labelled:
            for name, sel in (("all", labelled), ("expected true", [x for x in labelled if x[1]]),
                              ("expected false", [x for x in labelled if not x[1]])):
                agree = sum(g == e for g, e in sel)
                print(f"agreement with expected ({name}): {agree}/{len(sel)} = {agree / max(1, len(sel)):.1%}")
        return 0
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    ok = verify(argv[0], argv[1])
    print("true" if ok else "false")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
