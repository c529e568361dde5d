"""A quantization search's report: the table, the sensitivity plot, report.json and report.txt."""

from __future__ import annotations

import json
from pathlib import Path

from pdserve.pipeline.quantization.search import RecipeCandidate, SearchResult


def format_search_report(result: SearchResult) -> str:
    head = f"{'candidate':<36} {'stage':<10} {'top-1':>7} {'top-5':>7} {'drop':>6} {'+/-':>7} {'agree':>7}"
    head += f" {'KL':>8} {'img/s':>7}"
    lines = [
        f"FP32: top-1 {result.fp32_top1:.1%}, top-5 {result.fp32_top5:.1%}, {result.fp32_images_per_s:.1f} img/s "
        f"on {result.images} evaluation images; target: drop <= {result.target_drop} points",
        f"measured under: {', '.join(result.isas)} (ranked by the worst of them)",
        head,
    ]
    for c in sorted(result.candidates, key=RecipeCandidate.rank):
        mark = "*" if c is result.chosen else " "
        lines.append(
            f"{mark}{c.name:<35} {c.stage:<10} {c.top1:>7.1%} {c.top5:>7.1%} {c.drop:>+6.2f} "
            f"{f'+{c.gained}/-{c.lost}':>7} {c.agreement:>7.1%} {c.divergence:>8.4f} {c.images_per_s:>7.1f}"
        )
    if result.sensitivity:
        top = sorted(result.sensitivity, key=lambda s: -s.gain)[:10]
        lines.append("most sensitive layers (KL divergence gained back when kept in FP32 alone):")
        lines += [f"  {s.layer:<24} {s.op_type:<18} {s.gain:+.4f}" for s in top]
    verdict = "met" if result.met else "NOT met"
    chosen = result.chosen.name if result.chosen else "-"
    lines.append(f"chosen: {chosen}; target {verdict}; {result.seconds:.0f} s")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def plot(result: SearchResult, path: Path) -> bool:
    """Per-layer sensitivity and the accuracy/speed trade-off, as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    if result.sensitivity:
        chosen = set(result.chosen.recipe.fp32_layers) if result.chosen else set()
        gains = [s.gain for s in result.sensitivity]
        colors = ["tab:red" if s.layer in chosen else "tab:blue" for s in result.sensitivity]
        left.bar(range(len(gains)), gains, color=colors)
        left.set_xlabel("quantized layer, in program order (red: kept in FP32)")
        left.set_ylabel("KL divergence gained back (nats)")
        left.set_title("Layer sensitivity: each layer kept in FP32 alone")
    else:
        left.text(0.5, 0.5, "no sensitivity analysis\n(a recipe met the target without it)", ha="center")
        left.set_axis_off()
    for c in result.candidates:
        right.scatter(c.images_per_s, -c.drop, color="tab:green" if c.meets else "tab:gray")
    if result.chosen is not None:
        right.scatter(result.chosen.images_per_s, -result.chosen.drop, s=150, facecolors="none", edgecolors="tab:red")
    right.axhline(-result.target_drop, linestyle="--", color="tab:red", linewidth=1)
    right.axvline(result.fp32_images_per_s, linestyle=":", color="black", linewidth=1)
    right.set_xlabel("images/s (predictor.run, batch 8; dotted: FP32)")
    right.set_ylabel("top-1 change vs FP32 (points; dashed: target)")
    right.set_title("Candidates: accuracy against speed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(result: SearchResult, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": folder / "report.json", "table": folder / "report.txt", "png": folder / "sensitivity.png"}
    files["json"].write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    files["table"].write_text(format_search_report(result) + "\n")
    if not plot(result, files["png"]):
        del files["png"]
    return {k: str(v) for k, v in files.items()}
