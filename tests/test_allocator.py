"""The JAX scripts' re-execution under tcmalloc (jax_vit/allocator.py)."""
import os
import subprocess
import sys

import pytest

from jax_vit.allocator import active_allocator, find_tcmalloc, reexec_under_tcmalloc


class Exec:
    def __init__(self):
        self.calls = []

    def __call__(self, path, argv):
        self.calls.append((path, argv))


def test_reexec_preloads_the_library_found_keeping_argv_and_other_preloads(tmp_path):
    (tmp_path / "libtcmalloc_minimal.so.4").touch()
    environ, execv = {"LD_PRELOAD": "/opt/other.so"}, Exec()
    assert reexec_under_tcmalloc(["scripts/train.py", "--epochs", "2"], environ, dirs=[str(tmp_path)], execv=execv)
    assert execv.calls == [(sys.executable, [sys.executable, "scripts/train.py", "--epochs", "2"])]
    assert environ["LD_PRELOAD"] == f"{tmp_path}/libtcmalloc_minimal.so.4{os.pathsep}/opt/other.so"
    assert active_allocator(environ) == "tcmalloc"


@pytest.mark.parametrize("environ", [{"VIT_NO_TCMALLOC": "1"}, {"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}])
def test_no_reexec_when_opted_out_or_already_preloaded(tmp_path, environ):
    (tmp_path / "libtcmalloc.so.4").touch()
    execv = Exec()
    assert not reexec_under_tcmalloc(["x.py"], dict(environ), dirs=[str(tmp_path)], execv=execv)
    assert execv.calls == []


def test_no_reexec_where_tcmalloc_is_not_installed(tmp_path):
    execv, environ = Exec(), {}
    assert find_tcmalloc([str(tmp_path)]) is None
    assert not reexec_under_tcmalloc(["x.py"], environ, dirs=[str(tmp_path)], execv=execv)
    assert execv.calls == [] and "LD_PRELOAD" not in environ and active_allocator(environ) == "system"


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc not installed (apt-get install libtcmalloc-minimal4)")
def test_a_real_process_restarts_itself_with_tcmalloc_mapped(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "from jax_vit.allocator import reexec_under_tcmalloc\n"
        "reexec_under_tcmalloc()\n"
        "import sys\n"
        "mapped = any('tcmalloc' in line for line in open('/proc/self/maps'))\n"
        "print('mapped' if mapped else 'absent', sys.argv[1:], sys.flags.utf8_mode)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "VIT_NO_TCMALLOC")}
    out = subprocess.run([sys.executable, "-X", "utf8", str(script), "a", "b"], env=environ, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "mapped ['a', 'b'] 1"  # restarted with the interpreter option kept
