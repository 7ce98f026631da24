"""train_coarse.py and train_f2m.py end to end, as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy.ndimage import gaussian_filter

from rfnet_tf.weights import model_from_weights

REPO = Path(__file__).resolve().parents[1]
# The vis_nir pairs that are not aligned, whatever ../shared/data/README.md says.
NOT_ALIGNED = "scene_1,scene_10,scene_100"
TINY = ["--crop_size=32", "--batch_size=2", "--log_every=1", "--checkpoint_every=2", "--max_steps=2"]
STAGES = ("transnet", "affinenet", "fusion", "deformation")


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 900):
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def write_generated_pairs(root: Path, count: int = 3) -> Path:
    """Aligned 8-bit PNG pairs: smooth RGB textures and a NIR that is a mix of them."""
    for sub in ("vis", "nir"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        channels = [gaussian_filter(rng.standard_normal((72, 96)), 2.5) for _ in range(3)]
        vis = np.stack([(c - c.min()) / (c.max() - c.min()) for c in channels], axis=-1)
        nir = np.clip(0.15 + 0.6 * vis[..., 1] + 0.25 * vis[..., 0] ** 2, 0.0, 1.0)
        Image.fromarray((vis * 255).round().astype(np.uint8)).save(root / "vis" / f"p{index}.png")
        Image.fromarray((nir * 255).round().astype(np.uint8)).save(root / "nir" / f"p{index}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Every stage, a few steps each: coarse (both stages), then F2M (both phases).

    On the real pairs of ../shared/data/vis_nir, or, where that folder is absent, on
    generated PNG pairs (one run only: each launch costs a minute of graph tracing).
    """
    root = tmp_path_factory.mktemp("trained")
    vis_nir = REPO.parent / "shared" / "data" / "vis_nir"
    if vis_nir.is_dir():
        data = ["--data_dir", str(vis_nir), f"--exclude={NOT_ALIGNED}"]
    else:
        data = ["--data_dir", str(write_generated_pairs(root / "data"))]
    check(run_script("train_coarse.py", *data, *TINY, "--affine_input_size=48",
                     f"--model_dir={root / 'coarse'}"))
    check(run_script("train_f2m.py", *data, *TINY, f"--coarse_dir={root / 'coarse' / 'affinenet'}",
                     f"--model_dir={root / 'f2m'}"))
    return root


def stage_dir(root: Path, stage: str) -> Path:
    return root / ("coarse" if stage in ("transnet", "affinenet") else "f2m") / stage


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_writes_checkpoints_flags_events_and_export(trained, stage):
    directory = stage_dir(trained, stage)
    assert tf.train.latest_checkpoint(directory).endswith("ckpt-2")
    assert list((directory / "events").glob("events.out.tfevents.*"))
    flags_file = json.loads((directory / "flags.json").read_text())
    assert flags_file["crop_size"] == 32 and flags_file["max_steps"] == 2
    assert (directory / "flags.txt").read_text().count("--crop_size=32") == 1
    config = json.loads((directory / "export" / "rfnet.json").read_text())
    expected_parts = {
        "transnet": ["transnet"],
        "affinenet": ["transnet", "affinenet"],
        "fusion": ["transnet", "affinenet", "f2m"],
        "deformation": ["transnet", "affinenet", "f2m"],
    }[stage]
    assert config["parts"] == expected_parts
    assert config["model"]["affine_input_size"] == 48
    # F2M's attention pools its maxima over windows of the fusion's crop size.
    assert config["model"]["attention_window"] == (32 if stage in ("fusion", "deformation") else None)


