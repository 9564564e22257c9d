"""OpenMX 3.9 text outputs: the ``<System.Name>.out`` file and the program's stdout.

Pure Python (numpy + stdlib): never imports aiida. Facts used here are in docs/openmx.md
(verified on real OpenMX 3.9 runs): exit code 0 even on fatal errors, no message when
``scf.maxIter`` is reached, ``WARNNING`` / ``Hatree`` spellings.
"""
from __future__ import annotations

import re

import numpy as np

from aiida_deeph.core.constants import HARTREE_TO_EV

from .openmx_input import OpenmxInputError, get_keyword, parse_input

__all__ = [
    "OpenmxOutputError",
    "parse_out",
    "parse_out_eigenvalues",
    "parse_stdout",
    "scf_converged",
    "OPENMX_DEFAULT_MAXITER",
    "OPENMX_DEFAULT_CRITERION",
]

# OpenMX 3.9 defaults when the input does not set them
OPENMX_DEFAULT_MAXITER = 40
OPENMX_DEFAULT_CRITERION = 1.0e-6

FINISHED_MESSAGE = "The calculation was normally finished."


class OpenmxOutputError(ValueError):
    """An OpenMX output file that cannot be parsed."""


_FLOAT = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_VERSION_RE = re.compile(r"performed by OpenMX Ver\.\s*(\S+)")
_PROCS_RE = re.compile(r"using\s+(\d+)\s+MPI processes and\s+(\d+)\s+OpenMP threads")
_SCF_RE = re.compile(rf"^\s*SCF=\s*(\d+)\s+NormRD=\s*({_FLOAT})\s+Uele=\s*({_FLOAT})", re.M)
_MD_RE = re.compile(r"SCF history at MD=\s*(\d+)")
_ENERGY_RE = re.compile(rf"^\s{{1,4}}(U[A-Za-z0-9]+|Enpy)\.\s+({_FLOAT})\s*$", re.M)
_CHEMP_RE = re.compile(rf"Chemical potential \(Hartree\)\s+({_FLOAT})")
_CHEMP_PRECISE_RE = re.compile(rf"Chemical Potential \(Hat?r?ee\)\s*=\s*({_FLOAT})")
_ELAPSED_RE = re.compile(rf"Elapsed\.Time\.\s+({_FLOAT})")
_TIMING_RE = re.compile(rf"^\s+(\S[^=]*?)\s*=\s*(\d+)\s+({_FLOAT})\s+(\d+)\s+({_FLOAT})\s*$")
_WARN_RE = re.compile(r"WARN+ING", re.I)
_STAR_RE = re.compile(r"^\s*\*{10,}\s*$")

# readable names for the energy terms of the .out file
ENERGY_NAMES = {
    "Utot": "total_energy",
    "Uele": "band_energy",
    "Enpy": "enthalpy",
    "Ukin": "kinetic_energy",
    "Uxc0": "xc_energy_up",
    "Uxc1": "xc_energy_down",
    "Ucore": "core_core_energy",
}


def _echoed_input(lines: list) -> str:
    """The copy of the input that OpenMX puts after the version banner."""
    start = None
    for i, line in enumerate(lines):
        if "performed by OpenMX" in line:
            start = i
            break
    if start is None:
        return ""
    i = start
    while i < len(lines) and not _STAR_RE.match(lines[i]):  # end of the banner
        i += 1
    while i < len(lines) and _STAR_RE.match(lines[i]):
        i += 1
    body = []
    while i < len(lines) and not _STAR_RE.match(lines[i]):
        body.append(lines[i])
        i += 1
    return "\n".join(body)


def scf_converged(history: list, max_iter: int, criterion: float) -> bool | None:
    """OpenMX's own convergence verdict, inferred from the SCF history (docs/openmx.md).

    Stopped before ``scf.maxIter`` -> converged. Steps == maxIter -> converged only when the last
    ``|dUele|`` is already below ``scf.criterion``. ``None`` without any SCF step.
    """
    if not history:
        return None
    steps = len(history)
    last_due = abs(history[-1]["Uele"] - history[-2]["Uele"]) if steps >= 2 else None
    if steps < max_iter:
        return True
    return bool(last_due is not None and last_due < criterion)


def _section_after(lines: list, title: str) -> list:
    """Lines of the section whose title line contains ``title`` (up to the next star line)."""
    for i, line in enumerate(lines):
        if title in line:
            j = i + 1
            while j < len(lines) and _STAR_RE.match(lines[j]):
                j += 1
            out = []
            while j < len(lines) and not _STAR_RE.match(lines[j]):
                out.append(lines[j])
                j += 1
            return out
    return []


