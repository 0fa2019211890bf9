"""Keeping optional libraries that no stage uses out of the stage processes.

pyarrow probes for pandas the first time it converts a Python list (`pa.array`), and
imports it when it is installed (the app's Streamlit brings it into the same environment):
in the processor, whose first columnar audit message does that, the import took ~0.4 s
and 46 MB of RSS, and the warehouse loaded it too. No stage calls pandas; with its import
refused, the probe finds no pandas and pyarrow converts without it.
"""

from __future__ import annotations

import importlib.abc
import sys

# Imported by libraries the stages use, never needed by a stage.
UNUSED_BY_STAGES = ("pandas",)


class _Refuse(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: an import of one of `names` (or a submodule) fails as if
    it were not installed. (A None in sys.modules would not do: Cython-compiled importers
    such as pyarrow's take the None as the module.)"""

    def __init__(self, names: tuple[str, ...]):
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not used by this process)",
                                      name=fullname)
        return None


def keep_out(*names: str) -> None:
    """Make `import name` fail with ImportError in this process from now on. A module
    already imported is left alone."""
    sys.meta_path.insert(0, _Refuse(names))
