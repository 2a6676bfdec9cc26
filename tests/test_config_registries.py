"""Every option a config field names by a ``Literal`` is exactly what fpr_core's registry for that
field holds: a new norm, mixer, recall, solver or gradient mode added to one and not the other
fails here, not on a worker."""
from __future__ import annotations

import typing

import pytest

from fpr_core.config import CAP_EXPONENTS, EXPERIMENT_SECTIONS, CapLaw, LossName
from fpr_core.gradients import GRAD_MODES
from fpr_core.losses import LOSSES
from fpr_core.model.mixers import MIXERS
from fpr_core.model.norms import NORMS
from fpr_core.model.positions import POSITIONS
from fpr_core.model.recall import RECALLS
from fpr_core.registry import Registry
from fpr_core.solver import RESIDUALS, SOLVERS

REGISTRIES = [RECALLS, MIXERS, NORMS, POSITIONS, SOLVERS, RESIDUALS, GRAD_MODES]


def literal_choices(dotted: str) -> set[str]:
    section, name = dotted.split(".")
    hint = typing.get_type_hints(EXPERIMENT_SECTIONS[section])[name]
    assert typing.get_origin(hint) is typing.Literal, f"{dotted} is typed {hint}, not a Literal"
    return set(typing.get_args(hint))


@pytest.mark.parametrize("registry", REGISTRIES, ids=[r.field for r in REGISTRIES])
def test_literal_matches_its_registry(registry: Registry):
    assert literal_choices(registry.field) == set(registry.names()), registry.field


def test_every_field_a_registry_serves_is_checked_here():
    """A Registry of fpr_core whose field is not listed above would drift unseen."""
    import sys

    found = {obj.field for name, module in list(sys.modules.items()) if name.startswith("fpr_core")
             for obj in vars(module).values() if isinstance(obj, Registry)}
    assert found
    assert found <= {r.field for r in REGISTRIES}


def test_other_name_tables_match_their_literals():
    assert set(typing.get_args(LossName)) == set(LOSSES)
    assert set(typing.get_args(CapLaw)) == set(CAP_EXPONENTS) | {"task"}  # 'task': the task's own law
