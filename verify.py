"""Answer verifier for math completions: the binary reward behind GRPO and HDPO's R = 1 filter.

    verify(response, answer) -> bool    is the response's final answer equal to the gold answer?
    reward(response, answer) -> float   the same as 1.0 / 0.0 (what hdpo.py calls)
    extract_answer(text) -> str | None  the final answer of a completion

    python verify.py RESPONSE ANSWER    prints true or false; exit status 0 or 1
    python verify.py --jsonl FILE       rows {response, answer[, expected]}: prints how many verify
                                        true and, for rows with `expected`, the share where
                                        verify(response, answer) == expected (also per label)

Standard library + sympy; model output is never eval'ed or sympify'd. Three steps:
  1. extract: the last \\boxed{} / \\fbox{} (boxes that only punctuation, or one "and"/"or" with
     labels, separate are joined; after prose with a concluding or revising word, "thus", "but",
     "wait", the last group alone counts), else "final answer is ..." / "the answer is ..." /
     "#### ..." / an "Answer:" label ("Réponse:", "答案：", ...) that starts a line or a sentence,
     else whichever comes later of the last $...$ and the last number (also glued to CJK text); a
     short text that is not prose (words in any script) is taken whole. A phrase after the last
     box wins when it goes on with math. The gold goes through the same extraction when it holds a
     box or such a phrase, else it is used whole.
  2. normalise the string (_RULES: one regex per rule) and parse it with a small recursive-descent
     parser into sympy numbers, expressions, intervals and matrices, plus five tuples of our own:
     Tup (ordered), Set (unordered), Lst (a bare list), Rel (a relation chain) and Clock (h:mm:ss).
  3. compare: equal normalised strings; else structural matching of sets, tuples, intervals,
     matrices and relations (equations compare both sides); rationals exactly; everything else by
     value at three sample points (exact for rational functions, Python floats otherwise).
     sympy.simplify is never called.

Time: work is bounded before sympy sees it (answer length, nesting, literal size, exponent,
factorial, binomial, union and matrix sizes are refused, so no huge integer is ever computed);
sympy evaluates only simple powers and functions of plain numbers; comparisons use Python floats
or exact rationals and build no sympy expressions beyond small inequalities, which our own sign
chart solves. As a backstop, parsing runs in a daemon thread that verify() waits on only until its
deadline (no signals: it works in threads and worker processes). A parse that runs away is
abandoned there, not stopped; the bounds above are what actually keep the work small.

Where it departs from Math-Verify (huggingface/Math-Verify, default settings):
  - power towers, 100000! and the like are refused in microseconds instead of hanging;
  - an inequality matches an interval both ways (Math-Verify: gold inequality vs predicted
    interval only), and "1 - 1/e" does not equal "1 + 1/e";
  - decimals: exact rationals, equal to another value within 1e-6 * min(1, |value|), instead of
    rounding both sides to 6 decimal places; values agreeing to 12 significant digits are equal;
  - a predicted equation counts for a bare gold value only if its left side just names it
    (x = 5, f(x) = 5) or is closed (17 \\bmod 5 = 2): "12x - 4y + 3z - 169 = 0" is not gold "0";
    two equations need the same left side ("\\cos x = c" is not "\\sin x = c");
  - "A \\approx 0.577" reads as A, and as 0.577 only when that is A rounded;
  - base subscripts are dropped (204_5 reads as 204).
"""

import cmath
import functools
import json
import math
import re
import sys
import threading
import time
import zlib
from collections import namedtuple
from concurrent.futures import Future
from itertools import product

import sympy as sp

__all__ = ["extract_answer", "verify", "reward"]

BUDGET_S = (
    0.8  # deadline of one verify() call (parsing waits at most until then; compare checks it)
)
MAX_ANSWER = 2000  # longer answers are compared as strings only
MAX_DEPTH = 60  # deeper bracket nesting is not parsed
MAX_DIGITS = 1000  # longer number literals are not parsed
MAX_POW_BITS = 100_000  # exact powers with a bigger result are refused
MAX_FACTORIAL = 2000
TAIL = 2000  # the last $...$ and the last number are looked for in this tail

Tup = namedtuple("Tup", "items")  # (a, b), [1, 2, 3]: ordered
Set = namedtuple("Set", "items")  # {a, b}, \{a, b\}: unordered
Lst = namedtuple("Lst", "items")  # a, b / a and b: unordered, but read in order against a Tup
Rel = namedtuple("Rel", "ops parts head", defaults=("",))  # parts[0] ops[0] parts[1] ...; ops among
#                                       = < <= > >= !=; head: the text of parts[0] as written
Clock = namedtuple("Clock", "seconds")  # 20:34 and 20:34:00 as a time of day
PM = sp.Symbol("±")  # \pm while parsing; _expand_pm splits it into two values


class _Fail(Exception):
    """Not something the parser understands, or too big to evaluate."""


# ----------------------------------------------------------------------------- extraction
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_ANSWER_WORDS = (
    "answer|réponse|respuesta|antwort|risposta|resposta|ответ|उत्तर|الإجابة|الجواب|答案|答え|정답"
)
_PHRASE = re.compile(r"(?i)(?:final answer(?:\s+is)?|\banswer\s+is|####)\s*:?")
_LABEL = re.compile(rf"(?i)(?<![^\W\d_])(?:{_ANSWER_WORDS})\s*(?:\*\*)?\s*[:：]")  # "Answer:"
_LABEL_WORDS = tuple(_ANSWER_WORDS.split("|"))
_SEGMENT = re.compile(
    r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S
)
_NUMBER = re.compile(
    r"(?:(?<![\d)}])-)?(?<![0-9A-Za-z_.])(?:\d+\s*)?\\[dt]?frac\s*(?:\{\d+\}|\d)(?:\{\d+\}|\d)"
    r"|(?<![0-9A-Za-z_.])(?:(?<![\d)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?(?:/\d+)?"
    r"(?:\s*%)?|(?<![0-9A-Za-z_.])\.\d+"
)  # a number glued to CJK text counts: 共有13只
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_MARKS = (  # combining marks: Latin, Cyrillic, Hebrew, Arabic; the Indic blocks whole
    "\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0900-\u0dff"
)
# a word in any script: a run of CJK characters, else 3+ letters (with Indic and Arabic marks)
_WORD = re.compile(rf"[{_CJK}]+|(?<![\\])(?<![^\W\d_])(?:[^\W\d_]|[{_MARKS}]){{3,}}")
_NOT_PROSE = frozenset({"and", "percent", "percentage", "pct", "degrees"})
_LATEX = re.compile(r"\\boxed|\\fbox|\$|\\\(|\\\[")


def _clean(text):
    """NUL bytes out; doubled backslashes of escaped dumps halved: \\\\frac -> \\frac before the
    usual commands, and every backslash run halved when no command has a single one (an escaped
    matrix: \\\\begin{matrix} 1 \\\\\\\\ 2 \\\\end{matrix})."""
    text = str(text).replace("\x00", "")
    if "\\\\" not in text:
        return text
    if re.search(r"(?<!\\)\\\\[a-zA-Z]", text) and not re.search(r"(?<!\\)\\[a-zA-Z]", text):
        return re.sub(r"\\\\", lambda m: "\\", text)
    return re.sub(
        r"(?<!\\)\\\\(?=(?:boxed|frac|dfrac|tfrac|left|right|sqrt|text|le|ge|leq|geq|pi|cdot|times|pm|"
        r"infty|in|cup|mathrm)(?![a-zA-Z]))",
        r"\\",
        text,
    )


def _box_content(text, i):
    """(content, end) of the box whose argument starts at i; unbalanced braces: the rest."""
    while text[i : i + 1] == " ":
        i += 1
    if text[i : i + 1] != "{":  # \boxed 5
        m = re.match(r"[^\s$]+", text[i : i + 200])
        return (m.group(0).rstrip(".,"), i + m.end()) if m else (None, i)
    depth, end = 0, min(len(text), i + 20000)
    for m in re.finditer(r"[{}]", text[i:end]):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[i + 1 : i + m.start()], i + m.end()
    return text[i + 1 : end], end


