"""The writable files of /sys/kernel/mm/ksm (Linux 6.18): kinds, defaults, load-time checks."""

from __future__ import annotations

import difflib

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
INT_MAX = 2**31 - 1

#: name -> kind ("int", "bool" = an integer 0/1, "str"), in the kernel's attribute order.
TUNABLES: dict[str, str] = {
    "run": "int",
    "pages_to_scan": "int",
    "sleep_millisecs": "int",
    "max_page_sharing": "int",
    "merge_across_nodes": "bool",
    "use_zero_pages": "bool",
    "smart_scan": "bool",
    "stable_node_chains_prune_millisecs": "int",
    "advisor_mode": "str",
    "advisor_max_cpu": "int",
    "advisor_min_pages_to_scan": "int",
    "advisor_max_pages_to_scan": "int",
    "advisor_target_scan_time": "int",
}

#: The kernel's boot-time value of every tunable.
TUNABLE_DEFAULTS: dict[str, int | str] = {
    "run": 0,
    "pages_to_scan": 100,
    "sleep_millisecs": 20,
    "max_page_sharing": 256,
    "merge_across_nodes": 1,
    "use_zero_pages": 0,
    "smart_scan": 1,
    "stable_node_chains_prune_millisecs": 2000,
    "advisor_mode": "none",
    "advisor_max_cpu": 70,
    "advisor_min_pages_to_scan": 500,
    "advisor_max_pages_to_scan": 30000,
    "advisor_target_scan_time": 200,
}

#: Accepted (min, max) of every integer tunable (what the kernel's store accepts).
TUNABLE_RANGES: dict[str, tuple[int, int]] = {
    "run": (0, 2),
    "pages_to_scan": (0, U32_MAX),
    "sleep_millisecs": (0, U32_MAX),
    "max_page_sharing": (2, INT_MAX),
    "merge_across_nodes": (0, 1),
    "use_zero_pages": (0, 1),
    "smart_scan": (0, 1),
    "stable_node_chains_prune_millisecs": (0, U32_MAX),
    "advisor_max_cpu": (0, U32_MAX),  # parsed as unsigned long, stored as unsigned int
    "advisor_min_pages_to_scan": (0, U64_MAX),
    "advisor_max_pages_to_scan": (0, U64_MAX),
    "advisor_target_scan_time": (1, U64_MAX),
}

ADVISOR_MODES = ("none", "scan-time")


class TunableError(ValueError):
    """A bad tunable; ``part`` is "name" or "value" (which key of the input is wrong)."""

    def __init__(self, part: str, msg: str) -> None:
        super().__init__(msg)
        self.part = part
        self.msg = msg


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def check_tunable(name: object, value: object, *, in_ksm_table: bool) -> int | str:
    """Validate one tunable write and return the value to write (TOML bools become 0/1).

    ``run`` is refused in the ``[ksm]`` table (set-up controls it) but allowed in ``set`` events.
    Raises TunableError.
    """
    if not isinstance(name, str):
        raise TunableError("name", "must be a string")
    kind = TUNABLES.get(name)
    if kind is None:
        near = difflib.get_close_matches(name, list(TUNABLES), n=1)
        why = f'did you mean "{near[0]}"?' if near else "not a writable file of /sys/kernel/mm/ksm"
        raise TunableError("name", f"unknown tunable {_show(name)} ({why})")
    if name == "run" and in_ksm_table:
        raise TunableError("name", "run is not allowed in [ksm]: set-up controls it (use a 'set' event)")
    if kind == "str":
        if not isinstance(value, str):
            raise TunableError("value", f"must be a string (got {_show(value)})")
        if value not in ADVISOR_MODES:
            raise TunableError("value", f'must be "none" or "scan-time" (got {_show(value)})')
        return value
    if isinstance(value, bool):
        if kind != "bool":
            raise TunableError("value", f"must be an integer (got {_show(value)})")
        value = int(value)
    if not isinstance(value, int):
        want = "0 or 1 (or a boolean)" if kind == "bool" else "an integer"
        raise TunableError("value", f"must be {want} (got {_show(value)})")
    lo, hi = TUNABLE_RANGES[name]
    if kind == "bool" and not lo <= value <= hi:
        raise TunableError("value", f"must be 0 or 1 (got {value})")
    if name == "run" and not lo <= value <= hi:
        raise TunableError("value", f"must be 0, 1 or 2 (got {value})")
    if value < lo:
        raise TunableError("value", f"must be >= {lo} (got {value})")
    if value > hi:
        raise TunableError("value", f"must be <= {hi} (got {value})")
    return value
