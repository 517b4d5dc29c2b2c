"""Build DeepSpeed's just-in-time kernels now, instead of in the first run that needs them.

    python -m rc3.tools.build_ops            # or: rc3-build-ops   (`make install` runs it)

DeepSpeed compiles some of its C++/CUDA ops on first use, into torch's extension cache
(`$TORCH_EXTENSIONS_DIR`; see below): on CPU ranks its shared-memory
all-reduce (every `deepspeed` launch) and CPU Adam (the optimizer-offload presets); on GPUs CPU Adam
and FusedAdam (the `*_fusedadam_*` presets). Each takes minutes, and processes that start together
(the ranks of a job, parallel tests) queue on the cache's lock meanwhile. This is DeepSpeed's own
ahead-of-time route (`DS_BUILD_OPS=1 pip install deepspeed` rebuilds the whole package instead):
load each op once through its builder, which compiles it into the cache that later runs load.

A cache entry is keyed by the op's name; its build files name this environment's include paths,
so another virtual environment sharing the same cache would rebuild it: the cache is therefore kept
inside the environment, `<sys.prefix>/torch_extensions`, unless TORCH_EXTENSIONS_DIR is set
(rc3.op_cache, which training entry points use too). A failed build is reported and the command still exits 0 unless
`--strict`: inference never needs these ops, and training reports the same compiler error.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from rc3.op_cache import use_environment_extension_dir

# The builders DeepSpeed itself loads on each accelerator (deepspeed.comm.torch.build_shm_op,
# deepspeed.ops.adam.DeepSpeedCPUAdam / FusedAdam), by their names in the accelerator's op registry.
OPS = {"cpu": ("ShareMemCommBuilder", "CPUAdamBuilder"), "cuda": ("CPUAdamBuilder", "FusedAdamBuilder")}


def ops_for(accelerator: str) -> tuple[str, ...]:
    """The op builders a run on this accelerator compiles on first use (none known: empty)."""
    return OPS.get(accelerator, ())


def build(names: Sequence[str], strict: bool = False) -> int:
    cache = use_environment_extension_dir()
    print(f"[build_ops] kernel cache: {cache or 'torch default (~/.cache/torch_extensions)'}", flush=True)
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    failed = 0
    for name in names:
        builder = accelerator.create_op_builder(name)
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            print(f"[build_ops] {name}: not available on {accelerator._name}; skipped", flush=True)
            continue
        start = time.perf_counter()
        try:
            builder.load(verbose=False)
        except Exception as err:  # a compiler or toolkit problem: say which op and why
            failed += 1
            print(f"[build_ops] {builder.NAME}: build failed ({type(err).__name__}: {err}); runs that need it "
                  "will try again and fail the same way", file=sys.stderr, flush=True)
            continue
        print(f"[build_ops] {builder.NAME}: ready ({time.perf_counter() - start:.0f} s)", flush=True)
    return 1 if failed and strict else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strict", action="store_true", help="exit 1 when an op fails to build")
    args = ap.parse_args(argv)
    use_environment_extension_dir()  # before DeepSpeed is imported: it may load ops at import
    from deepspeed.accelerator import get_accelerator

    return build(ops_for(get_accelerator()._name), strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
