"""The optimization pipeline: one fp32 ONNX model in, measured and accuracy-gated variants out.

Every variant is built into a scratch directory inside the store, measured against the fp32
source on the eval set, and published only if its accuracy drop, in the statistic the settings
gate on (the mean, p5 or min: accuracy.py), is within the limit. The version directory appears
in the store at once and complete (a rename), or not at all.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from .. import crypto, signing
from ..crypto import read_key
from ..manifest import Manifest, Variant
from ..store import MANIFEST_FILE, from_onnx_file, sha256_file
from .accuracy import Metric, Scores, Statistic, scores
from .datasets import Dataset, load_dataset
from .fp16 import convert_fp16
from .fp32 import optimize_graph
from .measure import measure, outputs_on, session
from .quantize import quantize_int8_dynamic, quantize_int8_static
from .report import write_report
from .results import Outcome, Result
from .settings import OptimizeError, OptimizeSettings, VariantKind


# Called as each step starts: (stage, variant).
Progress = Callable[[str, str], None]


def default_variants(model: Path, calibration: bool, train: bool = False) -> tuple[VariantKind, ...]:
    """Static int8 for convolutional models (with a calibration set), dynamic int8 otherwise;
    pruned and distilled when there is a training set."""
    ops = {node.op_type for node in onnx.load(str(model), load_external_data=False).graph.node}
    if "Conv" in ops:
        int8 = (VariantKind.INT8_STATIC,) if calibration else ()
    else:
        int8 = (VariantKind.INT8_DYNAMIC,)
    trained = (VariantKind.PRUNED, VariantKind.DISTILLED) if train else ()
    return (VariantKind.FP32, VariantKind.FP16, *int8, *trained)


def variant_kinds(settings: OptimizeSettings) -> tuple[VariantKind, ...]:
    """The variants a run builds: those asked for, or the defaults for the model's kind."""
    return settings.variants or default_variants(settings.model, settings.calibration is not None, settings.train is not None)


