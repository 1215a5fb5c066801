"""moejax.eval.points: record contents, round trips, idempotent merges, schema versions, locking.

Records are built from configs constructed here (dense, homogeneous MoE with capacity,
heterogeneous MoE with shared experts); nothing is trained.
"""

import json
import multiprocessing
import os

import pandas as pd
import pytest

from moejax.data import DataConfig
from moejax.eval import points as points_lib
from moejax.eval.points import (SCHEMA_VERSION, PointsError, SchemaVersionError, load_points,
                                write_points)
from moejax.model.config import ModelConfig, MoEConfig
from moejax.train.config import TrainConfig
from tests.eval.concurrent_writer import write_one_at_a_time

DATA = DataConfig(vocabulary="byte", seq_len=64, batch_size=8)
TRAIN = TrainConfig(steps=100, learning_rate=1e-3, schedule="wsd")
BASE = dict(vocab_size=260, d_model=32, n_layers=2, n_heads=2, d_ff=64)
MODELS = {
    "dense": ModelConfig(**BASE),
    "moe": ModelConfig(**BASE, moe=MoEConfig(num_experts=4, top_k=2, d_expert=16,
                                             capacity_factor=1.25)),
    "hetero": ModelConfig(**BASE, moe=MoEConfig(expert_groups=((4, 32, 1), (8, 8, 2)),
                                                num_shared_experts=1, d_shared_expert=16)),
}


def make_point(name, step, loss=3.0, tasks=("moejax_bible", "moejax_wiki"), real=None):
    identity = points_lib.run_identity(f"/runs/{name}", {"name": name})
    losses = {DATA.mixture: loss, **{task: loss + 0.1 * i for i, task in enumerate(tasks)}}
    return points_lib.build_point(
        identity=identity, step=step, model=MODELS[name], data=DATA, train=TRAIN, losses=losses,
        eval_tokens={task: 512 for task in losses}, eval_batches=2,
        eval_capacity_factor=None if name != "moe" else 2.0, tokens_seen_real=real,
        code_version="abc123", evaluated_at=1.7e9 + step, checkpoint_saved_at=None)


def records():
    return [make_point("dense", 50, 3.5, real=25_000), make_point("dense", 100, 3.25),
            make_point("moe", 100, 3.0, tasks=("moejax_bible",)),
            make_point("hetero", 100, 2.875 + 1e-13)]


def test_a_point_holds_what_the_laws_need():
    point = make_point("hetero", 100)
    assert point["schema_version"] == SCHEMA_VERSION
    assert point["run_id"] == "hetero-" + point["config_hash"] and point["run_name"] == "hetero"
    assert point["tokens_seen"] == 100 * 8 * 64
    # Hand counts: experts 4 + 8, top-k 1 + 2; mean expert width (4*32 + 8*8) / 12 = 16.
    assert point["num_experts"] == 12 and point["top_k"] == 3
    assert point["granularity"] == pytest.approx(64 / 16)
    assert json.loads(point["moe.groups"]) == [[4, 32, 1], [8, 8, 2]]
    # Active params by hand: embedding 260*32; attention 2 * 4*32*32; norms (2*2+1)*32;
    # per MoE block: routers 32*(4+8), experts 1 of width 32 + 2 of width 8, shared width 16.
    swiglu = lambda width: 3 * 32 * width
    active = 260 * 32 + 2 * 4 * 32 * 32 + 5 * 32 + 2 * (32 * 12 + swiglu(32) + 2 * swiglu(8)
                                                        + swiglu(16))
    assert point["n_active"] == active
    assert point["n_active_non_embedding"] == active - 260 * 32
    assert point["train_flops"] == pytest.approx(point["flops.train_per_token"] * 100 * 8 * 64)
    assert point["train_flops_6n"] == 6 * active * 100 * 8 * 64
    assert point["loss_moejax_embedded"] == point["loss"] == 3.0
    assert point["train.learning_rate"] == 1e-3 and point["train.schedule"] == "wsd"
    assert point["data.batch_size"] == 8 and point["data.seq_len"] == 64
    assert "paper.joint_moe.N_act" in point and "memory.training_state_bytes" in point
    dense = make_point("dense", 1)
    assert dense["is_moe"] is False and dense["moe.num_experts"] is None
    assert dense["num_experts"] == 1 and dense["granularity"] == 1.0


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_round_trip_keeps_every_value(tmp_path, suffix):
    path = str(tmp_path / f"points.{suffix}")
    original = records()
    write_points(path, original)
    frame = load_points(path)
    assert list(zip(frame["run_id"], frame["step"])) == [(r["run_id"], r["step"]) for r in original]
    for row, record in zip(frame.to_dict("records"), original):
        for column, value in record.items():
            loaded = row[column]
            if value is None:
                assert pd.isna(loaded), column
            else:
                assert loaded == value and type(value)(loaded) == value, column
        assert pd.isna(row["loss_moejax_wiki"]) == ("loss_moejax_wiki" not in record)
    assert str(frame["step"].dtype) == "Int64" and str(frame["loss"].dtype) == "float64"
    assert str(frame["moe.num_experts"].dtype) == "Int64"  # an int column with a dense row's gap