_CONJ = frozenset({"and", "or", "und", "oder", "et", "ou", "和", "或", "与", "及"})
_REVISION = frozenset(
    {
        "but",
        "thus",
        "so",
        "therefore",
        "hence",
        "wait",
        "actually",
        "instead",
        "however",
        "rather",
        "not",
        "no",
        "wrong",
        "correction",
        "mais",
        "donc",
        "aber",
        "但",
        "所以",
    }
)


def _list_gap(gap):
    """Two boxes form one answer when only punctuation separates them, or a short phrase with one
    "and"/"or" and labels ("\\boxed{1} papers and \\boxed{2}", "for part (a) and", "and y_2 =").
    More conjunctions, or a word that concludes or revises ("... thus but \\boxed{2}", "wait, so"),
    make it prose: the later box restates or replaces the answer, and it alone counts."""
    words = re.sub(r"\\[a-zA-Z]+|[\s$\\{}()\[\],;.:+&~*=_^]", " ", gap).lower().split()
    return not words or (
        len(gap) <= 60 and sum(w in _CONJ for w in words) == 1 and not _REVISION.intersection(words)
    )


def _boxes(text):
    """(content of the last box joined with the boxes just before it, end of the last box)."""
    spans = []
    for m in list(_BOX.finditer(text, max(0, len(text) - 100_000)))[-30:]:  # the boxes near the end
        content, end = _box_content(text, m.end())
        if content is not None:
            spans.append((m.start(), end, content))
    spans = [
        s for s in spans if not any(o[0] < s[0] < o[1] for o in spans)
    ]  # drop boxes inside boxes
    if not spans:
        return None, -1
    group = [spans[-1]]
    for s in reversed(spans[:-1]):  # join while the gap reads as a list separator
        if not _list_gap(text[s[1] : group[0][0]]):
            break
        group.insert(0, s)
    return ", ".join(dict.fromkeys(c.strip() for _, _, c in group)), spans[-1][1]


def _is_prose(s):
    s = re.sub(r"\\(?:begin|end)\{\w*\*?\}", " ", s[:TAIL])
    return sum(w.lower() not in _NOT_PROSE for w in _WORD.findall(s)) >= 2


def _may_hold_label(low):
    return any(w in low for w in _LABEL_WORDS)


def _phrase(text, start=0):
    """The last answer phrase from start on: "final answer is", "answer is", "####", or an "Answer:"
    label (also "Réponse:", "答案：") that starts a line or a sentence, not "my answer: ..."."""
    end = len(text)
    for window in (TAIL, 20 * TAIL, len(text)):  # the end first, each stretch of text scanned once
        lo = max(start, len(text) - window)
        hi = min(len(text), end + 40)
        last = None
        for m in _PHRASE.finditer(text, lo, hi):
            if m.start() < end:
                last = m
        seg = text[lo:hi]  # the label regex is slow: run it only where a label may be
        if (":" in seg or "：" in seg) and _may_hold_label(seg.lower()):
            for m in _LABEL.finditer(text, lo, hi):
                if m.start() >= end or last is not None and m.start() < last.start():
                    continue
                # what precedes a label, markdown and spaces aside: nothing, or a sentence end
                before = text[max(0, m.start() - 9) : m.start()].rstrip(" \t*#>")
                if not before or before[-1] in "\n.!?。！？":
                    last = m
        if last is not None or lo <= start:
            return last
        end = lo
    return None


def _last(pattern, s, start=0):
    m = None
    for m in pattern.finditer(s, start):  # noqa: B007  (the last one is wanted)
        pass
    return m


def _last_number(s):
    m = _last(_NUMBER, s[-TAIL:])
    return m.group(0) if m else None


def _finish_phrase(snippet):
    """The answer in "... the final answer is $X$. I hope it is correct." / "... the volume is 120".
    When a sentence of prose follows, its first math segment, else its first number after its last
    "=": the phrase announces the answer, later numbers are context ("Réponse: il paiera 220 $ d'ici
    12 mois"), and a computation ends in its result ("we have 3 + 4 = 7 apples")."""
    s = re.split(
        r"\n\s*\n|\bI hope\b|(?<=\S)\.(?:\s|$)|[。！？]|\n(?=\S)", snippet.strip(), maxsplit=1
    )[0]
    s = re.split(r"\s+is\s+", s)[-1]
    plain = re.sub(r"\\?\$|\\[()\[\]]|\\?\"|\*\*", " ", s).strip(" .,:;")
    if not _is_prose(plain):
        return plain or None
    seg, num = _SEGMENT.search(s), _NUMBER.search(plain.rsplit("=", 1)[-1])
    return (
        next(g for g in seg.groups() if g is not None).strip()
        if seg
        else num.group(0)
        if num
        else plain
    )


def extract_answer(text):
    """The final answer of a completion (the order is in the module docstring), or None."""
    text = _clean(text)
    box, box_end = _boxes(text)
    offset = max(0, len(text) - 100_000)  # boxes and phrases are looked for near the end
    phrase = _phrase(text, offset)
    if phrase is not None and phrase.start() >= box_end:
        snippet = text[phrase.end() : phrase.end() + 500]
        if box is None or re.match(
            r"""[\s:*"]*(?:[-\d$\\({\[]|[A-E]\b)""", snippet
        ):  # not "answer is correct"
            answer = _finish_phrase(snippet)
            if not (phrase.re is _LABEL and (answer is None or _is_prose(answer))):
                return answer  # an "Answer:" label followed by prose alone announces nothing
    if box is not None:
        return box.strip()
    tail = text[-TAIL:]
    seg, num = _last(_SEGMENT, tail), _last(_NUMBER, tail)
    if seg is None and not _is_prose(text):
        return text.strip() or None
    if num is not None and (seg is None or num.start() >= seg.end()):
        return num.group(0)
    return next(g for g in seg.groups() if g is not None).strip() if seg else None


def _gold_text(answer):
    answer = _clean(answer)
    if _BOX.search(answer) or _phrase(answer, max(0, len(answer) - 100_000)) is not None:
        return extract_answer(answer)
    return answer.strip() or None


