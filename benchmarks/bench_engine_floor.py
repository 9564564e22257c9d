"""Benchmark: aiida-core's own cost of the smallest equivalent of one database structure (no aiida-deeph code).

    python benchmarks/bench_engine_floor.py [--sizes 20] [--max-concurrent 8]

A parent WorkChain runs N BaseRestartWorkChains (at most M at a time, in batches), each wrapping aiida-core's
ArithmeticAddCalculation (a bash `echo $((x + y))` through the direct scheduler and the local transport): the
same process shape as the DatabaseWorkChain -> OpenmxBaseWorkChain -> OpenmxCalculation chain, with a trivial
input, output and parser. Same profile settings as bench_database.py (SQLite, no broker, run() in this process,
poll interval 1 s, no login shell, safe interval 0). Prints wall and this process's CPU time per item: the
floor that the database overhead per structure can be compared with.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_database import cpu_seconds, make_profile  # same profile settings and CPU measure


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[20])
    parser.add_argument("--max-concurrent", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    os.environ["AIIDA_PATH"] = str(tmp)

    make_profile(tmp, name="bench-floor")

    from aiida import orm
    from aiida.calculations.arithmetic.add import ArithmeticAddCalculation
    from aiida.engine import BaseRestartWorkChain, WorkChain, run_get_node, while_

    class AddBaseWorkChain(BaseRestartWorkChain):
        _process_class = ArithmeticAddCalculation

        @classmethod
        def define(cls, spec):
            super().define(spec)
            spec.expose_inputs(ArithmeticAddCalculation, namespace="add")
            spec.expose_outputs(ArithmeticAddCalculation)
            spec.outline(cls.setup, while_(cls.should_run_process)(cls.run_process, cls.inspect_process), cls.results)

        def setup(self):
            super().setup()
            from aiida.common import AttributeDict

            self.ctx.inputs = AttributeDict(self.exposed_inputs(ArithmeticAddCalculation, "add"))

    class ParentWorkChain(WorkChain):
        @classmethod
        def define(cls, spec):
            super().define(spec)
            spec.input("code", valid_type=orm.AbstractCode)
            spec.input("n", valid_type=orm.Int)
            spec.input("max_concurrent", valid_type=orm.Int)
            spec.outline(cls.setup, while_(cls.pending)(cls.submit_some, cls.collect))

        def setup(self):
            self.ctx.left = self.inputs.n.value
            self.ctx.i = 0

        def pending(self):
            return self.ctx.left > 0

        def submit_some(self):
            futures = {}
            for _ in range(min(self.inputs.max_concurrent.value, self.ctx.left)):
                builder = AddBaseWorkChain.get_builder()
                builder.add.code = self.inputs.code
                builder.add.x = orm.Int(self.ctx.i)
                builder.add.y = orm.Int(1)
                futures[f"c{self.ctx.i}"] = self.submit(builder)
                self.ctx.i += 1
                self.ctx.left -= 1
            return self.to_context(**futures)

        def collect(self):
            pass

    # the classes live in __main__: make them importable for the checkpoints
    sys.modules["__main__"].AddBaseWorkChain = AddBaseWorkChain
    sys.modules["__main__"].ParentWorkChain = ParentWorkChain

    computer = orm.Computer(label="localhost", hostname="localhost", transport_type="core.local",
                            scheduler_type="core.direct", workdir=str(tmp / "work")).store()
    computer.configure(use_login_shell=False, safe_interval=0.0)
    computer.set_minimum_job_poll_interval(0.0)
    code = orm.InstalledCode(label="bash", computer=computer, filepath_executable="/bin/bash",
                             default_calc_job_plugin="core.arithmetic.add").store()
    print("aiida-core floor: parent WorkChain -> BaseRestartWorkChain -> ArithmeticAddCalculation, run(), SQLite")
    print(f"{'N':>4s} {'wall s':>8s} {'wall/item':>10s} {'CPU/item':>9s} {'ok':>4s}")
    for n in args.sizes:
        t0, c0 = time.perf_counter(), cpu_seconds()
        _, node = run_get_node(ParentWorkChain, code=code, n=orm.Int(n), max_concurrent=orm.Int(args.max_concurrent))
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        ok = sum(1 for c in node.called if c.is_finished_ok)
        print(f"{n:4d} {wall:8.1f} {wall / n:10.2f} {cpu / n:9.2f} {ok:4d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
