"""`mentor bench speed` and `bench pool`: ratios measured inside one run, so machine noise cancels."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError


def best_of(fn, repeats: int = 3) -> float:
    """Fastest of `repeats` wall-clock timings of fn(): the least disturbed by other load."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine_info() -> dict:
    import os
    import torch
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def pool_speed(*, n: int = 4000, workers: int = 2, batch_size: int = 256, n_labeled: int = 500,
               address: str | None = None, work_dir: Path = Path("bench-out/pool"),
               json_out: Path | None = None) -> dict:
    """Seconds to label `n` fortunes with the MiniLM teacher (a real, compute-bound encoder), one
    call at a time here versus on a Ray pool of `workers` actors, each into a fresh store; the two
    stores must hold the same outputs. Starting the pool is timed apart (paid once per run)."""
    import shutil
    import torch
    from ..data import load_dataset
    from ..teachers.pools import RayTeacherPool
    from ..store import TeacherStore
    from ..teachers import train_model_teacher
    data = load_dataset("fortunes")
    idx = np.random.default_rng(0).permutation(len(data.ids))
    if n_labeled + n > len(idx):
        raise ConfigError(f"fortunes has {len(idx)} examples; n_labeled + n = {n_labeled + n} is too many.")
    lab, pool = idx[:n_labeled], idx[n_labeled:n_labeled + n]
    teacher = train_model_teacher("minilm", data.features[lab], data.labels[lab], n_classes=data.n_classes,
                                  data_kind="text", seed=0)
    batches = [(data.ids[pool[i:i + batch_size]], data.features[pool[i:i + batch_size]])
               for i in range(0, n, batch_size)]

    def fresh(name):
        shutil.rmtree(Path(work_dir) / name, ignore_errors=True)
        return TeacherStore(Path(work_dir) / name, fingerprint=teacher.fingerprint, n_classes=data.n_classes)

    teacher.predict_proba(data.features[lab[:8]])  # load the encoder before timing
    res: dict = {"n": n, "workers": workers, "batch_size": batch_size, "teacher": "minilm (fortunes)",
                 "torch_threads_here": torch.get_num_threads()}
    here, t0 = fresh("here"), time.perf_counter()
    here.label(teacher, batches)
    res["seconds_here"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with RayTeacherPool(teacher, workers, address=address) as ray_pool:
        # one small call per actor loads its encoder, as the call above did here
        for f in [ray_pool.submit(data.features[lab[:8]], data.ids[lab[:8]]) for _ in range(workers)]:
            f.result()
        res["seconds_pool_start"] = time.perf_counter() - t0  # actors started and warm
        res["pool"] = ray_pool.describe()
        on_ray, t0 = fresh("ray"), time.perf_counter()
        on_ray.label(teacher, batches, pool=ray_pool)
        res["seconds_ray"] = time.perf_counter() - t0
    ids = data.ids[pool]
    res["max_abs_difference"] = float(np.abs(here.read(ids) - on_ray.read(ids)).max())
    res["speedup_labeling"] = res["seconds_here"] / res["seconds_ray"]
    res["speedup_with_pool_start"] = res["seconds_here"] / (res["seconds_ray"] + res["seconds_pool_start"])
    res["machine"] = machine_info()
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(res, indent=2))
    return res