# ----------------------------------------------------------------------------- normalisation
_UNWRAP = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|textup|mbox|hbox|mathrm|mathbf|mathit|mathsf|rm|"
    r"operatorname|mathcal|mathscr|mathfrak|mathtt|mathnormal|bm)\s*\{([^{}]*)\}"
)
_TEXT_UNIT = re.compile(
    r"(?<=[\w})\]!.])\s*\\(?:text|textnormal|textrm|mbox)\s*\{\s*[a-zA-Z][a-zA-Z\s.]+\}"
    r"(?:\s*\^\s*\{?\d\}?)?\s*$"
)  # a unit in \text{} after the math: 2\pi \text{ cm}^2
_PERCENT = re.compile(r"\\?%|\bpercent(?:age)?\b|\bpct\b")
_DEG = r"\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![a-zA-Z]))"
_DEG_NUMBER = re.compile(r"(\d+(?:\.\d+)?)" + _DEG)
_RULES = tuple(
    (re.compile(p), r)
    for p, r in (
        (
            r",\\!\s*(?=\d{3})|(?<=\d),\\!\s*(?=\d)",
            "",
        ),  # digit groups of any size: 10,\!000, 56,\!01,\!78
        (r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d)", ""),  # thousands: 14{,}916
        (
            r"\\(?:left|right)\.|\\(?:left|right|[bB]igg?[lr]?|displaystyle|textstyle)(?![a-zA-Z])",
            "",
        ),  # sizing
        (r"\\[dtc]frac(?![a-zA-Z])", r"\\frac"),  # \dfrac, \tfrac, \cfrac
        (r"(?<!\\)\\(?:qquad|quad|thinspace|enspace|[,;:! ])|~", " "),  # spacing
        (
            r"\\(?:sin|cos|tan|sec|csc|cot)(?![a-zA-Z])(?:\s*\^\s*(?:\{[^{}]*\}|\d))?\s*(?:\((?:[^()]|\([^()]*\))*\)"
            r"|\{(?:[^{}]|\{[^{}]*\})*\}|\d+(?:\.\d+)?"
            + _DEG
            + ")",  # degrees in a trig argument are an angle:
            lambda m: _DEG_NUMBER.sub(r"(\1\\pi/180)", m[0]),
        ),  # \sin(90^\circ - x) = \sin(\pi/2 - x)
        (
            r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree(?![a-zA-Z])",
            "",
        ),  # other degrees: 90^\circ = 90
        (r"²", "^2"),
        (r"³", "^3"),  # unicode powers
        (r"\\[()\[\]]|\\?\$", " "),  # math delimiters, dollar signs
        (
            r"\\begin\{(?:[pbvBV]?|small)matrix\}|\\begin\{array\}\{[^{}]*\}",
            r" \\matbegin ",
        ),  # matrices
        (r"\\end\{(?:[pbvBV]?|small)matrix\}|\\end\{array\}", r" \\matend "),
        (r"\\mathbb\s*\{?R\}?", r"\\reals"),  # the real line
        (
            r"\\(?:overline|vec|hat|bar|widehat|tilde|boldsymbol|overrightarrow)(?![a-zA-Z])",
            "",
        ),  # accents
        (
            r"(?<![\d.^_])(\d+)\s*\\frac\s*(?:\{(\d+)\}|(\d))\s*(?:\{(\d+)\}|(\d))",
            lambda m: f"({m[1]}+{m[2] or m[3]}/{m[4] or m[5]})",
        ),  # mixed numbers: 1\frac{4}{5}, 1\frac12
        (
            r"(?<![\d.^_/,])(\d+) +(\d+)/(\d+)(?![\d./])",  # 3128 1/2 (a proper fraction)
            lambda m: f"({m[1]}+{m[2]}/{m[3]})" if int(m[2]) < int(m[3]) else m[0],
        ),
        (
            r"\s+(?:and|or)\s+|\s*,\s*(?:and|or)\s+|(?<=[\d)\]}])\s*(?:and|or)\s*(?=[-A-Za-z(\\])",
            ",",
        ),  # 1 and 2
        (
            r"(?<=[\d}])\s+[a-zA-Z]{2,}\.?(?:\s+[a-zA-Z]{2,}\.?)*(?:\s*\^\s*\{?\d\}?)?(?=\s*(?:$|[,;)\]]|\\\}))",
            "",
        ),  # units
        (
            r"(?<=\d)[a-zA-Z]{4,}\.?(?=\s*(?:$|[,;)\]]|\\\}))",
            "",
        ),  # a glued unit word (4+ letters are a word): 10weeks
        (
            r"^\s*\(\s*([A-Z]|[A-Za-z][A-Za-z ]*[a-z])\s*\)\s*$",
            r"\1",
        ),  # multiple choice (C) -> C; (east) -> east
        (
            r"(?<![\\a-zA-Z])(sqrt|sin|cos|tan|log|ln|exp|pi)(?![a-zA-Z])",
            r"\\\1",
        ),  # plain sqrt(2), pi
    )
)


def _prep(s):
    """(normalised answer string, whether it carried a percent sign)."""
    if len(s) > 2 * MAX_ANSWER:  # too long to be an answer: compared as a string only
        return " ".join(s.split()), False
    s = re.sub(r"\s+", " ", _clean(s))
    s = _TEXT_UNIT.sub("", s)
    for _ in range(3):  # \text{...} and friends: keep the content
        s = _UNWRAP.sub(r" \1 ", s)
    pct = bool(_PERCENT.search(s))
    s = _PERCENT.sub(" ", s)
    for pattern, repl in _RULES:
        s = pattern.sub(repl, s)
    s = s.rstrip(" ,;:.\\").lstrip(
        " ,;:"
    )  # surrounding punctuation, a stray trailing backslash (185\)
    return (s[1:] if s.startswith(".") and not s[1:2].isdigit() else s).strip(), pct


def _norm(s):
    t = "".join(_prep(s)[0].split())
    return t.lower() if re.fullmatch(r"[A-Za-z,]+", t) else t


