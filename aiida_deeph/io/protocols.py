"""OpenMX protocols (``resources/protocols/openmx.yaml``: fast, moderate, precise, overlap_only): loading,
inheritance and validated overrides, as aiida-quantumespresso's ProtocolMixin does.

A protocol gives ``basis_table``, ``kpoints_spacing`` (1/A, 2 pi included), ``kpoints_max`` and OpenMX
``parameters``; :func:`aiida_deeph.io.openmx_input.write_input_from_protocol` writes an input from it.
"""
from __future__ import annotations

import copy
import functools
from importlib import resources


class ProtocolError(ValueError):
    """An unknown protocol or override key, or an unreadable protocol file, with a one-line message."""


def recursive_merge(a: dict, b: dict) -> dict:
    """Deep copy of ``a`` updated with ``b``: nested dicts merge, other values (incl. None) replace."""
    out = copy.deepcopy(a) if a is not None else {}
    for key, value in (b or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = recursive_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_protocol_file() -> dict:
    """The parsed protocol file (a fresh deep copy: callers may change it)."""
    return copy.deepcopy(_parsed_protocol_file())


@functools.lru_cache(maxsize=1)
def _parsed_protocol_file() -> dict:
    text = resources.files("aiida_deeph.resources").joinpath("protocols").joinpath("openmx.yaml").read_text("utf8")
    try:
        import yaml
    except ImportError:  # pragma: no cover
        raise ProtocolError("reading protocols needs PyYAML (pip install pyyaml)") from None
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "protocols" not in data:
        raise ProtocolError("protocols/openmx.yaml has no top-level 'protocols' mapping")
    return data


def list_protocols() -> list:
    """Names of the OpenMX protocols."""
    return list(_load_protocol_file()["protocols"])


PROTOCOL_OVERRIDE_KEYS = ("parameters", "kpoints_spacing", "kpoints_max", "basis_table", "metadata", "description")


def load_protocol(name: str | None = None, overrides: dict | None = None) -> dict:
    """Protocol ``name`` (default: the file's default, ``moderate``) merged with ``overrides``.

    Returns a dict with ``description``, ``basis_table``, ``kpoints_spacing`` (1/A, 2*pi incl.),
    ``kpoints_max`` and ``parameters`` (OpenMX keyword -> value, ready for :func:`write_input`).
    A protocol may say ``inherits: <other>``; its own settings are merged over the other's.
    """
    data = _load_protocol_file()
    protocols = data["protocols"]
    name = name or data.get("default_protocol", "moderate")
    if name not in protocols:
        raise ProtocolError(f"unknown OpenMX protocol {name!r}; known protocols: {', '.join(protocols)}")

    def resolve(n, chain=()):
        if n in chain:
            raise ProtocolError(f"protocol inheritance loop: {' -> '.join(chain + (n,))}")
        if n not in protocols:
            raise ProtocolError(f"protocol {chain[-1]!r} inherits unknown protocol {n!r}")
        p = dict(protocols[n])
        parent = p.pop("inherits", None)
        return recursive_merge(resolve(parent, chain + (n,)), p) if parent else p

    proto = resolve(name)
    proto["name"] = name
    if overrides:
        unknown = sorted(set(overrides) - set(PROTOCOL_OVERRIDE_KEYS))
        if unknown:
            raise ProtocolError(f"unknown protocol override key(s) {', '.join(map(repr, unknown))}; allowed: "
                                   f"{', '.join(PROTOCOL_OVERRIDE_KEYS)} (OpenMX keywords go under 'parameters')")
        proto = recursive_merge(proto, overrides)
    return proto
