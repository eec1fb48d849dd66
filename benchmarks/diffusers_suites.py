"""Run diffusers' own model test suite for a transformer class unpatched, patched dense, and patched sparse.

    python benchmarks/diffusers_suites.py wan_vace skyreels_v2 --diffusers-git /path/to/diffusers/.git

A suite ``NAME`` is diffusers' ``tests/models/transformers/test_models_transformer_NAME.py``. The test tree is
exported from a diffusers git checkout (``git archive REF tests``) into a temporary folder, or read from
``--tests-dir`` (a folder holding diffusers' ``tests/``); nothing is copied into this repository. Each mode runs
pytest in a subprocess with this file loaded as a pytest plugin: in ``dense`` and ``spatial`` mode it wraps the
suite's transformer classes so that every instance the tests build is patched by ``headsparse.patch`` at the
end of its ``__init__`` (``from_pretrained`` builds through ``__init__`` too). The table gives pass / fail /
error / skip counts per mode, how many instances were patched, and how many attention calls ran a sparse
layout (0 in ``dense`` mode by construction; above 0 in ``spatial`` mode shows the sparse path really ran).
``neighborhood`` (not run by default) patches with a 3 x 3 window: on image models a single frame makes
``spatial`` keep every key, while the window really drops keys.
The exit status is 1 when a patched mode passes fewer tests than the unpatched run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

MODES = ("unpatched", "dense", "spatial", "neighborhood")
DEFAULT_MODES = ("unpatched", "dense", "spatial")
# Suite name -> the transformer classes its tests build (diffusers 0.42.1 names).
SUITE_CLASSES: dict[str, tuple[str, ...]] = {
    "wan": ("WanTransformer3DModel",),
    "wan_vace": ("WanVACETransformer3DModel",),
    "wan_animate": ("WanAnimateTransformer3DModel",),
    "skyreels_v2": ("SkyReelsV2Transformer3DModel",),
    "cogvideox": ("CogVideoXTransformer3DModel",),
    "hunyuan_video": ("HunyuanVideoTransformer3DModel",),
    "ltx": ("LTXVideoTransformer3DModel",),
    "mochi": ("MochiTransformer3DModel",),
    "flux": ("FluxTransformer2DModel",),
    "sd3": ("SD3Transformer2DModel",),
    "qwenimage": ("QwenImageTransformer2DModel",),
    "flux2": ("Flux2Transformer2DModel",),
    "z_image": ("ZImageTransformer2DModel",),
    "chroma": ("ChromaTransformer2DModel",),
    "hidream": ("HiDreamImageTransformer2DModel",),
    "lumina2": ("Lumina2Transformer2DModel",),
}
# spatial: one frame per query (no first-frame sink, which on the suites' 2-frame inputs would keep every key).
PATTERNS: dict[str, dict[str, Any]] = {
    "dense": {"pattern": "dense"},
    "spatial": {"pattern": "spatial", "first_frame_sink": False, "block_size": 32},
    # For image models, whose single frame makes ``spatial`` keep every key: a 3 x 3 window really runs sparse.
    "neighborhood": {"pattern": "neighborhood", "kernel_size": (1, 3, 3), "block_size": 32},
}

_ENV_MODE = "HEADSPARSE_SUITE_MODE"
_ENV_CLASSES = "HEADSPARSE_SUITE_CLASSES"
_ENV_REPORT = "HEADSPARSE_SUITE_REPORT"


# ----------------------------------------------------------------------------------------- the pytest plugin
_STATES: list[Any] = []
_ERRORS: list[str] = []


def pytest_configure(config: Any) -> None:
    """Inside the pytest subprocess: wrap each named class's ``__init__`` to patch the new instance."""
    mode = os.environ.get(_ENV_MODE, "unpatched")
    if mode == "unpatched":
        return
    import diffusers

    import headsparse

    for name in filter(None, os.environ.get(_ENV_CLASSES, "").split(",")):
        cls = getattr(diffusers, name)
        original = cls.__init__

        def patched_init(self: Any, *args: Any, _cls: Any = cls, _original: Any = original, **kwargs: Any) -> None:
            _original(self, *args, **kwargs)
            if type(self) is _cls:
                try:
                    handle = headsparse.patch(self, **PATTERNS[mode])
                except Exception as exc:  # recorded, then raised: the test that built the model fails
                    _ERRORS.append(f"{type(exc).__name__}: {exc}")
                    raise
                _STATES.append(handle.states["transformer"])

        patched_init.__wrapped__ = original  # type: ignore[attr-defined]  # keeps inspect.signature(cls)
        cls.__init__ = patched_init


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get(_ENV_REPORT)
    if path:
        sparse = sum(s.sparse_calls for state in _STATES for s in state.stats)
        Path(path).write_text(json.dumps({"patched": len(_STATES), "sparse_calls": sparse, "patch_errors": _ERRORS}))


