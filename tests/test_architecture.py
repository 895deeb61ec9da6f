"""The package's layers (README, "Architecture"): what each part may import of the others.

Every relative import of src/pushforward, at module level or inside a function, is checked
against :data:`MAY_IMPORT`, so that the README's description cannot drift from the code.
"""

import ast
from collections import defaultdict
from pathlib import Path

import pushforward

ROOT = Path(pushforward.__file__).parent

FOUNDATIONS = {"core", "checks", "atomic", "distributed"}
MATH = FOUNDATIONS | {"nn", "transforms", "distributions"}
MODELS = MATH | {"flows"}
MAY_IMPORT = {
    "core": set(), "checks": set(), "atomic": set(), "distributed": set(), "targets": set(),
    "nn": {"core", "checks"},
    "transforms": {"core", "checks", "nn"},
    "distributions": {"core", "transforms"},
    "flows": MATH,
    "dequantization": MATH,
    "latent": {"core"},
    "integrations": MODELS,
    "testing": MATH,
    "data": {"core", "checks", "transforms"},
    "engine": FOUNDATIONS | {"transforms"},
    "train": MATH | {"engine"},
    "vi": MATH | {"engine"},
    "vae": MODELS | {"engine", "data", "config"},
    "config": {"checks", "distributions"},
    "experiment": MODELS | {"data", "dequantization", "config", "train"},
    "runs": {"experiment"},
    "plots": MATH | {"targets"},
    "cli": MODELS | {"data", "dequantization", "latent", "config", "experiment", "runs", "plots", "targets", "train",
                     "vi", "vae"},
}


def imports() -> dict[str, set[str]]:
    """Part (top-level module or package of pushforward) -> the parts it imports relatively."""
    found = defaultdict(set)
    for file in ROOT.rglob("*.py"):
        rel = file.relative_to(ROOT)
        part, package = rel.parts[0].removesuffix(".py"), list(rel.parts[:-1])
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                found[part].update([target[0]] if target else [a.name for a in node.names])
    return {part: names - {part} for part, names in found.items()}


def test_every_part_imports_only_the_layers_below_it():
    wrong = {part: sorted(names - MAY_IMPORT[part]) for part, names in imports().items()
             if part != "__init__" and names - MAY_IMPORT[part]}
    assert not wrong, f"imports outside the README's architecture: {wrong}"


def test_every_part_is_described():
    parts = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts - {"__init__"} <= set(MAY_IMPORT), sorted(parts - set(MAY_IMPORT))