# ----------------------------------------------------------------------------- parser
_TOKEN = re.compile(
    r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|(\\[a-zA-Z]+|\\[{}]|\\\\)|(<=|>=|!=|=<|=>|==|[a-zA-Z]|"
    r"[-+*/^_()\[\]{},;:=<>!|&])|(\S))"
)
_UNICODE = {
    "≤": "<=",
    "≥": ">=",
    "≠": "!=",
    "±": "\\pm",
    "∓": "\\mp",
    "×": "*",
    "÷": "/",
    "·": "*",
    "−": "-",
    "π": "\\pi",
    "∞": "\\infty",
    "√": "\\sqrt",
    "∈": "\\in",
    "∪": "\\cup",
    "≈": "\\approx",
}
_RELS = {
    "=": "=",
    "==": "=",
    "<": "<",
    ">": ">",
    "<=": "<=",
    "=<": "<=",
    ">=": ">=",
    "=>": ">=",
    "!=": "!=",
    "\\le": "<=",
    "\\leq": "<=",
    "\\leqslant": "<=",
    "\\ge": ">=",
    "\\geq": ">=",
    "\\geqslant": ">=",
    "\\lt": "<",
    "\\gt": ">",
    "\\ne": "!=",
    "\\neq": "!=",
    "\\approx": "~",
    "\\in": "in",
}
_FUNCS = {
    "sin": sp.sin,
    "cos": sp.cos,
    "tan": sp.tan,
    "sec": sp.sec,
    "csc": sp.csc,
    "cot": sp.cot,
    "arcsin": sp.asin,
    "arccos": sp.acos,
    "arctan": sp.atan,
    "sinh": sp.sinh,
    "cosh": sp.cosh,
    "tanh": sp.tanh,
    "ln": sp.log,
    "log": sp.log,
    "exp": sp.exp,
}
_CONST = {
    "\\pi": sp.pi,
    "\\infty": sp.oo,
    "\\emptyset": sp.S.EmptySet,
    "\\varnothing": sp.S.EmptySet,
    "\\reals": sp.S.Reals,
    "e": sp.E,
    "i": sp.I,
}
_MUL, _DIV = frozenset({"*", "\\cdot", "\\times", "\\ast"}), frozenset({"/", "\\div", ":"})
_NOT_ATOM = (
    _MUL
    | _DIV
    | {
        "\\pm",
        "\\mp",
        "\\cup",
        "\\cap",
        "\\setminus",
        "\\rfloor",
        "\\rceil",
        "\\matend",
        "\\}",
        "\\\\",
        "\\cdots",
        "\\ldots",
        "\\dots",
        "\\to",
        "\\rightarrow",
        "\\Rightarrow",
        "\\implies",
        "\\iff",
        "\\mid",
        "\\pmod",
        "\\mod",
        "\\bmod",
        "\\begin",
        "\\end",
        "\\hline",
        "\\boxed",
        "\\fbox",
        "\\over",
    }
)


def _tokens(s):
    out = []
    for num, cmd, ch, other in _TOKEN.findall(s):
        if other:
            if other not in _UNICODE:
                raise _Fail(other)
            cmd = _UNICODE[other]
        tok = ("num", num) if num else ("cmd", cmd) if cmd else ("ch", ch)
        out.append(("rel", _RELS[tok[1]]) if tok[1] in _RELS else tok)
    return out


def _is_expr(*xs):
    return all(isinstance(x, (sp.Expr, sp.MatrixBase)) and not isinstance(x, sp.Set) for x in xs)


def _need(ok, why):
    if not ok:
        raise _Fail(why)


def _pow(b, e):
    """b ** e, refusing what sympy would compute exactly and be too big: towers, huge roots, big
    matrix powers, and 10^{10^{20} + x} (sympy pulls the rational part out of an exponent)."""
    _need(_is_expr(b, e) and not isinstance(e, sp.MatrixBase) and not e.has(PM), "power")
    if isinstance(b, sp.MatrixBase):
        _need(e.is_Integer and abs(e) <= 10 and max(b.shape) <= 6, "matrix power")
        return b**e
    if b not in (0, 1, -1):
        if e.is_number:
            size = abs(e) if e.is_Number else abs(_num(e) or math.inf)
        else:
            size = max([abs(r) for r in e.atoms(sp.Rational)] + [0])
        _need(size <= 10_000, "exponent too large")
        n = b.as_independent(*b.free_symbols, as_Add=False)[
            0
        ]  # the numeric factor: 3^{1/4} in (3x)^{1/4}
        z = _num(n)
        if isinstance(z, sp.Rational):
            bits = max(int(z.p).bit_length(), int(z.q).bit_length())
            _need(
                e.is_Integer or bits <= 200, "root of a huge number"
            )  # sympy would try to factor it
        else:
            bits = abs(math.log2(abs(z))) if z else math.inf
        _need(bits * size <= MAX_POW_BITS, "power too large")
    # evaluated only in the simple cases: otherwise sympy's Pow() runs factor_terms(e), re/im of the
    # base and branch checks of (b^u)^v, which can take seconds on a hostile expression
    simple = e.is_Integer or e.is_Rational and (b.is_Number or b.is_Symbol)
    return b**e if simple else sp.Pow(b, e, evaluate=False)


def _apply(f, x):
    """f(x), left unevaluated unless x is a plain number or symbol: sympy's own simplification of
    Abs(an expression with complex parts) alone can take minutes; numeric comparison needs none of
    it."""
    return f(x) if x.is_Number or x.is_Symbol else f(x, evaluate=False)


def _as_set(v):
    if isinstance(v, sp.Set):
        return v
    if isinstance(v, Set) and _is_expr(*v.items):
        return sp.FiniteSet(*v.items)
    _need(isinstance(v, Tup) and len(v.items) == 2 and _is_expr(*v.items), "not a set")
    return sp.Interval.open(*v.items)


class _Parser:
    """list ; relation ; union ; sum ; product (implicit too) ; unary ; power ; postfix ; atom."""

    def __init__(self, text, rounding=False):
        self.toks, self.i, self.rounding = _tokens(text), 0, rounding

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self):
        _need(self.i < len(self.toks), "unexpected end")
        self.i += 1
        return self.toks[self.i - 1]

    def accept(self, *texts):
        return self.take()[1] if self.peek()[1] in texts else None

    def expect(self, text):
        _need(self.accept(text), f"expected {text}")

    def parse(self):
        groups = [self.items()]
        while self.accept(";"):
            groups.append(self.items())
        _need(self.peek()[0] is None, "trailing input")
        groups = [g for g in groups if g]
        if len(groups) > 1 and any(len(g) > 1 for g in groups):  # p=5,q=2; p=7,q=2 -> (5,2), (7,2)
            return Lst(tuple(Tup(tuple(_value_of(x) for x in g)) for g in groups))
        flat = [x for g in groups for x in g]
        _need(flat, "empty")
        return flat[0] if len(flat) == 1 else Lst(tuple(flat))

    def items(self, seps=(",",)):
        out = []
        while True:
            if self.peek()[1] not in seps + (";", ")", "]", "}", "\\}", None):
                out.append(self.relation())
            if not self.accept(*seps):
                return out

    def relation(self):
        starts, parts, ops = [self.i], [self.union()], []
        while self.peek()[0] == "rel":
            ops.append(self.take()[1])
            starts.append(self.i)
            parts.append(self.union())
        if not ops:
            return parts[0]
        starts.append(self.i + 1)

        def text(j):  # part j as written
            return "".join(t for _, t in self.toks[starts[j] : starts[j + 1] - 1])

        # an \approx tail restates the value: \frac{\sqrt3}{3} \approx 0.577 is \frac{\sqrt3}{3}
        if "~" in ops:
            k = ops.index("~")
            if k == 0 and _is_label(parts[0]):  # x \approx 11 names the value: x = 11
                ops[0] = "="
                k = ops.index("~") if "~" in ops else len(ops)
            elif self.rounding and _rounds_to(parts[k], parts[k + 1], text(k + 1)):
                parts[k] = parts[k + 1]  # the second reading: the stated rounding, when it is one
            parts, ops = parts[: k + 1], ops[:k]
        ops = tuple("=" if o == "in" else o for o in ops)
        if not ops:
            return parts[0]
        if set(ops) == {"="} and len(parts) > 2:  # a = b = c: c
            return parts[-1]
        return Rel(ops, tuple(parts), text(0))

    def union(self):
        v, ops, sets = self.expr(), [], []
        while self.peek()[1] in ("\\cup", "\\cap", "\\setminus"):
            ops.append(self.take()[1])
            sets.append(_as_set(self.expr()))
        if not ops:
            return v
        _need(len(ops) <= 15, "too many set operations")  # sympy's Union is quadratic or worse
        if set(ops) == {"\\cup"}:
            return sp.Union(_as_set(v), *sets)
        v = _as_set(v)
        for op, w in zip(ops, sets):
            v = {"\\cup": sp.Union, "\\cap": sp.Intersection, "\\setminus": sp.Complement}[op](v, w)
        return v

    def expr(self):
        terms = [self.term()]
        while (op := self.accept("+", "-", "\\pm", "\\mp")) is not None:
            w = self.term()
            _need(_is_expr(terms[0], w), "sum of non-expressions")
            terms.append(
                w if op == "+" else -w if op == "-" else PM * w if op == "\\pm" else -PM * w
            )
        if len(terms) > 1 and not any(isinstance(t, sp.MatrixBase) for t in terms):
            return sp.Add(*terms)  # one flatten: adding terms one by one is quadratic
        return functools.reduce(lambda a, b: a + b, terms)

    def term(self):
        factors = [self.unary()]
        while True:
            kind, text = self.peek()
            if text in ("\\bmod", "\\mod"):  # 17 \bmod 5: the remainder of the product so far
                self.take()
                b = self.unary()
                _need(_is_expr(b, *factors) and not any(x.is_Matrix for x in factors + [b]), "mod")
                a = sp.Mul(*factors)
                factors = [
                    sp.Mod(a, b)
                    if a.is_Integer and b.is_Integer and b != 0
                    else sp.Mod(a, b, evaluate=False)
                ]
                continue
            if text in _MUL or text in _DIV:
                self.take()
                w = self.unary()
            elif (
                kind in ("num", "cmd")
                and text not in _NOT_ATOM
                or kind == "ch"
                and (text.isalpha() or text in "({")
            ):
                w = self.power()  # implicit multiplication: 2x, 3\sqrt{2}, (x+1)(x-1)
            else:
                break
            _need(_is_expr(factors[-1], w), "product of non-expressions")
            if isinstance(w, sp.MatrixBase):
                _need(
                    text not in _DIV and max(w.shape) <= 8,
                    "matrix product too large, or division by one",
                )
            factors.append(w if text not in _DIV else 1 / w if w != 0 else sp.zoo)
        if len(factors) > 1 and not any(isinstance(f, sp.MatrixBase) for f in factors):
            return sp.Mul(*factors)  # one flatten, as in expr()
        return functools.reduce(lambda a, b: a * b, factors)

    def unary(self):
        op = self.accept("-", "+", "\\pm", "\\mp")
        if op is None:
            return self.power()
        v = self.unary()
        _need(_is_expr(v), "sign of a non-expression")
        return v if op == "+" else -v if op == "-" else PM * v if op == "\\pm" else -PM * v

    def power(self):
        base = self.postfix()
        return (
            _pow(base, self.group() if self.peek()[1] == "{" else self.unary())
            if self.accept("^")
            else base
        )

    def postfix(self):
        v = self.atom()
        while True:
            if self.accept("!"):
                _need(
                    _is_expr(v)
                    and not v.has(PM)
                    and not (v.is_number and (not v.is_Integer or v > MAX_FACTORIAL)),
                    "factorial",
                )
                v = sp.factorial(v)
            elif self.accept("_"):
                start = self.i
                sub = self.group() if self.peek()[1] == "{" else self.atom()
                raw = "".join(t for _, t in self.toks[start : self.i]).strip("{}")
                if isinstance(v, sp.Integer) and raw.isdigit():
                    continue  # a base: 204_5 reads as the numeral 204
                _need(isinstance(v, sp.Symbol), "subscript")
                v = (
                    sp.Symbol(f"{v.name}_{raw}") if raw.isalnum() else sp.Function(v.name)(sub)
                )  # a_1, F_{n-1}
            else:
                return v

    def group(self):
        self.expect("{")
        items = self.items()
        self.expect("}")
        _need(items, "empty group")
        return items[0] if len(items) == 1 else Set(tuple(items))

    def arg(self):
        """Argument of \\frac, \\sqrt, \\binom: {...} or one digit / letter / command (\\frac94)."""
        kind, text = self.peek()
        if kind == "num" and len(text) > 1 and "." not in text:
            self.toks[self.i] = ("num", text[1:])
            return sp.Integer(text[0])
        return self.group() if text == "{" else self.atom()

    def atom(self):
        kind, text = self.take()
        if kind == "num":
            _need(len(text) <= MAX_DIGITS, "literal too long")
            return sp.Rational(
                text
            )  # exact, also for decimals: sympy loops on (2.0 * 2^{1/4})^{1/2}
        if text in _CONST:
            return _CONST[text]
        if kind == "ch" and text.isalpha():
            return sp.Symbol(text)
        if text in ("(", "["):  # group, tuple or interval
            items, close = self.items((",", ";")), self.take()[1]
            _need(close in (")", "]"), "unclosed bracket")
            if len(items) == 1 and text + close in ("()", "[]"):
                return items[0]
            if (
                len(items) == 2
                and _is_expr(*items)
                and ("[" in text + close or any(x.has(sp.oo, -sp.oo) for x in items))
            ):
                return sp.Interval(items[0], items[1], text == "(", close == ")")
            return Tup(tuple(items))
        if text == "{":
            self.i -= 1
            return self.group()
        if text == "\\{":
            items = self.items((",", ";"))
            self.expect("\\}")
            return Set(tuple(items))
        if text in ("|", "\\lfloor", "\\lceil"):
            v = self.expr()
            self.expect({"|": "|", "\\lfloor": "\\rfloor", "\\lceil": "\\rceil"}[text])
            return _apply({"|": sp.Abs, "\\lfloor": sp.floor, "\\lceil": sp.ceiling}[text], v)
        if text == "\\frac":
            num, den = self.arg(), self.arg()
            _need(_is_expr(num, den) and not isinstance(den, sp.MatrixBase), "frac")
            return num / den if den != 0 else sp.zoo
        if text == "\\sqrt":
            n = sp.Integer(2)
            if self.accept("["):  # \sqrt[3]{x}
                n = self.expr()
                self.expect("]")
            x = self.arg()
            _need(_is_expr(x, n) and n != 0, "sqrt")
            return _pow(x, sp.S.One / n)
        if text == "\\binom":
            n, k = self.arg(), self.arg()
            small = all(x.is_Integer and abs(x) <= 10_000 for x in (n, k))
            _need(
                _is_expr(n, k)
                and not (n.has(PM) or k.has(PM))
                and (small or not (n.is_number or k.is_number)),
                "binom",
            )
            return sp.binomial(n, k)
        if text in ("\\sum", "\\prod"):
            return self.big_operator(text)
        if text == "\\lim":
            return self.limit()
        if text == "\\matbegin":
            return self.matrix()
        if kind == "cmd" and text[1:] in _FUNCS:
            return self.function(text[1:])
        _need(kind == "cmd" and text not in _NOT_ATOM and text[1].isalpha(), f"unexpected {text}")
        return sp.Symbol(text[1:])  # greek letters and unknown commands are plain symbols

    def function(self, name):
        base = self.arg() if self.accept("_") else None  # \log_2 8
        power = (
            (self.group() if self.peek()[1] == "{" else self.unary()) if self.accept("^") else None
        )
        x = self.atom() if self.peek()[1] == "(" else self.power()
        _need(_is_expr(x) and not isinstance(x, sp.MatrixBase), "function argument")
        if power == -1 and name in ("sin", "cos", "tan"):  # \sin^{-1} x
            return {"sin": sp.asin, "cos": sp.acos, "tan": sp.atan}[name](x)
        if base is not None and name == "log":
            v = (
                sp.log(x, base)
                if x.is_Number and base.is_Number
                else _apply(sp.log, x) / _apply(sp.log, base)
            )
        else:
            v = _apply(_FUNCS[name], x)
        return v if power is None else _pow(v, power)

    def big_operator(self, text):
        """\\sum_{k=a}^{b} body; evaluated only for a polynomial body and at most 100 terms."""
        self.expect("_")
        self.expect("{")
        var = self.atom()
        self.expect("=")
        lo = self.expr()
        self.expect("}")
        self.expect("^")
        hi, body = self.group() if self.peek()[1] == "{" else self.atom(), self.term()
        _need(isinstance(var, sp.Symbol) and _is_expr(lo, hi, body), "sum")
        v = (sp.Sum if text == "\\sum" else sp.Product)(body, (var, lo, hi))
        small = lo.is_Integer and hi.is_Integer and 0 <= hi - lo <= 100 and body.is_polynomial(var)
        return v.doit() if small else v

    def limit(self):
        """\\lim_{x \\to a} body: an unevaluated Limit, closed in x (its value is not computed)."""
        self.expect("_")
        self.expect("{")
        var = self.atom()
        _need(isinstance(var, sp.Symbol) and self.accept("\\to", "\\rightarrow"), "limit variable")
        start, depth = self.i, 0
        while depth or self.peek()[1] != "}":  # the point, up to the closing brace
            depth += {"{": 1, "}": -1}.get(self.take()[1], 0)
        point = re.sub(
            r"\^\s*\{?\s*[-+]\s*\}?\s*$", "", " ".join(t for _, t in self.toks[start : self.i])
        )
        self.expect("}")
        point, body = _Parser(point).parse(), self.term()
        _need(_is_expr(point, body) and not (point.is_Matrix or body.is_Matrix), "limit")
        return sp.Limit(body, var, point)

    def matrix(self):
        rows, row = [], []
        while True:
            if self.accept("\\hline"):
                continue
            row.append(self.expr())
            sep = self.take()[1]
            if sep == "&":
                continue
            rows, row = rows + [row], []
            if sep == "\\\\" and self.peek()[1] == "\\matend":
                sep = self.take()[1]
            if sep == "\\matend":
                break
            _need(sep == "\\\\", "matrix")
        _need(
            len({len(r) for r in rows}) == 1 and _is_expr(*(c for r in rows for c in r)),
            "ragged matrix",
        )
        return sp.ImmutableMatrix(rows)


