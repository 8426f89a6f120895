"""Config validation: the hand-written loader next to a pydantic v2 model of the same keys.

Is pydantic worth a dependency here? This measures, in fresh subprocesses (alternating, several
rounds, medians), for (a) gateway.config.loader and (b) bench/config_pydantic.py, a pydantic
model of `smtp`'s scalar keys, `api` and `domains` (enums, `30s`, `10MiB`, extra="forbid"):

  import      ms to import the validation code (for pydantic: pydantic and the model classes)
  first       ms of the first validation in the process (the modelled keys of example.yaml)
  steady      µs per validation after that (median of --iterations calls on a parsed dict),
              on the modelled keys for both and, for (a), on the whole example too
  rss         peak RSS (ru_maxrss) after import + validation, minus a bare interpreter's that
              imported yaml and parsed the same file

and prints the messages each gives for the same broken inputs. (b) is skipped, saying so, when
pydantic is not installed (`pip install pydantic`; it is not a dependency of the gateway).

    python bench/config_validation.py                 # 7 rounds, about 5 s
    python bench/config_validation.py --rounds 3 --iterations 100
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.yaml"
# The keys the pydantic model covers; the loader is also timed on exactly these.
SUBSET = ("smtp", "api", "domains", "shutdown_timeout", "event_loop")


def _enum(d: dict[str, Any]) -> None:
    d["domains"]["sms.local"]["type"] = "smss"


def _unknown(d: dict[str, Any]) -> None:
    d["api"]["max_concurency"] = 9


def _duration(d: dict[str, Any]) -> None:
    d["api"]["timeout"] = "10x"


def _two(d: dict[str, Any]) -> None:
    _enum(d)
    _duration(d)


def _no_type(d: dict[str, Any]) -> None:
    del d["domains"]["viber.local"]["type"]
    d["domains"]["viber.local"]["ttl"] = "soon"


BROKEN: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "enum": ("domains[sms.local].type: smss", _enum),
    "unknown": ("api.max_concurency: 9", _unknown),
    "duration": ("api.timeout: 10x", _duration),
    "two": ("the enum and the duration at once", _two),
    "no_type": ("domains[viber.local] without type, and ttl: soon", _no_type),
}


# --- the child: one measurement in a fresh interpreter ---------------------------------------

def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux


def child(mode: str, iterations: int) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    subset = {key: data[key] for key in SUBSET}
    out: dict[str, Any] = {}
    if mode == "bare":
        out["rss_kib"] = _maxrss_kib()
        return out
    sys.path.insert(0, str(ROOT))
    started = time.perf_counter()
    if mode == "loader":
        from gateway.config.loader import parse_config
        from gateway.errors import ConfigError

        def run(d: dict[str, Any]) -> object:
            return parse_config(d, env={})

        def errors(d: dict[str, Any]) -> list[str]:
            try:
                parse_config(d, env={})
            except ConfigError as exc:
                return exc.problems
            return []
        whole = data
    else:
        sys.path.insert(0, str(ROOT / "bench"))
        # The gateway's converters first, so pydantic's own share can be told apart.
        import gateway.config.quiet
        import gateway.config.units
        import gateway.config.validation  # noqa: F401
        out["rss_before_pydantic_kib"] = _maxrss_kib()
        framework = time.perf_counter()
        from pydantic import BaseModel, ValidationError  # noqa: F401
        out["pydantic_ms"] = (time.perf_counter() - framework) * 1000

        import config_pydantic as model

        def run(d: dict[str, Any]) -> object:
            return model.validate(d)

        def errors(d: dict[str, Any]) -> list[str]:
            try:
                model.validate(d)
            except ValidationError as exc:
                return model.error_lines(exc)
            return []
        whole = subset
    out["import_ms"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    run(subset)
    out["first_ms"] = (time.perf_counter() - started) * 1000
    for name, sample in (("steady_us", whole), ("steady_subset_us", subset)):
        times = []
        for _ in range(iterations):
            started = time.perf_counter()
            run(sample)
            times.append((time.perf_counter() - started) * 1e6)
        out[name] = statistics.median(times)
    out["rss_kib"] = _maxrss_kib()
    out["errors"] = {}
    for case, (_label, breaks) in BROKEN.items():
        broken = copy.deepcopy(whole)
        breaks(broken)
        out["errors"][case] = errors(broken)
    return out


# --- the parent: rounds, medians, the table --------------------------------------------------

def _spawn(mode: str, iterations: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--iterations", str(iterations)],
        capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def _has_pydantic() -> str | None:
    proc = subprocess.run([sys.executable, "-c", "import pydantic; print(pydantic.VERSION)"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=300,
                        help="validations per process for the steady-state time")
    parser.add_argument("--child", choices=("bare", "loader", "pydantic"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.iterations)))
        return

    version = _has_pydantic()
    modes = ["bare", "loader"]
    if version:
        modes.append("pydantic")
    else:
        print("pydantic is not installed: (b) skipped, only the hand-written loader is measured "
              "(pip install pydantic to compare)\n")
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        order = modes if round_ % 2 == 0 else modes[::-1]
        for mode in order:
            results[mode].append(_spawn(mode, args.iterations))

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    bare = med("bare", "rss_kib")
    print(f"Python {sys.version.split()[0]}, pydantic {version or '(not installed)'}, "
          f"{args.rounds} rounds, {args.iterations} validations a process; medians\n")
    rows = [("import ms", "import_ms", 1, "{:.1f}"),
            ("  of it pydantic itself", "pydantic_ms", 1, "{:.1f}"),
            ("first validation ms", "first_ms", 1, "{:.2f}"),
            ("then µs per validation", "steady_subset_us", 1, "{:.0f}"),
            ("  (a) on the whole example", "steady_us", 1, "{:.0f}"),
            ("peak RSS over bare, MiB", "rss_kib", 1 / 1024, "{:.1f}"),
            ("  of it pydantic + model, MiB", "pydantic_rss_kib", 1 / 1024, "{:.1f}")]
    for result in results.get("pydantic", []):
        result["pydantic_rss_kib"] = result["rss_kib"] - result["rss_before_pydantic_kib"]
    for result in results["loader"]:
        result["pydantic_ms"] = result["pydantic_rss_kib"] = 0
        result["rss_kib"] -= bare
    for result in results.get("pydantic", []):
        result["rss_kib"] -= bare
    heads = {"loader": "(a) loader", "pydantic": "(b) pydantic"}
    print(f"{'':30}" + "".join(f"{heads[mode]:>14}" for mode in modes[1:]))
    for label, key, scale, form in rows:
        if key.startswith("pydantic") and not version:
            continue
        cells = []
        for mode in modes[1:]:
            skip = ((key == "steady_us" and mode == "pydantic")
                    or (key.startswith("pydantic") and mode == "loader"))
            cells.append("" if skip else form.format(med(mode, key) * scale))
        print(f"{label:30}" + "".join(f"{cell:>14}" for cell in cells))
    print(f"\nbare interpreter that imported yaml and parsed the example: {bare / 1024:.1f} MiB "
          f"peak RSS. Validations are of the modelled keys ({', '.join(SUBSET)}) unless "
          f"marked; the broken inputs below are the whole example for (a), those keys for (b).\n")
    for case, (label, _breaks) in BROKEN.items():
        print(f"--- {case}: {label}")
        for mode in modes[1:]:
            lines = results[mode][0]["errors"][case]
            print(f"  {mode} ({len(lines)}):")
            for line in lines:
                print(f"    {line}")
    print()


if __name__ == "__main__":
    main()