def test_the_three_formats_load_to_identical_frames(tmp_path):
    frames = []
    for suffix in ("jsonl", "csv", "parquet"):
        path = str(tmp_path / f"points.{suffix}")
        write_points(path, records())
        frames.append(load_points(path))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    pd.testing.assert_frame_equal(frames[0], frames[2])


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_rewriting_is_idempotent_and_replaces_records(tmp_path, suffix):
    path = str(tmp_path / f"points.{suffix}")
    assert write_points(path, records()) == 4
    with open(path, "rb") as f:
        first = f.read()
    assert write_points(path, records()) == 4
    with open(path, "rb") as f:
        assert f.read() == first  # byte-identical: nothing duplicated, nothing reordered
    rescored = make_point("dense", 100, loss=2.5)
    assert write_points(path, [rescored]) == 4
    frame = load_points(path)
    assert len(frame) == 4 and not frame.duplicated(["run_id", "step"]).any()
    row = frame[(frame["run_name"] == "dense") & (frame["step"] == 100)]
    assert row.index.tolist() == [1] and row["loss"].item() == 2.5
    assert sorted(os.listdir(tmp_path)) == sorted([f"points.{suffix}", f"points.{suffix}.lock"])


def test_another_schema_version_is_refused_naming_both(tmp_path):
    path = str(tmp_path / "old.jsonl")
    record = dict(make_point("dense", 1), schema_version=0)
    with open(path, "w") as f:
        f.write(json.dumps(record) + "\n")
    with pytest.raises(SchemaVersionError, match=rf"{path}, line 1: points schema version 0, "
                                                 rf"but this moejax reads version {SCHEMA_VERSION}"):
        load_points(path)
    with pytest.raises(SchemaVersionError):
        write_points(path, [make_point("dense", 2)])  # never merged into, never clobbered
    with open(path) as f:
        assert json.loads(f.read())["schema_version"] == 0


def test_malformed_files_name_file_and_line(tmp_path):
    path = str(tmp_path / "points.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps(make_point("dense", 1)) + "\n" + '{"run_id": "x", "step"\n')
    with pytest.raises(PointsError, match=rf"{path}, line 2: not valid JSON"):
        load_points(path)
    csv_path = str(tmp_path / "points.csv")
    with open(csv_path, "w") as f:
        f.write("schema_version,run_id,step\n1,a,1\n1,b\n")
    with pytest.raises(PointsError, match=rf"{csv_path}, line 3: 2 cells for 3 columns"):
        load_points(csv_path)
    with pytest.raises(PointsError, match="does not exist"):
        load_points(str(tmp_path / "missing.jsonl"))
    with pytest.raises(PointsError, match="suffix says csv"):
        write_points(csv_path, [], format="parquet")


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "points.jsonl")
    batches = []
    for worker in range(4):
        batch = [dict(make_point("dense", step, loss=float(worker)), run_id=f"worker{worker}")
                 for step in range(5)]
        batches.append(batch)
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate hosts are
    start_together = context.Barrier(len(batches))
    workers = [context.Process(target=write_one_at_a_time, args=(path, batch, start_together))
               for batch in batches]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    frame = load_points(path)
    assert len(frame) == 20
    assert sorted(zip(frame["run_id"], frame["step"])) == sorted(
        (f"worker{w}", s) for w in range(4) for s in range(5))
    assert all(frame.loc[frame["run_id"] == f"worker{w}", "loss"].eq(w).all() for w in range(4))
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
