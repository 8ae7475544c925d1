"""Metric names in PromQL expressions, and the metric names the operator exports.

promtool has no offline command that prints the parse tree of an expression,
so :func:`metric_names` lexes PromQL itself, after the grammar of
``promql/parser/lex.go`` in github.com/prometheus/prometheus (Prometheus 3.x):
string literals (``"..."``, ``'...'``, raw ```...```), ``#`` comments,
numbers (decimal, hexadecimal, ``Inf``/``NaN``), durations (``5m``,
``1h30m``), identifiers, and the brackets. A name is a *metric* name when it
is an identifier outside label-matcher braces and range/subquery brackets
that is not followed by ``(`` (a function call), not a keyword or an
aggregation operator, and not inside the label list of ``by``/``without``/
``on``/``ignoring``/``group_left``/``group_right``. Names given as
``{__name__="x"}`` or as a quoted UTF-8 name (``{"x.y", a="b"}``) count too.
:func:`vector_selectors` returns each selector with its label matchers.

:func:`exported_metric_names` lists what ``/metrics`` serves for the
families declared in :mod:`jaas.observability.metrics`, from the
prometheus_client registry.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

#: Aggregation operators (``promql/parser/lex.go`` ``ItemType`` aggregators).
AGGREGATORS = frozenset(
    {
        "sum",
        "avg",
        "count",
        "min",
        "max",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "count_values",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
#: Keywords and binary set operators (case-insensitive, like the aggregators).
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "atan2",
        "offset",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "start",
        "end",
        "step",
        "smoothed",
        "anchored",
    }
)
#: Keywords followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_DURATION = r"(?:\d+(?:ms|s|m|h|d|w|y))+"
_NUMBER = r"0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<duration>"""
    + _DURATION
    + r"""(?![\w.]))
  | (?P<number>(?:"""
    + _NUMBER
    + r"""))
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matchop>=~|!~|!=)
  | (?P<punct>==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


class PromQLSyntaxError(ValueError):
    """The expression holds a character PromQL does not allow, or unbalanced brackets."""


@dataclass(frozen=True)
class Token:
    """One lexical token: ``kind`` is a group name of the lexer, ``text`` the source text."""

    kind: str
    text: str
    pos: int


def tokens(expr: str) -> list[Token]:
    """Lex ``expr`` into tokens, dropping whitespace and comments.

    Raises:
        PromQLSyntaxError: a character starts no token (e.g. an unterminated string).
    """
    found: list[Token] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLSyntaxError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            found.append(Token(kind, match.group(), pos))
        pos = match.end()
    return found


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


def _closing(toks: list[Token], start: int, expr: str) -> int:
    """Index of the bracket closing ``toks[start]`` (``(``, ``{`` or ``[``)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = [pairs[toks[start].text]]
    for i in range(start + 1, len(toks)):
        text = toks[i].text
        if toks[i].kind != "punct":
            continue
        if text in pairs:
            stack.append(pairs[text])
        elif text in (")", "}", "]"):
            if text != stack.pop():
                raise PromQLSyntaxError(f"unbalanced {text!r} at {toks[i].pos} in {expr!r}")
            if not stack:
                return i
    raise PromQLSyntaxError(f"unclosed {toks[start].text!r} at {toks[start].pos} in {expr!r}")


@dataclass(frozen=True)
class VectorSelector:
    """One series selector: ``name{label op "value", ...}``.

    Attributes:
        name: the metric name (also when given as ``__name__="x"`` or a quoted
            UTF-8 name), or None when only a regex or no name selects it.
        matchers: ``(label, op, value)`` with op ``=``, ``!=``, ``=~`` or ``!~``
            and the value unquoted, in source order, ``__name__`` included.
    """

    name: str | None
    matchers: tuple[tuple[str, str, str], ...]


def _selector(name: str | None, inner: list[Token], expr: str) -> VectorSelector:
    """The selector of ``name`` with the tokens between its braces."""
    items: list[list[Token]] = [[]]
    for tok in inner:
        if tok.kind == "punct" and tok.text == ",":
            items.append([])
        else:
            items[-1].append(tok)
    matchers: list[tuple[str, str, str]] = []
    for item in items:
        if not item:
            continue
        if len(item) == 1 and item[0].kind == "string" and name is None:
            name = _unquote(item[0].text)
        elif (
            len(item) == 3
            and item[0].kind in ("ident", "string")
            and item[1].text in ("=", "!=", "=~", "!~")
            and item[2].kind == "string"
        ):
            label, op, value = _unquote_name(item[0]), item[1].text, _unquote(item[2].text)
            matchers.append((label, op, value))
            if label == "__name__" and op == "=" and name is None:
                name = value
        else:
            raise PromQLSyntaxError(
                f"not a label matcher at {item[0].pos} in {expr!r}: "
                + " ".join(t.text for t in item)
            )
    return VectorSelector(name, tuple(matchers))


def _unquote_name(tok: Token) -> str:
    return _unquote(tok.text) if tok.kind == "string" else tok.text


def vector_selectors(expr: str) -> list[VectorSelector]:
    """The series selectors of an expression, in source order.

    Args:
        expr: a PromQL expression, e.g.
            ``histogram_quantile(0.99, sum by (le) (rate(x_bucket{job="a"}[5m])))``.

    Returns:
        e.g. ``[VectorSelector("x_bucket", (("job", "=", "a"),))]``.

    Raises:
        PromQLSyntaxError: a character starts no token, brackets do not
            balance, or braces hold something other than label matchers.
    """
    toks = tokens(expr)
    found: list[VectorSelector] = []
    depth = 0  # of parentheses outside braces and brackets
    i = 0
    while i < len(toks):
        tok = toks[i]
        following = toks[i + 1] if i + 1 < len(toks) else None
        opens = following is not None and following.kind == "punct" and following.text == "("
        if tok.kind == "punct" and tok.text in ("{", "["):
            end = _closing(toks, i, expr)
            if tok.text == "{":
                found.append(_selector(None, toks[i + 1 : end], expr))
            i = end + 1
            continue
        if tok.kind == "punct" and tok.text == "(":
            depth += 1
        elif tok.kind == "punct" and tok.text == ")":
            depth -= 1
        if depth < 0 or (tok.kind == "punct" and tok.text in ("}", "]")):
            raise PromQLSyntaxError(f"unbalanced {tok.text!r} at {tok.pos} in {expr!r}")
        if tok.kind == "ident":
            lowered = tok.text.lower()
            if lowered in LABEL_LIST_KEYWORDS and opens:
                i = _closing(toks, i + 1, expr) + 1
                continue
            if not (lowered in KEYWORDS or lowered in AGGREGATORS or opens):
                if following is not None and following.kind == "punct" and following.text == "{":
                    end = _closing(toks, i + 1, expr)
                    found.append(_selector(tok.text, toks[i + 2 : end], expr))
                    i = end + 1
                    continue
                found.append(VectorSelector(tok.text, ()))
        i += 1
    if depth:
        raise PromQLSyntaxError(f"unclosed '(' in {expr!r}")
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (:func:`vector_selectors` with a name).

    Args:
        expr: a PromQL expression, e.g.
            ``histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))``.

    Returns:
        The selected metric names, e.g. ``{"x_bucket"}``.

    Raises:
        PromQLSyntaxError: as :func:`vector_selectors`.
    """
    return {s.name for s in vector_selectors(expr) if s.name is not None}


#: Sample-name suffixes of each metric type, as the text exposition format writes them
#: (https://prometheus.io/docs/instrumenting/exposition_formats/; prometheus_client
#: adds ``_created`` to counters, histograms and summaries).
SAMPLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_metric_names(
    module: str = "jaas.observability.metrics", prefix: str = "jaas_"
) -> set[str]:
    """Sample names of the metric families a module registers, as ``/metrics`` serves them.

    Imports ``module`` (which registers its families in prometheus_client's
    default registry) and lists every family of that registry whose name
    starts with ``prefix``, with the sample names of its type
    (:data:`SAMPLE_SUFFIXES`), whether or not a labelled family has a child
    yet. The prefix leaves out prometheus_client's process and platform
    collectors, which the operator's multiprocess ``/metrics`` does not serve.

    Returns:
        e.g. ``{"jaas_workqueue_depth", "jaas_shard_restarts_total",
        "jaas_shard_restarts_created", ...}``.
    """
    importlib.import_module(module)
    from prometheus_client.registry import REGISTRY

    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith(prefix):
            names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return names
