"""Run every bad input we know of through the real `mentor` CLI and write what it says.

    .venv/bin/python scripts/bad_inputs.py [--out docs/bad-input.md]

Each case is a config (and files) a user could plausibly write. The script checks that each
exits with status 2, prints one plain `error:` message and no traceback, and writes the table
of messages (docs/bad-input.md, linked from the README). A case that does not exit 2 cleanly is
reported as FAILED and makes the script exit 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

TOPICS = ["computers", "food", "sports", "medicine"]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def user_files(root: Path) -> dict:
    """Digits as a user brings them: string labels, a teacher file in the numeric class order."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    x, y = load_digits(return_X_y=True)
    ids = [f"img-{i:05d}" for i in range(len(y))]
    labels = [WORDS[v] if i < 900 else None for i, v in enumerate(y)]
    pq.write_table(pa.table({"id": ids, "pixels": [list(map(float, r / 16)) for r in x], "label": labels}),
                   root / "data.parquet")
    probs = LogisticRegression(max_iter=500).fit(x[:200] / 16, y[:200]).predict_proba(x / 16)
    pq.write_table(pa.table({"id": ids, "probs": [list(r) for r in probs]}), root / "teacher.parquet")
    nan = probs.copy()
    nan[7, 3] = np.nan
    pq.write_table(pa.table({"id": ids, "probs": [list(r) for r in nan]}), root / "teacher-nan.parquet")
    pq.write_table(pa.table({"id": ids[:1500], "probs": [list(r) for r in probs[:1500]]}),
                   root / "teacher-short.parquet")
    pq.write_table(pa.table({"id": ids, "probs": [[0.2, 0.3, 0.5]] * len(ids)}), root / "teacher-three.parquet")
    texts = [f"text number {i} about {TOPICS[i % 4]}" for i in range(40)]
    texts[33] = "   "
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(40)], "text": texts,
                             "label": [TOPICS[i % 4] for i in range(40)]}), root / "texts-empty.csv.parquet")
    import pyarrow.csv as pcsv
    pcsv.write_csv(pq.read_table(root / "texts-empty.csv.parquet"), root / "texts-empty.csv")
    (root / "empty.parquet").write_bytes(b"")
    (root / "empty.csv").write_bytes(b"")
    (root / "not-parquet.parquet").write_text("id,label\n1,2\n")
    (root / "a-file").write_text("not a folder")
    (root / "a-folder").mkdir()
    import torch
    torch.jit.script(torch.nn.Linear(64, 10)).save(str(root / "teacher.pt"))
    return {"seed": 0, "output_dir": "run", "data": {"path": "data.parquet", "classes": WORDS},
            "split": {"n_labeled": 100, "n_val": 200, "n_test": 300},
            "teacher": {"kind": "file", "path": "teacher.parquet"},
            "student": {"kind": "logistic"}, "train": {"epochs": 3, "min_steps": 0}}


