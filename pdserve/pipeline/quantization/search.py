"""``pdserve quantize --target-drop``: an accuracy-aware search for an INT8 recipe.

Stages, each measured on the evaluation (selection) images against the FP32 model, paired:

1. algorithms: abs_max, avg, hist at several percentiles, KL, mse, emd, ptf (those the installed
   Paddle has), from shared calibration statistics where the algorithm allows;
2. options on the best so far: per-tensor weights, batch norm folded before calibration, ReLU6
   outputs calibrated like any tensor instead of at their bound, half the calibration batches,
   learned rounding (adaround);
3. when no candidate meets the target: layer sensitivity (each quantized layer kept in FP32 alone,
   scored by how much closer the output distribution gets to FP32's), then the most sensitive
   layers kept in FP32, one more at a time, until the target is met or ``max_fallback`` is reached.

Candidates are ranked: those meeting the target first, fewest FP32 layers (speed), then the mean
KL divergence of their output from FP32's (a continuous measure; on 150 images one image is 0.67
points of top-1). Those missing it by drop, then divergence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdserve.pipeline.dataset import Sample, load_images, progress_bar
from pdserve.pipeline.errors import PipelineError
from pdserve.pipeline.evaluate import score
from pdserve.pipeline.export import write_config
from pdserve.pipeline.isa import distinct_isas, predict_under
from pdserve.pipeline.local import LocalModel, predict_timed
from pdserve.pipeline.quantization import calibration
from pdserve.pipeline.quantization.calibration import Statistics
from pdserve.pipeline.quantization.recipe import ALGOS, SAMPLING_ALGOS, Recipe

HIST_PERCENTS = (0.999, 0.9999, 0.99999)
# Algorithms are compared as Paddle runs them (batch norm not folded); folding is an option after.
# Fixed here, not taken from Recipe's defaults, so that a search does not depend on them.
SEARCH_BASE = Recipe(algo="hist", hist_percent=0.99999, fuse_bn=False, bounded_scales=True)
EVAL_BATCH = 8


@dataclass
class RecipeCandidate:
    recipe: Recipe
    stage: str
    top1: float
    top5: float
    agreement: float
    gained: int
    lost: int
    divergence: float  # mean KL(FP32 || INT8) of the output distributions, nats
    images_per_s: float  # predictor.run() at batch 8, for the trade-off (same run only)
    drop: float  # top-1 points below FP32 (the worst ISA's, with --isa)
    meets: bool
    seconds: float
    # with --isa: each ISA's own numbers (top1, agreement, drop, divergence); the fields above are the worst
    per_isa: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.recipe.name

    def rank(self) -> tuple[float, ...]:
        if self.meets:
            return (0, len(self.recipe.fp32_layers), self.divergence)
        return (1, self.drop, self.divergence)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["recipe"] = self.recipe.as_dict()
        doc["name"] = self.name
        return doc


@dataclass
class Sensitivity:
    layer: str
    op_type: str
    divergence: float  # with only this layer in FP32
    gain: float  # divergence of the base recipe minus this one; higher is more sensitive
    top1: float


@dataclass(frozen=True)
class SearchOptions:
    """What ``pdserve quantize --target-drop`` searches with (``quantize_repository_model``)."""

    evaluation: list[Sample]  # labelled images to choose on, never the calibration images
    evaluation_source: str  # where they came from, for the report
    target_drop: float  # points of top-1 below FP32 a recipe may lose
    algos: tuple[str, ...] = ALGOS
    max_fallback: int = 10  # most layers to keep in FP32 (0: no sensitivity analysis)
    time_budget_s: float | None = None
    threads: int = 2
    isas: tuple[str, ...] = ("AVX2",)  # oneDNN instruction sets to measure under (isa.py)
    cache_dir: Path | None = None  # calibration statistics reused across runs
    report_dir: Path | None = None  # default: OUTPUT/search
    sensitivity: bool = False  # analyse layers even when a recipe meets the target


@dataclass
class SearchResult:
    target_drop: float
    fp32_top1: float
    fp32_top5: float
    fp32_images_per_s: float
    images: int
    candidates: list[RecipeCandidate] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)
    chosen: RecipeCandidate | None = None
    met: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    isas: list[str] = field(default_factory=list)  # this machine's first; candidates are ranked by the worst
    fp32_per_isa: dict[str, float] = field(default_factory=dict)  # FP32 top-1 under each

    def as_dict(self) -> dict[str, Any]:
        return {
            "target_drop": self.target_drop,
            "met": self.met,
            "images": self.images,
            "isas": self.isas,
            "fp32": {
                "top1": self.fp32_top1,
                "top5": self.fp32_top5,
                "images_per_s": self.fp32_images_per_s,
                "top1_per_isa": self.fp32_per_isa,
            },
            "chosen": self.chosen.as_dict() if self.chosen else None,
            "candidates": [c.as_dict() for c in self.candidates],
            "sensitivity": [asdict(s) for s in self.sensitivity],
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
        }


class OutOfTime(Exception):
    pass


@contextlib.contextmanager
def quiet_paddle() -> Iterator[None]:
    """Paddle's PTQ logs INFO lines and draws its own bars for every model; keep them out of ours."""
    from functools import partial

    from paddle.static.quantization import post_training_quantization, quantization_pass

    modules = [post_training_quantization, quantization_pass]
    loggers = [logging.getLogger(n) for n in logging.root.manager.loggerDict if n.startswith("paddle")]
    loggers.append(post_training_quantization._logger)
    levels = [lg.level for lg in loggers]
    saved = [m.tqdm for m in modules]
    for m, bar in zip(modules, saved, strict=True):
        m.tqdm = partial(bar, disable=True)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for m, bar in zip(modules, saved, strict=True):
            m.tqdm = bar
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _divergence(reference: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(reference.astype(np.float64), 1e-12, 1.0)
    q = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


@contextlib.contextmanager
def onednn_report_hidden() -> Iterator[None]:
    """Hide the ~60 lines oneDNN's INT8 passes print on file descriptor 2 for every predictor built.

    A search builds dozens; what they print is shown again if building fails.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace")[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _predict(model: LocalModel, images: np.ndarray) -> tuple[np.ndarray, float]:
    with onednn_report_hidden():  # its progress bar too: a search prints one line per candidate instead
        return predict_timed(model, images, EVAL_BATCH)


class Search:
    """One search: the FP32 model, calibration and evaluation images, and a work folder."""

    def __init__(
        self,
        fp32: LocalModel,
        calibration: list[Sample],
        evaluation: list[Sample],
        *,
        target_drop: float,
        batch_size: int = 10,
        batch_nums: int | None = None,
        time_budget_s: float | None = None,
        threads: int = 2,
        cache_dir: Path | None = None,
        evaluate: bool = True,
        isas: tuple[str, ...] = ("AVX2",),
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ) -> None:
        self.fp32 = fp32
        self.target_drop = target_drop
        self.batch_size = batch_size
        self.threads = threads
        self.cache_dir = cache_dir
        self.log = log
        self.started = time.monotonic()
        self.deadline = None if time_budget_s is None else self.started + time_budget_s
        nums = batch_nums or max(1, len(calibration) // batch_size)
        used = calibration[: nums * batch_size]
        if len(used) < batch_size:
            raise PipelineError(f"need at least --batch-size ({batch_size}) calibration images, got {len(calibration)}")
        self.calibration = used
        self.batch_nums = len(used) // batch_size
        spec = fp32.config.preprocessing
        self.cal_images = load_images(used, spec, "calibration images")
        self.stats: dict[tuple[bool, str, int], Statistics] = {}
        self._built: dict[Recipe, Path] = {}
        self.work = Path(tempfile.mkdtemp(prefix="pdserve-search-"))
        if not evaluate:  # only build (pdserve quantize with a given recipe)
            return
        if not evaluation:
            raise PipelineError("the search needs evaluation images (--eval-list)")
        self.eval_images = load_images(evaluation, spec, "evaluation images")
        self.labels = np.array([s.label for s in evaluation])
        if (self.labels < 0).any():
            raise PipelineError("the evaluation list needs labels ('path label' lines)")
        self.reference, self.fp32_rate = _predict(self._threads(fp32), self.eval_images)
        ref = score(self.reference, self.labels)
        self.ref_top1, self.fp32_top1, self.fp32_top5 = ref.predicted, ref.top1, ref.top5
        self.result = SearchResult(target_drop, self.fp32_top1, self.fp32_top5, self.fp32_rate, len(evaluation))
        # Every candidate is measured here and under each other ISA it may be served on (a child
        # process each), against FP32 under the same ISA; it is ranked by the worst.
        self.native_isa, self.extra_isas = distinct_isas(list(isas))
        self.result.isas = [self.native_isa, *self.extra_isas]
        same = sorted({i.upper() for i in isas} - set(self.result.isas))
        if same:
            self.result.notes.append(f"--isa {', '.join(same)}: newer than or the same as this CPU's {self.native_isa}")
        self.images_file = self.work / "evaluation.npy"
        np.save(self.images_file, self.eval_images)
        self.isa_reference = {self.native_isa: self.reference}
        for isa in self.extra_isas:
            self.isa_reference[isa] = predict_under(isa, self.fp32.path, self.images_file, threads)
            self.result.fp32_per_isa[isa] = score(self.isa_reference[isa], self.labels).top1
        self.result.fp32_per_isa[self.native_isa] = self.fp32_top1

    def _threads(self, model: LocalModel) -> LocalModel:
        return LocalModel(
            model.name, model.path, model.version, model.config.model_copy(update={"cpu_threads": self.threads})
        )

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def _check_time(self) -> None:
        # The first candidate is always measured, so that a budget always yields a model.
        if self.deadline is not None and self.result.candidates and time.monotonic() > self.deadline:
            raise OutOfTime

    def _batches(self, limit: int | None = None) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
        name, size = self.fp32.config.input.name, self.batch_size
        images = self.cal_images[: (limit or self.batch_nums) * size]

        def loader() -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, len(images), size):
                yield {name: images[start : start + size]}

        return loader

    # -- statistics ---------------------------------------------------------------------------------

    def statistics(self, recipe: Recipe) -> Statistics:
        kind = recipe.algo if recipe.algo in SAMPLING_ALGOS else "hist"
        # abs_max and avg over fewer batches are prefixes of the full statistics.
        nums = self.batch_nums if recipe.algo in ("abs_max", "avg") else (recipe.batch_nums or self.batch_nums)
        key = (recipe.fuse_bn, kind, nums)
        if key in self.stats:
            return self.stats[key]
        names = [s.path.name for s in self.calibration[: nums * self.batch_size]]
        src = self.fp32.version_dir
        cached = None
        if self.cache_dir is not None:
            digest = calibration.fingerprint(src, names, self.batch_size, nums, kind, recipe.fuse_bn)
            cached_path = self.cache_dir / f"{digest}.pkl"
            cached = calibration.load_cached(cached_path)
        if cached is None:
            self._check_time()
            folded = ", batch norm folded" if recipe.fuse_bn else ""
            what = f"calibrating ({kind}{folded}, {nums * self.batch_size} images)"
            with progress_bar(nums, what) as bar:  # the sampling pass, batch by batch
                cached = calibration.collect(
                    src,
                    self._batches(nums),
                    self.batch_size,
                    nums,
                    algo=kind,
                    fuse_bn=recipe.fuse_bn,
                    progress=lambda _: bar.update(1),
                )
            if self.cache_dir is not None:
                calibration.save_cached(cached_path, cached)
        self.stats[key] = cached
        return cached

    # -- candidates ---------------------------------------------------------------------------------

    def build(self, recipe: Recipe, folder: Path, overrides: dict[str, float] | None = None) -> None:
        stats = self.statistics(recipe)
        calibration.build(self.fp32.version_dir, folder, stats, recipe, self._batches(), self.batch_size, overrides)

    def measure(self, recipe: Recipe, stage: str, overrides: dict[str, float] | None = None) -> RecipeCandidate:
        self._check_time()
        started = time.perf_counter()
        folder = self.work / f"c{len(self._built)}"
        self.build(recipe, folder / "1", overrides)
        doc = self.fp32.config.model_dump(mode="json", exclude_none=True)
        doc.update(precision="int8", cpu_threads=self.threads)
        doc.pop("labels", None)
        write_config(folder, doc)
        self._built[recipe] = folder / "1"
        probs, rate = _predict(LocalModel.open(folder), self.eval_images)
        outputs = {self.native_isa: probs}
        for isa in self.extra_isas:
            outputs[isa] = predict_under(isa, folder, self.images_file, self.threads)
        per_isa, worst = {}, None
        for isa, out in outputs.items():
            reference = self.isa_reference[isa]
            scores = score(out, self.labels, reference.argmax(axis=1))
            assert scores.agreement is not None  # paired with FP32, so all three are set
            assert scores.gained is not None
            assert scores.lost is not None
            drop = (self.result.fp32_per_isa[isa] - scores.top1) * 100
            divergence = _divergence(reference, out)
            per_isa[isa] = {
                "top1": scores.top1,
                "agreement": scores.agreement,
                "drop": round(drop, 4),
                "divergence": divergence,
            }
            if worst is None or (drop, divergence) > (worst[1], worst[2]):
                worst = (scores, drop, divergence)
        assert worst is not None
        scores, drop, divergence = worst
        assert scores.gained is not None
        assert scores.lost is not None
        assert scores.agreement is not None
        candidate = RecipeCandidate(
            recipe=recipe,
            stage=stage,
            top1=scores.top1,
            top5=scores.top5,
            agreement=scores.agreement,
            gained=scores.gained,
            lost=scores.lost,
            divergence=divergence,
            images_per_s=rate,
            drop=round(drop, 4),
            meets=drop <= self.target_drop + 1e-9,
            seconds=round(time.perf_counter() - started, 1),
            per_isa=per_isa if self.extra_isas else {},
        )
        if stage != "sensitivity":
            self.result.candidates.append(candidate)
        return candidate

    def best(self) -> RecipeCandidate | None:
        return min(self.result.candidates, key=RecipeCandidate.rank, default=None)

    def _try(self, recipes: list[Recipe], stage: str) -> None:
        seen = {c.recipe for c in self.result.candidates}
        todo = [r for r in recipes if r not in seen]
        with progress_bar(len(todo), f"stage {stage}") as bar:
            for recipe in todo:
                try:
                    c = self.measure(recipe, stage)
                except (PipelineError, ValueError, RuntimeError) as exc:  # Paddle's refusal to build or load it
                    reason = exc.message if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
                    self.result.notes.append(f"{recipe.name}: {reason.strip().splitlines()[0]}")
                    bar.update(1)
                    continue
                self.log(
                    f"  {c.name:<34} top-1 {c.top1:6.1%} (drop {c.drop:+.2f}, +{c.gained}/-{c.lost}) "
                    f"agree {c.agreement:6.1%} KL {c.divergence:.4f} {c.images_per_s:6.1f} img/s"
                )
                bar.update(1)

    # -- the stages ---------------------------------------------------------------------------------

    def run(
        self,
        algos: tuple[str, ...] = ALGOS,
        max_fallback: int = 10,
        options: bool = True,
        always_analyse: bool = False,
    ) -> SearchResult:
        """Search; ``always_analyse`` runs the layer sensitivity analysis even when a recipe met the target."""
        try:
            self._run(algos, max_fallback, options, always_analyse)
        except OutOfTime:
            count = len(self.result.candidates)
            self.result.notes.append(
                f"time budget reached after {count} candidate{'s' if count > 1 else ''}; chose among those"
            )
        best = self.best()
        self.result.chosen = best
        self.result.met = bool(best and best.meets)
        self.result.seconds = time.monotonic() - self.started
        return self.result

    def _run(self, algos: tuple[str, ...], max_fallback: int, options: bool, always_analyse: bool) -> None:
        recipes = []
        for algo in algos:
            if algo == "hist":
                recipes += [SEARCH_BASE.with_(algo="hist", hist_percent=p) for p in HIST_PERCENTS]
            else:
                recipes.append(SEARCH_BASE.with_(algo=algo))
        self.log(f"FP32: top-1 {self.fp32_top1:.1%} on {len(self.labels)} images; target: drop <= {self.target_drop}")
        self._try(recipes, "algorithm")
        best = self.best()
        if best is None:
            raise PipelineError("no candidate could be built; see the notes")
        if options:
            base = best
            changes: list[dict[str, Any]] = [
                {"weight_quantize_type": "abs_max"},
                {"fuse_bn": not base.recipe.fuse_bn},
                {"bounded_scales": not base.recipe.bounded_scales},
            ]
            if self.batch_nums >= 2:
                changes.append({"batch_nums": self.batch_nums // 2})
            changes.append({"round_type": "adaround"})
            self._try([base.recipe.with_(**c) for c in changes], "option")
            # Then the options that helped alone, on top of the best one (e.g. 7-bit weights and folded BN).
            best = self.best()
            assert best is not None
            by_recipe = {c.recipe: c for c in self.result.candidates}
            helped = [
                c for c in changes if (tried := by_recipe.get(base.recipe.with_(**c))) and tried.rank() < base.rank()
            ]
            combined = [best.recipe.with_(**c) for c in helped if best.recipe.with_(**c) != best.recipe]
            if combined:
                self._try(combined, "option")
                best = self.best()
                assert best is not None
        if best.meets and always_analyse:
            self.sensitivity(best.recipe)
        if best.meets or max_fallback <= 0:
            return
        self.sensitivity(best.recipe)
        self.fallback(best.recipe, max_fallback)

    def sensitivity(self, base: Recipe) -> None:
        reference = next(c for c in self.result.candidates if c.recipe == base)
        layers = self.statistics(base).layers
        self.log(f"sensitivity of {len(layers)} layers on {base.name} (each kept in FP32 alone)")
        with progress_bar(len(layers), "sensitivity") as bar:
            for layer in layers:
                c = self.measure(base.with_(fp32_layers=(layer.weight,)), "sensitivity")
                self.result.sensitivity.append(
                    Sensitivity(layer.weight, layer.op_type, c.divergence, reference.divergence - c.divergence, c.top1)
                )
                bar.update(1)

    def fallback(self, base: Recipe, max_fallback: int) -> None:
        ranked = sorted(self.result.sensitivity, key=lambda s: -s.gain)
        ranked = [s for s in ranked if s.gain > 0][:max_fallback]
        with progress_bar(len(ranked), "fp32 fallback") as bar:
            for k in range(1, len(ranked) + 1):
                recipe = base.with_(fp32_layers=tuple(s.layer for s in ranked[:k]))
                c = self.measure(recipe, "fallback")
                self.log(
                    f"  {k} layer(s) in FP32: top-1 {c.top1:.1%} (drop {c.drop:+.2f}) KL {c.divergence:.4f} "
                    f"{c.images_per_s:.1f} img/s"
                )
                bar.update(1)
                if c.meets:
                    return
        self.result.notes.append(f"no recipe met drop <= {self.target_drop} with up to {len(ranked)} layers in FP32")

    def model_files(self, recipe: Recipe) -> Path:
        return self._built[recipe]