def _scf_section(text: str, lines: list, history_all: list) -> dict:
    """The echoed input, scf.maxIter / scf.criterion from it, and the SCF history of the last MD step."""
    result: dict = {}
    input_text = _echoed_input(lines)
    result["input_text"] = input_text
    params: dict = {}
    if input_text:
        try:
            params = parse_input(input_text)
        except OpenmxInputError:
            params = {}
    try:
        max_iter = int(get_keyword(params, "scf.maxIter", [OPENMX_DEFAULT_MAXITER])[0])
    except (ValueError, IndexError):
        raise OpenmxOutputError("echoed input has an unreadable scf.maxIter") from None
    try:
        criterion = float(get_keyword(params, "scf.criterion", [OPENMX_DEFAULT_CRITERION])[0])
    except (ValueError, IndexError):
        raise OpenmxOutputError("echoed input has an unreadable scf.criterion") from None
    result["scf_max_iter"] = max_iter
    result["scf_criterion"] = criterion

    md_marks = [(m.start(), int(m.group(1))) for m in _MD_RE.finditer(text)]
    last_md_pos = md_marks[-1][0] if md_marks else -1
    history = []
    for pos, step, normrd, uele in history_all:
        md = max((n for p, n in md_marks if p < pos), default=1)
        if pos > last_md_pos:
            history.append({"step": step, "NormRD": normrd, "Uele": uele, "md": md})
    result["md_steps"] = md_marks[-1][1] if md_marks else (1 if history else 0)
    result["scf_history"] = history
    result["scf_steps"] = len(history)
    result["last_delta_uele"] = abs(history[-1]["Uele"] - history[-2]["Uele"]) if len(history) >= 2 else None
    result["scf_converged"] = scf_converged(history, max_iter, criterion)
    return result


def _timings(text: str, lines: list) -> dict:
    """Elapsed time and the timing tables (name -> max seconds over ranks) of the final section."""
    result: dict = {}
    elapsed = _ELAPSED_RE.findall(text)
    result["elapsed_time"] = float(elapsed[-1]) if elapsed else None
    timings, timings_dft = {}, {}
    section = _section_after(lines, "Computational Time (second)")
    target = timings
    for line in section:
        if "*** In DFT ***" in line:
            target = timings_dft
            continue
        m = _TIMING_RE.match(line)
        if m:
            target[m.group(1).strip()] = float(m.group(5))
    result["timings"] = timings
    result["timings_dft"] = timings_dft
    result["total_time"] = timings.get("Total Computational Time", result["elapsed_time"])
    result["complete"] = bool(section) and result["elapsed_time"] is not None
    return result