def cases(good: dict) -> list[tuple[str, dict | None, list[str]]]:
    """(what the user did, config or None for an empty file, extra CLI arguments)."""
    def llm(**options):
        """Four fortunes topics labeled by an LLM teacher (SmolLM2 on this machine unless an endpoint is set)."""
        out = f"run-llm-{zlib.crc32(repr(sorted(options.items())).encode())}"  # one folder per case
        return {"seed": 0, "output_dir": out, "data": {"name": "fortunes", "options": {"topics": TOPICS}},
                "split": {"n_labeled": 8, "n_val": 8, "n_test": 4, "n_pool": 8},
                "teacher": {"kind": "llm", "llm": options}, "student": {"kind": "tfidf"}}

    def llm_file(path):
        return {**llm(), "output_dir": "run-llm-file", "data": {"path": path, "classes": TOPICS}}

    def with_(**changes):
        cfg = yaml.safe_load(yaml.safe_dump(good))
        for key, value in changes.items():
            node = cfg
            *parents, last = key.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            if value is _DROP:
                node.pop(last, None)
            else:
                node[last] = value
        return cfg
    return [
        ("empty config file", None, []),
        ("config names no data", {"method": "slam"}, []),
        ("misspelt key `split.n_labelled`", with_(split__n_labelled=50), []),
        ("unknown method", with_(method="slamm"), []),
        ("misspelt method option", with_(method="slam", method_options={"slam_k_rul": "fixed:2"}), []),
        ("method option for another method", with_(method_options={"min_val": 20}), []),
        ("method option out of range", with_(method="slam", method_options={"slam_alpha_floor": 2}), []),
        ("`split.n_val: true`", with_(split__n_val=True), []),
        ("negative epochs", with_(train__epochs=-3), []),
        ("`train.patience` without `train.select_on`", with_(train__patience=3), []),
        ("`train.select_on` with no V", with_(train__select_on="val_accuracy", split__n_val=0), []),
        ("training from disk with `cleanlab-filter` (it fits on the whole pool in memory)",
         with_(method="cleanlab-filter", train__data_path="stream"), []),
        ("training from disk with `auto` and a candidate that needs the pool in memory",
         with_(method="auto", method_options={"auto_candidates": ["labeled-only", "weighted-disagreement"]},
               train__data_path="stream"), []),
        ("negative learning rate", with_(train__lr=-0.1), []),
        ("`store.batch_size: 0`", with_(store={"batch_size": 0}), []),
        ("a CUDA device this machine lacks", with_(train__device="cuda:99"), []),
        ("unknown device name", with_(train__device="gpu"), []),
        ("`--set` into a value", good, ["--set", "seed.x=1"]),
        ("`--set` without `=`", good, ["--set", "seed"]),
        ("data file does not exist", with_(data__path="nope.parquet"), []),
        ("0-byte Parquet data file", with_(data__path="empty.parquet"), []),
        ("0-byte CSV data file", with_(data__path="empty.csv"), []),
        ("CSV text saved as .parquet", with_(data__path="not-parquet.parquet"), []),
        ("`output_dir` is a file", with_(output_dir="a-file"), []),
        ("`output_dir` cannot be written", with_(output_dir="/sys/mentor-run"), []),
        ("string labels, file teacher, no class order", with_(data__classes=_DROP), []),
        ("stated class order is not the teacher's", with_(data__classes=sorted(WORDS), output_dir="run-perm"), []),
        ("label missing from `data.classes`", with_(data__classes=WORDS[:9]), []),
        ("`teacher.classes` with a teacher trained here", with_(teacher={"kind": "mlp", "classes": WORDS}), []),
        ("TorchScript teacher without `trust_code`", with_(teacher={"kind": "torchscript", "path": "teacher.pt",
                                                                  "output": "logits", "classes": WORDS}), []),
        ("teacher file with NaN", with_(teacher__path="teacher-nan.parquet", output_dir="run-nan"), []),
        ("teacher file misses pool ids", with_(teacher__path="teacher-short.parquet", output_dir="run-short"), []),
        ("rerun into a folder of another config", good, ["--set", "seed=1"]),
        ("store written by another teacher", with_(teacher={"kind": "logistic"}, store={"path": "run/store"},
                                                  output_dir="run-other"), []),
        ("two teachers with the same name", with_(teacher=_DROP, teachers=[{"name": "t", "kind": "hgb"},
                                                                    {"name": "t", "kind": "logistic"}]), []),
        ("`teachers: []`", with_(teacher=_DROP, teachers=[]), []),
        ("one of several teachers gives other classes", with_(teacher=_DROP, output_dir="run-three", teachers=[
            {"name": "three", "kind": "file", "path": "teacher-three.parquet"},
            {"name": "trees", "kind": "hgb"}]), []),
        ("a shard of the store truncated", with_(store={"path": "broken-store"}, output_dir="run-broken"), []),
        ("`mentor store status` on a folder that is no store", None, ["STORE-STATUS"]),
        ("LLM teacher on image data", with_(teacher={"kind": "llm"}), []),
        ("LLM template without `{text}`", llm(template="{instructions}\nAnswer:"), []),
        ("two labels with the same verbalizer", llm(verbalizers={"food": "Computers!"}), []),
        ("verbalizer for a label the data lacks", llm(verbalizers={"cooking": "food"}), []),
        ("negative LLM price", llm(price_input=-1.0), []),
        ("negative spending cap", llm(max_spend=-5.0), []),
        ("LLM server unreachable", llm(endpoint={"url": "http://127.0.0.1:9/v1", "model": "m",
                                                 "max_retries": 0}), []),
        ("API key variable not set", llm(endpoint={"url": "http://127.0.0.1:9/v1", "model": "m",
                                                   "api_key_env": "MENTOR_NO_SUCH_KEY"}), []),
        ("key written into the endpoint URL", llm(endpoint={"url": "https://u:sk-123@api.example.com/v1",
                                                            "model": "m"}), []),
        ("endpoint and local model both set", llm(endpoint={"url": "http://127.0.0.1:9/v1", "model": "m"},
                                                 local={}), []),
        ("an empty text for the LLM", llm_file("texts-empty.csv"), []),
        # `mentor predict MODEL_DIR DATA` with the model folder `mentor train good.yaml` wrote (run/model)
        ("predict: new data with 60 features, model trained on 64", None, ["PREDICT", "run/model", "short.parquet"]),
        ("predict: text given to a model of numeric features", None, ["PREDICT", "run/model", "texts-empty.csv"]),
        ("predict: a run folder instead of its model folder", None, ["PREDICT", "run", "data.parquet"]),
        ("predict: model folder without mentor_student.json", None, ["PREDICT", "model-no-config", "data.parquet"]),
        ("predict: weights file is a pickle", None, ["PREDICT", "model-pickle", "data.parquet"]),
        ("predict: model folder of a newer format", None, ["PREDICT", "model-v99", "data.parquet"]),
        ("predict: weights do not match the config", None, ["PREDICT", "model-mismatch", "data.parquet"]),
        # `mentor cascade RUN_DIR` and `mentor serve MODEL_DIR` on the run `mentor train good.yaml` wrote
        ("cascade: a target above 1", None, ["CLI", "cascade", "@run", "--target", "1.5"]),
        ("cascade: a folder that is no run", None, ["CLI", "cascade", "@a-folder", "--target", "0.9"]),
        ("cascade: an unknown bound", None, ["CLI", "cascade", "@run", "--target", "0.9", "--bound", "hoeffding"]),
        ("serve: the run folder instead of its model folder", None, ["CLI", "serve", "@run"]),
        ("serve: --threshold without --cascade", None, ["CLI", "serve", "@run/model", "--threshold", "0.9"]),
        ("serve: --cascade before `mentor cascade` chose a threshold", None,
         ["CLI", "serve", "@run/model", "--cascade", "@run-nocascade"]),
        ("serve: --cascade with a file teacher (it cannot answer new inputs)", None,
         ["CLI", "serve", "@run/model", "--cascade", "@run", "--threshold", "0.9"]),
        ("serve: a port out of range", None, ["CLI", "serve", "@run/model", "--port", "70000"]),
        ("serve: --teacher-calls without --cascade", None, ["CLI", "serve", "@run/model", "--teacher-calls", "2"]),
        ("serve: --teacher-calls 0", None, ["CLI", "serve", "@run/model", "--cascade", "@run", "--teacher-calls", "0"]),
        ("serve: a negative --teacher-retry-after", None,
         ["CLI", "serve", "@run/model", "--cascade", "@run", "--teacher-retry-after", "-1"]),
        ("bench serve: an unknown arm", None, ["CLI", "bench", "serve", "@run", "--arms", "gpu"]),
    ]


