"""Regenerate ``trainjob-trainer-v1alpha1.json`` (the vendored TrainJob schema) from the Kubeflow Trainer's
own generated API models.

Source: the PyPI package ``kubeflow-trainer-api`` (Apache-2.0), whose pydantic models the Kubeflow
authors generate with openapi-generator from the Trainer's OpenAPI spec, itself generated from the Go
types that the TrainJob CRD is built from. Run (nothing else needs it, so it is not a project dependency):

    uv run --no-project --with kubeflow-trainer-api==2.3.0 python infra/kustomize/schemas/trainjob_schema.py

What the conversion does, and nothing more:

* every model becomes a ``$defs`` entry (pydantic's ``model_json_schema``, field names by JSON alias);
  ``Optional[X]`` becomes ``X`` (the builder never sends a null); objects are closed
  (``additionalProperties: false``): the API server would silently prune an unknown field, so a field
  we set that the CRD does not know is a bug to catch, not to lose;
* oneOf wrapper models (``Quantity``: string or number) become ``anyOf`` of their member types; a
  Quantity string must follow the grammar in the model's docstring;
* enums that the models check in ``field_validator`` functions (``value not in set([...])``) become
  ``enum`` lists;
* the TrainJob's group/version/kind are constants, and ``metadata.name`` carries the CRD's two CEL rules
  (RFC 1035 label, at most 63 characters), which a JSON schema can state and the models cannot.

The CRD's other CEL rules (immutability, mutual exclusions) and its maxItems/maxLength limits are not
in the models and therefore not here.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from importlib import metadata
from pathlib import Path

OUT = Path(__file__).with_name("trainjob-trainer-v1alpha1.json")
#: The Kubernetes quantity grammar (the ``Quantity`` model's docstring), as the CRDs state it.
QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
ONE_OF_TYPES = {"str": {"type": "string"}, "float": {"type": "number"}, "int": {"type": "integer"}}


def _enums(model) -> dict[str, list[str]]:
    """JSON name -> allowed values, read from the model's generated enum validators."""
    out = {}
    for name, dec in model.__pydantic_decorators__.field_validators.items():
        src = inspect.getsource(dec.func)
        m = re.search(r"not in set\(\[(.*?)\]\)", src)
        if not m:
            continue
        values = [v.strip().strip("'\"") for v in m.group(1).split(",") if v.strip()]
        for field in dec.info.fields:
            alias = model.model_fields[field].alias or field
            out[alias] = values
    return out


def _strip(node):
    """Drop titles, descriptions, null defaults and the null branch of Optional fields."""
    if isinstance(node, list):
        return [_strip(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in ("title", "description")
            and not (k == "default" and v is None)}
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        if len(branches) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**branches[0], **rest}
        else:
            node["anyOf"] = branches
    return {k: ({name: _strip(s) for name, s in v.items()} if k == "properties" else _strip(v))
            for k, v in node.items()}


def build() -> dict:
    import kubeflow_trainer_api.models as models

    root = models.TrainerV1alpha1TrainJob
    schema = root.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = schema.pop("$defs")
    for name in list(defs):
        model = getattr(models, name)
        if "one_of_schemas" in model.model_fields:  # a oneOf wrapper, not an object
            branches = [dict(ONE_OF_TYPES[t]) for t in sorted(model.model_fields["one_of_schemas"].default)]
            if name.endswith("ResourceQuantity"):
                for b in branches:
                    if b["type"] == "string":
                        b["pattern"] = QUANTITY
            defs[name] = {"anyOf": branches}
            continue
        d = _strip(defs[name])
        if d.get("type") == "object":
            d["additionalProperties"] = False
        for prop, values in _enums(model).items():
            target = d["properties"][prop]
            (target["items"] if target.get("type") == "array" else target)["enum"] = values
        defs[name] = d
    top = _strip(schema)
    top["additionalProperties"] = False
    top["required"] = ["apiVersion", "kind", "metadata", "spec"]
    top["properties"]["apiVersion"] = {"const": "trainer.kubeflow.org/v1alpha1"}
    top["properties"]["kind"] = {"const": "TrainJob"}
    meta = "IoK8sApimachineryPkgApisMetaV1ObjectMeta"
    top["properties"]["metadata"] = {"allOf": [{"$ref": f"#/$defs/{meta}"}], "required": ["name"],
                                     "properties": {"name": {"type": "string", "maxLength": 63,
                                                             "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"}}}
    version = metadata.version("kubeflow-trainer-api")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (f"Generated by infra/kustomize/schemas/trainjob_schema.py from the pydantic models of "
                     f"kubeflow-trainer-api {version} (PyPI; https://github.com/kubeflow/trainer, Apache-2.0), "
                     "which are generated from the Trainer API that the TrainJob CRD is built from. "
                     "Do not edit by hand; see infra/kustomize/schemas/README.md."),
        "title": f"TrainJob (trainer.kubeflow.org/v1alpha1, kubeflow-trainer-api {version})",
        **top,
        "$defs": dict(sorted(defs.items())),
    }


def main() -> int:
    OUT.write_text(json.dumps(build(), indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
