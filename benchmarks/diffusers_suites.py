"""Run diffusers' own test suite of a transformer class with headsparse patched into every instance it builds.

diffusers' test files are not part of this repository: extract them from a diffusers checkout of the pinned
version (or the nearest one there is) into a folder and point ``--root`` at it, e.g.::

    git -C DIFFUSERS_CHECKOUT archive HEAD tests | tar -x -C /tmp/dsuite
    python benchmarks/diffusers_suites.py hunyuan_video15 --root /tmp/dsuite
    python benchmarks/diffusers_suites.py --all --root /tmp/dsuite     # every suite listed here

Each mode runs the suite in its own pytest process: ``unpatched`` as it is, ``dense`` and ``spatial`` with this
file loaded as a pytest plugin (``-p diffusers_suites``), which wraps ``__init__`` of the suite's classes so that
every instance is patched right after it is built (``headsparse.patch(model, **PATTERNS[mode])``), however the
test builds it (from a config, ``from_pretrained``, a copy). ``spatial`` keeps one frame per query with no
first-frame sink and 32-token blocks, so the suites' two-frame inputs really run sparse. The table gives
passed / failed / skipped per mode, the patched instances and how many self-attention calls ran sparse (so a
spatial run that never ran sparse shows), and the tests whose outcome differs from the unpatched run.

Where diffusers has no model test file for a class (Kandinsky 5: only pipeline tests, which need hub tokenizers),
the suite is our own equivalent: a tester config for diffusers' own ``ModelTesterMixin`` / ``TrainingTesterMixin``
written into the extracted tests folder for the run and removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODES = ("unpatched", "dense", "spatial", "neighborhood")
DEFAULT_MODES = ("unpatched", "dense", "spatial")
ENV_MODE, ENV_CLASSES, ENV_REPORT = "HEADSPARSE_SUITE_MODE", "HEADSPARSE_SUITE_CLASSES", "HEADSPARSE_SUITE_REPORT"


@dataclass(frozen=True)
class Suite:
    test_file: str  # relative to --root
    classes: tuple[str, ...]  # diffusers classes whose instances are patched
    generated: str | None = None  # our own equivalent test file's source, written to test_file for the run


KANDINSKY5_EQUIVALENT = '''"""A model test file for Kandinsky5Transformer3DModel written by headsparse (temporary)."""
import torch

from diffusers import Kandinsky5Transformer3DModel
from diffusers.utils.torch_utils import randn_tensor

from ...testing_utils import enable_full_determinism, torch_device
from ..testing_utils import BaseModelTesterConfig, ModelTesterMixin, TrainingTesterMixin

enable_full_determinism()


class Kandinsky5TransformerTesterConfig(BaseModelTesterConfig):
    @property
    def model_class(self):
        return Kandinsky5Transformer3DModel

    @property
    def main_input_name(self):
        return "hidden_states"

    @property
    def output_shape(self):
        return (2, 8, 8, 4)

    @property
    def input_shape(self):
        return (2, 8, 8, 4)

    @property
    def generator(self):
        return torch.Generator("cpu").manual_seed(0)

    def get_init_dict(self):
        # The configuration of diffusers' Kandinsky 5 pipeline tests, with 4 latent channels.
        return {"in_visual_dim": 4, "in_text_dim": 32, "in_text_dim2": 16, "time_dim": 16, "out_visual_dim": 4,
                "patch_size": (1, 2, 2), "model_dim": 16, "ff_dim": 32, "num_text_blocks": 1, "num_visual_blocks": 2,
                "axes_dims": (1, 1, 2), "visual_cond": False, "attention_type": "regular"}

    def get_dummy_inputs(self, batch_size: int = 1):
        frames, height, width, text = 2, 8, 8, 6
        return {
            "hidden_states": randn_tensor((batch_size, frames, height, width, 4), generator=self.generator,
                                          device=torch_device),
            "encoder_hidden_states": randn_tensor((batch_size, text, 32), generator=self.generator,
                                                  device=torch_device),
            "timestep": torch.tensor([500.0] * batch_size, device=torch_device),
            "pooled_projections": randn_tensor((batch_size, 16), generator=self.generator, device=torch_device),
            "visual_rope_pos": [torch.arange(frames), torch.arange(height // 2), torch.arange(width // 2)],
            "text_rope_pos": torch.arange(text, device=torch_device),
        }


class TestKandinsky5Transformer(Kandinsky5TransformerTesterConfig, ModelTesterMixin):
    pass


class TestKandinsky5TransformerTraining(Kandinsky5TransformerTesterConfig, TrainingTesterMixin):
    def test_gradient_checkpointing_is_applied(self):
        super().test_gradient_checkpointing_is_applied(expected_set={"Kandinsky5Transformer3DModel"})
'''

PATTERNS: dict[str, dict[str, Any]] = {
    "dense": {"pattern": "dense"},
    "spatial": {"pattern": "spatial", "first_frame_sink": False, "block_size": 32},
    # For image models, whose single frame makes ``spatial`` keep every key: a 3 x 3 window really runs sparse.
    "neighborhood": {"pattern": "neighborhood", "kernel_size": (1, 3, 3), "block_size": 32},
}

TRANSFORMERS = "tests/models/transformers"
SUITES: dict[str, Suite] = {
    "wan": Suite(f"{TRANSFORMERS}/test_models_transformer_wan.py", ("WanTransformer3DModel",)),
    "wan_vace": Suite(f"{TRANSFORMERS}/test_models_transformer_wan_vace.py", ("WanVACETransformer3DModel",)),
    "wan_animate": Suite(f"{TRANSFORMERS}/test_models_transformer_wan_animate.py",
                         ("WanAnimateTransformer3DModel",)),
    "skyreels_v2": Suite(f"{TRANSFORMERS}/test_models_transformer_skyreels_v2.py",
                         ("SkyReelsV2Transformer3DModel",)),
    "qwenimage": Suite(f"{TRANSFORMERS}/test_models_transformer_qwenimage.py", ("QwenImageTransformer2DModel",)),
    "flux2": Suite(f"{TRANSFORMERS}/test_models_transformer_flux2.py", ("Flux2Transformer2DModel",)),
    "z_image": Suite(f"{TRANSFORMERS}/test_models_transformer_z_image.py", ("ZImageTransformer2DModel",)),
    "chroma": Suite(f"{TRANSFORMERS}/test_models_transformer_chroma.py", ("ChromaTransformer2DModel",)),
    "hidream": Suite(f"{TRANSFORMERS}/test_models_transformer_hidream.py", ("HiDreamImageTransformer2DModel",)),
    "lumina2": Suite(f"{TRANSFORMERS}/test_models_transformer_lumina2.py", ("Lumina2Transformer2DModel",)),
    "hunyuan_video15": Suite(f"{TRANSFORMERS}/test_models_transformer_hunyuan_1_5.py",
                             ("HunyuanVideo15Transformer3DModel",)),
    "framepack": Suite(f"{TRANSFORMERS}/test_models_transformer_hunyuan_video_framepack.py",
                       ("HunyuanVideoFramepackTransformer3DModel",)),
    "ltx2": Suite(f"{TRANSFORMERS}/test_models_transformer_ltx2.py", ("LTX2VideoTransformer3DModel",)),
    "cosmos": Suite(f"{TRANSFORMERS}/test_models_transformer_cosmos.py", ("CosmosTransformer3DModel",)),
    "kandinsky5": Suite(f"{TRANSFORMERS}/test_models_transformer_kandinsky5_headsparse.py",
                        ("Kandinsky5Transformer3DModel",), generated=KANDINSKY5_EQUIVALENT),
}


# ------------------------------------------------------------------------------------------- the pytest plugin
_STATES: list[Any] = []


def pytest_configure(config: Any) -> None:
    """Loaded with ``-p diffusers_suites``: patch every instance of the classes in $HEADSPARSE_SUITE_CLASSES."""
    mode = os.environ.get(ENV_MODE, "unpatched")
    if mode == "unpatched":
        return
    import functools

    import diffusers

    import headsparse

    for name in os.environ[ENV_CLASSES].split(","):
        cls = getattr(diffusers, name)
        init = cls.__init__

        @functools.wraps(init)  # keeps the signature diffusers' ConfigMixin reads
        def patched_init(self: Any, *args: Any, _init: Any = init, _cls: Any = cls, **kwargs: Any) -> None:
            _init(self, *args, **kwargs)
            if type(self) is _cls:
                handle = headsparse.patch(self, **PATTERNS[mode])
                _STATES.extend(handle.states.values())

        cls.__init__ = patched_init


def pytest_unconfigure(config: Any) -> None:
    report = os.environ.get(ENV_REPORT)
    if report and os.environ.get(ENV_MODE, "unpatched") != "unpatched":
        sparse = sum(s.sparse_calls for state in _STATES for s in state.stats)
        Path(report).write_text(json.dumps({"instances": len(_STATES), "sparse_calls": sparse}))


# ------------------------------------------------------------------------------------------------- the runner
def _outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed / failed / skipped from a JUnit XML report."""
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        results[test] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return results


