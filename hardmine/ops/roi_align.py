"""RoIAlign on the CPU as one planned gather over all RoIs, with torchvision's exact values.

`roi_align` takes and returns what `torchvision.ops.roi_align` does (same bilinear sampling, border
rules, adaptive sampling grid, `aligned` offset and averaging). torchvision's CPU kernels are plain
loops on one thread, and its backward recomputes every sample's bilinear weights once per channel
and output bin. Here all samples of all RoIs are planned at once with tensor arithmetic, and the
pooling is one weighted gather-sum over the feature maps laid out channels-last:

* **table**: the feature maps (several pyramid levels together for `MultiScaleRoIAlign`), each
  padded with one zero row and column, stored as rows of C channels. A sample whose top-left pixel
  is row `tl` reads its four bilinear corners from rows `tl`, `tl + 1`, `tl + W + 1`, `tl + W + 2`;
* **forward**: `F.embedding_bag(mode="sum")` with one bag per output bin holding the four corners
  of each of its samples, weighted by the bilinear weight over the bin's sample count (ATen spreads
  the bags over the threads and vectorises over the channels). RoIs are pooled in chunks of about
  `CHUNK_FLOATS` output floats; a chunk's bins are ordered (ph, pw, roi), so one 2-D transpose,
  from cache, puts them into the [K, C, PH, PW] result;
* **backward**: the transpose of that sum. The samples are sorted once by their top-left row; per
  corner one `embedding_bag` then pulls, for every pixel, the weighted output gradients of the
  samples whose top-left it is, and the four results are added at their corner's offset. No
  atomics, no per-channel recomputation, deterministic.

The zero pad replaces torchvision's clamping of the upper corner at the last row / column: there
the upper corner's weight is 0, so reading the pad gives the same sum. Samples outside
[-1, height] x [-1, width] have weight 0, as in torchvision. With an adaptive sampling ratio
(`sampling_ratio <= 0`) each RoI has ceil(roi_height / pooled_height) x ceil(roi_width /
pooled_width) samples per bin; RoIs are grouped by grid size, so every group's plan is a regular
tensor and no sample is padded or masked.

Only float32 / float64 tensors on the CPU take this path; anything else (CUDA, half precision,
quantized tensors) calls torchvision's op. docs/BENCHMARKS.md ("RoIAlign on the CPU") has the
measured reason for hand-writing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align as torchvision_roi_align
from torchvision.ops._utils import check_roi_boxes_shape, convert_boxes_to_roi_format

#: dtypes this implementation handles; others go to torchvision's kernel.
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def runs_here(features: list[Tensor], boxes_dtype: torch.dtype) -> bool:
    """Whether hardmine's kernel pools these feature maps: on the CPU, float32 or float64, with
    boxes of the same dtype. torchvision's kernel pools all others (CUDA and every other device,
    other dtypes), and raises its own error for boxes of another dtype."""
    first = features[0]
    return first.dtype in SUPPORTED_DTYPES and all(
        f.device.type == "cpu" and f.dtype == boxes_dtype and not f.is_quantized for f in features
    )


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """`torchvision.ops.roi_align` with the same arguments and values; see the module docstring.

    input: [N, C, H, W]; boxes: Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of N
    Tensor[L, 4]; returns [K, C, output_h, output_w]. Gradients flow to `input` only.
    """
    check_roi_boxes_shape(boxes)
    rois = boxes if isinstance(boxes, Tensor) else convert_boxes_to_roi_format(boxes)
    if not runs_here([input], rois.dtype):
        return torchvision_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return pool_levels([input], rois, None, [spatial_scale], output_size, sampling_ratio, aligned)


def pool_levels(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor | None,
    scales: list[float],
    output_size: int | tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of RoI k on `features[levels[k]]` at `scales[levels[k]]` (`levels` None: level 0).

    One plan and one gather for all levels together, so a feature pyramid costs no per-level
    calls; the result is in RoI order. `features` must satisfy `runs_here`.
    """
    pooled_h, pooled_w = _pair(output_size)
    layout = _TableLayout.of(features)
    with torch.no_grad():
        plan = _plan(layout, rois, levels, scales, (pooled_h, pooled_w), sampling_ratio, aligned)
    return _RoIAlignFunction.apply(plan, layout, *features)


