"""Word-level metric-DP mechanisms, selected by name with ``build_mechanism``."""

from __future__ import annotations

import inspect
from typing import Any

from dp_spark.embeddings import Embeddings
from dp_spark.mechanisms.base import Mechanism
from dp_spark.mechanisms.custext import CusText
from dp_spark.mechanisms.diffractor import Diffractor
from dp_spark.mechanisms.kde import KernelDensity
from dp_spark.mechanisms.mahalanobis import Mahalanobis
from dp_spark.mechanisms.mlap import MultivariateLaplace
from dp_spark.mechanisms.santext import SanText
from dp_spark.mechanisms.tem import TruncatedExponential
from dp_spark.mechanisms.tgumbel import TruncatedGumbel
from dp_spark.mechanisms.vickrey import Vickrey

MECHANISMS: dict[str, type[Mechanism]] = {
    cls.name: cls
    for cls in (
        MultivariateLaplace, TruncatedGumbel, KernelDensity, Mahalanobis, Vickrey,
        TruncatedExponential, SanText, CusText, Diffractor,
    )
}


def mechanism_parameters(name: str) -> tuple[str, ...]:
    """Keyword parameters the mechanism ``name`` accepts besides epsilon."""
    signature = inspect.signature(mechanism_class(name).__init__)
    return tuple(
        p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def build_mechanism(name: str, embeddings: Embeddings, epsilon: float, **params: Any) -> Mechanism:
    """The mechanism ``name`` over ``embeddings`` at privacy ``epsilon`` per token.

    Raises ``ValueError`` naming the parameter for an unknown name, an unknown
    parameter or an invalid value."""
    cls = mechanism_class(name)
    allowed = mechanism_parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for mechanism {name!r}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    return cls(embeddings, epsilon, **params)


def mechanism_class(name: str) -> type[Mechanism]:
    try:
        return MECHANISMS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"mechanism must be one of {', '.join(sorted(MECHANISMS))}; got {name!r}"
        ) from None


__all__ = ["MECHANISMS", "Mechanism", "build_mechanism", "mechanism_class", "mechanism_parameters"]