def _is_label(x):
    """Left sides that only name the answer: y, f(x), a_1, AB, (p, q), |AB|, A:B, \\frac{NO}{BO}."""
    if isinstance(x, Tup):
        return all(_is_label(i) for i in x.items)
    return (
        isinstance(x, sp.Expr)
        and bool(x.free_symbols)
        and not x.atoms(sp.Add)
        and x.as_coeff_Mul()[0] == 1
        and all(n in (1, -1) for n in x.atoms(sp.Number))
    )


def _same_name(g, p, cx):
    """The left sides of two equations name the same thing: they are equal; or they are one function
    letter applied to a variable each (W(x) and W(n): the argument is a dummy); or one is y and the
    other f(x) with a right side in x (y = 2x + 3 is the function f(x) = 2x + 3). Otherwise the left
    side is part of the answer: f(x) = 1/2 is not g(x) = 1/2, \\cos x = 1/2 not \\sin x = 1/2."""
    if _eq(g.parts[0], p.parts[0], cx):
        return True
    calls = [re.fullmatch(r"([A-Za-z])\(([A-Za-z])\)", r.head) for r in (g, p)]
    if all(calls):
        return calls[0].group(1) == calls[1].group(1)
    for call, r, other in ((calls[0], g, p), (calls[1], p, g)):
        if call and other.head == "y" and call.group(2) != "y":
            return sp.Symbol(call.group(2)) in getattr(r.parts[1], "free_symbols", ())
    return False


