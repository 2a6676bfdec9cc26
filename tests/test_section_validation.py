"""Config values are type-checked once, by the pydantic adapter over each fpr_core dataclass
(sections.section_adapter), the same model `fpr-sweep schema` prints; messages name the section,
the field, the value and what was expected."""
from __future__ import annotations

import numpy as np
import pytest

from fpr_core.config import ConfigError, ModelConfig
from orchestrator.sweep.json_schema import section_schema
from orchestrator.sweep.sections import SECTIONS, build_section, resolved_sections, section_adapter


@pytest.mark.parametrize("section,data,needle", [
    ("train", {"steps": "many"}, "train.steps: got 'many', expected an integer"),
    ("train", {"steps": True}, "train.steps: got True, expected an integer"),
    ("eval", {"diagnostics": "yes"}, "eval.diagnostics: got 'yes', expected true/false"),
    ("model", {"recall": "nonee"}, "model.recall: got 'nonee', expected one of ['none', 'standard', 'internal']"),
    ("model", {"spectral": "high"}, "model.spectral: got 'high', expected a number or null"),
    ("eval", {"halting": [1]}, "eval.halting: got [1], expected a list of strings"),
    ("model", {"recal": "none"}, "model: unknown field(s) ['recal']; expected some of"),
    ("model", {"recal": "none", "dim": "x"}, "model.dim: got 'x'"),  # a bad value is named before an unknown key
])
def test_wrong_types_are_named(section, data, needle):
    with pytest.raises(ConfigError) as err:
        build_section(section, data)
    assert needle in str(err.value)


def test_json_forms_pass_and_values_keep_their_form():
    built = build_section("eval", {"halting": ["trained", "long"], "n_eval": np.int64(8)})
    assert built.halting == ("trained", "long") and built.n_eval == 8
    sections = resolved_sections({"model": {"spectral": 1, "mlp_ratio": "2e0"}})
    assert sections["model"]["spectral"] == 1 and isinstance(sections["model"]["spectral"], int)  # ids stay put
    assert sections["model"]["mlp_ratio"] == 2.0  # YAML 1.1's dot-less exponent read as a number


def test_ranges_and_combinations_stay_with_the_dataclasses():
    with pytest.raises(ConfigError, match="heads"):
        build_section("model", {"dim": 30, "heads": 4})


@pytest.mark.parametrize("section", list(SECTIONS))
def test_schema_is_the_checking_model(section):
    cls = SECTIONS[section]
    schema = section_schema(cls)
    assert schema == section_adapter(cls).json_schema() and schema["title"] == cls.__name__
    assert schema["additionalProperties"] is False
    assert all(p.get("description") for p in schema["properties"].values())
    assert section_adapter(ModelConfig) is section_adapter(ModelConfig)  # built once per class
