"""A registry of model factories; each model carries its own data config.

``create_model(name, num_classes=..., in_chans=...)`` builds a dense network.
Each entry knows its default input size, mean/std and class count, so data loading
and export read them from the model instead of repeating flags (timm's habit).
A user's own network is named ``package.module:factory``; the factory is called
with ``num_classes`` and ``in_chans`` when it accepts them (by name or ``**kwargs``).

Trust: importing a user factory runs its module's code. A name the user typed on the
command line (``--model``) is trusted; a name read from a run directory (arch.json,
config.json) is imported only if it is registered, or named again on the command
line, or the user passes ``--trust-run-code`` (see README, "Threat model"). Such
modules are imported from the current directory only when the user named them:
``python -m`` puts the current directory first on ``sys.path``, and
``legr_edge/__init__`` takes it off again so that no file in a run directory one
happens to stand in can shadow a module.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import re
import sys
from typing import Any, Callable, Iterator, Sequence

from legr_edge.errors import LegrError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What a model expects of its input, stored with the model."""

    name: str
    input_size: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_REGISTRY: dict[str, tuple[Callable[..., Any], ModelConfig]] = {}


def register_model(name: str, input_size: tuple[int, int, int], num_classes: int,
                   mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD):
    """Decorator: register ``factory(num_classes, in_chans)`` under ``name``."""
    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = (factory, ModelConfig(name, input_size, num_classes, mean, std))
        return factory
    return wrap


def list_models() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def model_config(name: str) -> ModelConfig:
    _ensure_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name][1]
    if ":" in name:
        return ModelConfig(name, (3, 32, 32), 10, CIFAR_MEAN, CIFAR_STD)
    raise LegrError(f"unknown model {name!r}; known: {', '.join(list_models())} "
                    "(or a user factory as package.module:function)")


# package.module:factory -- dotted identifiers, one colon, an identifier after it.
FACTORY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_TRUSTED: set = set()  # user factory specs the user named on the command line
_TRUST_ALL = [False]   # --trust-run-code


def trust_factory(spec: str | None = None) -> None:
    """Trust the user factory ``spec`` (named on the command line), or all (None)."""
    if spec is None:
        _TRUST_ALL[0] = True
    else:
        check_spec(spec)
        _TRUSTED.add(spec)


@contextlib.contextmanager
def trust_scope(specs: Sequence[str] = (), trust_all: bool = False) -> Iterator[None]:
    """Trust ``specs`` (or everything) for the duration of one command."""
    saved = set(_TRUSTED), _TRUST_ALL[0]
    try:
        for spec in specs:
            trust_factory(spec)
        if trust_all:
            trust_factory(None)
        yield
    finally:
        _TRUSTED.clear()
        _TRUSTED.update(saved[0])
        _TRUST_ALL[0] = saved[1]


def is_trusted(spec: str) -> bool:
    return ":" not in spec or _TRUST_ALL[0] or spec in _TRUSTED


def check_spec(spec: Any, where: str = "--model") -> str:
    """A registered name or a well-formed ``package.module:factory``; else LegrError."""
    if not isinstance(spec, str) or (":" in spec and not FACTORY_RE.match(spec)):
        raise LegrError(f"{where}: {spec!r} is neither a registered model nor package.module:factory "
                        "(dotted Python identifiers, one ':', a function name)")
    if ":" not in spec:
        model_config(spec)  # raises for unknown names
    return spec


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, *,
                 source: str | None = None):
    """Build the dense network ``name`` (registered, or ``package.module:factory``).

    ``source`` names the run file ``name`` was read from: a user factory from there
    must have been trusted first (:func:`trust_factory`); without it the caller is the
    user's own code or command line and ``name`` is trusted.
    """
    check_spec(name, source or "--model")
    if ":" in name and source is not None and not is_trusted(name):
        raise LegrError(
            f"{source}: model {name!r} is user code that a run directory cannot make legr_edge run; "
            f"if you trust it, name it on the command line (--model {name}) or pass --trust-run-code")
    factory = _registry_factory(name) if ":" not in name else _import_factory(name)
    kwargs = _factory_kwargs(factory, num_classes=num_classes, in_chans=in_chans)
    try:
        model = factory(**kwargs)
    except (Exception, SystemExit) as e:  # a user's factory may fail in any way, sys.exit(0) too
        raise LegrError(f"model factory {name!r} failed: {type(e).__name__}: {e}") from None
    if not callable(getattr(model, "named_modules", None)):
        raise LegrError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _factory_kwargs(factory: Callable[..., Any], **values: Any) -> dict[str, Any]:
    """The given values the factory accepts: named parameters, or all of them with **kwargs."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass nothing
        return {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in values.items()
            if v is not None and (var_kw or (k in params and params[k].kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)))}


def _registry_factory(name: str):
    model_config(name)  # raises for unknown names
    return _REGISTRY[name][0]


def _import_factory(spec: str):
    """Import ``package.module`` of a trusted spec; the user's current directory is searched
    for it (and only for it) because the user named it."""
    import legr_edge

    module_name, _, attr = spec.partition(":")
    cwd = getattr(legr_edge, "_REMOVED_CWD", None)
    added = cwd is not None and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # ImportError, SyntaxError, anything its top level raises
        where = f" ({e.filename}:{e.lineno})" if isinstance(e, SyntaxError) else ""
        raise LegrError(f"cannot import model module {module_name!r} of {spec!r}: "
                        f"{type(e).__name__}: {e}{where}") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise LegrError(f"{module_name!r} has no callable {attr!r} (from --model {spec!r})")
    return factory


def _ensure_builtin() -> None:
    """Import the built-in architectures so they register themselves."""
    from legr_edge.models import mobilenetv2, resnet, resnet_cifar  # noqa: F401