def optimize(settings: OptimizeSettings, progress: Progress = lambda stage, variant: None) -> Result:
    if settings.expect_sha256 and (digest := sha256_file(settings.model)) != settings.expect_sha256:
        raise OptimizeError(f"{settings.model} has sha256 {digest}, expected {settings.expect_sha256}: refusing another file")
    source = from_onnx_file(settings.model, name=settings.name, version=settings.version).manifest
    target = settings.store / settings.name / settings.version
    if target.exists() and not settings.force:
        raise OptimizeError(f"{target} already exists; pass --force to replace it")
    kinds = variant_kinds(settings)
    if VariantKind.INT8_STATIC in kinds and settings.calibration is None:
        raise OptimizeError("variant int8-static needs a calibration set (--calibration)")
    if VariantKind.DISTILLED in kinds and settings.train is None and settings.calibration is None:
        raise OptimizeError("variant distilled needs data to train on (--train or --calibration)")
    output = settings.output or source.outputs[0].name
    if output not in [spec.name for spec in source.outputs]:
        raise OptimizeError(f"output {output!r} is not one of the model's {[spec.name for spec in source.outputs]}")
    key = read_key(settings.encrypt_key) if settings.encrypt_key else None  # also reads encrypted captures
    eval_set = load_dataset(settings.eval, source, key)
    calibration = load_dataset(settings.calibration, source, key) if settings.calibration else None
    train = load_dataset(settings.train, source, key) if settings.train else None

    progress("reference", "fp32 source")
    reference = outputs_on(session(settings.model), eval_set, output)
    reference_scores = scores(settings.metric, reference, reference, eval_set.labels)

    settings.store.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{settings.name}-{settings.version}-", dir=settings.store))
    scratch.chmod(0o755)  # mkdtemp's 0700 would keep replicas running as another user out
    try:
        outcomes = []
        for kind in kinds:
            progress("build", kind.value)
            path = scratch / f"{kind.value}.onnx"
            try:
                _build(kind, settings, source, calibration, train, path)
            except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is reported, not fatal
                outcomes.append(Outcome(kind, False, f"build failed: {type(exc).__name__}: {exc}"))
                continue
            progress("measure", kind.value)
            outcomes.append(_gate(kind, path, settings, eval_set, output, reference, reference_scores))
        for outcome in outcomes:
            if not outcome.published:
                (scratch / f"{outcome.kind.value}.onnx").unlink(missing_ok=True)
        manifest = _manifest(source, outcomes, scratch, key)
        (scratch / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n")
        result = Result(
            manifest, target, reference_scores.mean, outcomes,
            reference_scores.statistic(Statistic.P5), reference_scores.statistic(Statistic.MIN),
        )
        write_report(result, settings, scratch)
        if settings.sign_key:
            signing.sign(scratch, settings.sign_key)
        _move_into_place(scratch, target)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build(
    kind: VariantKind,
    settings: OptimizeSettings,
    signature: Manifest,
    calibration: Dataset | None,
    train: Dataset | None,
    path: Path,
) -> None:
    if kind is VariantKind.FP32:
        optimize_graph(settings.model, path)
    elif kind is VariantKind.FP16:
        convert_fp16(settings.model, path)
    elif kind is VariantKind.INT8_DYNAMIC:
        quantize_int8_dynamic(settings.model, path, settings.static.per_channel)
    elif kind is VariantKind.INT8_STATIC:
        assert calibration is not None
        quantize_int8_static(settings.model, path, calibration, settings.static)
    else:
        try:  # torch comes with the `train` extra only
            from .distill import distill
            from .prune import prune
        except ImportError as exc:
            raise RuntimeError(f"{kind.value} needs the train extra: pip install 'quiver[train]' ({exc})") from exc
        if kind is VariantKind.PRUNED:
            prune(settings.model, path, signature, settings.prune_ratio, train, settings.training)
        else:
            data = train or calibration
            assert data is not None
            classifier = settings.metric is Metric.TOP1
            distill(settings.model, path, signature, data, settings.training, settings.student_width, settings.student, classifier)


def _gate(
    kind: VariantKind, path: Path, settings: OptimizeSettings, eval_set: Dataset, output: str, reference, reference_scores: Scores
) -> Outcome:
    size = path.stat().st_size
    gate = settings.gate
    try:
        metrics = measure(path, eval_set, output, settings.metric, reference, reference_scores, gate, settings.speed)
    except Exception as exc:  # noqa: BLE001 - a variant that does not run is not published
        return Outcome(kind, False, f"does not run: {type(exc).__name__}: {exc}", size)
    drop = metrics.drop(gate.value)
    # The reason names the statistic: a p5 refusal of a variant whose mean is fine must say so.
    over = "" if gate is Statistic.MEAN else f" (over {'classes' if metrics.tail_unit == 'class' else 'examples'})"
    if drop > settings.max_accuracy_drop:
        return Outcome(kind, False, f"{gate.value} drop {drop:.4f} > {settings.max_accuracy_drop}{over}", size, metrics)
    return Outcome(kind, True, f"{gate.value} drop {drop:.4f} ≤ {settings.max_accuracy_drop}{over}", size, metrics)


def _manifest(source: Manifest, outcomes: list[Outcome], directory: Path, key: bytes | None) -> Manifest:
    variants = []
    for outcome in outcomes:
        if not outcome.published:
            continue
        file = _publish(directory, source, outcome.kind.value, key)
        variants.append(
            Variant(
                name=outcome.kind.value,
                precision=outcome.kind.precision,
                file=file,
                sha256=sha256_file(directory / file),
                pool=outcome.kind.device.value,
                device=outcome.kind.device,
                metrics=outcome.metrics,
                encryption=crypto.ALGORITHM if key else None,
            )
        )
    if not variants:
        reasons = "; ".join(f"{o.kind.value}: {o.reason}" for o in outcomes)
        raise OptimizeError(f"no variant passed the gate, nothing published ({reasons})")
    names = [variant.name for variant in variants]
    default = "fp32" if "fp32" in names else max(variants, key=lambda v: v.metrics.accuracy).name
    return Manifest(
        name=source.name,
        version=source.version,
        inputs=source.inputs,
        outputs=source.outputs,
        variants=variants,
        default_variant=default,
    )


def _publish(directory: Path, source: Manifest, variant: str, key: bytes | None) -> str:
    """The variant's file name in the version directory, encrypted in place when there is a key."""
    plain = directory / f"{variant}.onnx"
    if key is None:
        return plain.name
    sealed = plain.with_name(plain.name + ".enc")
    sealed.write_bytes(crypto.encrypt(plain.read_bytes(), key, crypto.associated_data(source.name, source.version, variant)))
    plain.unlink()
    return sealed.name


def _move_into_place(scratch: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # --force: swap the old version out, then drop it
        old = scratch.with_name(scratch.name + ".old")
        target.rename(old)
        scratch.rename(target)
        shutil.rmtree(old)
    else:
        scratch.rename(target)
