"""nimtrail.import_guard: a library kept out of a process behaves as if not installed."""

import subprocess
import sys

CHECK = """
import sys
from nimtrail import import_guard
import_guard.keep_out("pandas")
try:
    import pandas
except ImportError:
    pass
else:
    raise SystemExit("pandas was imported")
import pyarrow as pa
assert pa.array(["a", None], type=pa.string()).null_count == 1  # pyarrow probes for pandas here
assert "pandas" not in sys.modules
print("ok")
"""


def test_a_kept_out_library_is_not_imported_and_pyarrow_converts_without_it():
    # A fresh interpreter: this one may have imported pandas already (the app's tests do).
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
