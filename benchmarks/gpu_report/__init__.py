r"""Every GPU figure the README promises, measured by one command inside one time budget.

    python scripts/gpu_report.py --out results/gpu/h100 --data-dir ../shared/data --budget-minutes 7
    python scripts/gpu_report.py --out /tmp/gpu-smoke --smoke    # every part's code path on a CPU, < 3 min

`report.py` runs the parts in order, each as subprocesses (`parts.py` says which: the project's own scripts
and the workers `machine.py` and `accuracy.py`), so a part that hangs is killed at its share, one framework's
GPU allocator never shares a process with the other's, and a kill loses only the step in flight. After every
step it rewrites, atomically, `OUT/<part>.json` and `OUT/report.json`, and after every part `OUT/report.md`
(`markdown.py`: the table for the README's GPU section).

Budget shares (of `--budget-minutes`, renormalised over the parts asked for). Time a part leaves unused
passes to the next; a step that does not fit what is left of its part's share is skipped with the reason, and
a step is killed at the end of its part's share:

    machine   5%   devices, driver, CUDA/cuDNN, versions, bf16 matmul peak in JAX and in PyTorch
    speed    30%   seed-384x8 at batch 512: JAX (XLA and cuDNN attention), PyTorch eager, torch.compile;
                   then tiny and seed-256x6 at their own batch sizes if they fit
    accuracy 35%   CIFAR-10 sample: `best` against the first write-up's recipe at full size (200 epochs if
                   they fit, else as many as do); then Fashion-MNIST: `best` for the epochs left
    segment  15%   GroundingDINO Swin-T + SAM 2.1 tiny, bf16: per-stage ms per image, images/s, first image
    track    15%   SAM 2.1 tiny and base_plus propagation frames/s, plain, then the VOS-compiled predictor

`--budget-minutes 30` or 120 gets fuller versions from the same logic: more timed rounds and real-data
epochs in `speed`, up to 3 seeds at 200 epochs and longer Fashion-MNIST runs in `accuracy`, the VOS-compiled
predictors in `track` (their compile alone takes minutes).

On a lent GPU machine (Python 3.12 with torch, jax, flax, optax, orbax and transformers, but no sam2,
groundingdino-py, supervision or pycocotools, and no internet), with the data, a BERT tokenizer folder (for
random-weight GroundingDINO; the 84 MB offline vocabulary package would not fit) and a wheelhouse carried
along in `.gpu/` (the data is 52 MB: keep the whole carry under the 64 MiB a call takes):

    # here, once:
    grep -qx /.gpu/ .git/info/exclude || echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/data
    cp -r ../shared/data/cifar-10-batches-py ../shared/data/seg /usr/share/datasets/fashion-mnist .gpu/data/
    .venv/bin/python -c "from torch_seg.text_encoder import write_text_encoder_folder as w; \
        w('.gpu/checkpoints/bert-base-uncased')"
    .venv/bin/python scripts/wheelhouse.py .gpu/wheels --python-version 3.12
    # there (carry .gpu; one command, about 9 minutes):
    export TORCH_SEG_CHECKPOINTS=$PWD/.gpu/checkpoints; bash scripts/setup.sh system --wheelhouse .gpu/wheels \
        >$OUT/setup.log 2>&1; python3 scripts/gpu_report.py --out /tmp/gpu --data-dir .gpu/data --budget-minutes 7 \
        >$OUT/gpu_report.log 2>&1; tar czf $OUT/gpu_report.tar.gz -C /tmp gpu; cp /tmp/gpu/report.md $OUT/

Unpacked under `results/gpu/<gpu>/`, its report.md rows replace the README's "not yet measured" ones.
"""
