"""Window-aware evaluation of a target on perturbed inputs.

Through sliding windows the target is a sum of window terms, ``T(x) = Σ_p s_p(x)`` with
``s_p(x) = Σ (w_p ⊙ crop_p(G / W)) ⊙ f(crop_p x)`` (DESIGN.md §2; the mask in ``G`` held fixed
from the clean image). A perturbation that changes the input only inside some windows leaves
the other terms as they are, so

    T(x') = T(x) − Σ_{p changed} s_p(x) + Σ_{p changed} s_p(x')

is exact and needs one forward per (perturbation, window whose input it touches).
:class:`WindowedTarget` caches the clean terms once and is a forward function for Captum's
perturbation methods (Occlusion, FeatureAblation, ShapleyValueSampling, Lime, KernelShap …):
called on a batch of perturbed copies (row ``r`` a copy of image ``r % B``, Captum's order),
it finds the changed windows of each row by comparing with the clean input and re-runs only
those, in batches of ``sw_batch_size`` — or, when one window covers the image, all the rows of
the call in one forward (``perturbations_per_eval`` copies, as Captum and MONAI batch them).

Example:
    >>> import torch
    >>> from esegeta_monai import Explainer
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Conv3d(1, 2, 3, padding=1)
    >>> x = torch.rand(1, 1, 24, 24, 24)
    >>> attr = Explainer(net, "occlusion", "argmax:1", roi_size=(12, 12, 12), overlap=0.5,
    ...                  sliding_window_shapes=(6, 6, 6))(x)
    >>> attr.shape
    torch.Size([1, 1, 24, 24, 24])
"""

from __future__ import annotations

import torch

from esegeta_monai.errors import MethodError

__all__ = ["WindowedTarget", "SteppedTarget"]


