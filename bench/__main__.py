"""``python -m bench``: run the benchmark scenarios and print one table.

Starts everything itself on 127.0.0.1 (signback, the bare baseline, the OKdokument
emulator, wrk, py-spy) and stops it again, also on Ctrl-C or a failure. A full run writes
docs/performance.md; ``--quick``/``--only``/``--no-profile`` runs write
/tmp/signback-bench-<time>.md instead (``--docs PATH`` chooses).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import load, profile, report, stores
from bench.procs import ROOT, Procs, terminate_on_sigterm
from bench.scenarios import SCENARIOS, Bench, Config, Sizes

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
INSTALL_HINT = (
    "wrk is not installed. The bench uses it as its load generator, in a separate process.\n"
    "Install it with:  apt-get install wrk   (Debian/Ubuntu, as root or with sudo)\n"
    "or let the bench do it:  python -m bench --install"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="signback's benchmark: intake, end to end, growth, memory, slow provider.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs and small stores (a smoke run)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help=f"run only these scenarios (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--install", action="store_true", help="install wrk with apt-get if it is missing"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SIGNBACK_BENCH_POSTGRES_URL", DEFAULT_POSTGRES),
        help="a PostgreSQL database the bench may create scratch databases next to "
        f"(default $SIGNBACK_BENCH_POSTGRES_URL or {DEFAULT_POSTGRES})",
    )
    parser.add_argument(
        "--docs", type=Path, default=None, help="where to write the markdown report"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="scratch directory (default: a new one in /tmp)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (databases, logs)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--code",
        type=Path,
        default=None,
        help="run signback (serve, worker) from this checkout instead of this one, for a"
        " before/after comparison in one sitting (e.g. a `git archive` of an older commit)",
    )
    return parser.parse_args(argv)


def install_wrk() -> bool:
    apt = shutil.which("apt-get")
    if apt is None:
        print("apt-get is not available here: install wrk with your package manager.")
        return False
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            print("installing wrk needs root (apt-get install wrk)")
            return False
        prefix = [sudo]
    print("installing wrk: apt-get update && apt-get install -y wrk", flush=True)
    subprocess.run([*prefix, apt, "update"], check=False)
    done = subprocess.run([*prefix, apt, "install", "-y", "wrk"], check=False)
    return done.returncode == 0 and load.find_wrk() is not None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk_binary = load.find_wrk()
    if wrk_binary is None and args.install:
        install_wrk()
        wrk_binary = load.find_wrk()
    if wrk_binary is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2

    only = list(dict.fromkeys(args.only or SCENARIOS))
    if args.no_profile and "profile" in only:
        only.remove("profile")
    partial = args.quick or args.only is not None or args.no_profile
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="signback-bench-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    scratch_report = Path(tempfile.gettempdir()) / f"signback-bench-{stamp}.md"
    docs = args.docs or (scratch_report if partial else ROOT / "docs/performance.md")

    pyspy = profile.find_pyspy()
    postgres = stores.postgres_version(args.postgres_url)
    config = Config(
        run_dir=run_dir,
        sizes=Sizes.quick() if args.quick else Sizes.full(),
        wrk=load.WrkOptions(wrk_binary, threads=args.threads, connections=args.connections),
        pyspy=pyspy,
        postgres_admin_url=args.postgres_url,
        postgres_version=postgres,
        quiet_wait_s=3.0 if args.quick else 120.0,
        retries=0 if args.quick else 1,
        chart_path=docs.with_name(f"{docs.stem}-backlog.svg"),
        code_root=args.code,
    )
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    procs = Procs(run_dir)
    bench = Bench(config, procs)
    bench.say(f"scratch directory {run_dir}; scenarios: {', '.join(only)}")
    failed: str | None = None
    with terminate_on_sigterm():
        try:
            for name in only:
                getattr(bench, f"scenario_{name}")()
        except KeyboardInterrupt:
            failed = "interrupted"
        except Exception as exc:
            failed = f"{type(exc).__name__}: {exc}"
        finally:
            procs.stop_all()
            bench.drop_postgres()
    if failed:
        bench.notes.append(f"The run stopped early: {failed}")
        print(f"\n*** the bench stopped early: {failed}", file=sys.stderr)

    elapsed = time.monotonic() - t0
    print()
    print(report.plain_table(bench.rows))
    for note in bench.notes:
        print(f"- {note}")
    for line in bench.cpu_notes:
        print(f"  cpu: {line}")
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    report.write_markdown(
        docs,
        command=command.strip(),
        started=started_at,
        elapsed_s=elapsed,
        machine_facts=report.machine(postgres=postgres, wrk=load.wrk_version(wrk_binary)),
        rows=bench.rows,
        notes=bench.notes,
        cpu=bench.cpu_notes,
        profiles=bench.profiles,
        run_dir=run_dir,
    )
    print(f"\nwritten: {docs}  ({elapsed / 60:.1f} minutes)")
    if args.keep or failed:
        print(f"scratch directory kept: {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