def run_mode(suite: Suite, mode: str, root: Path, extra: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="headsparse-suite-") as tmp:
        junit, report = Path(tmp) / "junit.xml", Path(tmp) / "report.json"
        env = {**os.environ, ENV_MODE: mode, ENV_CLASSES: ",".join(suite.classes), ENV_REPORT: str(report),
               "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "pytest", suite.test_file, "-q", "-p", "no:cacheprovider", "-p",
               "diffusers_suites", f"--junitxml={junit}", *extra]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if not junit.exists():
            raise RuntimeError(f"pytest wrote no report for {mode} (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                               f"\n{proc.stderr[-3000:]}")
        info = json.loads(report.read_text()) if report.exists() else {}
        return _outcomes(junit), info


def run_suite(name: str, root: Path, modes: list[str], extra: list[str]) -> int:
    """Run one suite in every mode, print its table; the number of tests whose outcome differs from unpatched."""
    suite = SUITES[name]
    target = root / suite.test_file
    if suite.generated is not None:
        target.write_text(suite.generated)
    elif not target.exists():
        raise SystemExit(f"{target} does not exist: extract diffusers' tests/ into --root")
    try:
        results = {mode: run_mode(suite, mode, root, extra) for mode in modes}
    finally:
        if suite.generated is not None:
            target.unlink()
    print(f"{name}: {suite.test_file} ({', '.join(suite.classes)})")
    print(f"{'mode':10} {'passed':>6} {'failed':>6} {'skipped':>7} {'instances':>9} {'sparse calls':>12}")
    for mode, (outcomes, info) in results.items():
        counts = {k: sum(1 for v in outcomes.values() if v == k) for k in ("passed", "failed", "skipped")}
        print(f"{mode:10} {counts['passed']:6d} {counts['failed']:6d} {counts['skipped']:7d} "
              f"{info.get('instances', '-')!s:>9} {info.get('sparse_calls', '-')!s:>12}")
    base = results.get("unpatched", (None,))[0]
    differ = 0
    if base is not None:
        for mode, (outcomes, _) in results.items():
            for test, outcome in sorted(outcomes.items()):
                if base.get(test) != outcome:
                    differ += 1
                    print(f"  {mode}: {test}: {outcome} (unpatched: {base.get(test)})")
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"one or more of: {', '.join(sorted(SUITES))}")
    parser.add_argument("--all", action="store_true", help="every suite listed")
    parser.add_argument("--root", type=Path, required=True, help="folder holding diffusers' extracted tests/")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES),
                        help="neighborhood: a 3x3 window, for image models whose one frame spatial keeps whole")
    parser.add_argument("--pytest-args", nargs="*", default=[], help="passed on to pytest")
    args = parser.parse_args(argv)
    names = sorted(SUITES) if args.all else args.suites
    if not names:
        parser.error("name a suite or pass --all")
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown suites {unknown}; choose from {', '.join(sorted(SUITES))}")
    return 1 if sum(run_suite(n, args.root, args.modes, args.pytest_args) for n in names) else 0


if __name__ == "__main__":
    sys.exit(main())
