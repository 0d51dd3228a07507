"""MkDocs hooks: the site mirrors the repository, the config reference is generated, and no
Sphinx markup reaches a page.

**The site's paths are the repository's paths.** MkDocs wants its pages in `docs/`; this hook
serves them at `docs/...` instead, with `README.md` as the home page and the experiments'
write-ups (`experiments/<name>.md`) and results (`experiments/results/...`) at their own
paths. So one relative link works in both places: `../experiments/guides.md` from a page in
`docs/`, `results/guides/guides.csv` from an experiment's write-up, `docs/config.md` from
the README, whether read on a Git host, in an editor or in the built site; and
`mkdocs build --strict` checks every one of them.

**The config reference** (`docs/reference/config.md`) is generated from
`pyro_vae.config.SCHEMA` (keys and defaults), `pyro_vae.config.DESCRIPTIONS` (one line per
key), `pyro_vae.runs.RESUMABLE_KEYS` and every `Registry` of the package (names, one-line
descriptions, options and their defaults), and committed, so a link to it works on a Git host
too. `python docs/hooks.py` rewrites it; `tests/test_docs.py` and every build of the site fail
while the committed page differs from what the code generates. Generating it imports the
package's modules (which changes nothing global) and runs nothing else: no data are read and
nothing is trained.

**Docstrings are Markdown.** mkdocstrings renders them as Markdown, where Sphinx's roles
(`:func:` and the like), double-backtick literals and a paragraph ending in `::` show as text.
`sphinx_leftovers` finds them in a docstring; the build warns (an error under `--strict`) for
each one in a module a page documents and for each role or `::` left in a rendered page.

This module imports MkDocs only inside the hooks, so the tests can call `config_reference` and
`sphinx_leftovers` without it.
"""

import ast
import importlib
import inspect
import logging
import os
import pkgutil
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GENERATED = "docs/reference/config.md"
REGENERATE = "python docs/hooks.py"

# Repository folders served as they are (their Markdown files become pages), and the kinds of
# file taken from them: write-ups, figures, tables, configs and the scripts they name.
MIRRORED = ("experiments", "pyro_vae", "tests")
SUFFIXES = (".md", ".png", ".svg", ".jpg", ".csv", ".json", ".toml", ".py", ".txt")

# A logger under "mkdocs": its warnings count towards --strict.
log = logging.getLogger("mkdocs.hooks.pyro_vae_docs")


# ---- the config reference ----


def toml_value(value):
    """`value` as it is written in a TOML file (inline tables and arrays)."""
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
    """Every `Registry` defined at the top level of a `pyro_vae` module."""
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
        "<!-- Generated from pyro_vae/config.py (SCHEMA, DESCRIPTIONS), pyro_vae/runs.py (RESUMABLE_KEYS)",
        f"     and the registries by `{REGENERATE}`: edit those, not this page. -->",
        "",
        "A run's config is a TOML file with the sections below; every key is optional (its default",
        "is shown) and checked: an unknown key, a wrong type or an unknown name is a one-line error",
        "with exit status 2. See [Config](../config.md) for how tables, names and `--set` work.",
        "This page is generated from the code; the tests fail while it is out of date.",
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
    lines += resumable_keys()
    lines += [
        "## Registered names",
        "",
        "Each name below is what a config (or `VAE(...)`) may give for that kind of component, as a",
        "string or as the `name` of a table whose other keys are the options listed (with their",
        "defaults). `pyro-vae list` prints the same names and descriptions.",
        "",
    ]
    for registry in registries():
        lines += [f"### {registry.kind}", "",  # anchored at #<slug(kind)> here and on a Git host
                  "| name | what it is | options (default) |",
                  "|---|---|---|"]
        descriptions = dict(registry.describe())
        for name in registry.names():
            cls = registry.get(name)
            options = ", ".join(f"`{option}` ({option_default(cls, option)})" for option in registry.options(name))
            lines.append(f"| `{name}` | {cell(descriptions[name])} | {cell(options) or '(none)'} |")
        lines.append("")
    return "\n".join(lines)


