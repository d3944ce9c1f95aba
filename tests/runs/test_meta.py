"""CheckpointMeta: the versioned record of how a checkpoint was made, old formats included."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cdkd.errors import CheckpointError
from cdkd.files import sha256_of
from cdkd.runs.meta import META_VERSION, CheckpointMeta, PartitionMeta, Source, read_meta
from cdkd.training.build import checkpoint_meta
from tests.factories import Composer

V1 = Path(__file__).parents[1] / "fixtures" / "runs_v1" / "synthetic" / "tinycd"
THREE = PartitionMeta(
    "three",
    (0.05, 0.2),
    ("small", "medium", "large"),
    {"small": "teacher_s", "medium": "teacher_m", "large": "teacher_l"},
)
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def student_meta() -> CheckpointMeta:
    return CheckpointMeta(
        model="tinycd",
        stage="student",
        data="synthetic",
        partition=THREE,
        mean=MEAN,
        std=STD,
        distill_lambda=1e-3,
        car_rule="paper",
        teacher_model="fc_ef",
        init=Source("runs/baseline.ckpt", "a" * 64),
        teachers={b: Source(f"runs/{b}.ckpt", b[0] * 64) for b in THREE.buckets},
    )


def test_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    meta = student_meta()
    path = tmp_path / "s.ckpt"
    torch.save({"hyper_parameters": {"model": "tinycd", "meta": meta.to_hparams()}}, path)
    read = read_meta(path, expected_model="tinycd")
    assert read == meta and read.version == META_VERSION and read.distilled
    teacher = replace(meta, stage="teacher_s", bucket="small", distill_lambda=None, teachers={})
    back = CheckpointMeta.from_hparams({"model": "tinycd", "meta": teacher.to_hparams()})
    assert back.bucket == "small" and not back.distilled and back.car_rule is None


def test_reads_the_first_release_checkpoints() -> None:
    baseline = read_meta(V1 / "baseline" / "best.ckpt")
    assert baseline.version == 1 and baseline.model == "tinycd" and baseline.stage == "baseline"
    assert baseline.bucket is None and not baseline.distilled
    assert baseline.mean == MEAN and baseline.std == STD
    assert baseline.partition == THREE and baseline.data == "synthetic"
    assert read_meta(V1 / "teacher_m" / "best.ckpt").bucket == "medium"
    student = read_meta(V1 / "student" / "lambda_0.005" / "best.ckpt", "tinycd")
    assert student.distilled and student.distill_lambda == 0.005
    assert student.car_rule == "paper" and student.teacher_model == "tinycd"
    assert student.init is not None and student.init.path.endswith("baseline/best.ckpt")
    assert student.init.sha256 is not None and len(student.init.sha256) == 64
    assert set(student.teachers) == {"small", "medium", "large"}
    assert all(len(s.sha256 or "") == 64 for s in student.teachers.values())


def test_a_future_version_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "new.ckpt"
    record = {**student_meta().to_hparams(), "version": META_VERSION + 1}
    torch.save({"hyper_parameters": {"model": "tinycd", "meta": record}}, path)
    with pytest.raises(CheckpointError) as exc:
        read_meta(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: checkpoint metadata version {META_VERSION + 1}")
    assert "upgrade cdkd" in message and "\n" not in message


def test_malformed_metadata_names_the_file() -> None:
    with pytest.raises(CheckpointError, match=r"^x.ckpt: unreadable checkpoint metadata"):
        CheckpointMeta.from_hparams({"model": "m", "meta": {"normalize": {"mean": 3}}}, "x.ckpt")
    with pytest.raises(CheckpointError, match=r"^x.ckpt: checkpoint metadata is not a mapping"):
        CheckpointMeta.from_hparams({"model": "m", "meta": [1]}, "x.ckpt")


def test_teacher_check_names_bucket_and_thresholds() -> None:
    teacher = replace(student_meta(), bucket="small", distill_lambda=None)
    teacher.check_teacher("t.ckpt", "small", (0.05, 0.2), "three")
    with pytest.raises(CheckpointError, match=r"bucket 'small'.*expected bucket 'large'"):
        teacher.check_teacher("t.ckpt", "large", (0.05, 0.2), "three")
    with pytest.raises(CheckpointError, match=r"expected bucket 'small' with thresholds \[0.1\]"):
        teacher.check_teacher("t.ckpt", "small", (0.1,), "two")


def test_the_training_run_hashes_the_students_sources(
    tmp_path: Path, compose_config: Composer
) -> None:
    files = {}
    for name in ("baseline", "small", "medium", "large"):
        files[name] = tmp_path / f"{name}.ckpt"
        source = "baseline" if name == "baseline" else "teacher_s"
        shutil.copy(V1 / source / "best.ckpt", files[name])
    files["large"].write_bytes(b"other bytes")
    cfg = compose_config("train", "stage=student", f"distill.init={files['baseline']}")
    baseline_cfg = compose_config("train", "stage=baseline")
    teachers = {b: files[b] for b in ("small", "medium", "large")}
    meta = checkpoint_meta(cfg, teachers)
    assert meta.init == Source(str(files["baseline"]), sha256_of(files["baseline"]))
    assert {b: s.sha256 for b, s in meta.teachers.items()} == {
        b: sha256_of(p) for b, p in teachers.items()
    }
    assert meta.teachers["small"].sha256 != meta.teachers["large"].sha256
    assert meta.distill_lambda == float(cfg.distill["lambda"]) and meta.stage == "student"
    baseline = checkpoint_meta(baseline_cfg)
    assert baseline.init is None and not baseline.teachers and not baseline.distilled
