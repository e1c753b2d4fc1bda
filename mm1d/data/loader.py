"""Packed, resumable loader over pretokenized shards.

For each document the loader (1) draws a task from the configured weights, (2) takes the next sample of
that task from a per-task, per-epoch permutation of this rank's samples, (3) draws the per-sample choices
(budget and truncation, dropout; ``mm1d.sequence.choose_sample``), (4) builds the document and (5) packs
documents greedily into rows of ``seq_len`` tokens; ``batch_size`` rows form a ``PackedBatch``.

* Determinism: everything comes from one numpy generator seeded by ``(seed, rank)`` and from
  permutations seeded by ``(seed, rank, task, epoch)``.
* Sharding by rank: the global sample list (shards in sorted order) is split by ``index % world_size``,
  so ranks see disjoint samples, whatever the task.
* Exact resume: ``state_dict()`` holds the generator state and per-task cursors *before* the document
  that did not fit into the last row; ``load_state_dict`` restores them, so the resumed loader yields the
  same batches as an uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np

from mm1d.config import LoaderConfig
from mm1d.data.caption_noise import CaptionBigrams, corrupt_caption_inputs
from mm1d.data.packing import PackedBatch, PackedRow, RowPacker, collate_rows
from mm1d.data.shards import Shard, list_shards
from mm1d.modality import Vocab
from mm1d.sequence import (
    IMAGE_TASKS,
    TASKS,
    VIDEO_TASKS,
    Document,
    budget_bounds,
    build_document,
    check_task,
    choose_sample,
)
from mm1d.utils import print0
from mm1d.utils import rank as env_rank
from mm1d.utils import world_size as env_world_size

STATE_VERSION = 1


class PackedLoader:
    """Iterator of ``PackedBatch`` (torch tensors, CPU) over shard directories.

    Args:
        cfg: shards, seq_len, batch_size, seed, task weights, sequence and loss settings.
        vocab: the vocabulary registry (budget/length tokens, offsets).
        rank: this process's rank (default: from the environment).
        world_size: number of ranks (default: from the environment).

    Raises:
        UnknownTaskError: a task weight for an unknown task.
        ValueError: negative weights, no task with samples, budgets above N or above the vocab's max budget,
            shard tokens larger than the vocabulary ranges.
        ShardMismatchError: a shard index that does not match its shard.
    """

    def __init__(self, cfg: LoaderConfig, vocab: Vocab, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.cfg, self.vocab = cfg, vocab
        self.rank = env_rank() if rank is None else rank
        self.world_size = env_world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside [0, {self.world_size})")
        if cfg.batch_size < 1:
            raise ValueError(f"loader.batch_size must be >= 1, got {cfg.batch_size}")
        for task, w in cfg.tasks.items():
            check_task(task)
            if w < 0:
                raise ValueError(f"loader.tasks.{task} must be >= 0, got {w}")
        self.shards = [Shard(p, verify=cfg.verify_checksums) for p in list_shards(cfg.shards)]
        self._check_vocab()
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.num_samples_total = int(starts[-1])
        shard_of = np.repeat(np.arange(len(self.shards), dtype=np.int64), sizes)
        local_of = np.arange(self.num_samples_total, dtype=np.int64) - starts[shard_of]
        mine = np.arange(self.num_samples_total) % self.world_size == self.rank  # disjoint split by rank
        self._shard_of, self._local_of = shard_of, local_of

        self.task_samples: dict[str, np.ndarray] = {}
        for task in TASKS:
            if cfg.tasks.get(task, 0.0) <= 0:
                continue
            ok = np.concatenate([s.task_mask(task) for s in self.shards]) & mine
            idx = np.nonzero(ok)[0]
            if len(idx) == 0:
                print0(f"[loader] task {task!r} has weight {cfg.tasks[task]} but no samples on rank {self.rank}; "
                       "it is left out")
                continue
            self.task_samples[task] = idx
        if not self.task_samples:
            raise ValueError(f"no samples for any task with a positive weight (tasks={cfg.tasks}, "
                             f"shards={cfg.shards}, rank {self.rank}/{self.world_size})")
        self.tasks = list(self.task_samples)
        w = np.array([cfg.tasks[t] for t in self.tasks], dtype=np.float64)
        self._cum = np.cumsum(w / w.sum())
        self._cum[-1] = 1.0
        self._check_budgets()
        self._packer = RowPacker(cfg.seq_len, vocab.pad_id, cfg.loss)
        self._bigrams = None  # caption input noise drawn from the captions of every shard (all ranks alike)
        if cfg.sequence.caption_input_noise > 0 and cfg.sequence.caption_noise_source == "bigram":
            self._bigrams = CaptionBigrams.from_flat([s.arrays["text_ids"] for s in self.shards],
                                                     [s.arrays["text_off"] for s in self.shards],
                                                     vocab.local_size("text"))
        self._perm_cache: dict[str, tuple[int, np.ndarray]] = {}
        self._rng = np.random.default_rng([cfg.seed, self.rank, 0x6D6D3164])
        self._cursors = {t: 0 for t in self.tasks}
        self._stats = {"docs": 0, "tokens": 0, "skipped_too_long": 0}
        self._batches = 0
        self._pending: tuple[Document, dict[str, Any]] | None = None

    # ---- validation ------------------------------------------------------------------------------------
    def _check_vocab(self) -> None:
        for s in self.shards:
            a = s.arrays
            for name, mod in (("text_ids", "text"), ("image_ids", "image"), ("cond_ids", "image"),
                              ("video_ids", "video")):
                if a[name].size and int(a[name].max()) >= self.vocab.local_size(mod):
                    raise ValueError(f"{s.index_path}: {name} holds id {int(a[name].max())}, which overflows the "
                                     f"{mod} range [0, {self.vocab.local_size(mod)}) of the vocabulary")

    def _check_budgets(self) -> None:
        seq, v = self.cfg.sequence, self.vocab
        for task in self.tasks:
            if task in IMAGE_TASKS:
                ns = {int(s.arrays["image_ids"].shape[1]) for s in self.shards if len(s.arrays["image_ids"])}
                bcfg = seq.image_budget
            elif task in VIDEO_TASKS:
                ns = {int(s.arrays["video_ids"].shape[1]) for s in self.shards if len(s.arrays["video_ids"])}
                bcfg = seq.video_budget
            else:
                continue
            for n in ns:
                budget_bounds(bcfg, n, v.max_budget)  # raises for budgets above N or above max_budget
        if "ti2v" in self.tasks and seq.cond_k:
            for s in self.shards:
                n = int(s.arrays["cond_ids"].shape[1]) if len(s.arrays["cond_ids"]) else seq.cond_k
                if seq.cond_k > min(n, v.max_budget):
                    raise ValueError(f"sequence.cond_k={seq.cond_k} is above N={n} stored condition tokens or "
                                     f"the vocabulary's max_budget={v.max_budget}")

    # ---- iteration ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PackedBatch]:
        return self

    def __next__(self) -> PackedBatch:
        batch = collate_rows([self._next_row() for _ in range(self.cfg.batch_size)], self.cfg.loss)
        self._batches += 1
        return batch

    def _snapshot(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "cursors": dict(self._cursors), "stats": dict(self._stats)}

    def _sample_index(self, task: str) -> int:
        idx = self.task_samples[task]
        c = self._cursors[task]
        epoch, pos = divmod(c, len(idx))
        cached = self._perm_cache.get(task)
        if cached is None or cached[0] != epoch:
            g = np.random.default_rng([self.cfg.seed, self.rank, TASKS.index(task), epoch])
            cached = (epoch, g.permutation(len(idx)))
            self._perm_cache[task] = cached
        self._cursors[task] = c + 1
        return int(idx[cached[1][pos]])

    def _next_doc(self) -> tuple[Document, dict[str, Any]]:
        """The next document that fits a row, with the loader state from just before it was drawn."""
        while True:
            before = self._snapshot()
            task = self.tasks[int(np.searchsorted(self._cum, self._rng.random(), side="right"))]
            g = self._sample_index(task)
            stored = self.shards[self._shard_of[g]].get(int(self._local_of[g]))
            doc = build_document(choose_sample(stored, task, self.cfg.sequence, self.vocab, self._rng), self.vocab)
            doc = corrupt_caption_inputs(doc, self.vocab, self.cfg.sequence.caption_input_noise, self._rng,
                                         self._bigrams)
            if len(doc) <= self.cfg.seq_len:
                return doc, before
            self._stats["skipped_too_long"] += 1
            if self._stats["skipped_too_long"] in (1, 100, 10000):
                print0(f"[loader] skipped {self._stats['skipped_too_long']} document(s) longer than seq_len="
                       f"{self.cfg.seq_len} (e.g. {task} of {len(doc)} tokens); raise seq_len or lower budgets")

    def _next_row(self) -> PackedRow:
        packer = self._packer
        while True:
            if self._pending is None:
                self._pending = self._next_doc()
            doc, _ = self._pending
            if packer.fits(doc):
                packer.add(doc)
                self._stats["docs"] += 1
                self._stats["tokens"] += len(doc)
                self._pending = None
            else:
                return packer.finish()

    # ---- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable position of the loader (between batches)."""
        state = self._pending[1] if self._pending is not None else self._snapshot()
        return {
            "version": STATE_VERSION,
            "seed": self.cfg.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_samples_total": self.num_samples_total,
            "tasks": list(self.tasks),
            "batches": self._batches,
            **copy.deepcopy(state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by ``state_dict`` (same shards, seed, rank and world size)."""
        expect = {"version": STATE_VERSION, "seed": self.cfg.seed, "rank": self.rank,
                  "world_size": self.world_size, "num_samples_total": self.num_samples_total,
                  "tasks": list(self.tasks)}
        for key, val in expect.items():
            if state.get(key) != val:
                raise ValueError(f"loader state does not match this loader: {key}={state.get(key)!r}, "
                                 f"expected {val!r}")
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._cursors = {t: int(state["cursors"][t]) for t in self.tasks}
        self._stats = dict(state["stats"])
        self._batches = int(state["batches"])
        self._pending = None
        self._packer = RowPacker(self.cfg.seq_len, self.vocab.pad_id, self.cfg.loss)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: documents packed, batches, tokens (non-pad), documents skipped as too long."""
        return {**self._stats, "batches": self._batches}
