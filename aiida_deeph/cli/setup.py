"""``aiida-deeph setup openmx``: create (or report) the AiiDA code for OpenMX in the current profile."""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("setup", help="set up AiiDA codes (needs an AiiDA profile)",
                                   description="Set up AiiDA codes for aiida-deeph in the current profile.")
    sub = parser.add_subparsers(dest="what", metavar="CODE", required=True, help="which code to set up")
    openmx = sub.add_parser(
        "openmx", help="an OpenMX 3.9 executable",
        description=(
            "Create an InstalledCode for OpenMX on COMPUTER (or report the existing one with the same label). "
            "DATA.PATH (the DFT_DATA19 folder holding PAO/ and VPS/ on that computer) is kept with the code "
            "(extra 'openmx_data_path') and written into every input. --auto takes both from "
            "OPENMX_EXECUTABLE/OPENMX_DATA_PATH, else from the install made by scripts/install-openmx.sh "
            "(${XDG_CACHE_HOME:-~/.cache}/aiida-deeph/openmx-3.9/install.json), and fails with the reason when "
            "there is none."
        ),
    )
    openmx.add_argument("--executable", help="absolute path of openmx on the computer")
    openmx.add_argument("--data-path", help="DATA.PATH: the DFT_DATA19 folder on the computer")
    openmx.add_argument("--auto", action="store_true",
                        help="find the executable and DATA.PATH (environment, then scripts/install-openmx.sh's cache)")
    openmx.add_argument("--label", default="openmx", help="code label (default: openmx)")
    openmx.add_argument("--computer", default="localhost", help="AiiDA computer label (default: localhost)")
    openmx.add_argument("--mpiprocs", type=int, default=1,
                        help="MPI processes per run used by the protocols' builders (default 1)")
    openmx.add_argument("--profile", default=None, help="AiiDA profile (default: the default profile)")
    openmx.set_defaults(func=run_setup_openmx)

    replay = sub.add_parser(
        "openmx-replay",
        help="a stand-in 'openmx' that REPLAYS recorded real OpenMX outputs (demo and tests; computes nothing)",
        description=(
            "Create an InstalledCode running aiida-deeph's replay stand-in: for an input whose physics matches a "
            "recorded real OpenMX 3.9 run it copies the recorded outputs back; any other input fails. "
            "Default recordings: the few shipped in the package; --corpus adds folders of recorded runs."
        ),
    )
    replay.add_argument("--label", default="openmx-replay")
    replay.add_argument("--computer", default="localhost")
    replay.add_argument("--corpus", action="append", default=[], help="folder of recorded runs (repeatable)")
    replay.add_argument("--profile", default=None)
    replay.set_defaults(func=run_setup_replay)


# One thread per MPI rank; Open MPI refuses root without the two variables (containers, CI).
OPENMX_PREPEND_TEXT = ("export OPENBLAS_NUM_THREADS=1\nexport OMP_NUM_THREADS=1\n"
                       "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")


def load_aiida_profile(name=None):
    from aiida import load_profile
    from aiida.common.exceptions import ConfigurationError, ProfileConfigurationError

    from aiida_deeph.cli.main import CliError

    try:
        return load_profile(name, allow_switch=True)
    except (ProfileConfigurationError, ConfigurationError) as exc:
        raise CliError(f"no usable AiiDA profile ({str(exc).splitlines()[0]}); create one with `verdi presto`") from None


