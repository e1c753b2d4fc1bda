"""train/pretrain.py end to end on tiny random tokenizers and shards: single process, the deepspeed launcher
with 2 CPU ranks (ZeRO-2 and ZeRO-3), SIGKILL + resume, zero_to_fp32, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import free_port  # noqa: E402
from tiny_assets import make_shards, make_tokenizers, tiny_vocab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mm_tiny.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pretrain_assets")
    paths = make_tokenizers(root)
    train = make_shards(root / "tokens" / "train", paths, num_images=24, num_videos=6)
    return {"paths": paths, "train": train}


def overrides(assets: dict, out: Path, steps: int, **extra: str) -> list[str]:
    v = tiny_vocab()
    p = assets["paths"]
    ov = {
        "out_dir": str(out),
        "model.d_model": "64", "model.n_layers": "2", "model.n_heads": "4", "model.n_kv_heads": "2",
        "model.ffn_hidden": "128", "model.max_seq_len": "256",
        "vocab.text_size": str(v.text_size), "vocab.max_budget": str(v.max_budget),
        "vocab.max_time_steps": str(v.max_time_steps),
        "tokenizers.text": p.text, "tokenizers.image": p.image, "tokenizers.video": p.video,
        "data.shards": f"[{assets['train']}]", "data.seq_len": "256", "data.batch_size": "4",
        "data.sequence.understanding_min_k": "1", "eval_data": "[]",
        "train.max_steps": str(steps), "train.log_every": "1", "train.save_every": "3", "train.keep_last": "5",
        "optim.lr": "3e-3", "optim.warmup_steps": "2", "engine.backend": "torch", "engine.zero_stage": "0",
        "engine.deepspeed_config": "null", "engine.compile": "false",
    }
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="disabled", DS_ACCELERATOR="cpu")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def python_run(args: list[str], **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train" / "pretrain.py"), "--config", str(CONFIG), *args]
    return subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def losses(out: Path) -> dict[int, float]:
    from mm1d.training.tracking import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}


def test_single_process_run_learns_and_writes_a_loadable_bundle(assets: dict, tmp_path: Path) -> None:
    from mm1d.checkpoint import load_release_bundle

    r = python_run(overrides(assets, tmp_path, 12, **{"train.sample_every": "6"}))
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "samples" / "step0000012.json").read_text())  # periodic generations
    assert len(record["captions"]) == 4 and (tmp_path / "samples" / "step0000006.png").is_file()
    lo = losses(tmp_path)
    assert sorted(lo) == list(range(1, 13))
    assert sum(list(lo.values())[-3:]) < sum(list(lo.values())[:3])  # the loss goes down
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(k in rows[-1] for k in ("loss_text", "loss_image", "tok_per_s", "lr"))
    bundle = load_release_bundle(tmp_path / "bundle")
    assert bundle.model.vocab_size == bundle.vocab.size
    assert bundle.tokenizer_dir("image") is not None and bundle.tokenizer_dir("video") is not None
    assert bundle.text_path.is_file()



def test_compiled_training_gives_the_eager_losses_and_a_loadable_bundle(assets: dict, tmp_path: Path) -> None:
    """engine.compile=true (inductor on the CPU) trains the same model: same losses, same parameter names."""
    from mm1d.checkpoint import load_release_bundle

    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        r = python_run(overrides(assets, out, 3, **{"engine.compile": flag, "train.save_every": "0"}))
        assert r.returncode == 0, r.stderr[-3000:]
        runs[flag] = losses(out)
    assert runs["true"].keys() == runs["false"].keys() == {1, 2, 3}
    for step, loss in runs["false"].items():
        assert abs(runs["true"][step] - loss) < 1e-4, (step, runs)
    load_release_bundle(tmp_path / "true" / "bundle")  # strict load: the names did not change

def test_deepspeed_launcher_two_cpu_ranks(assets: dict, tmp_path: Path) -> None:
    """ZeRO-2 and ZeRO-3 on 2 CPU ranks, with code factors: the same losses, and each ZeRO checkpoint
    consolidates (zero_to_fp32, then folded) to exactly the weights of the release bundle. No DeepSpeed op is
    compiled (the shared-memory all-reduce op serves only tensor-parallel inference)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from mm1d.config import PretrainConfig, load_config
    from mm1d.modality import Vocab
    from mm1d.model.code_factors import fold_code_factors, has_code_factors
    from mm1d.training.pretraining import code_digits

    launcher = str(Path(sys.executable).parent / "deepspeed")
    runs = {}
    for stage in (2, 3):
        out = tmp_path / f"zero{stage}"
        args = overrides(assets, out, 8, **{"engine.backend": "deepspeed", "engine.zero_stage": str(stage),
                                            "engine.deepspeed_config": f"configs/deepspeed/zero{stage}.json",
                                            "code_factors": "true"})
        cmd = [launcher, "--num_gpus", "2", "--master_port", str(free_port()), str(ROOT / "train" / "pretrain.py"),
               "--config", str(CONFIG), *args]
        ext = tmp_path / "torch_extensions"  # an empty build cache: a JIT op would be compiled into it
        r = subprocess.run(cmd, env={**env(), "TORCH_EXTENSIONS_DIR": str(ext)}, cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, (stage, r.stdout[-2000:], r.stderr[-3000:])
        assert "shm_comm" not in r.stdout + r.stderr and not ext.exists(), "a DeepSpeed op was compiled"
        runs[stage] = lo = losses(out)
        assert sorted(lo) == list(range(1, 9))
        assert lo[8] < lo[1]
        ckpt = out / "checkpoints"
        fp32 = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=(ckpt / "latest").read_text().strip())
        assert has_code_factors(fp32)
        cfg = load_config(CONFIG, args, PretrainConfig)
        fp32 = fold_code_factors(fp32, code_digits(cfg, Vocab.from_config(cfg.vocab)))
        bundle = load_file(str(out / "bundle" / "model.safetensors"))
        assert set(bundle) <= set(fp32)
        for name, w in bundle.items():
            torch.testing.assert_close(fp32[name].float(), w.float(), rtol=0, atol=0, msg=f"zero{stage} {name}")
    for step, loss in runs[2].items():
        assert runs[3][step] == pytest.approx(loss, abs=1e-4), (step, runs)


