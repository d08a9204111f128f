#!/usr/bin/env python3
"""Evidence that the models learn (issue #20): MQAR recall and convergence on Python source, every architecture
we ship, a hybrid when the configs support one, and a softmax-attention baseline (Llama, SDPA).

    PYTHONPATH=src python3 scripts/quality.py --mode smoke                 # CPU, about a minute on 2 cores
    PYTHONPATH=src python3 scripts/quality.py --mode gpu --parts mqar --jobs 7 --out runs/quality-gpu-mqar  # H200
    PYTHONPATH=src python3 scripts/quality.py --mode smoke --parts mqar --archs gla,llama --set mqar.steps=100
    PYTHONPATH=src python3 scripts/quality.py --mode smoke --parts mqar --archs gla,gla-conv \
        --variant 'gla-conv=gla:{"use_short_conv": true}'                     # an ablation: config fields changed

MQAR (src/linattn_models/bench/mqar.py): 2-layer models at each d_model, a learning-rate sweep per model (the best
rate by validation accuracy; test accuracy on sequences from another seed is reported). Convergence: the same
token budget, blocks and order for every architecture on held-out files of the built-in corpus (`stdlib`, the
training script's default) or, on GPU, the Python sources of the installed site-packages (`site-packages`).
--set PART.KEY=VALUE (JSON, else a string) overrides one setting of a mode (`--list` shows them).
Writes quality.json, quality.md, mqar_accuracy.png, convergence.png under --out. Nothing is downloaded.

--jobs N (N > 1): the architectures run in N child processes of this script at once (one --archs NAME each,
--out OUT/parts/NAME, its progress in OUT/parts/NAME.log and on stderr prefixed [NAME]); their quality.json files
are merged into the same four outputs under OUT, after each child ends and when this process gets SIGTERM or
Ctrl-C (it stops the children first). A child that fails or is killed is listed in `skipped` with its exit status
and last stderr line; the runs it saved before that (its quality.json is rewritten after every run) are merged.
tokens/s measured with --jobs > 1 come from processes sharing the device: not clean speed numbers (quality.md says
so). Each child gathers the convergence corpus itself and gets --threads, else the cores divided by N.
"""
import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout without install
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from linattn_models.bench import quality, report  # noqa: E402

