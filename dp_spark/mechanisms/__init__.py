"""Word-level metric-DP mechanisms, selected by name with ``build_mechanism``."""

from __future__ import annotations

import inspect
from typing import Any

from dp_spark.embeddings import Embeddings
from dp_spark.mechanisms.base import Mechanism
from dp_spark.mechanisms.mlap import MultivariateLaplace
from dp_spark.mechanisms.tgumbel import TruncatedGumbel

MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls for cls in (MultivariateLaplace, TruncatedGumbel)
}


def mechanism_parameters(name: str) -> tuple[str, ...]:
    """Keyword parameters the mechanism ``name`` accepts besides epsilon."""
    signature = inspect.signature(_mechanism_class(name).__init__)
    return tuple(
        p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def build_mechanism(name: str, embeddings: Embeddings, epsilon: float, **params: Any) -> Mechanism:
    """The mechanism ``name`` over ``embeddings`` at privacy ``epsilon`` per token.

    Raises ``ValueError`` naming the parameter for an unknown name, an unknown
    parameter or an invalid value."""
    cls = _mechanism_class(name)
    allowed = mechanism_parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for mechanism {name!r}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    return cls(embeddings, epsilon, **params)


def _mechanism_class(name: str) -> type[Mechanism]:
    try:
        return MECHANISMS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"mechanism must be one of {', '.join(sorted(MECHANISMS))}; got {name!r}"
        ) from None


__all__ = ["MECHANISMS", "Mechanism", "build_mechanism", "mechanism_parameters"]
