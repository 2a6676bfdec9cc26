"""The typed JSON schema of sweep specs (`fpr-sweep schema`), for editors and any JSON-schema tool.

The spec's shape comes from the pydantic models of spec.py; every fpr_core config section is typed
from its dataclass (fpr_core/config.py): each field with its type, its allowed values and its
docstring, unknown fields refused (``additionalProperties: false``), and nothing lax (a string is
never a number or a boolean). Dotted keys (``axes``, ``tasks[].overrides``, ``tasks[].axes``,
``search.space``) are typed the same way, and task names are an enum. So an editor with a YAML
language server flags ``model.recal``, ``model.recall: standrd``, ``name: mazess``, ``steps: many``
and an unknown top-level key before anything runs. fpr_core itself stays free of pydantic: the
models are generated here, from the dataclasses' fields and field docstrings.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import textwrap
import typing
from typing import Any

from pydantic import ConfigDict, Field, create_model

from orchestrator.sweep.metrics import FINAL_LOSS, FINAL_SPLIT_COLUMNS, SPLIT_METRIC_NAMES, scheduler_metrics
from orchestrator.sweep.sections import SECTIONS, SHORTHAND_SECTION, field_names
from orchestrator.sweep.spec import SLUG, SweepSpec


def field_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each annotated field of a (data)class body, by field name."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a frozen app): fields stay undocumented
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for stmt, following in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def section_schema(cls: type) -> dict[str, Any]:
    """JSON schema of one fpr_core config dataclass: a strict pydantic model generated from it."""
    hints = typing.get_type_hints(cls)
    docs = field_docstrings(cls)
    fields = {f.name: (hints[f.name], Field(_default(f), description=docs.get(f.name)))
              for f in dataclasses.fields(cls)}
    model = create_model(cls.__name__, __config__=ConfigDict(extra="forbid", strict=True),
                         __doc__=inspect.cleandoc(cls.__doc__ or cls.__name__), **fields)
    return model.model_json_schema()


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
    metric["pattern"] = f"^(({names})/(id|ood_[1-9][0-9]*)|{FINAL_LOSS})$"
    _also(metric, "The split must be one every task evaluates (id, or ood_<size> in every task's ood_sizes)")
    _also(defs["SearchSpec"]["properties"]["space"], "A field may be a grid axis or a search dimension, not both")
    _also(defs["TaskEntry"]["properties"]["axes"], "Keys must be axes of the sweep (top-level axes); this "
                                                   "task's values replace the sweep's")
    _also(defs["TaskEntry"]["properties"]["overrides"], "A field set here may not also be a grid axis or a search "
                                                        "dimension")
    _also(defs["ModelConfig"]["properties"]["dim"], "Must be divisible by model.heads (in base, axes, overrides "
                                                    "and every combination of them)")
