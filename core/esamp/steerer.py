"""One ESamp decode step over tensors, shared by every backend (transformers loop, generate()
interop, vLLM): filter -> predict h_hat -> fuse -> (the backend samples) -> train.

Rows are laid out group-major: R = G * m rows, group g owning rows g*m .. g*m+m-1 (a prompt's
n samples with per-prompt scope; all rows with shared scope). A backend whose batch does not
have that layout (vLLM reorders and drops requests every step) passes ``slots``: the layout
row of each batch row; missing layout rows then neither steer nor train.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..config import EsampConfig, RunConfig
from .clock import Stopwatch
from .distiller import DistillerBank
from .filters import apply_filters, run_filters, top_k_only
from .fusion import Candidates, LMHead, fuse, novelty


@dataclass
class Proposal:
    """What one step proposes: the logits to sample from, and what ``learn`` needs afterwards."""

    cand: Candidates  # reference candidates (filtered l_ref)
    fused: torch.Tensor  # (R, K) candidate logits after fusion (``cand.logits`` when unguided)
    to_sample: torch.Tensor  # (R, V) logits to sample from
    novelty: torch.Tensor | None  # (R,) ||h - h_hat||
    rel_novelty: torch.Tensor | None  # (R,)
    _pred: torch.Tensor | None = None  # (G, m, H) the prediction (with the distiller's graph unless overlapping)
    _h: torch.Tensor | None = None  # (G, m, H)
    _slots: torch.Tensor | None = None  # (R,) layout row of each batch row, or None: the batch is the layout
    _s: torch.Tensor | None = None  # (G, m, H)


class Steerer:
    """ESamp for a batch of R rows in G groups; with ``beta=0`` it only observes (shadow mode).

    Per step: ``propose`` predicts with the weights of the step before and fuses; ``learn`` takes
    the step's update. With ``overlap`` the update runs off the critical path (a CUDA side stream,
    or a worker thread on CPU) while the backend samples and runs the next forward pass; the next
    ``propose`` waits for it, so every prediction sees exactly the serial order's weights.
    """

    def __init__(self, groups: int, rows: int, head: LMHead, cfg: EsampConfig, beta: float,
                 temperature: float, seed: int = 0, watch: Stopwatch | None = None):
        if rows % groups:
            raise ValueError(f"rows ({rows}) must be a multiple of groups ({groups})")
        self.groups, self.rows, self.head, self.beta, self.temperature = groups, rows, head, beta, temperature
        device = head.weight.device
        self.bank = DistillerBank(groups, head.weight.shape[1], cfg, device=device, seed=seed, norm=head.norm)
        # The paper's ablation: steer by Gaussian noise as long as e instead of e itself.
        self.noise = torch.Generator(device=device).manual_seed(seed) if cfg.noise else None
        overlap = cfg.overlap if cfg.overlap is not None else device.type == "cuda"
        self.background = Background(device) if overlap else None
        self._learning: _Learning | None = None  # the update in flight
        self.losses: list[torch.Tensor] = []  # (G,) per step, on the device
        self.rel_novelty: list[torch.Tensor] = []  # (G,) per step: mean ||e|| / ||h|| over the group's trained rows
        self.live: list[torch.Tensor] = []  # (G,) bool per step: the group had rows to train on
        self.watch = watch or Stopwatch()

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.groups, self.rows // self.groups, -1)  # (R, H) -> (G, m, H)

    def _to_layout(self, x: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        if slots is None:
            return x
        return x.new_zeros((self.rows,) + x.shape[1:]).index_copy_(0, slots, x)

    def propose(self, cand: Candidates, s: torch.Tensor, h: torch.Tensor, guided: bool | torch.Tensor,
                slots: torch.Tensor | None = None) -> Proposal:
        """cand: the reference candidates (logits after temperature and filters); s, h: (R, H) float32.

        guided=False samples unguided (the first token, or beta=0) but still predicts, so
        novelty is logged and the distiller trains; a (R,) bool tensor decides per row.
        """
        self.settle()  # the previous step's update is in the weights
        with self.watch("predict"):
            s_grouped = self._grouped(self._to_layout(s, slots))
            if self.background is None:
                pred = self.bank.forward(s_grouped)  # (G, m, H), with the graph for the update
            else:
                with torch.no_grad():  # the update recomputes it where it runs
                    pred = self.bank.forward(s_grouped)
            h_hat = pred.detach().reshape(-1, h.shape[-1])
            if slots is not None:
                h_hat = h_hat[slots]  # (R, H)
            nov, rel = novelty(h, h_hat)
        if self.beta > 0 and (guided if isinstance(guided, bool) else True):
            with self.watch("fuse"):
                steer_by = h_hat if self.noise is None else h - noise_like(h - h_hat, self.noise)
                fused = fuse(cand, h, steer_by, self.head, self.beta, self.temperature)
                if isinstance(guided, torch.Tensor):
                    fused = torch.where(guided[:, None], fused, cand.logits)
        else:
            fused = cand.logits
        with self.watch("filter"):
            to_sample = cand.dense(fused)
        return Proposal(cand, fused, to_sample, nov, rel, pred, self._grouped(self._to_layout(h, slots)), slots,
                        s_grouped)

    def learn(self, proposal: Proposal, active: torch.Tensor) -> None:
        """Train every distiller on its active rows (R,) bool (in the background with ``overlap``)."""
        with self.watch("learn"):
            mask = self._grouped(self._to_layout(active, proposal._slots)[:, None])[..., 0]  # (G, m)
            rel = self._grouped(self._to_layout(proposal.rel_novelty, proposal._slots)[:, None])[..., 0]  # (G, m)
            pred, s, h = proposal._pred, proposal._s, proposal._h
            proposal._pred = proposal._s = proposal._h = None  # the update owns them now
            result = None
            if self.background is None:
                result = self.bank.update(pred, h, mask)
            else:
                self.background.run(lambda: self.bank.update(self.bank.forward(s), h, mask), keep=(s, h, mask))
            self._learning = _Learning(result, mask, torch.where(mask, rel, 0.0).sum(-1) / mask.sum(-1).clamp(min=1))

    def settle(self) -> None:
        """Finish the update in flight: record its loss and reset the distillers whose loss or
        gradient was not finite (one host sync)."""
        learning, self._learning = self._learning, None
        if learning is None:
            return
        loss, bad = learning.result if self.background is None else self.background.wait()
        self.losses.append(loss)
        self.rel_novelty.append(learning.rel_novelty)
        self.live.append(learning.mask.any(-1))
        self.bank.handle_bad(bad)


@dataclass
class _Learning:
    result: tuple[torch.Tensor, torch.Tensor] | None  # (loss, bad) of a serial update; None while in the background
    mask: torch.Tensor  # (G, m) the rows trained on
    rel_novelty: torch.Tensor  # (G,) their mean relative novelty


class Background:
    """Work off the critical path: on a CUDA side stream, or in one worker thread on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
        else:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esamp-learn")
        self._pending = None

    def run(self, work, keep=()) -> None:
        """Start ``work()``; ``keep`` holds tensors it reads alive until ``wait`` (the CUDA caching
        allocator must not hand their memory to the main stream before the side stream is done)."""
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream())  # its inputs are computed
            with torch.cuda.stream(self.stream):
                result = work()
            self._pending = (result, self.stream.record_event(), keep)
        else:
            self._pending = (self.pool.submit(work), None, keep)

    def wait(self):
        """The result of the last ``run``, once it is done; the main stream waits for it too."""
        result, event, _keep = self._pending
        self._pending = None
        if not self.cuda:
            return result.result()
        torch.cuda.current_stream().wait_event(event)
        event.synchronize()
        return result


