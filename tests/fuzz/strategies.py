"""Generators and mutators of samepage's inputs: scenarios (TOML), schedules (explore --replay
JSON) and traces (compare --against JSON Lines), by structure and by bytes.

Every generator is a plain function of a ``random.Random`` so the campaign
(tools/fuzz_campaign.py) is seeded and reproducible; the hypothesis strategies at the end draw
that Random from hypothesis (``st.randoms``), so failures shrink and replay from the database.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))
CONFORMANCE = sorted((REPO / "tests" / "conformance" / "scenarios").glob("*.toml"))
TRACES = sorted((REPO / "tests" / "conformance" / "scenarios").glob("*.jsonl"))
SEED_SCENARIO = REPO / "examples" / "seed-same-folio-race.toml"

TUNABLES = {
    "run": [0, 1, 2], "pages_to_scan": [0, 1, 64, 100, 600], "sleep_millisecs": [0, 20, 150],
    "max_page_sharing": [2, 3, 256], "merge_across_nodes": [0, 1, True],
    "use_zero_pages": [0, 1, False], "smart_scan": [0, 1],
    "stable_node_chains_prune_millisecs": [0, 2000], "advisor_mode": ["none", "scan-time"],
    "advisor_max_cpu": [70], "advisor_min_pages_to_scan": [500],
    "advisor_max_pages_to_scan": [30000], "advisor_target_scan_time": [1, 200],
}
OPS = ["write", "zap", "mergeable", "unmergeable", "munmap", "fork", "exit", "merge_any", "set"]
THREAD_OPS = ["write", "zap", "unmergeable", "munmap", "fork", "exit"]
ALIASES = {"process": "processes", "region": "regions", "event": "events", "thread": "threads"}


class Raw(str):
    """Text written into the file as it is (an out-of-range literal, 1e400, 5,000 digits)."""


def huge_digits(rng: random.Random, lo: int = 4301, hi: int = 6000) -> Raw:
    n = rng.randint(lo, hi)
    return Raw(str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1)))


NASTY_STRINGS = [
    "", " ", "x", "é", "名前", "\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "a\nb", "a\rb", "\t",
    "\u202e", "\x00", "\x7f", "\u0085", "\x9b2J", "[/]", "[bold]x[/bold]", "../../etc/passwd",
    "a" * 300, "🙂", "\ud800" * 0 + "\ufeff", "%s%n", "{0}", "'\"",
]


def extreme(rng: random.Random) -> Any:
    """A wrong-typed or extreme value."""
    c = rng.randrange(16)
    if c == 0:
        return rng.choice([0, -1, 1, 2, 7])
    if c == 1:
        return rng.choice([2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -2**63])
    if c == 2:
        return rng.choice([10**7, 10**8, 10**12, 10**18, -10**12])
    if c == 3:
        return huge_digits(rng)
    if c == 4:
        return rng.choice([0.5, 1.0, -0.0, 1e308, float("nan"), float("inf"), float("-inf")])
    if c == 5:
        return Raw(rng.choice(["1e400", "-1e400", "nan", "+inf", "0x7fffffffffffffff",
                               "0o777", "0b101", "1_000", "1979-05-27T07:32:00Z", "07:32:00"]))
    if c in (6, 7):
        return rng.choice(NASTY_STRINGS)
    if c == 8:
        return rng.choice([True, False])
    if c == 9:
        return rng.choice([[], [1], [0, 10], [10, 0], [-1, 2], ["a"], [[1]], [1.5]])
    if c == 10:
        return rng.choice([{}, {"a": 1}, {"kind": "zero"}])
    if c == 11:
        d: Any = 1
        for _ in range(rng.randint(5, 60)):
            d = [d]
        return d
    if c == 12:
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(1, 12)))
    if c == 13:
        return rng.randint(-5, 5000)
    if c == 14:
        return rng.choice(OPS + ["nohuge", "huge", "always", "v6.18", "early-put", "all"])
    return str(rng.randint(0, 100))


# ------------------------------------------------------------------------------ scenarios


def gen_fill(rng: random.Random, pages: int) -> dict[str, Any]:
    kind = rng.choice(["zero", "pattern", "pattern", "unique", "tokens"])
    if kind == "pattern":
        f: dict[str, Any] = {"kind": kind, "distinct": rng.choice([1, 2, 3, 50])}
        if rng.random() < 0.3:
            f["offset"] = rng.randint(0, 100)
        return f
    if kind == "unique":
        return {"kind": kind, "seed": rng.randint(0, 5)}
    if kind == "tokens":
        return {"kind": kind, "tokens": [rng.choice([0, 1, 2, 7, 99]) for _ in range(pages)]}
    return {"kind": kind}


def _pages_sel(rng: random.Random, pages: int, d: dict[str, Any]) -> None:
    if rng.random() < 0.5:
        d["pages"] = sorted({rng.randrange(pages) for _ in range(rng.randint(1, 3))})
    else:
        a = rng.randrange(pages)
        d["range"] = [a, rng.randint(a, pages)]


def gen_scenario(rng: random.Random) -> dict[str, Any]:
    """A valid-ish scenario: small (so that it runs in well under a second)."""
    sc: dict[str, Any] = {}
    if rng.random() < 0.5:
        sc["name"] = rng.choice(["fuzz", "two vms", "s"])
    if rng.random() < 0.2:
        sc["description"] = "generated"
    ksm = {k: rng.choice(v) for k, v in TUNABLES.items() if k != "run" and rng.random() < 0.25}
    if ksm.get("advisor_mode") == "scan-time":
        ksm.pop("pages_to_scan", None)
    if ksm or rng.random() < 0.5:
        ksm.setdefault("pages_to_scan", rng.choice([50, 100, 600]))
        sc["ksm"] = ksm
    if rng.random() < 0.4:
        m: dict[str, Any] = {}
        if rng.random() < 0.7:
            m["thp"] = rng.choice(["always", "madvise", "never"])
        if rng.random() < 0.3:
            m["mthp_kb"] = rng.sample([16, 32, 64, 128], rng.randint(1, 2))
        if rng.random() < 0.2:
            m["numa_nodes"] = rng.randint(1, 2)
        sc["machine"] = m
    if rng.random() < 0.2:
        sc["model"] = {"same_folio": rng.choice(["v6.18", "early-put", "split-retry"])}
        if rng.random() < 0.5:
            sc["model"]["split_zero_remap"] = rng.random() < 0.5
    procs = []
    for i in range(rng.randint(1, 3)):
        regions = []
        for j in range(rng.randint(0 if rng.random() < 0.1 else 1, 3)):
            pages = rng.choice([1, 2, 4, 16, 100, 512, 600])
            r: dict[str, Any] = {"name": f"r{j}", "pages": pages, "fill": gen_fill(rng, pages)}
            if rng.random() < 0.3:
                r["thp"] = rng.choice(["huge", "nohuge", "default"])
            if rng.random() < 0.15:
                r["mergeable"] = rng.random() < 0.5
            regions.append(r)
        p: dict[str, Any] = {"name": f"p{i}", "region": regions}
        if rng.random() < 0.15:
            p["merge_any"] = rng.random() < 0.5
        procs.append(p)
    sc["process"] = procs
    batches = rng.randint(1, 8)
    events = []
    for k in range(rng.randint(0, 4)):
        p = rng.choice(procs)
        op = rng.choice(OPS)
        ev: dict[str, Any] = {"after_batch": rng.randint(1, batches), "process": p["name"],
                              "op": op}
        if op in ("write", "zap", "mergeable", "unmergeable", "munmap"):
            if not p["region"]:
                continue
            r = rng.choice(p["region"])
            ev["region"] = r["name"]
            if op in ("write", "zap"):
                _pages_sel(rng, r["pages"], ev)
            if op == "write":
                ev["token"] = rng.choice([0, 1, 7, 2**64 - 1])
        elif op == "fork":
            ev["child"] = f"c{k}"
        elif op == "merge_any":
            ev["value"] = rng.random() < 0.5
        elif op == "set":
            t = rng.choice(list(TUNABLES))
            ev["tunable"] = t
            ev["value"] = rng.choice(TUNABLES[t])
        events.append(ev)
    if events:
        sc["event"] = events
    if rng.random() < 0.25:
        threads = []
        for t in range(rng.randint(1, 2)):
            p = rng.choice(procs)
            ops = []
            for k in range(rng.randint(1, 3)):
                op = rng.choice(THREAD_OPS)
                o: dict[str, Any] = {"op": op}
                if op in ("write", "zap", "unmergeable", "munmap"):
                    if not p["region"]:
                        continue
                    r = rng.choice(p["region"])
                    o["region"] = r["name"]
                    if op in ("write", "zap"):
                        _pages_sel(rng, r["pages"], o)
                    if op == "write":
                        o["token"] = rng.randint(0, 9)
                elif op == "fork":
                    o["child"] = f"t{t}c{k}"
                ops.append(o)
            if ops:
                threads.append({"name": f"t{t}", "process": p["name"],
                                "after_batch": rng.randint(0, batches), "ops": ops})
        if threads:
            sc["thread"] = threads
    sc["run"] = {"batches": batches}
    return sc


def _nodes(obj: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every dict and list in the tree with its path."""
    out = []
    if isinstance(obj, (dict, list)):
        out.append((path, obj))
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            out.extend(_nodes(v, path + (k,)))
    return out