def speed(*, n: int = 20000, work_dir: Path = Path("bench-out/speed"), json_out: Path | None = None,
          repeats: int = 3, selection: bool = True, student_hidden: tuple[int, ...] = (128,),
          rounds: int = 7) -> dict:
    """Three ratios, each from the same examples in one process (best of `repeats`)."""
    import shutil
    import torch
    from ..data import load_dataset
    from ..methods import MethodContext, plan_method, train_with_plan
    from ..students.models import build_model
    from ..store import TeacherStore
    from ..students.train import TrainConfig, train_student

    try:
        ds = load_dataset("fashion-mnist")
    except Exception:  # the digits fallback keeps the benchmark runnable everywhere
        ds = load_dataset("digits")
    reps = -(-n // len(ds))
    feats = np.tile(ds.features, (reps, 1))[:n]
    ids = np.array([f"x{i}" for i in range(n)])
    # the built-in CNN, briefly trained on the first 1,000 examples: labeling cost depends only on
    # its shape, but methods that read the teacher's reliability on V (SLaM's k and α, the
    # weights) must see a teacher that is right and wrong like a real one, not a uniform guesser
    from ..teachers import train_model_teacher
    teacher = train_model_teacher("cnn", ds.features[:1000], ds.labels[:1000], n_classes=ds.n_classes,
                                  data_kind=ds.kind, image_shape=ds.image_shape, seed=0, epochs=20,
                                  min_steps=200, device="cpu")
    bs = 1024

    def bare():
        for s in range(0, n, bs):
            teacher.predict_proba(feats[s:s + bs])

    def stored():
        d = Path(work_dir) / "store"
        shutil.rmtree(d, ignore_errors=True)
        st = TeacherStore(d, fingerprint=teacher.fingerprint, n_classes=ds.n_classes)
        st.label(teacher, ((ids[s:s + bs], feats[s:s + bs]) for s in range(0, n, bs)))
        return st

    def best(fn):
        return best_of(fn, repeats)

    t_bare, t_store = best(bare), best(stored)
    store = stored()
    t_read_all = best(lambda: store.read(ids))
    t_iter = best(lambda: sum(len(b[0]) for b in store.iter_batches(8192)))
    probs = store.read(ids)

    # three epochs of plain CE on all n examples vs three of each distillation method on the same
    # examples; methods that read V get the first 1,000 examples (with their true labels) as V
    x = feats[:n].astype(np.float32)
    y = probs.argmax(1)
    labels = np.tile(ds.labels, reps)[:n]
    n_cls = ds.n_classes
    ctx = MethodContext(n_classes=n_cls, teacher_probs_pool=probs, teacher_probs_val=probs[:1000],
                        val_labels=labels[:1000], pool_features=x)

    def epoch(distill: bool, method: str = "vanilla-soft"):
        torch.manual_seed(0)
        model = build_model("mlp", in_features=x.shape[1], n_classes=n_cls, hidden=tuple(student_hidden))
        cfg = TrainConfig(epochs=3, min_steps=0, seed=0, device="cpu")
        if distill:
            plan = plan_method(method, ctx)  # set-up (fits on V) is not part of the step cost
            model = plan.student_wrapper(model) if plan.student_wrapper else model  # DHO's second head
            return train_with_plan(model, x[:0], y[:0], x, probs, plan, cfg).seconds
        return train_student(model, x, y, config=cfg).seconds

    # interleaved rounds (CE, then every method, repeated) and medians, so drift in the machine's
    # load hits every arm alike
    from ..methods import METHODS
    arms = ["ce"] + [m for m in sorted(METHODS) if m not in ("weighted-disagreement", "cleanlab-filter", "auto")]
    # (those train like vanilla/weighted/the chosen method per step; their extra cost is whole first passes or a fit)
    times: dict[str, list[float]] = {a: [] for a in arms}
    for _ in range(rounds):
        for a in arms:
            times[a].append(epoch(False) if a == "ce" else epoch(True, a))
    med = {a: float(np.median(v)) for a, v in times.items()}
    t_ce = med.pop("ce")
    method_ratios = {m: t / t_ce for m, t in med.items()}
    vs_vanilla = {m: t / med["vanilla-soft"] for m, t in med.items()}
    train_rate = n / t_ce
    slam_info = plan_method("slam", ctx).info  # what SLaM was timed with (k, α from the fits on V)
    result = {
        "n_examples": n, "dataset": ds.name, "teacher": "SmallCNN (built-in), trained on 1,000 examples", "teacher_batch": bs,
        "student_hidden": list(student_hidden), "rounds": rounds,
        "labeling_throughput_ratio_store_vs_bare": t_bare / t_store,
        "bare_teacher_examples_per_s": n / t_bare, "store_labeling_examples_per_s": n / t_store,
        "distill_step_cost_ratio_vs_ce": method_ratios,
        "step_cost_ratio_vs_vanilla_soft": vs_vanilla,
        "ce_training_examples_per_s": train_rate,
        "store_read_rows_per_s": n / t_read_all, "store_stream_rows_per_s": n / t_iter,
        "store_read_vs_training_consumption": (n / t_iter) / train_rate,
        "machine": machine_info(), "repeats": repeats,
        "teacher_accuracy_on_pool": float((probs.argmax(1) == labels).mean()),
        "slam_plan": {key: slam_info[key] for key in ("k", "alpha")},
    }
    if selection:
        from .active import selection_speed
        result["selection"] = selection_speed(n=1_000_000, n_classes=10)
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result