MODES = {
    # CPU smoke: every architecture, one rate, tiny shapes; the point is that the pipeline runs end to end
    "smoke": dict(
        mqar=dict(vocab=8192, d_models=[64], layers=2, shapes=[[64, 4], [128, 8]], lrs=[3e-3], steps=30, batch=8,
                  eval_seqs=16, eval_batch=16, train_seed=0, valid_seed=1, test_seed=2),
        convergence=dict(corpus="stdlib", d_model=64, layers=2, block=64, batch=4, steps=12, lr=3e-3,
                         eval_every=4, eval_blocks=4, seed=0)),
    # H200 (NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0), 2026-12-02: `--parts mqar` at the
    # then 600 steps and rates 1e-3 / 3e-3 / 1e-2, as 7 processes in parallel (one per arch), ~25-40 s a run. 600
    # steps (77 k sequences) were far too short: the softmax baseline (llama) reached only 0.45 test accuracy on
    # 64x4, gla and retnet stayed at chance at every rate (loss 8.32 = ln 4096, a uniform guess over the values),
    # and 1e-2 was never the best rate. Hence 5x the steps (3000, 384 k sequences) and only the two lower rates.
    # Intended command: `--parts mqar --jobs 7` (one child process per arch, each 3 widths x 2 rates = 6 runs).
    # Extrapolated from that run, not measured: ~2-3.5 min a run, ~12-20 min an arch, likely more than a 10-minute
    # command limit; a SIGTERM then merges the runs finished so far (split mqar.d_models over two commands, each
    # its own --out, to get them all). Convergence, not run yet (an estimate): 7 x 400 steps of 32 x 512 tokens
    # (6.6 M tokens each, ~5 min) on the site-packages corpus.
    "gpu": dict(
        mqar=dict(vocab=8192, d_models=[64, 128, 256], layers=2, shapes=[[64, 4], [128, 8], [256, 16], [512, 64]],
                  lrs=[1e-3, 3e-3], steps=3000, batch=128, eval_seqs=512, eval_batch=128,
                  train_seed=0, valid_seed=1, test_seed=2),
        convergence=dict(corpus="site-packages", d_model=256, layers=4, block=512, batch=32, steps=400, lr=2e-3,
                         eval_every=40, eval_blocks=64, seed=0)),
}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="smoke")
    ap.add_argument("--parts", default="mqar,convergence", help="comma-separated: mqar, convergence")
    ap.add_argument("--archs", default=None, help=f"comma-separated subset of {','.join(e[0] for e in quality.ARCHS)}")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--out", default=str(ROOT / "runs" / "quality"), help="output folder")
    ap.add_argument("--set", action="append", default=[], metavar="PART.KEY=VALUE", help="override a setting")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads (0: on CPU the cores other processes leave idle, on GPU torch's default)")
    ap.add_argument("--jobs", type=int, default=1, help="architectures run at once, each in a child process")
    ap.add_argument("--list", action="store_true", help="print the mode's settings and exit")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=BASE:JSON",
                    help="one more architecture to run: BASE's entry with these config fields, e.g. "
                         "'gla-conv=gla:{\"use_short_conv\": true}' (then --archs gla-conv, or all)")
    a = ap.parse_args(argv)
    for item in a.variant:
        try:
            add_variant(item)
        except ValueError as e:
            ap.error(f"--variant {item}: {e}")
    a.parts = [p for p in a.parts.split(",") if p]
    if not a.parts or set(a.parts) - {"mqar", "convergence"}:
        ap.error(f"--parts {','.join(a.parts)}: pick from mqar, convergence")
    settings = copy.deepcopy(MODES[a.mode])
    for item in a.set:
        key, _, value = item.partition("=")
        part, _, name = key.partition(".")
        if part not in settings or name not in settings[part]:
            ap.error(f"--set {item}: no such setting (--list shows them)")
        try:
            settings[part][name] = json.loads(value)
        except json.JSONDecodeError:
            settings[part][name] = value
    a.settings = settings
    if a.jobs < 1:
        ap.error(f"--jobs {a.jobs}: at least 1")
    try:
        a.entries, a.skipped = quality.select_archs(a.archs.split(",") if a.archs else None)
    except ValueError as e:
        ap.error(f"--archs: {e}")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible")
    return a


def add_variant(item):
    """Append --variant NAME=BASE:JSON to quality.ARCHS: BASE's arch and fields, updated with the JSON object's."""
    name, eq, rest = item.partition("=")
    base, colon, fields = rest.partition(":")
    entries = {e[0]: e for e in quality.ARCHS}
    if not eq or not name or not colon:
        raise ValueError("expected NAME=BASE:JSON")
    if name in entries:
        raise ValueError(f"{name} is taken; known: {', '.join(entries)}")
    if base not in entries:
        raise ValueError(f"no architecture {base}; known: {', '.join(entries)}")
    try:
        extra = json.loads(fields)
    except json.JSONDecodeError as e:
        raise ValueError(f"the fields are not JSON ({e})") from None
    if not isinstance(extra, dict) or entries[base][1] == "llama":
        raise ValueError("the fields must be a JSON object, for one of our architectures (not llama)")
    quality.ARCHS.append((name, entries[base][1], {**entries[base][2], **extra}))


def write_outputs(out, result):
    """quality.json, the PNGs of the parts with results, quality.md; returns the markdown. The one writer of a
    single-process run and of the --jobs merge."""
    report.write_json(out / "quality.json", result)
    if result.get("mqar", {}).get("best"):
        report.plot_mqar(result["mqar"]["best"], out / "mqar_accuracy.png")
    conv = result.get("convergence") or {}
    if conv.get("data"):
        report.plot_convergence(conv["runs"], conv["data"], out / "convergence.png")
    md = report.markdown(result)
    (out / "quality.md").write_text(md + "\n")
    return md