def _rounds_to(exact, approx, written):
    """approx (written with d >= 1 decimals) is exact rounded to d decimals:
    \\frac{\\sqrt3}{3} \\approx 0.577."""
    m = re.fullmatch(r"-?\d*\.(\d+)", written)
    if not (m and _closed(exact) and isinstance(approx, sp.Rational)):
        return False
    x = _num(exact)
    return x is not None and abs(complex(x) - float(approx)) <= 0.5 * 10 ** -len(m[1]) * (1 + 1e-9)


def _closed(x):
    return isinstance(x, sp.Expr) and not x.is_Matrix and not x.free_symbols


def _value_of(x):
    """x = 5 -> 5 when the left side only names the answer; 17 \\bmod 5 = 2 -> 2 (both closed)."""
    if (
        isinstance(x, Rel)
        and x.ops == ("=",)
        and (_is_label(x.parts[0]) or all(map(_closed, x.parts)))
    ):
        return x.parts[1]
    return x


def _solutions(items):
    """p = 5, q = 2, p = 7, q = 2 -> (5, 2), (7, 2): assignments that cycle through the same names
    are one solution tuple per cycle; None when the list is anything else."""
    if not all(isinstance(x, Rel) and x.ops == ("=",) and _is_label(x.parts[0]) for x in items):
        return None
    names = [x.parts[0] for x in items]
    k = names.index(names[0], 1) if names[0] in names[1:] else 0
    if (
        k < 2
        or len(names) % k
        or len(set(names[:k])) < k
        or any(n != names[i % k] for i, n in enumerate(names))
    ):
        return None
    return Lst(
        tuple(Tup(tuple(x.parts[1] for x in items[i : i + k])) for i in range(0, len(items), k))
    )


def _expand_pm(v):
    """a \\pm b -> {a + b, a - b}; inside a set or list both values become items."""
    if isinstance(v, sp.Expr) and v.has(PM):
        return Set((v.subs(PM, 1), v.subs(PM, -1)))
    if isinstance(v, Rel):
        return v._replace(parts=tuple(_expand_pm(p) for p in v.parts))
    if not isinstance(v, (Set, Lst, Tup)):
        return v
    items = []
    for it in v.items:
        e = _expand_pm(it)
        if not isinstance(v, Tup) and isinstance(e, Set) and isinstance(it, sp.Expr):
            items.extend(e.items)
        elif (
            not isinstance(v, Tup)
            and isinstance(e, Rel)
            and e.ops == ("=",)
            and isinstance(e.parts[1], Set)
            and isinstance(it.parts[1], sp.Expr)
        ):  # x = 1 \pm 2 -> x = 3, x = -1
            items.extend(e._replace(parts=(e.parts[0], x)) for x in e.parts[1].items)
        else:
            items.append(e)
    return type(v)(tuple(items))


def _leaves(v):
    for x in v.items if isinstance(v, (Set, Lst, Tup)) else v.parts if isinstance(v, Rel) else ():
        yield from _leaves(x)
    if isinstance(v, sp.Basic):
        yield v


def _max_depth(s):
    depth = top = 0
    for ch in re.sub(r"[^()\[\]{}]", "", s):
        depth += 1 if ch in "([{" else -1
        top = max(top, depth)
    return top


def _values(s, plain=False):
    """Every reading of an answer string as a tuple (a percentage gives two); () if unparsable."""
    t, pct = _prep(s) if len(s) <= 2 * MAX_ANSWER else ("", False)
    if not t or len(t) > MAX_ANSWER or _max_depth(t) > MAX_DEPTH:
        return ()
    if re.search(r"(?<![\\a-zA-Z])[a-zA-Z]{4,}", re.sub(r"_\{[^{}]*\}", "", t)) or (
        re.fullmatch(r"[A-Za-z][A-Za-z\s'.-]*", t) and re.search(r"[A-Za-z]{3}", t)
    ):
        return ()  # words: compared as text only
    texts, out = [t], []
    clock = re.fullmatch(r"([01]?\d|2[0-4]) ?: ?([0-5]\d)(?: ?: ?([0-5]\d))?", t)
    if clock:  # a time of day; h:mm is also read below as the ratio h/mm
        out.append(Clock(int(clock[1]) * 3600 + int(clock[2]) * 60 + int(clock[3] or 0)))
    if re.fullmatch(
        r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|-?\d{1,3}(?: \d{3})+", t
    ):  # 7,425,000 and 1 000
        texts = [re.sub(r"[, ]", "", t)]
    elif (
        re.fullmatch(r"-?\d+,\d+", t) and plain
    ):  # 1000,99 outside LaTeX: a decimal comma, or a list
        texts = [t.replace(",", "."), t]
    # a second reading of A \approx 0.577: the stated rounding (_Parser's rounding flag)
    rounding = (False, True) if re.search(r"\\approx(?![a-zA-Z])|≈", t) else (False,)
    for text, r in product(texts, rounding):
        try:
            v = _expand_pm(_Parser(text, r).parse())
        except Exception:  # _Fail, sympy refusing (TypeError, ValueError, ...), RecursionError
            continue
        if any(x.has(sp.zoo, sp.nan) for x in _leaves(v)):  # 1/0, 12:00
            continue
        # p = 5, q = 2, p = 7, q = 2 is also the solutions (5, 2), (7, 2)
        solutions = _solutions(v.items) if isinstance(v, Lst) else None
        for w in [solutions, v] if solutions else [v]:
            if w not in out:
                out += [w, w / 100] if pct and isinstance(w, sp.Expr) else [w]
    return tuple(out)


@functools.lru_cache(maxsize=8192)
def _parsing(s, plain):
    """A Future of _values(s, plain), computed in a daemon thread. The structural bounds above are
    the real defence against runaway sympy work; this is the backstop that lets verify() return at
    its deadline anyway. A thread that runs away is abandoned (only process exit stops it), and the
    cache keeps the same text from starting a second one."""
    future = Future()

    def run():
        try:
            future.set_result(_values(s, plain))
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting caller)
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name="verify-parse").start()
    return future


def _parsed(s, plain, deadline):
    try:
        return _parsing(s, plain).result(timeout=max(0.0, deadline - time.monotonic()))
    except Exception:  # the deadline passed, or parsing failed
        return ()


# ----------------------------------------------------------------------------- comparison
_CMATH = {
    "sin": cmath.sin,
    "cos": cmath.cos,
    "tan": cmath.tan,
    "asin": cmath.asin,
    "acos": cmath.acos,
    "atan": cmath.atan,
    "sinh": cmath.sinh,
    "cosh": cmath.cosh,
    "tanh": cmath.tanh,
    "exp": cmath.exp,
    "log": cmath.log,
    "sec": lambda z: 1 / cmath.cos(z),
    "csc": lambda z: 1 / cmath.sin(z),
    "cot": lambda z: 1 / cmath.tan(z),
    "Abs": abs,
}
_REAL = {"floor": math.floor, "ceiling": math.ceil, "factorial": lambda v: math.gamma(v + 1)}


