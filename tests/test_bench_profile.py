"""bench profile, which a GPU session runs to see where an iteration's time goes: it runs on the CPU too
and reports every pyramid level, with eager reruns that agree."""
from conftest import shared_path


def test_profile_reports_every_level(capsys):
    shared_path("flow", "sintel_alley_1", "frame_0001.png")
    from engine_server.bench import profile
    from engine_server.optimize.schedule import pyramid_sizes

    assert profile.main(["--device", "cpu", "--size", "256x128", "--repeats", "1", "--kernels", "5"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "x" in line.split("|")[1]]
    levels = [row.split("|")[1].strip() for row in rows]
    assert levels == [f"{w}x{h}" for w, h in pyramid_sizes((256, 128))] and len(levels) == 2
    full = [cell.strip() for cell in rows[-1].split("|")[1:-1]]
    assert full[9] == full[10] == "1.000"    # the full size's cost relative to itself
    assert float(full[12]) == 0.0            # two eager runs from one start agree on the CPU
    assert full[5] == full[7] == "-"         # no graphs on the CPU
    assert "Top operators" in out and "aten::" in out
