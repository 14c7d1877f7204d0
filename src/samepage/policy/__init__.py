"""KSM tuning policies: the daemons that set /sys/kernel/mm/ksm from memory pressure,
each acting on the model only through what the real one reads and writes (samepage.policy
.base). Built in: ksmtuned (debian, fedora and proxmox variants), mom, kubevirt, harvester,
kata and advisor (the kernel's scan-time advisor); a user's own: ``FILE.py:Class``."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from .advisor import Advisor
from .base import HostView, Policy, PolicyError, ProcInfo
from .harvester import Harvester
from .kata import Kata
from .ksmtuned import Ksmtuned
from .kubevirt import KubeVirt
from .mom import Mom

BUILTIN: dict[str, type[Policy]] = {c.name: c for c in
                                    (Ksmtuned, Mom, KubeVirt, Harvester, Kata, Advisor)}
#: Named presets: a built-in policy with options (``--policy proxmox``).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "proxmox": ("ksmtuned", {"variant": "proxmox"}),
}
#: What ``--policy all`` compares (besides "none": the scenario's own settings).
COMPARED = ("ksmtuned", "proxmox", "mom", "kubevirt", "harvester", "kata", "advisor")

__all__ = ["BUILTIN", "COMPARED", "HostView", "Policy", "PolicyError", "PolicyFileError", "ProcInfo",
           "load_policy", "policy_names"]


def policy_names() -> list[str]:
    return sorted([*BUILTIN, *PRESETS, "none"])


class PolicyFileError(ValueError):
    """A user policy file that cannot be loaded: ``file`` and a message."""

    def __init__(self, file: str, msg: str):
        super().__init__(f"{file}: {msg}")
        self.file = file
        self.msg = msg


def load_class(spec: str) -> type[Policy]:
    """``FILE.py:Class`` -> the class (a Policy subclass, or any class with ``step``)."""
    path, _, cls_name = spec.rpartition(":")
    if not path or not cls_name:
        raise PolicyFileError(spec, "expected FILE.py:ClassName")
    if not os.path.isfile(path):
        raise PolicyFileError(path, "no such file")
    mod_name = "samepage_user_policy_" + str(abs(hash(os.path.abspath(path))))
    try:
        s = importlib.util.spec_from_file_location(mod_name, path)
        if s is None or s.loader is None:
            raise PolicyFileError(path, "not a Python file")
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
    except PolicyFileError:
        raise
    except Exception as e:        # the user's code: any error becomes one line
        raise PolicyFileError(path, f"cannot load: {type(e).__name__}: {e}") from None
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise PolicyFileError(path, f"no class {cls_name!r}")
    if not isinstance(cls, type) or not issubclass(cls, Policy):
        raise PolicyFileError(path, f"{cls_name!r} is not a subclass of "
                                    "samepage.policy.Policy")
    return cls


def load_policy(name: str, options: dict[str, Any] | None = None) -> Policy | None:
    """A policy by name (built-in, preset, ``FILE.py:Class``) with options; None for
    "none". Raises PolicyError (bad name or option) or PolicyFileError."""
    opts = dict(options or {})
    if name == "none":
        if opts:
            raise PolicyError(next(iter(opts)), 'policy "none" takes no options')
        return None
    if name in PRESETS:
        base, preset = PRESETS[name]
        cls = BUILTIN[base]
        opts = {**preset, **opts}
    elif name in BUILTIN:
        cls = BUILTIN[name]
    elif ":" in name and name.split(":")[0].endswith(".py"):
        cls = load_class(name)
    else:
        raise PolicyError("name", f"unknown policy {name!r} (one of "
                                  f"{', '.join(policy_names())}, or FILE.py:Class)")
    try:
        pol = cls(**opts)
    except (PolicyError, PolicyFileError):
        raise
    except Exception as e:
        raise PolicyError("name", f"{name}: {type(e).__name__}: {e}") from None
    if name in PRESETS:
        pol.label = name
    return pol
