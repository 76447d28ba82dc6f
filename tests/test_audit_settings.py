"""Each modality's audit setting plants what it says, and ``bottleneck audit`` runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bottleneck.audit_run import KEYS, run_audit
from bottleneck.cli import main
from bottleneck.errors import BottleneckError
from bottleneck.plugins import demos

TINY = {"train_size": 48, "test_size": 24, "epochs": 1}


def setting(modality: str, **options):
    return demos()[modality].audit(quick=True, **{**TINY, **options})


def test_image_flags_mark_the_corner_patch_of_cued_training_images() -> None:
    s = setting("image")
    images, labels, flags = next(iter(s.train_batches(torch.arange(48))))
    present = s.train_assignment.present
    assert flags.shape == (48, 32, 32)
    assert torch.equal(flags[:, :4, :4].all(-1).all(-1), present) and not flags[:, 4:, :].any()
    assert s.train_assignment.aligned.float().mean() > 0.8  # 95% correlation


def test_text_flags_mark_the_cue_word_tokens() -> None:
    s = setting("text")
    inputs, labels, flags = next(iter(s.train_batches(torch.arange(32))))
    assert flags.shape == inputs["input_ids"].shape
    assert flags.any(-1).all()  # every training sentence carries its cue word
    variants = s.train_assignment.variant[:32]
    words = [tuple(inputs["input_ids"][row][flags[row]].tolist()) for row in range(32)]
    by_variant: dict[int, set] = {}
    for variant, word in zip(variants.tolist(), words, strict=True):
        by_variant.setdefault(variant, set()).add(word)
    assert all(len(found) == 1 for found in by_variant.values())  # one token sequence per cue word
    assert len({next(iter(found)) for found in by_variant.values()}) == len(by_variant)  # distinct per class


def test_point_flags_mark_the_extra_cluster() -> None:
    s = setting("pointcloud")
    batch, labels, flags = next(iter(s.train_batches(torch.arange(16))))
    counts = torch.bincount(batch.batch[flags], minlength=16)
    assert torch.equal(counts, s.cue.size * s.train_assignment.present[:16].long())
    assert flags.shape == (batch.num_nodes,)


@pytest.mark.parametrize("modality", ["image", "text", "pointcloud"])
def test_run_audit_writes_the_three_reports(modality: str, tmp_path: Path) -> None:
    report = run_audit(setting(modality), tmp_path, progress=False)
    values = json.loads((tmp_path / "report.json").read_text())
    for name in ("plain", "masked", "mitigated"):
        for key in KEYS:
            assert key in values[name], (name, key)
        assert (tmp_path / name / "report.md").exists() and (tmp_path / name / "groups.png").exists()
    assert values["plain"]["method"] == "integrated_gradients" and values["masked"]["method"] == "mask"
    assert values["claims"]["worst_group_gain_mitigated_over_plain"] == pytest.approx(
        values["mitigated"]["worst_group_accuracy"] - values["plain"]["worst_group_accuracy"])
    assert "| cue relevance share |" in (tmp_path / "report.md").read_text()
    assert report["modality"] == modality


def test_cli_audit_with_group_reweighting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import bottleneck_image.audit as image_audit

    monkeypatch.setattr(image_audit, "SIZES", {True: TINY, False: TINY})
    code = main(["audit", "--modality", "image", "--out", str(tmp_path), "--quick", "--mitigation", "reweight",
                 "--no-progress"])
    assert code == 0
    values = json.loads((tmp_path / "report.json").read_text())
    assert values["mitigation"] == "reweight" and values["settings"]["cue"] == "corner_patch"
    assert "Mitigation: `reweight`" in capsys.readouterr().out


def test_cli_audit_refuses_unknown_modalities_and_cues(capsys) -> None:
    assert main(["audit", "--modality", "audio", "--out", "x"]) == 2
    assert "no audit setting for modality 'audio'" in capsys.readouterr().err
    with pytest.raises(BottleneckError, match="unknown cue 'cluster' for modality 'image'"):
        setting("image", cue="cluster")


@pytest.mark.slow
def test_quick_text_audit_flags_the_cue_and_mitigation_lifts_the_worst_group(tmp_path: Path) -> None:
    """The issue's must-show on the text setting, re-measured: ``bottleneck audit --modality text --quick``."""
    assert main(["audit", "--modality", "text", "--out", str(tmp_path), "--quick", "--no-progress"]) == 0
    values = json.loads((tmp_path / "report.json").read_text())
    plain, claims = values["plain"], values["claims"]
    assert plain["cue_relevance_share"] >= 3 * plain["cue_area_share"]
    assert plain["accuracy_cue_present"] - plain["accuracy_cue_swapped"] >= 0.10
    assert claims["worst_group_gain_mitigated_over_plain"] >= 0.10
    assert values["mitigated"]["cue_relevance_share"] < plain["cue_relevance_share"]
    # the run records its wall time; how long --quick takes is the machine's, not a verdict on the code
    # (a slower 2-core machine and a busy one have taken several times a quiet one's)
    assert values["seconds"] > 0
