"""An exported run loaded by transformers itself (AutoModelForCausalLM, AutoTokenizer), when torch
and transformers are installed; they are not moejax dependencies, so CI skips this file and
tests/export/hf_reference.py stands in for them there. transformers runs in a process of its own
(tests/export/transformers_logits.py): torch's Triton crashes when loaded next to jaxlib and
TensorFlow. Run it in an environment with both: ``pip install torch transformers`` then
``python -m pytest tests/export/test_transformers.py``."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

MISSING = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed "
                                "(not moejax dependencies)")
SCRIPT = os.path.join(os.path.dirname(__file__), "transformers_logits.py")


@pytest.mark.parametrize("run, fmt", [("trained_run", "mixtral"), ("trained_run", "qwen2_moe"),
                                      ("trained_dense_run", "llama")])
def test_transformers_gives_the_same_logits_and_token_ids(request, tmp_path, run, fmt):
    from moejax.data.vocabularies import get_vocabulary
    from moejax.export.cli import export_run
    from moejax.train.run import restore_run

    trained_run = request.getfixturevalue(run)
    out = export_run(trained_run, format_name=fmt, out=str(tmp_path / fmt),
                     log=lambda line: None)["out"]
    text = "The king said: Ünïcode café, 1603."
    result = subprocess.run([sys.executable, SCRIPT, out, text], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    assert theirs["class"] == {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                               "llama": "LlamaForCausalLM"}[fmt]
    ids = [int(i) for i in get_vocabulary("byte").encode(text)]
    assert theirs["ids"] == ids and theirs["decoded"] == text
    model, state, _ = restore_run(trained_run, 4)
    ours, _ = model.apply(state.params, np.array([ids], np.int32), buffers=state.buffers)
    np.testing.assert_allclose(np.array(theirs["logits"]), np.asarray(ours[0]), rtol=1e-4,
                               atol=1e-4)
    assert theirs["generated"] == len(ids) + 4
