"""mm1d.model: the decoder-only transformer, its KV cache and release-bundle I/O (pure ``nn.Module``)."""

from mm1d.model.bundle import load_model_bundle, read_bundle_config, save_model_bundle
from mm1d.model.kv_cache import StaticKVCache
from mm1d.model.transformer import Transformer

__all__ = ["Transformer", "StaticKVCache", "load_model_bundle", "save_model_bundle", "read_bundle_config"]
