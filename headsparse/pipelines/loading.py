"""Which pipeline class a local folder holds, and loading it, without a hub.

A diffusers folder names its pipeline in ``model_index.json``: ``"_class_name": "WanPipeline"`` for
a class of diffusers itself, or ``["module", "ClassName"]`` for a custom pipeline (diffusers'
``custom_pipeline`` convention; a module file inside the folder, or an importable Python module).
headsparse's own embedded pipelines (``MovingShapesPipeline``, ``DriftingScenesPipeline``) are
known by name, so their folders load like any other.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

# Pipelines of headsparse itself: class name -> module.
EMBEDDED_PIPELINES = {
    "MovingShapesPipeline": "headsparse.pipelines.shapes",
    "DriftingScenesPipeline": "headsparse.pipelines.scenes",
}


class PipelineLoadError(ValueError):
    """A folder whose pipeline cannot be loaded; the message says what to pass instead."""


def read_model_index(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise PipelineLoadError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineLoadError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise PipelineLoadError(f"{path} has no \"_class_name\": it does not say which pipeline it holds")
    return index


def resolve_class(name: str | list[str] | tuple[str, str], folder: str | Path | None = None) -> type:
    """The pipeline class for a ``_class_name`` entry (see the module docstring)."""
    import diffusers

    where = f" (named in {Path(folder) / 'model_index.json'})" if folder is not None else ""
    if isinstance(name, (list, tuple)):
        if len(name) != 2 or not all(isinstance(n, str) for n in name):
            raise PipelineLoadError(f"\"_class_name\" {name!r}{where} must be a class name or [module, class]")
        module_name, class_name = name
        local = Path(folder) / f"{module_name}.py" if folder is not None else None
        try:
            if local is not None and local.is_file():
                spec = importlib.util.spec_from_file_location(f"headsparse_custom_{module_name}", local)
                module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            else:
                module = importlib.import_module(module_name)
            return getattr(module, class_name)
        except (ImportError, AttributeError) as exc:
            raise PipelineLoadError(f"cannot import the pipeline {class_name} from {module_name}{where}: {exc}; "
                                    "install the package that provides it") from None
    if not isinstance(name, str):
        raise PipelineLoadError(f"\"_class_name\" {name!r}{where} must be a class name or [module, class]")
    if hasattr(diffusers, name):
        return getattr(diffusers, name)
    if name in EMBEDDED_PIPELINES:
        return getattr(importlib.import_module(EMBEDDED_PIPELINES[name]), name)
    raise PipelineLoadError(
        f"the pipeline class {name}{where} is neither in diffusers {diffusers.__version__} nor one of headsparse's "
        f"({', '.join(EMBEDDED_PIPELINES)}); write \"_class_name\": [\"your.module\", \"{name}\"] there, or pass "
        "--model with a preset"
    )


def pipeline_class(folder: str | Path) -> type:
    """The pipeline class a local folder holds, from its model_index.json."""
    return resolve_class(read_model_index(folder)["_class_name"], folder)


def load_local_pipeline(folder: str | Path, dtype: Any, device: str) -> Any:
    """``from_pretrained`` on a local folder with the class it names; the progress bar off."""
    cls = pipeline_class(folder)
    if hasattr(cls, "load_local"):  # headsparse's embedded pipelines keep their text encoder in float32
        pipe = cls.load_local(folder, dtype, device)
    else:
        pipe = cls.from_pretrained(folder, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
