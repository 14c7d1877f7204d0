"""Limits of a scenario file, checked before any work is done.

* the file itself: at most MAX_FILE_BYTES, and a cheap pre-scan of the text (nesting depth,
  parts of a dotted key, digits of an integer) before tomllib, so that no input makes the
  parser recurse, allocate gigabytes or hit CPython's int-string limit;
* the address space: a process's regions fit in the x86-64 user address space (47 bits,
  128 TiB, TASK_SIZE), else mmap gives ENOMEM (checked by the schema, see schema.py);
* this machine: the model's memory for the scenario (estimate_model_bytes) fits in
  MemAvailable and RLIMIT_AS (check_resources);
* the work of a run, for progress bars (estimate_work).
"""

from __future__ import annotations

import re
import resource

from .errors import ScenarioError

#: Largest scenario file read (bytes). A 16 MiB file already lists 2 million page tokens.
MAX_FILE_BYTES = 16 * 2**20
#: Deepest nesting of arrays and inline tables (scenarios need 3: [[process.region]] fill).
MAX_TOML_DEPTH = 64
#: Most parts of one dotted key (``a.b.c`` has 3).
MAX_KEY_PARTS = 64
#: Most digits of one integer literal (the largest meaningful value, 2**64-1, has 20).
MAX_INT_DIGITS = 100

PAGE_SIZE = 4096
#: x86-64 user address space with 4-level page tables: TASK_SIZE_MAX = 2**47 - 4096.
USER_ADDRESS_SPACE = 2**47
USER_ADDRESS_SPACE_PAGES = USER_ADDRESS_SPACE // PAGE_SIZE

#: The model's memory, measured on samepage's Machine with two processes of 100,000 pages
#: each after a full scan (unique contents: page, folio, PTE, rmap_item, tree node):
#: about 380 bytes per simulated page (RSS growth).  Rounded up.
MODEL_BYTES_PER_PAGE = 400
#: ... per region (Vma, anon_vma, the region's tables) and per process (mm, ksm_mm_slot).
MODEL_BYTES_PER_REGION = 4096
MODEL_BYTES_PER_PROCESS = 16384
#: ... per recorded batch (the trace record kept for the report).
MODEL_BYTES_PER_BATCH = 1024
#: The interpreter and samepage itself (already allocated when the check runs).
MODEL_BASE_BYTES = 64 * 2**20
#: A scenario whose model needs less than this is never refused: MemAvailable of a shared
#: machine moves, and small scenarios must not fail by chance.
MODEL_ALWAYS_FITS_BYTES = 256 * 2**20


def human_bytes(n: float) -> str:
    """1234567 -> "1.2 MB" (decimal units, as free(1) -h --si)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.0f} EB"  # pragma: no cover


def show_count(n: int) -> str:
    """A big count as written by a person: 2**40, 10**12, else the number."""
    if n >= 1024 and n & (n - 1) == 0:
        return f"2**{n.bit_length() - 1}"
    if n >= 10**4:
        s = str(n)
        if s.strip("0") == "1":
            return f"10**{len(s) - 1}"
    return str(n)


# --------------------------------------------------------------------------- the text

# One token of interest: strings and comments are skipped as wholes (their insides are not
# TOML structure); then brackets, '=', ',' and newlines (where a key starts or ends), dots
# (a value has at most one: a float, a time), digit runs.
_TOKENS = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*"{3,5}'
    r"|'''(?:[^']|'(?!''))*'{3,5}"
    r'|"(?:[^"\\\n]|\\.)*"'
    r"|'[^'\n]*'"
    r"|#[^\n]*"
    r"|[\[\]{}=,\n.]"
    r"|[0-9][0-9_]*",
    re.S,
)


def prescan_toml(text: str, filename: str) -> None:
    """Refuse, cheaply and before tomllib, text that would make the parser recurse deeply
    (nesting > MAX_TOML_DEPTH), build a huge key (> MAX_KEY_PARTS dotted parts) or convert
    an integer of more than MAX_INT_DIGITS digits. Raises ScenarioError at key ``(toml)``."""
    depth = 0
    dots = 0          # dots since a key could last have started
    line = 1
    for m in _TOKENS.finditer(text):
        tok = m.group()
        c = tok[0]
        if c in "\"'#":
            line += tok.count("\n")
        elif c == ".":
            dots += 1
            if dots >= MAX_KEY_PARTS:
                raise ScenarioError(filename, "(toml)", f"a dotted key of more than "
                                    f"{MAX_KEY_PARTS} parts (line {line})")
        elif c.isdigit():
            if len(tok) > MAX_INT_DIGITS and len(tok.replace("_", "")) > MAX_INT_DIGITS:
                raise ScenarioError(filename, "(toml)", f"an integer of more than "
                                    f"{MAX_INT_DIGITS} digits (line {line})")
        else:
            dots = 0
            if c == "\n":
                line += 1
            elif c in "[{":
                depth += 1
                if depth > MAX_TOML_DEPTH:
                    raise ScenarioError(filename, "(toml)", f"arrays and tables nested more "
                                        f"than {MAX_TOML_DEPTH} deep (line {line})")
            elif c in "]}":
                depth = max(depth - 1, 0)


# --------------------------------------------------------------------------- this machine


def estimate_model_bytes(scenario, batches: int | None = None) -> int:
    """Bytes the model needs for ``scenario`` recording ``batches`` batches (default
    run.batches; an upper estimate, see MODEL_BYTES_PER_*): every page mapped at set-up and
    every page a fork duplicates the page tables of."""
    pages, regions, processes = _footprint(scenario)
    n = scenario.run.batches if batches is None else batches
    return (MODEL_BASE_BYTES + pages * MODEL_BYTES_PER_PAGE + regions * MODEL_BYTES_PER_REGION
            + processes * MODEL_BYTES_PER_PROCESS + n * MODEL_BYTES_PER_BATCH)


def _footprint(scenario) -> tuple[int, int, int]:
    """(pages, regions, processes) created in all: [[process]] tables and forked children."""
    pages = sum(r.pages for p in scenario.processes for r in p.regions)
    regions = sum(len(p.regions) for p in scenario.processes)
    processes = len(scenario.processes)
    for name in scenario.process_names()[len(scenario.processes):]:
        child = scenario._regions.get(name, {})
        pages += sum(r.pages for r in child.values())
        regions += len(child)
        processes += 1
    return pages, regions, processes


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS in bytes (None when unlimited)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def vm_size() -> int:
    """This process's virtual size now (VmSize of /proc/self/status), what RLIMIT_AS
    bounds; MODEL_BASE_BYTES where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return MODEL_BASE_BYTES


