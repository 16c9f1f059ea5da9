"""The stitching space: which networks a family of equal-depth anchors can be stitched into.

A configuration is a *route*: a list of segments (anchor, first block, end block) joined by stitching
layers. SN-Net v1 *paired stitching* slides a window of `kernel` blocks with `stride` over the depth;
every (front block j, end block k) pair inside one window is a stitch position — the front anchor runs
blocks 0..j, a Linear maps its tokens, the end anchor runs blocks k..depth-1. All positions first
introduced by the same window share one stitching layer, so a depth-12 pair with k=2, s=1 has 34
positions served by 11 layers, and three anchors give 3 + 2·34 = 71 networks (nearest stitching: only
adjacent anchors are stitched). SN-Netv2 *two-way* stitching adds large→small stitches and the
routes small→large→small and large→small→large at the depth-preserving positions (j, j+1).

`direction="down"` keeps v1's one-stitch space (same positions, same count) but stitches large→small:
the large anchor runs the front, the small one the tail. Why: a stitched route cannot know more than
its front segment computed, and a Linear map cannot add what a narrower front never encoded — a
small→large route is bounded by the small anchor's features at the stitch (on the bundled family its
stitched configurations stay under vit-small however long they train), while a large→small route hands
the large anchor's features to a narrower tail, which only has to decode them. These are the
configurations SN-Netv2's two-way stitching adds to fill the frontier near the large anchors; `down`
gets them at v1's cost (two_way also runs the reverse direction and the two-stitch routes: 5× the
configurations to train, evaluate and export).

`round_trip` adds only the two-stitch routes that leave the direction's front anchor and come back to it
(large→small→large with `down`): the route keeps the large anchor's last blocks and head and swaps a middle
run of blocks for the small anchor's, so its MACs fall between the two anchors while its output comes from
the large one's head, where a one-stitch large→small route ends in the small anchor's tail and head
(2.5× v1's configurations, not two_way's 5×). Measured so far only at a short schedule, where the round
trips trailed the one-stitch routes (README, stitching ablation).
"""
from __future__ import annotations

from dataclasses import dataclass


class StitchSpaceError(ValueError):
    """Bad stitching parameters (depth, kernel, stride, anchors)."""


@dataclass(frozen=True)
class Segment:
    anchor: int          # index into the anchors, sorted by width
    start: int           # first block run
    end: int             # one past the last block run


@dataclass(frozen=True)
class Stitch:
    front: int           # anchor whose tokens go in
    end: int             # anchor whose tokens come out
    layer: int           # which of the (front, end) stitching layers


@dataclass(frozen=True)
class StitchConfig:
    """One network of the space: segments[i] → stitches[i] → segments[i+1] → ... → head of the last."""
    segments: tuple[Segment, ...]
    stitches: tuple[Stitch, ...]

    @property
    def is_anchor(self) -> bool:
        return len(self.segments) == 1

    @property
    def name(self) -> str:
        """e.g. `a0[0:4]>a1[4:12]`: readable in tables and manifests."""
        return ">".join(f"a{s.anchor}[{s.start}:{s.end}]" for s in self.segments)

    def to_dict(self) -> dict:
        return {"segments": [[s.anchor, s.start, s.end] for s in self.segments],
                "stitches": [[s.front, s.end, s.layer] for s in self.stitches]}

    @classmethod
    def from_dict(cls, d: dict) -> "StitchConfig":
        return cls(tuple(Segment(*s) for s in d["segments"]), tuple(Stitch(*s) for s in d["stitches"]))


def paired_positions(depth: int, kernel: int = 2, stride: int = 1) -> list[tuple[int, int, int]]:
    """(front block j, end block k, layer id) for every stitch position of SN-Net's paired stitching.

    Windows start at 0, stride, 2·stride, ... < depth; a window with new (j, k) pairs gets the next
    layer id, and every pair keeps the id of the first window that contained it.
    """
    _check(depth, kernel, stride)
    seen: dict[tuple[int, int], int] = {}
    layer = 0
    for start in range(0, depth, stride):
        window = range(start, min(start + kernel, depth))
        new = [(j, k) for j in window for k in window if (j, k) not in seen]
        for pair in new:
            seen[pair] = layer
        layer += bool(new)
    return [(j, k, lid) for (j, k), lid in seen.items()]


