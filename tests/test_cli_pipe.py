"""A command whose reader goes away (``vargen list | head -1``) ends quietly: no traceback, no
``error: [Errno 32] Broken pipe`` line, the status a shell reports for SIGPIPE."""
import subprocess
import sys


def test_closed_pipe_ends_vargen_list_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "vargen.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "", err