def check_resources(scenario, filename: str, batches: int | None = None) -> None:
    """Refuse a scenario whose model would not fit in this machine's available memory
    (MemAvailable) or this process's address-space limit (RLIMIT_AS). The error names the
    largest region: ``process[0].region[0].pages: 10**12 pages need ~400 TB in the model;
    this machine has 23 GB available``."""
    need = estimate_model_bytes(scenario, batches)
    if need - MODEL_BASE_BYTES < MODEL_ALWAYS_FITS_BYTES:
        return
    # (bytes needed, bytes there are, what): MemAvailable excludes the interpreter, which
    # is already allocated; RLIMIT_AS bounds the whole address space
    checks = []
    avail = mem_available()
    if avail is not None:
        checks.append((need - MODEL_BASE_BYTES, avail,
                       f"this machine has {human_bytes(avail)} available"))
    rlim = address_space_limit()
    if rlim is not None:   # the address space already in use counts against it too
        checks.append((need - MODEL_BASE_BYTES + vm_size(), rlim,
                       f"RLIMIT_AS is {human_bytes(rlim)}"))
    n = scenario.run.batches if batches is None else batches
    for want, have, what in checks:
        if want > have:
            if n * MODEL_BYTES_PER_BATCH * 2 > need:   # the trace, not the pages
                key = "run.batches" if batches is None else "--batches"
                raise ScenarioError(filename, key, f"{show_count(n)} batches need "
                                    f"~{human_bytes(want)} in the model (a trace record per "
                                    f"batch); {what}")
            key, pages = _largest_region(scenario)
            total, _, _ = _footprint(scenario)
            count = (f"{show_count(pages)} pages" if pages == total else
                     f"{show_count(total)} pages in all (this region {show_count(pages)})")
            raise ScenarioError(filename, key, f"{count} need ~{human_bytes(want)} in the "
                                f"model; {what}")


def _largest_region(scenario) -> tuple[str, int]:
    best = ("process", 0)
    for i, p in enumerate(scenario.processes):
        for j, r in enumerate(p.regions):
            if r.pages > best[1]:
                best = (f"process[{i}].region[{j}].pages", r.pages)
    return best


# --------------------------------------------------------------------------- work


def setup_pages(scenario) -> int:
    """Pages written while setting the scenario up (its regions, and forked copies)."""
    return _footprint(scenario)[0]


def estimate_work(scenario, batches: int | None = None) -> int:
    """A cheap estimate of a model run's work in simulated page visits, for progress bars:
    every page written at set-up (and copied by a fork), plus for each of the ``batches``
    (default ``run.batches``) ksmd batches the pages it may scan -- the largest
    pages_to_scan the scenario can set (the advisor's maximum under advisor_mode =
    "scan-time"), at most every page mapped -- plus one for the batch itself."""
    from .tunables import TUNABLE_DEFAULTS

    pages, _, _ = _footprint(scenario)
    ksm = dict(TUNABLE_DEFAULTS)
    ksm.update(scenario.ksm)
    per_batch = [int(ksm["pages_to_scan"])]
    advisor = ksm["advisor_mode"] == "scan-time" or any(
        ev.op == "set" and ev.tunable == "advisor_mode" and ev.value == "scan-time"
        for ev in scenario.events)
    if advisor:
        per_batch.append(int(ksm["advisor_max_pages_to_scan"]))
    for ev in scenario.events:
        if ev.op == "set" and ev.tunable in ("pages_to_scan", "advisor_max_pages_to_scan"):
            per_batch.append(int(ev.value))
    n = scenario.run.batches if batches is None else batches
    return pages + n * (min(max(per_batch), pages) + 1)