class WindowedTarget:
    """``T`` of perturbed copies of ``inputs``, re-running only the windows they change.

    Args:
        window_pass: the engine's :class:`~esegeta_monai.core.window_pass.WindowPass` of this call
            (network, windows, the target's fixed output weights).
        inputs: the clean batch ``(B, C, *spatial)``.

    Attributes:
        clean: ``T(inputs)``, shape ``(B,)``.
        forwards: window forwards run so far (the clean pass included).
    """

    def __init__(self, window_pass, inputs: torch.Tensor):
        if window_pass.local:
            raise MethodError("perturbation methods explain the global target; local=True (per-window targets) is not supported")
        self.window_pass = window_pass
        self.plan = window_pass.plan
        self.inputs = inputs
        self.padded = self.plan.pad_input(inputs)
        self.importance = self.plan.window_weights(inputs.device)
        self.pairs = window_pass.active_windows(inputs.shape[0])  # (image, window) pairs with a non-zero share
        self.terms = torch.zeros((inputs.shape[0], len(self.plan.slices)), dtype=torch.float64, device=inputs.device)
        self._index = {_start(w): i for i, w in enumerate(self.plan.slices)}
        self._windows_of: dict[int, list] = {}  # image → its (term index, window) pairs reaching the target
        for b, window in self.pairs:
            self._windows_of.setdefault(b, []).append((self._index[_start(window)], window))
        self.forwards = 0
        self._run([(b, w, self.padded[b]) for b, w in self.pairs], store=True)
        self.clean = self.terms.sum(1)

    def __call__(self, perturbed: torch.Tensor) -> torch.Tensor:
        """``T`` of each row of ``perturbed`` ``(N·B, C, *spatial)`` (row ``r`` perturbs image ``r % B``)."""
        batch = self.inputs.shape[0]
        if perturbed.shape[0] % batch:
            raise MethodError(f"perturbed inputs {tuple(perturbed.shape)} are not copies of the inputs {tuple(self.inputs.shape)}")
        return self._values(perturbed, [row % batch for row in range(perturbed.shape[0])])

    def of_image(self, image: int):
        """A forward function for perturbed copies ``(N, C, *spatial)`` of image ``image`` alone
        (Captum's Lime and KernelShap explain one image per call).

        Example:
            >>> import torch
            >>> from esegeta_monai import Explainer
            >>> explainer = Explainer(torch.nn.Conv2d(1, 2, 1), "saliency", "class:1")
            >>> _ = explainer(torch.ones(2, 1, 4, 4))
            >>> target = WindowedTarget(explainer.last_pass, torch.ones(2, 1, 4, 4))
            >>> torch.equal(target.of_image(1)(torch.ones(3, 1, 4, 4)), target.clean[1].float().repeat(3))
            True
        """
        return lambda perturbed: self._values(perturbed, [int(image)] * perturbed.shape[0])

    def _values(self, perturbed: torch.Tensor, images: list[int]) -> torch.Tensor:
        """``T`` of each row of ``perturbed``, row ``r`` a perturbed copy of image ``images[r]``."""
        if tuple(perturbed.shape[1:]) != tuple(self.inputs.shape[1:]):
            raise MethodError(f"perturbed inputs {tuple(perturbed.shape)} are not copies of the inputs {tuple(self.inputs.shape)}")
        perturbed = perturbed.to(self.inputs.dtype)
        values = self.clean[images].clone()
        jobs = []
        for row, b in enumerate(images):
            padded = self.plan.pad_input(perturbed[row : row + 1])[0]
            changed = (padded != self.padded[b]).any(0)
            if not bool(changed.any()):
                continue
            for index, window in self._windows_of.get(b, []):
                if bool(changed[window].any()):
                    values[row] -= self.terms[b, index]
                    jobs.append((row, window, padded))
        for (row, _, _), value in zip(jobs, self._run([(images[r], w, p) for r, w, p in jobs])):
            values[row] += value
        return values.to(torch.float32)

    def _run(self, jobs, store: bool = False) -> list[float]:
        """Window terms ``s_p`` of ``(image, window, padded input)`` jobs, in batches."""
        results: list[float] = []
        # one window per image: the rows Captum passes (perturbations_per_eval copies) in one forward
        size = max(len(jobs), 1) if self.plan.single else self.window_pass.sw_batch_size
        with torch.no_grad():
            for start in range(0, len(jobs), size):
                self.window_pass.check_deadline(start // size, -(-len(jobs) // size))  # --timeout, between window batches
                group = jobs[start : start + size]
                x_win = torch.stack([padded[(slice(None), *window)] for _, window, padded in group])
                weight = self.window_pass.window_weights_of(x_win, [(b, w) for b, w, _ in group], self.importance)
                terms = self.window_pass.module(x_win, weight).double()
                self.forwards += len(group)
                if store:
                    for (b, window, _), term in zip(group, terms):
                        self.terms[b, self._index[_start(window)]] = term
                results.extend(terms.tolist())
        return results


class SteppedTarget:
    """``T`` along consecutive images ``x_1, x_2, …`` of image ``image`` of a
    :class:`WindowedTarget` (each a change of the one before, the first of the clean image): only
    the windows a step changes are re-run, against the window terms of the previous step (``T``
    is their sum, so each value is exact) — what cumulative perturbation curves (region
    perturbation, IROF) need: a step that fills one more region re-runs only the windows it touches.

    Example:
        >>> import torch
        >>> from esegeta_monai import Explainer
        >>> explainer = Explainer(torch.nn.Conv2d(1, 2, 1), "saliency", "class:1", roi_size=(4, 4), overlap=0)
        >>> x = torch.ones(1, 1, 8, 8)
        >>> _ = explainer(x)
        >>> steps = SteppedTarget(WindowedTarget(explainer.last_pass, x))
        >>> first, second = x.clone(), x.clone()
        >>> first[..., :4, :4] = 0; second[..., :4, :] = 0  # one window changed, then another
        >>> before = steps.target.forwards
        >>> _ = steps(torch.cat([first, second])); steps.target.forwards - before
        2
    """

    def __init__(self, target: WindowedTarget, image: int = 0):
        self.target, self.plan, self.image = target, target.plan, int(image)
        self.windows = target._windows_of.get(int(image), [])  # (term index, window) pairs reaching the target
        self.terms, self.padded = target.terms[int(image)].clone(), target.padded[int(image)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        jobs, rows, previous = [], [], self.padded
        for row in range(images.shape[0]):
            padded = self.plan.pad_input(images[row : row + 1])[0]
            changed = (padded != previous).any(0)
            for index, window in self.windows:
                if bool(changed[window].any()):
                    jobs.append((self.image, window, padded))
                    rows.append((row, index))
            previous = padded
        terms = iter(self.target._run(jobs))
        values, pending = [], iter(rows)
        job = next(pending, None)
        for row in range(images.shape[0]):
            while job is not None and job[0] == row:
                self.terms[job[1]] = next(terms)
                job = next(pending, None)
            values.append(float(self.terms.sum()))
        self.padded = previous
        return torch.tensor(values, dtype=torch.float64)

    def once(self, image: torch.Tensor) -> float:
        """``T`` of one image against the clean terms, leaving the steps where they are."""
        return float(SteppedTarget(self.target, self.image)(image)[0])


def _start(window) -> tuple[int, ...]:
    return tuple(int(s.start) for s in window)