def setup_openmx_code(executable: str, data_path: str, label: str = "openmx", computer: str = "localhost",
                      mpiprocs: int = 1):
    """Create or return (code, created) for OpenMX. Raises ValueError with a one-line message."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    from aiida_deeph.calculations.openmx import DATA_PATH_EXTRA

    try:
        comp = orm.load_computer(computer)
    except NotExistent:
        raise ValueError(f"no AiiDA computer '{computer}' (see `verdi computer list`; `verdi presto` creates localhost)") from None
    existing = (orm.QueryBuilder()
                .append(orm.Computer, filters={"id": comp.pk}, tag="c")
                .append(orm.InstalledCode, with_computer="c", filters={"label": label})
                .first(flat=True))
    if existing is not None:
        return existing, False
    if mpiprocs < 1:
        raise ValueError("--mpiprocs must be at least 1")
    if comp.transport_type == "core.local":
        exe = Path(executable)
        if not exe.is_file():
            raise ValueError(f"executable {executable} does not exist on {computer}")
        if not Path(data_path).is_dir():
            raise ValueError(f"DATA.PATH {data_path} is not a folder on {computer}")
        if not (Path(data_path) / "PAO").is_dir() or not (Path(data_path) / "VPS").is_dir():
            raise ValueError(f"DATA.PATH {data_path} has no PAO/ and VPS/ subfolders (OpenMX's DFT_DATA19 layout)")
    code = orm.InstalledCode(label=label, computer=comp, filepath_executable=executable,
                             default_calc_job_plugin="deeph.openmx",
                             description=f"OpenMX 3.9 (DATA.PATH {data_path})",
                             prepend_text=OPENMX_PREPEND_TEXT)
    code.store()
    code.base.extras.set(DATA_PATH_EXTRA, data_path)
    code.base.extras.set("default_mpiprocs", mpiprocs)
    return code, True


def resolve_openmx_paths(args) -> tuple[str, str, str]:
    """(executable, data_path, how found) from the arguments; CliError with one line when incomplete."""
    from aiida_deeph.cli.main import CliError
    from aiida_deeph.io.openmx_install import locate_openmx

    if args.auto:
        if args.executable or args.data_path:
            raise CliError("--auto finds the executable and DATA.PATH itself: give either --auto or both paths")
        install, why = locate_openmx()
        if install is None:
            raise CliError(why)
        return install.executable, install.data_path, install.describe()
    if not args.executable or not args.data_path:
        raise CliError("give --executable and --data-path, or --auto to use OPENMX_EXECUTABLE/OPENMX_DATA_PATH "
                       "or the install made by scripts/install-openmx.sh")
    return args.executable, args.data_path, ""


def run_setup_openmx(args) -> int:
    executable, data_path, found = resolve_openmx_paths(args)
    load_aiida_profile(args.profile)
    if found:
        print(f"using {found}")
    code, created = setup_openmx_code(executable, data_path, args.label, args.computer, args.mpiprocs)
    if not created and code.filepath_executable.as_posix() != executable:
        print(f"note: the existing code {code.full_label} runs {code.filepath_executable}, not {executable} "
              "(choose another --label to set up this one)")
    word = "created" if created else "exists:"
    print(f"{word} code {code.full_label} (pk {code.pk}) -> {code.filepath_executable}; "
          f"DATA.PATH {code.base.extras.get('openmx_data_path', '?')}")
    return 0


def shipped_recordings() -> Path:
    from importlib import resources

    return Path(str(resources.files("aiida_deeph.resources").joinpath("recordings")))


def shipped_model(name: str = "carbon-small") -> Path:
    """A model folder shipped in the package (``aiida_deeph/resources/models/NAME``)."""
    from importlib import resources

    path = Path(str(resources.files("aiida_deeph.resources").joinpath("models"))) / name
    if not (path / "best.pt").is_file():
        raise ValueError(f"no shipped model {name!r} (aiida_deeph/resources/models/)")
    return path


def setup_replay_code(label: str = "openmx-replay", computer: str = "localhost", corpus=()):
    """Create or return (code, created) for the replay stand-in (recordings: shipped + ``corpus``)."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida.manage.configuration import get_config

    from aiida_deeph.calculations.openmx import DATA_PATH_EXTRA
    from aiida_deeph.replay.standin import write_replay_executable

    try:
        comp = orm.load_computer(computer)
    except NotExistent:
        raise ValueError(f"no AiiDA computer '{computer}' (`verdi presto` creates localhost)") from None
    existing = (orm.QueryBuilder()
                .append(orm.Computer, filters={"id": comp.pk}, tag="c")
                .append(orm.InstalledCode, with_computer="c", filters={"label": label})
                .first(flat=True))
    if existing is not None:
        return existing, False
    roots = [shipped_recordings(), *[Path(c).resolve() for c in corpus]]
    exe = Path(get_config().dirpath) / "aiida-deeph" / f"{label}-{comp.label}"
    write_replay_executable(exe, roots)
    code = orm.InstalledCode(label=label, computer=comp, filepath_executable=str(exe),
                             default_calc_job_plugin="deeph.openmx",
                             description="REPLAY stand-in for OpenMX: copies recorded real OpenMX 3.9 outputs, computes nothing")
    code.store()
    code.base.extras.set_many({DATA_PATH_EXTRA: "/replay/DFT_DATA19", "deeph_replay": True})
    return code, True


def run_setup_replay(args) -> int:
    load_aiida_profile(args.profile)
    code, created = setup_replay_code(args.label, args.computer, args.corpus)
    word = "created" if created else "exists:"
    print(f"{word} code {code.full_label} (pk {code.pk}): REPLAYS recorded OpenMX outputs ({code.filepath_executable})")
    return 0