def settings_of(a, archs, jobs=1):
    return {"mode": a.mode, "parts": a.parts, "archs": archs, "jobs": jobs, **{p: a.settings[p] for p in a.parts}}


def main(argv=None):
    a = parse_args(argv)
    if a.list:
        print(json.dumps(a.settings, indent=1))
        return 0
    log = lambda *m: print(*m, file=sys.stderr, flush=True)  # noqa: E731  progress on stderr, tables on stdout
    if a.device == "cpu" or a.threads:  # oversubscribed OpenMP threads make a shared CPU several times slower
        from linattn_models.cli.trainer import set_cpu_threads
        set_cpu_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if min(a.jobs, len(a.entries)) > 1:
        return run_jobs(a, out, log)
    t0 = time.perf_counter()
    result = dict(settings=settings_of(a, [e[0] for e in a.entries]), machine=report.machine(a.device),
                  skipped=a.skipped, seconds=0.0)

    def save(*_):
        result["seconds"] = time.perf_counter() - t0
        report.write_json(out / "quality.json", result)
    for name, why in a.skipped.items():
        log(f"skipping {name}: {why}")
    if "mqar" in a.parts:
        log(f"== MQAR on {a.device}: {json.dumps(a.settings['mqar'])}")
        runs = []
        result["mqar"] = dict(runs=runs, best=[])
        _, best = quality.run_mqar(a.entries, a.settings["mqar"], a.device, log,
                                   on_run=lambda r: (runs.append(r), save()))
        result["mqar"]["best"] = best
        if "convergence" in a.parts:  # MQAR's plot and tables now, in case the convergence part is cut short
            write_outputs(out, result)
    if "convergence" in a.parts:
        log(f"== convergence on {a.device}: {json.dumps(a.settings['convergence'])}")
        runs = []
        result["convergence"] = dict(runs=runs, data={})
        _, info = quality.run_convergence(a.entries, a.settings["convergence"], a.device, log,
                                          on_run=lambda r: (runs.append(r), save()))
        result["convergence"]["data"] = info
    result["seconds"] = time.perf_counter() - t0
    md = write_outputs(out, result)
    print(md, flush=True)
    log(f"wrote {out}/quality.json, quality.md and the PNGs ({result['seconds']:.0f} s)")
    return 0


# ------------------------------------------------------------------------------------------------------- --jobs

class Child:
    """One architecture's child process: its stderr goes to OUT/parts/NAME.log and, prefixed, to ours."""

    def __init__(self, a, name, parts_dir, threads):
        self.name, self.out = name, parts_dir / name
        (self.out / "quality.json").unlink(missing_ok=True)  # an earlier run's results must not be merged as ours
        cmd = [sys.executable, str(Path(__file__).resolve()), "--mode", a.mode, "--parts", ",".join(a.parts),
               "--device", a.device, "--archs", name, "--out", str(self.out), "--threads", str(threads),
               *[x for item in a.set for x in ("--set", item)], *[x for item in a.variant for x in ("--variant", item)]]
        self.log = open(parts_dir / f"{name}.log", "w")
        self.last = ""
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()
            if line.strip():
                self.last = " ".join(line.split())
            print(f"[{self.name}] {line}", end="", file=sys.stderr, flush=True)

    def finish(self):
        """None when the child succeeded, else why it did not (exit status, its last stderr line, the log)."""
        self.reader.join(timeout=10)
        self.log.close()
        rc = self.proc.returncode
        if rc == 0:
            return None
        how = f"exit code {rc}"
        if rc < 0:
            try:
                how = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                how = f"killed by signal {-rc}"
        return f"child failed ({how}): {self.last[:300] or 'no stderr'}; log parts/{self.name}.log"


