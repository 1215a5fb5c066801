"""The sweep's training processes get tcmalloc preloaded when the machine has it, and only then."""

import os
import subprocess
import sys

import pytest

from moejax.errors import ConfigError
from moejax.sweep.allocator import find_tcmalloc, training_environment


@pytest.fixture
def fake_lib(tmp_path):
    (tmp_path / "lib").mkdir()
    path = tmp_path / "lib" / "libtcmalloc_minimal.so.4"
    path.write_bytes(b"")
    return str(path)


def test_found_library_is_preloaded_after_nothing_and_before_other_preloads(tmp_path, fake_lib):
    dirs = (str(tmp_path / "missing"), str(tmp_path / "lib"))
    env, line = training_environment({"PATH": "/bin"}, dirs)
    assert env["LD_PRELOAD"] == fake_lib and env["PATH"] == "/bin"
    assert "tcmalloc preloaded" in line and fake_lib in line
    env, _ = training_environment({"LD_PRELOAD": "/opt/libprofiler.so"}, dirs)
    assert env["LD_PRELOAD"] == f"{fake_lib}:/opt/libprofiler.so"


def test_no_library_or_switched_off_leaves_the_environment_alone(tmp_path, fake_lib):
    env, line = training_environment({"X": "1"}, (str(tmp_path / "missing"),))
    assert env == {"X": "1"} and "apt install libtcmalloc-minimal4" in line
    env, line = training_environment({"MOEJAX_TCMALLOC": "0"}, (os.path.dirname(fake_lib),))
    assert "LD_PRELOAD" not in env and "MOEJAX_TCMALLOC=0" in line


def test_an_allocator_already_preloaded_is_kept(fake_lib):
    environ = {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}
    env, line = training_environment(environ, (os.path.dirname(fake_lib),))
    assert env["LD_PRELOAD"] == "/usr/lib/libjemalloc.so.2" and "left as is" in line


def test_explicit_path_is_used_and_a_missing_one_is_named(tmp_path, fake_lib):
    env, _ = training_environment({"MOEJAX_TCMALLOC": fake_lib}, ())
    assert env["LD_PRELOAD"] == fake_lib
    missing = str(tmp_path / "nope.so")
    with pytest.raises(ConfigError, match="MOEJAX_TCMALLOC=.*nope.so.*no such file"):
        training_environment({"MOEJAX_TCMALLOC": missing}, ())


@pytest.mark.skipif(find_tcmalloc() is None, reason="no tcmalloc on this machine")
def test_a_training_process_really_runs_on_tcmalloc():
    env, _ = training_environment({k: v for k, v in os.environ.items()
                                   if k not in ("LD_PRELOAD", "MOEJAX_TCMALLOC")})
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"],
                          env=env, capture_output=True, text=True, check=True).stdout
    assert "libtcmalloc" in maps