def noise_like(e: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with each row (R, H) as long as that row of ``e``: same size, random direction."""
    z = torch.randn(e.shape, generator=generator, device=e.device)
    return z * (torch.linalg.vector_norm(e, dim=-1, keepdim=True) / torch.linalg.vector_norm(z, dim=-1, keepdim=True))


def unguided(cand: Candidates) -> Proposal:
    """A proposal with no distiller at all (plain sampling with the shadow off)."""
    return Proposal(cand, cand.logits, cand.dense(cand.logits), None, None)


class Pipeline:
    """One run's ESamp over tensors, the same for every backend: ``propose`` filters the model's
    logits and (with a distiller) predicts and fuses; ``learn`` trains after sampling.

    Plain sampling with the shadow off has no distiller: ``propose`` only filters.
    """

    def __init__(self, config: RunConfig, head: LMHead, prompts: int):
        sc = config.sampling
        self.first, self.main = run_filters(config)
        self.head = head
        self.full_trace = config.trace == "full"  # record logp_base
        self.watch = Stopwatch()  # where the time goes; the backends time their own parts with it too
        groups = prompts if config.esamp.scope == "prompt" else 1
        self.steerer = Steerer(groups, prompts * sc.n, head, config.esamp, config.beta, sc.temperature,
                               seed=sc.seed, watch=self.watch) if config.uses_distiller else None

    def propose(self, raw: torch.Tensor, s: torch.Tensor, h: torch.Tensor, first: bool | torch.Tensor,
                slots: torch.Tensor | None = None) -> Proposal:
        """raw: (R, V) the model's logits; s, h: (R, H) float32; first: whether (per row, as a (R,)
        bool tensor) this is a sample's first token, drawn with the first-token filters and unguided."""
        with self.watch("filter"):
            cand = self._candidates(raw, first)  # temperature -> top-k -> top-p -> min-p
            cand = cand.exact(self.head, h, self._temperature(first))  # float32 values (bfloat16 models)
            if self.steerer is None:
                return unguided(cand)
        guided = not first if isinstance(first, bool) else ~first
        return self.steerer.propose(cand, s, h, guided=guided, slots=slots)

    def _temperature(self, first: bool | torch.Tensor) -> float | torch.Tensor:
        if isinstance(first, bool) or self.first is self.main:
            return self.first.temperature if first is True else self.main.temperature
        return torch.where(first, self.first.temperature, self.main.temperature)  # (R,)

    def _candidates(self, raw: torch.Tensor, first: bool | torch.Tensor) -> Candidates:
        if isinstance(first, bool) or self.first is self.main:
            f = self.first if first is True else self.main
            fast = top_k_only(f.filters)
            cand = Candidates.top_k(raw, *fast) if fast else None  # top-k alone: no pass over all the logits
            return cand or Candidates.from_filtered(apply_filters(f.filters, raw), f.active, f.bound)
        # FIRE with rows at different positions: first tokens filtered their own way.
        filtered = torch.where(first[:, None], apply_filters(self.first.filters, raw),
                               apply_filters(self.main.filters, raw))
        bound = max(self.first.bound, self.main.bound) if self.first.bound and self.main.bound else None
        return Candidates.from_filtered(filtered, self.first.active or self.main.active, bound)

    def learn(self, proposal: Proposal, active: torch.Tensor) -> None:
        """Train on the step's active rows (R,) bool, after sampling (nothing without a distiller)."""
        if self.steerer is not None:
            self.steerer.learn(proposal, active)

    def finish(self) -> None:
        """Settle the last update: call once the run's last step has learned."""
        if self.steerer is not None:
            self.steerer.settle()

    @property
    def seconds(self) -> float:
        """Wall time in ESamp's own work: the distiller and the fusion."""
        return self.watch.distiller_seconds

    def prompt_curves(self, prompts: int) -> tuple[list[list[float]], list[list[float]]]:
        """Each prompt's distiller loss and mean relative novelty at the steps its distiller had rows
        (empty lists without a distiller)."""
        if self.steerer is None or not self.steerer.losses:
            return [[] for _ in range(prompts)], [[] for _ in range(prompts)]
        live = torch.stack(self.steerer.live).cpu()  # (steps, G)
        curves = []
        for values in (self.steerer.losses, self.steerer.rel_novelty):
            per_step = torch.stack(values).cpu()  # (steps, G)
            curves.append([per_step[live[:, g], g].tolist() for g in map(self.group_of, range(prompts))])
        return curves[0], curves[1]

    def prompt_resets(self, prompts: int) -> list[int]:
        """NaN/inf resets of each prompt's distiller."""
        if self.steerer is None:
            return [0] * prompts
        return [int(self.steerer.bank.resets[self.group_of(p)]) for p in range(prompts)]

    def group_of(self, prompt: int) -> int:
        return prompt if self.steerer is not None and self.steerer.groups > 1 else 0
