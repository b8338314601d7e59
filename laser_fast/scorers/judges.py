"""LLM judges of LASER step 2.

A judge renders its prompts and sends them to a backend (:mod:`laser_fast.scorers.judge_backends`,
``--judge-backend``): an in-process vLLM engine with guided JSON decoding, an in-process
transformers model whose answers are held to the judge's JSON schema
(:mod:`laser_fast.scorers.constrained`), or an OpenAI-compatible endpoint through
:class:`~laser_fast.scorers.judge_client.JudgeClient` (bounded concurrency, retries with backoff,
timeouts; the API key only from ``LASER_FAST_JUDGE_API_KEY`` / ``OPENAI_API_KEY``, never logged,
cached or fingerprinted). Every backend caches its answers (append-only JSONL shards), so a rerun
asks nothing twice.

* :class:`CodeQualityScorer` (``code_quality``, Coding records) and :class:`IFQualityScorer`
  (``if_quality``, Generation and Brainstorming records) follow the reference's
  ``analysis/analyzer/code_quality_scorer.py`` and ``if_quality_scorer.py`` (formulas documented on
  each class); the prompts are our own wording.
* :class:`PromptJudgeScorer`: any custom prompt template with a parser for its answer.

Multi-turn records are scored per exchange (user turn, assistant turn) and averaged over the
exchanges with a non-empty response, as the reference does.

Environment:
    LASER_FAST_JUDGE_URL: default base URL (else ``http://127.0.0.1:8000/v1``).
    LASER_FAST_JUDGE_API_KEY / OPENAI_API_KEY: bearer token sent to the endpoint, if set.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from laser_fast.errors import ConfigError
from laser_fast.scorers.judge_base import JudgeScorer
from laser_fast.scorers.judge_text import _clip, code_quality_formula, extract_json, if_quality_formula, strip_think

logger = logging.getLogger(__name__)




# ---- code quality ----------------------------------------------------------------------------

CODE_REVIEW_TEMPLATE = """You are reviewing the code in an assistant's answer to a user's request.

Steps:
1. Read the REQUEST and the ANSWER below and review the code in the ANSWER.
2. Judge only whether the code does what it should (functional correctness): answer "correct" or "incorrect".
3. Copy the code from the ANSWER as it is; write "no code" when the ANSWER contains no code.
4. If the code is correct write "no revision"; otherwise write an improved version of the code.
5. Reply with one JSON object with the keys "review" (a short explanation), "final_verdict"
   ("correct" or "incorrect"), "code_original" and "code_revision".

=== REQUEST ===
{instruction}

