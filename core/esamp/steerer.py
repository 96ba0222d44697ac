"""One ESamp decode step over tensors, shared by every backend (transformers loop, generate()
interop, vLLM): filter -> predict h_hat -> fuse -> (the backend samples) -> train.

Rows are laid out group-major: R = G * m rows, group g owning rows g*m .. g*m+m-1 (a prompt's
n samples with per-prompt scope; all rows with shared scope). A backend whose batch does not
have that layout (vLLM reorders and drops requests every step) passes ``slots``: the layout
row of each batch row; missing layout rows then neither steer nor train.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..config import EsampConfig, RunConfig
from .distiller import DistillerBank
from .filters import apply_filters, run_filters
from .fusion import Candidates, LMHead, fuse, novelty


@dataclass
class Proposal:
    """What one step proposes: the logits to sample from, and what ``learn`` needs afterwards."""

    cand: Candidates  # reference candidates (filtered l_ref)
    fused: torch.Tensor  # (R, K) candidate logits after fusion (``cand.logits`` when unguided)
    to_sample: torch.Tensor  # (R, V) logits to sample from
    novelty: torch.Tensor | None  # (R,) ||h - h_hat||
    rel_novelty: torch.Tensor | None  # (R,)
    _pred: torch.Tensor | None = None  # (G, m, H) with the distiller's graph
    _h: torch.Tensor | None = None  # (G, m, H)
    _slots: torch.Tensor | None = None  # (R,) layout row of each batch row, or None: the batch is the layout


class Steerer:
    """ESamp for a batch of R rows in G groups; with ``beta=0`` it only observes (shadow mode)."""

    def __init__(self, groups: int, rows: int, head: LMHead, cfg: EsampConfig, beta: float,
                 temperature: float, seed: int = 0):
        if rows % groups:
            raise ValueError(f"rows ({rows}) must be a multiple of groups ({groups})")
        self.groups, self.rows, self.head, self.beta, self.temperature = groups, rows, head, beta, temperature
        hidden = head.weight.shape[1]
        self.bank = DistillerBank(groups, hidden, cfg, device=head.weight.device, seed=seed, norm=head.norm)
        # The paper's ablation: steer by Gaussian noise as long as e instead of e itself.
        self.noise = torch.Generator(device=head.weight.device).manual_seed(seed) if cfg.noise else None
        self.losses: list[torch.Tensor] = []  # (G,) per step, on the device
        self.rel_novelty: list[torch.Tensor] = []  # (G,) per step: mean ||e|| / ||h|| over the group's trained rows
        self.live: list[torch.Tensor] = []  # (G,) bool per step: the group had rows to train on
        self.seconds = 0.0  # wall time in ESamp's own work (predict, fuse, train); on CUDA, launch time only

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.groups, self.rows // self.groups, -1)  # (R, H) -> (G, m, H)

    def _to_layout(self, x: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        if slots is None:
            return x
        return x.new_zeros((self.rows,) + x.shape[1:]).index_copy_(0, slots, x)

    def propose(self, filtered: torch.Tensor, filters_active: bool, s: torch.Tensor, h: torch.Tensor,
                guided: bool | torch.Tensor, slots: torch.Tensor | None = None, bound: int | None = None) -> Proposal:
        """filtered: (R, V) reference logits after temperature and filters; s, h: (R, H) float32.

        guided=False samples unguided (the first token, or beta=0) but still predicts, so
        novelty is logged and the distiller trains; a (R,) bool tensor decides per row. ``bound``:
        see ``Candidates.from_filtered``.
        """
        cand = Candidates.from_filtered(filtered, filters_active, bound)  # plain sampling needs this too
        t0 = time.perf_counter()
        pred = self.bank.forward(self._grouped(self._to_layout(s, slots)))  # (G, m, H), with grad for the update
        h_hat = pred.detach().reshape(-1, h.shape[-1])
        if slots is not None:
            h_hat = h_hat[slots]  # (R, H)
        nov, rel = novelty(h, h_hat)
        if self.beta > 0 and (guided if isinstance(guided, bool) else True):
            steer_by = h_hat if self.noise is None else h - noise_like(h - h_hat, self.noise)
            fused = fuse(cand, h, steer_by, self.head, self.beta, self.temperature)
            if isinstance(guided, torch.Tensor):
                fused = torch.where(guided[:, None], fused, cand.logits)
            to_sample = cand.scatter(filtered, fused)
        else:
            fused, to_sample = cand.logits, filtered
        self.seconds += time.perf_counter() - t0
        return Proposal(cand, fused, to_sample, nov, rel, pred, self._grouped(self._to_layout(h, slots)), slots)

    def learn(self, proposal: Proposal, active: torch.Tensor) -> torch.Tensor:
        """Train every distiller on its active rows (R,) bool; returns ``bad`` (G,) on the device."""
        t0 = time.perf_counter()
        mask = self._grouped(self._to_layout(active, proposal._slots)[:, None])[..., 0]  # (G, m)
        loss, bad = self.bank.update(proposal._pred, proposal._h, mask)
        rel = self._grouped(self._to_layout(proposal.rel_novelty, proposal._slots)[:, None])[..., 0]  # (G, m)
        self.losses.append(loss)
        self.rel_novelty.append(torch.where(mask, rel, 0.0).sum(-1) / mask.sum(-1).clamp(min=1))
        self.live.append(mask.any(-1))
        proposal._pred = proposal._h = None  # free the graph
        self.seconds += time.perf_counter() - t0
        return bad


def noise_like(e: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with each row (R, H) as long as that row of ``e``: same size, random direction."""
    z = torch.randn(e.shape, generator=generator, device=e.device)
    return z * (torch.linalg.vector_norm(e, dim=-1, keepdim=True) / torch.linalg.vector_norm(z, dim=-1, keepdim=True))


