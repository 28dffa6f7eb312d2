"""Which learning rates of a batch size can still be the fastest, and when to stop the others (App. A.3).

A sweep keeps, for each goal and batch size, only the fastest run of its learning-rate grid
(:func:`gns_utils.critical_batch.best_runs`). The members of a grid are trained together in
lockstep (:func:`run_group`), and a member stops as soon as it can no longer be the fastest
for any goal it has not reached yet:

* **exact rule** (always): every goal it has not reached was already reached (smoothed, A.3)
  by another member at a step no later than its current step — it would be slower for each.
  It never stops a run that would have been the fastest for some goal.
* **outpaced rule** (``outpaced``, the sweeps' default 1.5): a *smaller* rate reached a goal
  this member has not reached in at most ``1/outpaced`` of this member's current steps. As goals
  get harder the fastest rate moves down (the noise floor of a constant rate rises with it, 2.6),
  so a larger rate only loses ground to a smaller one from goal to goal: once it is beaten to a
  goal by a clear factor it cannot win a later goal. The factor covers the noise of the goals'
  steps; goals the smaller rate reached before ``OUTPACED_MIN_STEP`` do not count (Adam's larger
  rates can start slower and then catch up). Only a smaller rate that has not diverged counts.
  The rule never stops a smaller rate, so a late flip towards smaller rates (the calibration
  task, SGD at hard goals) is kept.
* **margin rule** (``margin``, off by default): another member's smoothed curve reached this
  member's current level at a step at most ``1/margin`` of this member's current step, i.e.
  it trails by more than a factor ``margin`` in steps at its own level. This assumes a
  constant-learning-rate run does not gain such a factor back before its next goal, which
  fails when the rates' ranking flips late (a smaller rate, slow at first, reaching the hard
  goals first). It applies only from step ``MARGIN_MIN_STEP`` and after some member reached
  the first goal; a rival that diverges stops counting, and members it had paused resume.

Only the parts of the rivals' curves up to the member's current step are used, so the
decisions are the same whether rivals were trained alongside, earlier (a widened grid, a
resumed sweep) or replayed from stored curves (:func:`replay`). ``exhaustive`` switches every
rule off: every member then runs until it has reached every goal, diverged, spent its budget
or passed ``EXHAUSTIVE_FACTOR`` × the fewest steps any member needed for the last goal (past
which it cannot be the fastest for any goal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from gns_utils.critical_batch import DEFAULT_SMOOTHING, ema, steps_to_target

#: The margin rule decides nothing before this step (early logged points are single noisy batches).
MARGIN_MIN_STEP = 20
#: The outpaced rule judges only by goals the smaller rate reached at or after this step (the
#: first steps are noisy, and adaptive optimizers' larger rates can start slowly and catch up).
OUTPACED_MIN_STEP = 50
#: With ``exhaustive``: a member stops after this multiple of the fewest steps any member needed for the last goal.
EXHAUSTIVE_FACTOR = 2.0


@dataclass
class Curve:
    """A member's goal metric at its logged steps, and how its run ended (None while it runs).

    ``direction``: ``below`` (losses, errors: a level is reached when the metric falls to it) or
    ``above`` (returns)."""

    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    status: str | None = None
    lr: float = math.nan
    direction: str = "below"

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def smoothed(self, until: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
        """(steps, EMA-smoothed values) of the points logged at or before ``until``; non-finite points cut."""
        n = len(self.steps)
        if getattr(self, "_cache_n", -1) != n:  # curves only grow: smooth once per new point
            s, v = np.asarray(self.steps, float), np.asarray(self.values, float)
            finite = np.isfinite(v)
            if not finite.all():
                s, v = s[: int(np.argmin(finite))], v[: int(np.argmin(finite))]
            self._cache, self._cache_n = (s, ema(v, DEFAULT_SMOOTHING)), n
        s, y = self._cache
        keep = int(np.searchsorted(s, until, side="right"))  # the EMA is causal: a prefix smooths the same
        return s[:keep], y[:keep]

    def steps_to(self, levels: Sequence[float] | float, until: float = math.inf) -> np.ndarray:
        """Smoothed steps at which the curve (up to ``until``) reached each level; inf where it did not."""
        s, y = self.smoothed(until)
        levels = np.atleast_1d(np.asarray(levels, float))
        if s.size == 0:
            return np.full(levels.shape, math.inf)
        # already smoothed: no second smoothing
        out = steps_to_target(s, y, levels, smoothing=0.0, direction=self.direction)
        return np.where(np.isfinite(out), out, math.inf)


def can_still_win(own: Curve, rivals: Iterable[Curve], goals: Sequence[float],
                  margin: float | None = None, outpaced: float | None = None) -> bool:
    """Whether ``own``, at its last logged step, can still be the fastest for a goal it has not reached.

    Args:
        own: the member's curve so far.
        rivals: the other members of its grid (running, finished or stored).
        goals: the sweep's goals, easiest first.
        margin: the margin rule's factor (see the module docstring); None = off.
        outpaced: the outpaced rule's factor (see the module docstring; needs the curves' ``lr``);
            None = off.
    """
    if not own.steps:
        return True
    t = float(own.steps[-1])
    left = [g for g, s in zip(goals, own.steps_to(goals)) if not math.isfinite(s)]
    if not left:  # past its last goal: the run trains on a little (RUN_OUT) and ends itself
        return True
    rivals = list(rivals)
    reached = np.array([r.steps_to(left, until=t) for r in rivals]).reshape(len(rivals), len(left))
    if len(rivals) and (reached <= t).any(axis=0).all():  # exact: every goal left is already lost
        return False
    if outpaced is not None and math.isfinite(own.lr):  # then t ≥ OUTPACED_MIN_STEP (outpaced ≥ 1)
        smaller = [k for k, r in enumerate(rivals) if r.lr < own.lr and not r.diverged]
        beaten = reached[smaller]
        if ((beaten >= OUTPACED_MIN_STEP) & (beaten * outpaced <= t)).any():
            return False
    if margin is None or t < MARGIN_MIN_STEP:
        return True
    first = min([r.steps_to(goals[0], until=t)[0] for r in rivals] + [own.steps_to(goals[0])[0]])
    if not first <= t:  # nothing is decided before some member reached the first goal
        return True
    _, y = own.smoothed()
    if y.size == 0:
        return True
    level, until = float(y[-1]), t / margin
    return not any(r.steps_to(level, until=until)[0] <= until for r in rivals if not r.diverged)


class Member(Protocol):
    """One learning rate of a grid, as :func:`run_group` drives it."""

    curve: Curve

    def advance(self) -> None:
        """Train (or replay) up to the next logged step, append it to ``curve``; set ``curve.status`` when done."""

    def stop(self, status: str) -> None:
        """End the member early with ``status`` (``pruned``)."""


def run_group(members: Sequence[Member], goals: Sequence[float], rivals: Sequence[Curve] = (),
              margin: float | None = None, exhaustive: bool = False, outpaced: float | None = None,
              advance: Callable[[list[Member]], None] | None = None) -> None:
    """Train the members of one batch size's grid in lockstep until each ends or can no longer win.

    The members with the fewest steps advance next (together, through ``advance``: by default one
    after the other; an executor may run them in parallel), so members that run side by side stay
    at the same step. ``rivals`` are finished runs of the same grid (their curves count as members'
    would). Members stopped by the rules end with status ``pruned`` once no member is left running.
    """
    paused: set[int] = set()
    while True:
        running = [k for k, m in enumerate(members) if m.curve.status is None and k not in paused]
        if not running:
            break
        step = min(_last_step(members[k].curve) for k in running)
        go = []
        for k in (k for k in running if _last_step(members[k].curve) == step):
            own = members[k].curve
            others = [m.curve for j, m in enumerate(members) if j != k] + list(rivals)
            if exhaustive:
                bound = EXHAUSTIVE_FACTOR * min(c.steps_to(goals[-1])[0] for c in others + [own])
                stop = bool(own.steps) and own.steps[-1] >= bound
            else:
                stop = not can_still_win(own, others, goals, margin, outpaced)
            if stop:  # the exact rule is final; the predictive rules are undone only by a rival's divergence
                paused.add(k)
            else:
                go.append(members[k])
        if not go:
            continue
        (advance or _advance_each)(go)
        if any(m.curve.diverged for m in go):
            paused.clear()  # a rival gone: every paused member is judged again
    for k in sorted(paused):
        if members[k].curve.status is None:
            members[k].stop("pruned")


def _last_step(curve: Curve) -> float:
    return curve.steps[-1] if curve.steps else -1.0


def _advance_each(members: list[Member]) -> None:
    for m in members:
        m.advance()


@dataclass
class ReplayMember:
    """A stored run replayed point by point (for checking the rules on finished sweeps)."""

    steps: np.ndarray
    values: np.ndarray
    final_status: str
    curve: Curve = field(default_factory=Curve)

    def advance(self) -> None:
        n = len(self.curve.steps)
        self.curve.steps.append(float(self.steps[n]))
        self.curve.values.append(float(self.values[n]))
        if n + 1 == len(self.steps):
            self.curve.status = self.final_status

    def stop(self, status: str) -> None:
        self.curve.status = status


def replay(curves: Sequence[tuple[np.ndarray, np.ndarray, str]], goals: Sequence[float],
           margin: float | None = None, exhaustive: bool = False, direction: str = "below",
           outpaced: float | None = None, lrs: Sequence[float] | None = None) -> list[float]:
    """The step at which each stored run of one grid would have stopped under the rules.

    Args:
        curves: per run (logged steps, goal metric, final status), e.g. from its ``metrics.csv``.
        goals: the sweep's goals.
        direction: which way the goal metric improves (:attr:`Curve.direction`).
        lrs: the runs' learning rates (the outpaced rule needs them).

    Returns:
        Per run, the last step it would have trained (its stored last step if never stopped).
    """
    lrs = [math.nan] * len(curves) if lrs is None else list(lrs)
    members = [ReplayMember(np.asarray(s, float), np.asarray(v, float), status, Curve(direction=direction, lr=lr))
               for (s, v, status), lr in zip(curves, lrs)]
    run_group(members, goals, margin=margin, exhaustive=exhaustive, outpaced=outpaced)
    return [m.curve.steps[-1] if m.curve.steps else 0.0 for m in members]
