"""`python -m harness.device_check`: the GPU figures of issue 26 in one run (scripts/device_check.sh, `make
device-check`), written with the card's name to one markdown file (reports/device_check.md):

1. the CUDA tests (the tests that skip without a device),
2. `python -m harness.bench --device cuda` (its own report, reports/bench_cuda.md; --quick when the full run would
   not fit the budget),
3. packed trials: the default study with --workers 1, 2 and 4 on the one GPU: trials per hour and the peak GPU
   memory of all its processes (nvidia-smi, polled every 0.2 s),
4. a 224 px study of an ImageNet backbone (torchvision resnet18 with random weights, model.weights = "none": nothing
   is downloaded) on a small ImageFolder this module writes with PIL (4 classes x 60 images of 256 x 320 px).

Every step has its own time limit, so the whole stays under 8 minutes; a step that fails or runs out of time is
written as such and the rest still runs (exit 1 at the end). Without CUDA it exits 2 at once, saying so. --dry-run
runs steps 3 and 4 on the CPU at toy sizes (seconds to minutes): it checks the plumbing, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BUDGET_S = 8 * 60
# seconds per step: at worst 50 + 150 + 45 (the full bench timed out, --quick after it) + 3 x 40 + 100 = 465 < 480
LIMITS = {"tests": 50, "bench": 150, "bench_quick": 45, "packed": 40, "study224": 100}
PACKED = (1, 2, 4)
PACKED_TRIALS = 8  # per --workers run: 8 default-study trials take ~20-40 s on a current GPU (estimate, unmeasured)
STUDY224 = ["data.source=\"imagefolder\"", "data.image_size=224", "model.name=\"resnet18\"", "model.weights=\"none\"",
            "train.epochs=2", "train.batch_size=32", "search.freeze_layers=[0, 5]", "search.unfreeze_epoch=[1, 2]",
            "shifts.selection=[\"gaussian_blur\"]", "shifts.test=[\"gaussian_noise\", \"contrast\"]",
            "shifts.severities=[1, 3, 5]", "shifts.eval_images=100", "study.replicates=1",
            "search.extend_baseline_grid=\"off\""]
DRY = {"PACKED_TRIALS": 2, "size": 32, "study": ["data.image_size=32", "train.epochs=1", "pretrain.epochs=1",
                                                 "data.labels_per_class=12", "model.name=\"resnet8\""]}


def make_folder(root: Path, classes: int = 4, per_class: int = 60, shape=(256, 320), seed: int = 0) -> Path:
    """An ImageFolder tree of JPEGs: per class a colour and a smooth random texture, so that a model can learn."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        tint = rng.uniform(0.2, 1.0, 3)
        for i in range(per_class):
            small = rng.uniform(0, 1, (8, 10, 3)) * 0.5 + tint * 0.5
            img = Image.fromarray((small * 255).astype(np.uint8)).resize(shape[::-1], Image.BILINEAR)
            img.save(folder / f"{i}.jpg", quality=90)
    return root


