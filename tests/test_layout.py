"""Each module's test is findable by name: for every module rc3/**/X.py there is a tests/test_*.py whose
name contains X, or that is named after a package holding X (tests/test_finetune.py for rc3/finetune/*),
or the module is in TESTED_UNDER below with the test that covers it and why that test has another name.
A package whose __init__.py holds code of its own (a function or class: the registries' packages, whose
built-in records live there) counts as a module named after the package. The check reads files only,
so it needs no import of rc3."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module -> (the test file that covers it, why it is tested under that name)
TESTED_UNDER: dict[str, tuple[str, str]] = {
    "rc3/cli.py": ("test_inference.py", "the `rc3` command is the front door of the inference API it tests"),
    "rc3/data/corpora/__init__.py": ("test_registries.py", "the corpus registry: a corpus is added and read there"),
    "rc3/data/features_open.py": ("test_features.py", "opens a feature store of any format"),
    "rc3/data/http_shards.py": ("test_remote_shards.py", "shards read over HTTP"),
    "rc3/data/schemas.py": ("test_builders.py", "the shard members the builders write and the pipeline reads"),
    "rc3/data/shard_order.py": ("test_weighted_sources.py", "shard order per epoch and the weighted mix of sources"),
    "rc3/data/shard_reading.py": ("test_shard_faults.py", "reading shards that are truncated, corrupt or missing"),
    "rc3/data/shard_source.py": ("test_remote_shards.py", "local, brace-expanded and remote shard sources"),
    "rc3/data/shard_writer.py": ("test_builders.py", "the builders' shard writing"),
    "rc3/data/volta_lmdb.py": ("test_features.py", "volta LMDB stores beside the other feature stores"),
    "rc3/fault_injection.py": ("test_preemption.py", "the fault switches (kills, stalls, crashes in a save) it drives"),
    "rc3/metrics_window.py": ("test_pretrain_metrics.py", "the metrics window behind each log record"),
    "rc3/modeling/files.py": ("test_finetune.py", "a run directory given as a model is named, with its converter"),
    "rc3/modeling/flops.py": ("test_pretrain_metrics.py", "FLOPs per step behind the MFU of the log"),
    "rc3/modeling/visual/__init__.py": ("test_model.py", "the visual front ends of the model"),
    "rc3/modeling/visual_inputs.py": ("test_finetune.py", "VisualSource feeds the downstream tasks"),
    "rc3/op_cache.py": ("test_build_ops.py", "the kernel cache rc3-build-ops fills"),
    "rc3/pretrain/cli.py": ("test_preflight.py", "rc3-pretrain's checks before any work"),
    "rc3/pretrain/loop.py": ("test_engine.py", "pretraining runs under DeepSpeed, resumed and compared"),
    "rc3/pretrain/nonfinite.py": ("test_engine.py", "non-finite losses and gradients in a DeepSpeed run"),
    "rc3/pretrain/registry.py": ("test_registries.py", "the objective and stream registries"),
    "rc3/pretrain/streams.py": ("test_weighted_sources.py", "the task streams over weighted sources"),
    "rc3/registry.py": ("test_registries.py", "the registry every component registers in"),
    "rc3/rng.py": ("test_engine.py", "a resume restores every RNG state (negative control without)"),
    "rc3/run_log.py": ("test_plots.py", "metrics.jsonl as the logger writes and the plots read it"),
    "rc3/tools/build_shards.py": ("test_builders.py", "rc3-build-shards runs the builders"),
    "rc3/tools/convert_butd_weights.py": ("test_butd_weights.py", "rc3-convert-butd converts the BUTD weights"),
    "rc3/tools/convert_mbart50.py": ("test_convert_tools.py", "the conversion commands"),
    "rc3/tools/dataset_stats.py": ("test_builders.py", "rc3-dataset-stats on the shards built there"),
    "rc3/tools/export_hf.py": ("test_hf_native.py", "rc3-export-hf writes an HF-native directory"),
    "rc3/tools/extract_roi_features.py": ("test_roi_extraction.py", "rc3-extract-roi"),
    "rc3/tools/make_synthetic.py": ("test_synthetic.py", "rc3-make-synthetic writes the synthetic world"),
    "rc3/tools/plot_run.py": ("test_plots.py", "rc3-plot-run"),
    "rc3/vision/butd/boxes.py": ("test_butd_ops.py", "the detector's box operations"),
    "rc3/vision/extractors.py": ("test_detector_inference.py", "the detectors behind one interface"),
    "rc3/vision/image_folder.py": ("test_index_own_images.py", "`rc3 index` on a folder of one's own images"),
    "rc3/vision/image_sources.py": ("test_butd_extraction.py", "image folders, lists and shards fed to extraction"),
    "rc3/vision/roi_extractor.py": ("test_roi_extraction.py", "the torchvision COCO detector's extraction"),
    "rc3/vision/sharded_extract.py": ("test_index_own_images.py", "extraction in workers, killed and resumed"),
    "rc3/vocab.py": ("test_convert_tools.py", "vocabulary pruning of rc3-convert-mbart50"),
}


def _holds_code(init: Path) -> bool:
    """A top-level function or class other than a lazy-import hook (`def __getattr__`, `def __dir__`)."""
    return any(line.startswith(("def ", "class ")) and not line.split()[1].startswith("__")
               for line in init.read_text(encoding="utf-8").splitlines())


def modules(root: Path) -> list[str]:
    """rc3/**/X.py relative to `root`; a package's __init__.py only when it holds code of its own (otherwise
    the package is tested through its modules)."""
    return sorted(str(p.relative_to(root)) for p in (root / "rc3").rglob("*.py")
                  if p.name != "__init__.py" or _holds_code(p))


def names_of_tests(root: Path) -> set[str]:
    """What follows `test_` in the name of each tests/test_*.py."""
    return {p.stem[len("test_"):] for p in (root / "tests").glob("test_*.py")}


def unfindable(root: Path, tested_under: dict[str, tuple[str, str]]) -> list[str]:
    """One line per module whose test cannot be found by name, and per stale TESTED_UNDER entry."""
    names = names_of_tests(root)
    out = []
    for rel in modules(root):
        parts = Path(rel).with_suffix("").parts[1:]  # without "rc3"
        if parts[-1] == "__init__":  # a package holding code: named after the package
            parts = parts[:-1]
        if any(parts[-1] in name for name in names) or any(pkg in names for pkg in parts[:-1]):
            continue
        if rel in tested_under:
            continue
        out.append(f"{rel}: no tests/test_*{parts[-1]}*.py; name its test after it or add it to TESTED_UNDER "
                   "(tests/test_layout.py) with the test that covers it and why")
    present = set(modules(root))
    for rel, (test, _) in sorted(tested_under.items()):
        if rel not in present:
            out.append(f"{rel} in TESTED_UNDER is no module of rc3; remove its entry")
        elif not (root / "tests" / test).is_file():
            out.append(f"{rel} in TESTED_UNDER names tests/{test}, which does not exist")
    return out


def test_every_module_has_a_test_findable_by_name() -> None:
    bad = unfindable(REPO, TESTED_UNDER)
    assert not bad, "modules whose test cannot be found by name:\n" + "\n".join(bad)


# ---- the checker itself, on a tree written here ---------------------------------------------------

def _tree(root: Path, files: list[str]) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    return root


def test_a_module_is_found_by_its_name_or_its_package(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["rc3/__init__.py", "rc3/optim.py", "rc3/finetune/__init__.py", "rc3/finetune/xgqa.py",
                            "tests/test_optim.py", "tests/test_finetune.py"])
    assert unfindable(root, {}) == []


def test_a_module_without_a_test_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["rc3/__init__.py", "rc3/optim.py", "rc3/pretrain/__init__.py", "rc3/pretrain/loop.py",
                            "tests/test_optim.py", "tests/test_pretrain_metrics.py"])
    # a test named after part of the package's name does not count: test_pretrain_metrics is not test_pretrain
    assert [line.split(":")[0] for line in unfindable(root, {})] == ["rc3/pretrain/loop.py"]
    assert unfindable(root, {"rc3/pretrain/loop.py": ("test_pretrain_metrics.py", "why")}) == []


def test_stale_entries_are_named(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["rc3/__init__.py", "rc3/optim.py", "tests/test_optim.py"])
    bad = unfindable(root, {"rc3/gone.py": ("test_optim.py", "why"), "rc3/optim.py": ("test_missing.py", "why")})
    assert bad == ["rc3/gone.py in TESTED_UNDER is no module of rc3; remove its entry",
                   "rc3/optim.py in TESTED_UNDER names tests/test_missing.py, which does not exist"]