def _typo(rng: random.Random, key: str) -> str:
    c = rng.randrange(6)
    if c == 0 and key in ALIASES:
        return ALIASES[key]
    if c == 1 and len(key) > 1:
        i = rng.randrange(len(key))
        return key[:i] + key[i + 1:]
    if c == 2:
        return key.upper()
    if c == 3:
        return key + rng.choice(["s", "_", "x", " "])
    if c == 4:
        return rng.choice(NASTY_STRINGS[:12]) or "k"
    return key.replace("_", "-") if "_" in key else key + "2"


def mutate_tree(rng: random.Random, sc: Any, n: int | None = None) -> Any:
    """Apply n (1..3) structural mutations: drop/rename/add keys, wrong types and extreme
    values, duplicated or emptied list elements."""
    sc = copy.deepcopy(sc)
    for _ in range(n or rng.randint(1, 3)):
        nodes = _nodes(sc)
        path, node = rng.choice(nodes)
        c = rng.randrange(8)
        if isinstance(node, dict):
            keys = list(node)
            if c == 0 and keys:
                node.pop(rng.choice(keys))
            elif c == 1 and keys:
                k = rng.choice(keys)
                node[_typo(rng, k)] = node.pop(k)
            elif c == 2:
                node[rng.choice(["extra", "processes", "pagez", "after", "op", "name"])] = \
                    extreme(rng)
            elif c == 3 and keys:
                k = rng.choice(keys)
                node[_typo(rng, k)] = copy.deepcopy(node[k])    # the key twice, two spellings
            elif keys:
                node[rng.choice(keys)] = extreme(rng)
        elif isinstance(node, list):
            if c in (0, 1) and node:
                node.append(copy.deepcopy(rng.choice(node)))    # same name twice
            elif c == 2:
                node.clear()
            elif c == 3 and len(node) > 1:
                rng.shuffle(node)
            elif node:
                node[rng.randrange(len(node))] = extreme(rng)
    return sc


