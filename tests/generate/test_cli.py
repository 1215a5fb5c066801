"""``moejax generate`` on a trained run: greedy output against the full forward pass re-run per
token, the text as the vocabulary decodes it, prompts files, and every bad input refused with the
reason and nothing written."""

import json
import shutil

import jax
import pytest

from moejax.generate import cli as generate_cli
from tests.generate.reference import greedy_by_full_forward


def _generate(capsys, *args):
    code = generate_cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _greedy_by_full_forward(workdir, step, prompt_ids, new_tokens, vocab_size):
    from moejax.train.run import restore_params

    model, params, buffers, _ = restore_params(workdir, step)
    return greedy_by_full_forward(jax.jit(model.apply), params, prompt_ids, new_tokens,
                                  vocab_size=vocab_size, width=len(prompt_ids) + 1 + new_tokens,
                                  buffers=buffers, eos_id=1)


def test_greedy_generation_writes_what_the_full_forward_pass_chooses(generate_run, tmp_path,
                                                                     capsys):
    from moejax.data.vocabularies import get_vocabulary

    out = tmp_path / "new" / "dir" / "gen.jsonl"  # its parents are made
    code, stdout, stderr = _generate(capsys, "--workdir", generate_run, "--prompt",
                                     "In the beginning", "--prompt=", "--temperature=0",
                                     "--max_new_tokens=6", "--step=2", "--out", str(out))
    assert code == 0, stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["In the beginning", ""]
    vocabulary = get_vocabulary("sentencepiece")
    for record in records:
        prompt_ids = list(vocabulary.encode(record["prompt"]))
        tokens, stop = _greedy_by_full_forward(generate_run, 2, prompt_ids, 6,
                                               vocabulary.vocab_size)
        assert (record["tokens"], record["stop"]) == (tokens, stop)
        assert record["prompt"] + record["text"] == vocabulary.decode(prompt_ids + tokens)
        assert record["step"] == 2 and record["temperature"] == 0.0
        assert record["prompt"] + record["text"] in stdout
    assert "tokens/s" in stderr


def test_a_long_generation_notes_the_trained_length(generate_run, capsys):
    code, stdout, stderr = _generate(capsys, "--workdir", generate_run, "--prompt", "a",
                                     "--max_new_tokens=40", "--top_k=5", "--top_p=0.9",
                                     "--quiet")
    assert code == 0, stderr
    assert "past the 32 positions the run trained on" in stderr
    assert "stop: " in stdout


def test_prompts_files(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("first line\n\n  \nsecond\n")
    assert generate_cli.read_prompts(["given"], str(text)) == ["given", "first line", "second"]
    lines = tmp_path / "prompts.jsonl"
    lines.write_text('{"prompt": "a"}\n\n{"prompt": "", "id": 3}\n')
    assert generate_cli.read_prompts([], str(lines)) == ["a", ""]
    lines.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:2: expected an object with a \"prompt\""):
        generate_cli.read_prompts([], str(lines))
    lines.write_text('{"prompt": "a"\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:1: not JSON"):
        generate_cli.read_prompts([], str(lines))
    with pytest.raises(ValueError, match="No such file"):
        generate_cli.read_prompts([], str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("args,status,message", [
    (["--prompt", "a", "--temperature=-1"], 2, "must be >= 0"),
    (["--prompt", "a", "--top_p=0"], 2, r"must be in \(0, 1\]"),
    (["--prompt", "a", "--max_new_tokens=0"], 2, "below 1"),
    (["--prompt", "a", "--step=latest!"], 2, "not 'latest' or a step number"),
    ([], 2, "no prompts"),
    (["--prompt", "a", "--step=3"], 1, "no finalized checkpoint at step 3; it has 2, 4"),
    (["--prompt", "a", "--out", "{file}/x.jsonl"], 2, "is a file, not a directory"),
    (["--prompt", "a", "--out", "{dir}"], 2, "is a directory"),
])
def test_bad_arguments_are_refused(generate_run, tmp_path, capsys, args, status, message):
    (tmp_path / "file").write_text("")
    args = [a.format(file=tmp_path / "file", dir=tmp_path) for a in args]
    try:
        code, _, stderr = _generate(capsys, "--workdir", generate_run, *args)
    except SystemExit as e:  # argparse's own refusals
        code, stderr = e.code, capsys.readouterr().err
    assert code == status
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written
    assert __import__("re").search(message, stderr), stderr


def test_runs_that_cannot_generate_are_refused(generate_run, tmp_path, capsys):
    code, _, stderr = _generate(capsys, "--workdir", str(tmp_path / "nope"), "--prompt", "a")
    assert (code, "is not a directory" in stderr) == (2, True)

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(f"{generate_run}/config.json", bare / "config.json")
    out = tmp_path / "out.jsonl"
    code, _, stderr = _generate(capsys, "--workdir", str(bare), "--prompt", "a", "--out",
                                str(out))
    assert (code, "has no finalized checkpoint" in stderr) == (1, True), stderr
    assert not out.exists()

    expert_choice = tmp_path / "expert_choice"
    shutil.copytree(generate_run, expert_choice)
    config = json.loads((expert_choice / "config.json").read_text())
    config["ModelConfig"]["moe"]["routing"] = "expert_choice"
    (expert_choice / "config.json").write_text(json.dumps(config))
    code, _, stderr = _generate(capsys, "--workdir", str(expert_choice), "--prompt", "a")
    assert code == 1 and "routes by expert choice" in stderr, stderr