@dataclass(frozen=True)
class _TableLayout:
    """Where each level's padded channels-last map lies in the table of C-channel rows."""

    batch: int
    channels: int
    heights: tuple[int, ...]
    widths: tuple[int, ...]
    starts: tuple[int, ...]  # first row of each level, then the total row count
    dtype: torch.dtype

    @staticmethod
    def of(features: list[Tensor]) -> _TableLayout:
        batch, channels = features[0].shape[:2]
        starts, rows = [], 0
        for f in features:
            if f.dim() != 4 or f.shape[:2] != (batch, channels):
                shapes = [tuple(f.shape) for f in features]
                raise ValueError(f"feature maps must be [N, C, H, W] with one N and C, got {shapes}")
            starts.append(rows)
            rows += batch * (f.shape[2] + 1) * (f.shape[3] + 1)
        return _TableLayout(
            batch,
            channels,
            tuple(f.shape[2] for f in features),
            tuple(f.shape[3] for f in features),
            (*starts, rows),
            features[0].dtype,
        )

    @property
    def rows(self) -> int:
        return self.starts[-1]

    def padded(self, table: Tensor, level: int) -> Tensor:
        """Level `level`'s block of a table-shaped tensor as [N, H + 1, W + 1, C]."""
        block = table[self.starts[level] : self.starts[level + 1]]
        return block.view(self.batch, self.heights[level] + 1, self.widths[level] + 1, self.channels)

    def fill(self, features: tuple[Tensor, ...]) -> Tensor:
        table = features[0].new_zeros(self.rows, self.channels)
        for level, f in enumerate(features):
            self.padded(table, level)[:, : f.shape[2], : f.shape[3]].copy_(f.permute(0, 2, 3, 1))
        return table

    def unfill(self, table: Tensor) -> list[Tensor]:
        """Each level's [N, C, H, W] part of a table-shaped tensor (pads dropped)."""
        return [
            self.padded(table, level)[:, :h, :w].permute(0, 3, 1, 2).contiguous()
            for level, (h, w) in enumerate(zip(self.heights, self.widths))
        ]


#: Floats of pooled output per forward chunk: RoIs are pooled this many bins x channels at a time, so
#: each chunk's [bins, C] gather result is still in cache when it is transposed into the result.
CHUNK_FLOATS = 1 << 21


@dataclass(frozen=True)
class _Group:
    """RoIs of one chunk sharing one sampling grid (gy x gx samples per bin): their entries and bins.

    A group's entries are stored bin by bin as [bins, gy, 2, gx, 2]: sample (iy, ix) of the bin,
    then its corner (low / high row, low / high column); its bins are ordered (ph, pw, roi).
    """

    first_entry: int
    first_bin: int
    bins: int
    grid_h: int
    grid_w: int

    @property
    def samples(self) -> int:
        return self.bins * self.grid_h * self.grid_w


@dataclass(frozen=True)
class _Chunk:
    """RoIs `first_roi` to `first_roi + rois`, pooled by one gather: their entries and bins."""

    first_roi: int
    rois: int
    first_entry: int
    entries: int
    first_bin: int
    bins: int
    offsets: Tensor  # [bins] first entry of each bin, counted from first_entry
    bin_rows: Tensor | None  # row (ph, pw, roi in chunk) of each bin; None: bins are in that order


@dataclass(frozen=True)
class _Plan:
    """Every entry (sample corner) of every output bin: the table row it reads and its weight.

    Entries and bins are laid out chunk after chunk, group after group.
    """

    index: Tensor  # [E] table rows (int32, or int64 for tables of 2**31 rows or more)
    weights: Tensor  # [E] bilinear weight / sample count of the bin
    chunks: tuple[_Chunk, ...]
    groups: tuple[_Group, ...]
    num_rois: int
    pooled: tuple[int, int]
    grid: tuple[int, int] | None  # the one sampling grid of every RoI (fixed ratio), else None


