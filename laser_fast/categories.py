"""The seven LASER task categories and the paper's default mix."""
from __future__ import annotations

#: Category names exactly as the LASER reference spells them (also its `setfit_label` values).
CATEGORIES: tuple[str, ...] = (
    "Math",
    "Coding",
    "Generation",
    "Reasoning",
    "Brainstorming",
    "Factual QA",
    "Extraction",
)

#: What each category holds (the reference's definitions, in our words).
CATEGORY_DEFINITIONS: dict[str, str] = {
    "Math": "math questions and problems",
    "Coding": "programming tasks and questions about code",
    "Generation": "creative writing under constraints, including role-play",
    "Reasoning": "logical, deductive problems that are neither math nor code",
    "Brainstorming": "information-seeking or recommendation questions that need an explanation, and classification tasks",
    "Factual QA": "short factual questions without any context",
    "Extraction": "pulling information, answers or summaries out of a given passage",
}

#: The paper's final category proportions (sum to 1).
DEFAULT_PROPORTIONS: dict[str, float] = {
    "Coding": 0.25,
    "Math": 0.25,
    "Generation": 0.25,
    "Reasoning": 0.1,
    "Brainstorming": 0.1,
    "Extraction": 0.025,
    "Factual QA": 0.025,
}

_ALIASES = {c.lower().replace(" ", "").replace("_", ""): c for c in CATEGORIES}
_ALIASES.update({"factualqa": "Factual QA", "qa": "Factual QA", "code": "Coding", "mathematics": "Math"})


def canonical_category(name: str) -> str | None:
    """Map a spelling such as ``factual_qa`` or ``coding`` to the canonical name, or None."""
    if not isinstance(name, str):
        return None
    return _ALIASES.get(name.strip().lower().replace(" ", "").replace("_", "").replace("-", ""))