CLOSE_SNIPPET = """
import os, sys, torch, torch.distributed as dist
from mm1d.utils import close_distributed
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
t = torch.full((4,), float(rank + 1))
work = dist.all_reduce(t, async_op=True)
work.wait()
close_distributed()
print(float(t[0]), dist.is_initialized())
close_distributed()  # a second call is a no-op
"""


def test_close_distributed_destroys_the_group_on_every_rank() -> None:
    """The training entry points end with close_distributed(): both gloo ranks meet, destroy the default group
    and exit 0 (a group left to interpreter finalization can abort the process after a successful run)."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", CLOSE_SNIPPET, str(r), port], env=env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.split() == ["3.0", "False"], (out, err[-2000:])
    for script in ("train/pretrain.py", "tokenizers/train_flextok.py", "tokenizers/train_videoflextok.py"):
        assert (ROOT / script).read_text().rstrip().endswith("close_distributed()"), script


def test_sigkill_then_resume_gives_the_uninterrupted_losses(assets: dict, tmp_path: Path) -> None:
    steps = 40
    full, part = tmp_path / "full", tmp_path / "part"
    r = python_run(overrides(assets, full, steps))
    assert r.returncode == 0, r.stderr[-3000:]
    cmd = [sys.executable, str(ROOT / "train" / "pretrain.py"), "--config", str(CONFIG),
           *overrides(assets, part, steps)]
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = part / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest.read_text().strip().removeprefix("step"))
    assert killed_at < steps, "the run finished before it could be killed"
    r = python_run(overrides(assets, part, steps))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, steps + 1))
    for s in range(killed_at, steps + 1):
        assert b[s] == pytest.approx(a[s], abs=1e-5), s


def test_clear_errors(assets: dict, tmp_path: Path) -> None:
    from mm1d.config import PretrainConfig, load_config
    from mm1d.modality import Vocab
    from mm1d.training.pretraining import check_tokenizers

    r = python_run(overrides(assets, tmp_path / "x", 1) + ["optim.lrr=1"])
    assert r.returncode == 2 and "unknown config key 'optim.lrr'" in r.stderr and "Did you mean 'lr'" in r.stderr
    cfg = load_config(CONFIG, overrides(assets, tmp_path / "y", 1, **{"tokenizers.image": str(tmp_path / "nope")}),
                      PretrainConfig)
    with pytest.raises(FileNotFoundError, match="image tokenizer bundle not found"):
        check_tokenizers(cfg, Vocab.from_config(cfg.vocab))
    cfg = load_config(CONFIG, overrides(assets, tmp_path / "y", 1, **{"vocab.image_codebook": "64"}), PretrainConfig)
    with pytest.raises(ValueError, match="codebook 1000 != vocab.image_codebook 64"):
        check_tokenizers(cfg, Vocab.from_config(cfg.vocab))
    # A checkpoint of another model shape is refused with a clear message.
    out = tmp_path / "shape"
    assert python_run(overrides(assets, out, 3)).returncode == 0
    r = python_run(overrides(assets, out, 6, **{"model.d_model": "96"}))
    assert r.returncode != 0 and "another shape" in r.stderr


def test_code_factors_train_and_fold_into_a_plain_bundle(assets: dict, tmp_path: Path) -> None:
    """code_factors=true trains factored visual rows; the bundle holds the folded plain weights, which give the
    trained (factored) model's logits exactly."""
    from mm1d.checkpoint import load_release_bundle
    from mm1d.config import PretrainConfig, load_config
    from mm1d.training.pretraining import build_model
    from mm1d.utils import safe_torch_load

    args = overrides(assets, tmp_path, 4, code_factors="true", **{"train.save_every": "0"})
    r = python_run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = load_config(CONFIG, args, PretrainConfig)
    model, vocab = build_model(cfg)
    state = safe_torch_load(tmp_path / "checkpoints" / "step00000004" / "state.pt")["model"]
    model.load_state_dict(state)
    factors = state["model.embed_tokens.parametrizations.weight.0.factors"]
    assert factors.abs().max() > 0  # the factors trained
    bundle = load_release_bundle(tmp_path / "bundle")  # strict: plain Llama names only
    ids = torch.randint(0, vocab.size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(bundle.model(ids), model.eval()(ids), atol=1e-5)


def test_eval_loss_reads_clean_captions() -> None:
    from mm1d.config import PretrainConfig, load_config
    from mm1d.training.pretraining import eval_loader_config

    cfg = load_config(CONFIG, ["data.sequence.caption_input_noise=0.2", "data.sequence.caption_dropout=0.3",
                               "eval_data=[runs/x/val]"], PretrainConfig)
    ev = eval_loader_config(cfg)
    assert cfg.data.sequence.caption_input_noise == 0.2  # the training loader keeps its noise
    assert ev.sequence.caption_input_noise == 0.0 and ev.shards == ["runs/x/val"]
    assert ev.sequence.caption_dropout == 0.3 and ev.seq_len == cfg.data.seq_len and ev.tasks == cfg.data.tasks


def test_task_losses_score_each_task_alone(assets: dict, tmp_path: Path) -> None:
    """eval/task_loss.py: per task and target modality. A zero head makes every code uniform within its softmax
    group, so each loss is exactly log(group size), and each task shows only its own modalities."""
    import math

    from mm1d.config import PretrainConfig, load_config
    from mm1d.modality import Vocab
    from mm1d.model.transformer import Transformer
    from mm1d.training.pretraining import task_losses

    cfg = load_config(CONFIG, overrides(assets, tmp_path, 1, **{"eval_data": f"[{assets['train']}]"}), PretrainConfig)
    vocab = Vocab.from_config(cfg.vocab)
    torch.manual_seed(0)
    model = Transformer(cfg.model, vocab.size, vocab.softmax_groups()).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    res = task_losses(model, vocab, cfg, ("t2i", "i2t", "t2v", "v2t"), batches=2)
    text_group = math.log(vocab.softmax_groups()[0][1])
    assert set(res["t2i"]) == set(res["i2t"]) == {"text", "image"}
    assert set(res["t2v"]) == set(res["v2t"]) == {"text", "video"}
    for task, mod in (("t2i", "image"), ("i2t", "image"), ("t2v", "video"), ("v2t", "video")):
        assert res[task][mod] == pytest.approx(math.log(vocab.local_size(mod)), abs=1e-4)
        assert res[task]["text"] == pytest.approx(text_group, abs=1e-4)
    # the documents are drawn the same way on every call (so every model scored sees the same ones)
    assert task_losses(model, vocab, cfg, ("t2i",), batches=2) == {"t2i": res["t2i"]}
    with pytest.raises(ValueError, match="eval_data is empty"):
        task_losses(model, vocab, load_config(CONFIG, overrides(assets, tmp_path, 1), PretrainConfig))