def _cval(x, env):
    """x as a Python complex, env giving the symbols' values. Float arithmetic cannot run away the
    way sympy's evalf can (sin(10^{10^4}), Gamma of huge arguments); overflow just raises."""
    if x.is_Rational:
        return complex(int(x.p) / int(x.q))
    if x.is_Symbol:
        return env[x]
    if x in (sp.pi, sp.E, sp.I):
        return {sp.pi: complex(math.pi), sp.E: complex(math.e), sp.I: 1j}[x]
    args = [_cval(a, env) for a in x.args]
    name = type(x).__name__
    if x.is_Add or x.is_Mul:
        return functools.reduce((lambda a, b: a + b) if x.is_Add else (lambda a, b: a * b), args)
    if x.is_Pow:
        return args[0] ** args[1]
    if name in _CMATH:
        return complex(_CMATH[name](*args))
    if name in _REAL and abs(args[0].imag) < 1e-12:
        return complex(_REAL[name](args[0].real))
    if name == "binomial" and all(abs(a.imag) < 1e-12 for a in args):
        n, k = (a.real for a in args)
        return complex(math.gamma(n + 1) / (math.gamma(k + 1) * math.gamma(n - k + 1)))
    raise _Fail(f"no numeric value for {name}")


def _num(x, env=None):
    """x as an exact Rational, else a finite Python complex (free symbols valued by env) or None."""
    if isinstance(x, sp.Rational):
        return x
    try:
        z = _cval(x, env or {})
    except (
        _Fail,
        ArithmeticError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
    ):
        return None
    return z if cmath.isfinite(z) else None


def _close(a, b, inexact):
    """Equal: exactly for rationals; else within 1e-6 * min(1, |a|) when a decimal is involved, or
    1e-12 * max(1, |a|)."""
    if isinstance(a, sp.Rational) and isinstance(b, sp.Rational) and not inexact:
        return a == b
    try:
        d, m = abs(complex(a) - complex(b)), max(abs(complex(a)), abs(complex(b)))
    except OverflowError:
        return False
    return d <= (1e-6 * min(1, m) if inexact else 1e-12 * max(1, m))


@functools.lru_cache(maxsize=16384)
def _fingerprint(x):
    """x at three sample points: each free symbol gets a positive rational fixed by its name.
    None: too big."""
    syms = sorted(x.free_symbols, key=str)
    if len(syms) > 10 or sp.count_ops(x) > 400:
        return None
    if not syms:
        return (_num(x),) * 3
    points = [
        {s: sp.Rational(530 + zlib.crc32(s.name.encode()) % 997 * 2 + 377 * k, 1000) for s in syms}
        for k in range(3)
    ]
    if (
        not x.atoms(sp.Function, sp.NumberSymbol)
        and not x.has(sp.I)
        and all(p.exp.is_Integer and abs(p.exp) <= 1000 for p in x.atoms(sp.Pow))
    ):  # a rational function: exact values, x^{100} + 1 != x^{100}
        return tuple(_num(x.subs(pt)) for pt in points)
    return tuple(_num(x, {s: complex(v) for s, v in pt.items()}) for pt in points)


def _eq_expr(a, b, inexact):
    if a == b:
        return True
    if (
        (a.is_Rational and b.is_Rational and not inexact)
        or a.has(sp.oo, -sp.oo, sp.zoo)
        or b.has(sp.oo, -sp.oo, sp.zoo)
    ):
        return False
    fa, fb = _fingerprint(a), _fingerprint(b)
    if fa is None or fb is None:
        return False
    pairs = [(u, v) for u, v in zip(fa, fb) if u is not None or v is not None]
    return len(pairs) >= 2 and all(
        u is not None and v is not None and _close(u, v, inexact) for u, v in pairs
    )


def _diff(fa, fb):
    """Pointwise fa - fb of two fingerprints (no new sympy expression is built while comparing)."""
    return tuple(
        None
        if u is None or v is None
        else u - v
        if isinstance(u, sp.Rational) and isinstance(v, sp.Rational)
        else complex(u) - complex(v)
        for u, v in zip(fa, fb)
    )


def _same_equation(g, p, inexact):
    """lhs - rhs of both are proportional at the sample points: 2x + 4y - 3 = 0 is y = -x/2 + 3/4"""
    if not all(
        isinstance(x, sp.Expr) and not isinstance(x, sp.MatrixBase) for x in g.parts + p.parts
    ):
        return False
    fps = [_fingerprint(x) for x in g.parts + p.parts]
    if None in fps or not any(x.free_symbols for x in g.parts + p.parts):
        return False
    try:
        ratios = [
            u / v
            if isinstance(u, sp.Rational) and isinstance(v, sp.Rational)
            else complex(u) / complex(v)
            for u, v in zip(_diff(*fps[:2]), _diff(*fps[2:]))
            if u is not None and v is not None and abs(v) > 1e-12
        ]
    except OverflowError:
        return False
    return (
        len(ratios) >= 2 and ratios[0] != 0 and all(_close(r, ratios[0], inexact) for r in ratios)
    )


def _roots(poly, x):
    _need(
        not poly.free_symbols - {x}
        and sp.count_ops(poly) <= 40
        and all(p.exp.is_Integer and 0 < p.exp <= 2 for p in poly.atoms(sp.Pow) if p.has(x)),
        "not a quadratic in x",
    )
    p = sp.Poly(poly, x)
    _need(
        p.degree() <= 1 or p.degree() == 2 and (p.domain.is_QQ or p.domain.is_ZZ),
        "beyond quadratics",
    )
    return [r for r in sp.roots(p) if abs(complex(_num(r)).imag) < 1e-12] if p.degree() > 0 else []


def _solve(d, op, x):
    """{x real : d(x) op 0} by a sign chart: d is at most quadratic in x, possibly inside |...|."""
    absolutes = list(d.atoms(sp.Abs))
    _need(
        len(absolutes) <= 3 and not d.atoms(sp.Function) - d.atoms(sp.Abs),
        "not piecewise polynomial",
    )
    crit = [r for a in absolutes for r in _roots(a.args[0], x)]
    for signs in product((1, -1), repeat=len(absolutes)):
        crit += _roots(d.subs({a: s * a.args[0] for a, s in zip(absolutes, signs)}), x)
    pts = sorted(set(crit), key=lambda r: complex(_num(r)).real)
    test = {
        "<": lambda v: v < -1e-12,
        "<=": lambda v: v <= 1e-12,
        ">": lambda v: v > 1e-12,
        ">=": lambda v: v >= -1e-12,
        "!=": lambda v: abs(v) > 1e-12,
    }[op]
    holds = lambda t: test(complex(_num(d, {x: complex(_num(t))})).real)  # noqa: E731  (None: TypeError)
    parts = [sp.FiniteSet(p) for p in pts if holds(p)]
    for lo, hi in zip([-sp.oo] + pts, pts + [sp.oo]):
        mid = (
            (lo + hi) / 2
            if lo.is_finite and hi.is_finite
            else hi - 1
            if hi.is_finite
            else lo + 1
            if lo.is_finite
            else sp.S.Zero
        )
        if holds(mid):
            parts.append(sp.Interval.open(lo, hi))
    return sp.Union(*parts)


@functools.lru_cache(maxsize=1024)
def _rel_set(r):
    """The set of reals a relation describes (x >= 5, 1 <= |z| <= 2, 0 < f(x) < 1, x \\in S), or
    None."""
    if r.ops == ("=",):
        return (
            r.parts[1] if _is_label(r.parts[0]) and isinstance(r.parts[1], (sp.Set, Set)) else None
        )
    if (
        "=" in r.ops
        or len(r.parts) > 4
        or not _is_expr(*r.parts)
        or any(isinstance(x, sp.MatrixBase) for x in r.parts)
    ):
        return None
    free = [p for p in r.parts if p.free_symbols]
    syms = set().union(*(p.free_symbols for p in free))
    flip = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
    result = sp.S.Reals
    try:
        for a, op, b in zip(r.parts, r.ops, r.parts[1:]):
            _need(sp.count_ops(a) + sp.count_ops(b) <= 40, "too big to solve")
            if len(syms) == 1:  # -x > -1, 1 <= |z|, x^2 < 4
                part = _solve(a - b, op, next(iter(syms)))
            elif (
                len(free) == 1 and _is_label(free[0]) and not (a.free_symbols and b.free_symbols)
            ):  # 0 < f(x) < 1
                op, c = (op, b) if a.free_symbols else (flip.get(op, op), a)
                part = _solve(sp.Symbol("t") - c, op, sp.Symbol("t"))
            else:
                return None
            result = sp.Intersection(result, part)
    except Exception:  # complex or symbolic bounds, not a polynomial: no set of reals
        return None
    return result