def saved(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or unreadable
        return None


def merge(a, parts_dir, started, failed, running, seconds):
    """One result from the started children's quality.json files, shaped as a single-process run's (every arch
    in settings; a failed child's reason in `skipped`; `running`: the children not ended yet)."""
    names = [e[0] for e in a.entries]
    result = dict(settings=settings_of(a, names, min(a.jobs, len(names))), machine=None, skipped=dict(a.skipped),
                  seconds=seconds)
    mqar_runs, conv_runs, info = [], [], {}
    for name in names:
        got = saved(parts_dir / name / "quality.json") if name in started else None
        if name in failed:
            result["skipped"][name] = failed[name]
        elif got is None and name in started and name not in running:
            result["skipped"][name] = "the child exited 0 but wrote no quality.json"
        if got is None:
            continue
        result["machine"] = result["machine"] or {**got["machine"], "argv": sys.argv[1:]}
        for part in a.parts:  # the child's copy: run_convergence adds the tokenizer's vocab
            result["settings"][part] = got["settings"].get(part, result["settings"][part])
        mqar_runs += got.get("mqar", {}).get("runs", [])
        conv_runs += got.get("convergence", {}).get("runs", [])
        info = info or got.get("convergence", {}).get("data") or {}
    result["machine"] = result["machine"] or report.machine(a.device)
    if running:
        result["running"] = sorted(running)
    if "mqar" in a.parts:
        result["mqar"] = dict(runs=mqar_runs, best=quality.best_of_sweep(mqar_runs))
    if "convergence" in a.parts:
        result["convergence"] = dict(runs=conv_runs, data=info)
    return result


class Stop(Exception):
    pass


def _stop(signum, _frame):
    raise Stop(signal.Signals(signum).name)


def run_jobs(a, out, log):
    """Run the architectures in child processes, min(--jobs, archs) at once, merging after each one ends."""
    t0 = time.perf_counter()
    parts_dir = out / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    names = [e[0] for e in a.entries]
    jobs = min(a.jobs, len(names))
    if a.threads:
        threads = a.threads
    else:  # the cores shared out, so that the children do not oversubscribe them
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // jobs)
    for name, why in a.skipped.items():
        log(f"skipping {name}: {why}")
    log(f"== {len(names)} architectures, {jobs} child processes at once on {a.device} ({threads} CPU threads "
        f"each); logs in {parts_dir}")
    started, running, failed, pending = set(), {}, {}, list(names)
    previous = signal.signal(signal.SIGTERM, _stop)
    stopped = None
    try:
        while pending or running:
            while pending and len(running) < jobs:
                child = Child(a, pending.pop(0), parts_dir, threads)
                started.add(child.name)
                running[child.name] = child
            time.sleep(0.5)
            ended = [c for c in running.values() if c.proc.poll() is not None]
            for c in ended:
                del running[c.name]
                why = c.finish()
                if why:
                    failed[c.name] = why
                log(f"{c.name}: {why or 'done'} ({time.perf_counter() - t0:.0f} s)")
            if ended:
                write_outputs(out, merge(a, parts_dir, started, failed, running, time.perf_counter() - t0))
    except (Stop, KeyboardInterrupt) as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
        stopped = str(e) or "KeyboardInterrupt"
        log(f"stopping on {stopped}: ending the {len(running)} running children")
        for c in running.values():
            c.proc.terminate()
        for c in running.values():
            try:
                c.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
            why = c.finish()
            if why:
                failed[c.name] = f"stopped, this process got {stopped}: {why}"
        for name in pending:
            failed[name] = f"not started: this process got {stopped}"
        running = {}
    finally:
        signal.signal(signal.SIGTERM, previous)
    result = merge(a, parts_dir, started, failed, running, time.perf_counter() - t0)
    md = write_outputs(out, result)
    print(md, flush=True)
    log(f"wrote {out}/quality.json, quality.md and the PNGs, merged from {parts_dir} ({result['seconds']:.0f} s)")
    return 1 if stopped or failed else 0


if __name__ == "__main__":
    sys.exit(main())
