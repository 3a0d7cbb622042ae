"""Images for materialization metadata (markdown with an inline PNG)."""

import base64
import io
from collections.abc import Sequence

import dagster as dg


def loss_curve_markdown(
    losses: Sequence[Sequence[float]], title: str = "training loss", validation: Sequence[Sequence[float]] = ()
) -> dg.MetadataValue:
    """The loss by step; with `validation`, the validation loss by step beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([s for s, *_ in losses], [v[1] for v in losses], lw=1.2, label="training")
    if validation:
        ax.plot([s for s, *_ in validation], [v[1] for v in validation], "o-", lw=1.2, label="validation")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")