def unguided(filtered: torch.Tensor, filters_active: bool, bound: int | None = None) -> Proposal:
    """A proposal with no distiller at all (plain sampling with the shadow off)."""
    cand = Candidates.from_filtered(filtered, filters_active, bound)
    return Proposal(cand, cand.logits, filtered, None, None)


class Pipeline:
    """One run's ESamp over tensors, the same for every backend: ``propose`` filters the model's
    logits and (with a distiller) predicts and fuses; ``learn`` trains after sampling.

    Plain sampling with the shadow off has no distiller: ``propose`` only filters.
    """

    def __init__(self, config: RunConfig, head: LMHead, prompts: int):
        sc = config.sampling
        self.first, self.main = run_filters(config)
        groups = prompts if config.esamp.scope == "prompt" else 1
        self.steerer = Steerer(groups, prompts * sc.n, head, config.esamp, config.beta, sc.temperature,
                               seed=sc.seed) if config.uses_distiller else None

    def propose(self, raw: torch.Tensor, s: torch.Tensor, h: torch.Tensor, first: bool | torch.Tensor,
                slots: torch.Tensor | None = None) -> Proposal:
        """raw: (R, V) the model's logits; s, h: (R, H) float32; first: whether (per row, as a (R,)
        bool tensor) this is a sample's first token, drawn with the first-token filters and unguided."""
        filtered, active, bound = self._filter(raw, first)  # temperature -> top-k -> top-p -> min-p
        if self.steerer is None:
            return unguided(filtered, active, bound)
        guided = not first if isinstance(first, bool) else ~first
        return self.steerer.propose(filtered, active, s, h, guided=guided, slots=slots, bound=bound)

    def _filter(self, raw: torch.Tensor, first: bool | torch.Tensor) -> tuple[torch.Tensor, bool, int | None]:
        if isinstance(first, bool) or self.first is self.main:
            f = self.first if first is True else self.main
            return apply_filters(f.filters, raw), f.active, f.bound
        # FIRE with rows at different positions: first tokens filtered their own way.
        filtered = torch.where(first[:, None], apply_filters(self.first.filters, raw),
                               apply_filters(self.main.filters, raw))
        bound = max(self.first.bound, self.main.bound) if self.first.bound and self.main.bound else None
        return filtered, self.first.active or self.main.active, bound

    def learn(self, proposal: Proposal, active: torch.Tensor) -> torch.Tensor:
        """Train on the step's active rows (R,) bool; returns ``bad`` (G,) on the device (all False
        without a distiller). Call ``reset_bad`` with it once it is on the host."""
        if self.steerer is None:
            return torch.zeros(1, dtype=torch.bool, device=active.device)
        return self.steerer.learn(proposal, active)

    def reset_bad(self, bad: torch.Tensor) -> None:
        """Re-initialise the distillers whose loss or gradient was not finite."""
        if self.steerer is not None:
            self.steerer.bank.handle_bad(bad)

    @property
    def seconds(self) -> float:
        return self.steerer.seconds if self.steerer else 0.0

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
