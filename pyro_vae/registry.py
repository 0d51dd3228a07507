"""Name -> class registries: how a config word becomes an object.

Adding a likelihood (or prior, network, dataset, estimator, schedule) is one
class plus one ``@REGISTRY.register("name")`` line. The class's docstring's
first line is its one-line description in ``pyro-vae list``; its keyword
arguments are the options a config table may set, and nothing else.
"""

import inspect


class UserError(ValueError):
    """A problem with the user's input (config, data, files), reported as one line.

    The CLI prints ``error: <message>`` and exits with status 2; it never shows
    a traceback for these.
    """


class Registry:
    """A named collection of classes that can be built from config specs.

    A *spec* is a name (``"gaussian"``), a table with a ``name`` (or ``type``) and options
    (``{"name": "gaussian", "scale": 0.1}``), or an already built object, which
    is returned unchanged.
    """

    def __init__(self, kind, key="name"):
        self.kind = kind
        self.key = key  # the table key that holds the name ("type" for networks)
        self._classes = {}

    def register(self, name):
        def decorator(cls):
            if name in self._classes:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._classes[name] = cls
            cls.registered_name = name
            return cls

        return decorator

    def __contains__(self, name):
        return name in self._classes

    def __iter__(self):
        return iter(self._classes)

    def names(self):
        return list(self._classes)

    def get(self, name, where=None):
        if name not in self._classes:
            where = f"{where}: " if where else ""
            raise UserError(
                f"{where}unknown {self.kind} {name!r}; choose one of: {', '.join(self._classes)}"
            )
        return self._classes[name]

    def describe(self):
        """(name, one-line description) for every registered class."""
        rows = []
        for name, cls in self._classes.items():
            doc = inspect.getdoc(cls) or ""
            rows.append((name, doc.splitlines()[0] if doc else ""))
        return rows

    def options(self, name):
        """The keyword options a config table may give for ``name``."""
        return _keyword_options(self.get(name))

    def split_spec(self, spec, where=None):
        """Return ``(name, options)`` for a name or a table, validating the options."""
        if isinstance(spec, str):
            name, options = spec, {}
        elif isinstance(spec, dict):
            if self.key not in spec:
                raise UserError(f"{where or self.kind}: a table needs a {self.key!r} key")
            options = dict(spec)
            name = options.pop(self.key)
        else:
            raise UserError(
                f"{where or self.kind}: expected a name or a table, got {type(spec).__name__}"
            )
        allowed = self.options(name) if name in self else None
        self.get(name, where)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise UserError(
                f"{where or self.kind}.{unknown[0]}: unknown option for {self.kind} {name!r}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )
        return name, options

    def build(self, spec, where=None, **context):
        """Build an object from a spec; ``context`` holds arguments the caller supplies
        (such as ``latent_dim``) that the config does not."""
        if not isinstance(spec, (str, dict)):
            return spec
        name, options = self.split_spec(spec, where)
        cls = self.get(name)
        accepted = inspect.signature(cls).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        context = {k: v for k, v in context.items() if takes_any or k in accepted}
        try:
            return cls(**context, **options)
        except (TypeError, ValueError) as error:
            if isinstance(error, UserError):
                raise
            raise UserError(f"{where or self.kind} {name!r}: {error}") from None


def _keyword_options(cls):
    """Keyword arguments of ``cls`` that a user sets (context arguments excluded)."""
    context = getattr(cls, "context_arguments", ())
    return [
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in context
    ]
