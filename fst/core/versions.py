"""Library versions recorded beside what a stage writes (checkpoints, bundles, results).

One function for every stage. It reads the installed distributions' metadata and imports
nothing: importing torch only to ask its version costs seconds and hundreds of MB.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from importlib import metadata

import fst


def library_versions(
    distributions: Mapping[str, str | tuple[str, ...]] | tuple[str, ...],
) -> dict[str, str]:
    """{"fst": ..., "python": ..., key: version} for the installed ones of `distributions`.

    `distributions` names pip distributions ("numpy"), or maps the key to record to the
    distribution ({"pytorch_lightning": "pytorch-lightning"}) or to alternatives, the first
    installed one counting ({"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}). A library
    that is not installed is left out.
    """
    if not isinstance(distributions, Mapping):
        distributions = {name: name for name in distributions}
    versions = {"fst": fst.__version__, "python": platform.python_version()}
    for key, names in distributions.items():
        for name in (names,) if isinstance(names, str) else names:
            try:
                versions[key] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions
