"""impl="tuned" and the tuning table (moejax/kernels/autotune.py)."""

import dataclasses
import json
import os
from unittest import mock

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax import kernels
from moejax.kernels import Tiling, autotune, gmm, record, tgmm, xla
from moejax.kernels.tiling import default_tiling
from tests.kernels.reference import Problem, check_problem

SMALL = autotune.Problem(rows=96, k=24, n=40, local_groups=3, num_groups=5,
                         lhs_dtype="float32", rhs_dtype="float32", out_dtype="float32")


@pytest.fixture
def table(tmp_path):
    """A tuning table in a temporary directory; nothing is written under the real cache."""
    path = str(tmp_path / "tuning" / "gmm.json")
    gin.bind_parameter("gmm_tuning.table_path", path)
    gin.bind_parameter("gmm_tuning.reps", 1)
    return path


def write_table(path, entries, fmt=autotune.TABLE_FORMAT):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"format": fmt, "entries": entries}, f)


def key_of(problem):
    return autotune.problem_key(problem, autotune.device_key())


def test_tuned_gmm_matches_ragged_dot_and_records_every_candidate(table):
    # Empty groups, rows past the group-size sum and a group_offset slice: the tuned path
    # must give ragged_dot's output and gradients, like every implementation.
    problem = Problem(m=40, k=24, n=40, group_sizes=(7, 0, 20, 5, 3), num_local=3, offset=1,
                      dtype="float32", out_dtype=None, seed=3)
    check_problem(problem, "tuned")
    entries = json.load(open(table))["entries"]
    tuned = autotune.Problem(rows=40, k=24, n=40, local_groups=3, num_groups=5,
                             lhs_dtype="float32", rhs_dtype="float32", out_dtype="float32")
    entry = entries[key_of(tuned)]
    expected = autotune.candidates(tuned, "cpu")
    assert len(entry["candidates"]) == len(expected) >= 3
    times = {c["seconds"] for c in entry["candidates"]}
    assert entry["seconds"] in times
    assert entry["seconds"] <= (1 + 0.03) * min(times)
    assert (entry["impl"], autotune.tiling_from_dict(entry["tiling"])) in expected
    assert not [name for name in os.listdir(os.path.dirname(table)) if name.endswith(".tmp")]


def test_a_known_problem_is_read_from_the_table_not_measured(table):
    # The table says "xla" with no tiling: gmm must run xla's kernel (forward and backward)
    # and must not measure anything.
    write_table(table, {key_of(SMALL): {"impl": "xla", "tiling": {}}})
    rng = np.random.default_rng(0)
    lhs = jnp.asarray(rng.standard_normal((SMALL.rows, SMALL.k)), jnp.float32)
    rhs = jnp.asarray(rng.standard_normal((SMALL.local_groups, SMALL.k, SMALL.n)), jnp.float32)
    sizes = jnp.asarray([30, 30, 36, 0, 0], jnp.int32)
    with mock.patch.object(autotune, "measure_seconds", side_effect=AssertionError("measured")), \
            mock.patch.object(xla, "gmm", wraps=xla.gmm) as spy_gmm, \
            mock.patch.object(xla, "tgmm", wraps=xla.tgmm) as spy_tgmm:
        out, grads = jax.value_and_grad(
            lambda l, r: gmm(l, r, sizes, impl="tuned").sum(), argnums=(0, 1))(lhs, rhs)
        weight_grad = tgmm(lhs, jnp.ones((SMALL.rows, SMALL.n)), sizes, num_groups=3,
                           impl="tuned")
    # forward and d_lhs (rhs transposed) through xla's gmm; d_rhs and the tgmm call through its tgmm
    assert {call.kwargs.get("transpose_rhs", False) for call in spy_gmm.call_args_list} == {
        False, True}
    assert spy_tgmm.call_count == 2
    # against a loop over the three local groups (rows 0-30, 30-60, 60-96; none left over)
    lhs_np, rhs_np, ones = np.asarray(lhs), np.asarray(rhs), np.ones((SMALL.rows, SMALL.n))
    spans = [(0, 30), (30, 60), (60, 96)]
    want = sum(float((lhs_np[a:b] @ rhs_np[g]).sum()) for g, (a, b) in enumerate(spans))
    np.testing.assert_allclose(float(out), want, rtol=1e-4)
    d_lhs = np.concatenate([ones[a:b] @ rhs_np[g].T for g, (a, b) in enumerate(spans)])
    d_rhs = np.stack([lhs_np[a:b].T @ ones[a:b] for a, b in spans])
    np.testing.assert_allclose(np.asarray(grads[0]), d_lhs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(grads[1]), d_rhs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(weight_grad), d_rhs, rtol=1e-4, atol=1e-4)


def test_tune_takes_the_fastest_and_records_failures():
    choices = [("cpu", default_tiling("cpu")), ("cpu", Tiling(block_m=256, min_block_m=16)),
               ("xla", Tiling()), ("cpu", Tiling(block_m=1024, min_block_m=16))]
    seconds = {0: 3.0, 1: 1.0, 3: float("nan")}

    def fake(impl, tiling, problem):
        index = choices.index((impl, tiling))
        if index == 2:
            raise RuntimeError("out of shared memory\nsecond line")
        return seconds[index]

    messages = []
    entry = autotune.tune(SMALL, choices, fake, progress=messages.append)
    assert (entry["impl"], entry["tiling"]["block_m"], entry["seconds"]) == ("cpu", 256, 1.0)
    errors = [c.get("error") for c in entry["candidates"]]
    assert errors[0] is None and errors[1] is None
    assert errors[2] == "RuntimeError: out of shared memory"
    assert "nan" in errors[3]
    assert len(messages) == 5 and "chose cpu rows 256..16" in messages[-1]
    assert entry["problem"]["rows"] == SMALL.rows


def test_the_default_keeps_near_ties():
    choices = [("cpu", default_tiling("cpu")), ("xla", Tiling())]
    times = {"cpu": 1.02, "xla": 1.0}
    entry = autotune.tune(SMALL, choices, lambda impl, t, p: times[impl], progress=lambda m: None)
    assert entry["impl"] == "cpu"
    times["xla"] = 0.9
    entry = autotune.tune(SMALL, choices, lambda impl, t, p: times[impl], progress=lambda m: None)
    assert entry["impl"] == "xla"


def test_no_candidate_runs():
    def broken(impl, tiling, problem):
        raise ValueError(f"{impl} broke")

    with pytest.raises(RuntimeError, match="no implementation ran.*cpu: ValueError: cpu broke"):
        autotune.tune(SMALL, [("cpu", Tiling())], broken, progress=lambda m: None)