def resumable_keys():
    """The section on resuming: the keys a resumed run's config may change, from the code."""
    from pyro_vae.runs import RESUMABLE_KEYS

    keys = ", ".join(f"`{section}.{key}`" for section, key in sorted(RESUMABLE_KEYS))
    return [
        "## Resuming a run",
        "",
        "`pyro-vae train --resume RUN` (or `train(config, resume=RUN)`) continues a run with its own",
        "config; `--set` (or `config`) may change only these keys, and any other difference is refused",
        f"with the key that differs: {keys}.",
        "",
    ]


def committed_reference():
    """The committed config reference, or None where there is none."""
    try:
        with open(os.path.join(ROOT, GENERATED), encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError:
        return None


def write_reference():
    """Rewrite the committed config reference from the code; returns its path."""
    from pyro_vae.atomic import write_text_atomically

    path = os.path.join(ROOT, GENERATED)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomically(path, config_reference())
    return path


# ---- Sphinx markup left in Markdown docstrings ----

# A role (:func:`x`, :class:`~a.B`, :py:meth:`x`), an RST literal (``x``: two backticks straight
# before a character; Markdown's `` `x` `` has a space there), and a paragraph ending in `::`
# (RST's literal block; in Markdown the two colons show).
SPHINX_ROLE = re.compile(
    r"(?<![\w`]):(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|ref|math|term|doc|any):`[^`\s]"
)
SPHINX_LEFTOVERS = {
    "role": SPHINX_ROLE,
    "double backticks": re.compile(r"(?<!`)``(?=[^`\s])"),
    "`::` before a literal block": re.compile(r"\S::[ \t]*$", re.MULTILINE),
}


def sphinx_leftovers(text):
    """(line within `text`, 1-based; what; the line) for every piece of Sphinx markup in `text`."""
    found = []
    for what, pattern in SPHINX_LEFTOVERS.items():
        for match in pattern.finditer(text):
            number = text.count("\n", 0, match.start()) + 1
            found.append((number, what, text.splitlines()[number - 1].strip()))
    return sorted(set(found))


def docstring_leftovers(path):
    """`path:line: what: text` for every piece of Sphinx markup in the docstrings of the Python file
    `path`: module, class, function and attribute docstrings (every string standing as a statement)."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for number, what, line in sphinx_leftovers(node.value.value):
                found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno + number - 1}: {what}: {line}")
    return found


def module_file(dotted):
    """The source file of the module `dotted` names (`pyro_vae.x`, `pyro_vae.x.Y`), or None."""
    parts = dotted.split(".")
    while parts:
        base = os.path.join(ROOT, *parts)
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                return candidate
        parts.pop()
    return None


# In a rendered page: a role (its target became code) or a paragraph ending in `::`.
RENDERED_LEFTOVERS = re.compile(
    r"(?<![\w`]):(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|ref|math|term|doc|any):(?:<code>|`)|::</p>"
)


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
    if committed_reference() != config_reference():
        log.warning(f"{GENERATED} is out of date with the code: run `{REGENERATE}`")
    return Files(rooted)


def on_page_markdown(markdown, page, config, files):
    """Sphinx markup in the docstrings of the modules this page documents (`::: pyro_vae.x`)."""
    for dotted in re.findall(r"^::: (pyro_vae[\w.]*)", markdown, flags=re.MULTILINE):
        path = module_file(dotted)
        for leftover in docstring_leftovers(path) if path else ():
            log.warning(f"{page.file.src_uri}: Sphinx markup in a docstring (write Markdown): {leftover}")
    return markdown


def on_page_content(html, page, config, files):
    """Sphinx markup that reached the rendered page, wherever it came from (code blocks aside)."""
    prose = re.sub(r"<pre\b.*?</pre>", "", html, flags=re.DOTALL)
    for match in RENDERED_LEFTOVERS.finditer(prose):
        context = re.sub(r"<[^>]+>", "", prose[max(0, match.start() - 60):match.end() + 40]).replace("\n", " ")
        log.warning(f"{page.file.src_uri}: Sphinx markup on the page: ...{context}...")
    return html


if __name__ == "__main__":
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    print(write_reference())
