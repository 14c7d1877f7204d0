"""Pydantic models of a scenario file (the contract: docs/scenario-format.md).

Validation errors are raised as pydantic ValidationErrors; loader.py turns them into
ScenarioError. Checks that need a precise key path raise ``PydanticCustomError("scenario")``
whose context carries ``sub``, the key path below the validated object.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .limits import USER_ADDRESS_SPACE_PAGES, show_count
from .tunables import U64_MAX, TunableError, _show, check_tunable

FILL_KINDS = ("zero", "pattern", "unique", "tokens")
UNIQUE_BASE = 2**40
UNIQUE_SEED_STRIDE = 10_000_000
#: Longest simulated time (ms) a scenario may name: about 31 years, as trace t_ms.
MAX_SIM_MS = 1e12


def _fail(msg: str, *sub: str | int) -> None:
    """Raise a validation error at key path ``sub`` below the object being validated."""
    raise PydanticCustomError("scenario", "{msg}", {"msg": msg, "sub": tuple(sub)})


class _Model(BaseModel):
    # One spelling per key: a field with an alias (process, region, event, thread) is read
    # only by its alias, never by its Python name.
    model_config = ConfigDict(extra="forbid", strict=True)


Name = Annotated[str, Field(min_length=1)]
Token = Annotated[int, Field(ge=0, le=U64_MAX)]
PageIndex = Annotated[int, Field(ge=0)]


# --------------------------------------------------------------------------- fills


class ZeroFill(_Model):
    """Every page holds token 0 (4096 zero bytes, still allocated)."""

    kind: Literal["zero"] = "zero"

    def token(self, i: int) -> int:
        return 0

    def page_tokens(self, n_pages: int) -> list[int]:
        return [0] * n_pages


class PatternFill(_Model):
    """Page i holds ``(i % distinct) + 1 + offset``."""

    kind: Literal["pattern"] = "pattern"
    distinct: Annotated[int, Field(ge=1)]
    offset: Annotated[int, Field(ge=0)] = 0

    def token(self, i: int) -> int:
        return (i % self.distinct) + 1 + self.offset

    def page_tokens(self, n_pages: int) -> list[int]:
        return [self.token(i) for i in range(n_pages)]


class UniqueFill(_Model):
    """Page i holds ``2**40 + seed * 10_000_000 + i`` (distinct seeds give disjoint pages)."""

    kind: Literal["unique"] = "unique"
    seed: Annotated[int, Field(ge=0)] = 0

    def token(self, i: int) -> int:
        return UNIQUE_BASE + self.seed * UNIQUE_SEED_STRIDE + i

    def page_tokens(self, n_pages: int) -> list[int]:
        base = UNIQUE_BASE + self.seed * UNIQUE_SEED_STRIDE
        return list(range(base, base + n_pages))


class TokensFill(_Model):
    """Page i holds ``tokens[i]`` (exactly one token per page)."""

    kind: Literal["tokens"] = "tokens"
    tokens: list[Token]

    def token(self, i: int) -> int:
        return self.tokens[i]

    def page_tokens(self, n_pages: int) -> list[int]:
        return list(self.tokens[:n_pages])


FillCfg = Annotated[Union[ZeroFill, PatternFill, UniqueFill, TokensFill], Field(discriminator="kind")]


# --------------------------------------------------------------------------- machine, model


#: Anonymous large-folio sizes of Linux 6.18 on x86-64 (KiB): the hugepages-<size>kB
#: directories of /sys/kernel/mm/transparent_hugepage, order 2 (16 KiB) to the PMD order
#: (2048 KiB). Order 1 is never used for anonymous memory (THP_ORDERS_ALL_ANON).
MTHP_SIZES_KB = (16, 32, 64, 128, 256, 512, 1024, 2048)


def _check_mthp(kb: int) -> int:
    if kb not in MTHP_SIZES_KB:
        why = " (Linux makes no 8 KiB anonymous folio)" if kb == 8 else ""
        raise ValueError(f"must be a power of two between 16 and 2048 (got {kb}){why}")
    return kb


class MachineCfg(_Model):
    """``[machine]``: numa_nodes (model only), thp (None = leave the machine's setting),
    mthp_kb (anonymous large-folio sizes in KiB to enable, each in MTHP_SIZES_KB)."""

    numa_nodes: Annotated[int, Field(ge=1, le=64)] = 1
    thp: Literal["always", "madvise", "never"] | None = None
    mthp_kb: list[Annotated[int, AfterValidator(_check_mthp)]] = Field(default_factory=list)
    # host memory (model only; samepage.mm.meminfo): RAM, memory used outside the scenario,
    # page cache (Cached); None: no host memory model (a policy then cannot run)
    memory_mb: Annotated[int, Field(ge=1, le=1 << 32)] | None = None
    baseline_mb: Annotated[int, Field(ge=0, le=1 << 32)] = 0
    cached_mb: Annotated[int, Field(ge=0, le=1 << 32)] = 0

    @model_validator(mode="after")
    def _check_host(self) -> MachineCfg:
        if self.memory_mb is None:
            for key in ("baseline_mb", "cached_mb"):
                if getattr(self, key):
                    _fail("needs machine.memory_mb (the host's RAM)", key)
        elif self.baseline_mb + self.cached_mb >= self.memory_mb:
            _fail(f"baseline_mb + cached_mb ({self.baseline_mb + self.cached_mb}) must be < "
                  f"memory_mb ({self.memory_mb})", "baseline_mb")
        return self

    @field_validator("mthp_kb")
    @classmethod
    def _unique_sizes(cls, sizes: list[int]) -> list[int]:
        for i, kb in enumerate(sizes):
            if kb in sizes[:i]:
                _fail(f"duplicate size {kb}", i)
        return sizes


class ModelCfg(_Model):
    """``[model]``: options of the model only (the kernel harness ignores them).

    same_folio: how a merge of two pages of the same large folio is handled (ksm-spec §5):
    "v6.18" (current code), "early-put" (drop the tree_page reference first) or "split-retry"
    (split, then retry the unstable-tree search); split_zero_remap: a THP split remaps its
    zero-filled subpages to the shared zero page (ksm-spec §4.11.4); costs: a CPU cost profile
    (samepage.ksm.costs; relative to the scenario file), default the shipped one.
    """

    same_folio: Literal["v6.18", "early-put", "split-retry"] = "v6.18"
    split_zero_remap: bool = True
    costs: Union[str, None] = None


# --------------------------------------------------------------------------- processes


def _check_pages(n: int) -> int:
    if n > USER_ADDRESS_SPACE_PAGES:
        raise ValueError(f"{show_count(n)} pages do not fit in the 128 TiB user address space "
                         "(mmap: ENOMEM)")
    return n


class RegionCfg(_Model):
    """``[[process.region]]``: one mapping of ``pages`` 4 KiB pages.

    thp: "huge" (MADV_HUGEPAGE, 2 MiB aligned), "nohuge" (MADV_NOHUGEPAGE) or "default";
    mergeable (default true): MADV_MERGEABLE at set-up; fill: the initial page contents.
    """

    name: Name
    pages: Annotated[int, Field(ge=1), AfterValidator(_check_pages)]
    thp: Literal["huge", "nohuge", "default"] = "default"
    mergeable: bool = True
    fill: FillCfg

    @model_validator(mode="after")
    def _check_fill(self) -> RegionCfg:
        f, n = self.fill, self.pages
        if isinstance(f, TokensFill) and len(f.tokens) != n:
            _fail(f"must have exactly {n} entries, one per page (got {len(f.tokens)})", "fill", "tokens")
        if isinstance(f, PatternFill) and min(f.distinct, n) + f.offset > U64_MAX:
            _fail("largest token exceeds 2**64-1", "fill", "offset")
        if isinstance(f, UniqueFill) and f.token(n - 1) > U64_MAX:
            _fail("largest token exceeds 2**64-1", "fill", "seed")
        return self

    def tokens(self) -> list[int]:
        """The token of every page of the region, by the fill rules."""
        return self.fill.page_tokens(self.pages)


class ProcessCfg(_Model):
    """``[[process]]``: merge_any = prctl(PR_SET_MEMORY_MERGE, 1) before mapping anything;
    numa_node (model only) must be < machine.numa_nodes; regions may be empty."""

    name: Name
    merge_any: bool = False
    numa_node: Annotated[int, Field(ge=0)] = 0
    regions: list[RegionCfg] = Field(default_factory=list, alias="region")

    @model_validator(mode="after")
    def _unique_regions(self) -> ProcessCfg:
        seen: set[str] = set()
        total = 0
        for j, r in enumerate(self.regions):
            if r.name in seen:
                _fail(f"duplicate region name {_show(r.name)} in process {_show(self.name)}", "region", j, "name")
            seen.add(r.name)
            total += r.pages
            if total > USER_ADDRESS_SPACE_PAGES:
                _fail(f"the process's regions need {show_count(total)} pages in all, more than "
                      "the 128 TiB user address space (mmap: ENOMEM)", "region", j, "pages")
        return self


# --------------------------------------------------------------------------- events

EVENT_OPS = ("write", "zap", "mergeable", "unmergeable", "munmap", "fork", "exit", "merge_any", "set")
_EVENT_KEYS = ("region", "pages", "range", "token", "child", "value", "tunable")
#: op -> required keys; "pages|range" means exactly one of the two.
OP_KEYS: dict[str, tuple[str, ...]] = {
    "write": ("region", "pages|range", "token"),
    "zap": ("region", "pages|range"),
    "mergeable": ("region",),
    "unmergeable": ("region",),
    "munmap": ("region",),
    "fork": ("child",),
    "exit": (),
    "merge_any": ("value",),
    "set": ("tunable", "value"),
}


def _check_op_keys(obj, keys: tuple[str, ...]) -> None:
    """The keys an op requires are present, the others absent; a range is [start, stop)."""
    op = obj.op
    required = OP_KEYS[op]
    allowed = {k for spec in required for k in spec.split("|")}
    for key in keys:
        if getattr(obj, key) is not None and key not in allowed:
            _fail(f"not allowed for op '{op}'", key)
    for spec in required:
        if spec == "pages|range":
            if obj.pages is not None and obj.range is not None:
                _fail("give either pages or range, not both", "range")
            if obj.pages is None and obj.range is None:
                _fail(f"required for op '{op}' (or range)", "pages")
        elif getattr(obj, spec) is None:
            _fail(f"required for op '{op}'", spec)
    if obj.range is not None and obj.range[0] >= obj.range[1]:
        _fail(f"start must be < stop (got [{obj.range[0]}, {obj.range[1]}])", "range")


class EventCfg(_Model):
    """``[[event]]``: applied after batch ``after_batch`` (1-based) while ksmd sleeps, or
    (``at_ms``, model only) at a simulated time: before the first batch that starts at or
    after ``at_ms`` ms from ``run = 1``. Exactly one of the two; a scenario's events use one
    clock (mixing them would leave their order unknown until run time).

    Events with the same after_batch (at_ms) apply in file order. ``range`` is [start, stop).
    ``process`` is required for every op but ``set`` (a sysfs write belongs to no process).
    For ``set``, ``value`` is normalised (booleans become 0/1).
    """

    after_batch: Annotated[int, Field(ge=1)] | None = None
    at_ms: Annotated[float, Field(ge=0, le=MAX_SIM_MS, allow_inf_nan=False)] | None = None
    process: Name | None = None
    op: Literal["write", "zap", "mergeable", "unmergeable", "munmap", "fork", "exit", "merge_any", "set"]
    region: Name | None = None
    pages: Annotated[list[PageIndex], Field(min_length=1)] | None = None
    range: Annotated[list[PageIndex], Field(min_length=2, max_length=2)] | None = None
    token: Token | None = None
    child: Name | None = None
    value: Any = None
    tunable: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _value_type(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, (bool, int, str)):
            raise PydanticCustomError("scenario", "{msg}", {"msg": f"must be a boolean, an integer or a string (got {_show(v)})", "sub": ()})
        return v

    @model_validator(mode="after")
    def _check_op(self) -> EventCfg:
        op = self.op
        if self.after_batch is None and self.at_ms is None:
            _fail("missing required key (or at_ms, a simulated time, model only)", "after_batch")
        if self.after_batch is not None and self.at_ms is not None:
            _fail("give either after_batch or at_ms, not both", "at_ms")
        if self.process is None and op != "set":
            _fail(f"required for op '{op}'", "process")
        _check_op_keys(self, _EVENT_KEYS)
        if op == "merge_any" and not isinstance(self.value, bool):
            _fail(f"must be a boolean (got {_show(self.value)})", "value")
        if op == "set":
            try:
                self.value = check_tunable(self.tunable, self.value, in_ksm_table=False)
            except TunableError as e:
                _fail(e.msg, "tunable" if e.part == "name" else "value")
        return self

    @property
    def when(self) -> str:
        """"after batch N" or "at T ms", for messages."""
        if self.at_ms is not None:
            return f"at {self.at_ms:g} ms"
        return f"after batch {self.after_batch}"

    def page_indices(self, n_pages: int) -> list[int]:
        """The pages this event touches: ``pages``, or ``range(start, stop)``, or the whole
        region (``range(n_pages)``) when the op takes neither. Raises ValueError if an index
        is not below n_pages."""
        if self.pages is not None:
            idx = list(self.pages)
        elif self.range is not None:
            idx = list(range(self.range[0], self.range[1]))
        else:
            idx = list(range(n_pages))
        bad = [i for i in idx if not 0 <= i < n_pages]
        if bad:
            raise ValueError(f"page {bad[0]} is outside the region ({n_pages} pages)")
        return idx


class RewriteCfg(_Model):
    """``[[rewrite]]`` (model only): time-based dynamics. ``process`` rewrites pages of
    ``region`` (``pages``, ``range``, or the whole region) over and over in simulated time:
    ``every_ms`` rewrites every page of the set once per period (at start_ms + every_ms,
    start_ms + 2 every_ms, ...); ``rate_per_s`` makes that many page writes per second, spread
    evenly, round robin over the set. Each write stores ``token`` if given, else a fresh token
    never used before (samepage.scenario.dynamics.FRESH_TOKEN_BASE upwards). Writes fall due
    while ksmd sleeps and are applied before the next batch; they stop when the process exits
    or the region is unmapped."""

    process: Name
    region: Name
    pages: Annotated[list[PageIndex], Field(min_length=1)] | None = None
    range: Annotated[list[PageIndex], Field(min_length=2, max_length=2)] | None = None
    every_ms: Annotated[float, Field(gt=0, le=MAX_SIM_MS, allow_inf_nan=False)] | None = None
    rate_per_s: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)] | None = None
    start_ms: Annotated[float, Field(ge=0, le=MAX_SIM_MS, allow_inf_nan=False)] = 0.0
    token: Token | None = None

    @model_validator(mode="after")
    def _check(self) -> RewriteCfg:
        if self.every_ms is None and self.rate_per_s is None:
            _fail("required (or rate_per_s)", "every_ms")
        if self.every_ms is not None and self.rate_per_s is not None:
            _fail("give either every_ms or rate_per_s, not both", "rate_per_s")
        if self.pages is not None and self.range is not None:
            _fail("give either pages or range, not both", "range")
        if self.range is not None and self.range[0] >= self.range[1]:
            _fail(f"start must be < stop (got [{self.range[0]}, {self.range[1]}])", "range")
        return self

    def page_indices(self, n_pages: int) -> list[int]:
        """As EventCfg.page_indices (the whole region when neither pages nor range)."""
        return EventCfg.page_indices(self, n_pages)  # type: ignore[arg-type]


THREAD_OPS = ("write", "zap", "unmergeable", "munmap", "fork", "exit")


class ThreadOpCfg(_Model):
    """One operation of a ``[[thread]]`` (an inline table): the event vocabulary (``write``,
    ``zap``, ``mergeable``, ``unmergeable`` (an unmerge path), ``munmap``, ``fork``, ``exit``,
    ``merge_any`` (prctl) and ``set`` (a sysfs write, e.g. ``run = 2``)), with the same keys."""

    op: Literal["write", "zap", "mergeable", "unmergeable", "munmap", "fork", "exit",
                "merge_any", "set"]
    region: Name | None = None
    pages: Annotated[list[PageIndex], Field(min_length=1)] | None = None
    range: Annotated[list[PageIndex], Field(min_length=2, max_length=2)] | None = None
    token: Token | None = None
    child: Name | None = None
    value: bool | int | str | None = None
    tunable: str | None = None

    @model_validator(mode="after")
    def _check_op(self) -> ThreadOpCfg:
        _check_op_keys(self, ("region", "pages", "range", "token", "child", "value",
                              "tunable"))
        if self.op == "merge_any" and not isinstance(self.value, bool):
            _fail(f"must be a boolean (got {_show(self.value)})", "value")
        if self.op == "set":
            try:
                self.value = check_tunable(self.tunable, self.value, in_ksm_table=False)
            except TunableError as e:
                _fail(e.msg, "tunable" if e.part == "name" else "value")
        return self

    def page_indices(self, n_pages: int) -> list[int]:
        """As EventCfg.page_indices."""
        return EventCfg.page_indices(self, n_pages)  # type: ignore[arg-type]

    def describe(self) -> str:
        parts = [self.op]
        if self.region is not None:
            parts.append(self.region)
        if self.pages is not None:
            parts.append(f"pages={self.pages}")
        if self.range is not None:
            parts.append(f"range={self.range}")
        if self.token is not None:
            parts.append(f"token={self.token}")
        if self.child is not None:
            parts.append(f"child={self.child}")
        if self.tunable is not None:
            parts.append(f"{self.tunable}={self.value}")
        elif self.value is not None:
            parts.append(f"value={self.value}")
        return " ".join(parts)


class ThreadCfg(_Model):
    """``[[thread]]`` (samepage extension, used only by ``samepage explore``): a user thread
    of ``process`` that runs ``ops`` one by one, each an atomic system call, at preemption
    points of ksmd chosen by the explorer; it starts once ``after_batch`` ksmd batches have
    completed (0: from the start)."""

    name: Name
    process: Name
    after_batch: Annotated[int, Field(ge=0)] = 0
    ops: Annotated[list[ThreadOpCfg], Field(min_length=1)]


class PolicyCfg(BaseModel):
    """``[policy]`` (model only): a KSM tuning daemon (samepage.policy) run in simulated
    time for ``duration_s`` seconds; every other key is an option of that policy."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: Name
    duration_s: Annotated[float, Field(gt=0, le=MAX_SIM_MS / 1000, allow_inf_nan=False)] = 600.0
    sample_s: Annotated[float, Field(gt=0, le=MAX_SIM_MS / 1000, allow_inf_nan=False)] | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check_policy(self) -> PolicyCfg:
        if ":" in self.name:          # FILE.py:Class, loaded (relative to the file) when run
            return self
        from samepage.policy import PolicyError, load_policy
        try:
            load_policy(self.name, self.options)
        except PolicyError as e:
            _fail(e.msg, e.key)
        return self


class RunCfg(_Model):
    """``[run]``: how many ksmd batches to record."""

    batches: Annotated[int, Field(ge=1)]


# --------------------------------------------------------------------------- scenario


def _check_ksm_table(table: Any) -> dict[str, int | str]:
    if not isinstance(table, dict):
        _fail(f"must be a table (got {_show(table)})")
    out: dict[str, int | str] = {}
    for name, value in table.items():
        try:
            out[name] = check_tunable(name, value, in_ksm_table=True)
        except TunableError as e:
            _fail(e.msg, name)
    if out.get("advisor_mode") == "scan-time" and "pages_to_scan" in out:
        _fail('cannot be combined with advisor_mode = "scan-time" (the advisor sets pages_to_scan; '
              "use advisor_min_pages_to_scan)", "pages_to_scan")
    return out


class Scenario(_Model):
    """A whole scenario file. ``path`` is set by load_scenario (not a TOML key).

    ``ksm`` holds the ``[ksm]`` table in file order, normalised (booleans become 0/1);
    ``run`` is not allowed there. ``events`` are in file order; use sorted_events() or
    events_after() for the order they apply in.
    """

    path: str | None = None
    name: str | None = None
    description: str | None = None
    ksm: dict[str, int | str] = Field(default_factory=dict)
    machine: MachineCfg = Field(default_factory=MachineCfg)
    model: ModelCfg = Field(default_factory=ModelCfg)
    processes: list[ProcessCfg] = Field(default_factory=list, alias="process")
    events: list[EventCfg] = Field(default_factory=list, alias="event")
    threads: list[ThreadCfg] = Field(default_factory=list, alias="thread")
    rewrites: list[RewriteCfg] = Field(default_factory=list, alias="rewrite")
    policy: PolicyCfg | None = None
    run: RunCfg

    _process_order: list[str] = PrivateAttr(default_factory=list)
    _regions: dict[str, dict[str, RegionCfg]] = PrivateAttr(default_factory=dict)
    _parent: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("ksm", mode="before")
    @classmethod
    def _ksm(cls, table: Any) -> dict[str, int | str]:
        return _check_ksm_table(table)

    @model_validator(mode="after")
    def _cross_check(self) -> Scenario:
        names: set[str] = set()
        regions: dict[str, dict[str, RegionCfg]] = {}
        for i, p in enumerate(self.processes):
            if p.name in names:
                _fail(f"duplicate process name {_show(p.name)}", "process", i, "name")
            if p.numa_node >= self.machine.numa_nodes:
                _fail(f"must be < machine.numa_nodes = {self.machine.numa_nodes} (got {p.numa_node})",
                      "process", i, "numa_node")
            names.add(p.name)
            regions[p.name] = {r.name: r for r in p.regions}
        timed = [k for k, ev in enumerate(self.events) if ev.at_ms is not None]
        if timed and len(timed) != len(self.events):
            k = timed[0] if self.events[0].at_ms is None else \
                next(k for k, ev in enumerate(self.events) if ev.at_ms is None)
            key = "at_ms" if self.events[k].at_ms is not None else "after_batch"
            _fail("a scenario's events are either all after_batch or all at_ms (the order "
                  "of the two kinds is known only when run)", "event", k, key)
        for k, ev in enumerate(self.events):
            if ev.after_batch is not None and ev.after_batch > self.run.batches:
                _fail(f"must be <= run.batches = {self.run.batches} (got {ev.after_batch})",
                      "event", k, "after_batch")

        order = self._sorted_indexed()
        forked_by: dict[str, int] = {}
        for k, ev in order:
            if ev.op == "fork":
                forked_by.setdefault(ev.child, k)
        process_order = [p.name for p in self.processes]
        created = {n: dict(r) for n, r in regions.items()}
        parent: dict[str, str] = {}
        alive = set(names)
        exited_by: dict[str, int] = {}
        unmapped_by: dict[tuple[str, str], int] = {}
        advisor = self.ksm.get("advisor_mode", "none")
        for k, ev in order:
            p = ev.process
            if p is None:  # a set event that names no process
                pass
            elif p not in alive:
                if p in exited_by:
                    j = exited_by[p]
                    msg = f"process {_show(p)} has exited (event[{j}], {self.events[j].when})"
                elif p in forked_by:
                    j = forked_by[p]
                    msg = (f"process {_show(p)} does not exist yet: event[{j}] forks it "
                           f"{self.events[j].when}")
                else:
                    msg = f"unknown process {_show(p)}"
                _fail(msg, "event", k, "process")
            mapped = regions.get(p, {})
            if ev.region is not None:
                r = mapped.get(ev.region)
                if r is None:
                    if (p, ev.region) in unmapped_by:
                        msg = (f"region {_show(ev.region)} of process {_show(p)} was unmapped "
                               f"by event[{unmapped_by[p, ev.region]}]")
                    else:
                        msg = f"process {_show(p)} has no region {_show(ev.region)}"
                    _fail(msg, "event", k, "region")
                if ev.pages is not None:
                    for i in ev.pages:
                        if i >= r.pages:
                            _fail(f"page {i} is outside region {_show(r.name)} ({r.pages} pages)",
                                  "event", k, "pages")
                if ev.range is not None and ev.range[1] > r.pages:
                    _fail(f"range [{ev.range[0]}, {ev.range[1]}) is outside region {_show(r.name)} "
                          f"({r.pages} pages)", "event", k, "range")
            if ev.op == "munmap":
                del mapped[ev.region]
                unmapped_by[p, ev.region] = k
            elif ev.op == "fork":
                c = ev.child
                if c in names:
                    _fail(f"process name {_show(c)} is already used", "event", k, "child")
                names.add(c)
                alive.add(c)
                regions[c] = dict(mapped)
                created[c] = dict(mapped)
                parent[c] = p
                process_order.append(c)
            elif ev.op == "exit":
                alive.discard(p)
                exited_by[p] = k
            elif ev.op == "set":
                if ev.tunable == "pages_to_scan" and advisor == "scan-time":
                    _fail('pages_to_scan cannot be written while advisor_mode is "scan-time" '
                          "(the kernel returns EINVAL)", "event", k, "tunable")
                if ev.tunable == "advisor_mode":
                    advisor = ev.value
        self._process_order = process_order
        self._regions = created
        self._parent = parent
        self._check_threads(names)
        self._check_rewrites(regions)
        return self

    def _check_rewrites(self, regions: dict[str, dict[str, RegionCfg]]) -> None:
        for k, rw in enumerate(self.rewrites):
            if self.find_process(rw.process) is None:
                _fail(f"unknown process {_show(rw.process)} (a [[process]]; forked children "
                      "cannot be named)", "rewrite", k, "process")
            r = self.find_region(rw.process, rw.region)
            if r is None:
                _fail(f"process {_show(rw.process)} has no region {_show(rw.region)}",
                      "rewrite", k, "region")
            if rw.pages is not None:
                for i in rw.pages:
                    if i >= r.pages:
                        _fail(f"page {i} is outside region {_show(r.name)} ({r.pages} pages)",
                              "rewrite", k, "pages")
            if rw.range is not None and rw.range[1] > r.pages:
                _fail(f"range [{rw.range[0]}, {rw.range[1]}) is outside region {_show(r.name)} "
                      f"({r.pages} pages)", "rewrite", k, "range")

    @property
    def timed(self) -> bool:
        """True if the scenario has time-based dynamics (at_ms events or [[rewrite]]s),
        which only the model runs."""
        return bool(self.rewrites) or any(ev.at_ms is not None for ev in self.events)

    def _check_threads(self, names: set[str]) -> None:
        seen: set[str] = set()
        processes = set(names)  # a thread runs in a [[process]] or an event-forked child
        for t, th in enumerate(self.threads):
            if th.name in seen:
                _fail(f"duplicate thread name {_show(th.name)}", "thread", t, "name")
            seen.add(th.name)
            if th.process not in processes:
                _fail(f"unknown process {_show(th.process)}", "thread", t, "process")
            if th.after_batch > self.run.batches:
                _fail(f"must be <= run.batches = {self.run.batches} (got {th.after_batch})",
                      "thread", t, "after_batch")
            regions = self._regions.get(th.process, {})
            for k, op in enumerate(th.ops):
                if op.op == "fork":
                    if op.child in names:
                        _fail(f"process name {_show(op.child)} is already used",
                              "thread", t, "ops", k, "child")
                    names.add(op.child)  # unique across [[process]], events and threads
                if op.region is None:
                    continue
                r = regions.get(op.region)
                if r is None:
                    _fail(f"process {_show(th.process)} has no region {_show(op.region)}",
                          "thread", t, "ops", k, "region")
                if op.pages is not None:
                    for i in op.pages:
                        if i >= r.pages:
                            _fail(f"page {i} is outside region {_show(r.name)} "
                                  f"({r.pages} pages)", "thread", t, "ops", k, "pages")
                if op.range is not None and op.range[1] > r.pages:
                    _fail(f"range [{op.range[0]}, {op.range[1]}) is outside region "
                          f"{_show(r.name)} ({r.pages} pages)", "thread", t, "ops", k, "range")

    # ------------------------------------------------------------------ helpers

    def _sorted_indexed(self) -> list[tuple[int, EventCfg]]:
        return sorted(enumerate(self.events), key=lambda t: _event_key(t[1]))

    def sorted_events(self) -> list[EventCfg]:
        """Events in the order they apply: by after_batch (or at_ms), then file order."""
        return [ev for _, ev in self._sorted_indexed()]

    def events_after(self, batch: int) -> list[EventCfg]:
        """The events to apply after batch ``batch`` (1-based), in file order."""
        return [ev for ev in self.events if ev.after_batch == batch and ev.at_ms is None]

    def process_names(self) -> list[str]:
        """Every process name: the [[process]] ones in file order, then forked children in
        the order they are created."""
        return list(self._process_order)

    def find_process(self, name: str) -> ProcessCfg | None:
        """The [[process]] table called ``name`` (None for forked children and unknown names)."""
        return next((p for p in self.processes if p.name == name), None)

    def parent_of(self, name: str) -> str | None:
        """The process a forked child was forked from (None if not a forked child)."""
        return self._parent.get(name)

    def find_region(self, process_name: str, region_name: str) -> RegionCfg | None:
        """The region ``region_name`` of a process as it exists when the process is created
        (a forked child has the regions its parent still had mapped at the fork), or None."""
        return self._regions.get(process_name, {}).get(region_name)


def _event_key(ev: EventCfg) -> float:
    """Sort key of an event: its batch or its time (a scenario never mixes the two)."""
    return ev.at_ms if ev.at_ms is not None else ev.after_batch