def test_candidates_per_backend():
    bf16 = autotune.Problem(rows=4096, k=1024, n=1024, local_groups=8, num_groups=8,
                            lhs_dtype="bfloat16", rhs_dtype="bfloat16", out_dtype="bfloat16")
    f32 = autotune.Problem(**{**bf16.__dict__, "lhs_dtype": "float32", "rhs_dtype": "float32"})
    for backend, first in (("cpu", "cpu"), ("gpu", "pallas_gpu"), ("tpu", "pallas_tpu")):
        found = autotune.candidates(bf16, backend, (9, 0) if backend == "gpu" else None)
        assert found[0] == (first, default_tiling(first))  # the "auto" choice leads
        assert len(found) == len(set(found)) >= 3
        assert all(impl in autotune.TUNABLE and isinstance(t, Tiling) for impl, t in found)
    impls = [impl for impl, _ in autotune.candidates(bf16, "gpu", (9, 0))]
    assert "mosaic_gpu" in impls and "cudnn" in impls and "xla" in impls
    # both Hopper kernel kinds; 64-row tiles only for small groups (here 512 rows each)
    hopper = [t for impl, t in autotune.candidates(bf16, "gpu", (9, 0)) if impl == "mosaic_gpu"]
    assert sorted(t.num_warps for t in hopper) == [4, 8] and {t.block_m for t in hopper} == {128}
    small = autotune.Problem(**{**bf16.__dict__, "local_groups": 64, "num_groups": 64})
    hopper = [t for impl, t in autotune.candidates(small, "gpu", (9, 0)) if impl == "mosaic_gpu"]
    assert [(t.block_m, t.num_warps) for t in hopper] == [(128, 4), (128, 8), (64, 8)]
    assert "mosaic_gpu" not in [i for i, _ in autotune.candidates(bf16, "gpu", (8, 0))]
    assert "mosaic_gpu" not in [i for i, _ in autotune.candidates(bf16, "gpu", None)]
    assert "mosaic_gpu" not in [i for i, _ in autotune.candidates(f32, "gpu", (9, 0))]
    # a T4 (7.5) compiles no Triton kernel: ragged_dot is all that is left to time
    assert autotune.candidates(bf16, "gpu", (7, 5)) == [("xla", default_tiling("xla"))]
    # the slab alternative only where the slab can be used (experts of >= 2**18 weights)
    assert any(t.slab == 0 for _, t in autotune.candidates(bf16, "cpu"))
    assert not any(t.slab == 0 for _, t in autotune.candidates(SMALL, "cpu"))


@pytest.mark.parametrize("content, message", [
    ("{not json", "is unreadable"),
    ('{"format": "other/9", "entries": {}}', "format 'other/9'"),
    ('[1, 2]', "format 'list'"),
    (json.dumps({"format": autotune.TABLE_FORMAT, "entries": []}), "'entries' must be"),
    (json.dumps({"format": autotune.TABLE_FORMAT,
                 "entries": {"k1": {"impl": "auto", "tiling": {}}}}), "entry 'k1'.*'auto'"),
    (json.dumps({"format": autotune.TABLE_FORMAT,
                 "entries": {"k2": {"impl": "cpu", "tiling": {"block_m": 3}}}}),
     "entry 'k2'.*power of two"),
    (json.dumps({"format": autotune.TABLE_FORMAT,
                 "entries": {"k3": {"impl": "cpu", "tiling": {"rows": 8}}}}), "entry 'k3'"),
    (json.dumps({"format": autotune.TABLE_FORMAT, "entries": {"k4": {"tiling": {}}}}),
     "entry 'k4'.*impl"),
])
def test_malformed_tables_name_the_file_and_entry(tmp_path, content, message):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(autotune.TuningTableError, match=message) as error:
        autotune.read_table(str(path))
    assert str(path) in str(error.value)
    # adding to it is refused and the file is left exactly as it was
    with pytest.raises(autotune.TuningTableError):
        autotune.add_entry(str(path), "new", {"impl": "cpu", "tiling": {}})
    assert path.read_text() == content
    assert sorted(os.listdir(tmp_path)) == ["t.json", "t.json.lock"]


def test_entries_accumulate(tmp_path):
    path = str(tmp_path / "deeper" / "t.json")
    assert autotune.read_table(path) == {}
    autotune.add_entry(path, "a", {"impl": "cpu", "tiling": {"block_m": 256}})
    autotune.add_entry(path, "b", {"impl": "xla", "tiling": {}})
    autotune.add_entry(path, "a", {"impl": "cpu", "tiling": {"block_m": 128}})
    assert autotune.read_table(path) == {"a": ("cpu", Tiling(block_m=128)), "b": ("xla", Tiling())}


def test_multi_process_jobs_must_not_measure(table):
    with mock.patch.object(jax, "process_count", return_value=4), \
            pytest.raises(RuntimeError, match="python -m moejax.kernels.autotune"):
        autotune.tuned_choice(SMALL, measure=lambda *a: 1.0)
    write_table(table, {key_of(SMALL): {"impl": "cpu", "tiling": {"block_m": 64}}})
    with mock.patch.object(jax, "process_count", return_value=4):
        assert autotune.tuned_choice(SMALL) == ("cpu", Tiling(block_m=64))


