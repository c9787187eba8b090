"""``corral plan --plot FILE``: output throughput, TPOT and TTFT against batch size, with the SLO lines and
the SLO batch marked. matplotlib is imported only here, only when asked (it is the ``bench`` extra)."""

from __future__ import annotations

from corral.errors import ConfigError
from corral.planner.batching import batch_point
from corral.planner.plan import Plan

MAX_PLOTTED_BATCHES = 96


def plotted_batches(max_batch: int) -> list[int]:
    """Every batch size up to ``max_batch``, thinned evenly to at most MAX_PLOTTED_BATCHES."""
    if max_batch <= MAX_PLOTTED_BATCHES:
        return list(range(1, max_batch + 1))
    step = (max_batch - 1) / (MAX_PLOTTED_BATCHES - 1)
    return sorted({round(1 + i * step) for i in range(MAX_PLOTTED_BATCHES)})


def write_plot(plan: Plan, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib, which is in corral's bench extra: pip install 'corral[bench]'") from None
    if not plan.max_batch or plan.steps is None:
        raise ConfigError("--plot: no batch fits in memory, nothing to plot")
    t = plan.traffic
    batches = plotted_batches(plan.max_batch)
    points = [batch_point(plan.steps, t, b, plan.max_num_batched_tokens) for b in batches]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 7))
    top.plot(batches, [p.output_tokens_per_s for p in points], label="output tok/s")
    top.set_ylabel("output tokens / s (one replica)")
    bottom.plot(batches, [p.tpot_s * 1000 for p in points], label="TPOT")
    bottom.plot(batches, [p.ttft_s * 1000 for p in points], label="TTFT")
    bottom.axhline(t.slo_tpot_s * 1000, linestyle="--", color="C0", label=f"TPOT SLO {t.slo_tpot_s * 1000:g} ms")
    bottom.axhline(t.slo_ttft_s * 1000, linestyle="--", color="C1", label=f"TTFT SLO {t.slo_ttft_s * 1000:g} ms")
    bottom.set_yscale("log")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("sequences running at once (batch)")
    if plan.best is not None:
        for ax in (top, bottom):
            ax.axvline(plan.best.batch, color="grey", linestyle=":", label=f"SLO batch {plan.best.batch}")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{plan.model.name}, {plan.weight_format.name} on {plan.hardware.name} x {plan.parallel.num_devices}: "
                 f"prompts {t.prompt}, outputs {t.output}", fontsize="medium")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise ConfigError(f"--plot {path}: cannot write it ({exc})") from None
    finally:
        plt.close(fig)
