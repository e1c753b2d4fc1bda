"""Training-step benchmark: mm1d's transformer against transformers' LlamaForCausalLM, same size and batch.

    OMP_NUM_THREADS=2 python eval/bench_train.py                                  # small CPU model
    python eval/bench_train.py --config configs/mm_350m.yaml --batch 4 --seq 4096  # on a GPU: bf16 + MFU

One child process builds every implementation from the same weights and times forward + cross-entropy +
backward, alternating implementations step by step so that load from other processes hits all alike
(median step time). Memory: on CUDA, each step's peak above what was allocated before it; on CPU, a
separate child process per implementation reports its peak RSS. Implementations:

- ``mm1d``: our model, one document per row (causal SDPA), full logits and ``F.cross_entropy``;
- ``hf``: ``LlamaForCausalLM`` (SDPA attention) with the same weights and loss;
- ``mm1d-packed``: our model on rows packed with 4 documents each (document mask: the ``segments`` kernel on CPU,
  FlexAttention on GPU);
- ``mm1d-chunked``: our model with the chunked loss (``targets=``), which never holds all logits, and one
  softmax over the whole vocabulary;
- ``mm1d-grouped``: the same with ``grouped_softmax`` (each target's logits over its id group only).

Llama has no QK-norm and one softmax over the whole vocabulary, so the ``mm1d``/``hf`` pair runs with
``qk_norm=false`` and ``grouped_softmax=false``; the other entries use the config as written. Prints one
JSON line (``--out DIR`` also writes ``DIR/results.json``) and the speed ratio mm1d / hf. MFU counts matmul
FLOPs (6 x matmul params + causal attention, see ``mm1d.model.summary.train_flops_per_token``) against the
GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mm1d.config import ModelConfig, VocabConfig, to_dict  # noqa: E402
from mm1d.modality import Vocab  # noqa: E402
from mm1d.model import Transformer  # noqa: E402
from mm1d.model.summary import load_model_sections, train_flops_per_token  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}
IMPLS = ("mm1d", "hf", "mm1d-packed", "mm1d-chunked", "mm1d-grouped")


def cpu_default() -> tuple[ModelConfig, VocabConfig]:
    """A small model that times in seconds on a 2-core CPU."""
    cfg = ModelConfig(d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, ffn_hidden=704, max_seq_len=1024)
    return cfg, VocabConfig(text_size=4000, image_codebook=1000, video_codebook=1000)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _build(
    impl: str, cfg: ModelConfig, vocab_size: int, device: torch.device, dtype: torch.dtype, same_weights: bool = True,
    softmax_groups: list[tuple[int, int]] | None = None,
) -> torch.nn.Module:
    """Build one implementation; with ``same_weights`` the HF model gets our initial weights (by name)."""
    torch.manual_seed(0)
    if impl == "hf":
        from transformers import LlamaConfig, LlamaForCausalLM

        from mm1d.export_hf import llama_config

        hf_cfg = llama_config(cfg, vocab_size)
        for key in ("architectures", "model_type", "torch_dtype", "dtype"):
            hf_cfg.pop(key)
        model = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation="sdpa"))
        if same_weights:
            ours = Transformer(cfg, vocab_size)
            missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
            if unexpected or [k for k in missing if k != "lm_head.weight"]:
                raise RuntimeError(f"weight names do not map onto Llama: missing {missing}, unexpected {unexpected}")
            del ours
    else:
        model = Transformer(cfg, vocab_size, softmax_groups)
    return model.to(device=device, dtype=dtype).train()


def full_logits_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``(B, L, V)`` logits against ``(B, L)`` targets, in float32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def _step_fn(
    impl: str, model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor, n_docs: int, chunk_tokens: int | None,
    compiled: bool = False,
) -> Any:
    B, L = ids.shape
    doc_ids = positions = None
    if impl == "mm1d-packed":
        doc_len = L // n_docs
        ar = torch.arange(L, device=ids.device)
        doc_ids = (ar // doc_len).clamp_max(n_docs - 1).expand(B, L)
        positions = ar - doc_ids[0] * doc_len
        positions = positions.expand(B, L)

    loss_fn = torch.compile(full_logits_loss) if compiled else full_logits_loss  # fuses upcast + softmax

    def step() -> None:
        if impl == "hf":
            loss = loss_fn(model(input_ids=ids).logits, targets)
        elif impl in ("mm1d-chunked", "mm1d-grouped"):
            ce, _ = model(ids, targets=targets, loss_chunk_tokens=chunk_tokens)
            loss = ce.mean()
        else:
            loss = loss_fn(model(ids, positions, doc_ids), targets)
        loss.backward()
        for p in model.parameters():
            p.grad = None

    return step


def _prepare(job: dict[str, Any], impl: str) -> tuple[Any, ModelConfig]:
    device = torch.device(job["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[job["dtype"]]
    cfg = ModelConfig(**job["models"][impl])
    B, L, V = job["batch"], job["seq"], job["vocab_size"]
    model = _build(impl, cfg, V, device, dtype, same_weights=not job.get("memory_only", False),
                   softmax_groups=job["softmax_groups"])
    if job["ckpt"]:
        if impl == "hf":
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing = True
    if job["compile"]:  # in place, per block, as engine.compile does in training (plus the loss)
        if impl == "hf":
            for layer in model.model.layers:
                layer.compile()
        else:
            model.compile_blocks()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, L), generator=gen).to(device)
    targets = torch.randint(0, V, (B, L), generator=gen).to(device)
    return _step_fn(impl, model, ids, targets, job["n_docs"], job["loss_chunk"], job["compile"]), cfg


def measure_speed(job: dict[str, Any]) -> dict[str, Any]:
    """Time every implementation in one process, alternating step by step so that load drifts hit all alike.

    On CUDA also records each step's peak memory above what was allocated before it.
    """
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    impls = job["impls"]
    prepared = {impl: _prepare(job, impl) for impl in impls}
    for _ in range(job["warmup"]):
        for impl in impls:
            prepared[impl][0]()
    sync()
    times: dict[str, list[float]] = {i: [] for i in impls}
    peaks: dict[str, float] = {i: 0.0 for i in impls}
    for _ in range(job["steps"]):
        for impl in impls:
            if cuda:
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            prepared[impl][0]()
            sync()
            times[impl].append(time.perf_counter() - t0)
            if cuda:
                peaks[impl] = max(peaks[impl], (torch.cuda.max_memory_allocated() - base) / 2**20)
    B, L, V = job["batch"], job["seq"], job["vocab_size"]
    out: dict[str, Any] = {}
    for impl in impls:
        step_s = statistics.median(times[impl])
        r: dict[str, Any] = {"step_ms": round(step_s * 1e3, 2), "min_step_ms": round(min(times[impl]) * 1e3, 2),
                             "tokens_per_s": round(B * L / step_s, 1)}
        if cuda:
            r["step_peak_mem_mb"] = round(peaks[impl], 1)
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
            if peak and job["dtype"] == "bf16":
                flops = train_flops_per_token(prepared[impl][1], V, L) * B * L / step_s
                r["tflops"] = round(flops / 1e12, 1)
                r["mfu"] = round(flops / peak, 4)
        out[impl] = r
    return out


def measure_cpu_memory(job: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one implementation alone (runs in its own child process): build, then two steps."""
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    step, _ = _prepare(job, job["impl"])
    rss_built = _rss_mb()
    step()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"peak_rss_mb": round(peak, 1), "step_rss_mb": round(peak - rss_built, 1)}


