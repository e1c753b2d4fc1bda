"""Weights map 1:1 onto Hugging Face LlamaForCausalLM: export, load there, and compare logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm1d.config import ModelConfig, to_dict
from mm1d.export_hf import export_hf, main
from mm1d.model import Transformer, save_model_bundle

transformers = pytest.importorskip("transformers")
V = 131


def build(seed: int, **kw: object) -> Transformer:
    base = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=64, rope_theta=500.0)
    base.update(kw)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**base), V).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def load_hf(path: Path) -> torch.nn.Module:
    return transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_kv_heads=2),  # grouped-query attention
        dict(n_kv_heads=4, tie_embeddings=True),  # multi-head, tied head
        dict(n_kv_heads=1, head_dim=32),  # multi-query, head_dim != d_model / n_heads
    ],
)
def test_logits_match_transformers_llama(tmp_path: Path, kw: dict) -> None:
    model = build(0, **kw)
    save_model_bundle(model, model.config, tmp_path / "bundle")
    export_hf(tmp_path / "bundle", tmp_path / "hf")
    hf = load_hf(tmp_path / "hf")
    assert sum(p.numel() for p in hf.parameters()) == model.num_params()["total"]
    ids = torch.randint(0, V, (2, 19))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # Names and values map one to one (HF may list the tied head too).
    hf_state = hf.state_dict()
    for name, p in model.state_dict().items():
        torch.testing.assert_close(p, hf_state[name], rtol=0, atol=0)


def test_packed_documents_match_llama_run_per_document(tmp_path: Path) -> None:
    model = build(1)
    save_model_bundle(model, model.config, tmp_path / "bundle")
    export_hf(tmp_path / "bundle", tmp_path / "hf")
    hf = load_hf(tmp_path / "hf")
    a, b = torch.randint(0, V, (1, 9)), torch.randint(0, V, (1, 14))
    doc_ids = torch.tensor([[0] * 9 + [1] * 14])
    positions = torch.tensor([list(range(9)) + list(range(14))])
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), positions, doc_ids)
        torch.testing.assert_close(packed[:, :9], hf(a).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed[:, 9:], hf(b).logits, rtol=1e-5, atol=1e-5)


def test_export_cli_writes_llama_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = build(2)
    vocab = {"text_size": 40, "image_codebook": 30, "video_codebook": 20, "max_budget": 8, "max_time_steps": 1}
    save_model_bundle(model, model.config, tmp_path / "bundle", extra={"vocab": vocab})
    main(["--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "hf"), "--dtype", "bfloat16"])
    assert "wrote" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == V and cfg["num_key_value_heads"] == 2
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (40, 41)  # first specials after the text range
    hf = load_hf(tmp_path / "hf")
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16


def test_export_refuses_qk_norm(tmp_path: Path) -> None:
    model = build(3, qk_norm=True)
    save_model_bundle(model, model.config, tmp_path / "bundle")
    with pytest.raises(ValueError, match="qk_norm"):
        export_hf(tmp_path / "bundle", tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    with pytest.raises(SystemExit, match="qk_norm"):
        main(["--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "hf")])


def test_export_rejects_missing_or_foreign_bundle(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_hf(tmp_path / "nothing", tmp_path / "hf")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({"model": to_dict(ModelConfig())}))
    with pytest.raises(ValueError, match="not an mm1d model bundle"):
        export_hf(tmp_path / "foreign", tmp_path / "hf")
