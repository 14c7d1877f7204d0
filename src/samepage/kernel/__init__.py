"""The live-kernel harness: run a scenario on this machine's real KSM and record its trace.

Public API:

* ``run_scenario_on_kernel(scenario, *, progress=None, lock_timeout=None, drain_lru=True,
  info=None) -> (records, final)`` -- the whole set-up / batch / event / final sequence of
  the scenario contract (samepage.kernel.runner);
* ``check_scenario(scenario)`` -- ValueError if the harness cannot record it reliably
  (e.g. sleep_millisecs < 100);
* ``ksm_lock(timeout=None)`` -- the machine-wide lock every KSM writer holds;
* ``ksm_writable()``, ``read_counters()``, ``write_tunable(name, value)``,
  ``save_settings()`` / ``restore_settings(saved)``, ``read_ksm_stat(pid)`` (sysfs);
* ``python -m samepage.kernel.record SCENARIO.toml -o TRACE.jsonl`` (record).

How batches are told apart, the per-CPU LRU drain and other observations of the real kernel
are written up in docs/kernel-findings.md.
"""

from .ksmd import KsmdError
from .lock import KsmLockTimeout, ksm_lock
from .runner import MIN_SLEEP_MS, Terminated, UnreliableTrace, check_scenario, run_scenario_on_kernel
from .sysfs import (
    ksm_writable,
    read_counters,
    read_ksm_stat,
    restore_settings,
    save_settings,
    write_tunable,
)

__all__ = [
    "KsmLockTimeout",
    "KsmdError",
    "MIN_SLEEP_MS",
    "Terminated",
    "UnreliableTrace",
    "check_scenario",
    "ksm_lock",
    "ksm_writable",
    "read_counters",
    "read_ksm_stat",
    "restore_settings",
    "run_scenario_on_kernel",
    "save_settings",
    "write_tunable",
]