def test_tuned_refuses_an_explicit_tiling():
    x = jnp.ones((8, 4))
    with pytest.raises(ValueError, match="'tuned' chooses the tiling"):
        gmm(x, jnp.ones((2, 4, 4)), jnp.array([4, 4]), impl="tuned", tiling=Tiling())
    assert kernels.resolve_impl("tuned") == "tuned"


def test_settings_validate():
    with pytest.raises(ValueError, match="gmm_tuning.reps = 0"):
        autotune.gmm_tuning(reps=0)
    with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": "/x/cache"}):
        assert autotune.gmm_tuning().table_path == "/x/cache/moejax/gmm_tuning.json"


def test_command_line(tmp_path, capsys):
    path = str(tmp_path / "cli.json")
    argv = ["--rows", "64", "--k", "16", "--n", "8", "--groups", "2", "--num-groups", "4",
            "--gin_bindings", f"gmm_tuning.table_path = '{path}'", "--gin_bindings", "gmm_tuning.reps = 1"]
    assert autotune.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["table"] == path and printed["key"] in autotune.read_table(path)
    assert autotune.main(argv[:6] + ["--groups", "3", "--num-groups", "2"]) == 2
    assert "--num-groups 2 < --groups 3" in capsys.readouterr().err
    assert autotune.main(argv[:7] + ["0"] + argv[8:]) == 2
    assert "local_groups = 0" in capsys.readouterr().err


def test_an_unwritable_table_warns_and_keeps_the_measurement(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = autotune.TuningSettings(table_path=str(blocker / "gmm.json"), reps=1)
    with pytest.warns(UserWarning, match="could not write the tuning table .*file/gmm.json"):
        impl, tiling = autotune.tuned_choice(
            SMALL, settings, measure=lambda i, t, p: 1.0 if t.block_m == 256 else 2.0)
    assert (impl, tiling.block_m) == ("cpu", 256)
    assert blocker.read_text() == "not a directory"


def test_the_record_keeps_the_programs_choices_not_the_measured_candidates(table):
    # "tuned" measures its candidates by calling gmm with each of them: those calls must not
    # appear in the record, only the program's own two problems (the first one twice).
    rng = np.random.default_rng(1)
    lhs = jnp.asarray(rng.standard_normal((SMALL.rows, SMALL.k)), jnp.float32)
    rhs = jnp.asarray(rng.standard_normal((SMALL.local_groups, SMALL.k, SMALL.n)), jnp.float32)
    sizes = jnp.asarray([30, 30, 36, 0, 0], jnp.int32)
    with record.recording() as choices:
        jax.jit(lambda l, r: gmm(l, r, sizes, impl="tuned") + gmm(l, r, sizes, impl="tuned"))(
            lhs, rhs)
        jax.jit(lambda l, r: gmm(l, r[:, :, :8], sizes))(lhs, rhs)
    gmm(lhs, rhs, sizes, impl="xla")  # after the block: not recorded
    entry = json.load(open(table))["entries"][key_of(SMALL)]
    assert len(entry["candidates"]) >= 3  # it did measure (through gmm) while recording
    tuned_tiling = None if entry["impl"] == "xla" else entry["tiling"]
    narrow = dict(dataclasses.asdict(SMALL), n=8)
    assert choices == [
        {"requested": "tuned", "impl": entry["impl"], "problem": dataclasses.asdict(SMALL),
         "tiling": tuned_tiling, "choice": autotune.describe_choice(
             entry["impl"], autotune.tiling_from_dict(entry["tiling"]))},
        {"requested": "auto", "impl": "cpu", "problem": narrow,
         "tiling": dataclasses.asdict(default_tiling("cpu")),
         "choice": autotune.describe_choice("cpu", default_tiling("cpu"))}]
