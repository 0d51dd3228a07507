"""MkDocs hooks: the site mirrors the repository, and the config reference is generated.

**The site's paths are the repository's paths.** MkDocs wants its pages in ``docs/``; this hook
serves them at ``docs/...`` instead, with ``README.md`` as the home page and the experiments'
write-ups (``experiments/<name>.md``) and results (``experiments/results/...``) at their own
paths. So one relative link works in both places: ``../experiments/guides.md`` from a page in
``docs/``, ``results/guides/guides.csv`` from an experiment's write-up, ``docs/config.md`` from
the README, whether read on a Git host, in an editor or in the built site; and
``mkdocs build --strict`` checks every one of them.

**The config reference** (``docs/reference/config.md``) is written at build time from
``pyro_vae.config.SCHEMA`` (keys and defaults), ``pyro_vae.config.DESCRIPTIONS`` (one line per
key) and every ``Registry`` of the package (names, one-line descriptions, options and their
defaults), so it cannot drift from the code. Building it imports the package's modules (which
changes nothing global) and runs nothing else: no data are read and nothing is trained.

This module imports MkDocs only inside the hooks, so the tests can call
:func:`config_reference` without it.
"""

import importlib
import inspect
import os
import pkgutil
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GENERATED = "docs/reference/config.md"

# Repository folders served as they are (their Markdown files become pages), and the kinds of
# file taken from them: write-ups, figures, tables, configs and the scripts they name.
MIRRORED = ("experiments", "pyro_vae", "tests")
SUFFIXES = (".md", ".png", ".svg", ".jpg", ".csv", ".json", ".toml", ".py", ".txt")


# ---- the config reference ----


def toml_value(value):
    """``value`` as it is written in a TOML file (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cell(text):
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


# The order of the registries on the page; a registry not named here comes after these.
ORDER = ("likelihood", "prior", "guide", "encoder", "decoder", "classifier", "estimator", "schedule",
         "dataset", "optimizer", "learning-rate schedule", "logger")


def registries():
    """Every ``Registry`` defined at the top level of a ``pyro_vae`` module."""
    import pyro_vae
    from pyro_vae.registry import Registry

    found = {}
    for module in sorted(info.name for info in pkgutil.iter_modules(pyro_vae.__path__)):
        if module.startswith("_"):
            continue
        namespace = importlib.import_module(f"pyro_vae.{module}")
        for value in vars(namespace).values():
            if isinstance(value, Registry) and id(value) not in found:
                found[id(value)] = value
    rank = {kind: i for i, kind in enumerate(ORDER)}
    return sorted(found.values(), key=lambda registry: (rank.get(registry.kind, len(ORDER)), registry.kind))


def allowed_values(check):
    """What the check of a key accepts, where the schema says it in a form a reader can use."""
    registry = getattr(check, "registry", None)
    if registry is not None:
        tables = check.__qualname__.startswith("spec.")  # a name, or a table with its options
        return f"[{registry.kind}](#{slug(registry.kind)}) name" + (" or table" if tables else "")
    from pyro_vae import checks

    plain = {
        checks.boolean: "`true` \\| `false`",
        checks.string: "a string",
        checks.sizes: "a list of integers >= 1",
        checks.latent_dims: "an integer >= 1, or `[z1, z2]`",
    }
    if check in plain:
        return plain[check]
    keywords = getattr(check, "keywords", None) or {}
    if "allowed" in keywords:
        return " \\| ".join(f"`{toml_value(v)}`" for v in keywords["allowed"])
    if "minimum" in keywords:
        return (">" if keywords.get("exclusive") else ">=") + f" {keywords['minimum']}"
    return ""


def option_default(cls, option):
    parameter = inspect.signature(cls).parameters[option]
    if parameter.default is inspect.Parameter.empty:
        return "required"
    if parameter.default is None:
        return "unset"  # the class computes its own value, or the option is one of several ways to give one
    return f"`{toml_value(parameter.default)}`"


def config_reference():
    """The config reference page, as Markdown."""
    from pyro_vae.config import DESCRIPTIONS, SCHEMA

    lines = [
        "# Config reference",
        "",
        "<!-- Generated by docs/hooks.py from pyro_vae/config.py (SCHEMA, DESCRIPTIONS) and the",
        "     registries at every build: edit those, not this page. -->",
        "",
        "A run's config is a TOML file with the sections below; every key is optional (its default",
        "is shown) and checked: an unknown key, a wrong type or an unknown name is a one-line error",
        "with exit status 2. See [Config](../config.md) for how tables, names and `--set` work.",
        "This page is generated from the code at every build of the documentation.",
        "",
    ]
    for section, keys in SCHEMA.items():
        lines += [f"## [{section}]", "", "| key | default | values | what it sets |", "|---|---|---|---|"]
        for key, (default, check) in keys.items():
            description = DESCRIPTIONS.get(section, {}).get(key, "")
            lines.append(
                f"| `{section}.{key}` | `{cell(toml_value(default))}` | {allowed_values(check)} | {cell(description)} |"
            )
        lines.append("")
    lines += [
        "## Registered names",
        "",
        "Each name below is what a config (or `VAE(...)`) may give for that kind of component, as a",
        "string or as the `name` of a table whose other keys are the options listed (with their",
        "defaults). `pyro-vae list` prints the same names and descriptions.",
        "",
    ]
    for registry in registries():
        lines += [f"### {registry.kind} {{ #{slug(registry.kind)} }}", "", "| name | what it is | options (default) |",
                  "|---|---|---|"]
        descriptions = dict(registry.describe())
        for name in registry.names():
            cls = registry.get(name)
            options = ", ".join(f"`{option}` ({option_default(cls, option)})" for option in registry.options(name))
            lines.append(f"| `{name}` | {cell(descriptions[name])} | {cell(options) or '(none)'} |")
        lines.append("")
    return "\n".join(lines)


# ---- the MkDocs hooks ----


def mirrored_files():
    """(path relative to the repository) for every file served from the repository's own folders."""
    paths = ["README.md", "pyproject.toml"]
    for folder in MIRRORED:
        for directory, subdirectories, names in os.walk(os.path.join(ROOT, folder)):
            subdirectories[:] = sorted(d for d in subdirectories if not d.startswith((".", "__")))
            for name in sorted(names):
                if name.endswith(SUFFIXES) and not name.startswith("."):
                    paths.append(os.path.relpath(os.path.join(directory, name), ROOT).replace(os.sep, "/"))
    return paths


def on_config(config):
    if ROOT not in sys.path:  # document this checkout's package, installed or not
        sys.path.insert(0, ROOT)
    return config


def on_files(files, config):
    from mkdocs.structure.files import File, Files, InclusionLevel

    docs_dir = os.path.abspath(config["docs_dir"])
    rooted = []
    for file in files:
        source = file.abs_src_path and os.path.abspath(file.abs_src_path)
        if source and source.startswith(docs_dir + os.sep):  # a page of docs/: served at docs/...
            rooted.append(
                File(f"docs/{file.src_uri}", ROOT, config["site_dir"], config["use_directory_urls"], inclusion=file.inclusion)
            )
        else:  # the theme's own assets
            rooted.append(file)
    for path in mirrored_files():
        file = File(path, ROOT, config["site_dir"], config["use_directory_urls"])
        if path.startswith("experiments/results/") and path.endswith(".md"):
            file.inclusion = InclusionLevel.NOT_IN_NAV  # an experiment's generated table, linked from its write-up
        rooted.append(file)
    rooted.append(File.generated(config, GENERATED, content=config_reference()))
    return Files(rooted)
