"""Stage 2 of UPDP: search the supernet for the best subnet with exactly ``k`` pruned blocks (genetic algorithm).

A candidate is a mask with ``k`` pruned blocks out of ``n``; its fitness is the supernet's validation
accuracy in that configuration (after BatchNorm recalibration). Each generation keeps the ``elite`` fittest,
then fills the population with children:

* crossover: the child prunes ``k`` blocks drawn from the union of both parents' pruned blocks;
* mutation:  with probability ``p_mut``, swap one pruned block for one kept block.

Every child still prunes exactly ``k`` blocks, so the search never leaves the feasible set of C(n, k) masks.

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from tqdm import tqdm

from minillm.prune.models import Mask


@dataclass(frozen=True)
class SearchConfig:
    population: int = 8
    generations: int = 5
    elite: int = 3
    p_mut: float = 0.3
    seed: int = 0

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"generations": 1, "population": 4, "elite": 2}

    def __post_init__(self):
        if self.population < 2 or self.generations < 1:
            raise ValueError(f"SearchConfig needs population >= 2 and generations >= 1, got population="
                             f"{self.population}, generations={self.generations}.")
        if not 1 <= self.elite <= self.population:
            raise ValueError(f"elite must be in [1, population={self.population}], got {self.elite}; keep "
                             "fewer parents than the population.")
        if not 0.0 <= self.p_mut <= 1.0:
            raise ValueError(f"p_mut is a probability in [0, 1], got {self.p_mut}.")


@dataclass
class SearchResult:
    best: Mask
    best_fitness: float
    history: list[float] = field(default_factory=list)  # best fitness after each generation
    evaluated: dict[Mask, float] = field(default_factory=dict)  # every mask scored (the cache)


def all_masks(n: int, k: int) -> list[Mask]:
    """Every mask of ``n`` blocks with exactly ``k`` pruned, in lexicographic order of the pruned indices."""
    _space(n, k)
    return [mask_from_indices(n, pruned) for pruned in itertools.combinations(range(n), k)]


def mask_from_indices(n: int, pruned: set[int] | list[int]) -> Mask:
    return tuple(i in set(pruned) for i in range(n))


def random_mask(n: int, k: int, rng: random.Random) -> Mask:
    if not 0 <= k <= n:
        raise ValueError(f"cannot prune {k} of {n} blocks; choose 0 ≤ k ≤ {n}.")
    return mask_from_indices(n, rng.sample(range(n), k))


def crossover(a: Mask, b: Mask, k: int, rng: random.Random) -> Mask:
    """A child that prunes ``k`` blocks drawn from the blocks either parent prunes."""
    pool = sorted({i for i, p in enumerate(a) if p} | {i for i, p in enumerate(b) if p})
    return mask_from_indices(len(a), rng.sample(pool, k))


def mutate(mask: Mask, rng: random.Random) -> Mask:
    """Swap one pruned block with one kept block (the count of pruned blocks is unchanged)."""
    pruned = [i for i, p in enumerate(mask) if p]
    kept = [i for i, p in enumerate(mask) if not p]
    if not pruned or not kept:
        return mask
    out = list(mask)
    out[rng.choice(pruned)], out[rng.choice(kept)] = False, True
    return tuple(out)


def _scored(fitness: Callable[[Mask], float], mask: Mask) -> float:
    value = float(fitness(mask))
    if not math.isfinite(value):
        raise ValueError(f"fitness returned {value} for mask {mask}; the fitness must be a finite score "
                         "(e.g. a validation accuracy) — check the model for diverged weights.")
    return value


def _space(n: int, k: int) -> None:
    if not isinstance(n, int) or n < 1 or not isinstance(k, int) or not 0 < k <= n:
        raise ValueError(f"cannot search masks pruning {k} of {n} blocks; choose 1 ≤ k ≤ n.")


def genetic_search(fitness: Callable[[Mask], float], n: int, k: int, cfg: SearchConfig = SearchConfig()) -> SearchResult:
    """Maximise ``fitness`` over masks of ``n`` blocks with exactly ``k`` pruned; each mask is scored once."""
    _space(n, k)
    rng = random.Random(cfg.seed)
    result = SearchResult(best=random_mask(n, k, rng), best_fitness=float("-inf"))

    def score(mask: Mask) -> float:
        if mask not in result.evaluated:
            result.evaluated[mask] = _scored(fitness, mask)
        return result.evaluated[mask]

    population = list({random_mask(n, k, rng) for _ in range(cfg.population * 4)})[:cfg.population]
    for _ in tqdm(range(cfg.generations), desc="search", leave=False, mininterval=5.0):
        ranked = sorted(population, key=lambda m: (-score(m), m))
        if score(ranked[0]) > result.best_fitness:
            result.best, result.best_fitness = ranked[0], score(ranked[0])
        result.history.append(result.best_fitness)
        parents = ranked[:cfg.elite]
        children: list[Mask] = list(parents)
        for _ in range(cfg.population * 10):  # bounded: small search spaces may run out of new masks
            if len(children) >= cfg.population:
                break
            child = crossover(*rng.sample(parents, 2), k, rng) if len(parents) > 1 else parents[0]
            if rng.random() < cfg.p_mut:
                child = mutate(child, rng)
            if child not in children:
                children.append(child)
        population = children
    ranked = sorted(population, key=lambda m: (-score(m), m))
    if score(ranked[0]) > result.best_fitness:
        result.best, result.best_fitness = ranked[0], score(ranked[0])
    return result


def exhaustive_search(fitness: Callable[[Mask], float], n: int, k: int) -> SearchResult:
    """Score all C(n, k) masks (a reference for the genetic search when the space is small)."""
    _space(n, k)
    result = SearchResult(best=(), best_fitness=float("-inf"))
    for mask in all_masks(n, k):
        result.evaluated[mask] = _scored(fitness, mask)
        if result.evaluated[mask] > result.best_fitness:
            result.best, result.best_fitness = mask, result.evaluated[mask]
    result.history.append(result.best_fitness)
    return result
