"""What the kept feature rows cost in the private ``gram`` artifact (issue 16b).

Every model with a prefix keeps its fitted samples' features next to the Gram sums (``GramState.F``,
N × h in the prefix's dtype), so that a downdate subtracts exactly the rows that were added. This
measures the artifact with and without them, in one process: bytes, and the seconds of a
safetensors save and of a load as ``load_private`` parses it (best and worst of ``--repeat``).

    python bench/gram_artifact.py [--n 44000] [--hidden 128] [--classes 10]

Prints a table and writes ``bench/results/gram_artifact.{json,md}``. The rows are random (the cost
does not depend on their values); the sums are the real size, (h+1)² + C(h+1) float64.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from safetensors.torch import load as st_load  # noqa: E402
from safetensors.torch import save as st_save  # noqa: E402

from workers.unlearning import GramState  # noqa: E402


def gram_artifact_cost(state: GramState | None, repeat: int = 3) -> dict:
    """{"with_features" | "sums_only": {bytes, save_s, load_s, save_max_s, load_max_s}} for one kept state."""
    if state is None:
        return {}
    out = {}
    for name, st in (("with_features", state), ("sums_only", replace(state, F=None))):
        saves, loads = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            blob = st_save(st.to_tensors())
            saves.append(time.perf_counter() - t)
            t = time.perf_counter()
            GramState.from_tensors(st_load(blob))
            loads.append(time.perf_counter() - t)
        out[name] = {"bytes": len(blob), "save_s": min(saves), "load_s": min(loads), "save_max_s": max(saves), "load_max_s": max(loads)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=44_000, help="fitted samples (the full realistic benchmark's user split)")
    ap.add_argument("--hidden", type=int, default=128, help="features per sample (the head's inputs)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    h, n = args.hidden, args.n
    rows, results = [], {}
    for dt in (torch.float64, torch.float32):
        st = GramState(torch.randn(h + 1, h + 1, generator=g, dtype=torch.float64), torch.randn(args.classes, h + 1, generator=g, dtype=torch.float64),
                       1.0, n, 1e-12, 1e-12, torch.arange(n), torch.randn(n, h, generator=g).to(dt))
        cost = gram_artifact_cost(st, args.repeat)
        results[str(dt).removeprefix("torch.")] = cost
        for k, c in cost.items():
            rows.append((f"prefix {str(dt).removeprefix('torch.')}, {k.replace('_', ' ')}", f"{c['bytes']:,}",
                         f"{c['save_s'] * 1e3:.1f} ({c['save_max_s'] * 1e3:.1f})", f"{c['load_s'] * 1e3:.1f} ({c['load_max_s'] * 1e3:.1f})"))
    cmd = "python bench/gram_artifact.py " + " ".join(sys.argv[1:])
    text = (f"# The private gram artifact, {n:,} samples × {h} features, {args.classes} classes\n\nCommand: `{cmd.strip()}`, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads.\n\n| artifact | bytes | save ms best (worst) | load ms best (worst) |\n|---|---|---|---|\n"
            + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n")
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gram_artifact.json").write_text(json.dumps({"n": n, "hidden": h, "classes": args.classes, "results": results}, indent=2))
    (args.out / "gram_artifact.md").write_text(text)


if __name__ == "__main__":
    main()
