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


MOE, DENSE = ("smoke.gin",), ("base.gin", "models/dense_tiny.gin")
PER_HEAD, ACROSS_HEADS = "ModelConfig.qk_norm = 'per_head'", "ModelConfig.qk_norm = 'across_heads'"
CLASSES = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
           "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM",
           "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "deepseek_v3": "DeepseekV3ForCausalLM"}
LATENT = ("smoke.gin", "models/moe_tiny_latent.gin")  # sigmoid router, balancing bias, shared
GROUP_LIMITED = ("MoEConfig.router_groups = 2", "MoEConfig.router_groups_per_token = 1",
                 "MoEConfig.routed_scaling = 2.5")


@pytest.mark.parametrize("gin_files, bindings, fmt", [
    (MOE, (), "mixtral"), (MOE, (), "qwen2_moe"), (MOE, (PER_HEAD,), "qwen3_moe"),
    (MOE, (ACROSS_HEADS,), "olmoe"), (DENSE, (), "llama"), (DENSE, (PER_HEAD,), "qwen3"),
    (LATENT, (), "deepseek_v3"), (LATENT, GROUP_LIMITED, "deepseek_v3")])
def test_transformers_gives_the_same_logits_and_token_ids(train_tiny, tmp_path, gin_files,
                                                          bindings, fmt):
    from moejax.data.vocabularies import get_vocabulary
    from moejax.export.cli import export_run
    from moejax.train.run import restore_run

    trained_run = train_tiny(gin_files, bindings)
    out = export_run(trained_run, format_name=fmt, out=str(tmp_path / fmt),
                     log=lambda line: None)["out"]
    text = "The king said: Ünïcode café, 1603."
    result = subprocess.run([sys.executable, SCRIPT, out, text], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    assert theirs["class"] == CLASSES[fmt]
    ids = [int(i) for i in get_vocabulary("byte").encode(text)]
    assert theirs["ids"] == ids and theirs["decoded"] == text
    model, state, _ = restore_run(trained_run, 4)
    ours, _ = model.apply(state.params, np.array([ids], np.int32), buffers=state.buffers)
    np.testing.assert_allclose(np.array(theirs["logits"]), np.asarray(ours[0]), rtol=1e-4,
                               atol=1e-4)
    assert theirs["generated"] == len(ids) + 4
