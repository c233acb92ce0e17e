"""Fresh interpreters that run this very package: the page reader, the demo's simulator."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# Imports `mirror` from PACKAGE, whatever the new interpreter's sys.path finds first (a
# mirror.py in the working directory, another installed copy), then calls the entry point
# with the remaining arguments as its sys.argv[1:].
_BOOTSTRAP = """
import importlib, importlib.util, os, sys
package, entry = sys.argv[1:3]
spec = importlib.util.spec_from_file_location("mirror", os.path.join(package, "__init__.py"),
                                              submodule_search_locations=[package])
sys.modules["mirror"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.argv[:3] = [entry]
name, _, function = entry.partition(":")
getattr(importlib.import_module(name), function)()
"""


def python_command(entry: str, *args: str) -> list[str]:
    """The command that runs `entry` ("module:function") of this package in a fresh interpreter, with `args`."""
    # -P: the working directory is not on the new interpreter's path, as it is not on a console script's.
    return [sys.executable, "-P", "-c", _BOOTSTRAP, str(PACKAGE), entry, *args]
