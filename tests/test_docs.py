"""The documentation cannot drift from the code: every config key is described, the generated
config reference lists every key and registered name, every public module has an API page,
every experiment has its write-up, and the README names every swappable component."""

import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import pyro_vae
from pyro_vae.config import DESCRIPTIONS, SCHEMA

ROOT = Path(__file__).resolve().parent.parent


def load_hooks():
    """docs/hooks.py, imported by path (it is not a package module; MkDocs is not needed)."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_key_has_one_description_and_no_description_is_stale():
    assert set(DESCRIPTIONS) == set(SCHEMA)
    for section, keys in SCHEMA.items():
        assert set(DESCRIPTIONS[section]) == set(keys), section
        for key in keys:
            text = DESCRIPTIONS[section][key]
            assert isinstance(text, str) and text.strip() and "\n" not in text, f"{section}.{key}"


def test_the_generated_config_reference_lists_every_key_default_and_registered_name():
    hooks = load_hooks()
    page = hooks.config_reference()
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| `")}
    for section, keys in SCHEMA.items():
        for key, (default, _) in keys.items():
            row = rows[f"`{section}.{key}`"]
            assert f"`{hooks.toml_value(default)}`" in row and DESCRIPTIONS[section][key] in row.replace("\\|", "|")
    registries = hooks.registries()
    kinds = {registry.kind for registry in registries}
    assert {"likelihood", "prior", "guide", "encoder", "decoder", "estimator", "schedule", "dataset",
            "optimizer", "learning-rate schedule", "logger", "classifier"} <= kinds
    for registry in registries:
        section = page.split(f"### {registry.kind} {{")[1].split("\n### ")[0]
        for name, description in registry.describe():
            assert f"| `{name}` | {hooks.cell(description)} |" in section, (registry.kind, name)
    # an option's default is read from the class: the Gaussian's scale defaults to 1.0
    assert "`scale` (`1.0`), `min_scale` (`0.001`)" in rows["`gaussian`"]


def test_every_public_module_has_an_api_reference_page():
    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: pyro_vae\.(\w+)$", page.read_text(), flags=re.MULTILINE))
    public = {m.name for m in pkgutil.iter_modules(pyro_vae.__path__) if not m.name.startswith("_")}
    assert public - documented == set()
    assert documented - public == set()


def test_every_experiment_has_its_write_up_beside_it():
    experiments = ROOT / "experiments"
    scripts = {p.stem for p in experiments.glob("*.py") if p.stem != "common"}
    folders = {p.name for p in experiments.iterdir() if p.is_dir() and p.name not in ("results", "__pycache__")}
    missing = sorted(name for name in scripts | folders if not (experiments / f"{name}.md").exists())
    assert missing == []


@pytest.mark.parametrize("module, registry", [
    ("likelihoods", "LIKELIHOODS"), ("priors", "PRIORS"), ("guides", "GUIDES"), ("nets", "ENCODERS"),
    ("nets", "DECODERS"), ("objectives", "ESTIMATORS"), ("annealing", "SCHEDULES"), ("data", "DATASETS"),
    ("labels", "MODEL_KINDS"),
])
def test_the_readme_names_every_swappable_component(module, registry):
    table = (ROOT / "README.md").read_text().split("## What can be swapped")[1].split("\n## ")[0]
    names = getattr(importlib.import_module(f"pyro_vae.{module}"), registry)
    missing = [name for name in names if f"`{name}`" not in table and not (name == "arrays" and "arrays from Python" in table)]
    assert missing == []
