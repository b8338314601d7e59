"""Step 2 (model scorers): batched, cached, resumable scorers behind the :class:`~laser_fast.scorers.base.Scorer` seam.

Which scorers exist, what they output and which metrics they fill per profile is declared once,
in the registry :mod:`laser_fast.metrics` (which also builds them).

Modules:
    base        the Scorer interface
    tokens      token counts (``tokens``)
    models      difficulty, deita_quality / deita_complexity, process_reward, ifd
    judges      LLM judges over any OpenAI-compatible endpoint: code_quality, if_quality, custom prompts
    onepass     the lite profile's quality and difficulty heads over one MiniLM pass per record (``onepass``)
    lite        lite_quality, the SmolLM2 CPU quality scorer of the lite-llm profile, and ``score_quality``
    cache       per-(fingerprint, data_id) score cache: append-only Parquet shards
    stage       the orchestration used by ``laser-fast score`` and ``laser-fast select`` (and ``lite_difficulty``)
    preference  combining the scores into one preference per record
"""
