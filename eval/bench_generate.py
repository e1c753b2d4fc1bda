"""Generation speed on CPU: our KV-cached constrained sampler vs ``transformers`` ``generate``, and one image
end to end.

    OMP_NUM_THREADS=2 python eval/bench_generate.py --out runs/bench_generate [--bundle DIR]

Part 1 (same weights, batch and length): a random mm1d ``Transformer`` without QK-norm is saved as a bundle,
exported with ``mm1d.export_hf`` and loaded as ``LlamaForCausalLM``. Both sample ``--new-tokens`` tokens for
``--batch`` rows after the same prompt (a caption, ``<boi> <k_n>``): ours with the image-span constraints,
``generate`` unconstrained with ``do_sample=True`` (its default dynamic KV cache). Tokens/s counts generated
tokens of all rows; each side is timed as the best of ``--repeats`` runs after a warm-up.

Part 2: one text-to-image sample (one draw, ``rerank=0``) through ``Pipeline.generate``, split into AR sampling
and FlexTok detokenization. With ``--bundle`` (e.g. ``mm1d/assets/shapes-tiny``) it uses that bundle; otherwise the
benchmark model with a random default-size FlexTok (``FlexTokConfig()``, 32 px, N=32, 20 decoder steps).

Part 3: captioning the Part 2 image, alone and as a batch of 16, greedy (``rerank=0``) against the preset's
reranking (``mm1d.scoring``: 16 more draws, then both directions score every candidate).

Part 4: text-to-image (and text-to-video, when the bundle has a video tokenizer) for 1 and 16 prompts, one
candidate against best of 8 (``rerank=7``: every candidate decoded, tokenized again and captioned).

Writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mm1d.config import FlexTokConfig, GenerationConfig, ModelConfig, TextTokenizerConfig, VocabConfig, to_dict
from mm1d.export_hf import export_hf
from mm1d.inference import Pipeline, load
from mm1d.modality import Vocab
from mm1d.model import Transformer, save_model_bundle
from mm1d.sampling import ConstraintTable, SamplingParams, generation_program, sample
from mm1d.sequence import SequenceSample
from mm1d.tokenization.flextok import FlexTok
from mm1d.tokenization.text import TextTokenizer


def best_of(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default=None, help="release bundle for the end-to-end image (default: random)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=256, help="image budget k (the span length)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k = args.new_tokens
    vocab_cfg = VocabConfig(text_size=512, image_codebook=1000, video_codebook=1000, max_budget=max(k, 32),
                            max_time_steps=16)
    vocab = Vocab.from_config(vocab_cfg)
    mcfg = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64, n_kv_heads=2,
                       ffn_hidden=int(args.d_model * 8 / 3) // 8 * 8, max_seq_len=1024, qk_norm=False)
    torch.manual_seed(0)
    model = Transformer(mcfg, vocab.size).eval()
    caption = np.arange(12, dtype=np.int64) + 5
    prompt, _ = generation_program(
        vocab, lambda kk, auto: SequenceSample("t2i", caption, np.zeros(kk, np.int64), auto), k, k)
    prompt = prompt[0]
    table = ConstraintTable(vocab)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)
    B = args.batch

    def ours() -> None:
        progs = [generation_program(vocab, lambda kk, auto: SequenceSample("t2i", caption, np.zeros(kk, np.int64),
                                                                           auto), k, k)[1] for _ in range(B)]
        res = sample(model, [[prompt]] * B, progs, table, params, list(range(B)), None, vocab.pad_id)
        assert all(len(t) == k + 2 for t in res.tokens)

    with tempfile.TemporaryDirectory() as tmp:
        save_model_bundle(model, mcfg, Path(tmp) / "bundle", extra={"vocab": to_dict(vocab_cfg)})
        export_hf(Path(tmp) / "bundle", Path(tmp) / "hf")
        hf = transformers.LlamaForCausalLM.from_pretrained(Path(tmp) / "hf").eval()
    ids = torch.tensor([prompt] * B)
    n_new = k + 2  # the image span plus the forced <eoi> <eos>

    def theirs() -> None:
        with torch.inference_mode():
            o = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                            do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=vocab.pad_id)
        assert o.shape == (B, len(prompt) + n_new)

    t_ours = best_of(ours, args.repeats)
    t_hf = best_of(theirs, args.repeats)
    results = {
        "device": "cpu", "threads": torch.get_num_threads(), "batch": B, "prompt_tokens": len(prompt),
        "new_tokens": n_new, "model": to_dict(mcfg), "vocab_size": vocab.size,
        "params_M": round(model.num_params()["total"] / 1e6, 2), "transformers": transformers.__version__,
        "ours_s": round(t_ours, 4), "hf_s": round(t_hf, 4),
        "ours_tok_s": round(B * n_new / t_ours, 1), "hf_tok_s": round(B * n_new / t_hf, 1),
        "speedup": round(t_hf / t_ours, 2),
    }
    print(json.dumps(results, indent=2))

    # ---- one image end to end ----
    if args.bundle:
        pipe = load(args.bundle)
        budget = None
    else:
        text = TextTokenizer.train([f"a {c} {s} in the {p}" for c in ("red", "blue", "green") for s in
                                    ("circle", "square") for p in ("top left", "center")] * 4,
                                   TextTokenizerConfig(vocab_size=60, byte_fallback=False))
        torch.manual_seed(0)
        ft = FlexTok(FlexTokConfig()).eval()  # 32 px, N=32, FSQ 1000 codes, 20 Euler steps
        pipe = Pipeline(model, vocab, text, ft, None, GenerationConfig())
        budget = ft.num_registers
    # one draw (rerank=0) whatever the bundle's preset: Part 4 times best of 8
    pipe.generate("a red circle in the top left", "image", budget=budget, seed=0, rerank=0)  # warm-up
    t0 = time.perf_counter()
    res = pipe.generate("a red circle in the top left", "image", budget=budget, seed=0, rerank=0)
    total = time.perf_counter() - t0
    e2e = {"bundle": args.bundle or "random (benchmark model + FlexTokConfig())", "budget": res.budgets[0],
           "cfg_scale": res.metadata["cfg_scale"], "decoder_steps": res.metadata["decoder_steps"],
           "ar_sampling_s": round(res.metadata["sampling_s"], 4), "detokenize_s": round(res.metadata["decode_s"], 4),
           "total_s": round(total, 4)}
    results["one_image"] = e2e
    print(json.dumps(e2e, indent=2))

    # ---- captions: greedy vs reranked ----
    caps: dict[str, float | int] = {"rerank": pipe.config.text.rerank}
    for n_in in (1, 16):
        for name, rerank in (("greedy", 0), ("reranked", None)):
            def run(n: int = n_in, r: int | None = rerank) -> None:
                pipe.generate(None, "text", images=[res.images[0]] * n, seed=0, rerank=r)

            caps[f"{name}_batch{n_in}_s"] = round(best_of(run, args.repeats), 4)
        caps[f"ratio_batch{n_in}"] = round(caps[f"reranked_batch{n_in}_s"] / caps[f"greedy_batch{n_in}_s"], 2)
    results["captions"] = caps
    print(json.dumps(caps, indent=2))

    # ---- best of 8 for images and videos ----
    best: dict[str, float | int] = {"rerank": 7}
    for modality in ["image"] + (["video"] if pipe.video is not None else []):
        for n_in in (1, 16):
            for name, rerank in (("one", 0), ("best_of_8", 7)):
                def run_visual(n: int = n_in, m: str = modality, r: int = rerank) -> None:
                    pipe.generate(["a red circle in the top left"] * n, m, seed=0, rerank=r)

                best[f"{modality}_{name}_batch{n_in}_s"] = round(best_of(run_visual, args.repeats), 4)
            best[f"{modality}_ratio_batch{n_in}"] = round(
                best[f"{modality}_best_of_8_batch{n_in}_s"] / best[f"{modality}_one_batch{n_in}_s"], 2)
    results["best_of_8"] = best
    print(json.dumps(best, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
