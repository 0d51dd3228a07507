"""Name -> class registries: how a config word becomes an object.

Adding a likelihood (or prior, network, dataset, estimator, schedule) is one
class plus one `@REGISTRY.register("name")` line. The class's docstring's
first line is its one-line description in `pyro-vae list`; its keyword
arguments are the options a config table may set, and nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T", bound=Callable[..., Any])  # a class, or a function (optimizers)

# What a config gives for a component: a registered name, a table {"name": ..., options}, or a
# module built already (returned as it is).
Spec: TypeAlias = "str | dict[str, Any] | nn.Module"


class UserError(ValueError):
    """A problem with the user's input (config, data, files), reported as one line.

    The CLI prints `error: <message>` and exits with status 2; it never shows
    a traceback for these.
    """


def listing(names: Iterable[str], quote: bool = False) -> str:
    """`names` as a message lists them: "a, b or c" (each in double quotes with `quote`)."""
    names = [f'"{name}"' if quote else name for name in names]
    if len(names) < 2:
        return "".join(names) or "(none)"
    return f"{', '.join(names[:-1])} or {names[-1]}"


class Registry:
    """A named collection of classes that can be built from config specs.

    A *spec* is a name (`"gaussian"`), a table with a `name` and options
    (`{"name": "gaussian", "scale": 0.1}`), or an already built object, which is
    returned unchanged. Only `name` names the class: a table that gives a registered
    name under another key (`{"type": "gaussian"}`) is refused with a line saying so.

    The library supplies some constructor arguments itself (the data's shape, the
    latent dimension): a class lists them in `context_arguments`, and `build` passes
    exactly those. Every other keyword argument is an option a config table may set.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(cls: Any) -> Any:
            if name in self._classes:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            cls.registered_name = name
            return cls

        return decorator

    def unregister(self, name: str) -> None:
        """Remove `name` (a kind registered for a while: a test's, a plugin's)."""
        if name not in self._classes:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        del self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def names(self, **attributes: Any) -> list[str]:
        """The registered names, in registration order; with `attributes`, those whose class has
        these attribute values (`ESTIMATORS.names(supports_labels=True)`)."""
        return [name for name, cls in self._classes.items()
                if all(getattr(cls, key) == value for key, value in attributes.items())]

    def get(self, name: str, where: str | None = None) -> Callable[..., Any]:
        if not isinstance(name, str) or name not in self._classes:
            where = f"{where}: " if where else ""
            raise UserError(
                f"{where}unknown {self.kind} {name!r}; choose one of: {', '.join(self._classes)}"
            )
        return self._classes[name]

    def describe(self) -> list[tuple[str, str]]:
        """(name, one-line description) for every registered class."""
        rows = []
        for name, cls in self._classes.items():
            doc = inspect.getdoc(cls) or ""
            rows.append((name, doc.splitlines()[0] if doc else ""))
        return rows

    def options(self, name: str) -> list[str]:
        """The keyword options a config table may give for `name`."""
        cls = self.get(name)
        context = getattr(cls, "context_arguments", ())
        return [
            option
            for option, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and option not in context
        ]

    def misplaced_name(self, table: dict[str, Any], where: str) -> None:
        """Refuse a table that gives a registered name under a key other than `name`
        (`{"type": "gaussian"}`): said plainly, rather than as a missing name or an unknown option.
        A key that is some class's option (a cyclical schedule's `shape = "linear"`) is not one."""
        options = {option for name in self._classes for option in self.options(name)}
        for key, value in table.items():
            if key != "name" and key not in options and isinstance(value, str) and value in self._classes:
                raise UserError(f'{where}: the key "{key}" is not read; name the component with name = "{value}"')

    def split_spec(self, spec: object, where: str | None = None) -> tuple[str, dict[str, Any]]:
        """Return `(name, options)` for a name or a table, validating the options."""
        where = where or self.kind
        if isinstance(spec, str):
            name, options = spec, {}
        elif isinstance(spec, dict):
            if "name" not in spec:
                self.misplaced_name(spec, where)
                raise UserError(f"{where}: a table needs a 'name' key")
            options = dict(spec)
            name = options.pop("name")
        else:
            raise UserError(f"{where}: expected a name or a table, got {type(spec).__name__}")
        self.get(name, where)
        allowed = self.options(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            self.misplaced_name({key: options[key] for key in unknown}, where)
            raise UserError(
                f"{where}.{unknown[0]}: unknown option for {self.kind} {name!r}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )
        return name, options

    def build(self, spec: Spec, where: str | None = None, **context: Any) -> Any:
        """Build an object from a spec; `context` holds the arguments the library supplies
        (those the class lists in `context_arguments` are passed, the rest ignored).

        Only a mismatch of arguments (a required option missing) becomes a one-line error
        here; the constructor checks its own values, and any other exception it raises is a
        bug and keeps its traceback."""
        if not isinstance(spec, (str, dict)):
            return spec
        name, options = self.split_spec(spec, where)
        cls = self.get(name)
        wanted = getattr(cls, "context_arguments", ())
        arguments = {**{k: v for k, v in context.items() if k in wanted}, **options}
        try:
            inspect.signature(cls).bind(**arguments)
        except TypeError as error:
            raise UserError(f"{where or self.kind} {name!r}: {error}") from None
        return cls(**arguments)
