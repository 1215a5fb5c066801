#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md in one go, for a lent GPU machine (JAX with CUDA
# preinstalled, no gin there: its wheel travels in .whl/). Writes logs and JSON lines to $OUT.
#   bash benchmarks/gpu_session.sh tests tiles      # native kernel tests, then a tile sweep
#   bash benchmarks/gpu_session.sh grid step        # the full gmm grid, then the MoE step
#   bash benchmarks/gpu_session.sh mosaic           # the Hopper kernel vs the Triton one, at
#     its default tiles and warp-specialized (MOSAIC_TILES, default
#     "--tiling mosaic_gpu:128,64,256,8,3/64,128,256,8,3": two consumer warpgroups)
#   bash benchmarks/gpu_session.sh tuned            # gmm_impl="tuned" on the CASES: measures
#     every candidate (the tuning table lands in $OUT/cache), then times its pick next to auto's
#   bash benchmarks/gpu_session.sh ragged           # ragged_dot on cuDNN: which lowering XLA
#     takes, by default and with the cuDNN flag, then "cudnn" and "xla" under the flag next to
#     pallas_gpu, on the CASES
#   bash benchmarks/gpu_session.sh tests compare    # the short session: native kernel tests,
#     then every GPU kernel of ours and the rivals on the CASES in one process (cuDNN flag on),
#     which is what "auto" should follow; rivals need .whl/rivals (see `rivals` below)
#   bash benchmarks/gpu_session.sh memory           # the memory moejax lower --topology=h100
#     predicts without a GPU (benchmarks/step_memory.py) against the GPU's peak, 4 configs
#   bash benchmarks/gpu_session.sh decode           # a decoding step of an MoE against its
#     FLOP- and parameter-matched dense models at batch 1 to 512, and the MoE with latent
#     attention (benchmarks/decode.py --latent)
#   bash benchmarks/gpu_session.sh rivals           # other projects' grouped matmuls next to
#     ours on the CASES: MaxText's (tokamax "mosaic"), tokamax's Triton one, JAX's Hopper
#     example kernels (benchmarks/rivals.py); first, here: bash benchmarks/rival_wheels.sh
set -u
OUT=${OUT:-/tmp/moejax_gpu}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda,cpu
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
python3 -c "import jax, jaxlib; print('jax', jax.__version__, jax.devices())"
plot() {  # plot() FILE.jsonl: a PNG next to it, if this machine has matplotlib (else a note)
  python3 benchmarks/plot_gmm.py "$1" --out "${1%.jsonl}.png" 2>>"$OUT/plot.err" \
    || echo "no plot of $1 (see $OUT/plot.err)"
}
with_rivals() {  # with_rivals CMD...: CMD seeing tokamax and its needs from .whl/rivals
  # (benchmarks/rival_wheels.sh), installed on first use; only CMD sees them, since their flax
  # and typing_extensions would shadow the image's for the other steps
  if [ -d .whl/rivals ] && [ ! -d /tmp/site_rivals/tokamax ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site_rivals .whl/rivals/*.whl
  fi
  env PYTHONPATH="/tmp/site_rivals:$PYTHONPATH" "$@"
}
summary() {  # one line per gmm.py record: case, contender, ratios to dense, errors
  python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['case'], r['impl'], r['ratio_vs_dense_fwd'], r['ratio_vs_dense'], r['fwdbwd_tflops'], r['errors'])"
}
# The last one: the default tiles with the weight gradient on 8 warps, which Triton compiles
# without register spills (benchmarks/triton_compile.py); never timed yet.
TILES=${TILES:-"64,64,128,4,2 128,64,128,4,3 128,64,128,8,3 128,128,128,8,3 64,128,128,4,3 64,64,64,4,3 128,64,256,8,3/64,128,128,8,3"}
# The warp-specialized Hopper tiles (two consumer warpgroups), timed next to the defaults
WARP_SPECIALIZED="--tiling mosaic_gpu:128,64,256,8,3/64,128,256,8,3"
CASES=${CASES:-"26 29 32"}   # FULL indices: m65536 d1024 E16 K2 balanced, E128 K8 zipf, d4096 E16
for what in "$@"; do
  case $what in
    tests)
      timeout 300 python3 -m pytest tests/kernels -q -p no:cacheprovider 2>&1 \
        | tee "$OUT/tests.log" | tail -15 ;;
    tiles)
      args=(); for t in $TILES; do args+=(--tiling "pallas_gpu:$t"); done
      for c in $CASES; do
        timeout 240 python3 benchmarks/gmm.py --full --case "$c" --dtype bfloat16 --reps 10 \
          --ragged-reps 3 --ragged-max-experts 128 "${args[@]}" 2>>"$OUT/tiles.err" \
          | tee -a "$OUT/tiles.jsonl"
      done
      python3 - "$OUT/tiles.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["case"], r["tiling"], "fwd", r["ratio_vs_dense_fwd"], "fwdbwd", r["ratio_vs_dense"],
          "vs_ragged", r["ratio_vs_ragged_dot"], "tflops", r["fwdbwd_tflops"],
          "dense", r["dense_fwdbwd_tflops"])
PY
      plot "$OUT/tiles.jsonl"
      ;;
    parts)  # each kernel of the step alone, and E = 1 (a plain matmul through the same kernel)
      args=(); for t in $TILES; do args+=(--tiling "pallas_gpu:$t"); done
      timeout 300 python3 benchmarks/gmm.py --full --parts --dtype bfloat16 --reps 10 \
        $(for c in $CASES; do echo --case $c; done) "${args[@]}" 2>>"$OUT/parts.err" \
        | tee -a "$OUT/parts.jsonl" | python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['case'], r['tiling'], 'fwd', r.get('fwd_ratio'), 'dlhs', r.get('dlhs_ratio'), 'drhs', r.get('drhs_ratio'), 'dense', r.get('dense_fwd_tflops'), r.get('dense_dlhs_tflops'), r.get('dense_drhs_tflops'), r['errors'])"
      timeout 200 python3 benchmarks/gmm.py --parts --shape 65536,1024,1024,1,1,balanced \
        --shape 65536,4096,2048,1,1,balanced --dtype bfloat16 --reps 10 "${args[@]}" \
        2>>"$OUT/parts.err" | tee -a "$OUT/parts.jsonl" | python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['case'], r['tiling'], 'fwd', r.get('fwd_ratio'), 'dlhs', r.get('dlhs_ratio'), 'drhs', r.get('drhs_ratio'), r['errors'])" ;;
    mosaic)  # the Hopper kernel next to the Triton one: native tests, parts (E = 1 too), grid
      MOSAIC_TILES=${MOSAIC_TILES:-$WARP_SPECIALIZED}
      timeout 300 python3 -m pytest tests/kernels/test_mosaic_gpu.py -q -p no:cacheprovider 2>&1 \
        | tee "$OUT/mosaic_tests.log" | tail -8
      for cases in "--full $(for c in $CASES; do echo --case $c; done)" \
          "--shape 65536,1024,1024,1,1,balanced --shape 65536,4096,2048,1,1,balanced"; do
        timeout 300 python3 benchmarks/gmm.py --parts --impl pallas_gpu --impl mosaic_gpu $cases \
          --dtype bfloat16 --reps 10 ${MOSAIC_TILES:-} 2>>"$OUT/mosaic.err" \
          | tee -a "$OUT/mosaic_parts.jsonl" | python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['case'], r['impl'], r['tiling'], 'fwd', r.get('fwd_ratio'), 'dlhs', r.get('dlhs_ratio'), 'drhs', r.get('drhs_ratio'), r['errors'])"
      done
      timeout 400 python3 benchmarks/gmm.py --full --impl pallas_gpu --impl mosaic_gpu \
        --dtype bfloat16 --reps 10 --ragged-reps 0 ${MOSAIC_TILES:-} 2>>"$OUT/mosaic.err" \
        | tee -a "$OUT/mosaic_grid.jsonl" | python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['case'], r['impl'], r['tiling'], r['ratio_vs_dense_fwd'], r['ratio_vs_dense'], r['fwdbwd_tflops'], r['dense_fwdbwd_tflops'], r['errors'])"
      plot "$OUT/mosaic_grid.jsonl"
      timeout 300 python3 benchmarks/moe_step.py --dtype bfloat16 --reps 5 --vocab 32768 \
        --impl pallas_gpu --impl mosaic_gpu --d-model 2048 --layers 8 --experts 8 --top-k 2 \
        --d-expert 2048 --batch 16 --seq 1024 2>>"$OUT/mosaic.err" | tee -a "$OUT/mosaic_step.jsonl" ;;
    tuned)
      XDG_CACHE_HOME="$OUT/cache" timeout 500 python3 benchmarks/gmm.py --full \
        $(for c in $CASES; do echo --case $c; done) --impl pallas_gpu --impl tuned \
        --dtype bfloat16 --reps 10 --ragged-reps 0 2>>"$OUT/tuned.err" \
        | tee -a "$OUT/tuned.jsonl" | python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['case'], r['impl'], r['tuned_choice'], r['ratio_vs_dense_fwd'], r['ratio_vs_dense'], r['errors'])"
      plot "$OUT/tuned.jsonl" ;;
    ragged)
      python3 -c "from jax._src.lib import cuda_versions as v; print('cudnn', v.cudnn_get_version())" \
        2>&1 | tail -1 | tee "$OUT/ragged_lowering.txt"
      probe='import json; from moejax.kernels import cudnn; print(json.dumps(cudnn.xla_lowering()))'
      for env in "" "XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true"; do
        echo "${env:-default}: $(env $env timeout 120 python3 -c "$probe" 2>&1 | tail -1)" \
          | tee -a "$OUT/ragged_lowering.txt"
      done
      cases=$(for c in $CASES; do echo --case $c; done)
      XLA_FLAGS=--xla_gpu_experimental_use_ragged_dot_fusion=true timeout 400 python3 \
        benchmarks/gmm.py --full $cases --impl pallas_gpu --impl cudnn --impl xla \
        --dtype bfloat16 --reps 10 --ragged-reps 0 2>>"$OUT/ragged.err" \
        | tee -a "$OUT/ragged_cudnn_flag.jsonl" | python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['case'], r['impl'], r['ratio_vs_dense_fwd'], r['ratio_vs_dense'], r['errors'])"
      plot "$OUT/ragged_cudnn_flag.jsonl" ;;
    compare)
      cases=$(for c in $CASES; do echo --case $c; done)
      flag=--xla_gpu_experimental_use_ragged_dot_fusion=true  # cudnn's lowering (see `ragged`)
      XLA_FLAGS=$flag python3 -c "import jax.numpy as j; j.ones(1)" 2>/dev/null \
        || { echo "this XLA does not know $flag: cudnn runs as plain ragged_dot"; flag=; }
      XLA_FLAGS=$flag with_rivals timeout 540 python3 benchmarks/gmm.py --full $cases \
        --impl pallas_gpu --impl mosaic_gpu --impl cudnn --rival maxtext --rival jax_mgpu \
        $WARP_SPECIALIZED --dtype bfloat16 --reps 10 --ragged-reps 0 2>>"$OUT/compare.err" \
        | tee -a "$OUT/compare.jsonl" | summary
      plot "$OUT/compare.jsonl" ;;
    rivals)
      with_rivals python3 -c "import tokamax; print('tokamax', tokamax.__version__)" 2>&1 | tail -1
      with_rivals timeout 240 python3 -m pytest tests/benchmarks/test_rivals.py -q \
        -p no:cacheprovider 2>&1 | tee "$OUT/rivals_tests.log" | tail -6
      cases=$(for c in $CASES; do echo --case $c; done)
      rivals=${RIVALS:-"maxtext tokamax_triton jax_mgpu jax_mgpu:128,64,128,6,4"}
      with_rivals timeout 450 python3 benchmarks/gmm.py --full \
        $cases --impl pallas_gpu --impl mosaic_gpu $(for r in $rivals; do echo --rival $r; done) \
        --dtype bfloat16 --reps 10 --ragged-reps 0 2>>"$OUT/rivals.err" | tee -a "$OUT/rivals.jsonl" \
        | summary
      plot "$OUT/rivals.jsonl" ;;
    grid)
      timeout 400 python3 benchmarks/gmm.py --full --dtype bfloat16 --reps 10 --ragged-reps 3 \
        --ragged-max-experts 128 ${GRID_ARGS:-} 2>>"$OUT/grid.err" | tee -a "$OUT/grid.jsonl" \
        | python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['case'], r['impl'], r['tiling'], r['ratio_vs_dense_fwd'], r['ratio_vs_dense'], r['ratio_vs_ragged_dot'], r['fwdbwd_tflops'], r['dense_fwdbwd_tflops'])"
      plot "$OUT/grid.jsonl" ;;
    step)  # STEP_SPECS: ';'-separated argument lists for benchmarks/moe_step.py
      IFS=';' read -ra specs <<< "${STEP_SPECS:-"--d-model 2048 --layers 8 --experts 8 --top-k 2 --d-expert 2048 --batch 16 --seq 1024"}"
      for spec in "${specs[@]}"; do
        timeout 300 python3 benchmarks/moe_step.py --dtype bfloat16 --reps 5 --vocab 32768 $spec \
          2>>"$OUT/step.err" | tee -a "$OUT/step.jsonl"
      done ;;
    decode)  # one decoding step: the MoE against its FLOP- and parameter-matched dense models,
      # and the MoE with latent attention
      timeout 500 python3 benchmarks/decode.py --dtype bfloat16 --d-model 2048 --layers 8 \
        --latent --experts 8 --top-k 2 --d-expert 2048 --vocab 32768 --context 1024 --batch 1 \
        --batch 16 --batch 128 --batch 512 2>>"$OUT/decode.err" | tee -a "$OUT/decode.jsonl" \
        | python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print(r['model'], r['batch'], r['step_s'], r['ratio_vs_flop_matched_dense'], r['achieved_gflops'])" ;;
    memory)  # the deviceless compile's memory prediction (moejax lower --topology) against the
      # GPU's: XLA's analysis on the GPU and the allocator's peak over 3 steps, a process a case
      for c in 0 1 2 3; do
        timeout 240 python3 benchmarks/step_memory.py --case "$c" 2>>"$OUT/memory.err" \
          | tee -a "$OUT/step_memory.jsonl"
      done
      python3 - "$OUT/step_memory.jsonl" \
        benchmarks/results/gpu-compile-2026-11-24/step_memory_predicted.jsonl <<'PY'
import json, sys
measured, predicted = ({r["case"]: r for r in map(json.loads, open(p))} for p in sys.argv[1:])
for case, m in sorted(measured.items()):
    p = predicted.get(case, {})
    print(case, "predicted", p.get("total_bytes"), "analysed on GPU", m.get("total_bytes"),
          "peak", m.get("peak_bytes_in_use"), m.get("error", ""))
PY
      ;;
  esac
done
