"""kernels.json (moejax/train/kernel_log.py): segments per process start, malformed files kept."""

import json
import os

from moejax.train.kernel_log import FILENAME, FORMAT, KernelLog

ENTRY = {"requested": "auto", "impl": "cpu", "choice": "cpu rows 512..16 slab 2",
         "problem": {"rows": 256, "k": 32, "n": 64, "local_groups": 4, "num_groups": 4,
                     "lhs_dtype": "float32", "rhs_dtype": "float32", "out_dtype": "float32"},
         "tiling": None}


def segments(workdir):
    with open(os.path.join(workdir, FILENAME)) as f:
        record = json.load(f)
    assert record["format"] == FORMAT
    return record["segments"]


def test_a_resume_adds_a_segment_and_drops_those_it_trains_again(tmp_path):
    messages = []
    KernelLog(str(tmp_path), 0, messages.append).update([ENTRY])
    KernelLog(str(tmp_path), 10, messages.append).update([ENTRY])
    assert [s["start_step"] for s in segments(tmp_path)] == [0, 10]
    # a restart from step 5 (a checkpoint older than the second start) retrains steps 5..: the
    # segment of the start at 10 no longer describes any kept step
    KernelLog(str(tmp_path), 5, messages.append).update([])
    assert [(s["start_step"], len(s["gmm"])) for s in segments(tmp_path)] == [(0, 1), (5, 0)]
    assert sum("gmm auto -> cpu rows 512..16 slab 2" in m for m in messages) == 2
    assert not [n for n in os.listdir(tmp_path) if n != FILENAME]  # no temporaries left


def test_update_writes_only_new_choices(tmp_path):
    log = KernelLog(str(tmp_path), 0, lambda message: None)
    choices = [ENTRY]
    log.update(choices)
    os.remove(tmp_path / FILENAME)
    log.update(choices)  # nothing new: no write
    assert not os.path.exists(tmp_path / FILENAME)
    choices.append(dict(ENTRY, requested="tuned"))
    log.update(choices)
    assert [e["requested"] for e in segments(tmp_path)[0]["gmm"]] == ["auto", "tuned"]


def test_a_malformed_file_is_moved_aside_and_named(tmp_path):
    for content in ("{not json", json.dumps({"format": "other"}),
                    json.dumps({"format": FORMAT, "segments": [{"start_step": "0"}]})):
        (tmp_path / FILENAME).write_text(content)
        messages = []
        KernelLog(str(tmp_path), 3, messages.append).update([ENTRY])
        (aside,) = [n for n in os.listdir(tmp_path) if n.startswith(FILENAME + ".unreadable")]
        assert (tmp_path / aside).read_text() == content  # kept byte for byte
        assert any("malformed" in m and aside in m for m in messages)
        assert [s["start_step"] for s in segments(tmp_path)] == [3]
        os.remove(tmp_path / aside)
