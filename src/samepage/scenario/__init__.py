"""Scenario files (TOML) and traces (JSON Lines): schema, loader and trace I/O."""

from .errors import ScenarioError
from .loader import load_scenario, load_scenario_text
from .schema import (
    EventCfg,
    ThreadCfg,
    ThreadOpCfg,
    MachineCfg,
    ModelCfg,
    PatternFill,
    ProcessCfg,
    RegionCfg,
    RunCfg,
    Scenario,
    TokensFill,
    UniqueFill,
    ZeroFill,
)
from .trace import (
    COUNTER_NAMES,
    PROCESS_KEYS,
    format_batch_record,
    format_final_record,
    read_trace,
    write_trace_jsonl,
)
from .tunables import TUNABLE_DEFAULTS, TUNABLE_RANGES, TUNABLES

__all__ = [
    "COUNTER_NAMES",
    "EventCfg",
    "ThreadCfg",
    "ThreadOpCfg",
    "MachineCfg",
    "ModelCfg",
    "PROCESS_KEYS",
    "PatternFill",
    "ProcessCfg",
    "RegionCfg",
    "RunCfg",
    "Scenario",
    "ScenarioError",
    "TUNABLES",
    "TUNABLE_DEFAULTS",
    "TUNABLE_RANGES",
    "TokensFill",
    "UniqueFill",
    "ZeroFill",
    "format_batch_record",
    "format_final_record",
    "load_scenario",
    "load_scenario_text",
    "read_trace",
    "write_trace_jsonl",
]