def _child(fn: Any, job: dict[str, Any], queue: Any) -> None:
    try:
        queue.put(fn(job))
    except Exception as e:  # report the failure instead of hanging the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})


def run_child(fn: Any, job: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, job, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML with model: and vocab: (default: a small CPU model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per implementation (median)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-implementation CPU RSS runs")
    parser.add_argument("--impls", default="mm1d,hf", help=f"comma list from {list(IMPLS)}")
    parser.add_argument("--n-docs", type=int, default=4, help="documents per row for mm1d-packed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every block and the loss (both models)")
    parser.add_argument("--ckpt", action="store_true", help="activation checkpointing (both models)")
    parser.add_argument("--loss-chunk", type=int, default=None, help="tokens per chunk for mm1d-chunked/-grouped")
    parser.add_argument("--out", default=None, help="also write DIR/results.json")
    parser.add_argument("overrides", nargs="*", help="model.KEY=VALUE / vocab.KEY=VALUE")
    args = parser.parse_args(argv)
    impls = args.impls.split(",")
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise SystemExit(f"unknown --impls {bad}; choose from {list(IMPLS)}")
    if args.config:
        cfg, vcfg = load_model_sections(args.config, args.overrides)
    else:
        cfg, vcfg = cpu_default()
    if args.seq > cfg.max_seq_len:
        raise SystemExit(f"--seq {args.seq} exceeds model.max_seq_len {cfg.max_seq_len}")
    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    vocab = Vocab.from_config(vcfg)
    vocab_size = vocab.size
    base = dict(
        device=args.device, dtype=dtype, batch=args.batch, seq=args.seq, warmup=args.warmup, steps=args.steps,
        vocab_size=vocab_size, threads=args.threads, compile=args.compile, ckpt=args.ckpt, n_docs=args.n_docs,
        loss_chunk=args.loss_chunk, softmax_groups=list(vocab.softmax_groups()),
    )
    # Llama has no QK-norm and one softmax over the vocabulary: compare like with like
    plain = to_dict(dataclasses.replace(cfg, qk_norm=False, grouped_softmax=False))
    models = {i: plain if i in ("mm1d", "hf") else to_dict(cfg) for i in impls}
    for impl, grouped in (("mm1d-chunked", False), ("mm1d-grouped", True)):
        if impl in models:
            models[impl] = to_dict(dataclasses.replace(cfg, grouped_softmax=grouped))
    job = {**base, "impls": impls, "models": models}
    results = run_child(measure_speed, job)
    if "error" in results:
        raise SystemExit(f"bench failed: {results['error']}")
    if not args.device.startswith("cuda") and not args.no_memory:
        for impl in impls:
            results[impl].update(run_child(measure_cpu_memory, {**job, "impl": impl, "memory_only": True}))
    record: dict[str, Any] = {
        "bench": "train_step",
        "config": args.config or "cpu-default",
        **{k: base[k] for k in ("device", "dtype", "batch", "seq", "compile", "ckpt", "loss_chunk")},
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "threads": args.threads or torch.get_num_threads(),
        "model": to_dict(cfg),
        "vocab_size": vocab_size,
        "results": results,
    }
    with torch.device("meta"):
        record["params"] = Transformer(cfg, vocab_size, vocab.softmax_groups()).num_params()
    if "tokens_per_s" in results.get("mm1d", {}) and "tokens_per_s" in results.get("hf", {}):
        record["ratio_mm1d_over_hf"] = round(results["mm1d"]["tokens_per_s"] / results["hf"]["tokens_per_s"], 3)
    if "tokens_per_s" in results.get("mm1d-grouped", {}) and "tokens_per_s" in results.get("mm1d-chunked", {}):
        record["ratio_grouped_over_chunked"] = round(
            results["mm1d-grouped"]["tokens_per_s"] / results["mm1d-chunked"]["tokens_per_s"], 3)
    line = json.dumps(record)
    print(line)
    if "ratio_mm1d_over_hf" in record:
        print(f"tokens/s ratio mm1d / hf: {record['ratio_mm1d_over_hf']:.3f}")
    if "ratio_grouped_over_chunked" in record:
        print(f"tokens/s ratio grouped / one softmax: {record['ratio_grouped_over_chunked']:.3f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