def damaged_model_folders(root: Path) -> None:
    """Copies of run/model as a user might receive them: config gone, weights pickled, newer format,
    weights of another architecture than the config says."""
    import json
    import torch
    for name in ("model-no-config", "model-pickle", "model-v99", "model-mismatch"):
        shutil.copytree(root / "run" / "model", root / name)
    (root / "model-no-config" / "mentor_student.json").unlink()
    torch.save({"net.0.weight": torch.zeros(1)}, root / "model-pickle" / "model.safetensors")
    for name, change in (("model-v99", {"format_version": 99}), ("model-mismatch", None)):
        rec = json.loads((root / name / "mentor_student.json").read_text())
        if change:
            rec.update(change)
        else:
            rec["student"]["args"]["in_features"] = 32
        (root / name / "mentor_student.json").write_text(json.dumps(rec))


def bad_requests(root: Path) -> list[tuple[str, int, str]]:
    """Start `mentor serve run/model` and send it what clients get wrong; (request, status, message)."""
    import socket
    import time

    import httpx
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mentor.cli", "serve", str(root / "run" / "model"), "--port",
                             str(port), "--max-batch", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url, out = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mentor serve did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        row = [0.5] * 64
        for what, route, kw in [
                ("body is not JSON", "/predict", {"content": b"{not json"}),
                ("no `inputs`", "/predict", {"json": {"ids": ["a"]}}),
                ("`ids` and `inputs` of different lengths", "/predict", {"json": {"ids": ["a", "b"], "inputs": [row]}}),
                ("rows of the wrong width", "/predict", {"json": {"inputs": [[0.5] * 60]}}),
                ("text sent to a model of numeric features", "/predict", {"json": {"inputs": ["hello"]}}),
                ("a NaN in a row", "/predict", {"content": b'{"inputs": [[NaN' + b", 0.5" * 63 + b"]]}"}),
                ("more inputs than --max-batch", "/predict", {"json": {"inputs": [row] * 9}}),
                ("chat route on a model of numeric features", "/v1/chat/completions",
                 {"json": {"messages": [{"role": "user", "content": "hi"}]}})]:
            r = httpx.post(url + route, timeout=30, **kw)
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:300]
            print(f"{'ok    ' if 400 <= r.status_code < 500 else 'FAILED'} serve: {what}: {r.status_code} {message[:120]}")
            out.append((what, r.status_code, message))
        health = httpx.get(url + "/health", timeout=10)
        out.append(("`/health` after all of the above", health.status_code, "the service is still up"))
    finally:
        proc.terminate()
        proc.wait(20)
    return out


_DROP = object()


