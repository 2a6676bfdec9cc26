"""The typed JSON schema of sweep specs (`fpr-sweep schema`), for editors and any JSON-schema tool.

The spec's shape comes from the pydantic models of spec.py; every fpr_core config section is typed
from its dataclass (fpr_core/config.py): each field with its type, its allowed values and its
docstring, unknown fields refused (``additionalProperties: false``), and nothing lax (a string is
never a number or a boolean). Dotted keys (``axes``, ``tasks[].overrides``, ``tasks[].axes``,
``search.space``) are typed the same way, and task names are an enum. So an editor with a YAML
language server flags ``model.recal``, ``model.recall: standrd``, ``name: mazess``, ``steps: many``
and an unknown top-level key before anything runs. Each section's schema is that of the pydantic
adapter ``fpr-sweep validate`` checks config values with (sections.section_adapter: pydantic over
the dataclass, its field docstrings as descriptions); fpr_core itself stays free of pydantic.
"""
from __future__ import annotations

import copy
from typing import Any

from fpr_core.split_names import ID_SPLIT, OOD_PREFIX
from orchestrator.sweep.metrics import FINAL_LOSS, FINAL_SPLIT_COLUMNS, SPLIT_METRIC_NAMES, scheduler_metrics
from orchestrator.sweep.sections import SECTIONS, SHORTHAND_SECTION, field_names, section_adapter
from orchestrator.sweep.spec import SLUG, SweepSpec


def section_schema(cls: type) -> dict[str, Any]:
    """JSON schema of one fpr_core config dataclass: that of the pydantic adapter every config value
    is validated with (``sections.section_adapter``), so the schema and the check cannot differ."""
    return section_adapter(cls).json_schema()


def _grad_shorthand(grad_schema: dict[str, Any]) -> dict[str, Any]:
    modes = "|".join(grad_schema["properties"]["mode"]["enum"])
    return {"type": "string", "pattern": f"^({modes})(:[1-9][0-9]*)?$",
            "description": "Shorthand MODE or MODE:K, e.g. 'truncated:4', 'bptt'."}


def _grad_value(defs: dict[str, Any]) -> dict[str, Any]:
    ref = SECTIONS[SHORTHAND_SECTION].__name__
    return {"anyOf": [_grad_shorthand(defs[ref]), {"$ref": f"#/$defs/{ref}"}]}


def _dotted_values(defs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``section.field`` -> the schema of one value of it (``grad`` alone: shorthand or mapping)."""
    out: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        if section == SHORTHAND_SECTION:
            out[section] = dict(_grad_value(defs), description="The whole grad section.")
        props = defs[cls.__name__]["properties"]
        for name in field_names(section):
            value = {k: v for k, v in props[name].items() if k not in ("default", "title")}
            out[f"{section}.{name}"] = value
    return out


def _typed_object(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "description": description}


def spec_json_schema() -> dict[str, Any]:
    """JSON schema of the sweep spec (what `fpr-sweep schema` prints)."""
    from fpr_core.tasks import TASK_NAMES

    schema = copy.deepcopy(SweepSpec.model_json_schema())
    defs = schema["$defs"]
    for cls in SECTIONS.values():
        defs[cls.__name__] = section_schema(cls)
    base = defs["BaseSections"]["properties"]
    for section, cls in SECTIONS.items():
        ref = _grad_value(defs) if section == SHORTHAND_SECTION else {"$ref": f"#/$defs/{cls.__name__}"}
        base[section] = dict(ref, description=base[section].get("description", ""))
    values = _dotted_values(defs)
    defs["DottedValues"] = _typed_object(values, "Config values by dotted field, e.g. {train.steps: 800}.")
    defs["DottedLists"] = _typed_object(
        {k: {"type": "array", "items": v, "minItems": 1, **({"description": v["description"]}
                                                              if "description" in v else {})}
         for k, v in values.items()},
        "Grid axes: dotted field -> non-empty list of values, e.g. {model.recall: [none, standard]}.")
    schema["properties"]["axes"] = dict(schema["properties"]["axes"], **{"$ref": "#/$defs/DottedLists"})
    schema["properties"]["axes"].pop("additionalProperties", None)
    schema["properties"]["axes"].pop("type", None)
    task = defs["TaskEntry"]["properties"]
    task["name"] = dict(task["name"], enum=list(TASK_NAMES))
    for key, ref in (("overrides", "DottedValues"), ("axes", "DottedLists")):
        task[key] = {"$ref": f"#/$defs/{ref}", "description": task[key].get("description", "")}
    defs["SearchSpec"]["properties"]["space"]["propertyNames"] = {"enum": sorted(values)}
    defs["SchedulerSpec"]["properties"]["metric"]["enum"] = scheduler_metrics()
    _cross_field_rules(schema)
    return schema


def _also(node: dict[str, Any], rule: str) -> None:
    node["description"] = f"{node.get('description', '').rstrip('.')}. {rule}".lstrip(". ")


def _cross_field_rules(schema: dict[str, Any]) -> None:
    """The rules between fields: as patterns where JSON schema can say them, else named in the
    descriptions (`fpr-sweep validate` checks them all, and reports every one it finds)."""
    defs, props = schema["$defs"], schema["properties"]
    props["name"]["pattern"] = f"^{SLUG.pattern}$"
    names = "|".join(SPLIT_METRIC_NAMES[c] for c in FINAL_SPLIT_COLUMNS)
    metric = defs["SearchSpec"]["properties"]["metric"]
    metric["pattern"] = f"^(({names})/({ID_SPLIT}|{OOD_PREFIX}[1-9][0-9]*)|{FINAL_LOSS})$"
    _also(metric, "The split must be one every task evaluates (id, or ood_<size> in every task's ood_sizes)")
    _also(defs["SearchSpec"]["properties"]["space"], "A field may be a grid axis or a search dimension, not both")
    _also(defs["TaskEntry"]["properties"]["axes"], "Keys must be axes of the sweep (top-level axes); this "
                                                   "task's values replace the sweep's")
    _also(defs["TaskEntry"]["properties"]["overrides"], "A field set here may not also be a grid axis or a search "
                                                        "dimension")
    _also(defs["ModelConfig"]["properties"]["dim"], "Must be divisible by model.heads (in base, axes, overrides "
                                                    "and every combination of them)")
