import subprocess
import sys

from alliancemeta import cli


def test_validate_ok(tmp_path, capsys):
    path = tmp_path / "s.csv"
    path.write_text("study,r,n,study_id\nA,0.3,50,s1\nB,0.2,40,s1\n")
    assert cli.main(["validate", str(path), "--kind", "studies"]) == 0
    assert "2 effect sizes in 1 studies" in capsys.readouterr().out


def test_validate_error_message_and_exit_code(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("client,session,alliance,outcome\nc1,1,4,20\nc1,1,4,21\n")
    proc = subprocess.run(
        [sys.executable, "-m", "alliancemeta.cli", "validate", str(path), "--kind", "sessions"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1
    assert "line 3, column session: client 'c1' session 1 repeats line 2" in proc.stderr
    assert "Traceback" not in proc.stderr
