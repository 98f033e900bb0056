"""Keeping the ranks of a distributed lm-eval run in step, also when one of them fails.

Every collective of an eval (lm-eval's gathers and barrier, the agreement before each model call, one
closing round) starts with a round in which each rank says whether it has work and whether it has failed.
A rank that fails says so in its next round instead; its peers raise `PeerFailed` there, so all ranks leave
the eval at the same collective and can agree on the outcome outside it.

One failure cannot be rescued: inside a model call whose own collectives the peers are in (generation syncs
every token, ZeRO-3 gathers weights in every forward). That rank raises `OutOfStep`, which nobody catches:
its process exits and the launcher (deepspeed, torchrun) stops the others, instead of their waiting out the
process-group timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist


class PeerFailed(RuntimeError):
    """Raised on the ranks that were fine when another rank reported a failure."""


class OutOfStep(RuntimeError):
    """A rank failed where its peers cannot be rejoined; the job has to stop."""


def _round(busy: bool = False, failed: bool = False) -> bool:
    """One agreement round: True if any rank has work; raises PeerFailed if another rank failed."""
    on_gpu = dist.get_backend() == "nccl"
    flags = torch.tensor(
        [int(busy), int(failed)],
        device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu",
    )
    dist.all_reduce(flags)
    if flags[1] and not failed:
        raise PeerFailed(f"{int(flags[1])} other rank(s) failed during the eval; their logs say why")
    return bool(flags[0])


@contextmanager
def in_step() -> Iterator[None]:
    """Wrap a distributed eval: a failure in it, even after this rank's last collective, reaches every rank."""
    try:
        yield
    except (PeerFailed, OutOfStep):
        raise
    except Exception:
        _round(failed=True)
        raise
    _round()


def hflm_classes():
    """(HFLM, DistributedHFLM); lm-eval is imported only when an eval runs."""
    from lm_eval.models.huggingface import HFLM

    class DistributedHFLM(HFLM):
        """HFLM whose ranks come from torch.distributed, and whose ranks run equal numbers of forward passes.

        Under ZeRO-3 every forward all-gathers parameters, so a rank that runs fewer forwards hangs the
        others. Before each real model call the ranks agree that someone still has work; a rank without
        work runs a dummy call in that round. Generation uses synced_gpus, so calls of different
        lengths also stay in step."""

        def __init__(self, model, tokenizer, batch_size: int):
            # logits_cache=False: no merging of requests that share a context, so ranks do similar work.
            super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, logits_cache=False)
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
            first = next(model.parameters(), None)
            self._forward_gathers = first is not None and hasattr(first, "ds_id")  # ZeRO-3 partitioned

        def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
            _round()
            parts = [torch.zeros_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor)
            return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

        def gather_object(self, obj, dst=0):
            _round()
            return super().gather_object(obj, dst)

        def barrier(self) -> None:
            _round()

        def _in_model(self, call: Callable[[], Any], what: str, peers_inside: bool) -> Any:
            try:
                return call()
            except Exception as e:
                if not peers_inside:
                    raise
                raise OutOfStep(
                    f"eval failed on rank {self._rank} inside {what}, whose collectives the other ranks are "
                    f"still in; they cannot be rejoined, so the run stops (in training: resume from the last "
                    f"checkpoint; if memory ran out, lower eval.batch_size, or --batch-size standalone): "
                    f"{type(e).__name__}: {e}"
                ) from e

        def _forward(self, call: Callable[[], Any]) -> Any:
            return self._in_model(call, "a forward (ZeRO-3 gathers weights in it)", self._forward_gathers)

        def _generate(self, call: Callable[[], Any]) -> Any:
            return self._in_model(call, "generation (synced_gpus syncs every token)", True)

        def _drain(self, run: Callable[[], list], dummy: Callable[[], Any]) -> list:
            out = run()
            while _round(busy=False):  # others still have calls: join each with a dummy one
                dummy()
            return out

        def _dummy_ids(self) -> torch.Tensor:
            return torch.tensor([[self.tokenizer.bos_token_id or 0]], device=self.device)

        def _dummy_forward(self) -> None:
            with torch.no_grad():
                self._forward(lambda: self.model(self._dummy_ids()))

        def _dummy_generate(self) -> None:
            ids = self._dummy_ids()
            self._generate(
                lambda: self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=1,
                    do_sample=False,
                    synced_gpus=True,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            )

        def _model_call(self, inps, attn_mask=None, labels=None):
            _round(busy=True)
            parent = super()._model_call
            return self._forward(lambda: parent(inps, attn_mask, labels))

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            _round(busy=True)
            parent = super()._model_generate
            return self._generate(
                lambda: parent(context, max_length, stop, synced_gpus=True, **generation_kwargs)
            )

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            run = super().loglikelihood
            return self._drain(lambda: run(requests, disable_tqdm), self._dummy_forward)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            run = super().loglikelihood_rolling
            return self._drain(lambda: run(requests, disable_tqdm), self._dummy_forward)

        def generate_until(self, requests, disable_tqdm: bool = False):
            run = super().generate_until
            return self._drain(lambda: run(requests, disable_tqdm), self._dummy_generate)

    return HFLM, DistributedHFLM
