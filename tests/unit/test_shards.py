import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipeline.data.shards import SCHEMA, arrow_array


@pytest.mark.parametrize(
    ("values", "type"),
    [
        ([b"\xff\xd8jpeg", b"", b"\x00" * 5], pa.binary()),
        (["n01440764/a.JPEG", "", "ünïcode"], pa.string()),
        ([0, -1, 999, 2**31 - 1], pa.int32()),
        ([0, 2**32 - 1, 7], pa.uint32()),
        (np.array([5, 0, 2**40]), pa.int64()),
        ([], pa.binary()),
        ([], pa.int32()),
    ],
)
def test_arrow_array_equals_pa_array(values, type):
    built = arrow_array(values, type)
    built.validate(full=True)
    assert built.equals(pa.array(list(values), type=type))


def test_a_record_batch_over_2_gib_is_refused_with_the_setting_to_change():
    with pytest.raises(ValueError, match="data.rows_per_batch"):
        arrow_array([b"x" * 2**30, b"x" * 2**30], pa.binary())


def test_building_a_shard_record_batch_does_not_import_pandas():
    """pa.array imports pandas (in every shard job); arrow_array must not."""
    code = """
import sys
from pipeline.data.shards import SCHEMA, arrow_array
row = {"image": [b"jpeg"], "label": [3], "key": ["a.JPEG"], "crc32": [7]}
columns = [arrow_array(row[f.name], f.type) for f in SCHEMA]
print(len(columns), "pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(SCHEMA)), "False"]