def count_paired(depth: int, kernel: int = 2, stride: int = 1) -> int:
    """Closed form for len(paired_positions(...)).

    A pair lo ≤ hi = lo + d is covered iff some window start m (a multiple of s) has
    hi − k + 1 ≤ m ≤ lo, i.e. iff lo mod s < k − d. Summing over d (twice for d > 0, since (j, k)
    and (k, j) both count) and counting lo ∈ [0, depth − d) with lo mod s < c in closed form:
    N = Σ_{d=0}^{k−1} (1 + [d>0]) · (⌊n_d/s⌋·min(c_d, s) + min(n_d mod s, c_d)),  n_d = depth − d, c_d = k − d.
    For s = 1 this is depth·(2k − 1) − k(k − 1): 34 for depth 12, k = 2.
    """
    _check(depth, kernel, stride)
    total = 0
    for d in range(min(kernel, depth)):
        n, c = depth - d, kernel - d
        total += (1 + (d > 0)) * ((n // stride) * min(c, stride) + min(n % stride, c))
    return total


def count_configs(depth: int, num_anchors: int, kernel: int = 2, stride: int = 1, two_way: bool = False,
                  round_trip: bool = False) -> int:
    """Closed form for len(enumerate_configs(...)): anchors + per adjacent pair (both ways if two_way,
    plus one direction's two-stitch routes if round_trip); the same for either `direction`."""
    n = count_paired(depth, kernel, stride)
    canon = len(_canonical_layers(depth, kernel, stride))
    round_trips = canon * (canon - 1) // 2
    per_pair = n + (n + 2 * round_trips if two_way else round_trips if round_trip else 0)
    return num_anchors + (num_anchors - 1) * per_pair


DIRECTIONS = ("up", "down")


def enumerate_configs(depth: int, num_anchors: int, kernel: int = 2, stride: int = 1,
                      two_way: bool = False, direction: str = "up", round_trip: bool = False) -> list[StitchConfig]:
    """Every network of the space, anchors first (smallest first), then per adjacent pair.

    v1 (SN-Net): small→large at every paired position (`direction="up"`), or large→small (`"down"`).
    two_way (SN-Netv2) adds large→small at every paired position, then small→large→small and
    large→small→large with both stitches at positions (j, j+1) and at least one block in every segment.
    round_trip adds only the two-stitch routes that start and end on the direction's front anchor.
    """
    if num_anchors < 1:
        raise StitchSpaceError("need at least one anchor")
    if direction not in DIRECTIONS:
        raise StitchSpaceError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if two_way and round_trip:
        raise StitchSpaceError("round_trip is part of two_way (which has both directions' two-stitch routes); "
                               "give one of them")
    positions = paired_positions(depth, kernel, stride)
    canon = _canonical_layers(depth, kernel, stride)
    configs = [StitchConfig((Segment(a, 0, depth),), ()) for a in range(num_anchors)]
    for small in range(num_anchors - 1):
        large = small + 1
        directions = [(small, large), (large, small)] if two_way else \
            [(small, large) if direction == "up" else (large, small)]
        for front, end in directions:
            for j, k, lid in positions:
                configs.append(StitchConfig((Segment(front, 0, j + 1), Segment(end, k, depth)),
                                            (Stitch(front, end, lid),)))
        if two_way or round_trip:
            outers = ((small, large), (large, small)) if two_way else directions
            for outer, inner in outers:
                for j1, l1 in canon:
                    for j2, l2 in canon:
                        if j2 <= j1:
                            continue
                        configs.append(StitchConfig(
                            (Segment(outer, 0, j1 + 1), Segment(inner, j1 + 1, j2 + 1), Segment(outer, j2 + 1, depth)),
                            (Stitch(outer, inner, l1), Stitch(inner, outer, l2))))
    return configs


def layers_needed(depth: int, kernel: int = 2, stride: int = 1) -> int:
    """Stitching layers per (front, end) anchor pair."""
    return max(lid for _, _, lid in paired_positions(depth, kernel, stride)) + 1


def layer_positions(depth: int, kernel: int = 2, stride: int = 1) -> dict[int, list[tuple[int, int]]]:
    """layer id → the (j, k) positions it serves (what least-squares init fits it on)."""
    out: dict[int, list[tuple[int, int]]] = {}
    for j, k, lid in paired_positions(depth, kernel, stride):
        out.setdefault(lid, []).append((j, k))
    return out


def _canonical_layers(depth: int, kernel: int, stride: int) -> list[tuple[int, int]]:
    """(j, layer) for the depth-preserving positions (j, j+1) — the two-stitch routes' stitch points."""
    return sorted((j, lid) for j, k, lid in paired_positions(depth, kernel, stride) if k == j + 1)


def _check(depth: int, kernel: int, stride: int) -> None:
    if depth < 1 or kernel < 1 or stride < 1:
        raise StitchSpaceError(f"depth, kernel and stride must be ≥ 1 (got {depth}, {kernel}, {stride})")
