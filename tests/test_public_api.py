"""The public API is typed: every parameter and the return of each public callable carry a hint.

``pyro_vae/py.typed`` tells type checkers (PEP 561) that the package's hints are to be trusted, so
a public function or method that loses its hints would silently type as ``Any`` in users' code.
These tests read the signatures (``inspect.signature``, which follows the decorators'
``__wrapped__``) of everything in ``pyro_vae.__all__``, the public methods of the model classes,
and the documented entry points, and name each one that lacks a hint.
"""

import inspect
from pathlib import Path

import pytest

import pyro_vae
from pyro_vae import annealing, data, evaluation, registry, report, runs, training
from pyro_vae.data import Data, LabeledBatch, SemiSupervisedBatch, Split
from pyro_vae.models import CVAE, GMVAE, M2, VAE, HierarchicalVAE, LabeledVAE, fit_classifier
from pyro_vae.objectives.estimators import Estimator
from pyro_vae.registry import Registry

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

# The dunder methods that are part of a class's public behaviour (the rest come from object,
# nn.Module or the dataclass machinery).
PUBLIC_DUNDERS = ("__init__", "__len__", "__repr__", "__contains__", "__iter__")

CLASSES = [VAE, HierarchicalVAE, LabeledVAE, CVAE, M2, GMVAE, Estimator, Registry, Data, Split, LabeledBatch,
           SemiSupervisedBatch]
FUNCTIONS = [
    training.train,
    runs.load_run,
    runs.load_run_data,
    runs.plot_run,
    report.evaluate_run,
    evaluation.evaluate,
    evaluation.log_likelihood,
    evaluation.evaluate_elbo,
    evaluation.gradient_variance,
    data.load_data,
    data.as_data,
    annealing.kl_scaled,
    fit_classifier,
    registry.listing,
]


def public_methods(cls):
    """(name, function) for each method and property ``cls`` defines itself, public or a public dunder."""
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in PUBLIC_DUNDERS:
            continue
        if isinstance(member, property):
            yield f"{cls.__name__}.{name}", member.fget
        elif isinstance(member, (staticmethod, classmethod)):
            yield f"{cls.__name__}.{name}", member.__func__
        elif inspect.isfunction(member) and inspect.unwrap(member).__code__.co_filename != "<string>":  # not generated
            yield f"{cls.__name__}.{name}", member


def exported():
    """(name, function) for everything ``pyro_vae.__all__`` names: functions as they are, classes by
    their own public methods."""
    for name in pyro_vae.__all__:
        value = getattr(pyro_vae, name)
        if inspect.isclass(value):
            yield from public_methods(value)
        else:
            yield name, value


def callables():
    seen = {}
    for name, function in [*exported(), *(m for cls in CLASSES for m in public_methods(cls)),
                           *((f"{f.__module__}.{f.__name__}", f) for f in FUNCTIONS)]:
        seen.setdefault(name, function)
    return sorted(seen.items())


def missing_hints(function):
    """The parameters (and ``return``) of ``function`` without an annotation; ``self``/``cls`` need none."""
    signature = inspect.signature(function)
    missing = [
        name for i, (name, parameter) in enumerate(signature.parameters.items())
        if parameter.annotation is inspect.Parameter.empty and not (i == 0 and name in ("self", "cls"))
    ]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


CALLABLES = callables()


def test_the_list_covers_the_api():
    names = {name for name, _ in CALLABLES}
    # the exported names, the methods users call on a model, and the documented entry points
    for name in ("train", "load_run", "kl_scaled", "VAE.__init__", "VAE.model", "VAE.guide", "VAE.sample",
                 "VAE.prior_dist", "CVAE.model", "M2.classify", "LabeledVAE.elbo_terms",
                 "HierarchicalVAE.encode_layers", "Estimator.loss", "Registry.build", "Data.batches",
                 "Split.random_subset", "pyro_vae.evaluation.summary.evaluate",
                 "pyro_vae.evaluation.likelihood.log_likelihood", "pyro_vae.report.evaluate_run",
                 "pyro_vae.data.loading.load_data"):
        assert name in names
    assert len(CALLABLES) > 80


@pytest.mark.parametrize("name, function", CALLABLES, ids=[name for name, _ in CALLABLES])
def test_public_callable_is_annotated(name, function):
    assert missing_hints(function) == [], f"{name} lacks type hints"


def test_missing_hints_names_each_gap():
    def partly(self, a: int, b, *args, c: str = "", **options) -> None:
        pass

    def no_return(x: int):
        pass

    assert missing_hints(partly) == ["b", "args", "options"]
    assert missing_hints(no_return) == ["return"]
    assert missing_hints(lambda self: None) == ["return"]


def test_py_typed_is_shipped():
    """The PEP 561 marker exists and setuptools puts it in the wheel (it is not a .py file)."""
    assert (ROOT / "pyro_vae" / "py.typed").is_file()
    with open(ROOT / "pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["pyro_vae"]