def _plan(
    layout: _TableLayout,
    rois: Tensor,
    levels: Tensor | None,
    scales: list[float],
    pooled: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> _Plan:
    """The sampling plan, with torchvision's arithmetic (in its order) in the feature dtype."""
    pooled_h, pooled_w = pooled
    bins_per_roi = pooled_h * pooled_w
    dtype = layout.dtype
    index_dtype = torch.int32 if layout.rows < 2**31 else torch.int64
    num_rois = rois.shape[0]
    level = torch.zeros(num_rois, dtype=torch.int64) if levels is None else levels.to(torch.int64)
    heights = torch.tensor(layout.heights)[level]
    widths = torch.tensor(layout.widths)[level]
    scale = torch.tensor(scales, dtype=dtype)[level]
    batch_index = rois[:, 0].to(torch.int64)  # truncates, as torchvision's int cast
    if num_rois and not 0 <= int(batch_index.min()) <= int(batch_index.max()) < layout.batch:
        raise ValueError(
            f"RoI batch indices must be in [0, {layout.batch}), got {rois[:, 0].unique().tolist()}"
        )
    base = torch.tensor(layout.starts[:-1])[level] + batch_index * (heights + 1) * (widths + 1)

    offset = 0.5 if aligned else 0.0
    start_w = rois[:, 1] * scale - offset
    start_h = rois[:, 2] * scale - offset
    roi_w = (rois[:, 3] * scale - offset) - start_w
    roi_h = (rois[:, 4] * scale - offset) - start_h
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / pooled_h
    bin_w = roi_w / pooled_w

    if sampling_ratio > 0:
        grid = (sampling_ratio, sampling_ratio)
        entries = num_rois * bins_per_roi * 4 * sampling_ratio**2
    else:  # ceil(roi_height / pooled_height) x ceil(roi_width / pooled_width) samples, per RoI
        grid = None
        # a reversed box (aligned=True) gives a negative grid: no samples, as torchvision's loops
        # (NaN and infinite boxes too: torchvision's int cast makes those negative)
        grid_h = torch.ceil(bin_h).nan_to_num(0.0, 0.0, 0.0).clamp(min=0).to(torch.int64)
        grid_w = torch.ceil(bin_w).nan_to_num(0.0, 0.0, 0.0).clamp(min=0).to(torch.int64)
        entries = bins_per_roi * 4 * int((grid_h * grid_w).sum())
    index = torch.empty(entries, dtype=index_dtype)
    weights = torch.empty(entries, dtype=dtype)

    chunk_rois = max(1, CHUNK_FLOATS // (layout.channels * bins_per_roi))
    chunks, groups = [], []
    entry = bin_ = 0
    for first in range(0, num_rois, chunk_rois):
        rois_here = min(chunk_rois, num_rois - first)
        members_by_grid: dict[tuple[int, int], Tensor | None]
        if grid is not None:
            members_by_grid = {grid: None}
        else:
            grid_h_here, grid_w_here = grid_h[first : first + rois_here], grid_w[first : first + rois_here]
            span = int(grid_w_here.max()) + 1
            keys = grid_h_here * span + grid_w_here
            members_by_grid = {
                (key // span, key % span): torch.nonzero(keys == key).squeeze(1)
                for key in torch.unique(keys).tolist()
            }
            if len(members_by_grid) == 1:  # the chunk's RoIs in order: no reordering
                members_by_grid = dict.fromkeys(members_by_grid)
        chunk_entry, chunk_bin = entry, bin_
        bin_sizes, bin_rows = [], []
        for (gy, gx), members in members_by_grid.items():
            selected = slice(first, first + rois_here) if members is None else first + members
            k = rois_here if members is None else members.numel()
            size = bins_per_roi * k * 4 * gy * gx
            if size:
                _fill_group(
                    index[entry : entry + size].view(pooled_h, pooled_w, k, 2 * gy, 2 * gx),
                    weights[entry : entry + size].view(pooled_h, pooled_w, k, 2 * gy, 2 * gx),
                    (start_h[selected], bin_h[selected], heights[selected]),
                    (start_w[selected], bin_w[selected], widths[selected]),
                    base[selected],
                )
            groups.append(_Group(entry, bin_, bins_per_roi * k, gy, gx))
            bin_sizes.append(torch.full((bins_per_roi * k,), 4 * gy * gx, dtype=index_dtype))
            if members is not None:
                bin_rows.append((torch.arange(bins_per_roi)[:, None] * rois_here + members).view(-1))
            entry += size
            bin_ += bins_per_roi * k
        sizes = _cat(bin_sizes)
        chunks.append(
            _Chunk(
                first,
                rois_here,
                chunk_entry,
                entry - chunk_entry,
                chunk_bin,
                bin_ - chunk_bin,
                torch.cumsum(sizes, 0, dtype=index_dtype) - sizes,
                _cat(bin_rows) if bin_rows else None,
            )
        )
    return _Plan(index, weights, tuple(chunks), tuple(groups), num_rois, pooled, grid)


def _fill_group(
    index: Tensor,
    weights: Tensor,
    rows: tuple[Tensor, Tensor, Tensor],
    cols: tuple[Tensor, Tensor, Tensor],
    base: Tensor,
) -> None:
    """Writes one group's entries: `index` and `weights` are [ph, pw, roi, (iy, a), (ix, c)] views,
    `rows` / `cols` the RoIs' (start, bin size, map size) along y / x, `base` their map's first row."""
    pooled_h, pooled_w, k, grid_h2, grid_w2 = index.shape
    row, weight_y = _axis(*rows[:2], pooled_h, grid_h2 // 2, rows[2])
    col, weight_x = _axis(*cols[:2], pooled_w, grid_w2 // 2, cols[2])
    row = row * (cols[2] + 1)[:, None, None, None] + base[:, None, None, None]
    weight_y = weight_y / max(grid_h2 * grid_w2 // 4, 1)
    # [k, ph, iy, a] -> [ph, ., k, (iy, a), .] and [k, pw, ix, c] -> [., pw, k, ., (ix, c)]
    row = row.to(index.dtype).permute(1, 0, 2, 3).reshape(pooled_h, 1, k, grid_h2, 1)
    col = col.to(index.dtype).permute(1, 0, 2, 3).reshape(1, pooled_w, k, 1, grid_w2)
    weight_y = weight_y.permute(1, 0, 2, 3).reshape(pooled_h, 1, k, grid_h2, 1)
    weight_x = weight_x.permute(1, 0, 2, 3).reshape(1, pooled_w, k, 1, grid_w2)
    torch.add(row, col, out=index)
    torch.mul(weight_y, weight_x, out=weights)


def _axis(start: Tensor, bin_size: Tensor, pooled: int, grid: int, size: Tensor) -> tuple[Tensor, Tensor]:
    """Samples along one axis: low / high pixel and their weights, each [k, pooled, grid, 2].

    torchvision's rules: a sample at y < -1 or y > size contributes nothing; otherwise y is clamped
    at 0, and at y >= size - 1 it reads the last pixel alone (here: the last pixel, and the zero pad
    with weight 0).
    """
    dtype = start.dtype
    bins = torch.arange(pooled, dtype=dtype)[None, :, None]
    steps = (torch.arange(grid, dtype=dtype) + 0.5)[None, None, :]
    bin_size = bin_size[:, None, None]
    pos = (start[:, None, None] + bins * bin_size) + steps * bin_size / grid
    size = size[:, None, None]
    inside = (pos >= -1.0) & (pos <= size)
    pos = torch.where(inside, pos, 0.0).clamp(min=0.0)
    low = pos.to(torch.int64)
    last = low >= size - 1
    low = torch.where(last, size - 1, low)
    high_weight = torch.where(last, 0.0, pos - low)
    weights = torch.stack([1.0 - high_weight, high_weight], dim=-1) * inside[..., None]
    return torch.stack([low, low + 1], dim=-1), weights


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class _RoIAlignFunction(torch.autograd.Function):
    """Forward: the planned gather-sum. Backward: its transpose; gradients for the features only."""

    @staticmethod
    def forward(ctx: FunctionCtx, plan: _Plan, layout: _TableLayout, *features: Tensor) -> Tensor:
        table = layout.fill(features)
        pooled_h, pooled_w = plan.pooled
        channels = layout.channels
        result = table.new_empty(plan.num_rois, channels, pooled_h, pooled_w)
        rows = result.view(-1, pooled_h * pooled_w)
        for chunk in plan.chunks:
            if chunk.entries:
                entries = slice(chunk.first_entry, chunk.first_entry + chunk.entries)
                bins = F.embedding_bag(
                    plan.index[entries],
                    table,
                    chunk.offsets,
                    mode="sum",
                    per_sample_weights=plan.weights[entries],
                )
            else:
                bins = table.new_zeros(chunk.bins, channels)
            if chunk.bin_rows is not None:
                bins = torch.empty_like(bins).index_copy_(0, chunk.bin_rows, bins)
            # [(ph, pw), (roi, c)] -> [(roi, c), (ph, pw)]: one 2-D transpose, from cache
            first = chunk.first_roi * channels
            rows[first : first + chunk.rois * channels].copy_(bins.view(pooled_h * pooled_w, -1).t())
        ctx.plan, ctx.layout = plan, layout
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Plan = ctx.plan
        layout: _TableLayout = ctx.layout
        pooled_h, pooled_w = plan.pooled
        channels = layout.channels
        grad_rows = grad_output.reshape(-1, pooled_h * pooled_w)
        grad_bins = grad_output.new_empty(sum(c.bins for c in plan.chunks), channels)
        for chunk in plan.chunks:
            first = chunk.first_roi * channels
            transposed = grad_rows[first : first + chunk.rois * channels].t()
            target = grad_bins[chunk.first_bin : chunk.first_bin + chunk.bins]
            if chunk.bin_rows is None:
                target.view(pooled_h * pooled_w, -1).copy_(transposed)
            else:
                torch.index_select(transposed.reshape(-1, channels), 0, chunk.bin_rows, out=target)
        grad_table = grad_output.new_zeros(layout.rows, channels)
        if plan.index.numel():
            _add_transposed(plan, layout, grad_bins, grad_table)
        return (None, None, *layout.unfill(grad_table))


def _add_transposed(plan: _Plan, layout: _TableLayout, grad_bins: Tensor, grad_table: Tensor) -> None:
    """grad_table[index[e]] += weights[e] * grad_bins[bin of e] over all entries, as sorted pulls."""
    groups = [g for g in plan.groups if g.samples]
    if plan.grid is not None:  # one view over all groups
        groups = [_Group(0, 0, plan.index.numel() // (4 * plan.grid[0] * plan.grid[1]), *plan.grid)]
    top_left = _cat(
        [
            plan.index[g.first_entry : g.first_entry + 4 * g.samples]
            .view(g.bins, g.grid_h, 2, g.grid_w, 2)[:, :, 0, :, 0]
            .reshape(-1)
            for g in groups
        ]
    )
    # small keys sort fastest; rows fit int16 for maps as small as the presets'
    key_dtype = torch.int16 if layout.rows <= torch.iinfo(torch.int16).max else top_left.dtype
    top_left, order = torch.sort(top_left.to(key_dtype), stable=True)
    counts = torch.bincount(top_left, minlength=layout.rows)
    offsets = (torch.cumsum(counts, 0) - counts).to(plan.index.dtype)
    # of each sorted sample: its bin, the entry of its corner (0, 0), the entry step to its lower row
    if plan.grid is not None:  # one grid for all: entries and bins are regular from 0 on
        grid_h, grid_w = plan.grid
        bins = order // (grid_h * grid_w)
        first = 4 * order - 2 * (order % grid_w)
        row_step: Tensor | int = 2 * grid_w
    else:
        sample = [torch.arange(g.samples) for g in groups]
        bins = _cat([g.first_bin + s // (g.grid_h * g.grid_w) for g, s in zip(groups, sample)]).index_select(
            0, order
        )
        first = _cat(
            [g.first_entry + 4 * s - 2 * (s % g.grid_w) for g, s in zip(groups, sample)]
        ).index_select(0, order)
        row_step = _cat([torch.full((g.samples,), 2 * g.grid_w) for g in groups]).index_select(0, order)
    bins = bins.to(plan.index.dtype)
    for corner in range(4):
        entry = first + (corner // 2) * row_step + corner % 2 if corner else first
        pulled = F.embedding_bag(
            bins, grad_bins, offsets, mode="sum", per_sample_weights=plan.weights.index_select(0, entry)
        )
        for level, width in enumerate(layout.widths):
            shift = (corner // 2) * (width + 1) + corner % 2
            start, end = layout.starts[level], layout.starts[level + 1]
            grad_table[start + shift : end] += pulled[start : end - shift]
