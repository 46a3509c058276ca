"""matplotlib for the report: the Agg backend, figures as PNG data URIs (report.html inlines them)."""

from __future__ import annotations

import base64
import io
from typing import Any


def png(fig: Any) -> str:
    """``fig`` as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
