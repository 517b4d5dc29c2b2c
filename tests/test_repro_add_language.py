"""The plan of tools/repro_add_language.py (rc3.synthetic.repro.add_language_runs): what each add_language run is told to keep.

The measured recipe holds every language the model covers: the world's pretraining sentences of its
languages and, along the chain es -> ru -> tr, the X side of every language added before. Checked on
the commands the plan would run, against files written here in the world's raw layout
(`raw/ds/train.<lang>.tsv`: `image_id<TAB>caption`).
"""
from __future__ import annotations

from pathlib import Path


def load_tool():
    from rc3.synthetic.repro import add_language_runs

    return add_language_runs


def keep_specs(cmd: list[str]) -> dict[str, Path]:
    if "--keep" not in cmd:
        return {}
    specs = cmd[cmd.index("--keep") + 1:]
    specs = specs[:next((i for i, a in enumerate(specs) if a.startswith("--")), len(specs))]
    return {s.split("=", 1)[0]: Path(s.split("=", 1)[1]) for s in specs}


def test_chain_keeps_the_pretrained_and_the_earlier_added_languages(tmp_path: Path) -> None:
    tool = load_tool()
    world = tmp_path / "world"
    (world / "raw/ds").mkdir(parents=True)
    for lang in ("cs", "de", "fr", "id", "ja", "zh"):
        (world / f"raw/ds/train.{lang}.tsv").write_text(
            "".join(f"img{i}\t{lang} caption number {i}\n" for i in range(5)), encoding="utf-8")
    base = ["--world", str(world), "--seeds", "1", "--no-text", "--tasks", "", "--pairs", "50", "--data", str(tmp_path)]
    args = tool.parse([*base, "--out", str(tmp_path / "out"), "--keep-pretrained", "3"])
    jobs, _ = tool.plan(args)
    adds = {j.name: list(j.cmd) for j in jobs if j.name.startswith("add ")}
    assert list(adds) == ["add es s0", "add es+ru s0", "add es+ru+tr s0"]
    assert all(c[c.index("--embedding-rows") + 1] == "new" for c in adds.values())
    pretrained = {"cs", "de", "fr", "id", "ja", "zh"}
    assert set(keep_specs(adds["add es s0"])) == pretrained
    assert set(keep_specs(adds["add es+ru s0"])) == pretrained | {"es"}
    tr_keep = keep_specs(adds["add es+ru+tr s0"])
    assert set(tr_keep) == pretrained | {"es", "ru"}
    assert tr_keep["de"].read_text(encoding="utf-8").split("\n")[:3] == [f"de caption number {i}" for i in range(3)]
    for lang in ("es", "ru"):  # the first 3 X sentences of the pairs that language was added with
        tsv = (tmp_path / f"out/parallel/en-{lang}.tsv").read_text(encoding="utf-8").splitlines()
        assert tr_keep[lang].read_text(encoding="utf-8").split("\n")[:3] == [row.split("\t")[1] for row in tsv[:3]]
        assert "\t" not in tr_keep[lang].read_text(encoding="utf-8")

    plain = tool.parse([*base, "--out", str(tmp_path / "plain"), "--keep-pretrained", "0", "--embedding-rows", "all"])
    jobs, _ = tool.plan(plain)
    for job in jobs:
        if job.name.startswith("add "):
            assert "--keep" not in job.cmd and job.cmd[job.cmd.index("--embedding-rows") + 1] == "all"
