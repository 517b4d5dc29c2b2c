"""Consolidate a DeepSpeed ZeRO checkpoint of a pretraining run into a plain RC3 model directory (fp32).

The `rc3-zero-to-safetensors` command from a checkout: rc3.tools.zero_to_safetensors.
"""
from rc3.tools.zero_to_safetensors import main

if __name__ == "__main__":
    main()