=== ANSWER ===
{response}
"""

_CODE_SCHEMA = {
    "type": "object",
    "properties": {"review": {"type": "string"}, "final_verdict": {"type": "string", "enum": ["correct", "incorrect"]},
                   "code_original": {"type": "string"}, "code_revision": {"type": "string"}},
    "required": ["review", "final_verdict", "code_original", "code_revision"],
}


def parse_code_review(answer: str | None) -> tuple[bool, str, str] | None:
    """(correct, code_original, code_revision) from a code-review answer, or None if unparsable."""
    d = extract_json(answer, dict)
    if not d:
        return None
    lower = {str(k).strip().lower(): v for k, v in d.items()}
    verdict = lower.get("final_verdict", lower.get("verdict"))
    orig = lower.get("code_original", lower.get("original_code"))
    rev = lower.get("code_revision", lower.get("revised_code", lower.get("revision")))
    if verdict is None or orig is None:
        return None
    if isinstance(verdict, bool):
        correct = verdict
    else:
        correct = str(verdict).strip().strip(".'\"").lower() == "correct"
    return correct, str(orig), "" if rev is None else str(rev)


class CodeQualityScorer(JudgeScorer):
    """``code_quality`` of Coding records: an LLM review plus an edit similarity (reference:
    ``analysis/analyzer/code_quality_scorer.py`` with ``template/code_revision_template.txt``).

    The judge returns JSON with a review, a verdict ("correct"/"incorrect"), the original code and a
    revision ("no revision" when correct); the score is :func:`code_quality_formula` (scale [0, 1]).
    An unparsable or failed answer scores 1.0 as in the reference (``fallback="missing"``: NaN);
    either way it is counted. Deviation: over-long inputs are cut to ``max_input_chars`` instead
    of scoring 0.0.

    Args:
        min_code_lines: see :func:`code_quality_formula` (reference: 4).
        repair: retry an unparsable answer once with a hint to answer with JSON only.
        **kwargs: see :class:`JudgeScorer`. Defaults: model ``Qwen/Qwen2.5-Coder-14B-Instruct``,
            ``max_tokens`` 2048, ``max_input_chars`` 8000 (the reference's 2048-token prompt budget).
    """

    name = "code_quality"
    outputs = ("code_quality",)
    categories = ("Coding",)
    default_model = "Qwen/Qwen2.5-Coder-14B-Instruct"
    default_max_tokens = 2048
    template_text = CODE_REVIEW_TEMPLATE
    fallback_value = 1.0

    def __init__(self, model: str | None = None, base_url: str | None = None, *, min_code_lines: int = 4,
                 repair: bool = True, **kwargs: Any):
        super().__init__(model, base_url, **kwargs)
        self.min_code_lines = int(min_code_lines)
        self.repair = bool(repair)

    def _fingerprint_extra(self) -> dict:
        return {"min_code_lines": self.min_code_lines, "repair": self.repair}

    def _prompt(self, inst: str, resp: str) -> str:
        inst = _clip(inst, self.max_input_chars // 2)
        resp = _clip(resp, max(200, self.max_input_chars - len(inst)))
        return CODE_REVIEW_TEMPLATE.replace("{instruction}", inst).replace("{response}", resp)

    def score_exchanges(self, instructions: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        prompts = [self._prompt(i, r) for i, r in zip(instructions, responses)]
        answers = self._chat(prompts, schema=_CODE_SCHEMA)
        parsed = [parse_code_review(a) for a in answers]
        if self.repair:
            redo = [j for j, p in enumerate(parsed) if p is None and answers[j] is not None]
            if redo:
                again = self._chat([prompts[j] + "\nAnswer with the JSON object only, nothing else." for j in redo],
                                   schema=_CODE_SCHEMA)
                for j, a in zip(redo, again):
                    parsed[j] = parse_code_review(a)
        scores = np.full(len(prompts), np.nan)
        for j, p in enumerate(parsed):
            if p is None:
                scores[j] = self._fallback("code review", answers[j])
                continue
            scores[j] = code_quality_formula(p[0], p[1], p[2], self.min_code_lines)
        return {"code_quality": scores}


# ---- instruction following -------------------------------------------------------------------

#: Constraint types the reference keeps (writing_style, writing_type and topic are dropped).
IF_CONSTRAINT_TYPES = ("letter_case", "placeholder_and_postscript", "repeat_prompt", "output_combination",
                       "choose_output", "output_format", "keyword_included", "keyword_avoided",
                       "keyword_frequency", "language", "length", "punctuation", "start_and_ending")

IF_CONSTRAINT_TEMPLATE = """Find the explicit constraints that the USER's request puts on the form of the answer.

Constraint types:
- letter_case: lower case only, all capitals, ...
- placeholder_and_postscript: placeholders such as [name], a P.S. at the end
- repeat_prompt: repeat the request before answering
- output_combination: several answers, separated in a given way
- choose_output: pick the answer from given options
- output_format: JSON, Markdown, bullet points, a title, highlighted sections, ...
- keyword_included: words that must appear (quote them)
- keyword_avoided: words that must not appear (quote them)
- keyword_frequency: how often a word, letter or symbol must appear
- language: which language(s) to answer in
- length: number of words, sentences or paragraphs
- punctuation: e.g. no commas
- start_and_ending: how the answer must begin or end (quote the phrase), or wrapping it in quotes
- writing_style, writing_type, topic: style, kind of text, subject

Reply with JSON only: {"constraints": [{"constraint": "<the words of the request that state it>", "type": "<one type from the list>"}, ...]}
Use an empty list when the request states no such constraint.

Example request: Write a short poem about the sea in exactly 4 lines, all in lower case, and end it with "Goodbye!".
Example reply: {"constraints": [{"constraint": "exactly 4 lines", "type": "length"}, {"constraint": "all in lower case", "type": "letter_case"}, {"constraint": "end it with \\"Goodbye!\\"", "type": "start_and_ending"}, {"constraint": "poem", "type": "writing_type"}]}

USER request:
{instruction}
"""

IF_CHECK_TEMPLATE = """Check the ASSISTANT's text below against each numbered question.
Reply with JSON only, mapping each question number to true or false, e.g. {"1": true, "2": false}.

Questions:
{questions}

ASSISTANT:
{response}
"""

IF_OVERALL_TEMPLATE = """Rate how well the ASSISTANT's answer serves what the USER asked for, respecting any
constraints in the request, on a scale from 1 (useless) to 10 (excellent).
Reply with JSON only: {"score": <integer from 1 to 10>}

USER: {instruction}
ASSISTANT:
{response}
"""

#: Every type the extraction prompt lists (the 13 kept ones and the 3 the reference drops).
IF_LISTED_TYPES = (*IF_CONSTRAINT_TYPES, "writing_style", "writing_type", "topic")

_IF_CONSTRAINT_SCHEMA = {
    "type": "object",
    "properties": {"constraints": {"type": "array", "maxItems": 8, "items": {
        "type": "object", "properties": {"constraint": {"type": "string"}, "type": {"type": "string", "enum": list(IF_LISTED_TYPES)}},
        "required": ["constraint", "type"]}}},
    "required": ["constraints"],
}
_IF_OVERALL_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}}, "required": ["score"]}


def check_schema(n: int) -> dict:
    """The answer schema of a constraint check with ``n`` questions: ``{"1": bool, ..., "n": bool}``."""
    keys = [str(k) for k in range(1, n + 1)]
    return {"type": "object", "properties": {k: {"type": "boolean"} for k in keys}, "required": keys}

_NEGATION = re.compile(r"\b(no|not|without|never|avoid|refrain)\b|n't\b", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]*)"|\'([^\']*)\'')


def parse_constraints(answer: str | None) -> list[tuple[str, str]] | None:
    """``[(type, expression), ...]`` from a constraint-extraction answer, or None if unparsable.

    Accepts ``{"constraints": [{"constraint": ..., "type": ...}]}``, a bare list of such objects,
    or the reference's shape ``{"answer": {expression: type}}`` / ``{expression: type}``.
    """
    d = extract_json(answer, (dict, list))
    if d is None:
        return None
    items: list[tuple[str, str]] = []
    if isinstance(d, dict):
        if "constraints" in d:
            d = d["constraints"]
        elif "answer" in d and isinstance(d["answer"], dict):
            d = d["answer"]
    if isinstance(d, dict):
        items = [(str(v), str(k)) for k, v in d.items() if isinstance(v, str)]
    elif isinstance(d, list):
        for it in d:
            if isinstance(it, dict):
                exp = it.get("constraint", it.get("expression", it.get("text")))
                typ = it.get("type", it.get("constraint_type"))
                if isinstance(exp, str) and isinstance(typ, str):
                    items.append((typ, exp))
    else:
        return None
    return [(t.strip().lower().replace(" ", "_"), e.strip()) for t, e in items if e.strip()]


def clean_constraints(found: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep the reference's 13 constraint types, drop expressions contained in another one, and
    normalise keyword / option / start-end constraints (quoted phrases, joined with ``"; "``)."""
    kept = [(t, e) for t, e in found if t in IF_CONSTRAINT_TYPES and e.lower() not in ("", "yes", "no")]
    exps = [e for _, e in kept]
    kept = [(t, e) for t, e in kept if not any(e in other and e != other for other in exps)]
    out: list[tuple[str, str]] = []
    options: list[str] = []
    for t, e in kept:
        if t in ("keyword_included", "keyword_avoided"):
            words = [a or b for a, b in _QUOTED.findall(e.replace("n't ", "nt ").replace("'s ", "s "))]
            words = [w for w in words if w]
            if words:
                out.append((t, "; ".join(words)))
        elif t == "choose_output":
            options.append(e)
        elif t == "start_and_ending":
            low = f" {e.lower()} "
            phrases = [a or b for a, b in _QUOTED.findall(e)]
            if phrases and (" end " in low or " finish " in low or " ending " in low):
                out.append((t, f"ending; {phrases[0]}"))
            elif phrases and (" start " in low or " begin " in low):
                out.append((t, f"start; {phrases[0]}"))
            else:
                out.append((t, e))
        else:
            out.append((t, e))
    if options:
        out.append(("choose_output", "; ".join(options)))
    return out


def check_constraint(kind: str, exp: str, instruction: str, response: str) -> bool | None:
    """Deterministic check of one constraint (the reference checks these by rule); None = ask the LLM."""
    low = exp.lower()
    if kind == "punctuation":
        return "," not in response if (_NEGATION.search(exp) and "comma" in low) else None
    if kind == "keyword_included":
        return all(k in response for k in exp.split("; "))
    if kind == "keyword_avoided":
        return not any(k in response for k in exp.split("; "))
    if kind == "choose_output":
        return sum(1 for k in exp.split("; ") if k in response) == 1
    if kind == "letter_case":
        if "times" in low or "twice" in low:
            return None
        if (_NEGATION.search(exp) and "capital" in low) or "lowercase" in low or "lower case" in low:
            return response.islower()
        if "capital" in low or "uppercase" in low or "upper case" in low:
            return response.isupper()
        return None
    if kind == "start_and_ending":
        if "wrap" in low and "quot" in low:
            s = response.strip()
            return len(s) >= 2 and s.startswith('"') and s.endswith('"')
        if exp.startswith("start; "):
            return response.lstrip().startswith(exp[len("start; "):])
        if exp.startswith("ending; "):
            return response.rstrip().endswith(exp[len("ending; "):])
        return None
    if kind == "repeat_prompt":
        sents = [s.strip() for s in re.split(r"[.?!]", instruction) if s.strip()]
        return any(s in response for s in sents)
    return None


def _question(k: int, kind: str, exp: str) -> str:
    if kind == "choose_output":
        return f'{k}. Does the text contain exactly one of these phrases: {exp}?'
    return f'{k}. Does the text follow the {kind.replace("_", " ")} constraint "{exp}"?'


def parse_checks(answer: str | None, n: int) -> dict[int, bool] | None:
    """``{question number: followed}`` from a check answer (numbers 1..n), or None if unparsable."""
    d = extract_json(answer, (dict, list))
    if d is None:
        return None
    if isinstance(d, dict) and isinstance(d.get("answer"), (dict, list)):
        d = d["answer"]
    if isinstance(d, list):
        d = {str(i + 1): v for i, v in enumerate(d)}
    out: dict[int, bool] = {}
    for k, v in d.items():
        m = re.search(r"\d+", str(k))
        if not m or not 1 <= int(m.group()) <= n:
            continue
        if isinstance(v, bool):
            out[int(m.group())] = v
        elif isinstance(v, str) and v.strip().lower() in ("true", "yes", "false", "no"):
            out[int(m.group())] = v.strip().lower() in ("true", "yes")
    return out


def parse_overall(answer: str | None) -> float | None:
    """The 1-10 rating of an overall-quality answer, or None."""
    d = extract_json(answer, dict)
    v = None
    if d is not None:
        v = d.get("score")
    if v is None and answer:
        t = strip_think(answer)
        m = (re.fullmatch(r"\W*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\W*", t)
             or re.search(r"\b(?:score|rating)\b\W{0,5}(\d+(?:\.\d+)?)", t, re.IGNORECASE))
        v = m.group(1) if m else None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if 0 <= f <= 10 else None


class IFQualityScorer(JudgeScorer):
    """``if_quality`` of Generation and Brainstorming records: instruction following (reference:
    ``analysis/analyzer/if_quality_scorer.py`` with ``template/if_quality_*_template.txt``).

    1. The judge lists the instruction's constraints (JSON); the reference's 13 types are kept
       (:func:`clean_constraints`).
    2. Keyword, option, letter-case, comma, start/end and repeat constraints are checked by rule
       (:func:`check_constraint`); the others go to the judge in one call per exchange listing all of
       them (true/false each).
    3. With ``k`` of ``n`` checked constraints followed: :func:`if_quality_formula` (``k/n * k`` for
       ``0 < k < 10``), scale [0, 9].
    4. No checked constraint (none found, or the check answer unparsable): the judge rates the
       answer 1-10 and the score is ``rating / 10`` (scale [0.1, 1]), the reference's convention.

    Unparsable or failed answers fall back as the reference does: step 1 to no constraints, step 2
    to no judged constraints, and the final rating to a score of 0.5 (``fallback="missing"``: NaN);
    all are counted in ``stats``. Deviation: length and keyword-frequency constraints are checked
    by the judge, not by rule.

    Args:
        check_max_tokens, overall_max_tokens: answer budgets of steps 2 and 4 (reference: 1024, 100);
            ``max_tokens`` is step 1's (reference: 1024).
        **kwargs: see :class:`JudgeScorer`. Defaults: model ``Qwen/Qwen3-14B`` (thinking disabled),
            ``max_input_chars`` 24000 (the reference's 8192-token context less the answer budget).
    """

    name = "if_quality"
    outputs = ("if_quality",)
    categories = ("Generation", "Brainstorming")
    default_model = "Qwen/Qwen3-14B"
    default_max_tokens = 1024
    template_text = IF_CONSTRAINT_TEMPLATE + IF_CHECK_TEMPLATE + IF_OVERALL_TEMPLATE
    fallback_value = 0.5

    def __init__(self, model: str | None = None, base_url: str | None = None, *, check_max_tokens: int | None = None,
                 overall_max_tokens: int = 100, max_input_chars: int = 24000, **kwargs: Any):
        super().__init__(model, base_url, max_input_chars=max_input_chars, **kwargs)
        self.check_max_tokens = int(check_max_tokens or self.max_tokens)
        self.overall_max_tokens = int(overall_max_tokens)

    def _fingerprint_extra(self) -> dict:
        return {"check_max_tokens": self.check_max_tokens, "overall_max_tokens": self.overall_max_tokens}

    def score_exchanges(self, instructions: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        m = len(instructions)
        lim = self.max_input_chars
        # step 1: constraints
        answers = self._chat([IF_CONSTRAINT_TEMPLATE.replace("{instruction}", _clip(i, lim))
                              for i in instructions], schema=_IF_CONSTRAINT_SCHEMA)
        constraints: list[list[tuple[str, str]]] = []
        for a in answers:
            p = parse_constraints(a)
            if p is None:
                self._unparsable("constraint list", a)
                p = []
            constraints.append(clean_constraints(p))
        # step 2: rule checks, then one judge call per exchange for the rest
        followed: list[list[bool]] = [[] for _ in range(m)]
        ask: list[tuple[int, list[tuple[str, str]]]] = []
        for j in range(m):
            rest = []
            for kind, exp in constraints[j]:
                r = check_constraint(kind, exp, instructions[j], responses[j])
                if r is None:
                    rest.append((kind, exp))
                else:
                    followed[j].append(bool(r))
            if rest:
                ask.append((j, rest))
        if ask:
            prompts = []
            for j, rest in ask:
                qs = "\n".join(_question(k + 1, kind, exp) for k, (kind, exp) in enumerate(rest))
                body = IF_CHECK_TEMPLATE
                prompts.append(body.replace("{questions}", qs).replace("{response}", _clip(responses[j], lim)))
            checks = self._chat(prompts, max_tokens=self.check_max_tokens, schema=[check_schema(len(rest)) for _, rest in ask])
            for (j, rest), a in zip(ask, checks):
                c = parse_checks(a, len(rest))
                if c is None:
                    self._unparsable("constraint check", a)
                    continue
                followed[j] += [c[k] for k in sorted(c)]
        scores = np.array([if_quality_formula(f) for f in followed], dtype=np.float64)
        # step 4: holistic rating where nothing was checked
        open_ = [j for j in range(m) if not followed[j]]
        if open_:
            prompts = [IF_OVERALL_TEMPLATE.replace("{instruction}", _clip(instructions[j], lim // 2))
                       .replace("{response}", _clip(responses[j], lim // 2)) for j in open_]
            rates = self._chat(prompts, max_tokens=self.overall_max_tokens, schema=_IF_OVERALL_SCHEMA)
            for j, a in zip(open_, rates):
                r = parse_overall(a)
                scores[j] = self._fallback("overall rating", a) if r is None else r / 10.0
        return {"if_quality": scores}


# ---- custom prompts ----------------------------------------------------------------------------


def parse_score(answer: str | None) -> float | None:
    """Default parser of :class:`PromptJudgeScorer`: ``{"score": x}`` in the answer, else a lone number."""
    d = extract_json(answer, dict)
    if d is not None:
        for k in ("score", "rating", "value"):
            if k in d:
                try:
                    return float(d[k])
                except (TypeError, ValueError):
                    return None
    if answer:
        m = re.search(r"-?\d+(?:\.\d+)?", strip_think(answer))
        if m:
            return float(m.group())
    return None


class PromptJudgeScorer(JudgeScorer):
    """A judge with any prompt: ``template`` with the placeholders ``{instruction}`` and
    ``{response}`` (replaced literally, so other braces such as JSON examples need no escaping).

    Args:
        name: scorer name (and the default output name).
        template: the prompt sent as the user message.
        parse: answer -> float, or dict ``{output: float}`` for several outputs, or None when the
            answer cannot be read (scored NaN, counted as unparsable). Default :func:`parse_score`.
        outputs: output column names (default ``(name,)``).
        categories: categories to score (None = all records).
        system: an optional system message.
        **kwargs: see :class:`JudgeScorer` (``model`` is required unless the server ignores it).
    """

    def __init__(self, name: str, template: str, parse: Callable[[str], Any] = parse_score, *,
                 outputs: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                 system: str | None = None, model: str | None = None, base_url: str | None = None,
                 max_tokens: int | None = 256, **kwargs: Any):
        if "{instruction}" not in template and "{response}" not in template:
            raise ConfigError(f"judge '{name}': the template has neither {{instruction}} nor {{response}}")
        self.name = name
        self.outputs = tuple(outputs or (name,))
        self.categories = tuple(categories) if categories is not None else None
        self.template = template
        self.template_text = template + (system or "") + getattr(parse, "__qualname__", "")
        self.parse = parse
        self.system = system
        super().__init__(model or "default", base_url, max_tokens=max_tokens, **kwargs)

    def score_exchanges(self, instructions: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        half = self.max_input_chars // 2
        convs = []
        for i, r in zip(instructions, responses):
            msgs = [{"role": "system", "content": self.system}] if self.system else []
            msgs.append({"role": "user", "content": self.template.replace("{instruction}", _clip(i, half))
                         .replace("{response}", _clip(r, half))})
            convs.append(msgs)
        answers = self.client.chat_many(convs)
        out = {o: np.full(len(convs), np.nan) for o in self.outputs}
        for j, a in enumerate(answers):
            v = None
            if a is not None:
                try:
                    v = self.parse(strip_think(a))
                except Exception as e:  # noqa: BLE001 - a user parser
                    logger.debug("%s: parser raised %s", self.name, e)
                    v = None
            if v is None:
                self._unparsable("answer", a)
                continue
            if isinstance(v, Mapping):
                for o in self.outputs:
                    x = v.get(o)
                    out[o][j] = float(x) if x is not None else np.nan
            else:
                out[self.outputs[0]][j] = float(v)
        return out
