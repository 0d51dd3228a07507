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
        section = page.split(f"### {registry.kind}\n")[1].split("\n### ")[0]
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
    ("models", "MODEL_KINDS"),
])
def test_the_readme_names_every_swappable_component(module, registry):
    table = (ROOT / "README.md").read_text().split("## What can be swapped")[1].split("\n## ")[0]
    names = getattr(importlib.import_module(f"pyro_vae.{module}"), registry)
    missing = [name for name in names if f"`{name}`" not in table and not (name == "arrays" and "arrays from Python" in table)]
    assert missing == []


# ---- the committed config reference ----


def test_the_committed_config_reference_is_the_generated_one():
    hooks = load_hooks()
    assert hooks.committed_reference() == hooks.config_reference(), (
        f"{hooks.GENERATED} is out of date with the code: run `{hooks.REGENERATE}`"
    )


def test_the_config_reference_lists_exactly_the_keys_a_resumed_run_may_change():
    from pyro_vae.runs import RESUMABLE_KEYS

    page = load_hooks().config_reference()
    section = page.split("## Resuming a run\n")[1].split("\n## ")[0]
    listed = set(re.findall(r"`(\w+)\.(\w+)`", section))
    assert listed == RESUMABLE_KEYS and len(RESUMABLE_KEYS) == 11
    # the guides link to that list rather than stating one of their own
    for guide in ("config.md", "runs.md"):
        text = (ROOT / "docs" / guide).read_text()
        assert "reference/config.md#resuming-a-run" in text, guide
        assert "anything but `train.epochs`" not in text, guide


# ---- docstrings are Markdown ----


def test_the_sphinx_check_finds_roles_rst_literals_and_literal_blocks_and_passes_markdown():
    hooks = load_hooks()
    found = hooks.sphinx_leftovers(
        "See :func:`train` and :class:`~pyro_vae.model.VAE`,\nthe ``data`` plate::\n\n    z ~ p(z)\n"
    )
    assert [(line, what) for line, what, _ in found] == [
        (1, "role"), (2, "`::` before a literal block"), (2, "double backticks")
    ]  # one entry per line and kind
    markdown = "See `train`, `` `x` `` and `:func:` (a role's name),\nthe `data` plate:\n\n```\nz ~ p(z)\n```\n"
    assert hooks.sphinx_leftovers(markdown) == []


def test_no_docstring_of_the_package_holds_sphinx_markup():
    hooks = load_hooks()
    found = [leftover for path in sorted((ROOT / "pyro_vae").rglob("*.py"))
             for leftover in hooks.docstring_leftovers(str(path))]
    assert found == [], (
        f"{len(found)} pieces of Sphinx markup in docstrings (the site renders Markdown; "
        "write `name`, not :func:`name` or ``name``, and `:` before a fenced block, not `::`):\n" + "\n".join(found)
    )


def test_registry_descriptions_and_pyro_vae_list_hold_no_sphinx_markup(capsys):
    from pyro_vae.cli import main

    hooks = load_hooks()
    found = [(registry.kind, name, description) for registry in hooks.registries()
             for name, description in registry.describe() if hooks.sphinx_leftovers(description)]
    assert found == []
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    assert "likelihood" in printed and "``" not in printed and not hooks.SPHINX_ROLE.search(printed)


class Page:
    class file:
        src_uri = "docs/api/example.md"


def test_the_build_warns_on_sphinx_markup_in_a_documented_module_and_on_a_rendered_page(tmp_path, monkeypatch, caplog):
    """What fails `mkdocs build --strict`: a warning on a logger under `mkdocs` (MkDocs counts them)."""
    hooks = load_hooks()
    (tmp_path / "pyro_vae").mkdir()
    (tmp_path / "pyro_vae" / "example.py").write_text('"""Trains with :func:`train`."""\n\n\ndef f():\n    """Fine: `x`."""\n')
    monkeypatch.setattr(hooks, "ROOT", str(tmp_path))
    with caplog.at_level("WARNING"):
        hooks.on_page_markdown("# Example\n\n::: pyro_vae.example\n", Page, {}, None)
        hooks.on_page_content("<p>Restore what :func:<code>rng_state</code> saved.</p><p>A plate::</p>"
                              "<pre><code>:func:`kept` in a code block::</code></pre>", Page, {}, None)
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("mkdocs.")]
    assert len(messages) == 3, messages
    assert "pyro_vae/example.py:1: role: Trains with :func:`train`." in messages[0]
    assert ":func:rng_state" in messages[1] and "A plate::" in messages[2]
    assert all(message.startswith("docs/api/example.md: Sphinx markup") for message in messages)


# ---- the README's Python example ----


@pytest.mark.trains
def test_the_readmes_python_example_runs_without_a_warning(tmp_path, monkeypatch):
    """The README's Python block as written but for 1 epoch in each half (pytest makes any warning an
    error): it once trained a Gaussian on the 17-level digits, which warns that its ELBO is no
    log-likelihood."""
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    code = blocks[0]
    for long, short in (("range(10)", "range(1)"), ('"epochs": 20', '"epochs": 1')):
        assert code.count(long) == 1, long
        code = code.replace(long, short)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (namespace["run"] / "checkpoint.pt").is_file()
    assert namespace["vae"].likelihood.registered_name == "discretized_logistic"