class GpuPeak:
    """The peak of nvidia-smi's memory.used (MiB, every process on the card) while it runs; None without nvidia-smi."""

    def __init__(self):
        self.peak, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            used = nvidia_smi("memory.used")
            if used and used.split()[0].isdigit():
                self.peak = max(self.peak or 0, int(used.split()[0]))
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def nvidia_smi(query: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def run(cmd: list[str], limit: float, cwd: Path) -> dict:
    """One command under a time limit: rc (124 when it ran out of time), wall seconds, the output's tail."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=limit)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    return {"cmd": " ".join(cmd), "rc": rc, "wall": time.perf_counter() - t0, "tail": out[-1500:]}


def study(argv: list[str], sets: list[str], limit: float, cwd: Path) -> dict:
    cmd = [sys.executable, "-m", "harness.study", "--no-report", *argv] + [a for s in sets for a in ("--set", s)]
    with GpuPeak() as gpu:
        r = run(cmd, limit, cwd)
    r["gpu_peak_mib"] = gpu.peak
    return r


def steps(out_dir: Path, dry: bool, device: str) -> list[tuple[str, dict]]:
    repo = Path(__file__).resolve().parent.parent
    n = DRY["PACKED_TRIALS"] if dry else PACKED_TRIALS
    extra = DRY["study"] if dry else []
    # a dry run checks the plumbing on a CPU that may be shared and busy: no time limit worth the name, and no more
    # workers than the harness allows on its cores
    limit = (lambda step: 20 * LIMITS[step]) if dry else LIMITS.get
    packed = tuple(w for w in PACKED if w <= (os.cpu_count() or 1)) if dry else PACKED
    done = []
    if not dry:
        done.append(("CUDA tests", run([sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda or host_trains",
                                        "tests/test_shifts.py", "tests/test_bench.py", "tests/test_uint8.py"],
                                       LIMITS["tests"], repo)))
        bench = run([sys.executable, "-m", "harness.bench", "--device", "cuda", "--out",
                     str(out_dir / "bench_cuda.md")], LIMITS["bench"], repo)
        if bench["rc"] == 124:  # the full bench did not fit: its --quick form still checks every part runs on CUDA
            bench = run([sys.executable, "-m", "harness.bench", "--quick", "--device", "cuda", "--out",
                         str(out_dir / "bench_cuda.md")], LIMITS["bench_quick"], repo)
            bench["note"] = f"the full bench ran past {LIMITS['bench']} s; this is --quick"
        done.append(("harness.bench --device cuda", bench))
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        tmp = Path(tmp)
        for w in packed:
            work = tmp / f"workers{w}"
            work.mkdir()
            r = study(["--study-name", f"packed-w{w}", "--n-trials", str(n), "--workers", str(w), "--device", device],
                      ["study.replicates=1", "study.pruner=\"none\"", "search.extend_baseline_grid=\"off\"", *extra],
                      limit("packed"), work)
            r["trials_per_hour"] = 3600 * n / r["wall"] if r["rc"] == 0 else None
            done.append((f"packed trials, --workers {w}", r))
        folder = make_folder(tmp / "images", per_class=12 if dry else 60)
        sets = STUDY224 + [f"data.path=\"{folder}\""] + (DRY["study"][:1] if dry else [])
        r = study(["--study-name", "imagefolder224", "--n-trials", "2" if dry else "4", "--device", device], sets,
                  limit("study224"), tmp)
        size = DRY["size"] if dry else 224
        done.append((f"{size} px resnet18 (random weights) on an ImageFolder of {len(list(folder.rglob('*.jpg')))} JPEGs",
                     r))
    return done


def render(done: list[tuple[str, dict]], card: str, dry: bool) -> str:
    lines = ["# Device check (issue 26)", "", f"- card: {card}", f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             f"- load average: {', '.join(f'{v:.2f}' for v in os.getloadavg())}"]
    if dry:
        lines.append("- **dry run on the CPU at toy sizes: these figures check the plumbing and mean nothing**")
    lines += ["", "| step | rc | wall s | trials/hour | peak GPU MiB | note |", "|---|---|---|---|---|---|"]
    for name, r in done:
        tph = f"{r['trials_per_hour']:.0f}" if r.get("trials_per_hour") else ""
        gpu = r.get("gpu_peak_mib") or ""
        note = r.get("note", "") or ("ran out of time" if r["rc"] == 124 else "")
        lines.append(f"| {name} | {r['rc']} | {r['wall']:.1f} | {tph} | {gpu} | {note} |")
    lines += ["", "## Commands and output tails", ""]
    for name, r in done:
        lines += [f"### {name}", "", f"`{r['cmd']}`", "", "```", r["tail"].strip()[-1200:], "```", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.device_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="reports/device_check.md")
    ap.add_argument("--dry-run", action="store_true", help="steps 3-4 on the CPU at toy sizes: checks the plumbing")
    args = ap.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(f"error: no CUDA device (torch.cuda.is_available() is False; torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}; nvidia-smi: {nvidia_smi('name') or 'not found'}). Run it on a GPU machine, or "
              f"--dry-run to check its CPU parts", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    card = nvidia_smi("name,memory.total,driver_version") or ("cpu (dry run)" if args.dry_run else "unknown")
    t0 = time.perf_counter()
    done = steps(out.parent, args.dry_run, "cpu" if args.dry_run else "cuda")
    out.write_text(render(done, card, args.dry_run))
    print(out.read_text())
    print(f"written: {out} ({time.perf_counter() - t0:.0f} s)")
    return 0 if all(r["rc"] == 0 for _, r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