def _row(what: str, res: subprocess.CompletedProcess, tmp: str) -> tuple[str, str, str]:
    """(case, result, message); clean = exit 2, output on stderr only, ending in one `error:` line
    (warnings before it, e.g. about a quarantined shard, are part of the message)."""
    lines = res.stderr.strip().splitlines()
    clean = res.returncode == 2 and "Traceback" not in res.stderr and any(l.startswith("error: ") for l in lines)
    message = res.stderr.strip().replace(tmp, "…").replace("\n", " ")
    print(f"{'ok    ' if clean else 'FAILED'} {what}: {message[:160]}")
    return what, "exit 2" if clean else f"FAILED (exit {res.returncode})", message


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bad-input.md"))
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # model-loading progress bars are not part of a message
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    failed = 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        good = user_files(root)
        (root / "good.yaml").write_text(yaml.safe_dump(good))
        first = subprocess.run([sys.executable, "-m", "mentor.cli", "label", str(root / "good.yaml")],
                               capture_output=True, text=True)  # for the rerun case
        if first.returncode != 0:
            print(first.stderr)
            return 1
        trained = subprocess.run([sys.executable, "-m", "mentor.cli", "train", str(root / "good.yaml")],
                                 capture_output=True, text=True)  # writes run/model for the predict cases
        if trained.returncode != 0:
            print(trained.stderr)
            return 1
        damaged_model_folders(root)
        shutil.copytree(root / "run", root / "run-nocascade", ignore=shutil.ignore_patterns("store"))
        x = pq.read_table(root / "data.parquet").slice(0, 5)
        pq.write_table(pa.table({"id": x.column("id"), "pixels": [r[:60] for r in x.column("pixels").to_pylist()]}),
                       root / "short.parquet")
        shutil.copytree(root / "run" / "store", root / "broken-store")
        shard = sorted((root / "broken-store").glob("shard-*.parquet"))[0]
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        for i, (what, cfg, extra) in enumerate(cases(good)):
            if extra[:1] == ["PREDICT"]:
                res = subprocess.run([sys.executable, "-m", "mentor.cli", "predict", str(root / extra[1]),
                                      str(root / extra[2]), "--out", str(root / "pred.parquet")],
                                     capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
                rows.append(_row(what, res, tmp))
                failed += rows[-1][1] != "exit 2"
                continue
            if extra[:1] == ["CLI"]:
                argv = [str(root / a[1:]) if a.startswith("@") else a for a in extra[1:]]
                res = subprocess.run([sys.executable, "-m", "mentor.cli", *argv], capture_output=True, text=True,
                                     env={**os.environ, "COLUMNS": "200"}, timeout=600)
                rows.append(_row(what, res, tmp))
                failed += rows[-1][1] != "exit 2"
                continue
            if extra == ["STORE-STATUS"]:
                res = subprocess.run([sys.executable, "-m", "mentor.cli", "store", "status", str(root / "a-folder")],
                                     capture_output=True, text=True)
                rows.append(_row(what, res, tmp))
                failed += rows[-1][1] != "exit 2"
                continue
            path = root / f"case-{i}.yaml"
            if cfg is not None and "rerun" not in what and cfg.get("output_dir") == "run":
                cfg = {**cfg, "output_dir": f"run-{i}"}  # each case in a folder of its own
            path.write_text("" if cfg is None else yaml.safe_dump(cfg))
            res = subprocess.run([sys.executable, "-m", "mentor.cli", "label", str(path), *extra],
                                 capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
            rows.append(_row(what, res, tmp))
            failed += rows[-1][1] != "exit 2"
        served = bad_requests(root)
    lines = ["# Bad input and what mentor says", "",
             "Written by `python scripts/bad_inputs.py` from the real CLI (`mentor label CONFIG`, or `mentor predict "
             "MODEL_DIR DATA --out PRED.parquet` for the predict cases); every case must "
             "exit with status 2, one plain `error:` message (after any `warning:` lines) and no traceback. Temporary paths are shown as `…`.", "",
             "| what the user did | result | message |", "|---|---|---|"]
    lines += [f"| {w} | {r} | {m.replace('|', '¦')} |" for w, r, m in rows]
    lines += ["", "## Bad requests to `mentor serve`", "",
              "Sent with httpx to `mentor serve run/model` (the student alone) on 127.0.0.1 by the same script; each "
              "must get a 4xx JSON error naming the problem, and the service must still answer `/health` after all "
              "of them.", "", "| request | status | message |", "|---|---|---|"]
    lines += [f"| {w} | {c} | {m.replace('|', '¦')} |" for w, c, m in served]
    failed += sum(not (400 <= c < 500) for _, c, _ in served[:-1]) + (served[-1][1] != 200)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{len(rows) - failed} of {len(rows)} cases exit 2 cleanly; wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