def test_the_last_export_is_a_complete_model(trained):
    model = model_from_weights(stage_dir(trained, "deformation"))
    out = model([tf.random.uniform((1, 40, 56, 3)), tf.random.uniform((1, 40, 56, 1))])
    assert out["fused_rgb"].shape == (1, 40, 56, 3)
    # AffineNet's weights came from the coarse stage, not a new initialisation.
    coarse = model_from_weights(stage_dir(trained, "affinenet"), required=("affinenet",))
    for a, b in zip(model.affinenet.weights, coarse.affinenet.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_rerun_resumes_instead_of_starting_over(trained):
    directory = stage_dir(trained, "transnet")
    flags_used = json.loads((directory / "flags.json").read_text())
    extra = [f"--exclude={','.join(flags_used['exclude'])}"] if flags_used["exclude"] else []
    result = run_script("train_coarse.py", f"--data_dir={flags_used['data_dir']}", *extra,
                        "--stage=transnet", *TINY, "--affine_input_size=48",
                        f"--model_dir={directory.parent}")
    assert "already at step 2" in check(result)


def write_corrupt_checkpoint(stage_dir: Path) -> Path:
    """A stage directory whose one checkpoint was overwritten (it does not restore)."""
    stage_dir.mkdir(parents=True)
    (stage_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    (stage_dir / "ckpt-1.index").write_bytes(b"overwritten")
    (stage_dir / "ckpt-1.data-00000-of-00001").write_bytes(b"overwritten")
    return stage_dir


# A line of absl's or TensorFlow's C++ log (W1129 23:37:34.156 ..., E0000 00:00:...).
LOG_LINE = re.compile(r"^[IWEF]\d{4} ")


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("train_coarse.py", ["--stage=fine"], "--stage=fine"),
        ("train_f2m.py", ["--phase=fine"], "--phase=fine"),
        ("train_coarse.py", ["stray"], "unexpected arguments: stray"),
        ("train_coarse.py", [], "--data_dir is required"),
        ("train_coarse.py", ["--data_dir=/no/such/folder"], "/no/such/folder: no such folder"),
        ("train_coarse.py", ["--data_dir={data}", "--training_zooms=1,0.5"], "--training_zooms must be at least 1"),
        ("train_coarse.py", ["--stage=affinenet", "--data_dir={data}", "--model_dir={empty}"],
         "--transnet_dir"),
        ("train_f2m.py", ["--phase=deformation", "--data_dir={data}", "--model_dir={empty}"],
         "--fusion_dir"),
        ("train_f2m.py", ["--data_dir={data}", "--coarse_dir={empty}"], "--coarse_dir"),
        ("train_f2m.py", ["--data_dir={data}", "--attention_window=-1"], "--attention_window must be >= 0"),
        ("train_f2m.py", ["--data_dir={data}", "--supervised_only"], "--supervised_only needs --flow_supervision > 0"),
        ("train_f2m.py", ["--data_dir={data}", "--model_dir={data}/vis/p0.png/runs"], "is a file, not a folder"),
        ("train_f2m.py", ["--data_dir={data}", "--phase=fusion", "--model_dir={corrupt}"],
         "[fusion] none of the checkpoints in {corrupt}/fusion restores (ckpt-1: "),
        ("train_f2m.py", ["--data_dir={data}", "--phase=fusion", "--crop_size=32", "--batch_size=1",
                          "--max_steps=3", "--learning_rate=1e30", "--model_dir={empty}"],
         "became non-finite"),
    ],
)
def test_bad_flags_input_and_runs_that_cannot_go_on_exit_2_with_one_line(script, args, message, tmp_path):
    data = write_generated_pairs(tmp_path / "data", count=1)
    (tmp_path / "empty").mkdir()
    write_corrupt_checkpoint(tmp_path / "corrupt" / "fusion")
    names = {"data": data, "empty": tmp_path / "empty", "corrupt": tmp_path / "corrupt"}
    args = [arg.format(**names) for arg in args]
    result = run_script(script, *args, timeout=300)
    assert result.returncode == 2, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert ours == [ours[0]] and ours[0].startswith(f"{script}: error: "), result.stderr
    assert message.format(**names) in ours[0], result.stderr
    assert (tmp_path / "corrupt" / "fusion" / "ckpt-1.index").read_bytes() == b"overwritten"


def event_scalar(directory: Path, tag: str, step: int) -> float:
    for event_file in (directory / "events").glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag and event.step == step:
                    return float(tf.make_ndarray(value.tensor))
    raise AssertionError(f"no {tag} at step {step} in {directory}")


def test_mirrored_on_two_cpus_matches_the_default_strategy(tmp_path):
    """Same global batch, split over two logical CPU devices: same loss, same update.

    On the F2M fusion phase, the cheapest stage to trace (the loop is shared by all).
    """
    data = write_generated_pairs(tmp_path / "data")
    common = [f"--data_dir={data}", "--phase=fusion", "--crop_size=32", "--batch_size=4",
              "--max_steps=1", "--log_every=1"]
    check(run_script("train_f2m.py", *common, f"--model_dir={tmp_path / 'default'}"))
    check(run_script("train_f2m.py", *common, f"--model_dir={tmp_path / 'mirrored'}",
                     "--strategy=mirrored", "--cpu_devices=2"))
    default_dir = tmp_path / "default" / "fusion"
    mirrored_dir = tmp_path / "mirrored" / "fusion"
    np.testing.assert_allclose(
        event_scalar(mirrored_dir, "fusion/total", 1), event_scalar(default_dir, "fusion/total", 1),
        rtol=1e-5,
    )
    single = model_from_weights(default_dir, required=("f2m",))
    mirrored = model_from_weights(mirrored_dir, required=("f2m",))
    for a, b in zip(single.f2m.weights, mirrored.f2m.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, err_msg=a.path)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_multi_worker_processes_end_with_identical_weights(tmp_path):
    data = write_generated_pairs(tmp_path / "data")
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "train_f2m.py"), f"--data_dir={data}",
                 "--phase=fusion", "--crop_size=32", "--batch_size=4", "--max_steps=3",
                 "--log_every=1", "--strategy=multi_worker",
                 f"--model_dir={tmp_path / 'run'}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                env={**os.environ, "TF_CONFIG": json.dumps(config)},
            )
        )
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-3000:]
        outputs.append(stdout)
    digests = [re.findall(r"weights sha256 ([0-9a-f]{64})", out) for out in outputs]
    assert all(len(found) == 1 for found in digests), outputs
    assert digests[0] == digests[1]
    assert tf.train.latest_checkpoint(tmp_path / "run" / "fusion").endswith("ckpt-3")
    assert not list((tmp_path / "run" / "fusion").glob(".worker-*"))
