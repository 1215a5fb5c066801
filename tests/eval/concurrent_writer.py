"""A points writer for test_points' concurrency test, importable without TensorFlow so that each
spawned process starts in about a second."""

from moejax.eval.points import write_points


def write_one_at_a_time(path, records, start_together):
    start_together.wait(timeout=120)  # every writer starts once all have imported
    for record in records:
        write_points(path, [record])
