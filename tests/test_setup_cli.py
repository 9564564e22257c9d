"""`aiida-deeph setup openmx` / `setup openmx-replay`: create or report the code, keep DATA.PATH with it."""
import pytest
from aiida import orm

from aiida_deeph.cli.setup import setup_openmx_code, setup_replay_code


def test_setup_openmx_creates_then_reports(aiida_profile, aiida_localhost, tmp_path):
    exe = tmp_path / "openmx"
    exe.write_text("#!/bin/sh\n")
    data = tmp_path / "DFT_DATA19"
    (data / "PAO").mkdir(parents=True)
    (data / "VPS").mkdir()
    code, created = setup_openmx_code(str(exe), str(data), label="openmx-t", computer=aiida_localhost.label, mpiprocs=2)
    assert created and code.base.extras.get("openmx_data_path") == str(data)
    assert code.default_calc_job_plugin == "deeph.openmx"
    again, created2 = setup_openmx_code(str(exe), str(data), label="openmx-t", computer=aiida_localhost.label)
    assert not created2 and again.pk == code.pk
    # the data path is written into the input of every calculation of that code
    from aiida_deeph.calculations.openmx import OpenmxCalculation

    from .conftest import corpus_structure

    builder = OpenmxCalculation.get_builder_from_protocol(code, corpus_structure("mp-92"))
    assert builder.metadata.options.resources["num_mpiprocs_per_machine"] == 2
    from aiida.common.folders import Folder
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    process = instantiate_process(get_manager().get_runner(), builder)
    (tmp_path / "sandbox").mkdir()
    folder = Folder(str(tmp_path / "sandbox"))
    process.prepare_for_submission(folder)
    text = (tmp_path / "sandbox" / "aiida.dat").read_text()
    assert f"DATA.PATH {data}" in " ".join(text.split()) or str(data) in text
    assert "HS.fileout on" in " ".join(text.split())


@pytest.mark.parametrize("problem, match", [("computer", "no AiiDA computer"), ("exe", "does not exist"),
                                            ("data", "not a folder"), ("layout", "no PAO/ and VPS/")])
def test_setup_openmx_bad_input(aiida_profile, aiida_localhost, tmp_path, problem, match):
    exe = tmp_path / "openmx"
    exe.write_text("#!/bin/sh\n")
    data = tmp_path / "data"
    data.mkdir()
    kwargs = dict(executable=str(exe), data_path=str(data), label=f"x-{problem}", computer=aiida_localhost.label)
    if problem == "computer":
        kwargs["computer"] = "no-such-computer"
    elif problem == "exe":
        kwargs["executable"] = str(tmp_path / "missing")
    elif problem == "data":
        kwargs["data_path"] = str(tmp_path / "missing")
    with pytest.raises(ValueError, match=match):
        setup_openmx_code(**kwargs)


def test_setup_replay_code(aiida_profile, aiida_localhost):
    code, created = setup_replay_code("replay-t", aiida_localhost.label)
    assert created and code.base.extras.get("deeph_replay") is True
    assert "REPLAY" in code.description
    assert orm.load_code("replay-t").pk == code.pk