# -------------------------------------------------------------------------------------------------- the runner
def export_tests(git_dir: str, ref: str, dest: Path) -> Path:
    """``git archive REF tests`` of a diffusers checkout into ``dest``; returns the folder holding ``tests/``."""
    archive = subprocess.run(["git", "-C", git_dir, "archive", ref, "tests"], capture_output=True, check=True)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _counts(junit: Path) -> dict[str, int]:
    if not junit.is_file():
        return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    suites = ET.parse(junit).getroot()
    suites = suites.findall("testsuite") if suites.tag == "testsuites" else [suites]
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return {"passed": passed, "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def run_suite(root: Path, suite: str, mode: str, classes: tuple[str, ...], extra: list[str], work: Path) -> dict:
    """One pytest run of the suite in ``mode``: its counts, what was patched, and its wall time."""
    test_file = root / "tests" / "models" / "transformers" / f"test_models_transformer_{suite}.py"
    if not test_file.is_file():
        raise SystemExit(f"no diffusers suite {suite!r}: {test_file} does not exist")
    junit, report = work / f"{suite}-{mode}.xml", work / f"{suite}-{mode}.json"
    env = {**os.environ, _ENV_MODE: mode, _ENV_CLASSES: ",".join(classes), _ENV_REPORT: str(report),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
               [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent),
                os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", Path(__file__).stem,
           f"--junitxml={junit}", str(test_file.relative_to(root)), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    result: dict[str, Any] = {"suite": suite, "mode": mode, **_counts(junit),
                              "seconds": round(time.perf_counter() - start, 1), "command": " ".join(cmd)}
    result.update(json.loads(report.read_text()) if report.is_file() else {"patched": 0, "sparse_calls": 0})
    if proc.returncode not in (0, 1):  # 1: some tests failed; anything else: pytest itself failed
        result["pytest_error"] = (proc.stdout + proc.stderr)[-2000:]
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    result["failures"] = failed[:20]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="+", help=f"suite names, e.g. {', '.join(SUITE_CLASSES)}")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--diffusers-git", help="a diffusers git directory (its tests/ are exported with git archive)")
    source.add_argument("--tests-dir", help="a folder holding diffusers' tests/ tree")
    parser.add_argument("--ref", default="HEAD", help="the diffusers commit to export (with --diffusers-git)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES))
    parser.add_argument("--classes", help="comma-separated transformer classes to patch (default: the suite's)")
    parser.add_argument("--json", help="also write the results here")
    parser.epilog = "Arguments after -- go to pytest (e.g. -- -k 'not lora')."
    argv = list(sys.argv[1:] if argv is None else argv)
    # Split off pytest's arguments by hand: a REMAINDER positional after the suites would swallow the options.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    with tempfile.TemporaryDirectory(prefix="headsparse-suites-") as tmp:
        work = Path(tmp)
        if args.diffusers_git:
            root = export_tests(args.diffusers_git, args.ref, work / "diffusers")
        else:
            root = Path(args.tests_dir).resolve()
        results = []
        for suite in args.suites:
            classes = tuple(args.classes.split(",")) if args.classes else SUITE_CLASSES.get(suite)
            if not classes:
                raise SystemExit(f"suite {suite!r}: pass --classes (the transformer classes its tests build)")
            for mode in args.modes:
                results.append(run_suite(root, suite, mode, classes, extra, work))
                r = results[-1]
                print(f"{suite:14s} {mode:9s} passed {r['passed']:4d}  failed {r['failed']:3d}  errors "
                      f"{r['errors']:3d}  skipped {r['skipped']:4d}  patched {r['patched']:4d}  sparse calls "
                      f"{r['sparse_calls']:6d}  {r['seconds']:7.1f} s", flush=True)
                for line in r["failures"]:
                    print(f"    {line}")
                if "pytest_error" in r:
                    print(r["pytest_error"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    worse = []
    for suite in args.suites:
        base = next((r for r in results if r["suite"] == suite and r["mode"] == "unpatched"), None)
        for r in results:
            if base is not None and r["suite"] == suite and r["mode"] != "unpatched" and r["passed"] < base["passed"]:
                worse.append(f"{suite} {r['mode']}: {r['passed']} passed, unpatched {base['passed']}")
    for line in worse:
        print(f"FEWER PASSES: {line}")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
