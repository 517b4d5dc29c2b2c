"""The downstream tasks' records, one module per task (rc3.finetune.registry.DOWNSTREAM imports every
module of this package). Each module is light: it names its recipe and model classes as
"module:attribute" strings, so `--help` and config checks import no torch."""
