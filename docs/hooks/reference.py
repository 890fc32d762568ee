"""MkDocs hook (mkdocs.yml `hooks:`): writes the reference pages that come from code at build time.

- reference/cli.md: every `quiver` command's `--help`, from `quiver.cli.build_parser()`.
- reference/modeldeployment.md: every field of the ModelDeployment CRD's schema
  (helm/quiver/crds/modeldeployment.yaml), with its type, default, limits and description.

Generated, never committed, so neither can differ from what `quiver --help` prints or what the
API server admits.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterator

import yaml
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "helm/quiver/crds/modeldeployment.yaml"
# argparse wraps help at the terminal's width: fixed, so the page is the same on every machine.
HELP_COLUMNS = "100"


def cli_page() -> str:
    from quiver.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parser = build_parser()
        parts = [
            "# Command line: `quiver`\n",
            "Generated from `quiver.cli.build_parser()` when the site is built: the same text as "
            "`quiver --help` and `quiver COMMAND --help`.\n",
            f"```text\n{parser.format_help()}```\n",
        ]
        for action in parser._actions:  # argparse has no public accessor for its subcommands
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    parts.append(f"## quiver {name}\n\n```text\n{command.format_help()}```\n")
        return "\n".join(parts)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def _fields(schema: dict[str, Any], path: str, required: bool) -> Iterator[tuple[str, dict[str, Any], bool]]:
    yield path, schema, required
    items = schema.get("items", {})
    if schema.get("type") == "array" and items.get("properties"):
        schema, path = items, path + "[]"
    for name, child in schema.get("properties", {}).items():
        yield from _fields(child, f"{path}.{name}", name in schema.get("required", []))


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _limits(schema: dict[str, Any]) -> str:
    limits = [f"{key} `{schema[key]}`" for key in ("enum", "pattern", "format") if key in schema]
    # OpenAPI v3.0: exclusiveMinimum/exclusiveMaximum are booleans that qualify minimum/maximum.
    if "minimum" in schema:
        limits.append(f"{'>' if schema.get('exclusiveMinimum') else '≥'} {schema['minimum']}")
    if "maximum" in schema:
        limits.append(f"{'<' if schema.get('exclusiveMaximum') else '≤'} {schema['maximum']}")
    limits += [f"{key} {schema[key]}" for key in ("minLength", "maxLength", "minItems", "maxItems") if key in schema]
    return "; ".join(limits)


def modeldeployment_page() -> str:
    crd = yaml.safe_load(CRD.read_text())
    names = crd["spec"]["names"]
    rows = [
        "# ModelDeployment fields\n",
        f"`{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}`, kind `{names['kind']}` "
        f"(short name `{', '.join(names.get('shortNames', []))}`), generated from the chart's CRD "
        "(`helm/quiver/crds/modeldeployment.yaml`) when the site is built. What the operator does with "
        "each field: [Operator and ModelDeployment](../operator.md).\n",
    ]
    for version in crd["spec"]["versions"]:
        top = version["schema"]["openAPIV3Schema"]["properties"]
        for root in ("spec", "status"):
            if root not in top:
                continue
            rows += [f"## {root}\n", "| field | type | required | default | limits | description |",
                     "|---|---|---|---|---|---|"]
            for path, schema, required in _fields(top[root], root, True):
                if path == root:
                    continue
                kind = schema.get("type", "")
                if kind == "array":
                    kind = f"array of {schema.get('items', {}).get('type', 'any')}"
                default = f"`{schema['default']}`" if "default" in schema else ""
                rows.append(
                    f"| `{path}` | {kind} | {'yes' if required else ''} | {_cell(default)} | "
                    f"{_cell(_limits(schema))} | {_cell(schema.get('description', ''))} |"
                )
            rows.append("")
    return "\n".join(rows)


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/cli.md", content=cli_page()))
    files.append(File.generated(config, "reference/modeldeployment.md", content=modeldeployment_page()))
    return files