def parse_out(text: str) -> dict:
    """Parse the text of an OpenMX ``.out`` file.

    Energies: ``energies_hartree`` {term: Ha} and ``energies`` {term: eV} for every ``Uxxx.``/``Enpy.``
    line (last MD step), plus ``total_energy[_hartree]`` (Utot), ``band_energy[_hartree]`` (Uele),
    ``enthalpy[_hartree]`` (Enpy). ``fermi_energy[_hartree]``; ``scf_history`` (list of
    ``{'step', 'NormRD', 'Uele', 'md'}``, last MD step); ``scf_steps``; ``scf_max_iter``,
    ``scf_criterion``; ``scf_converged``; ``last_delta_uele``; ``elapsed_time``;
    ``timings`` / ``timings_dft`` (name -> max seconds over ranks); ``warnings``; ``complete``
    (the final timing section is there); ``input_text`` (the echoed input).
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("latin-1")
    if not isinstance(text, str):
        raise OpenmxOutputError(f"parse_out expects the .out text as str, got {type(text).__name__}")
    version = _VERSION_RE.search(text)
    history_all = [
        (m.start(), int(m.group(1)), float(m.group(2)), float(m.group(3))) for m in _SCF_RE.finditer(text)
    ]
    if version is None and not history_all:
        raise OpenmxOutputError("not an OpenMX .out file: no 'performed by OpenMX Ver.' banner and no SCF history")
    lines = text.splitlines()
    result: dict = {"version": version.group(1) if version else None}
    procs = _PROCS_RE.search(text)
    if procs:
        result["mpi_processes"] = int(procs.group(1))
        result["openmp_threads"] = int(procs.group(2))

    result.update(_scf_section(text, lines, history_all))

    # energies (the last occurrence of each term wins: last MD step)
    energies_ha: dict = {}
    for m in _ENERGY_RE.finditer(text):
        energies_ha[m.group(1)] = float(m.group(2))
    result["energies_hartree"] = energies_ha
    result["energies"] = {k: v * HARTREE_TO_EV for k, v in energies_ha.items()}
    for term, name in ENERGY_NAMES.items():
        if term in energies_ha:
            result[f"{name}_hartree"] = energies_ha[term]
            result[name] = energies_ha[term] * HARTREE_TO_EV

    chemp = _CHEMP_PRECISE_RE.findall(text) or _CHEMP_RE.findall(text)
    if chemp:
        result["fermi_energy_hartree"] = float(chemp[-1])
        result["fermi_energy"] = float(chemp[-1]) * HARTREE_TO_EV

    result.update(_timings(text, lines))
    result["warnings"] = [line.strip() for line in lines if _WARN_RE.search(line)]
    return result


def parse_out_eigenvalues(text: str, spin: int | str = 0):
    """Eigenvalues of the section ``Eigenvalues (Hartree) of SCF KS-eq.`` of a ``.out`` text.

    Returns ``(kpoints, eigenvalues)``: ``kpoints`` (nk, 3) fractional (printed with 5 decimals
    only), ``eigenvalues`` (nk, nbands) in Hartree for ``spin`` 0 (up) or 1 (down), or
    (2, nk, nbands) for ``spin='both'``.
    """
    lines = text.splitlines()
    section = _section_after(lines, "Eigenvalues (Hartree) of SCF KS-eq.")
    if not section:
        raise OpenmxOutputError("no 'Eigenvalues (Hartree) of SCF KS-eq.' section in the .out text")
    kpts, blocks = [], []
    current = None
    k_re = re.compile(rf"k1=\s*({_FLOAT})\s+k2=\s*({_FLOAT})\s+k3=\s*({_FLOAT})")
    for line in section:
        s = line.strip()
        if not s:
            continue
        if s.startswith("kloop="):
            current = []
            blocks.append(current)
            continue
        m = k_re.search(s)
        if m:
            kpts.append([float(m.group(i)) for i in (1, 2, 3)])
            continue
        if current is not None:
            tok = s.split()
            if tok[0].isdigit() and len(tok) >= 2:
                try:
                    current.append([float(t) for t in tok[1:3]])
                except ValueError:
                    raise OpenmxOutputError(f"unreadable eigenvalue line: {s!r}") from None
    if not blocks or len(kpts) != len(blocks):
        raise OpenmxOutputError(f"eigenvalue section: {len(blocks)} kloop blocks but {len(kpts)} k-points")
    nb = {len(b) for b in blocks}
    if len(nb) != 1 or 0 in nb:
        raise OpenmxOutputError(f"eigenvalue section: k-points with different band counts {sorted(nb)}")
    ncol = {len(r) for b in blocks for r in b}
    arr = np.array([[r + r[-1:] * (2 - len(r)) for r in b] for b in blocks], dtype=float)  # (nk, nb, 2)
    kpoints = np.array(kpts, dtype=float)
    if spin == "both":
        return kpoints, np.transpose(arr, (2, 0, 1)).copy()
    if spin not in (0, 1):
        raise OpenmxOutputError(f"spin must be 0, 1 or 'both', got {spin!r}")
    if spin == 1 and ncol == {1}:
        raise OpenmxOutputError("the eigenvalue section has a single spin column")
    return kpoints, arr[:, :, spin].copy()


_ERROR_LINE_RE = re.compile(r"\b(ERROR|Error|error:|Aborting|Could not find|Can not find|cannot open|Segmentation)", re.I)
_NOTFOUND_RE = re.compile(r"(?:Could|Can) ?not find\s+(\S+)", re.I)
_DSTEQR_RE = re.compile(r"(DSTEQR failed|Lapack routine \S+ failed)")
_SCF_BANNER_RE = re.compile(r"MD=\s*(\d+)\s+SCF=\s*(\d+)")


def parse_stdout(text: str) -> dict:
    """Diagnose OpenMX's stdout (its exit code is 0 even on fatal errors).

    Returns ``normally_finished``, ``error_kind`` (None, 'missing_pao', 'missing_vps',
    'missing_file', 'eigensolver_abort', 'error', 'killed' = stopped without message),
    ``missing_files``, ``eigensolver_abort``, ``killed``, ``errors`` (error lines),
    ``warnings`` (WARNNING/WARNING lines), ``last_scf_step`` / ``last_md_step`` from the banners,
    ``scfout_saved``.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("latin-1")
    if not isinstance(text, str):
        raise OpenmxOutputError(f"parse_stdout expects the stdout text as str, got {type(text).__name__}")
    lines = text.splitlines()
    finished = FINISHED_MESSAGE in text
    missing = _NOTFOUND_RE.findall(text)
    eigen_abort = bool(_DSTEQR_RE.search(text))
    errors = [line.strip() for line in lines if _ERROR_LINE_RE.search(line) and not _WARN_RE.search(line)]
    warnings = [line.strip() for line in lines if _WARN_RE.search(line)]
    banners = _SCF_BANNER_RE.findall(text)
    if finished and not missing and not eigen_abort:
        kind = None
    elif any(p.lower().endswith(".pao") or "/PAO/" in p for p in missing):
        kind = "missing_pao"
    elif any(p.lower().endswith(".vps") or "/VPS/" in p for p in missing):
        kind = "missing_vps"
    elif missing:
        kind = "missing_file"
    elif eigen_abort:
        kind = "eigensolver_abort"
    elif errors and not finished:
        kind = "error"
    else:
        kind = "killed"
    return {
        "normally_finished": finished,
        "error_kind": kind,
        "missing_files": missing,
        "eigensolver_abort": eigen_abort,
        "killed": kind == "killed",
        "errors": errors,
        "warnings": warnings,
        "last_md_step": int(banners[-1][0]) if banners else None,
        "last_scf_step": int(banners[-1][1]) if banners else None,
        "scfout_saved": "Save the scfout file" in text,
        "empty": not text.strip(),
    }