# -- a small TOML writer (any tree, including values TOML cannot hold, written as Raw)

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(k: Any) -> str:
    k = str(k)
    return k if _BARE.fullmatch(k) else toml_str(k)


def toml_str(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("?")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    return toml_str(str(v))


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def to_toml(tree: dict[str, Any], _prefix: str = "") -> str:
    """Serialise: scalars and inline values first, then [tables] and [[arrays of tables]]."""
    lines = []
    later = []
    for k, v in tree.items():
        if isinstance(v, dict) and v and k not in ("fill",):
            later.append((k, v, False))
        elif _is_table_list(v) and k != "ops":
            later.append((k, v, True))
        else:
            lines.append(f"{toml_key(k)} = {toml_value(v)}")
    for k, v, many in later:
        name = f"{_prefix}.{toml_key(k)}" if _prefix else toml_key(k)
        for item in (v if many else [v]):
            lines.append("")
            lines.append(f"[[{name}]]" if many else f"[{name}]")
            lines.append(to_toml(item, name))
    return "\n".join(ln for ln in lines if ln is not None) + ("\n" if not _prefix else "")


def text_mutation(rng: random.Random, text: str) -> str:
    """Mutations that are easier on the text: deep nesting, long dotted keys, huge literals,
    duplicate headers."""
    c = rng.randrange(7)
    if c == 0:
        n = rng.choice([64, 300, 500, 1000, 5000])
        return text + f"\nx = {'[' * n}{']' * n}\n"
    if c == 1:
        n = rng.choice([64, 300, 500, 2000])
        return text + "\ny = " + "{a = " * n + "1" + " }" * n + "\n"
    if c == 2:
        n = rng.choice([100, 1000, 100_000])
        return "a" + ".a" * n + " = 1\n" + text
    if c == 3:
        return re.sub(r"(pages|batches|distinct|after_batch) = \d+",
                      lambda m: f"{m.group(1)} = {huge_digits(rng)}", text, count=1)
    if c == 4:
        return text + "\n[run]\nbatches = 2\n"
    if c == 5:
        return re.sub(r"pages = \d+", f"pages = {rng.choice([2**63, 10**12, 10**8, 10**7])}",
                      text, count=1)
    return text + "\n[[process]]\nname = " + toml_str(rng.choice(NASTY_STRINGS)) + "\n"


def scenario_text(rng: random.Random) -> str:
    """A generated scenario, mutated structurally (mostly) or on the text."""
    sc = gen_scenario(rng)
    if rng.random() < 0.85:
        sc = mutate_tree(rng, sc)
    text = to_toml(sc)
    if rng.random() < 0.15:
        text = text_mutation(rng, text)
    return text


# ------------------------------------------------------------------------------ bytes


def mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes] | None = None) -> bytes:
    """1..4 byte-level mutations: truncate, flip, insert brackets/quotes/junk, splice, repeat."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        c = rng.randrange(9)
        pos = rng.randint(0, len(b))
        if c == 0:
            del b[pos:]
        elif c == 1 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif c == 2:
            b[pos:pos] = rng.choice([b"[", b"]", b"[[", b"{", b"}", b'"', b"'", b"=", b"\n[",
                                     b"\x00", b"\xff", b"\xc3", b"\x1b[2J", b"#", b"\\", b","])
        elif c == 3 and corpus:
            other = rng.choice(corpus)
            j = rng.randint(0, len(other))
            b[pos:] = other[j:j + rng.randint(0, 2000)]
        elif c == 4 and b:
            j = rng.randint(pos, min(len(b), pos + 200))
            b[pos:pos] = bytes(b[pos:j]) * rng.randint(2, 20)
        elif c == 5 and b:
            j = rng.randint(pos, min(len(b), pos + 50))
            del b[pos:j]
        elif c == 6:
            b[pos:pos] = rng.choice(["9" * rng.randint(19, 5000), "-1", "1e400", "nan",
                                     "true", "[]", "{}"]).encode()
        elif c == 7:
            # replace one number by an extreme one
            m = [x for x in re.finditer(rb"\d+", bytes(b))]
            if m:
                x = rng.choice(m)
                b[x.start():x.end()] = str(rng.choice([0, 2**63, 10**12, 10**400])).encode() \
                    if rng.random() < 0.8 else huge_digits(rng).encode()
        else:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(b)


_CORPUS: dict[str, list[bytes]] = {}


def corpus(kind: str) -> list[bytes]:
    if kind not in _CORPUS:
        files = {"scenario": EXAMPLES + CONFORMANCE, "trace": TRACES}[kind]
        _CORPUS[kind] = [p.read_bytes() for p in files]
    return _CORPUS[kind]


def scenario_bytes(rng: random.Random) -> bytes:
    """A byte-mutated example or conformance scenario."""
    docs = corpus("scenario")
    return mutate_bytes(rng, rng.choice(docs), docs)


# ------------------------------------------------------------------------------ JSON (schedules, traces)


def dumps(obj: Any) -> str:
    """json.dumps, with Raw values written as they are (1e400, 10**400 digits)."""
    raws: list[str] = []

    def swap(o: Any) -> Any:
        if isinstance(o, Raw):
            raws.append(str(o))
            return f"\x00RAW{len(raws) - 1}\x00"
        if isinstance(o, dict):
            return {k: swap(v) for k, v in o.items()}
        if isinstance(o, list):
            return [swap(v) for v in o]
        return o

    s = json.dumps(swap(obj), ensure_ascii=False, allow_nan=True)
    for i, r in enumerate(raws):
        s = s.replace(json.dumps(f"\x00RAW{i}\x00"), r)
    return s


def json_extreme(rng: random.Random) -> Any:
    c = rng.randrange(6)
    if c == 0:
        return Raw(rng.choice(["1e400", "-1e400", "1" + "0" * 400, "NaN", "Infinity", "-0"]))
    if c == 1:
        return Raw(str(huge_digits(rng)))
    if c == 2:
        n = rng.choice([50, 1000, 100_000])
        return Raw("[" * n + "]" * n)
    if c == 3:
        return rng.choice(["[/]", "[bold]x", "\x1b[31m", "", "é", "a\nb", "6.18\x00"])
    v = extreme(rng)
    return None if isinstance(v, float) and not math.isfinite(v) else v


def mutate_json(rng: random.Random, obj: Any) -> Any:
    """Structural mutations of a JSON document (a schedule or one trace record)."""
    obj = copy.deepcopy(obj)
    for _ in range(rng.randint(1, 3)):
        nodes = _nodes(obj)
        path, node = rng.choice(nodes)
        c = rng.randrange(6)
        if isinstance(node, dict) and node:
            k = rng.choice(list(node))
            if c == 0:
                node.pop(k)
            elif c == 1:
                node[k + rng.choice(["s", "_", "2"])] = node.pop(k)
            elif c == 2:
                node["extra"] = json_extreme(rng)
            else:
                node[k] = json_extreme(rng)
        elif isinstance(node, list):
            if c == 0 and node:
                node.pop(rng.randrange(len(node)))
            elif c == 1 and node:
                node.append(copy.deepcopy(rng.choice(node)))
            elif c == 2:
                node.clear()
            elif node:
                node[rng.randrange(len(node))] = json_extreme(rng)
    return obj


def schedule_text(rng: random.Random, base: dict[str, Any]) -> str:
    """A mutated schedule file (``base``: a real one saved by samepage explore)."""
    c = rng.random()
    if c < 0.6:
        return dumps(mutate_json(rng, base))
    text = json.dumps(base, indent=2)
    if c < 0.75:
        return dumps(rng.choice([
            {**base, "report": rng.choice(["x", 1, [], None, {"summary": [1]}])},
            {**base, "decisions": [{**base["decisions"][0], "step": Raw("1e400")}]},
            {**base, "decisions": rng.choice([{}, "x", [1], [[]], None, [{"step": -1}]])},
            {**base, "same_folio": rng.choice([[], ["v6.18"], 1, "", "all", "[/]"])},
            [base], "x", 1, None,
        ]))
    return mutate_bytes(rng, text.encode()).decode("utf-8", "surrogateescape")


def trace_text(rng: random.Random, lines: list[str]) -> str:
    """A mutated trace: records mutated structurally (mostly) or the bytes."""
    if rng.random() < 0.3:
        return mutate_bytes(rng, "\n".join(lines).encode() + b"\n").decode(
            "utf-8", "surrogateescape")
    recs = [json.loads(ln) for ln in lines if ln.strip()]
    out = [dumps(r) for r in recs]
    for _ in range(rng.randint(1, 2)):
        if not out:
            break
        i = rng.randrange(min(len(recs), len(out)))
        c = rng.randrange(8)
        if c == 0:
            out[i] = dumps(mutate_json(rng, recs[i]))
        elif c == 1:
            r = dict(recs[-1]) if "final" in recs[-1] else {"final": True, "processes": {}}
            r["kernel"] = rng.choice(["[/]", "[bold]", "\x1b[2J", "", 6.18, None, ["6.18"]])
            out[-1] = dumps(r)
        elif c == 2:
            k = rng.choice(["t_ms", "pages_shared", "batch", "full_scans"])
            r = dict(recs[0])
            r[k] = Raw(rng.choice(["1" + "0" * 400, "1e400", "-1", "NaN", "1.5", '"3"', "null"]))
            out[i] = dumps(r) if "batch" in recs[i] else out[i]
        elif c == 3:
            out.insert(i, rng.choice(["[]", "1", '"x"', "{}", "{", "null"]))
        elif c == 4:
            del out[i]
        elif c == 5:
            n = rng.choice([1000, 100_000])
            out[i] = "[" * n + "]" * n
        elif c == 6:
            out.append(out[i])
        else:
            out[i] = dumps(mutate_json(rng, recs[i]))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ hypothesis

randoms = st.randoms(use_true_random=False)

#: Generated scenarios, valid or mutated structurally (TOML text).
scenario_texts = randoms.map(scenario_text)
#: Byte-mutated example and conformance scenarios.
scenario_byte_files = randoms.map(scenario_bytes)
#: Valid generated scenarios (no mutation): validate must accept them, run must carry them out.
valid_scenario_texts = randoms.map(lambda r: to_toml(gen_scenario(r)))


def schedule_texts(base: dict[str, Any]) -> st.SearchStrategy[str]:
    return randoms.map(lambda r: schedule_text(r, base))


def trace_texts(lines: list[str]) -> st.SearchStrategy[str]:
    return randoms.map(lambda r: trace_text(r, lines))