def _bracketed(v):
    """The items of a bracketed list: (a, b, ...) or [a, b] (the parser reads it as an interval)."""
    if isinstance(v, Tup):
        return v.items
    if isinstance(v, sp.Interval) and not (v.left_open or v.right_open):
        return tuple(v.args[:2])
    return None


def _match(gs, ps, cx):
    """Same items up to order and repetition (relations stay apart by their left side: a = 0,
    b = 0)."""
    if len(gs) > 100 or len(ps) > 100:
        return False
    gs, ps = (
        [
            x
            for i, x in enumerate(xs)
            if not any(y == x if isinstance(x, Rel) else _eq(y, x, cx) for y in xs[:i])
        ]
        for xs in (gs, ps)
    )
    left = list(ps)
    for g in gs:
        hit = next((p for p in left if _eq(g, p, cx)), None)
        if hit is None:
            return False
        left.remove(hit)
    return not left


def _eq(g, p, cx):
    """Gold value g equals predicted value p; cx = (deadline, whether a decimal is involved)."""
    if time.monotonic() > cx[0]:
        raise TimeoutError("verify deadline")
    if isinstance(p, Rel) and not isinstance(g, Rel):
        if p.ops == ("=",):  # x = 5 or 1 + 4 = 5 against gold 5 (not 2x - 10 = 0)
            lhs = p.parts[0]
            return (_is_label(lhs) or isinstance(lhs, sp.Expr) and not lhs.free_symbols) and _eq(
                g, p.parts[1], cx
            )
        return (s := _rel_set(p)) is not None and _eq(g, s, cx)
    if isinstance(g, Clock) or isinstance(p, Clock):
        return g == p
    if isinstance(g, Rel) and not isinstance(p, Rel):
        s = _value_of(g) if g.ops == ("=",) else _rel_set(g)
        return s is not None and s is not g and _eq(s, p, cx)
    if isinstance(g, Rel):
        if g.ops == p.ops == ("=",):
            if _is_label(g.parts[0]) and _is_label(
                p.parts[0]
            ):  # both sides: sin x = 1/2 is not cos x = 1/2
                return _same_name(g, p, cx) and _eq(g.parts[1], p.parts[1], cx)
            return _same_equation(g, p, cx[1])
        sg, sp_ = _rel_set(g), _rel_set(p)
        if sg is not None and sp_ is not None:
            return _eq(sg, sp_, cx)
        return g.ops == p.ops and all(_eq(a, b, cx) for a, b in zip(g.parts, p.parts))
    ig, ip = (
        list(v.items)
        if isinstance(v, (Set, Lst))
        else list(v.args)
        if isinstance(v, sp.FiniteSet)
        else None
        for v in (g, p)
    )
    if ig is not None or ip is not None:
        for t, other, v in ((g, ip, p), (p, ig, g)):
            if (
                isinstance(t, Tup) and other is not None
            ):  # a list read in order; a set {1, 3} sorted
                if not isinstance(v, Lst):
                    if not all(isinstance(x, sp.Expr) and x.is_number and x.is_real for x in other):
                        return False
                    other = sorted(other, key=lambda x: complex(_num(x) or 0).real)
                return _eq(t, Tup(tuple(other)), cx)
        return _match(ig if ig is not None else [g], ip if ip is not None else [p], cx)
    if isinstance(g, Tup) or isinstance(p, Tup):
        t, o = (g, p) if isinstance(g, Tup) else (p, g)
        if isinstance(o, sp.Interval):  # (a, b) is also an open interval
            return (
                len(t.items) == 2 and o.left_open and o.right_open and _eq(Tup(o.args[:2]), t, cx)
            )
        if isinstance(
            o, sp.MatrixBase
        ):  # a vector, or a matrix as a list of rows: [[1, 2], [3, 4]]
            if 1 in o.shape:
                return _eq(Tup(tuple(o)), t, cx)
            rows = [_bracketed(r) for r in t.items]
            return (
                len(rows) == o.rows
                and all(r is not None and len(r) == o.cols for r in rows)
                and all(_eq(Tup(tuple(o.row(i))), Tup(r), cx) for i, r in enumerate(rows))
            )
        return (
            isinstance(o, Tup)
            and len(g.items) == len(p.items)
            and all(_eq(a, b, cx) for a, b in zip(g.items, p.items))
        )
    if isinstance(g, sp.Interval) and isinstance(p, sp.Interval):
        return (
            g.left_open == p.left_open
            and g.right_open == p.right_open
            and all(_eq(a, b, cx) for a, b in zip(g.args[:2], p.args[:2]))
        )
    if isinstance(g, sp.Union) and isinstance(p, sp.Union):
        return _match(list(g.args), list(p.args), cx)
    if isinstance(g, sp.MatrixBase) != isinstance(p, sp.MatrixBase):  # [0.5, 1] is also a list
        items = _bracketed(p if isinstance(g, sp.MatrixBase) else g)
        return items is not None and _eq(
            *((g, Tup(items)) if isinstance(g, sp.MatrixBase) else (Tup(items), p)), cx
        )
    if isinstance(g, sp.MatrixBase) or isinstance(p, sp.MatrixBase):
        return (
            type(g) is type(p) and g.shape == p.shape and all(_eq(a, b, cx) for a, b in zip(g, p))
        )
    if isinstance(g, sp.Set) or isinstance(p, sp.Set):
        return g == p
    return isinstance(g, sp.Expr) and isinstance(p, sp.Expr) and _eq_expr(g, p, cx[1])


def _verify(response, answer, deadline):
    if response is None or answer is None:
        return False
    gold, pred = _gold_text(answer), extract_answer(response)
    if gold is None or pred is None:
        return False
    if _norm(gold) == _norm(pred):
        return True
    gvals = _parsed(gold, not _LATEX.search(answer), deadline)
    pvals = _parsed(pred, not _LATEX.search(response), deadline)
    if not pvals and _WORD.search(
        pred[-TAIL:]
    ):  # words around the answer: fall back to its last number
        pvals = _parsed(_last_number(pred) or "", True, deadline)
    decimal = re.compile(
        r"\d\.\d|(?<!\d)\.\d"
    )  # a decimal on either side: compare with a tolerance
    cx = (deadline, bool(decimal.search(gold) or decimal.search(pred)))
    return any(_eq(g, p, cx) for g in gvals for p in pvals)


def verify(response, answer):
    """True when the final answer of `response` equals the gold `answer` mathematically."""
    try:
        return bool(_verify(response, answer, time.monotonic() + BUDGET_S))
    except Exception:  # TimeoutError, sympy errors, RecursionError, MemoryError: not verified
        return False


def reward(response, answer):
    """1.0 if verify(response, answer) else 0.0."""
    return 1.0 if verify(response, answer) else 0.0


def _main(argv):
    if len(argv) == 2 and argv[0] == "--jsonl":
        with open(argv[1], encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        got = [verify(r["response"], r["answer"]) for r in rows]
        print(
            f"rows: {len(rows)}  verified true: {sum(got)}/{len(rows)} "
            f"({sum(got) / max(1, len(rows)):.1%})"
        )
        labelled = [(g, bool(r["expected"])) for g, r in zip(got, rows) if "expected" in r]
        for name, sel in (
            (
                ("all", labelled),
                ("expected true", [x for x in labelled if x[1]]),
                ("expected false", [x for x in labelled if not x[1]]),
            )
            if labelled
            else ()
        ):
            agree = sum(g == e for g, e in sel)
            print(
                f"agreement with expected ({name}): {agree}/{len(sel)} = "
                f"{agree / max(1, len(sel)):.1%}"
            )
        return 0
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    ok = verify(argv[0], argv[1])
    print("true" if ok else "false")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
