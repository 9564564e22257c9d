"""``evaluation_report``: ``aiida-deeph report`` as a calcfunction (model + DFT HamiltonianData -> files + Dict).

Inputs: ``model`` (DeepHModelData), ``parameters`` (Dict: the :class:`~aiida_deeph.analysis.report.ReportConfig`
fields, e.g. ``{"max_properties": 6, "optics_mesh": [8, 8, 8]}``; ``split`` defaults to ``all``) and any
number of HamiltonianData as keyword inputs: ``eval__<label>`` are evaluated, ``train__<label>`` give the
per-pair training counts. Outputs: ``report`` (Dict: report.json), one SinglefileData per figure (link
label from its file name, e.g. ``fig2a_per_element_png``) and ``predictions`` (predictions.h5). Runs where
AiiDA runs (the daemon's machine, CPU unless ``device`` is set); bad input gives exit code 300.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from aiida_deeph.data.hamiltonian import HamiltonianData
from aiida_deeph.data.model import DeepHModelData

EXIT_BAD_INPUT = 300


def _write(nodes: dict, path: Path) -> None:
    from aiida_deeph.core.packed import write_packed

    write_packed(path, ((label, node.get_packed()) for label, node in sorted(nodes.items())))


@calcfunction
def evaluation_report(model: DeepHModelData, parameters: orm.Dict, **hamiltonians):
    """The paper's evaluation of ``model`` on the ``eval__*`` HamiltonianData (see the module docstring)."""
    from aiida_deeph.analysis.report import ReportConfig, ReportError, clean_json, make_report

    evaluated = {k[len("eval__"):]: v for k, v in hamiltonians.items() if k.startswith("eval__")}
    training = {k[len("train__"):]: v for k, v in hamiltonians.items() if k.startswith("train__")}
    other = sorted(set(hamiltonians) - {f"eval__{k}" for k in evaluated} - {f"train__{k}" for k in training})
    if other or not evaluated:
        return ExitCode(EXIT_BAD_INPUT, "give the structures to evaluate as eval__<label> (and the training "
                                        f"structures as train__<label>) HamiltonianData inputs; got {other or 'none'}")
    bad = [k for k, v in hamiltonians.items() if not isinstance(v, HamiltonianData)]
    if bad:
        return ExitCode(EXIT_BAD_INPUT, f"inputs {', '.join(bad)} are not HamiltonianData")
    params = dict(parameters.get_dict())
    params.setdefault("split", "all")
    try:
        config = ReportConfig(**{k: tuple(v) if k in ("ranks", "optics_mesh") and v is not None else v
                                 for k, v in params.items()})
    except TypeError as exc:
        return ExitCode(EXIT_BAD_INPUT, f"parameters: {exc}")
    with tempfile.TemporaryDirectory(prefix="aiida-deeph-report-") as tmp:
        tmp = Path(tmp)
        model_dir = model.export(tmp / "model")
        _write(evaluated, tmp / "eval.h5")
        train = None
        if training:
            _write(training, tmp / "train.h5")
            train = [tmp / "train.h5"]
        try:
            report = make_report(model_dir, [tmp / "eval.h5"], tmp / "out", train_data=train, config=config,
                                 log=None)
        except (ReportError, ValueError) as exc:
            return ExitCode(EXIT_BAD_INPUT, f"cannot make the report: {str(exc).splitlines()[0]}")
        for key in ("model", "data"):
            report.pop(key, None)
        report["model_uuid"] = model.uuid
        outputs = {"report": orm.Dict(clean_json(report))}
        for png in sorted((tmp / "out").glob("*.png")):
            label = re.sub(r"[^A-Za-z0-9_]", "_", png.name)
            outputs[label] = orm.SinglefileData(png, filename=png.name)
        outputs["predictions"] = orm.SinglefileData(tmp / "out" / "predictions.h5", filename="predictions.h5")
    return outputs
